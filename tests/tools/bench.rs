//! Benchmark of the release binary: throughput and CPU/memory cost of forwarding a pre-written
//! audit.log of >= 500 MB to a discarding tailer (`--runs N` repeats that over the same corpus
//! and reports min/median/max, because one run on a shared machine is one sample of a noisy
//! distribution), then the idle latency of single lines appended to a followed log. Prints one
//! table. The corpus and the child-process helpers come from
//! gen.rs; transport variants (TLS later) differ only in the arguments `Mode` adds.

// gen.rs is also the `gen` example's crate root: its `main` and the helpers only the demo uses
// are dead code here.
#[allow(dead_code)]
#[path = "gen.rs"]
mod gen;

use gen::procs::{self, Proc, Tail};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: bench [--bytes 500M] [--dir DIR] [--mode plaintext|tls|tls-gzip|uds-tls] [--bin PATH]
             [--runs 1] [--timeout SECS] [--latency-lines 200] [--latency-interval-ms 20]
             [--fwd-arg ARG]... [--tailer-arg ARG]... [--seed S] [--keep]";

/// How the forwarder and the tailer talk; each transport adds its own arguments to both, and
/// the tunnel mode also runs a real CONNECT proxy (tinyproxy) behind a Unix socket (socat).
struct Mode {
    name: String,
    forwarder_args: Vec<String>,
    tailer_args: Vec<String>,
    tunnel: Option<gen::Tunnel>,
}

const MODES: &str = "plaintext, tls, tls-gzip, uds-tls";

impl Mode {
    /// `dir` is where a mode can put files it needs (certificates for TLS modes).
    fn new(name: &str, dir: &Path) -> Result<Mode, String> {
        let plain = Mode {
            name: name.to_string(),
            forwarder_args: vec!["--plaintext".to_string()],
            tailer_args: Vec::new(),
            tunnel: None,
        };
        match name {
            "plaintext" => Ok(plain),
            "tls" | "tls-gzip" | "uds-tls" => {
                let certs = dir.join("certs");
                gen::make_certs(&certs)?;
                let (mut forwarder_args, tailer_args) = gen::tls_args(&certs);
                if name == "tls-gzip" {
                    forwarder_args.extend(["--compress".to_string(), "gzip".to_string()]);
                }
                let tunnel = if name == "uds-tls" {
                    let t = gen::Tunnel::new(dir).map_err(|e| e.to_string())?;
                    forwarder_args.extend([
                        "--konnectivity-uds-socket".to_string(),
                        t.socket.display().to_string(),
                    ]);
                    Some(t)
                } else {
                    None
                };
                Ok(Mode {
                    name: name.to_string(),
                    forwarder_args,
                    tailer_args,
                    tunnel,
                })
            }
            other => Err(format!("unknown --mode {other:?} (known: {MODES})")),
        }
    }

    /// Starts the tunnel's proxy chain (tinyproxy allowing CONNECT to `tailer_port`, socat
    /// listening on the Unix socket); the processes end when the returned guards drop.
    fn start_tunnel(&self, tailer_port: u16) -> Result<Vec<Proc>, String> {
        let Some(t) = &self.tunnel else {
            return Ok(Vec::new());
        };
        let procs = vec![t.start_proxy(tailer_port)?, t.start_front()?];
        t.wait_up(Duration::from_secs(10))?;
        Ok(procs)
    }
}

struct Config {
    bin: PathBuf,
    bytes: u64,
    dir: PathBuf,
    mode: String,
    runs: usize,
    timeout: Duration,
    latency_lines: u64,
    latency_interval: Duration,
    fwd_extra: Vec<String>,
    tailer_extra: Vec<String>,
    seed: u64,
    keep: bool,
}

fn parse_config() -> Result<Config, String> {
    let mut args = gen::Args::from_env(USAGE, &["keep"])?;
    let cfg = Config {
        bin: args.binary(),
        bytes: gen::parse_size(&args.value("bytes").unwrap_or_else(|| "500M".to_string()))?,
        dir: args
            .value("dir")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir),
        mode: args
            .value("mode")
            .unwrap_or_else(|| "plaintext".to_string()),
        runs: args.parsed("runs", 1usize)?,
        timeout: Duration::from_secs(args.parsed("timeout", 600u64)?),
        latency_lines: args.parsed("latency-lines", 200u64)?,
        latency_interval: Duration::from_millis(args.parsed("latency-interval-ms", 20u64)?),
        fwd_extra: args.all("fwd-arg"),
        tailer_extra: args.all("tailer-arg"),
        seed: args.parsed("seed", 1u64)?,
        keep: args.flag("keep"),
    };
    args.finish().map_err(|e| format!("{e}\n{USAGE}"))?;
    if cfg.runs == 0 {
        return Err(format!("--runs must be at least 1\n{USAGE}"));
    }
    if !cfg.bin.exists() {
        return Err(format!(
            "{} not found: run `cargo build --release` first (or pass --bin)",
            cfg.bin.display()
        ));
    }
    Ok(cfg)
}

/// A count parsed from a child's log lines, and when it first reached the target.
struct Progress {
    count: AtomicU64,
    target: u64,
    reached: Mutex<Option<Instant>>,
}

impl Progress {
    fn new(target: u64) -> Arc<Progress> {
        Arc::new(Progress {
            count: AtomicU64::new(0),
            target,
            reached: Mutex::new(None),
        })
    }

    fn update(&self, n: u64, at: Instant) {
        self.count.fetch_max(n, Ordering::Relaxed);
        if n >= self.target {
            if let Ok(mut r) = self.reached.lock() {
                r.get_or_insert(at);
            }
        }
    }

    fn reached(&self) -> Option<Instant> {
        self.reached.lock().ok().and_then(|r| *r)
    }
}

fn tailer_cmd(cfg: &Config, mode: &Mode, port: u16, discard: bool) -> Command {
    let mut c = Command::new(&cfg.bin);
    c.args(["tailer", "--listen", &format!("127.0.0.1:{port}")]);
    if discard {
        c.arg("--discard");
    }
    c.args(&mode.tailer_args)
        .args(&cfg.tailer_extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(if discard {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stderr(Stdio::piped());
    c
}

fn forwarder_cmd(cfg: &Config, mode: &Mode, log: &Path, port: u16, stats: &str) -> Command {
    let mut c = Command::new(&cfg.bin);
    c.arg("--audit-log-path")
        .arg(log)
        .args(["--target", &format!("127.0.0.1:{port}")])
        .args(&mode.forwarder_args)
        .args(["--stats-interval", stats, "--log-level", "info"])
        .arg("--read-from-head=true")
        .args(&cfg.fwd_extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn child_failure(what: &str, p: &mut Proc, tail: &Tail) -> String {
    let status = match p.try_reap() {
        Ok(Some(u)) => u.describe(),
        _ => "still running".to_string(),
    };
    format!(
        "{what}: {} {status}; its last stderr lines:\n{}",
        p.name,
        procs::tail_text(tail)
    )
}

/// The throughput corpus, written once and shared by every run.
struct Corpus {
    path: PathBuf,
    lines: u64,
    bytes: u64,
    gen_secs: f64,
}

fn write_corpus(cfg: &Config, work: &Path) -> Result<Corpus, String> {
    let dir = work.join("throughput");
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let path = dir.join("audit.log");
    eprintln!(
        "bench: writing a {} byte corpus to {}",
        cfg.bytes,
        path.display()
    );
    let t = Instant::now();
    let stats = gen::write_corpus(&path, cfg.bytes, cfg.seed).map_err(|e| e.to_string())?;
    let gen_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "bench: {} records, {} bytes in {gen_secs:.1} s",
        stats.lines, stats.bytes
    );
    // Written back to the disk now rather than during the runs: a corpus below the kernel's
    // dirty_background threshold (10% of RAM) is otherwise flushed about 30 s after it was
    // written, in the middle of a set of runs, and the flusher takes its CPU from whichever run
    // it lands in (2 GB took 0.6-0.8 s to write back on the development machine).
    let t = Instant::now();
    fs::File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("fsync {}: {e}", path.display()))?;
    eprintln!(
        "bench: corpus written back to the disk in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(Corpus {
        path,
        lines: stats.lines,
        bytes: stats.bytes,
        gen_secs,
    })
}

/// One forwarder run over the corpus.
struct Throughput {
    secs: f64,
    /// How long the forwarder was neither on a CPU nor waiting for one, from its start until
    /// just after the last ack was seen: blocked in `poll` (connecting, the last acks, the
    /// bench's few ms to notice the end) or on the disk. Unlike MB/s and CPU s per GB it does
    /// not move with how fast the machine happens to be, so a loop that sleeps with work
    /// pending shows here. `None` without /proc/PID/task/*/schedstat.
    asleep: Option<Duration>,
    /// How long it was ready to run but waited for a CPU (other processes, the kernel's own
    /// work): the machine's contention, not the forwarder's doing.
    queued: Option<Duration>,
    measured_by: &'static str,
    fwd: procs::Usage,
    tailer: procs::Usage,
    tailer_records: u64,
    last_stats: String,
}

/// The time all threads of `pid` have spent on a CPU and waiting on a run queue for one
/// (`/proc/PID/task/*/schedstat`, the kernel's scheduler accounting in ns).
fn schedstat(pid: u32) -> Option<(Duration, Duration)> {
    let mut sum = (Duration::ZERO, Duration::ZERO);
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let text = fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
        let (run, wait) = (f.next()??, f.next()??);
        sum.0 += Duration::from_nanos(run);
        sum.1 += Duration::from_nanos(wait);
    }
    Some(sum)
}

/// Run `run` (from 1) forwards the corpus from the head: each run gets a fresh directory with a
/// hard link to the corpus, so no position file or rotation state carries over between runs.
fn throughput(
    cfg: &Config,
    mode: &Mode,
    corpus: &Corpus,
    run: usize,
) -> Result<Throughput, String> {
    let dir = corpus.path.with_file_name(format!("run-{run}"));
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let log = dir.join("audit.log");
    fs::hard_link(&corpus.path, &log)
        .map_err(|e| format!("link {} to {}: {e}", corpus.path.display(), log.display()))?;
    if cfg.runs > 1 {
        eprintln!("bench: run {run} of {}", cfg.runs);
    }

    let port = procs::free_port().map_err(|e| e.to_string())?;
    let mut tailer =
        Proc::spawn("tailer", &mut tailer_cmd(cfg, mode, port, true)).map_err(|e| e.to_string())?;
    let _tunnel = mode.start_tunnel(port)?;
    let tailer_seen = Progress::new(corpus.lines);
    let ts = tailer_seen.clone();
    let stderr = tailer
        .child
        .stderr
        .take()
        .ok_or("tailer stderr not piped")?;
    let tailer_tail = procs::read_lines(stderr, move |line, at| {
        if let Some(n) = procs::field_u64(line, "records") {
            ts.update(n, at);
        }
    });
    if let Err(e) = procs::wait_listening(port, Duration::from_secs(10), &mut tailer) {
        return Err(child_failure(&e.to_string(), &mut tailer, &tailer_tail));
    }

    let acked = Progress::new(corpus.lines);
    let last_stats = Arc::new(Mutex::new(String::new()));
    let t0 = Instant::now();
    let mut fwd = Proc::spawn(
        "forwarder",
        // The run ends at the first stats line that counts every record acked, so the interval
        // is the resolution of the measurement: at 100 ms a run of 0.8 s was up to 12% slow,
        // which alone made runs of one binary differ by that much.
        &mut forwarder_cmd(cfg, mode, &log, port, "10ms"),
    )
    .map_err(|e| e.to_string())?;
    let (a, ls) = (acked.clone(), last_stats.clone());
    let stderr = fwd
        .child
        .stderr
        .take()
        .ok_or("forwarder stderr not piped")?;
    let fwd_tail = procs::read_lines(stderr, move |line, at| {
        if line.contains("stats:") {
            if let Some(n) = procs::field_u64(line, "records_acked") {
                a.update(n, at);
            }
            if let Ok(mut l) = ls.lock() {
                *l = line.to_string();
            }
        }
    });

    let mut next_report = t0 + Duration::from_secs(5);
    let (done, measured_by) = loop {
        let by_fwd = acked.reached();
        let by_tailer = tailer_seen.reached();
        // The forwarder's acks are authoritative (the tailer's count includes any resent
        // duplicates); its count is the fallback for a forwarder whose stats never get there.
        match (by_fwd, by_tailer) {
            (Some(f), _) => break (f, "forwarder records_acked"),
            (None, Some(t)) if t.elapsed() > Duration::from_secs(3) => {
                break (t, "tailer records count; forwarder stats never reached it")
            }
            _ => {}
        }
        if let Ok(Some(u)) = fwd.try_reap() {
            return Err(child_failure(
                &format!("forwarder exited before the last ack ({})", u.describe()),
                &mut fwd,
                &fwd_tail,
            ));
        }
        if let Ok(Some(u)) = tailer.try_reap() {
            return Err(child_failure(
                &format!("tailer exited during the run ({})", u.describe()),
                &mut tailer,
                &tailer_tail,
            ));
        }
        let now = Instant::now();
        if now >= t0 + cfg.timeout {
            return Err(child_failure(
                &format!(
                    "timeout after {:?}: forwarder acked {} and the tailer counted {} of {} records",
                    cfg.timeout,
                    acked.count.load(Ordering::Relaxed),
                    tailer_seen.count.load(Ordering::Relaxed),
                    corpus.lines
                ),
                &mut fwd,
                &fwd_tail,
            ));
        }
        if now >= next_report {
            eprintln!(
                "bench: {:.0} s, records_acked={} of {}",
                (now - t0).as_secs_f64(),
                acked.count.load(Ordering::Relaxed),
                corpus.lines
            );
            next_report += Duration::from_secs(5);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let secs = (done - t0).as_secs_f64();
    let sched = schedstat(fwd.child.id()).map(|(run, wait)| (t0.elapsed(), run, wait));
    let fwd_usage = fwd
        .terminate(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    // The tailer logs its count once a second: wait for the line that covers the whole run.
    let deadline = Instant::now() + Duration::from_millis(2500);
    while tailer_seen.reached().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let tailer_records = tailer_seen.count.load(Ordering::Relaxed);
    let tailer_usage = tailer
        .terminate(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    if fwd_usage.code != Some(0) {
        eprintln!(
            "bench: forwarder {} after SIGTERM (expected exit code 0); last stderr lines:\n{}",
            fwd_usage.describe(),
            procs::tail_text(&fwd_tail)
        );
    }
    // The shutdown stats line may arrive after the reap; give the reader a moment.
    std::thread::sleep(Duration::from_millis(50));
    let last_stats = last_stats.lock().map(|l| l.clone()).unwrap_or_default();
    if !cfg.keep {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(Throughput {
        secs,
        asleep: sched.map(|(wall, run, wait)| wall.saturating_sub(run + wait)),
        queued: sched.map(|(_, _, wait)| wait),
        measured_by,
        fwd: fwd_usage,
        tailer: tailer_usage,
        tailer_records,
        last_stats,
    })
}

struct Latency {
    sent: usize,
    samples_ms: Vec<f64>,
    duplicates: usize,
}

impl Latency {
    /// Nearest-rank percentile of the sorted samples.
    fn percentile(&self, p: f64) -> Option<f64> {
        if self.samples_ms.is_empty() {
            return None;
        }
        let rank = (p * self.samples_ms.len() as f64).ceil() as usize;
        Some(self.samples_ms[rank.clamp(1, self.samples_ms.len()) - 1])
    }
}

fn latency(cfg: &Config, mode: &Mode, work: &Path) -> Result<Latency, String> {
    let dir = work.join("latency");
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let log = dir.join("audit.log");
    let mut file = gen::open_log_append(&log).map_err(|e| e.to_string())?;

    let port = procs::free_port().map_err(|e| e.to_string())?;
    let _tunnel = mode.start_tunnel(port)?;
    let mut tailer = Proc::spawn("tailer", &mut tailer_cmd(cfg, mode, port, false))
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<(u64, Instant)>();
    let stdout = tailer
        .child
        .stdout
        .take()
        .ok_or("tailer stdout not piped")?;
    procs::read_lines(stdout, move |line, at| {
        if let Some(seq) = gen::seq_of(line.as_bytes()) {
            let _ = tx.send((seq, at));
        }
    });
    let stderr = tailer
        .child
        .stderr
        .take()
        .ok_or("tailer stderr not piped")?;
    let tailer_tail = procs::read_lines(stderr, |_, _| {});
    if let Err(e) = procs::wait_listening(port, Duration::from_secs(10), &mut tailer) {
        return Err(child_failure(&e.to_string(), &mut tailer, &tailer_tail));
    }
    let mut fwd = Proc::spawn(
        "forwarder",
        &mut forwarder_cmd(cfg, mode, &log, port, "60s"),
    )
    .map_err(|e| e.to_string())?;
    let stderr = fwd
        .child
        .stderr
        .take()
        .ok_or("forwarder stderr not piped")?;
    let fwd_tail = procs::read_lines(stderr, |_, _| {});

    let mut generator = gen::Generator::new(cfg.seed).with_wall_clock();
    let mut line = String::new();
    let mut write_line = |seq: u64| -> Result<Instant, String> {
        line.clear();
        generator.event(seq, &mut line);
        let at = Instant::now();
        file.write_all(line.as_bytes())
            .map_err(|e| format!("append to {}: {e}", log.display()))?;
        Ok(at)
    };

    // Warm-up lines (seq above the probes) until one arrives: the forwarder has connected
    // and is following the file, so the probes measure steady-state latency only.
    const WARMUP: u64 = 900_000_000_000;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut warm = 0;
    'warm: loop {
        write_line(WARMUP + warm)?;
        warm += 1;
        let until = Instant::now() + Duration::from_secs(1);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok((seq, _)) if seq >= WARMUP => break 'warm,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if Instant::now() >= deadline {
            return Err(child_failure(
                "no warm-up line reached the tailer within 20 s",
                &mut fwd,
                &fwd_tail,
            ));
        }
    }
    // Drain late warm-up duplicates before probing.
    std::thread::sleep(Duration::from_millis(200));
    while rx.try_recv().is_ok() {}

    let n = cfg.latency_lines as usize;
    let mut sent: Vec<Option<Instant>> = vec![None; n + 1];
    let mut got: Vec<Option<Instant>> = vec![None; n + 1];
    let mut duplicates = 0;
    let mut record = |seq: u64, at: Instant, got: &mut Vec<Option<Instant>>| {
        if let Some(slot) = got.get_mut(seq as usize).filter(|_| seq >= 1) {
            if slot.is_some() {
                duplicates += 1;
            } else {
                *slot = Some(at);
            }
        }
    };
    let start = Instant::now();
    for seq in 1..=n as u64 {
        let due = start + cfg.latency_interval * (seq as u32 - 1);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sent[seq as usize] = Some(write_line(seq)?);
        while let Ok((s, at)) = rx.try_recv() {
            record(s, at, &mut got);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while got[1..].iter().any(|g| g.is_none()) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match rx.recv_timeout(left) {
            Ok((s, at)) => record(s, at, &mut got),
            Err(_) => break,
        }
    }
    let fu = fwd
        .terminate(Duration::from_secs(15))
        .map_err(|e| e.to_string())?;
    let _ = tailer.terminate(Duration::from_secs(5));
    if fu.code != Some(0) {
        eprintln!(
            "bench: latency forwarder {} after SIGTERM; last stderr lines:\n{}",
            fu.describe(),
            procs::tail_text(&fwd_tail)
        );
    }
    let mut samples_ms: Vec<f64> = sent
        .iter()
        .zip(&got)
        .filter_map(|(s, g)| {
            Some((g.as_ref()?.saturating_duration_since(*s.as_ref()?)).as_secs_f64() * 1e3)
        })
        .collect();
    samples_ms.sort_by(|a, b| a.total_cmp(b));
    Ok(Latency {
        sent: n,
        samples_ms,
        duplicates,
    })
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".to_string());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    format!("{cpus} CPUs (nproc), {model}")
}

/// Minimum, median (the mean of the two middle values for an even count) and maximum; `None`
/// for no values.
fn min_median_max(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    Some((v[0], median, v[n - 1]))
}

/// One value as is; several as "median (min .., max ..)" with `decimals` decimals.
fn spread(values: &[f64], decimals: usize) -> String {
    match min_median_max(values) {
        None => "n/a".to_string(),
        Some((_, m, _)) if values.len() == 1 => format!("{m:.decimals$}"),
        Some((lo, m, hi)) => {
            format!("median {m:.decimals$} (min {lo:.decimals$}, max {hi:.decimals$})")
        }
    }
}

/// The median of several runs, or the one value.
fn median(values: &[f64], decimals: usize) -> String {
    match min_median_max(values) {
        None => "n/a".to_string(),
        Some((_, m, _)) if values.len() == 1 => format!("{m:.decimals$}"),
        Some((_, m, _)) => format!("median {m:.decimals$}"),
    }
}

fn print_table(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let vwidth = rows.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    println!("| {:<width$} | {:<vwidth$} |", "metric", "value");
    println!("|-{}-|-{}-|", "-".repeat(width), "-".repeat(vwidth));
    for (k, v) in rows {
        println!("| {k:<width$} | {v:<vwidth$} |");
    }
}

fn print_report(
    cfg: &Config,
    mode: &Mode,
    t: Option<(&Corpus, &[Throughput])>,
    l: Option<&Latency>,
) {
    let mut rows: Vec<(&str, String)> = Vec::new();
    if let Some((c, runs)) = t {
        let gb = c.bytes as f64 / 1e9;
        let per_run = |f: &dyn Fn(&Throughput) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
        let mbps = per_run(&|r| c.bytes as f64 / 1e6 / r.secs);
        rows.push((
            "bytes",
            format!("{} ({:.1} MB)", c.bytes, c.bytes as f64 / 1e6),
        ));
        rows.push(("records", c.lines.to_string()));
        if runs.len() > 1 {
            rows.push(("runs", runs.len().to_string()));
        }
        rows.push(("seconds", spread(&per_run(&|r| r.secs), 3)));
        rows.push(("MB/s", spread(&mbps, 1)));
        if let Some((lo, m, _)) = min_median_max(&mbps).filter(|_| runs.len() > 1) {
            rows.push(("MB/s min / median", format!("{:.0}%", 100.0 * lo / m)));
        }
        rows.push((
            "records/s",
            median(&per_run(&|r| c.lines as f64 / r.secs), 0),
        ));
        // User and sys are each their own median, so they need not add up to the total.
        let mid = |f: &dyn Fn(&Throughput) -> f64| {
            min_median_max(&per_run(f)).map_or(f64::NAN, |(_, m, _)| m)
        };
        rows.push((
            "forwarder CPU s",
            format!(
                "{} (user {:.2}, sys {:.2})",
                median(&per_run(&|r| r.fwd.cpu_s()), 2),
                mid(&|r| r.fwd.user_s),
                mid(&|r| r.fwd.sys_s)
            ),
        ));
        rows.push(("CPU s per GB", spread(&per_run(&|r| r.fwd.cpu_s() / gb), 2)));
        // A forwarder that never waits while lines are unread spends the whole run on the CPU:
        // its CPU seconds over the wall seconds stay near 100% however fast the machine is at
        // the time, so a stall shows here even when the machine's own speed moves MB/s more.
        let busy = per_run(&|r| 100.0 * r.fwd.cpu_s() / r.secs);
        let asleep: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.asleep.map(|d| d.as_secs_f64() * 1e3))
            .collect();
        let queued: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.queued.map(|d| d.as_secs_f64() * 1e3))
            .collect();
        if asleep.len() == runs.len() && queued.len() == runs.len() {
            rows.push(("forwarder asleep ms", spread(&asleep, 0)));
            rows.push(("waited for a CPU ms", spread(&queued, 0)));
        }
        if let Some((lo, m, _)) = min_median_max(&busy) {
            rows.push((
                "forwarder busy",
                if runs.len() > 1 {
                    format!("median {m:.0}% (min {lo:.0}%) of the wall time on the CPU")
                } else {
                    format!("{m:.0}% of the wall time on the CPU")
                },
            ));
        }
        rows.push((
            "peak RSS MiB",
            median(&per_run(&|r| r.fwd.max_rss_kib as f64 / 1024.0), 1),
        ));
        rows.push(("tailer CPU s", median(&per_run(&|r| r.tailer.cpu_s()), 2)));
        let beyond: Vec<String> = runs
            .iter()
            .map(|r| (r.tailer_records as i64 - c.lines as i64).to_string())
            .collect();
        rows.push((
            "tailer records",
            format!(
                "{} ({} beyond the corpus)",
                runs.iter().map(|r| r.tailer_records).max().unwrap_or(0),
                beyond.join(", ")
            ),
        ));
        let mut exits: Vec<String> = runs.iter().map(|r| r.fwd.describe()).collect();
        exits.dedup();
        rows.push(("forwarder exit", exits.join(", ")));
    }
    if let Some(l) = l {
        let ms = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}"));
        rows.push(("latency p50 ms", ms(l.percentile(0.50))));
        rows.push(("latency p99 ms", ms(l.percentile(0.99))));
        rows.push(("latency max ms", ms(l.samples_ms.last().copied())));
        rows.push((
            "latency lines",
            format!(
                "{} sent {} ms apart, {} arrived, {} duplicates",
                l.sent,
                cfg.latency_interval.as_millis(),
                l.samples_ms.len(),
                l.duplicates
            ),
        ));
    }
    println!();
    println!("audit-forwarder bench, mode {}", mode.name);
    println!("machine: {}", machine());
    if let Some((c, runs)) = t {
        println!(
            "corpus generated once in {:.1} s; seconds = forwarder start to last ack (seen via {}); MB = 10^6 bytes",
            c.gen_secs,
            runs.first().map_or("-", |r| r.measured_by)
        );
        if runs.len() > 1 {
            println!(
                "median over {} runs of the same corpus; latency measured once",
                runs.len()
            );
        }
    }
    println!();
    print_table(&rows);
    if let Some((c, runs)) = t.filter(|(_, runs)| runs.len() > 1) {
        println!();
        println!(
            "| run | seconds | MB/s   | fwd CPU s | busy | asleep ms | CPU wait ms | CPU s per GB | peak RSS MiB | tailer CPU s |"
        );
        println!(
            "|-----|---------|--------|-----------|------|-----------|-------------|--------------|--------------|--------------|"
        );
        for (i, r) in runs.iter().enumerate() {
            let ms = |d: Option<Duration>| {
                d.map_or("n/a".to_string(), |d| {
                    format!("{:.0}", d.as_secs_f64() * 1e3)
                })
            };
            println!(
                "| {:>3} | {:>7.3} | {:>6.1} | {:>9.2} | {:>3.0}% | {:>9} | {:>11} | {:>12.2} | {:>12.1} | {:>12.2} |",
                i + 1,
                r.secs,
                c.bytes as f64 / 1e6 / r.secs,
                r.fwd.cpu_s(),
                100.0 * r.fwd.cpu_s() / r.secs,
                ms(r.asleep),
                ms(r.queued),
                r.fwd.cpu_s() / (c.bytes as f64 / 1e9),
                r.fwd.max_rss_kib as f64 / 1024.0,
                r.tailer.cpu_s()
            );
        }
    }
    if let Some(last) = t.and_then(|(_, runs)| runs.last()) {
        if !last.last_stats.is_empty() {
            println!();
            println!("last forwarder stats line: {}", last.last_stats);
        }
    }
}

fn run() -> Result<(), String> {
    let cfg = parse_config()?;
    let work = cfg
        .dir
        .join(format!("audit-forwarder-bench-{}", std::process::id()));
    fs::create_dir_all(&work).map_err(|e| format!("create {}: {e}", work.display()))?;
    let result = (|| {
        let mode = Mode::new(&cfg.mode, &work)?;
        let t = if cfg.bytes > 0 {
            let corpus = write_corpus(&cfg, &work)?;
            let runs = (1..=cfg.runs)
                .map(|run| throughput(&cfg, &mode, &corpus, run))
                .collect::<Result<Vec<_>, _>>()?;
            Some((corpus, runs))
        } else {
            None
        };
        let l = if cfg.latency_lines > 0 {
            Some(latency(&cfg, &mode, &work)?)
        } else {
            None
        };
        print_report(
            &cfg,
            &mode,
            t.as_ref().map(|(c, r)| (c, r.as_slice())),
            l.as_ref(),
        );
        Ok(())
    })();
    if cfg.keep {
        eprintln!("bench: files kept in {}", work.display());
    } else {
        let _ = fs::remove_dir_all(&work);
    }
    result
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}
