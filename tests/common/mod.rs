//! End-to-end test harness: owns everything the integration tests need around the real binary.
//! Temp dirs and ports, the forwarder and the `tailer` receiver as child processes (output
//! captured, printed when a test fails), fake Forward receivers built on a small msgpack reader,
//! a kube-apiserver-like audit log writer (lumberjack rotation, copytruncate), a deterministic
//! audit event generator, and delivery assertions that explain what went wrong. For the TLS
//! tests: a PKI made with the openssl command and TLS receivers (the tailer, or socat). For the
//! metrics tests: one-request HTTP clients and a strict Prometheus text-format reader.
//!
//! Environment knobs: `AF_TEST_VERBOSE=1` tees child stderr to the test's stderr,
//! `AF_TEST_BIN=path` runs another binary instead of the crate's own, `AF_TEST_KEEP=1` keeps
//! the temp dir of a failed test, `AF_TEST_SEED=N` replays the random moments of the kill tests,
//! `AF_TEST_TLS_SERVER=openssl` puts socat (OpenSSL) in front of a plain tailer as the TLS
//! receiver.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The binary under test: `AF_TEST_BIN` if set (a release build, another implementation),
/// else the crate's own binary.
pub fn bin() -> String {
    std::env::var("AF_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_audit-forwarder").to_string())
}

/// The prefix of every generated auditID; the last 12 digits are the sequence number.
pub const AUDIT_ID_PREFIX: &str = "00000000-0000-0000-0000-";

/// `{"ack": "wrong"}` in msgpack, byte for byte.
pub const WRONG_ACK: [u8; 11] = [
    0x81, 0xa3, b'a', b'c', b'k', 0xa5, b'w', b'r', b'o', b'n', b'g',
];

pub fn verbose() -> bool {
    std::env::var_os("AF_TEST_VERBOSE").is_some()
}

/// A poisoned lock only means another harness thread panicked; the data is still what we want
/// to report, so keep going instead of hiding the original failure behind a second panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; true if it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(ms(20));
    }
}

fn tail_of(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

// ---------------------------------------------------------------------------------------------
// Temp dirs, ports, randomness
// ---------------------------------------------------------------------------------------------

pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "af-test-{label}-{}-{n}-{nanos}",
            std::process::id()
        ));
        if let Err(e) = fs::create_dir_all(&path) {
            panic!("cannot create temp dir {}: {e}", path.display());
        }
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            if std::env::var_os("AF_TEST_KEEP").is_some() {
                eprintln!("[harness] keeping {}", self.path.display());
                return;
            }
            eprintln!(
                "[harness] removing {} (set AF_TEST_KEEP=1 to keep it)",
                self.path.display()
            );
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A port nobody listens on right now (the kernel picks it; we release it at once).
pub fn free_port() -> u16 {
    // Ports from below the kernel's ephemeral range (32768-60999 by default), handed out once
    // per test process: a port from bind(0) could be taken between our pick and its use by an
    // outgoing connection's local port or by another test's pick, and a proxy started on it
    // later then fails with "address in use". The block per process keeps concurrent test
    // binaries apart.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const BLOCK: usize = 400;
    let base = 10_000 + (std::process::id() as usize % 50) * BLOCK;
    for _ in 0..BLOCK {
        let port = (base + NEXT.fetch_add(1, Ordering::SeqCst) % BLOCK) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:{base}..{}", base + BLOCK);
}

/// True if some socket is in LISTEN state on 127.0.0.1:port or 0.0.0.0:port. Reading
/// /proc/net/tcp instead of probing with a connect keeps the receiver free of fake connections.
pub fn port_listening(port: u16) -> bool {
    listening_in("/proc/net/tcp", port)
}

/// [`port_listening`] in the network namespace of process `pid` (tests/netfaults.rs starts the
/// tailer in its own namespace, whose sockets our /proc/net/tcp does not show).
pub fn port_listening_in(pid: u32, port: u16) -> bool {
    listening_in(&format!("/proc/{pid}/net/tcp"), port)
}

fn listening_in(proc_net_tcp: &str, port: u16) -> bool {
    let Ok(text) = fs::read_to_string(proc_net_tcp) else {
        return false;
    };
    let loopback = format!("0100007F:{port:04X}");
    let any = format!("00000000:{port:04X}");
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && (f[1] == loopback || f[1] == any) && f[3] == "0A"
    })
}

/// splitmix64: deterministic, good enough to vary test data and pick moments.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Seeded from AF_TEST_SEED or the clock; prints the seed so a failure can be replayed.
    pub fn for_test(name: &str) -> Rng {
        let seed = std::env::var("AF_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("[harness] {name}: AF_TEST_SEED={seed}");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in [lo, hi).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// Time formatting (no chrono in the allowed dependencies)
// ---------------------------------------------------------------------------------------------

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = (y - era * 400) as u64;
    let mp = if m > 2 { m - 3 } else { m + 9 } as u64;
    let doy = (153 * mp + 2) / 5 + d as u64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe as i64 - 719_468
}

fn split_epoch(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    (
        y,
        mo,
        d,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
    )
}

/// `2025-07-16T10:12:56.525137Z`, the way kube-apiserver writes audit timestamps.
pub fn rfc3339_micros(epoch_us: i64) -> String {
    let (y, mo, d, h, mi, s) = split_epoch(epoch_us.div_euclid(1_000_000));
    let us = epoch_us.rem_euclid(1_000_000);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z")
}

/// `2025-07-16T10:12:56Z` (object metadata timestamps have whole seconds).
pub fn rfc3339_secs(epoch_s: i64) -> String {
    let (y, mo, d, h, mi, s) = split_epoch(epoch_s);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// lumberjack's backup timestamp layout `2006-01-02T15-04-05.000`, UTC.
pub fn lumberjack_stamp(epoch_ms: i64) -> String {
    let (y, mo, d, h, mi, s) = split_epoch(epoch_ms.div_euclid(1000));
    let msec = epoch_ms.rem_euclid(1000);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}-{mi:02}-{s:02}.{msec:03}")
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z` into (seconds, nanoseconds) since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut nanos = 0u32;
    let frac = &s[19..s.len() - 1];
    if !frac.is_empty() {
        let digits = frac.strip_prefix('.')?;
        if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        nanos = digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32);
    }
    let days = days_from_civil(y, mo, d);
    Some((days * 86_400 + h * 3600 + mi * 60 + sec, nanos))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Audit event generator
// ---------------------------------------------------------------------------------------------

/// A JSON string literal the way Go's encoding/json writes it: `<`, `>`, `&`, U+2028 and U+2029
/// as \u escapes, \n \r \t short escapes, other control characters as \u00XX.
pub fn go_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One audit.k8s.io/v1 Event as kube-apiserver writes it (compact, Go escaping, 6-digit
/// fractional timestamps), deterministic per `seq`, 300..2000 bytes. The sequence number is in
/// the auditID (`00000000-0000-0000-0000-<seq:012>`) and in annotation
/// `test.audit-forwarder/seq`.
pub fn audit_event(seq: u64) -> String {
    let mut r = Rng::new(seq.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x00A0_D17E);
    let verb = *r.pick(&[
        "get", "list", "watch", "create", "update", "patch", "delete", "get",
    ]);
    let ns = *r.pick(&[
        "default",
        "kube-system",
        "garden-shoot--dev--a1b2c3",
        "monitoring",
        "kube-public",
    ]);
    let (resource, api_path, api_group, api_version, kind) = *r.pick(&[
        ("configmaps", "/api/v1", "", "v1", "ConfigMap"),
        ("secrets", "/api/v1", "", "v1", "Secret"),
        ("pods", "/api/v1", "", "v1", "Pod"),
        ("deployments", "/apis/apps/v1", "apps", "v1", "Deployment"),
        (
            "leases",
            "/apis/coordination.k8s.io/v1",
            "coordination.k8s.io",
            "v1",
            "Lease",
        ),
    ]);
    let name = format!(
        "{}-{:05x}",
        kind.to_ascii_lowercase(),
        r.next_u64() % 0xfffff
    );
    let (user, groups, agent) = *r.pick(&[
        (
            "system:serviceaccount:kube-system:generic-garbage-collector",
            &["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"][..],
            "kube-controller-manager/v1.30.2 (linux/amd64) kubernetes/3968350/system:serviceaccount:kube-system:generic-garbage-collector",
        ),
        (
            "system:kube-scheduler",
            &["system:authenticated"][..],
            "kube-scheduler/v1.30.2 (linux/amd64) kubernetes/3968350/leader-election",
        ),
        (
            "alice@example.com",
            &["oidc:developers", "system:authenticated"][..],
            "kubectl/v1.30.2 (linux/amd64) kubernetes/3968350",
        ),
        (
            "system:node:shoot--dev--a1b2c3-worker-z1-7f9c8-xk2lp",
            &["system:nodes", "system:authenticated"][..],
            "kubelet/v1.30.2 (linux/amd64) kubernetes/3968350",
        ),
    ]);
    let collection = format!("{api_path}/namespaces/{ns}/{resource}");
    let uri = match verb {
        "list" => format!("{collection}?labelSelector=app%3Dweb,tier%21%3Dcache&limit=500"),
        "watch" => format!(
            "{collection}?allowWatchBookmarks=true&resourceVersion={}&timeoutSeconds={}&watch=true",
            r.range(100_000, 999_999),
            r.range(300, 600)
        ),
        "create" => collection.clone(),
        _ => format!("{collection}/{name}"),
    };
    let not_found = verb == "get" && r.next_u64().is_multiple_of(8);
    let code = match verb {
        "create" => 201,
        _ if not_found => 404,
        _ => 200,
    };
    let writes = matches!(verb, "create" | "update" | "patch");
    let level = if writes {
        if r.next_u64().is_multiple_of(2) {
            "RequestResponse"
        } else {
            "Request"
        }
    } else {
        "Metadata"
    };
    let received_us: i64 =
        1_752_660_776_000_000 + seq as i64 * 2_345_678 + r.range(0, 1_000_000) as i64;
    let stage_us = received_us + r.range(900, 95_000) as i64;
    let uid = format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        r.next_u64() as u32,
        r.next_u64() as u16,
        r.next_u64() % 0xfff,
        r.next_u64() % 0xfff,
        r.next_u64() % 0xffff_ffff_ffff
    );
    let s = go_str;

    if seq % 8 == 5 {
        // A probe of a non-resource URL: no objectRef, the smallest events in a real log.
        let path = *r.pick(&["/livez", "/readyz", "/healthz", "/version"]);
        return format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{AUDIT_ID_PREFIX}{seq:012}","stage":"ResponseComplete","requestURI":{},"verb":"get","user":{{"username":"system:anonymous","groups":["system:unauthenticated"]}},"sourceIPs":["10.250.0.{}"],"userAgent":"kube-probe/1.30","responseStatus":{{"metadata":{{}},"code":200}},"requestReceivedTimestamp":{},"stageTimestamp":{},"annotations":{{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"","test.audit-forwarder/seq":"{seq}"}}}}"#,
            s(path),
            r.range(1, 255),
            s(&rfc3339_micros(received_us)),
            s(&rfc3339_micros(stage_us))
        );
    }

    let mut e = String::with_capacity(2048);
    e.push_str(r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"#);
    e.push_str(&s(level));
    e.push_str(&format!(
        r#","auditID":"{AUDIT_ID_PREFIX}{seq:012}","stage":"ResponseComplete","requestURI":"#
    ));
    e.push_str(&s(&uri));
    e.push_str(r#","verb":"#);
    e.push_str(&s(verb));
    e.push_str(r#","user":{"username":"#);
    e.push_str(&s(user));
    if user.starts_with("system:serviceaccount:") {
        e.push_str(&format!(r#","uid":"{uid}""#));
    }
    e.push_str(r#","groups":["#);
    e.push_str(&groups.iter().map(|g| s(g)).collect::<Vec<_>>().join(","));
    e.push(']');
    if user.contains('@') {
        e.push_str(
            r#","extra":{"authentication.kubernetes.io/credential-id":["JTI=a1b2c3\u003e\u003c"]}"#,
        );
    }
    e.push_str(&format!(
        r#"}},"sourceIPs":["10.250.{}.{}"],"userAgent":"#,
        r.range(0, 255),
        r.range(1, 255)
    ));
    e.push_str(&s(agent));
    e.push_str(r#","objectRef":{"resource":"#);
    e.push_str(&s(resource));
    e.push_str(r#","namespace":"#);
    e.push_str(&s(ns));
    if !matches!(verb, "list" | "watch" | "create") {
        e.push_str(r#","name":"#);
        e.push_str(&s(&name));
    }
    if !api_group.is_empty() {
        e.push_str(r#","apiGroup":"#);
        e.push_str(&s(api_group));
    }
    e.push_str(r#","apiVersion":"#);
    e.push_str(&s(api_version));
    e.push('}');
    if not_found {
        e.push_str(r#","responseStatus":{"metadata":{},"status":"Failure","message":"#);
        e.push_str(&s(&format!("{resource} \"{name}\" not found")));
        e.push_str(r#","reason":"NotFound","details":{"name":"#);
        e.push_str(&s(&name));
        e.push_str(r#","kind":"#);
        e.push_str(&s(resource));
        e.push_str(r#"},"code":404}"#);
    } else {
        e.push_str(&format!(
            r#","responseStatus":{{"metadata":{{}},"code":{code}}}"#
        ));
    }
    if writes {
        // A nested object of varying size: what makes real audit lines long.
        let mut pad = String::new();
        let want = r.range(0, if level == "Request" { 220 } else { 40 }) as usize;
        let mut i = 0;
        while pad.len() < want {
            pad.push_str(&format!("key-{i}: value-{i} # <tuned> & \"quoted\"\n"));
            i += 1;
        }
        let replicas = r.range(1, 6);
        e.push_str(r#","requestObject":{"kind":"#);
        e.push_str(&s(kind));
        e.push_str(r#","apiVersion":"#);
        e.push_str(&s(&if api_group.is_empty() {
            api_version.to_string()
        } else {
            format!("{api_group}/{api_version}")
        }));
        e.push_str(r#","metadata":{"name":"#);
        e.push_str(&s(&name));
        e.push_str(r#","namespace":"#);
        e.push_str(&s(ns));
        e.push_str(r#","creationTimestamp":null,"labels":{"app":"web","tier":"backend"},"annotations":{"description":"#);
        e.push_str(&s("Grüße aus Walldorf ✓ <none>"));
        e.push_str(r#"}},"spec":{"replicas":"#);
        e.push_str(&format!(
            r#"{replicas},"paused":false,"revisionHistoryLimit":10,"progressDeadlineSeconds":600,"minReadySeconds":-1}},"data":{{"config.yaml":"#
        ));
        e.push_str(&s(&pad));
        e.push_str("}}");
        if level == "RequestResponse" {
            e.push_str(r#","responseObject":{"kind":"#);
            e.push_str(&s(kind));
            e.push_str(r#","apiVersion":"v1","metadata":{"name":"#);
            e.push_str(&s(&name));
            e.push_str(&format!(
                r#","uid":"{uid}","resourceVersion":"{}","generation":{},"creationTimestamp":"#,
                r.range(100_000, 9_999_999),
                r.range(1, 40)
            ));
            e.push_str(&s(&rfc3339_secs(received_us / 1_000_000 - 86_400)));
            e.push_str("}}");
        }
    }
    e.push_str(r#","requestReceivedTimestamp":"#);
    e.push_str(&s(&rfc3339_micros(received_us)));
    e.push_str(r#","stageTimestamp":"#);
    e.push_str(&s(&rfc3339_micros(stage_us)));
    e.push_str(
        r#","annotations":{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"#,
    );
    e.push_str(&s(&format!(
        "RBAC: allowed by ClusterRoleBinding \"system:{verb}\" of ClusterRole \"edit\" to User \"{user}\""
    )));
    e.push_str(&format!(r#","test.audit-forwarder/seq":"{seq}"}}}}"#));
    e
}

pub fn audit_events(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(audit_event).collect()
}

/// The sequence number of a generated event, read back from its auditID.
pub fn seq_of(v: &Value) -> Option<u64> {
    v.get("auditID")?
        .as_str()?
        .strip_prefix(AUDIT_ID_PREFIX)?
        .parse()
        .ok()
}

/// The hand-written audit lines of `tests/data` (its README says what each covers), one per
/// non-empty line: real event shapes, a hand-made object and a torn (malformed) line.
pub fn sample_lines() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/audit-events.jsonl");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Audit log writer (kube-apiserver + lumberjack v2 behaviour)
// ---------------------------------------------------------------------------------------------

pub struct AuditWriter {
    dir: PathBuf,
    file: File,
    last_stamp_ms: i64,
    /// Bytes written to the current audit.log (offsets for warnings about a line).
    pub offset: u64,
}

fn open_new_log(path: &Path) -> File {
    // lumberjack's openNew: O_CREATE|O_WRONLY|O_TRUNC with the old mode (0600 for audit logs).
    // O_APPEND on top keeps every write at the end even after a copytruncate.
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_APPEND)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

pub fn is_backup_name(name: &str) -> bool {
    name.starts_with("audit-") && (name.ends_with(".log") || name.ends_with(".log.gz"))
}

impl AuditWriter {
    /// Creates `dir` (and parents) and a fresh `dir/audit.log`.
    pub fn create(dir: &Path) -> AuditWriter {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let file = open_new_log(&dir.join("audit.log"));
        AuditWriter {
            dir: dir.to_path_buf(),
            file,
            last_stamp_ms: 0,
            offset: 0,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// Exactly one write(2), as kube-apiserver does per event.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        match self.file.write(bytes) {
            Ok(n) if n == bytes.len() => self.offset += n as u64,
            Ok(n) => panic!("short write to audit.log: {n} of {} bytes", bytes.len()),
            Err(e) => panic!("write to audit.log: {e}"),
        }
    }

    pub fn write_line(&mut self, line: &str) {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.write_raw(&buf);
    }

    pub fn write_lines(&mut self, lines: &[String]) {
        for l in lines {
            self.write_line(l);
        }
    }

    /// lumberjack's rotate without the mill: rename audit.log to
    /// audit-<UTC 2006-01-02T15-04-05.000>.log, create a new empty audit.log (0600).
    /// Stamps are made strictly increasing so fast rotations never collide.
    pub fn rotate_file(&mut self) -> PathBuf {
        self.rotate_file_with(|_| {})
    }

    /// [`rotate_file`](Self::rotate_file) with `between(backup)` run after the rename and
    /// before the new audit.log is created: e.g. a gzip that frees the backup's inode so the
    /// new audit.log can get it (the file system reuses freed inode numbers).
    pub fn rotate_file_with(&mut self, between: impl FnOnce(&Path)) -> PathBuf {
        let stamp = now_ms().max(self.last_stamp_ms + 1);
        self.last_stamp_ms = stamp;
        let backup = self
            .dir
            .join(format!("audit-{}.log", lumberjack_stamp(stamp)));
        let log = self.log_path();
        fs::rename(&log, &backup)
            .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", log.display(), backup.display()));
        // Our handle keeps the backup's inode alive: close it (by swapping in a read-only
        // handle of the directory, never written) before `between` can free the inode.
        self.file =
            File::open(&self.dir).unwrap_or_else(|e| panic!("open {}: {e}", self.dir.display()));
        between(&backup);
        self.file = open_new_log(&log);
        self.offset = 0;
        backup
    }

    /// lumberjack's millRunOnce: keep the newest `max_backups` backups (0 = keep all), delete the
    /// rest, then gzip every remaining plain backup to `<name>.gz` and remove the plain file.
    pub fn mill(&self, compress: bool, max_backups: usize) {
        let mut backups = self.backups();
        backups.reverse(); // newest first
        if max_backups > 0 && backups.len() > max_backups {
            for old in backups.split_off(max_backups) {
                fs::remove_file(&old).unwrap_or_else(|e| panic!("remove {}: {e}", old.display()));
            }
        }
        if compress {
            for b in backups {
                if b.extension().is_some_and(|x| x == "log") {
                    gzip_file(&b);
                }
            }
        }
    }

    pub fn rotate(&mut self, compress: bool, max_backups: usize) -> PathBuf {
        let backup = self.rotate_file();
        self.mill(compress, max_backups);
        backup
    }

    /// All backups (plain and gzipped), oldest first (the stamp layout sorts by time).
    pub fn backups(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(&self.dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", self.dir.display()))
            .filter_map(|e| e.ok())
            .filter(|e| is_backup_name(&e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }

    /// logrotate's copytruncate: copy audit.log to `dest`, then truncate audit.log in place.
    pub fn copytruncate(&mut self, dest: &Path) {
        let log = self.log_path();
        fs::copy(&log, dest)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", log.display(), dest.display()));
        let f = OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        f.set_len(0)
            .unwrap_or_else(|e| panic!("truncate {}: {e}", log.display()));
        self.offset = 0;
    }
}

/// lumberjack's compressLogFile: write `<src>.gz` (same mode), then remove `src`.
pub fn gzip_file(src: &Path) {
    let mut dst_name = src.as_os_str().to_owned();
    dst_name.push(".gz");
    let dst = PathBuf::from(dst_name);
    let mut input = File::open(src).unwrap_or_else(|e| panic!("open {}: {e}", src.display()));
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&dst)
        .unwrap_or_else(|e| panic!("create {}: {e}", dst.display()));
    let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    io::copy(&mut input, &mut gz).unwrap_or_else(|e| panic!("gzip {}: {e}", src.display()));
    gz.finish()
        .unwrap_or_else(|e| panic!("finish {}: {e}", dst.display()));
    fs::remove_file(src).unwrap_or_else(|e| panic!("remove {}: {e}", src.display()));
}

pub fn gunzip_file(path: &Path) -> Vec<u8> {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(f)
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("gunzip {}: {e}", path.display()));
    out
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

fn send_signal(child: &Child, sig: libc::c_int) {
    // SAFETY: plain kill(2) on the pid of a child we have not reaped yet (callers hold the
    // Child and only reap through it), so the pid cannot have been reused.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // ESRCH: it exited on its own (a zombie still accepts signals, so this is rare).
        if e.raw_os_error() != Some(libc::ESRCH) {
            panic!("kill({}, {sig}): {e}", child.id());
        }
    }
}

fn base_command(args: &[String]) -> Command {
    launched_command(&[], args)
}

/// The binary with `args`, started through `launcher` when it is not empty: its first word is
/// the program, the rest go before `args` (tests/emptyroot.rs: `chroot --userspec=U:G ROOT
/// /audit-forwarder`; chroot execs, so the child's pid is the binary's).
fn launched_command(launcher: &[String], args: &[String]) -> Command {
    let mut cmd = match launcher.split_first() {
        Some((program, before)) => {
            let mut c = Command::new(program);
            c.args(before);
            c
        }
        None => Command::new(bin()),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The binary also reads AUDIT_* variables; the developer's environment must not leak in.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AUDIT_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd.env("RUST_BACKTRACE", "1");
    cmd
}

/// Copies a child's output into `sink` line by line (and to our stderr when verbose).
fn capture(
    mut reader: impl BufRead + Send + 'static,
    sink: Arc<Mutex<Vec<u8>>>,
    prefix: String,
    at_eof: Option<Arc<AtomicBool>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let tee = verbose();
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => {
                    if let Some(flag) = &at_eof {
                        flag.store(true, Ordering::SeqCst);
                    }
                    break;
                }
                Ok(_) => {
                    lock(&sink).extend_from_slice(&line);
                    if tee {
                        eprint!("[{prefix}] {}", String::from_utf8_lossy(&line));
                    }
                }
            }
        }
    })
}

fn take_pipes(child: &mut Child) -> (ChildStdout, ChildStderr) {
    // Both were requested as Stdio::piped() in base_command.
    (
        child.stdout.take().expect("stdout piped"),
        child.stderr.take().expect("stderr piped"),
    )
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(ms(10)),
            Err(e) => panic!("waitpid({}): {e}", child.id()),
        }
    }
}

/// Sets the soft limit on open files of `pid` (this test process or a child) with `prlimit`
/// (util-linux); it cannot pass the hard limit, which the failure message then names.
pub fn set_nofile(pid: i32, limit: u64) {
    let st = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")])
        .status()
        .expect("prlimit (util-linux)");
    assert!(
        st.success(),
        "prlimit --nofile={limit}: failed (hard limit {:?})",
        fs::read_to_string(format!("/proc/{pid}/limits"))
            .ok()
            .and_then(|l| l
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .map(str::to_string))
    );
}

/// `audit-forwarder tailer --listen 127.0.0.1:PORT`: the real receiver. Lines it prints are
/// kept across kills and restarts, so `records()` is everything received on this port.
pub struct Tailer {
    pub port: u16,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    threads: Vec<JoinHandle<()>>,
    starts: usize,
    /// Arguments after `--listen ADDR` (TLS, shared key); kept for restarts.
    extra: Vec<String>,
    /// See [`launched_command`]; empty for the binary itself.
    launcher: Vec<String>,
}

impl Tailer {
    pub fn start(port: u16) -> Tailer {
        Tailer::start_with(port, Vec::new())
    }

    /// `audit-forwarder tailer --listen 127.0.0.1:PORT <extra...>`.
    pub fn start_with(port: u16, extra: Vec<String>) -> Tailer {
        Tailer::start_launched(port, extra, Vec::new())
    }

    /// Like [`Tailer::start_with`], the binary started through `launcher` (see
    /// [`launched_command`]).
    pub fn start_launched(port: u16, extra: Vec<String>, launcher: Vec<String>) -> Tailer {
        let mut t = Tailer {
            port,
            child: None,
            lines: Arc::new(Mutex::new(Vec::new())),
            stderr: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
            starts: 0,
            extra,
            launcher,
        };
        t.spawn();
        t
    }

    /// Kill (if running) and start again on the same port with other extra arguments; the
    /// lines printed so far are kept.
    pub fn restart_with(&mut self, extra: Vec<String>) {
        self.kill();
        self.extra = extra;
        self.spawn();
    }

    fn spawn(&mut self) {
        let mut args = vec![
            "tailer".to_string(),
            "--listen".to_string(),
            format!("127.0.0.1:{}", self.port),
        ];
        args.extend(self.extra.iter().cloned());
        for attempt in 0..6 {
            self.starts += 1;
            lock(&self.stderr)
                .extend_from_slice(format!("--- tailer start #{} ---\n", self.starts).as_bytes());
            let mut child = launched_command(&self.launcher, &args)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {} tailer: {e}", bin()));
            let (out, err) = take_pipes(&mut child);
            self.threads.push(collect_stdout_lines(
                out,
                self.lines.clone(),
                self.stderr.clone(),
            ));
            self.threads.push(capture(
                BufReader::new(err),
                self.stderr.clone(),
                format!("tailer {}", child.id()),
                None,
            ));
            let mut exited = None;
            let up = wait_until(secs(20), || {
                if let Ok(Some(st)) = child.try_wait() {
                    exited = Some(st);
                    return true;
                }
                port_listening_in(child.id(), self.port)
            });
            match exited {
                None if up => {
                    self.child = Some(child);
                    return;
                }
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.join_threads();
                    panic!(
                        "tailer on port {} did not listen within 20 s; stderr:\n{}",
                        self.port,
                        self.stderr_text()
                    );
                }
                Some(st) => {
                    self.join_threads();
                    eprintln!(
                        "[harness] tailer on port {} exited at start ({st}), attempt {attempt}",
                        self.port
                    );
                    thread::sleep(ms(300));
                }
            }
        }
        panic!(
            "tailer could not start on port {}; stderr:\n{}",
            self.port,
            self.stderr_text()
        );
    }

    fn join_threads(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// SIGKILL, reap, and collect everything it printed before dying.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            send_signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
        self.join_threads();
    }

    /// Kill (if running) and start again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn line_count(&self) -> usize {
        lock(&self.lines).len()
    }

    pub fn lines(&self) -> Vec<String> {
        lock(&self.lines).clone()
    }

    pub fn records(&self) -> Vec<Value> {
        self.lines().iter().map(|l| parse_printed(l)).collect()
    }

    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.line_count() >= n)
    }

    /// Waits until every expected record has arrived at least once.
    pub fn wait_all(&self, cov: &mut Coverage, timeout: Duration) -> bool {
        wait_until(timeout, || {
            let new: Vec<String> = {
                let lines = lock(&self.lines);
                lines[cov.cursor.min(lines.len())..].to_vec()
            };
            cov.cursor += new.len();
            for l in &new {
                cov.feed(&parse_printed(l));
            }
            cov.is_complete()
        })
    }

    pub fn wait_all_lines(&self, expected: &[String], timeout: Duration) -> bool {
        let mut cov = Coverage::new(expected);
        self.wait_all(&mut cov, timeout)
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stderr)).into_owned()
    }

    /// The running process's id (panics if it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the tailer is running").id()
    }

    /// Peak resident memory so far (VmHWM), in bytes; None once the process is gone.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
        Some(
            kb.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()?
                * 1024,
        )
    }
}

fn parse_printed(line: &str) -> Value {
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("tailer printed a line that is not JSON ({e}): {line:?}"))
}

fn collect_stdout_lines(
    out: ChildStdout,
    lines: Arc<Mutex<Vec<String>>>,
    notes: Arc<Mutex<Vec<u8>>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if buf.last() == Some(&b'\n') => {
                    buf.pop();
                    lock(&lines).push(String::from_utf8_lossy(&buf).into_owned());
                }
                Ok(n) => {
                    // Only a killed tailer leaves half a line; it was not acked, so the
                    // forwarder sends the record again.
                    lock(&notes).extend_from_slice(
                        format!("[harness] dropped unterminated stdout fragment of {n} bytes\n")
                            .as_bytes(),
                    );
                }
            }
        }
    })
}

impl Drop for Tailer {
    fn drop(&mut self) {
        let status = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        self.kill();
        if thread::panicking() {
            eprintln!(
                "[harness] tailer port {}: {} lines received, exit before kill: {:?}; stderr (tail):\n{}",
                self.port,
                self.line_count(),
                status,
                tail_of(&self.stderr_text(), 20_000)
            );
        }
    }
}

/// Standard forwarder arguments for a test: log path, plaintext target, then `extra`.
pub fn fwd_args(log: &Path, port: u16, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--audit-log-path".to_string(),
        log.display().to_string(),
        "--target".to_string(),
        format!("127.0.0.1:{port}"),
        "--plaintext".to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// The forwarder process. Its stdout and stderr of all runs go into one buffer; restarts are
/// marked with `--- forwarder start #N ---`.
pub struct Forwarder {
    args: Vec<String>,
    /// Environment variables set for every run (AUDIT_* ones included: configuration by
    /// environment alone is how Gardener deploys it).
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Set when the current run's stderr reaches EOF, i.e. the process is gone; readable
    /// through `&self` so waits can stop early.
    stderr_closed: Arc<AtomicBool>,
    output: Arc<Mutex<Vec<u8>>>,
    threads: Vec<JoinHandle<()>>,
    starts: usize,
    /// See [`launched_command`]; empty for the binary itself.
    launcher: Vec<String>,
}

impl Forwarder {
    pub fn start(args: Vec<String>) -> Forwarder {
        Forwarder::start_env(args, &[])
    }

    /// Starts with `env` set on top of the cleaned environment.
    pub fn start_env(args: Vec<String>, env: &[(&str, &str)]) -> Forwarder {
        Forwarder::start_launched(args, env, Vec::new())
    }

    /// Like [`Forwarder::start_env`], the binary started through `launcher` (see
    /// [`launched_command`]).
    pub fn start_launched(
        args: Vec<String>,
        env: &[(&str, &str)],
        launcher: Vec<String>,
    ) -> Forwarder {
        let mut f = Forwarder {
            launcher,
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            stderr_closed: Arc::new(AtomicBool::new(false)),
            output: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
            starts: 0,
        };
        f.spawn();
        f
    }

    fn spawn(&mut self) {
        self.starts += 1;
        lock(&self.output)
            .extend_from_slice(format!("--- forwarder start #{} ---\n", self.starts).as_bytes());
        let mut child = launched_command(&self.launcher, &self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {:?}: {e}", bin(), self.args));
        let (out, err) = take_pipes(&mut child);
        let prefix = format!("fwd {}", child.id());
        self.stderr_closed = Arc::new(AtomicBool::new(false));
        self.threads.push(capture(
            BufReader::new(out),
            self.output.clone(),
            prefix.clone(),
            None,
        ));
        self.threads.push(capture(
            BufReader::new(err),
            self.output.clone(),
            prefix,
            Some(self.stderr_closed.clone()),
        ));
        self.child = Some(child);
    }

    fn join_threads(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    fn child_ref(&self) -> &Child {
        self.child
            .as_ref()
            .expect("forwarder is not running (killed or terminated)")
    }

    pub fn pid(&self) -> i32 {
        self.child_ref().id() as i32
    }

    /// Still running (not exited)?
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// True once the current run has gone (its stderr closed), whoever ended it.
    pub fn exited(&self) -> bool {
        self.stderr_closed.load(Ordering::SeqCst)
    }

    /// Panics with the output if the current run has gone on its own.
    pub fn assert_alive(&mut self, context: &str) {
        if self.exited() || !self.is_running() {
            let st = self.exit_status();
            panic!(
                "{context}: the forwarder exited unexpectedly ({st:?}); output (tail):\n{}",
                tail_of(&self.stderr_text(), 20_000)
            );
        }
    }

    /// The exit status if it exited on its own.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM and wait up to `timeout` for the exit; panics (after SIGKILL) if it hangs.
    pub fn term(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("term: forwarder not running");
        send_signal(&c, libc::SIGTERM);
        let st = wait_child(&mut c, timeout);
        if st.is_none() {
            send_signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
        self.join_threads();
        match st {
            Some(st) => st,
            None => panic!(
                "forwarder did not exit within {timeout:?} after SIGTERM; output (tail):\n{}",
                tail_of(&self.stderr_text(), 20_000)
            ),
        }
    }

    /// SIGTERM, expect exit status 0 within 30 s.
    pub fn term_ok(&mut self) {
        let st = self.term(secs(30));
        assert!(
            st.success(),
            "forwarder exited with {st} after SIGTERM (want 0); output (tail):\n{}",
            tail_of(&self.stderr_text(), 20_000)
        );
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            send_signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
        self.join_threads();
    }

    /// Start again with the same arguments (kills a still running instance first).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn sigstop(&self) {
        send_signal(self.child_ref(), libc::SIGSTOP);
    }

    pub fn sigcont(&self) {
        send_signal(self.child_ref(), libc::SIGCONT);
    }

    /// True if the process has `path` (by device and inode) open.
    pub fn holds_open(&self, path: &Path) -> bool {
        let Ok(want) = fs::metadata(path) else {
            return false;
        };
        let Ok(rd) = fs::read_dir(format!("/proc/{}/fd", self.pid())) else {
            return false;
        };
        rd.filter_map(|e| e.ok()).any(|e| {
            fs::metadata(e.path()).is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino())
        })
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.output)).into_owned()
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.stderr_text().contains(needle))
    }

    /// Every `stats:` line so far, parsed.
    pub fn stats(&self) -> Vec<BTreeMap<String, u64>> {
        parse_stats(&self.stderr_text())
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let status = self.exit_status();
        self.kill9();
        if thread::panicking() {
            eprintln!(
                "[harness] forwarder {:?}: exit before kill: {:?}; output (tail):\n{}",
                self.args,
                status,
                tail_of(&self.stderr_text(), 30_000)
            );
        }
    }
}

/// Parses every line containing `stats:` into its `key=N` pairs.
pub fn parse_stats(text: &str) -> Vec<BTreeMap<String, u64>> {
    text.lines()
        .filter_map(|l| l.split_once("stats:"))
        .map(|(_, rest)| {
            rest.split_whitespace()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    let v = v.trim_end_matches([',', ';']);
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect()
        })
        .collect()
}

pub const STATS_KEYS: [&str; 8] = [
    "records_acked",
    "bytes_acked",
    "lag_bytes",
    "reconnects",
    "buffered",
    "buffered_peak",
    "malformed",
    "skipped_long",
];

/// Lines of `text` that contain every word of `all` and at least one of `any`, compared in
/// lower case.
pub fn lines_mentioning<'a>(text: &'a str, all: &[&str], any: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            let low = l.to_lowercase();
            all.iter().all(|w| low.contains(w))
                && (any.is_empty() || any.iter().any(|w| low.contains(w)))
        })
        .collect()
}

/// True if `number` occurs in `line` as a whole decimal number (not inside a longer one).
pub fn has_number(line: &str, number: u64) -> bool {
    let n = number.to_string();
    let b = line.as_bytes();
    let mut from = 0;
    while let Some(i) = line[from..].find(&n) {
        let s = from + i;
        let e = s + n.len();
        let before = s == 0 || !b[s - 1].is_ascii_digit();
        let after = e == b.len() || !b[e].is_ascii_digit();
        if before && after {
            return true;
        }
        from = s + 1;
    }
    false
}

/// What `--mem-buf-limit <n>M` means in bytes, judged from `--help`: binary units when the
/// help mentions MiB/KiB/1024, else decimal.
pub fn mega_from_help(n: u64) -> u64 {
    let help = Command::new(bin())
        .arg("--help")
        .output()
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.to_lowercase()
        })
        .unwrap_or_default();
    if help.contains("mib") || help.contains("kib") || help.contains("1024") {
        n * 1024 * 1024
    } else {
        n * 1_000_000
    }
}

// ---------------------------------------------------------------------------------------------
// Delivery assertions
// ---------------------------------------------------------------------------------------------

fn canonical(v: &Value) -> String {
    // serde_json's Map is a BTreeMap here (no preserve_order), so keys come out sorted.
    v.to_string()
}

fn parse_expected(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("expected line is not JSON ({e}): {line}"))
}

pub fn describe(v: &Value) -> String {
    match seq_of(v) {
        Some(s) => format!("seq {s}"),
        None => {
            let t = v.to_string();
            if t.len() > 120 {
                let mut end = 120;
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}...", &t[..end])
            } else {
                t
            }
        }
    }
}

/// "seq 3..=9, seq 12, ..." for the first `max` runs of consecutive indices.
fn describe_indices(idx: &[usize], vals: &[Value], max: usize) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < idx.len() && parts.len() < max {
        let mut j = i;
        while j + 1 < idx.len() && idx[j + 1] == idx[j] + 1 {
            j += 1;
        }
        if j > i {
            parts.push(format!(
                "#{}..=#{} ({} .. {})",
                idx[i],
                idx[j],
                describe(&vals[idx[i]]),
                describe(&vals[idx[j]])
            ));
        } else {
            parts.push(format!("#{} ({})", idx[i], describe(&vals[idx[i]])));
        }
        i = j + 1;
    }
    if i < idx.len() {
        parts.push("...".to_string());
    }
    parts.join(", ")
}

/// Tracks which expected records have arrived, fed incrementally while polling.
pub struct Coverage {
    remaining: HashSet<String>,
    pub cursor: usize,
}

impl Coverage {
    pub fn new(expected: &[String]) -> Coverage {
        Coverage {
            remaining: expected
                .iter()
                .map(|l| canonical(&parse_expected(l)))
                .collect(),
            cursor: 0,
        }
    }

    pub fn feed(&mut self, v: &Value) {
        self.remaining.remove(&canonical(v));
    }

    pub fn feed_all(&mut self, vals: &[Value]) {
        for v in vals {
            self.feed(v);
        }
    }

    pub fn remaining(&self) -> usize {
        self.remaining.len()
    }

    pub fn is_complete(&self) -> bool {
        self.remaining.is_empty()
    }
}

/// Waits until every expected record reached the tailer; stops early if the forwarder died;
/// after `within`, fails with [`assert_delivered`]'s report of what is missing.
pub fn expect_all_within(
    t: &Tailer,
    f: &mut Forwarder,
    expected: &[String],
    what: &str,
    within: Duration,
) {
    let mut cov = Coverage::new(expected);
    let deadline = Instant::now() + within;
    while !t.wait_all(&mut cov, ms(500)) {
        f.assert_alive(what);
        if Instant::now() >= deadline {
            assert_delivered(expected, &t.records(), true);
            panic!("{what}: not everything arrived within {within:?}");
        }
    }
}

/// Every expected record arrived; first arrivals are in the expected order; nothing unexpected
/// arrived; and, unless `allow_dups`, each arrived exactly once. Panics with a report.
pub fn assert_delivered(expected_lines: &[String], records: &[Value], allow_dups: bool) {
    let expected: Vec<Value> = expected_lines.iter().map(|l| parse_expected(l)).collect();
    let mut index: HashMap<String, usize> = HashMap::with_capacity(expected.len());
    for (i, v) in expected.iter().enumerate() {
        if let Some(prev) = index.insert(canonical(v), i) {
            panic!("harness bug: expected records #{prev} and #{i} are equal; they must be unique");
        }
    }
    let mut count = vec![0usize; expected.len()];
    let mut first_order: Vec<usize> = Vec::new();
    let mut unexpected: Vec<(usize, &Value)> = Vec::new();
    for (pos, r) in records.iter().enumerate() {
        match index.get(&canonical(r)) {
            Some(&i) => {
                if count[i] == 0 {
                    first_order.push(i);
                }
                count[i] += 1;
            }
            None => unexpected.push((pos, r)),
        }
    }
    let missing: Vec<usize> = (0..expected.len()).filter(|&i| count[i] == 0).collect();
    let dups: Vec<usize> = (0..expected.len()).filter(|&i| count[i] > 1).collect();
    let extra_copies: usize = dups.iter().map(|&i| count[i] - 1).sum();

    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "MISSING {} of {} expected records: {}",
            missing.len(),
            expected.len(),
            describe_indices(&missing, &expected, 12)
        ));
    }
    if !unexpected.is_empty() {
        let shown: Vec<String> = unexpected
            .iter()
            .take(5)
            .map(|(pos, v)| format!("received[{pos}] = {}", describe(v)))
            .collect();
        problems.push(format!(
            "UNEXPECTED {} records (not in the expected list, or altered in transit): {}",
            unexpected.len(),
            shown.join("; ")
        ));
    }
    if !allow_dups && !dups.is_empty() {
        problems.push(format!(
            "DUPLICATED {} records ({} extra copies): {}",
            dups.len(),
            extra_copies,
            describe_indices(&dups, &expected, 12)
        ));
    }
    if let Some(w) = first_order.windows(2).position(|w| w[1] < w[0]) {
        let inversions = first_order.windows(2).filter(|w| w[1] < w[0]).count();
        problems.push(format!(
            "OUT OF ORDER: {} inversions in first arrivals; first one: #{} ({}) arrived after #{} ({}), at first-arrival position {}",
            inversions,
            first_order[w + 1],
            describe(&expected[first_order[w + 1]]),
            first_order[w],
            describe(&expected[first_order[w]]),
            w + 1
        ));
    }
    if !problems.is_empty() {
        panic!(
            "delivery check failed ({} records received, {} expected, {} distinct arrived, allow_dups={}):\n  {}",
            records.len(),
            expected.len(),
            first_order.len(),
            allow_dups,
            problems.join("\n  ")
        );
    }
    if allow_dups && extra_copies > 0 {
        eprintln!(
            "[harness] all {} records delivered in order; {} duplicate copies (allowed)",
            expected.len(),
            extra_copies
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Minimal msgpack reader (for fake receivers) and Forward protocol bits
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub enum Mp {
    Nil,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(Vec<u8>),
    Bin(Vec<u8>),
    Array(Vec<Mp>),
    Map(Vec<(Mp, Mp)>),
    Ext(i8, Vec<u8>),
}

enum MpErr {
    NeedMore,
    Invalid(String),
}

/// Refuse declared lengths above this, so a corrupt frame fails instead of waiting forever.
const MP_MAX_LEN: usize = 256 << 20;
const MP_MAX_DEPTH: usize = 64;

struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MpErr> {
        if n > MP_MAX_LEN {
            return Err(MpErr::Invalid(format!("declared length {n} too large")));
        }
        if self.b.len() - self.pos < n {
            return Err(MpErr::NeedMore);
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> Result<u64, MpErr> {
        Ok(self.take(n)?.iter().fold(0u64, |a, &x| (a << 8) | x as u64))
    }

    fn value(&mut self, depth: usize) -> Result<Mp, MpErr> {
        if depth > MP_MAX_DEPTH {
            return Err(MpErr::Invalid("nesting too deep".into()));
        }
        let t = self.take(1)?[0];
        Ok(match t {
            0x00..=0x7f => Mp::Int(t as i128),
            0x80..=0x8f => self.map((t & 0x0f) as usize, depth)?,
            0x90..=0x9f => self.array((t & 0x0f) as usize, depth)?,
            0xa0..=0xbf => Mp::Str(self.take((t & 0x1f) as usize)?.to_vec()),
            0xc0 => Mp::Nil,
            0xc1 => return Err(MpErr::Invalid("byte 0xc1 is never used".into())),
            0xc2 => Mp::Bool(false),
            0xc3 => Mp::Bool(true),
            0xc4..=0xc6 => {
                let n = self.be(1 << (t - 0xc4))? as usize;
                Mp::Bin(self.take(n)?.to_vec())
            }
            0xc7..=0xc9 => {
                let n = self.be(1 << (t - 0xc7))? as usize;
                let ty = self.take(1)?[0] as i8;
                Mp::Ext(ty, self.take(n)?.to_vec())
            }
            0xca => Mp::Float(f32::from_bits(self.be(4)? as u32) as f64),
            0xcb => Mp::Float(f64::from_bits(self.be(8)?)),
            0xcc..=0xcf => Mp::Int(self.be(1 << (t - 0xcc))? as i128),
            0xd0 => Mp::Int(self.be(1)? as u8 as i8 as i128),
            0xd1 => Mp::Int(self.be(2)? as u16 as i16 as i128),
            0xd2 => Mp::Int(self.be(4)? as u32 as i32 as i128),
            0xd3 => Mp::Int(self.be(8)? as i64 as i128),
            0xd4..=0xd8 => {
                let ty = self.take(1)?[0] as i8;
                Mp::Ext(ty, self.take(1 << (t - 0xd4))?.to_vec())
            }
            0xd9..=0xdb => {
                let n = self.be(1 << (t - 0xd9))? as usize;
                Mp::Str(self.take(n)?.to_vec())
            }
            0xdc | 0xdd => {
                let n = self.be(if t == 0xdc { 2 } else { 4 })? as usize;
                self.array(n, depth)?
            }
            0xde | 0xdf => {
                let n = self.be(if t == 0xde { 2 } else { 4 })? as usize;
                self.map(n, depth)?
            }
            0xe0..=0xff => Mp::Int(t as i8 as i128),
        })
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<Mp, MpErr> {
        // Every element takes at least one byte: never reserve more than what is buffered.
        let mut v = Vec::with_capacity(n.min(self.b.len() - self.pos));
        for _ in 0..n {
            v.push(self.value(depth + 1)?);
        }
        Ok(Mp::Array(v))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Mp, MpErr> {
        let mut v = Vec::with_capacity(n.min(self.b.len() - self.pos));
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let val = self.value(depth + 1)?;
            v.push((k, val));
        }
        Ok(Mp::Map(v))
    }
}

/// Decodes one msgpack object from the front of `buf`: Ok(None) if more bytes are needed,
/// Ok(Some((value, consumed))) when complete.
pub fn mp_decode(buf: &[u8]) -> Result<Option<(Mp, usize)>, String> {
    let mut c = Cur { b: buf, pos: 0 };
    match c.value(0) {
        Ok(v) => Ok(Some((v, c.pos))),
        Err(MpErr::NeedMore) => Ok(None),
        Err(MpErr::Invalid(e)) => Err(format!("{e} (at byte {})", c.pos)),
    }
}

/// A record as JSON. Strings must be msgpack str and valid UTF-8; map keys must be strings.
pub fn mp_to_json(m: &Mp) -> Result<Value, String> {
    Ok(match m {
        Mp::Nil => Value::Null,
        Mp::Bool(b) => Value::Bool(*b),
        Mp::Int(i) => {
            if let Ok(u) = u64::try_from(*i) {
                json!(u)
            } else if let Ok(s) = i64::try_from(*i) {
                json!(s)
            } else {
                return Err(format!("integer {i} out of range"));
            }
        }
        Mp::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("float {f} has no JSON form"))?,
        Mp::Str(b) => Value::String(
            String::from_utf8(b.clone()).map_err(|_| format!("str is not UTF-8: {b:?}"))?,
        ),
        Mp::Bin(b) => {
            return Err(format!(
                "bin where a JSON value was expected ({} bytes)",
                b.len()
            ))
        }
        Mp::Array(a) => Value::Array(a.iter().map(mp_to_json).collect::<Result<_, _>>()?),
        Mp::Map(kv) => {
            let mut o = serde_json::Map::new();
            for (k, v) in kv {
                let Mp::Str(k) = k else {
                    return Err(format!("map key is not a str: {k:?}"));
                };
                let k =
                    String::from_utf8(k.clone()).map_err(|_| "map key not UTF-8".to_string())?;
                o.insert(k, mp_to_json(v)?);
            }
            Value::Object(o)
        }
        Mp::Ext(t, d) => return Err(format!("ext type {t} ({} bytes) inside a record", d.len())),
    })
}

fn mp_str(m: &Mp) -> Option<&[u8]> {
    match m {
        Mp::Str(b) => Some(b),
        _ => None,
    }
}

/// EventTime (ext 0: u32 seconds, u32 nanoseconds, big endian) or an integer time.
pub fn event_time(m: &Mp) -> Option<(u64, u32)> {
    match m {
        Mp::Ext(0, d) if d.len() == 8 => Some((
            u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as u64,
            u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
        )),
        Mp::Int(i) if *i >= 0 => Some((*i as u64, 0)),
        _ => None,
    }
}

pub struct Frame {
    pub tag: String,
    pub times: Vec<Mp>,
    pub records: Vec<Value>,
    pub chunk: Vec<u8>,
    pub size: Option<u64>,
}

/// A PackedForward (or CompressedPackedForward) message with a `chunk` option, checked against
/// the spec: tag str, entries bin/str holding [time, record] pairs, chunk str, size == count.
pub fn parse_frame(m: &Mp) -> Result<Frame, String> {
    let Mp::Array(parts) = m else {
        return Err(format!("message is not an array: {m:?}"));
    };
    if parts.len() != 3 {
        return Err(format!(
            "PackedForward has 3 elements [tag, entries, option]; got {}",
            parts.len()
        ));
    }
    let tag = mp_str(&parts[0])
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .ok_or("tag is not a UTF-8 str")?;
    let Mp::Map(opt) = &parts[2] else {
        return Err("option is not a map".into());
    };
    let opt_get = |k: &str| {
        opt.iter()
            .find(|(key, _)| mp_str(key) == Some(k.as_bytes()))
            .map(|(_, v)| v)
    };
    let chunk = match opt_get("chunk") {
        Some(Mp::Str(c)) if !c.is_empty() => c.clone(),
        Some(other) => {
            return Err(format!(
                "option chunk must be a non-empty str, got {other:?}"
            ))
        }
        None => return Err("option has no chunk (acks are required)".into()),
    };
    let size = match opt_get("size") {
        Some(Mp::Int(n)) if *n >= 0 => Some(*n as u64),
        Some(other) => return Err(format!("option size is not an unsigned int: {other:?}")),
        None => None,
    };
    let raw = match &parts[1] {
        Mp::Bin(b) | Mp::Str(b) => b.clone(),
        other => return Err(format!("entries must be bin (PackedForward): {other:?}")),
    };
    let stream = match opt_get("compressed") {
        None => raw,
        Some(Mp::Str(c)) if c == b"gzip" => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .map_err(|e| format!("gunzip entries: {e}"))?;
            out
        }
        Some(other) => return Err(format!("unknown compressed option {other:?}")),
    };
    let mut times = Vec::new();
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < stream.len() {
        let (entry, used) = match mp_decode(&stream[pos..])? {
            Some(x) => x,
            None => return Err(format!("entry stream truncated at byte {pos}")),
        };
        pos += used;
        let Mp::Array(pair) = entry else {
            return Err("entry is not an array".into());
        };
        if pair.len() != 2 {
            return Err(format!(
                "entry has {} elements, want [time, record]",
                pair.len()
            ));
        }
        if event_time(&pair[0]).is_none() {
            return Err(format!(
                "entry time is neither EventTime nor int: {:?}",
                pair[0]
            ));
        }
        if !matches!(pair[1], Mp::Map(_)) {
            return Err("record is not a map".into());
        }
        records.push(mp_to_json(&pair[1])?);
        times.push(pair[0].clone());
    }
    if let Some(n) = size {
        if n != records.len() as u64 {
            return Err(format!("option size={n} but {} entries", records.len()));
        }
    }
    Ok(Frame {
        tag,
        times,
        records,
        chunk,
        size,
    })
}

/// `{"ack": <chunk>}` with chunk as a str, as in_forward answers.
pub fn encode_ack(chunk: &[u8]) -> Vec<u8> {
    let mut v = vec![0x81, 0xa3, b'a', b'c', b'k'];
    let n = chunk.len();
    if n < 32 {
        v.push(0xa0 | n as u8);
    } else if n < 256 {
        v.extend_from_slice(&[0xd9, n as u8]);
    } else if n < 65_536 {
        v.push(0xda);
        v.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        v.push(0xdb);
        v.extend_from_slice(&(n as u32).to_be_bytes());
    }
    v.extend_from_slice(chunk);
    v
}

// ---------------------------------------------------------------------------------------------
// Fake receivers
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FakeMode {
    /// Read and discard; never answer.
    Discard,
    /// After the first complete frame on each connection answer `{"ack":"wrong"}`, then keep
    /// reading until the forwarder closes.
    WrongAck,
    /// Decode every frame, keep its records, ack it.
    Ack,
    /// As `Ack`, but like fluent-bit's `in_forward` with its `Buffer_Max_Size`: once more than
    /// this many bytes of one message are buffered, reset the connection (RST, no ack).
    AckUpTo(usize),
    /// On the first connection read a few KiB, then stop reading without closing (until
    /// `stop()`); every later connection is served like `Ack`.
    StallFirst,
    /// As `Ack`, but hold every ack until the forwarder has sent nothing for one read timeout
    /// (50 ms), then send them all at once: a receiver that acks a whole window together. The
    /// time from such a batch to the next byte received is kept (`ack_gaps`).
    AckWhenQuiet,
    /// As `Ack`, but each of the first this many connections is reset (RST, no ack) once its
    /// first message is complete: a receiver that restarted at the wrong moments.
    ResetFirst(usize),
}

#[derive(Default)]
struct FakeShared {
    connections: AtomicUsize,
    frames: AtomicUsize,
    bytes: AtomicU64,
    closed_after_wrong_ack: AtomicUsize,
    resets: AtomicUsize,
    ack_gaps: Mutex<Vec<Duration>>,
    records: Mutex<Vec<Value>>,
    first_frame: Mutex<Option<Vec<u8>>>,
    errors: Mutex<Vec<String>>,
}

/// A Forward receiver inside the test process. `stop()` closes everything and frees the port.
pub struct FakeReceiver {
    pub port: u16,
    mode: FakeMode,
    stop: Arc<AtomicBool>,
    shared: Arc<FakeShared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeReceiver {
    /// `read_rate`: bytes per second to read at (slow receiver), None for full speed.
    pub fn start(port: u16, mode: FakeMode, read_rate: Option<u64>) -> FakeReceiver {
        let deadline = Instant::now() + secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("[harness] fake bind 127.0.0.1:{port}: {e}; retrying");
                    thread::sleep(ms(100));
                }
                Err(e) => panic!("fake receiver cannot bind 127.0.0.1:{port}: {e}"),
            }
        };
        listener
            .set_nonblocking(true)
            .expect("set_nonblocking on listener");
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(FakeShared::default());
        let (st, sh) = (stop.clone(), shared.clone());
        let acceptor = thread::spawn(move || {
            let mut conns = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let nth = sh.connections.fetch_add(1, Ordering::SeqCst);
                        let mode = match mode {
                            FakeMode::StallFirst if nth > 0 => FakeMode::Ack,
                            FakeMode::ResetFirst(k) if nth >= k => FakeMode::Ack,
                            m => m,
                        };
                        let (st2, sh2) = (st.clone(), sh.clone());
                        conns.push(thread::spawn(move || serve(s, mode, read_rate, &sh2, &st2)));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ms(5)),
                    Err(e) => {
                        lock(&sh.errors).push(format!("accept: {e}"));
                        thread::sleep(ms(50));
                    }
                }
            }
            drop(listener);
            for c in conns {
                let _ = c.join();
            }
        });
        FakeReceiver {
            port,
            mode,
            stop,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn frames(&self) -> usize {
        self.shared.frames.load(Ordering::SeqCst)
    }

    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::SeqCst)
    }

    /// For `AckWhenQuiet`: from each batch of acks to the next byte received.
    pub fn ack_gaps(&self) -> Vec<Duration> {
        lock(&self.shared.ack_gaps).clone()
    }

    /// Connections reset because a message exceeded `FakeMode::AckUpTo`'s limit.
    pub fn resets(&self) -> usize {
        self.shared.resets.load(Ordering::SeqCst)
    }

    pub fn closed_after_wrong_ack(&self) -> usize {
        self.shared.closed_after_wrong_ack.load(Ordering::SeqCst)
    }

    pub fn records(&self) -> Vec<Value> {
        lock(&self.shared.records).clone()
    }

    /// How many records arrived, without copying them.
    pub fn record_count(&self) -> usize {
        lock(&self.shared.records).len()
    }

    pub fn first_frame(&self) -> Option<Vec<u8>> {
        lock(&self.shared.first_frame).clone()
    }

    pub fn errors(&self) -> Vec<String> {
        lock(&self.shared.errors).clone()
    }

    pub fn summary(&self) -> String {
        format!(
            "fake {:?} on {}: {} connections, {} frames, {} bytes, {} records, {} closed after wrong ack, errors: {:?}",
            self.mode,
            self.port,
            self.connections(),
            self.frames(),
            self.bytes(),
            lock(&self.shared.records).len(),
            self.closed_after_wrong_ack(),
            self.errors()
        )
    }
}

impl Drop for FakeReceiver {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("[harness] {}", self.summary());
        }
    }
}

fn serve(mut s: TcpStream, mode: FakeMode, rate: Option<u64>, sh: &FakeShared, stop: &AtomicBool) {
    let setup = s
        .set_nonblocking(false)
        .and_then(|_| s.set_read_timeout(Some(ms(50))))
        .and_then(|_| s.set_nodelay(true));
    if let Err(e) = setup {
        lock(&sh.errors).push(format!("socket setup: {e}"));
        return;
    }
    if mode == FakeMode::StallFirst {
        stall(&mut s, sh, stop);
        return;
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = vec![0u8; if rate.is_some() { 4096 } else { 64 * 1024 }];
    let mut wrong_ack_sent = false;
    let mut held_acks: Vec<u8> = Vec::new();
    let mut batch_sent: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        let n = match s.read(&mut tmp) {
            Ok(0) => {
                if wrong_ack_sent {
                    sh.closed_after_wrong_ack.fetch_add(1, Ordering::SeqCst);
                }
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if !held_acks.is_empty() {
                    if s.write_all(&held_acks).is_err() {
                        return;
                    }
                    held_acks.clear();
                    batch_sent = Some(Instant::now());
                }
                continue;
            }
            Err(_) => {
                // A reset is the forwarder closing with our wrong ack unread or after it.
                if wrong_ack_sent {
                    sh.closed_after_wrong_ack.fetch_add(1, Ordering::SeqCst);
                }
                return;
            }
        };
        sh.bytes.fetch_add(n as u64, Ordering::SeqCst);
        if let Some(t) = batch_sent.take() {
            lock(&sh.ack_gaps).push(t.elapsed());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(r) = rate {
            thread::sleep(Duration::from_nanos(n as u64 * 1_000_000_000 / r.max(1)));
        }
        let limit = match mode {
            FakeMode::AckUpTo(l) => l,
            _ => usize::MAX,
        };
        loop {
            let (msg, used) = match mp_decode(&buf) {
                Ok(Some((_, used))) if used > limit => {
                    reset(&s, sh);
                    return;
                }
                Ok(Some(_)) if matches!(mode, FakeMode::ResetFirst(_)) => {
                    reset(&s, sh);
                    return;
                }
                Ok(Some(x)) => x,
                Ok(None) if buf.len() > limit => {
                    reset(&s, sh);
                    return;
                }
                Ok(None) => break,
                Err(e) => {
                    lock(&sh.errors).push(format!("undecodable bytes from forwarder: {e}"));
                    return;
                }
            };
            let raw: Vec<u8> = buf.drain(..used).collect();
            sh.frames.fetch_add(1, Ordering::SeqCst);
            {
                let mut ff = lock(&sh.first_frame);
                if ff.is_none() {
                    *ff = Some(raw);
                }
            }
            let frame = match parse_frame(&msg) {
                Ok(f) => f,
                Err(e) => {
                    lock(&sh.errors).push(format!("bad frame: {e}"));
                    continue;
                }
            };
            let reply = match mode {
                FakeMode::Discard => None,
                FakeMode::WrongAck if !wrong_ack_sent => {
                    wrong_ack_sent = true;
                    Some(WRONG_ACK.to_vec())
                }
                FakeMode::WrongAck => None,
                FakeMode::Ack
                | FakeMode::AckUpTo(_)
                | FakeMode::StallFirst
                | FakeMode::ResetFirst(_) => {
                    lock(&sh.records).extend(frame.records);
                    Some(encode_ack(&frame.chunk))
                }
                FakeMode::AckWhenQuiet => {
                    lock(&sh.records).extend(frame.records);
                    held_acks.extend_from_slice(&encode_ack(&frame.chunk));
                    None
                }
            };
            if let Some(reply) = reply {
                if s.write_all(&reply).is_err() {
                    return;
                }
            }
        }
    }
}

/// Closes with an RST, as fluent-bit does when a message exceeds its buffer.
fn reset(s: &TcpStream, sh: &FakeShared) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a linger struct of the size passed.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    sh.resets.fetch_add(1, Ordering::SeqCst);
}

/// Reads one buffer's worth, then holds the connection open without reading until `stop`: the
/// forwarder's writes fill both sockets' buffers and then make no progress.
fn stall(s: &mut TcpStream, sh: &FakeShared, stop: &AtomicBool) {
    let mut tmp = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match s.read(&mut tmp) {
            Ok(n) => {
                sh.bytes.fetch_add(n as u64, Ordering::SeqCst);
                break;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
    while !stop.load(Ordering::SeqCst) {
        thread::sleep(ms(50));
    }
}

// ---------------------------------------------------------------------------------------------
// TLS: a test PKI made with the openssl command, TLS receivers
// ---------------------------------------------------------------------------------------------

/// The name the forwarder sends as SNI and checks by default.
pub const VHOST: &str = "kubernetes-audit-tailer";
/// Subject CNs of the two test CAs (the file names are ca1.crt and ca2.crt).
pub const CA1_CN: &str = "audit-test-ca1";
pub const CA2_CN: &str = "audit-test-ca2";
/// notAfter of `expired.crt`, in the forwarder's RFC 3339 rendering.
pub const EXPIRED_NOT_AFTER: &str = "2020-02-01T00:00:00Z";

/// `openssl ca` settings: extension sections for the three kinds of certificates. `x509 -req`
/// without -extfile would make X.509 v1 certificates, which rustls rejects; `ca` also takes
/// explicit -startdate/-enddate, which is how an already expired certificate is made.
const PKI_CA_CNF: &str = "\
[ca]
default_ca = test
[test]
database = CA_DIR/index.txt
serial = CA_DIR/serial
new_certs_dir = CA_DIR
default_md = sha256
policy = any
copy_extensions = none
unique_subject = no
[any]
commonName = supplied
[server_san]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:kubernetes-audit-tailer
[server_cn_only]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
[client]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
";

const PKI_VALID: &str = "-startdate 20200101000000Z -enddate 20991231235959Z";
const PKI_EXPIRED: &str = "-startdate 20200101000000Z -enddate 20200201000000Z";

/// The certificates of the TLS tests, made once per test process in one directory:
///
/// | file | issuer | key | what |
/// |---|---|---|---|
/// | ca1.crt, ca2.crt | self | EC | CN audit-test-ca1 / audit-test-ca2 |
/// | server.crt | CA1 | server-rsa.key (RSA, PKCS#1) | SAN DNS:kubernetes-audit-tailer |
/// | server-ec.crt | CA1 | server-ec.key (EC, SEC1 with parameters) | same SAN |
/// | cn-only.crt, cn-only-ca2.crt | CA1 / CA2 | server-ec.key | v3, CN kubernetes-audit-tailer, no SAN |
/// | expired.crt | CA1 | server-ec.key | SAN as above, valid 2020-01-01 .. 2020-02-01 |
/// | client.crt | CA1 | client-rsa.key (RSA, PKCS#1) | clientAuth |
/// | client-ec.crt | CA1 | client-ec.key (EC, SEC1) | clientAuth |
/// | client-ca2.crt | CA2 | client-ca2.key (EC, PKCS#8) | clientAuth |
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a generated file; panics on a name that was not generated (a typo in a test
    /// would otherwise show up as a confusing TLS failure).
    pub fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        assert!(p.is_file(), "test PKI has no file {name:?}");
        p
    }

    /// The path as a string, for command lines.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

static PKI: std::sync::OnceLock<Pki> = std::sync::OnceLock::new();

extern "C" fn remove_pki_dir() {
    if std::env::var_os("AF_TEST_KEEP").is_some() {
        return;
    }
    if let Some(p) = PKI.get() {
        let _ = fs::remove_dir_all(&p.dir);
    }
}

/// Runs `openssl <args>` (split on whitespace) in `dir`; panics with openssl's stderr.
pub fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("the openssl command is needed for the TLS tests: {e}"));
    assert!(
        out.status.success(),
        "openssl {args} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pki_make_ca(dir: &Path, name: &str, cn: &str) {
    let db = dir.join(name);
    fs::create_dir_all(&db).unwrap_or_else(|e| panic!("mkdir {}: {e}", db.display()));
    // openssl ca resolves these paths against its working directory, the PKI root.
    let files = [
        ("ca.cnf", PKI_CA_CNF.replace("CA_DIR", name)),
        ("index.txt", String::new()),
        ("serial", "1000\n".to_string()),
    ];
    for (f, text) in files {
        fs::write(db.join(f), text).unwrap_or_else(|e| panic!("write {name}/{f}: {e}"));
    }
    openssl(
        dir,
        &format!("ecparam -name prime256v1 -genkey -noout -out {name}.key"),
    );
    openssl(
        dir,
        &format!("req -x509 -new -key {name}.key -subj /CN={cn} -days 3650 -out {name}.crt"),
    );
}

/// Issues `out` for `key` from CA `ca` with extension section `ext` of PKI_CA_CNF.
fn pki_issue(dir: &Path, ca: &str, key: &str, cn: &str, ext: &str, dates: &str, out: &str) {
    openssl(
        dir,
        &format!("req -new -key {key} -subj /CN={cn} -out {out}.csr"),
    );
    openssl(
        dir,
        &format!(
            "ca -batch -notext -config {ca}/ca.cnf -cert {ca}.crt -keyfile {ca}.key \
             -in {out}.csr -out {out} -extensions {ext} {dates}"
        ),
    );
}

/// The test PKI (see [`Pki`]), generated on first use; removed when the test process exits
/// (kept with AF_TEST_KEEP=1).
pub fn pki() -> &'static Pki {
    PKI.get_or_init(|| {
        let started = Instant::now();
        let dir = std::env::temp_dir().join(format!("af-test-pki-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let d = dir.as_path();
        pki_make_ca(d, "ca1", CA1_CN);
        pki_make_ca(d, "ca2", CA2_CN);
        // RSA keys in the traditional PKCS#1 form; EC keys as SEC1 with the EC PARAMETERS
        // block in front (no -noout), as `openssl ecparam -genkey` writes them by default.
        openssl(d, "genrsa -traditional -out server-rsa.key 2048");
        openssl(d, "genrsa -traditional -out client-rsa.key 2048");
        openssl(d, "ecparam -name prime256v1 -genkey -out server-ec.key");
        openssl(d, "ecparam -name prime256v1 -genkey -out client-ec.key");
        openssl(
            d,
            "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out client-ca2.key",
        );
        let client_cn = "kubernetes-audit-forwarder";
        let issues = [
            (
                "ca1",
                "server-rsa.key",
                VHOST,
                "server_san",
                PKI_VALID,
                "server.crt",
            ),
            (
                "ca1",
                "server-ec.key",
                VHOST,
                "server_san",
                PKI_VALID,
                "server-ec.crt",
            ),
            (
                "ca1",
                "server-ec.key",
                VHOST,
                "server_cn_only",
                PKI_VALID,
                "cn-only.crt",
            ),
            (
                "ca2",
                "server-ec.key",
                VHOST,
                "server_cn_only",
                PKI_VALID,
                "cn-only-ca2.crt",
            ),
            (
                "ca1",
                "server-ec.key",
                VHOST,
                "server_san",
                PKI_EXPIRED,
                "expired.crt",
            ),
            (
                "ca1",
                "client-rsa.key",
                client_cn,
                "client",
                PKI_VALID,
                "client.crt",
            ),
            (
                "ca1",
                "client-ec.key",
                client_cn,
                "client",
                PKI_VALID,
                "client-ec.crt",
            ),
            (
                "ca2",
                "client-ca2.key",
                client_cn,
                "client",
                PKI_VALID,
                "client-ca2.crt",
            ),
        ];
        for (ca, key, cn, ext, dates, out) in issues {
            pki_issue(d, ca, key, cn, ext, dates, out);
        }
        // SAFETY: registers a plain extern "C" function without captures; it only reads the
        // OnceLock, which is initialized by the time the process exits.
        unsafe {
            libc::atexit(remove_pki_dir);
        }
        eprintln!(
            "[harness] test PKI in {} made in {:?}",
            dir.display(),
            started.elapsed()
        );
        Pki { dir }
    })
}

/// Copies PKI files into `dir` as `(pki name, name in dir)` the way `cp` does: truncate and
/// rewrite the same inode, so a watcher sees the change in place.
pub fn install_pki_files(dir: &Path, files: &[(&str, &str)]) {
    let p = pki();
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    for (from, to) in files {
        let src = p.path(from);
        let dst = dir.join(to);
        fs::copy(&src, &dst)
            .unwrap_or_else(|e| panic!("cp {} {}: {e}", src.display(), dst.display()));
    }
}

/// Forwarder arguments for TLS delivery to 127.0.0.1:`port`: the client files are `ca.crt`,
/// `client.crt` and `client.key` in `basedir`; reconnects are at most 1 s apart; then `extra`.
pub fn fwd_tls_args(log: &Path, port: u16, basedir: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--audit-log-path".to_string(),
        log.display().to_string(),
        "--target".to_string(),
        format!("127.0.0.1:{port}"),
        "--tls-basedir".to_string(),
        basedir.display().to_string(),
    ];
    let rest = [
        "--tls-ca-file",
        "ca.crt",
        "--tls-crt-file",
        "client.crt",
        "--tls-key-file",
        "client.key",
        "--backoff-timer",
        "1s",
        "--connect-timeout",
        "5s",
    ];
    v.extend(rest.iter().chain(extra).map(|s| s.to_string()));
    v
}

/// Tailer arguments for TLS with a server certificate and key from the PKI.
pub fn tailer_tls_args(cert: &str, key: &str, extra: &[&str]) -> Vec<String> {
    let p = pki();
    let mut v = vec![
        "--tls-crt-file".to_string(),
        p.arg(cert),
        "--tls-key-file".to_string(),
        p.arg(key),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// `AF_TEST_TLS_SERVER=openssl`: the TLS side of [`TlsReceiver`] is socat (OpenSSL) in front
/// of a plain-TCP tailer instead of the tailer's own TLS. A cross-check of the forwarder against
/// another TLS stack, and a way to run the forwarder-side TLS tests without the tailer's TLS.
pub fn openssl_server() -> bool {
    std::env::var("AF_TEST_TLS_SERVER").is_ok_and(|v| v == "openssl")
}

/// The value of `--flag V` or `--flag=V` in `args`, and `args` without it.
fn take_flag(args: &[String], flag: &str) -> (Option<String>, Vec<String>) {
    let mut value = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            value = it.next().cloned();
        } else if let Some(v) = a.strip_prefix(flag).and_then(|v| v.strip_prefix('=')) {
            value = Some(v.to_string());
        } else {
            rest.push(a.clone());
        }
    }
    (value, rest)
}

/// socat terminating TLS (OpenSSL) on 127.0.0.1:`port` and relaying each connection to a
/// plain TCP port. Configured with the tailer's TLS flags (`--tls-crt-file`, `--tls-key-file`,
/// `--client-ca`, `--tls-max-version`).
pub struct SocatTls {
    pub port: u16,
    backend: u16,
    listen: String,
    child: Option<Child>,
    output: Arc<Mutex<Vec<u8>>>,
    threads: Vec<JoinHandle<()>>,
}

impl SocatTls {
    /// Starts socat with the TLS flags found in `tls_args`; returns it and the other arguments.
    pub fn start(port: u16, backend: u16, tls_args: &[String]) -> (SocatTls, Vec<String>) {
        let (listen, rest) = SocatTls::listen_address(port, tls_args);
        let mut s = SocatTls {
            port,
            backend,
            listen,
            child: None,
            output: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
        };
        s.spawn();
        (s, rest)
    }

    fn listen_address(port: u16, args: &[String]) -> (String, Vec<String>) {
        let (cert, rest) = take_flag(args, "--tls-crt-file");
        let (key, rest) = take_flag(&rest, "--tls-key-file");
        let (ca, rest) = take_flag(&rest, "--client-ca");
        let (max, rest) = take_flag(&rest, "--tls-max-version");
        let (Some(cert), Some(key)) = (cert, key) else {
            panic!("SocatTls needs --tls-crt-file and --tls-key-file in {args:?}");
        };
        let mut listen =
            format!("OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={cert},key={key}");
        match ca {
            Some(ca) => listen.push_str(&format!(",verify=1,cafile={ca}")),
            None => listen.push_str(",verify=0"),
        }
        match max.as_deref() {
            None | Some("1.3") => {}
            Some("1.2") => listen.push_str(",openssl-max-proto-version=TLS1.2"),
            Some(other) => panic!("SocatTls: unsupported --tls-max-version {other}"),
        }
        (listen, rest)
    }

    fn spawn(&mut self) {
        // Its own process group: the children it forks per connection hold our pipes too,
        // and kill() ends them together with the parent.
        let mut child = Command::new("socat")
            .process_group(0)
            .args(["-d", "-d", &self.listen])
            .arg(format!("TCP:127.0.0.1:{}", self.backend))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("AF_TEST_TLS_SERVER=openssl needs socat: {e}"));
        let (out, err) = take_pipes(&mut child);
        let prefix = format!("socat {}", child.id());
        for r in [
            Box::new(BufReader::new(out)) as Box<dyn BufRead + Send>,
            Box::new(BufReader::new(err)),
        ] {
            self.threads
                .push(capture(r, self.output.clone(), prefix.clone(), None));
        }
        let mut exited = None;
        let up = wait_until(secs(10), || {
            if let Ok(Some(st)) = child.try_wait() {
                exited = Some(st);
                return true;
            }
            port_listening(self.port)
        });
        if exited.is_some() || !up {
            let _ = child.kill();
            let _ = child.wait();
            self.join_threads();
            panic!(
                "socat on port {} did not start ({exited:?}); output:\n{}",
                self.port,
                self.stderr_text()
            );
        }
        self.child = Some(child);
    }

    fn join_threads(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the process group we created for this child (its pid), which
            // holds only socat and the children it forked; the parent is not reaped yet, so
            // the id cannot have been reused.
            unsafe {
                libc::kill(-(c.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = c.wait();
        }
        self.join_threads();
    }

    pub fn restart_with(&mut self, tls_args: &[String]) -> Vec<String> {
        self.kill();
        let (listen, rest) = SocatTls::listen_address(self.port, tls_args);
        self.listen = listen;
        self.spawn();
        rest
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.output)).into_owned()
    }
}

impl Drop for SocatTls {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "[harness] socat port {} -> {}; output (tail):\n{}",
                self.port,
                self.backend,
                tail_of(&self.stderr_text(), 10_000)
            );
        }
    }
}

/// A TLS Forward receiver on 127.0.0.1:`port`: the tailer with its TLS flags, or, with
/// AF_TEST_TLS_SERVER=openssl, socat (OpenSSL) in front of a plain-TCP tailer. Records are read
/// from `tailer` either way.
pub struct TlsReceiver {
    pub port: u16,
    pub tailer: Tailer,
    pub front: Option<SocatTls>,
}

impl TlsReceiver {
    /// `args`: tailer arguments after `--listen ADDR` (see [`tailer_tls_args`]).
    pub fn start(port: u16, args: Vec<String>) -> TlsReceiver {
        if !openssl_server() {
            return TlsReceiver {
                port,
                tailer: Tailer::start_with(port, args),
                front: None,
            };
        }
        let backend = free_port();
        let tailer_args = SocatTls::listen_address(port, &args).1;
        let tailer = Tailer::start_with(backend, tailer_args);
        let (front, _) = SocatTls::start(port, backend, &args);
        TlsReceiver {
            port,
            tailer,
            front: Some(front),
        }
    }

    /// Restart with other arguments (another certificate, client CA, shared key); records
    /// received so far are kept.
    pub fn restart_with(&mut self, args: Vec<String>) {
        match self.front.as_mut() {
            None => self.tailer.restart_with(args),
            Some(front) => {
                let rest = front.restart_with(&args);
                self.tailer.restart_with(rest);
            }
        }
    }

    /// The receiving side's log: the tailer's stderr, then socat's if it is in front.
    pub fn stderr_text(&self) -> String {
        let mut t = self.tailer.stderr_text();
        if let Some(f) = &self.front {
            t.push_str(&f.stderr_text());
        }
        t
    }
}

// ---- the metrics endpoints (`--metrics-address` of the forwarder and the tailer) ----

/// One request on its own connection; the status code and body of the answer (the server
/// always closes). Panics on a connection that closes without an answer.
pub fn http(port: u16, request: &[u8]) -> (u16, String) {
    try_http(port, request).unwrap_or_else(|e| panic!("{:?}: {e}", lossy(request)))
}

pub fn try_http(port: u16, request: &[u8]) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(request).map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8(answer).map_err(|e| format!("not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no complete head in {text:?}"))?;
    let code = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
    if !request.starts_with(b"HEAD ") && body.len() != length {
        return Err(format!(
            "body of {} bytes, Content-Length {length}",
            body.len()
        ));
    }
    Ok((code, body.to_string()))
}

pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(100)]).into_owned()
}

pub fn get(port: u16, path: &str) -> (u16, String) {
    http(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

/// Samples by `name{labels}` (labels as written), after checking every line of the text format:
/// HELP and TYPE before a family's samples, each family declared once, names and label syntax
/// valid, values numbers, counters named `_total`, every metric name starting with `prefix`.
pub fn parse_prometheus(text: &str, prefix: &str) -> Result<BTreeMap<String, f64>, String> {
    fn name_ok(n: &str) -> bool {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    if !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    for (i, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, tail) = (parts.next(), parts.next(), parts.next());
            let name = name.ok_or_else(|| bad("comment without a name"))?;
            if !name_ok(name) || !name.starts_with(prefix) {
                return Err(bad("bad metric name"));
            }
            match kw {
                Some("HELP") => {
                    let help = tail
                        .filter(|t| !t.is_empty())
                        .ok_or_else(|| bad("empty HELP"))?;
                    if helps.insert(name.into(), help.into()).is_some() {
                        return Err(bad("HELP twice"));
                    }
                }
                Some("TYPE") => {
                    let kind = tail.ok_or_else(|| bad("TYPE without a type"))?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(bad("unknown type"));
                    }
                    if kind == "counter" && !name.ends_with("_total") {
                        return Err(bad("counter not named _total"));
                    }
                    if !helps.contains_key(name) {
                        return Err(bad("TYPE before HELP"));
                    }
                    if types.insert(name.into(), kind.into()).is_some() {
                        return Err(bad("TYPE twice"));
                    }
                }
                _ => return Err(bad("unknown comment")),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(bad("empty line or bare comment"));
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| bad("no value"))?;
        let name = &line[..name_end];
        if !name_ok(name) || !types.contains_key(name) {
            return Err(bad("sample of an undeclared metric"));
        }
        let mut rest = &line[name_end..];
        let mut key = name.to_string();
        if let Some(labels) = rest.strip_prefix('{') {
            // name="value" pairs, values with \\, \" and \n escapes.
            let mut at = labels;
            loop {
                if let Some(after) = at.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = at.find('=').ok_or_else(|| bad("label without ="))?;
                if !name_ok(&at[..eq]) || !at[eq + 1..].starts_with('"') {
                    return Err(bad("bad label"));
                }
                let mut chars = at[eq + 2..].char_indices();
                let close = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\' | '"' | 'n')) => {}
                            _ => return Err(bad("bad escape")),
                        },
                        Some((j, '"')) => break eq + 2 + j,
                        Some((_, '\n')) | None => return Err(bad("unterminated label value")),
                        Some(_) => {}
                    }
                };
                at = &at[close + 1..];
                at = at.strip_prefix(',').unwrap_or(at);
            }
            key.push_str(&line[name_end..line.len() - rest.len()]);
        }
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or_else(|| bad("no space before the value"))?
            .split(' ');
        let value = fields.next().unwrap_or("");
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| bad("value is not a number"))?,
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| bad("bad timestamp"))?;
        }
        if fields.next().is_some() {
            return Err(bad("trailing fields"));
        }
        if samples.insert(key, v).is_some() {
            return Err(bad("sample twice"));
        }
    }
    Ok(samples)
}

/// Malformed, wrong and oversized requests on a metrics port: each gets its error answer.
pub fn assert_metrics_refusals(mport: u16) {
    let refusals: &[(&[u8], u16)] = &[
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400),
        (b"GET /metrics HTTP/9.9\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            405,
        ),
        (b"GET /admin HTTP/1.1\r\n\r\n", 404),
    ];
    for &(req, want) in refusals {
        assert_eq!(http(mport, req).0, want, "{:?}", lossy(req));
    }
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert_eq!(http(mport, huge.as_bytes()).0, 431);
}

/// Holds a metrics port: first a slowloris that trickles a request head a byte every 100 ms for
/// longer than the server's deadline for one connection (it ends when the server closes it),
/// then `idle` connections that send nothing (those beyond the server's slots are closed at
/// once). Dropping the connections closes them; the slowloris thread ends on its own.
pub fn hold_metrics_port(mport: u16, idle: usize) -> (Vec<TcpStream>, JoinHandle<()>) {
    let mut slow = TcpStream::connect(("127.0.0.1", mport)).expect("slowloris connect");
    let slowloris = thread::spawn(move || {
        let head = b"GET /metrics HTTP/1.1\r\nX-Slow: ";
        let trickle = head.iter().chain(std::iter::repeat(&b'a'));
        let until = Instant::now() + audit_forwarder::metrics::CLIENT_DEADLINE + secs(3);
        for b in trickle {
            if Instant::now() >= until || slow.write_all(&[*b]).is_err() {
                return;
            }
            thread::sleep(ms(100));
        }
    });
    let held: Vec<TcpStream> = (0..idle)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", mport)).ok())
        .collect();
    assert!(
        held.len() >= audit_forwarder::metrics::MAX_CLIENTS,
        "only {} connections opened",
        held.len()
    );
    (held, slowloris)
}

/// Appends `lines` to the log 1000 at a time, 50 ms apart, on a thread that hands the writer back.
pub fn write_in_background(mut w: AuditWriter, lines: &[String]) -> JoinHandle<AuditWriter> {
    let lines = lines.to_vec();
    thread::spawn(move || {
        for part in lines.chunks(1000) {
            w.write_lines(part);
            thread::sleep(ms(50));
        }
        w
    })
}

/// Writes `lines` to the log while `idle` connections and a slowloris hold the metrics port
/// `mport`: the first thousand lines must arrive within 3 s, while the slowloris is still
/// trickling (a loop that waited on it, or on an idle client, until the server's 5 s deadline
/// could not), then every line must reach the tailer, and once the held connections are closed
/// the port must answer `/metrics` again. Returns the writer.
pub fn deliver_while_metrics_port_is_held(
    mut w: AuditWriter,
    tailer: &Tailer,
    fwd: &mut Forwarder,
    mport: u16,
    idle: usize,
    lines: &[String],
) -> AuditWriter {
    let taken = Instant::now();
    let (held, slowloris) = hold_metrics_port(mport, idle);
    let (first, rest) = lines.split_at(lines.len().min(1000));
    w.write_lines(first);
    expect_all_within(
        tailer,
        fwd,
        first,
        "the first lines with the metrics port held",
        secs(3),
    );
    assert!(
        !slowloris.is_finished() && taken.elapsed() < audit_forwarder::metrics::CLIENT_DEADLINE,
        "the first lines arrived {:?} after the metrics port was taken, when the slowloris \
         was closed or past the server's {:?} deadline: a held connection stalled the loop",
        taken.elapsed(),
        audit_forwarder::metrics::CLIENT_DEADLINE
    );
    let writer = write_in_background(w, rest);
    let w = writer.join().expect("writer thread");
    let what = format!("{} lines with the metrics port held", lines.len());
    expect_all_within(tailer, fwd, lines, &what, secs(60));
    assert_delivered(lines, &tailer.records(), true);
    drop(held);
    slowloris.join().expect("slowloris thread");
    // Slots still held are released by their deadline; then scrapes work again.
    let back = wait_until(secs(20), || {
        matches!(
            try_http(mport, b"GET /metrics HTTP/1.1\r\n\r\n"),
            Ok((200, _))
        )
    });
    assert!(
        back,
        "/metrics on port {mport} did not answer after the attack"
    );
    w
}

// ---- tunnel helpers (tests/proxy.rs) ----

pub mod proxy;

// ---- test Kubernetes API server (Service/Secret discovery tests) ----
pub mod kubeapi;

/// A client connection to the tailer on `port`, reads and writes timing out after 60 s.
pub fn connect_tailer(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the tailer");
    s.set_read_timeout(Some(secs(60))).unwrap();
    s.set_write_timeout(Some(secs(60))).unwrap();
    s
}

/// Waits until the tailer closes `s` (EOF or reset), reading and dropping what it sends.
pub fn wait_closed(s: &mut TcpStream) {
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("the tailer did not close a hostile connection within 60 s")
            }
            Err(_) => return,
        }
    }
}

/// Sends `bytes` (errors ignored: the tailer may close midway), half-closes after them when
/// `half_close`, then waits for the tailer to close.
pub fn send_and_wait_closed(mut s: TcpStream, bytes: &[u8], half_close: bool) {
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    wait_closed(&mut s);
}
