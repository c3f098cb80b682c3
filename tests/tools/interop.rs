//! The manual run against a real fluentd (`just interop`, `just fluentd-cost`), outside CI.
//!
//! `check` starts fluentd's `in_forward` -> `out_file` in three modes (plaintext; TLS with
//! client certificates and a shared key; the same with `--compress gzip`), runs the release
//! forwarder over a generated audit log that kube-apiserver-style rotation renames and gzips
//! while it is read, stops fluentd with SIGTERM so that it flushes, and compares every record
//! fluentd wrote with the line it came from: every field, the event time to the nanosecond,
//! every line present, duplicates counted.
//!
//! `cost` measures what our wire format costs fluentd: it sends the same pre-built audit events
//! as Forward, PackedForward or CompressedPackedForward messages of a given chunk size, with an
//! ack per message, and reads fluentd's CPU time and peak RSS from /proc.
//!
//! fluentd comes from the environment, never from this repository: `FLUENTD` (a whole command
//! line, run by `sh`), else `FLUENTD_SRC` (a source checkout, run with `ruby`), else `fluentd` on
//! PATH; `FLUENTD_RUBYOPT` becomes RUBYOPT for fluentd only (e.g. `-r/path/shim.rb`). Without
//! any of them both commands say so and exit 0.

// gen.rs is the `gen` example's crate root; the demo-only parts are dead code here.
#[allow(dead_code)]
#[path = "gen.rs"]
mod gen;

use gen::procs::{self, Proc, Tail};
use serde_json::Value;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const USAGE: &str = "usage:
  interop check [--modes plaintext,tls,gzip] [--events 30000] [--rate 5000] [--rotate-every 2500]
                [--bin PATH] [--keep]
  interop cost  [--formats forward,packed,compressed] [--sizes 256K,512K,1M,2M,4M]
                [--events 60000] [--runs 2] [--window 8M] [--keep]

fluentd: FLUENTD='whole command line' | FLUENTD_SRC=/path/to/fluentd/checkout | fluentd on PATH;
FLUENTD_RUBYOPT is passed to fluentd as RUBYOPT.";

/// The tag the forwarder uses by default and the cost tool sends.
const TAG: &str = "audit";
const SHARED_KEY: &str = "interop-shared-key";
/// The name the forwarder verifies by default (`--tls-vhost`); the server certificate has it.
const VHOST: &str = "kubernetes-audit-tailer";

// ---------------------------------------------------------------------------------------------
// fluentd as a child process
// ---------------------------------------------------------------------------------------------

/// How to start fluentd, found in the environment; None means "not available here".
fn fluentd_command() -> Option<(Command, String)> {
    let mut cmd = if let Ok(line) = std::env::var("FLUENTD") {
        // `exec` keeps fluentd's pid the child's, so /proc/<pid> is fluentd's own.
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("exec {line} \"$@\""))
            .arg("fluentd");
        (c, format!("FLUENTD={line}"))
    } else if let Ok(src) = std::env::var("FLUENTD_SRC") {
        let src = PathBuf::from(src);
        let script = src.join("bin/fluentd");
        if !script.exists() {
            eprintln!("interop: FLUENTD_SRC={} has no bin/fluentd", src.display());
            return None;
        }
        let mut c = Command::new("ruby");
        c.arg(format!("-I{}", src.join("lib").display()))
            .arg(script);
        (c, format!("FLUENTD_SRC={}", src.display()))
    } else {
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("fluentd").is_file()))
            .unwrap_or(false);
        if !on_path {
            return None;
        }
        (Command::new("fluentd"), "fluentd on PATH".to_string())
    };
    if let Ok(opt) = std::env::var("FLUENTD_RUBYOPT") {
        cmd.0.env("RUBYOPT", opt);
    }
    Some(cmd)
}

const NO_FLUENTD: &str = "interop: SKIPPED, no fluentd available. Set FLUENTD to a command line, \
FLUENTD_SRC to a fluentd source checkout (with FLUENTD_RUBYOPT for a compat shim if needed), or \
put fluentd on PATH; see README.md, \"Manual run against a local fluentd\".";

/// A running fluentd with its log file; killed if dropped alive.
struct Fluentd {
    proc: Proc,
    log: PathBuf,
    /// CPU seconds spent by the time it was ready (loading Ruby and plugins), subtracted from
    /// what a run reports.
    startup_cpu_s: f64,
}

impl Fluentd {
    fn start(dir: &Path, conf: &str) -> Result<Fluentd, String> {
        let (mut cmd, _) = fluentd_command().ok_or(NO_FLUENTD)?;
        let conf_path = dir.join("fluent.conf");
        let log = dir.join("fluentd.log");
        fs::write(&conf_path, conf).map_err(|e| format!("write {}: {e}", conf_path.display()))?;
        let out = File::create(dir.join("fluentd.stdout")).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.arg("--no-supervisor")
            .arg("-c")
            .arg(&conf_path)
            .arg("-o")
            .arg(&log)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut proc = Proc::spawn("fluentd", &mut cmd).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if read_text(&log).contains("fluentd worker is now running") {
                break;
            }
            let exited = proc.try_reap().map_err(|e| e.to_string())?;
            if exited.is_some() || Instant::now() > deadline {
                let why = match exited {
                    Some(u) => format!("fluentd exited ({})", u.describe()),
                    None => "fluentd did not say it is running within 90 s".to_string(),
                };
                let text = read_text(&log);
                // The one known incompatibility of fluentd 1.16 with Debian's serverengine 2.2.2.
                let hint = if text.contains("socket_manager.rb") && text.contains("ArgumentError") {
                    "\n    (serverengine older than 2.3.2: load a shim that passes generate_path to \
SocketManager::Server.open with FLUENTD_RUBYOPT=-r/path/to/shim.rb; see README.md)"
                } else {
                    ""
                };
                return Err(format!(
                    "{why}; last lines of its log and output:\n{}{}{hint}",
                    last_lines(&log, 15),
                    last_lines(&dir.join("fluentd.stdout"), 15)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let startup_cpu_s = proc_cpu_s(proc.pid())?;
        Ok(Fluentd {
            proc,
            log,
            startup_cpu_s,
        })
    }

    /// CPU seconds since it was ready, and its peak RSS so far.
    fn usage(&self) -> Result<(f64, u64), String> {
        let cpu = proc_cpu_s(self.proc.pid())? - self.startup_cpu_s;
        Ok((cpu, proc_hwm_kib(self.proc.pid())?))
    }

    /// SIGTERM (fluentd flushes its buffers), then a clean exit is required.
    fn stop(mut self) -> Result<(), String> {
        let u = self
            .proc
            .terminate(Duration::from_secs(60))
            .map_err(|e| e.to_string())?;
        if u.code != Some(0) {
            return Err(format!(
                "fluentd did not exit cleanly on SIGTERM: {}\n{}",
                u.describe(),
                last_lines(&self.log, 15)
            ));
        }
        Ok(())
    }
}

/// utime + stime of a live process, all threads, from /proc/<pid>/stat.
fn proc_cpu_s(pid: libc::pid_t) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    // The command name in parentheses may hold spaces; fields are counted after its ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or(format!("{path}: no ')'"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let tick = |i: usize| -> Result<f64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|t| t as f64)
            .ok_or(format!("{path}: field {} unreadable", i + 3))
    };
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((tick(11)? + tick(12)?) / hz)
}

/// Peak resident set size (VmHWM) of a live process in KiB.
fn proc_hwm_kib(pid: libc::pid_t) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or(format!("{path}: no VmHWM"))
}

fn read_text(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn last_lines(path: &Path, n: usize) -> String {
    let text = read_text(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect()
}

/// What fluentd's `in_forward` asks of clients in one run.
struct Receiver<'a> {
    port: u16,
    /// Directory with ca.crt, server.crt, server.key: TLS with client certificates.
    certs: Option<&'a Path>,
    shared_key: bool,
    out: &'a Path,
}

/// Our own configuration: `in_forward` -> `out_file` with one JSON line per record, the event
/// time in UTC with nanoseconds, and a memory buffer that SIGTERM flushes.
fn fluent_conf(r: &Receiver) -> String {
    let mut transport = String::new();
    if let Some(c) = r.certs {
        let p = |f: &str| c.join(f).display().to_string();
        transport = format!(
            "  <transport tls>\n    cert_path {}\n    private_key_path {}\n    client_cert_auth true\n    ca_path {}\n  </transport>\n",
            p("server.crt"),
            p("server.key"),
            p("ca.crt")
        );
    }
    let security = if r.shared_key {
        format!("  <security>\n    self_hostname fluentd-interop\n    shared_key {SHARED_KEY}\n  </security>\n")
    } else {
        String::new()
    };
    format!(
        "<system>\n  log_level info\n</system>\n\
<source>\n  @type forward\n  bind 127.0.0.1\n  port {port}\n{transport}{security}</source>\n\
<match fluent.**>\n  @type null\n</match>\n<match {TAG}>\n  @type file\n  path {out}/records\n  append true\n\
  <format>\n    @type out_file\n    time_type string\n    time_format %Y-%m-%dT%H:%M:%S.%N%:z\n    utc true\n  </format>\n\
  <buffer>\n    @type memory\n    flush_mode interval\n    flush_interval 1s\n    flush_at_shutdown true\n    chunk_limit_size 8m\n    total_limit_size 1g\n  </buffer>\n\
</match>\n",
        port = r.port,
        out = r.out.display()
    )
}

/// Counts the lines of the files fluentd writes into a directory, reading only what is new.
struct OutCounter {
    dir: PathBuf,
    seen: HashMap<PathBuf, (u64, u64)>,
}

impl OutCounter {
    fn new(dir: &Path) -> OutCounter {
        OutCounter {
            dir: dir.to_path_buf(),
            seen: HashMap::new(),
        }
    }

    fn lines(&mut self) -> u64 {
        for path in out_files(&self.dir) {
            let (offset, lines) = self.seen.entry(path.clone()).or_insert((0, 0));
            let Ok(mut f) = File::open(&path) else {
                continue;
            };
            let mut buf = Vec::new();
            if f.seek(SeekFrom::Start(*offset)).is_ok() && f.read_to_end(&mut buf).is_ok() {
                // Count only complete lines; a partial last line is read again next time.
                let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                *lines += buf[..end].iter().filter(|&&b| b == b'\n').count() as u64;
                *offset += end as u64;
            }
        }
        self.seen.values().map(|(_, l)| l).sum()
    }

    /// Waits until `want` lines are there, or `timeout` passed; returns what is there.
    fn wait_for(&mut self, want: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.lines();
            if n >= want || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn out_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A CA, a server certificate for `VHOST` and a client certificate (EC P-256) in `dir`.
fn make_pki(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    // One script rather than a dozen Command calls: it reads as what one would type.
    let script = format!(
        r#"set -e
newkey() {{ n=$1; shift; openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$n" -keyout "$n.key" "$@"; }}
newkey interop-ca -x509 -days 2 -out ca.crt 2>/dev/null
for who in server client; do
  newkey "$who" -out "$who.csr" 2>/dev/null
  if [ "$who" = server ]; then
    printf 'extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{VHOST}\n' > "$who.ext"
  else
    printf 'extendedKeyUsage=clientAuth\n' > "$who.ext"
  fi
  openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey interop-ca.key -CAcreateserial \
    -days 2 -extfile "$who.ext" -out "$who.crt" 2>/dev/null
done
"#
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "making certificates with openssl failed (is openssl installed?): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// check: the forwarder against fluentd, every record compared with its line
// ---------------------------------------------------------------------------------------------

struct CheckOpts {
    bin: PathBuf,
    events: u64,
    rate: f64,
    rotate_every: u64,
}

/// Seconds and nanoseconds of an RFC 3339 time in UTC (`Z` or a `+HH:MM` offset), as both
/// kube-apiserver and fluentd's `%Y-%m-%dT%H:%M:%S.%N%:z` write it.
fn parse_time(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let days = gen::days_from_civil(num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
    let mut secs = days * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    let mut i = 19;
    let mut nanos = 0u32;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() || digits.len() > 9 {
            return None;
        }
        nanos = digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32);
    }
    match &s[i..] {
        "Z" => {}
        off if off.len() == 6 && (off.starts_with('+') || off.starts_with('-')) => {
            let o = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            secs -= if off.starts_with('+') { o } else { -o };
        }
        _ => return None,
    }
    Some((secs, nanos))
}

#[derive(Default)]
struct Verdict {
    records: u64,
    duplicates: u64,
    missing: u64,
    mismatched: u64,
    /// The first few mismatches, explained.
    examples: Vec<String>,
}

/// Compares every `TIME<TAB>TAG<TAB>JSON` line fluentd wrote with the source line of its
/// sequence number (`sources[seq - 1]`).
fn compare(out_dir: &Path, sources: &[String]) -> Result<Verdict, String> {
    let mut v = Verdict::default();
    let mut seen = vec![0u32; sources.len()];
    let bad = |v: &mut Verdict, why: String| {
        v.mismatched += 1;
        if v.examples.len() < 5 {
            v.examples.push(why);
        }
    };
    for path in out_files(out_dir) {
        let text =
            fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            v.records += 1;
            let at = format!("{}:{}", path.display(), n + 1);
            let mut parts = line.splitn(3, '\t');
            let (Some(time), Some(tag), Some(json)) = (parts.next(), parts.next(), parts.next())
            else {
                bad(&mut v, format!("{at}: not TIME<TAB>TAG<TAB>JSON"));
                continue;
            };
            let seq = gen::seq_of(json.as_bytes()).unwrap_or(0) as usize;
            if seq == 0 || seq > sources.len() {
                bad(&mut v, format!("{at}: no generated auditID"));
                continue;
            }
            seen[seq - 1] += 1;
            if seen[seq - 1] > 1 {
                v.duplicates += 1;
            }
            let src: Value = serde_json::from_str(&sources[seq - 1])
                .map_err(|e| format!("source line {seq} is not JSON: {e}"))?;
            let got: Value = match serde_json::from_str(json) {
                Ok(g) => g,
                Err(e) => {
                    bad(&mut v, format!("{at}: record is not JSON: {e}"));
                    continue;
                }
            };
            let stage = src["stageTimestamp"].as_str().and_then(parse_time);
            if tag != TAG {
                bad(&mut v, format!("{at}: tag {tag:?}, want {TAG:?}"));
            } else if parse_time(time) != stage || stage.is_none() {
                bad(
                    &mut v,
                    format!(
                        "{at}: event {seq} time {time}, stageTimestamp {}",
                        src["stageTimestamp"]
                    ),
                );
            } else if got != src {
                let keys: Vec<String> = src
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, val)| got.get(k.as_str()) != Some(val))
                    .map(|(k, _)| k.clone())
                    .collect();
                bad(&mut v, format!("{at}: event {seq} differs in {keys:?}"));
            }
        }
    }
    v.missing = seen.iter().filter(|&&c| c == 0).count() as u64;
    Ok(v)
}

/// One mode: forwarder arguments beyond target and log, and what fluentd asks for.
fn mode_setup(mode: &str, certs: &Path) -> Result<(Vec<String>, bool), String> {
    let tls = vec![
        "--tls-basedir".to_string(),
        certs.display().to_string(),
        "--tls-ca-file=ca.crt".to_string(),
        "--tls-crt-file=client.crt".to_string(),
        "--tls-key-file=client.key".to_string(),
        format!("--shared-key={SHARED_KEY}"),
        "--self-hostname=interop-forwarder".to_string(),
    ];
    match mode {
        "plaintext" => Ok((vec!["--plaintext".to_string()], false)),
        "tls" => Ok((tls, true)),
        "gzip" => Ok(([tls, vec!["--compress=gzip".to_string()]].concat(), true)),
        other => Err(format!("unknown mode {other:?} (plaintext, tls, gzip)")),
    }
}

/// Runs one mode; returns its summary line, or why it failed.
fn check_mode(mode: &str, dir: &Path, o: &CheckOpts) -> Result<String, String> {
    let e = |what: String| move |err: io::Error| format!("{what}: {err}");
    let logdir = dir.join("auditlog");
    let out_dir = dir.join("out");
    let certs = dir.join("certs");
    fs::create_dir_all(&logdir).map_err(e(format!("create {}", logdir.display())))?;
    fs::create_dir_all(&out_dir).map_err(e(format!("create {}", out_dir.display())))?;
    let (fwd_args, tls) = mode_setup(mode, &certs)?;
    if tls {
        make_pki(&certs)?;
    }
    let port = procs::free_port().map_err(e("free port".into()))?;
    let fluentd = Fluentd::start(
        dir,
        &fluent_conf(&Receiver {
            port,
            certs: tls.then_some(certs.as_path()),
            shared_key: tls,
            out: &out_dir,
        }),
    )?;

    // A fifth of the events is in audit.log before the forwarder starts (read from the head);
    // the rest is appended while it runs, rotated every `rotate_every` lines with the backups
    // gzipped and only the newest three kept, as kube-apiserver's lumberjack does.
    let log = logdir.join("audit.log");
    let mut file = gen::open_log_append(&log).map_err(e("open audit.log".into()))?;
    let mut generator = gen::Generator::new(7).with_wall_clock();
    let mut sources: Vec<String> = Vec::with_capacity(o.events as usize);
    let mut append = |file: &mut File, sources: &mut Vec<String>| -> io::Result<()> {
        let mut line = String::new();
        generator.event(sources.len() as u64 + 1, &mut line);
        file.write_all(line.as_bytes())?;
        sources.push(line.trim_end_matches('\n').to_string());
        Ok(())
    };
    let before = o.events / 5;
    for _ in 0..before {
        append(&mut file, &mut sources).map_err(e("write audit.log".into()))?;
    }

    let acked = Arc::new(AtomicU64::new(0));
    let fwd_log = dir.join("forwarder.stderr");
    let mut fwd = Proc::spawn(
        "forwarder",
        Command::new(&o.bin)
            .arg("--audit-log-path")
            .arg(&log)
            .args(["--target", &format!("127.0.0.1:{port}")])
            .args(&fwd_args)
            .args(["--stats-interval=1s", "--log-level=info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let tail = follow_stats(&mut fwd, &fwd_log, acked.clone())?;

    let pace = Instant::now();
    for i in 0..o.events - before {
        if i > 0 && i % o.rotate_every == 0 {
            gen::rotate(&logdir, &mut file, true, 3).map_err(e("rotate audit.log".into()))?;
        }
        let due = pace + Duration::from_secs_f64(i as f64 / o.rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        append(&mut file, &mut sources).map_err(e("write audit.log".into()))?;
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.load(Ordering::Relaxed) < o.events {
        if let Ok(Some(u)) = fwd.try_reap() {
            return Err(format!(
                "forwarder exited early ({}):\n{}",
                u.describe(),
                procs::tail_text(&tail)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {} records acked within 120 s; forwarder:\n{}fluentd:\n{}",
                acked.load(Ordering::Relaxed),
                o.events,
                procs::tail_text(&tail),
                last_lines(&fluentd.log, 15)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let seconds = start.elapsed().as_secs_f64();
    let fu = fwd
        .terminate(Duration::from_secs(15))
        .map_err(|e| e.to_string())?;
    if fu.code != Some(0) {
        return Err(format!("forwarder: {} on SIGTERM", fu.describe()));
    }
    // Acked records reach out_file at the next flush; wait for them so that the CPU counted
    // includes writing them, then SIGTERM flushes whatever is left.
    OutCounter::new(&out_dir).wait_for(o.events, Duration::from_secs(15));
    let (cpu, hwm) = fluentd.usage()?;
    fluentd.stop()?;

    let v = compare(&out_dir, &sources)?;
    let summary = format!(
        "interop {mode:<9}: events {}, records {}, duplicates {}, missing {}, mismatched {}, \
{seconds:.1} s, fluentd CPU {cpu:.2} s ({:.0} us/record), fluentd peak RSS {} MiB, forwarder CPU {:.2} s",
        o.events,
        v.records,
        v.duplicates,
        v.missing,
        v.mismatched,
        cpu * 1e6 / o.events as f64,
        hwm / 1024,
        fu.cpu_s()
    );
    if v.missing > 0 || v.mismatched > 0 {
        return Err(format!("{summary}\n    {}", v.examples.join("\n    ")));
    }
    Ok(summary)
}

/// Copies the forwarder's stderr to a file and keeps `acked` at its last `records_acked`.
fn follow_stats(fwd: &mut Proc, copy: &Path, acked: Arc<AtomicU64>) -> Result<Tail, String> {
    let stderr = fwd
        .child
        .stderr
        .take()
        .ok_or("forwarder stderr not piped")?;
    let mut out = File::create(copy).map_err(|e| format!("create {}: {e}", copy.display()))?;
    Ok(procs::read_lines(stderr, move |line, _| {
        let _ = writeln!(out, "{line}");
        if let Some(n) = procs::field_u64(line, "records_acked") {
            acked.store(n, Ordering::Relaxed);
        }
    }))
}

fn check(mut args: gen::Args) -> Result<(), String> {
    let modes = args
        .value("modes")
        .unwrap_or_else(|| "plaintext,tls,gzip".into());
    let o = CheckOpts {
        bin: args
            .value("bin")
            .map(PathBuf::from)
            .unwrap_or_else(procs::default_binary),
        events: args.parsed("events", 30_000u64)?.max(10),
        rate: args.parsed("rate", 5_000.0f64)?.max(1.0),
        rotate_every: args.parsed("rotate-every", 2_500u64)?.max(1),
    };
    let keep = args.flag("keep");
    args.finish()?;
    let Some((_, source)) = fluentd_command() else {
        println!("{NO_FLUENTD}");
        return Ok(());
    };
    if !o.bin.exists() {
        return Err(format!(
            "{} not found: run `cargo build --release`",
            o.bin.display()
        ));
    }
    println!(
        "interop: fluentd from {source}; forwarder {}",
        o.bin.display()
    );
    let root = std::env::temp_dir().join(format!("audit-forwarder-interop-{}", std::process::id()));
    let mut failed = Vec::new();
    let mut lines = Vec::new();
    for mode in modes.split(',') {
        let dir = root.join(mode);
        match check_mode(mode, &dir, &o) {
            Ok(line) => {
                println!("{line}");
                lines.push(line);
            }
            Err(why) => {
                println!("interop {mode}: FAILED: {why}");
                failed.push(mode.to_string());
            }
        }
    }
    if keep || !failed.is_empty() {
        println!("files kept in {}", root.display());
    } else {
        let _ = fs::remove_dir_all(&root);
    }
    if failed.is_empty() {
        println!("interop: OK, every line arrived in fluentd, field for field, to the nanosecond");
        Ok(())
    } else {
        Err(format!("failed modes: {}", failed.join(", ")))
    }
}

// ---------------------------------------------------------------------------------------------
// cost: fluentd's CPU per record by message format and chunk size
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Format {
    /// `[tag, [[time, record], ...], option]`
    Forward,
    /// `[tag, bin(entries), option]`
    Packed,
    /// `[tag, bin(gzip(entries)), option + compressed]`, gzip level 1 as the forwarder does.
    Compressed,
}

impl Format {
    fn parse(s: &str) -> Result<Format, String> {
        match s {
            "forward" => Ok(Format::Forward),
            "packed" => Ok(Format::Packed),
            "compressed" => Ok(Format::Compressed),
            o => Err(format!(
                "unknown format {o:?} (forward, packed, compressed)"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Forward => "Forward",
            Format::Packed => "PackedForward",
            Format::Compressed => "CompressedPackedForward",
        }
    }
}

/// A JSON value as msgpack (what the forwarder's transcoder makes of it, key order aside).
fn write_value(out: &mut Vec<u8>, v: &Value) {
    // Writes into a Vec cannot fail.
    match v {
        Value::Null => rmp::encode::write_nil(out).unwrap(),
        Value::Bool(b) => rmp::encode::write_bool(out, *b).unwrap(),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                rmp::encode::write_uint(out, u).unwrap();
            } else if let Some(i) = n.as_i64() {
                rmp::encode::write_sint(out, i).unwrap();
            } else {
                rmp::encode::write_f64(out, n.as_f64().unwrap_or(0.0)).unwrap();
            }
        }
        Value::String(s) => rmp::encode::write_str(out, s).unwrap(),
        Value::Array(a) => {
            rmp::encode::write_array_len(out, a.len() as u32).unwrap();
            a.iter().for_each(|x| write_value(out, x));
        }
        Value::Object(m) => {
            rmp::encode::write_map_len(out, m.len() as u32).unwrap();
            for (k, x) in m {
                rmp::encode::write_str(out, k).unwrap();
                write_value(out, x);
            }
        }
    }
}

/// `[EventTime(stageTimestamp), record]` for each of `events` generated audit lines.
fn build_entries(events: u64) -> Result<Vec<Vec<u8>>, String> {
    let mut generator = gen::Generator::new(1);
    let mut line = String::new();
    (1..=events)
        .map(|seq| {
            line.clear();
            generator.event(seq, &mut line);
            let v: Value = serde_json::from_str(&line).map_err(|e| format!("event {seq}: {e}"))?;
            let (secs, nanos) = v["stageTimestamp"]
                .as_str()
                .and_then(parse_time)
                .ok_or(format!("event {seq}: no stageTimestamp"))?;
            let mut e = Vec::with_capacity(line.len());
            rmp::encode::write_array_len(&mut e, 2).unwrap();
            rmp::encode::write_ext_meta(&mut e, 8, 0).unwrap();
            e.extend((secs as u32).to_be_bytes());
            e.extend(nanos.to_be_bytes());
            write_value(&mut e, &v);
            Ok(e)
        })
        .collect()
}

/// The messages for one format and chunk size: entries grouped so that each message's entries
/// take at most `target` bytes (before compression), with their chunk ids.
fn build_messages(entries: &[Vec<u8>], format: Format, target: usize) -> Vec<(String, Vec<u8>)> {
    let mut messages = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let mut j = i;
        let mut bytes = 0;
        while j < entries.len() && (j == i || bytes + entries[j].len() <= target) {
            bytes += entries[j].len();
            j += 1;
        }
        let id = format!("interop-cost-{:08}", messages.len());
        let group = &entries[i..j];
        let mut m = Vec::with_capacity(bytes + 64);
        rmp::encode::write_array_len(&mut m, 3).unwrap();
        rmp::encode::write_str(&mut m, TAG).unwrap();
        let mut packed = group.concat();
        match format {
            Format::Forward => {
                rmp::encode::write_array_len(&mut m, group.len() as u32).unwrap();
                m.extend_from_slice(&packed);
            }
            Format::Packed | Format::Compressed => {
                if format == Format::Compressed {
                    let mut gz =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
                    gz.write_all(&packed).unwrap();
                    packed = gz.finish().unwrap();
                }
                rmp::encode::write_bin(&mut m, &packed).unwrap();
            }
        }
        let compressed = format == Format::Compressed;
        rmp::encode::write_map_len(&mut m, 2 + compressed as u32).unwrap();
        rmp::encode::write_str(&mut m, "chunk").unwrap();
        rmp::encode::write_str(&mut m, &id).unwrap();
        rmp::encode::write_str(&mut m, "size").unwrap();
        rmp::encode::write_uint(&mut m, group.len() as u64).unwrap();
        if compressed {
            rmp::encode::write_str(&mut m, "compressed").unwrap();
            rmp::encode::write_str(&mut m, "gzip").unwrap();
        }
        messages.push((id, m));
        i = j;
    }
    messages
}

/// Reads one `{"ack": id}` answer.
fn read_ack(r: &mut impl Read) -> Result<String, String> {
    let e = |err: String| format!("reading an ack: {err}");
    let n = rmp::decode::read_map_len(r).map_err(|x| e(x.to_string()))?;
    let mut ack = None;
    for _ in 0..n {
        let key = read_string(r).map_err(e)?;
        let val = read_string(r).map_err(e)?;
        if key == "ack" {
            ack = Some(val);
        }
    }
    ack.ok_or_else(|| e("no \"ack\" key".into()))
}

fn read_string(r: &mut impl Read) -> Result<String, String> {
    let len = rmp::decode::read_str_len(r).map_err(|x| x.to_string())?;
    let mut buf = vec![0; len as usize];
    r.read_exact(&mut buf).map_err(|x| x.to_string())?;
    String::from_utf8(buf).map_err(|x| x.to_string())
}

/// Sends the messages over one connection with at most `window` unacked bytes in flight (like
/// the forwarder), checking each ack against its chunk id, in order.
fn send_all(port: u16, messages: &[(String, Vec<u8>)], window: usize) -> Result<(), String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let in_flight = Arc::new((Mutex::new(0usize), Condvar::new()));
    let flight = in_flight.clone();
    let msgs: Vec<Vec<u8>> = messages.iter().map(|(_, m)| m.clone()).collect();
    let sender = std::thread::spawn(move || -> Result<(), String> {
        let (lock, cv) = &*flight;
        for m in &msgs {
            let mut used = lock.lock().map_err(|e| e.to_string())?;
            while *used > 0 && *used + m.len() > window {
                used = cv.wait(used).map_err(|e| e.to_string())?;
            }
            *used += m.len();
            drop(used);
            writer.write_all(m).map_err(|e| format!("write: {e}"))?;
        }
        Ok(())
    });
    let mut reader = BufReader::new(stream);
    for (id, m) in messages {
        let ack = read_ack(&mut reader)?;
        if &ack != id {
            return Err(format!("ack {ack:?}, expected {id:?}"));
        }
        let (lock, cv) = &*in_flight;
        *lock.lock().map_err(|e| e.to_string())? -= m.len();
        cv.notify_one();
    }
    sender.join().map_err(|_| "sender panicked".to_string())?
}

struct CostRow {
    format: Format,
    target: usize,
    messages: usize,
    cpu_s: f64,
    hwm_kib: u64,
    seconds: f64,
}

fn cost_run(
    dir: &Path,
    entries: &[Vec<u8>],
    format: Format,
    target: usize,
    window: usize,
) -> Result<CostRow, String> {
    let out_dir = dir.join("out");
    fs::create_dir_all(&out_dir).map_err(|e| format!("create {}: {e}", out_dir.display()))?;
    let messages = build_messages(entries, format, target);
    let port = procs::free_port().map_err(|e| e.to_string())?;
    let fluentd = Fluentd::start(
        dir,
        &fluent_conf(&Receiver {
            port,
            certs: None,
            shared_key: false,
            out: &out_dir,
        }),
    )?;
    let start = Instant::now();
    send_all(port, &messages, window)
        .map_err(|e| format!("{e}; fluentd:\n{}", last_lines(&fluentd.log, 15)))?;
    let want = entries.len() as u64;
    let got = OutCounter::new(&out_dir).wait_for(want, Duration::from_secs(60));
    let seconds = start.elapsed().as_secs_f64();
    if got != want {
        return Err(format!("fluentd wrote {got} records of {want}"));
    }
    let (cpu_s, hwm_kib) = fluentd.usage()?;
    fluentd.stop()?;
    Ok(CostRow {
        format,
        target,
        messages: messages.len(),
        cpu_s,
        hwm_kib,
        seconds,
    })
}

fn cost(mut args: gen::Args) -> Result<(), String> {
    let formats: Vec<Format> = args
        .value("formats")
        .unwrap_or_else(|| "forward,packed,compressed".into())
        .split(',')
        .map(Format::parse)
        .collect::<Result<_, _>>()?;
    let sizes: Vec<usize> = args
        .value("sizes")
        .unwrap_or_else(|| "256K,512K,1M,2M,4M".into())
        .split(',')
        .map(|s| gen::parse_size(s).map(|n| n as usize))
        .collect::<Result<_, _>>()?;
    let events = args.parsed("events", 60_000u64)?.max(1);
    let runs = args.parsed("runs", 2u32)?.max(1);
    let window = gen::parse_size(&args.value("window").unwrap_or_else(|| "8M".into()))? as usize;
    let keep = args.flag("keep");
    args.finish()?;
    let Some((_, source)) = fluentd_command() else {
        println!("{NO_FLUENTD}");
        return Ok(());
    };
    let entries = build_entries(events)?;
    let bytes: usize = entries.iter().map(Vec::len).sum();
    println!(
        "fluentd-cost: fluentd from {source}; {events} audit events, {:.1} MB of msgpack entries; \
in_forward (plaintext, ack per message, {} MiB window) -> out_file (JSON lines, memory buffer)",
        bytes as f64 / 1e6,
        window >> 20
    );
    let root = std::env::temp_dir().join(format!("audit-forwarder-cost-{}", std::process::id()));
    // Runs go round the whole matrix once per pass, so a neighbour's load on this machine
    // drifts over every combination alike instead of falling on one of them.
    let combos: Vec<(Format, usize)> = formats
        .iter()
        .flat_map(|&f| sizes.iter().map(move |&t| (f, t)))
        .collect();
    let mut rows: Vec<Vec<CostRow>> = combos.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        for (i, &(format, target)) in combos.iter().enumerate() {
            let dir = root.join(format!("{}-{target}-{run}", format.name()));
            let row = cost_run(&dir, &entries, format, target, window)?;
            eprintln!(
                "  run {}: {} {} KiB: {:.2} CPU-s, {} MiB",
                run + 1,
                format.name(),
                target >> 10,
                row.cpu_s,
                row.hwm_kib >> 10
            );
            rows[i].push(row);
            if !keep {
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }
    // Other load on the machine only ever adds CPU time, so the minimum is the steadiest
    // estimate; the median shows how far the runs spread.
    println!("| message | chunk target | records/message | fluentd CPU s | us/record min / median | fluentd peak RSS | seconds |");
    println!("|---|---|---|---|---|---|---|");
    for rows in &rows {
        let span = |f: &dyn Fn(&CostRow) -> f64, prec: usize| -> String {
            let mut v: Vec<f64> = rows.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            let (lo, hi) = (v[0], v[v.len() - 1]);
            if format!("{lo:.prec$}") == format!("{hi:.prec$}") {
                format!("{lo:.prec$}")
            } else {
                format!("{lo:.prec$}-{hi:.prec$}")
            }
        };
        let mut per_record: Vec<f64> = rows.iter().map(|r| r.cpu_s * 1e6 / events as f64).collect();
        per_record.sort_by(f64::total_cmp);
        let r = &rows[0];
        println!(
            "| {} | {} KiB | {:.0} | {} | {:.0} / {:.0} | {} MiB | {} |",
            r.format.name(),
            r.target >> 10,
            events as f64 / r.messages as f64,
            span(&|r| r.cpu_s, 2),
            per_record[0],
            (per_record[(per_record.len() - 1) / 2] + per_record[per_record.len() / 2]) / 2.0,
            span(&|r| (r.hwm_kib >> 10) as f64, 0),
            span(&|r| r.seconds, 1),
        );
    }
    if keep {
        println!("files kept in {}", root.display());
    } else {
        let _ = fs::remove_dir_all(&root);
    }
    Ok(())
}

fn run() -> Result<(), String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first() else {
        return Err(USAGE.to_string());
    };
    if gen::asks_for_help(&argv) {
        println!("{USAGE}");
        return Ok(());
    }
    let args = gen::Args::parse(&argv[1..], &["keep"])?;
    match cmd.as_str() {
        "check" => check(args),
        "cost" => cost(args),
        "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("interop: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    //! `cargo test --release --example interop`: the checker's own verdicts.

    use super::*;

    #[test]
    fn parse_time_reads_both_writers() {
        let t = |s| parse_time(s);
        let base = (
            gen::days_from_civil(2025, 7, 16) * 86_400 + 10 * 3600 + 12 * 60 + 56,
            0,
        );
        for (text, want) in [
            ("2025-07-16T10:12:56Z", Some(base)),
            ("2025-07-16T10:12:56.525137Z", Some((base.0, 525_137_000))),
            (
                "2025-07-16T10:12:56.525137000+00:00",
                Some((base.0, 525_137_000)),
            ),
            ("2025-07-16T12:12:56.000000001+02:00", Some((base.0, 1))),
            ("2025-07-16T08:12:56.5-02:00", Some((base.0, 500_000_000))),
            ("2025-07-16T10:12:56.1234567891Z", None),
            ("2025-07-16T10:12:56.Z", None),
            ("2025-07-16T10:12:56", None),
            ("2025-07-16 10:12:56Z", None),
            ("2025-07-16T10:12:56+0000", None),
        ] {
            assert_eq!(t(text), want, "{text}");
        }
    }

    /// fluentd's out_file line for a source line, as the forwarder and fluentd should make it.
    fn out_line(src: &str, time: &str) -> String {
        format!("{time}\t{TAG}\t{src}\n")
    }

    #[test]
    fn compare_counts_missing_duplicate_and_changed_records() {
        let dir = std::env::temp_dir().join(format!("interop-compare-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut g = gen::Generator::new(3);
        let sources: Vec<String> = (1..=5)
            .map(|seq| {
                let mut l = String::new();
                g.event(seq, &mut l);
                l.trim_end().to_string()
            })
            .collect();
        let stage = |i: usize| {
            let v: Value = serde_json::from_str(&sources[i]).unwrap();
            let (s, n) = parse_time(v["stageTimestamp"].as_str().unwrap()).unwrap();
            let (y, m, d) = gen::civil_from_days(s.div_euclid(86_400));
            let hms = gen::format_second(s as u64);
            assert!(hms.starts_with(&format!("{y:04}-{m:02}-{d:02}")));
            format!("{hms}.{n:09}+00:00")
        };
        let mut changed: Value = serde_json::from_str(&sources[3]).unwrap();
        changed["verb"] = Value::String("changed".into());
        let text = [
            out_line(&sources[0], &stage(0)),
            out_line(&sources[0], &stage(0)),
            // One nanosecond off.
            out_line(&sources[1], &stage(1).replacen("0+00:00", "1+00:00", 1)),
            out_line(&changed.to_string(), &stage(3)),
            out_line(&sources[4], &stage(4)),
        ]
        .concat();
        fs::write(dir.join("records.log"), text).unwrap();
        let v = compare(&dir, &sources).unwrap();
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(
            (v.records, v.duplicates, v.missing, v.mismatched),
            (5, 1, 1, 2),
            "{:?}",
            v.examples
        );
        assert!(v.examples[0].contains("time"), "{:?}", v.examples);
        assert!(v.examples[1].contains("[\"verb\"]"), "{:?}", v.examples);
    }
}
