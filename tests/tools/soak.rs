//! Long run under chaos (`just soak`): a simulated kube-apiserver writes audit events at a steady
//! rate and rotates audit.log the way lumberjack does with `maxsize=1` (MB), `maxbackup=1` and
//! `compress=true`, while the forwarder delivers them through the konnectivity path
//! (Unix socket -> socat -> tinyproxy CONNECT -> TLS with client certificates -> tailer) and a
//! seeded chaos loop SIGKILLs the tailer, tinyproxy, socat and the forwarder at random moments
//! and restarts them. At the end every written auditID must have arrived at least once; the
//! forwarder's RSS must stay under a bound and its descriptors other than the log files it holds
//! must not grow within one incarnation (they are sampled every second from /proc).
//!
//! The writer, the certificates and the tunnel's processes come from gen.rs (see bench.rs).

// gen.rs is also the `gen` example's crate root: what only its demo uses is dead code here.
#[allow(dead_code)]
#[path = "gen.rs"]
mod gen;

use gen::procs::{self, Proc};
use gen::Rng;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: soak [--minutes 10] [--seed S] [--rate 100] [--rss-bound-mib 64]
            [--fd-slack 4] [--kill-every-ms 2000..12000] [--down-ms 0..2000] [--dir DIR]
            [--bin PATH] [--keep]";

/// lumberjack's MaxSize unit is the mebibyte (`megabyte = 1024 * 1024` in its source).
const ROTATE_BYTES: u64 = 1 << 20;
/// How long the forwarder may take to deliver what is left once the writer stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Samples of an incarnation's first seconds are left out of the fd check: it is still opening
/// its inotify, signalfd, files and first connection.
const WARMUP: Duration = Duration::from_secs(3);

struct Config {
    bin: PathBuf,
    minutes: f64,
    seed: u64,
    rate: f64,
    rss_bound: u64,
    fd_slack: usize,
    kill_every: (u64, u64),
    down: (u64, u64),
    dir: PathBuf,
    keep: bool,
}

/// `A..B` in milliseconds.
fn parse_range(name: &str, s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or(format!("--{name} {s:?}: expected MIN..MAX"))?;
    let p = |v: &str| v.parse::<u64>().map_err(|e| format!("--{name} {s:?}: {e}"));
    let (a, b) = (p(a)?, p(b)?);
    if a >= b {
        return Err(format!("--{name} {s:?}: MIN must be below MAX"));
    }
    Ok((a, b))
}

fn parse_config() -> Result<Config, String> {
    let mut args = gen::Args::from_env(USAGE, &["keep"])?;
    let cfg = Config {
        bin: args.binary(),
        minutes: args.parsed("minutes", 10.0f64)?,
        seed: args.parsed("seed", 1u64)?,
        rate: args.parsed("rate", 100.0f64)?,
        rss_bound: args.parsed("rss-bound-mib", 64u64)? << 20,
        fd_slack: args.parsed("fd-slack", 4usize)?,
        kill_every: parse_range(
            "kill-every-ms",
            &args
                .value("kill-every-ms")
                .unwrap_or_else(|| "2000..12000".into()),
        )?,
        down: parse_range(
            "down-ms",
            &args.value("down-ms").unwrap_or_else(|| "0..2000".into()),
        )?,
        dir: args
            .value("dir")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir),
        keep: args.flag("keep"),
    };
    args.finish().map_err(|e| format!("{e}\n{USAGE}"))?;
    if cfg.minutes <= 0.0 || cfg.rate <= 0.0 {
        return Err(format!("--minutes and --rate must be positive\n{USAGE}"));
    }
    if !cfg.bin.exists() {
        return Err(format!(
            "{} not found: run `cargo build --release` first (or pass --bin)",
            cfg.bin.display()
        ));
    }
    Ok(cfg)
}

// ---------------------------------------------------------------------------------------------
// What the tailers printed
// ---------------------------------------------------------------------------------------------

/// Copies per sequence number over all tailer incarnations.
#[derive(Default)]
struct Received {
    copies: Vec<u32>,
    /// Lines without a generated auditID (none are expected).
    unparsed: u64,
    /// A last line cut off by SIGKILL; such a record was never acked, so it is sent again.
    torn: u64,
}

type Shared = Arc<Mutex<Received>>;

fn lock(r: &Shared) -> std::sync::MutexGuard<'_, Received> {
    // A poisoned lock means a reader thread panicked; its counts are still the best we have.
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts the records one tailer incarnation prints, until its stdout closes.
fn count_records(out: impl Read + Send + 'static, received: Shared) {
    std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 16, out);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let mut rec = lock(&received);
            if line.last() != Some(&b'\n') {
                rec.torn += 1;
                continue;
            }
            match gen::seq_of(&line) {
                Some(s) => {
                    let s = s as usize;
                    if rec.copies.len() <= s {
                        rec.copies.resize(s + 1, 0);
                    }
                    rec.copies[s] += 1;
                }
                None => rec.unparsed += 1,
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The forwarder's resources
// ---------------------------------------------------------------------------------------------

/// What the samples of one forwarder incarnation showed.
struct Incarnation {
    pid: libc::pid_t,
    started: Instant,
    rss_max: u64,
    fds_min: usize,
    fds_max: usize,
    /// Descriptors that are not log files (sockets, inotify, signalfd, ...), after warm-up.
    other_min: usize,
    other_max: usize,
    held_max: usize,
    samples: u64,
}

impl Incarnation {
    fn new(pid: libc::pid_t) -> Incarnation {
        Incarnation {
            pid,
            started: Instant::now(),
            rss_max: 0,
            fds_min: usize::MAX,
            fds_max: 0,
            other_min: usize::MAX,
            other_max: 0,
            held_max: 0,
            samples: 0,
        }
    }

    /// Reads VmRSS and the descriptor table; a process that just died is skipped.
    fn sample(&mut self, logdir: &Path) {
        let Ok(status) = fs::read_to_string(format!("/proc/{}/status", self.pid)) else {
            return;
        };
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
        let Ok(dir) = fs::read_dir(format!("/proc/{}/fd", self.pid)) else {
            return;
        };
        let (mut fds, mut held) = (0, 0);
        for e in dir.flatten() {
            fds += 1;
            if fs::read_link(e.path()).is_ok_and(|t| t.starts_with(logdir)) {
                held += 1;
            }
        }
        if let Some(kib) = rss_kib {
            self.rss_max = self.rss_max.max(kib << 10);
        }
        self.fds_min = self.fds_min.min(fds);
        self.fds_max = self.fds_max.max(fds);
        self.held_max = self.held_max.max(held);
        if self.started.elapsed() >= WARMUP {
            self.other_min = self.other_min.min(fds - held);
            self.other_max = self.other_max.max(fds - held);
        }
        self.samples += 1;
    }

    fn other_growth(&self) -> usize {
        self.other_max.saturating_sub(self.other_min)
    }
}

// ---------------------------------------------------------------------------------------------
// The components and the chaos
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    Tailer,
    Proxy,
    Front,
    Forwarder,
}

const PARTS: [Part; 4] = [Part::Tailer, Part::Proxy, Part::Front, Part::Forwarder];

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Tailer => "tailer",
            Part::Proxy => "tinyproxy",
            Part::Front => "socat (UDS front)",
            Part::Forwarder => "forwarder",
        }
    }

    /// Chaos weights: the forwarder is killed less often so that each of its incarnations
    /// lives through several reconnects, which is where a descriptor leak would show.
    fn weight(self) -> u64 {
        match self {
            Part::Tailer => 3,
            Part::Proxy | Part::Front => 2,
            Part::Forwarder => 1,
        }
    }
}

struct Rig {
    cfg: Config,
    work: PathBuf,
    logdir: PathBuf,
    port: u16,
    tunnel: gen::Tunnel,
    fwd_args: Vec<String>,
    tailer_args: Vec<String>,
    received: Shared,
    procs: [Option<Proc>; 4],
    kills: [u64; 4],
    /// Exits nobody asked for: (component, how).
    crashes: Vec<(Part, String)>,
    incarnations: Vec<Incarnation>,
}

fn append(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))
}

impl Rig {
    fn start(&mut self, part: Part) -> Result<(), String> {
        let p = match part {
            Part::Tailer => {
                let mut p = Proc::spawn(
                    "tailer",
                    Command::new(&self.cfg.bin)
                        .args(["tailer", "--listen", &format!("127.0.0.1:{}", self.port)])
                        .args(&self.tailer_args)
                        .env("RUST_LOG", "info")
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(append(&self.work.join("tailer.stderr"))?),
                )
                .map_err(|e| e.to_string())?;
                let out = p.child.stdout.take().ok_or("tailer stdout not piped")?;
                count_records(out, self.received.clone());
                procs::wait_listening(self.port, Duration::from_secs(10), &mut p)
                    .map_err(|e| e.to_string())?;
                p
            }
            Part::Proxy => self.tunnel.start_proxy(self.port)?,
            Part::Front => self.tunnel.start_front()?,
            Part::Forwarder => {
                let p = Proc::spawn(
                    "forwarder",
                    Command::new(&self.cfg.bin)
                        .args(&self.fwd_args)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(append(&self.work.join("forwarder.stderr"))?),
                )
                .map_err(|e| e.to_string())?;
                self.incarnations.push(Incarnation::new(p.pid()));
                p
            }
        };
        self.procs[part as usize] = Some(p);
        Ok(())
    }

    fn kill(&mut self, part: Part) {
        if let Some(mut p) = self.procs[part as usize].take() {
            let _ = sigkill(part, &mut p);
            self.kills[part as usize] += 1;
        }
    }

    /// Notes and restarts a component that exited without being killed.
    fn check_alive(&mut self) -> Result<(), String> {
        for part in PARTS {
            let Some(p) = self.procs[part as usize].as_mut() else {
                continue;
            };
            if let Ok(Some(u)) = p.try_reap() {
                eprintln!("soak: {} exited on its own: {}", part.name(), u.describe());
                self.crashes.push((part, u.describe()));
                self.procs[part as usize] = None;
                self.start(part)?;
            }
        }
        Ok(())
    }

    fn sample(&mut self) {
        if self.procs[Part::Forwarder as usize].is_some() {
            if let Some(inc) = self.incarnations.last_mut() {
                inc.sample(&self.logdir);
            }
        }
    }

    fn stop_all(&mut self) {
        for part in PARTS {
            if let Some(mut p) = self.procs[part as usize].take() {
                let _ = sigkill(part, &mut p);
            }
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// SIGKILL and reap. The proxies fork or thread per connection and lead their own process
/// group: the whole group goes, as the tunnels of a dying konnectivity server do.
fn sigkill(part: Part, p: &mut Proc) -> std::io::Result<procs::Usage> {
    match part {
        Part::Proxy | Part::Front => p.kill_group(),
        Part::Tailer | Part::Forwarder => {
            p.signal(libc::SIGKILL);
            p.terminate(Duration::from_secs(5))
        }
    }
}

fn pick_part(rng: &mut Rng) -> Part {
    let total: u64 = PARTS.iter().map(|p| p.weight()).sum();
    let mut n = rng.range(0, total);
    for p in PARTS {
        if n < p.weight() {
            return p;
        }
        n -= p.weight();
    }
    Part::Tailer
}

/// Distinct sequence numbers 1..=written received, and the duplicates among them.
struct Tally {
    unique: u64,
    missing: Vec<u64>,
    duplicated: u64,
    extra_copies: u64,
    worst: u32,
    worst_seq: u64,
}

fn tally(received: &Shared, written: u64) -> Tally {
    let rec = lock(received);
    let mut t = Tally {
        unique: 0,
        missing: Vec::new(),
        duplicated: 0,
        extra_copies: 0,
        worst: 0,
        worst_seq: 0,
    };
    for seq in 1..=written {
        let n = rec.copies.get(seq as usize).copied().unwrap_or(0);
        if n == 0 {
            t.missing.push(seq);
            continue;
        }
        t.unique += 1;
        if n > 1 {
            t.duplicated += 1;
            t.extra_copies += u64::from(n - 1);
        }
        if n > t.worst {
            t.worst = n;
            t.worst_seq = seq;
        }
    }
    t
}

fn run(cfg: Config) -> Result<bool, String> {
    let work = cfg
        .dir
        .join(format!("audit-forwarder-soak-{}", std::process::id()));
    let logdir = work.join("auditlog");
    fs::create_dir_all(&logdir).map_err(|e| format!("create {}: {e}", logdir.display()))?;
    let certs = work.join("certs");
    gen::make_certs(&certs)?;
    let (mut fwd_tls, tailer_args) = gen::tls_args(&certs);
    let tunnel = gen::Tunnel::new(&work).map_err(|e| e.to_string())?;
    let port = procs::free_port().map_err(|e| e.to_string())?;
    let log = logdir.join("audit.log");
    let mut fwd_args: Vec<String> = vec![
        "--audit-log-path".into(),
        log.display().to_string(),
        "--target".into(),
        format!("127.0.0.1:{port}"),
        "--konnectivity-uds-socket".into(),
        tunnel.socket.display().to_string(),
        // Rotation every few seconds at 1 MB leaves a backup on disk for one rotation only:
        // the default 10 s backoff after a killed tailer could outlast it, where a real
        // apiserver's 100 MB files leave hours.
        "--backoff-timer".into(),
        "1s".into(),
        "--stats-interval".into(),
        "10s".into(),
        "--read-from-head=true".into(),
    ];
    fwd_args.append(&mut fwd_tls);
    let lines = (cfg.rate * cfg.minutes * 60.0).round() as u64;
    let seed = cfg.seed;
    let mut rig = Rig {
        cfg,
        work: work.clone(),
        logdir: logdir.clone(),
        port,
        tunnel,
        fwd_args,
        tailer_args,
        received: Shared::default(),
        procs: [None, None, None, None],
        kills: [0; 4],
        crashes: Vec::new(),
        incarnations: Vec::new(),
    };
    for part in PARTS {
        rig.start(part)?;
    }
    rig.tunnel.wait_up(Duration::from_secs(10))?;
    eprintln!(
        "soak: {lines} events at {}/s for {} min, seed {seed}, files in {}",
        rig.cfg.rate,
        rig.cfg.minutes,
        work.display()
    );

    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let opts = gen::WriteOpts {
            dir: logdir.clone(),
            lines,
            rate: rig.cfg.rate,
            rotate_every: 0,
            rotate_bytes: ROTATE_BYTES,
            compress: true,
            max_backups: 1,
            first_seq: 1,
            seed,
        };
        let w = writing.clone();
        std::thread::spawn(move || {
            let r = gen::write_log(&opts);
            w.store(false, Ordering::SeqCst);
            r
        })
    };

    let mut rng = Rng::new(seed);
    let t0 = Instant::now();
    let mut next_kill =
        t0 + Duration::from_millis(rng.range(rig.cfg.kill_every.0, rig.cfg.kill_every.1));
    let mut down: Option<(Part, Instant)> = None;
    let mut next_sample = t0;
    let mut next_report = t0 + Duration::from_secs(30);
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let now = Instant::now();
        rig.check_alive()?;
        if now >= next_sample {
            rig.sample();
            next_sample += Duration::from_secs(1);
        }
        if let Some((part, at)) = down {
            if now >= at {
                rig.start(part)?;
                down = None;
                next_kill = now
                    + Duration::from_millis(rng.range(rig.cfg.kill_every.0, rig.cfg.kill_every.1));
            }
        } else if writing.load(Ordering::SeqCst) && now >= next_kill {
            let part = pick_part(&mut rng);
            rig.kill(part);
            down = Some((
                part,
                now + Duration::from_millis(rng.range(rig.cfg.down.0, rig.cfg.down.1)),
            ));
        }
        if down.is_none() && !writing.load(Ordering::SeqCst) {
            let deadline = *drain_deadline.get_or_insert(now + DRAIN_TIMEOUT);
            if tally(&rig.received, lines).unique == lines || now >= deadline {
                break;
            }
        }
        if now >= next_report {
            let t = tally(&rig.received, lines);
            let inc = rig.incarnations.last();
            eprintln!(
                "soak: {:>4.0} s  received {} unique, {} duplicated  kills {:?}  forwarder rss {:.1} MiB fds {}",
                (now - t0).as_secs_f64(),
                t.unique,
                t.duplicated,
                rig.kills,
                inc.map_or(0, |i| i.rss_max) as f64 / (1 << 20) as f64,
                inc.map_or(0, |i| i.fds_max),
            );
            next_report += Duration::from_secs(30);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let written = writer
        .join()
        .map_err(|_| "the writer thread panicked".to_string())?
        .map_err(|e| format!("writing audit.log: {e}"))?;

    // SIGTERM: the forwarder must still shut down cleanly after all that.
    let fwd_exit = match rig.procs[Part::Forwarder as usize].take() {
        Some(mut p) => p
            .terminate(Duration::from_secs(20))
            .map(|u| u.describe())
            .map_err(|e| e.to_string())?,
        None => "not running".into(),
    };
    // The tailer's last lines are in the pipe already; give its reader a moment.
    std::thread::sleep(Duration::from_millis(500));
    rig.stop_all();
    let elapsed = t0.elapsed();

    let t = tally(&rig.received, written.lines);
    let rec = lock(&rig.received);
    let (unparsed, torn) = (rec.unparsed, rec.torn);
    drop(rec);
    let rss_max = rig
        .incarnations
        .iter()
        .map(|i| i.rss_max)
        .max()
        .unwrap_or(0);
    let fds_min = rig
        .incarnations
        .iter()
        .map(|i| i.fds_min)
        .min()
        .unwrap_or(0);
    let fds_max = rig
        .incarnations
        .iter()
        .map(|i| i.fds_max)
        .max()
        .unwrap_or(0);
    let held_max = rig
        .incarnations
        .iter()
        .map(|i| i.held_max)
        .max()
        .unwrap_or(0);
    let worst_growth = rig
        .incarnations
        .iter()
        .filter(|i| i.other_max > 0)
        .max_by_key(|i| i.other_growth());
    let fwd_errors: Vec<String> = fs::read_to_string(work.join("forwarder.stderr"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ERROR"))
        .map(str::to_string)
        .collect();

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut rows: Vec<(String, String)> = vec![
        (
            "events written".into(),
            format!(
                "{} ({:.1} MB, {} rotations at 1 MiB, one every {:.1} s, maxbackup 1, gzip)",
                written.lines,
                written.bytes as f64 / 1e6,
                written.rotations,
                lines as f64 / rig.cfg.rate / written.rotations.max(1) as f64
            ),
        ),
        ("received unique".into(), t.unique.to_string()),
        ("missing".into(), t.missing.len().to_string()),
        (
            "duplicated events (extra copies)".into(),
            format!("{} ({})", t.duplicated, t.extra_copies),
        ),
        (
            "worst case".into(),
            format!("{} copies (seq {})", t.worst, t.worst_seq),
        ),
        (
            "lines without auditID / torn by SIGKILL".into(),
            format!("{unparsed} / {torn}"),
        ),
    ];
    for part in PARTS {
        rows.push((
            format!("kills: {}", part.name()),
            rig.kills[part as usize].to_string(),
        ));
    }
    rows.extend([
        ("unexpected exits".into(), rig.crashes.len().to_string()),
        (
            "forwarder incarnations".into(),
            rig.incarnations.len().to_string(),
        ),
        (
            "forwarder max RSS".into(),
            format!(
                "{:.1} MiB (bound {:.0} MiB)",
                mib(rss_max),
                mib(rig.cfg.rss_bound)
            ),
        ),
        (
            "forwarder fds min / max".into(),
            format!("{fds_min} / {fds_max} (log files held at most {held_max})"),
        ),
    ]);
    if let Some(i) = worst_growth {
        rows.push((
            "other fds, worst incarnation".into(),
            format!(
                "{}..{} over {} samples (slack {})",
                i.other_min, i.other_max, i.samples, rig.cfg.fd_slack
            ),
        ));
    }
    rows.push(("forwarder ERROR lines".into(), fwd_errors.len().to_string()));
    rows.push(("forwarder exit on final SIGTERM".into(), fwd_exit.clone()));
    println!(
        "\n| soak ({:.1} min, seed {seed}, {} lines/s) | |\n|---|---|",
        elapsed.as_secs_f64() / 60.0,
        rig.cfg.rate
    );
    for (k, v) in &rows {
        println!("| {k} | {v} |");
    }
    println!();

    let mut ok = true;
    if !t.missing.is_empty() {
        ok = false;
        let show: Vec<String> = t.missing.iter().take(20).map(|s| s.to_string()).collect();
        println!(
            "FAIL: {} events never arrived, first: {}",
            t.missing.len(),
            show.join(", ")
        );
        for l in fwd_errors.iter().take(10) {
            println!("    {l}");
        }
        println!(
            "    (with maxbackup 1 a rotated file is deleted at the next rotation: a forwarder \
             down or behind for longer than one rotation loses what it had not read, and its \
             ERROR lines name the file; lower --rate or --down-ms to stay inside that)"
        );
    }
    if rss_max > rig.cfg.rss_bound {
        ok = false;
        println!("FAIL: forwarder RSS reached {:.1} MiB", mib(rss_max));
    }
    if let Some(i) = worst_growth.filter(|i| i.other_growth() > rig.cfg.fd_slack) {
        ok = false;
        println!(
            "FAIL: forwarder pid {} went from {} to {} descriptors besides log files",
            i.pid, i.other_min, i.other_max
        );
    }
    if !rig.crashes.is_empty() {
        ok = false;
        for (part, how) in &rig.crashes {
            println!("FAIL: {} exited on its own: {how}", part.name());
        }
    }
    if fwd_exit != "exit code 0" {
        ok = false;
        println!("FAIL: forwarder on SIGTERM: {fwd_exit}");
    }
    if unparsed > 0 {
        ok = false;
        println!("FAIL: {unparsed} records without a generated auditID");
    }
    if ok && !rig.cfg.keep {
        let _ = fs::remove_dir_all(&work);
    } else {
        println!("files kept in {}", work.display());
    }
    Ok(ok)
}

fn main() {
    let result = parse_config().and_then(run);
    match result {
        Ok(true) => println!("soak OK"),
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    }
}
