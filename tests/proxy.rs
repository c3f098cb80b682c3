//! End-to-end tests of reaching the tailer through a konnectivity-style tunnel, with real
//! proxies started and stopped by the tests: tinyproxy answers HTTP CONNECT, behind either a
//! Unix socket (socat, `--konnectivity-uds-socket`) or a mutual-TLS front (stunnel,
//! `--proxy-host`). Each scenario runs for both kinds and asserts exactly which records reached
//! the tailer (TLS inside the tunnel) and which log lines explain a failure. `harness_*` tests
//! check the proxy plumbing and the certificates without the forwarder.

mod common;

use common::proxy::{
    connect_line, failure_messages, log_messages, read_to_close, replace_file, rustls_client,
    send_connect, Chain, FakeProxy, FakeProxyMode, ProxyPki, TlsTailer, TunnelKind, FAKE_503,
};
use common::*;
use serde_json::Value;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Ceiling for "everything arrives"; passing tests finish long before it.
const DELIVERY: Duration = Duration::from_secs(20);
/// Ceiling for a failure to show up in the forwarder's log (first attempt, then backoff ≤ 1 s).
const FAILURE_LOG: Duration = Duration::from_secs(12);

/// The two tailers (plain and TLS) seen the same way.
trait Receiver {
    fn wait_all(&self, cov: &mut Coverage, timeout: Duration) -> bool;
    fn records(&self) -> Vec<Value>;
}

impl Receiver for Tailer {
    fn wait_all(&self, cov: &mut Coverage, timeout: Duration) -> bool {
        Tailer::wait_all(self, cov, timeout)
    }
    fn records(&self) -> Vec<Value> {
        Tailer::records(self)
    }
}

impl Receiver for TlsTailer {
    fn wait_all(&self, cov: &mut Coverage, timeout: Duration) -> bool {
        TlsTailer::wait_all(self, cov, timeout)
    }
    fn records(&self) -> Vec<Value> {
        TlsTailer::records(self)
    }
}

/// Everything a scenario needs besides the processes it starts itself. Fields drop in order:
/// the proxies first, the temp dir (with their logs) last.
struct Rig {
    chain: Chain,
    pki: ProxyPki,
    tailer_port: u16,
    dir: TempDir,
}

impl Rig {
    fn new(label: &str, kind: TunnelKind) -> Rig {
        let dir = TempDir::new(label);
        let pki = ProxyPki::create(dir.path());
        let chain = Chain::new(kind, dir.path(), &pki);
        Rig {
            chain,
            pki,
            tailer_port: free_port(),
            dir,
        }
    }

    fn writer(&self) -> AuditWriter {
        AuditWriter::create(&self.dir.join("auditlog"))
    }

    fn tls_tailer(&self) -> TlsTailer {
        TlsTailer::start(self.tailer_port, self.pki.tailer_args())
    }

    /// Forwarder arguments: TLS to the tailer (or `--plaintext`), the chain's proxy flags
    /// (`proxy`), quick connect timeout and backoff.
    fn forwarder_args(&self, log: &Path, tls: bool, proxy: Vec<String>) -> Vec<String> {
        let mut v = vec![
            "--audit-log-path".to_string(),
            log.display().to_string(),
            "--target".to_string(),
            format!("127.0.0.1:{}", self.tailer_port),
            "--connect-timeout".to_string(),
            "2s".to_string(),
            "--backoff-timer".to_string(),
            "1s".to_string(),
        ];
        if tls {
            v.extend(self.pki.forwarder_tls_args());
        } else {
            v.push("--plaintext".to_string());
        }
        v.extend(proxy);
        v
    }

    /// Every CONNECT tinyproxy saw asked for the tailer; returns how many there were.
    fn assert_connects_to_tailer(&self, what: &str) -> usize {
        let reqs = self.chain.proxy.connect_requests();
        let want = connect_line(self.tailer_port);
        assert!(
            reqs.iter().all(|r| *r == want),
            "{what}: the proxy saw CONNECTs other than {want:?}: {reqs:?}"
        );
        reqs.len()
    }
}

/// Waits until every expected record reached the receiver; stops early if the forwarder died.
fn expect_all<R: Receiver + ?Sized>(r: &R, f: &mut Forwarder, expected: &[String], what: &str) {
    let mut cov = Coverage::new(expected);
    let deadline = Instant::now() + DELIVERY;
    while !r.wait_all(&mut cov, Duration::from_millis(500)) {
        f.assert_alive(what);
        if Instant::now() >= deadline {
            assert_delivered(expected, &r.records(), true);
            panic!("{what}: not everything arrived within {DELIVERY:?}");
        }
    }
}

/// Waits for a connection-failure line of the forwarder that `pred` accepts (messages are in
/// lower case, without the timestamp); returns it.
fn wait_failure(f: &mut Forwarder, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let mut found = None;
    let ok = wait_until(FAILURE_LOG, || {
        found = failure_messages(&f.stderr_text())
            .into_iter()
            .find(|m| pred(m));
        found.is_some() || f.exited()
    });
    f.assert_alive(what);
    match found {
        Some(m) if ok => m,
        _ => {
            let text = f.stderr_text();
            panic!(
                "{what}: no failure line of the forwarder says so within {FAILURE_LOG:?}; failure lines: {:#?}\nstderr (tail):\n{}",
                failure_messages(&text),
                &text[text.len().saturating_sub(6000)..]
            )
        }
    }
}

fn connected_lines(f: &Forwarder) -> usize {
    log_messages(&f.stderr_text())
        .iter()
        .filter(|m| m.contains("connected to"))
        .count()
}

/// Writes `batches` x 100 events, 100 ms apart, from `first`; `done` is set when finished.
fn paced_writer(
    mut w: AuditWriter,
    first: u64,
    batches: u64,
    done: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<String>> {
    thread::spawn(move || {
        let mut written = Vec::new();
        for b in 0..batches {
            let lines = audit_events(first + b * 100..first + b * 100 + 100);
            w.write_lines(&lines);
            written.extend(lines);
            thread::sleep(Duration::from_millis(100));
        }
        done.store(true, Ordering::SeqCst);
        written
    })
}

fn label(kind: TunnelKind, what: &str) -> String {
    format!("{}-{what}", format!("{kind:?}").to_lowercase())
}

// 1 ------------------------------------------------------------------------------------------

/// Events written before and while the forwarder runs all arrive exactly once, in order,
/// through exactly one tunnel that tinyproxy opened to the tailer; no failure is logged.
fn every_record_arrives(kind: TunnelKind, tls: bool) {
    let mut rig = Rig::new(&label(kind, if tls { "all" } else { "plain" }), kind);
    let mut w = rig.writer();
    rig.chain.start(rig.tailer_port);
    let tailer: Box<dyn Receiver> = if tls {
        Box::new(rig.tls_tailer())
    } else {
        Box::new(Tailer::start(rig.tailer_port))
    };
    let mut lines = audit_events(0..1500);
    w.write_lines(&lines);
    let mut fwd =
        Forwarder::start(rig.forwarder_args(&w.log_path(), tls, rig.chain.forwarder_args()));
    for b in 0..10u64 {
        let more = audit_events(1500 + b * 150..1650 + b * 150);
        w.write_lines(&more);
        lines.extend(more);
        thread::sleep(Duration::from_millis(50));
    }
    expect_all(&*tailer, &mut fwd, &lines, "through the tunnel");
    thread::sleep(Duration::from_millis(300));
    assert_delivered(&lines, &tailer.records(), false);
    let tunnels = rig.assert_connects_to_tailer("one tunnel");
    assert_eq!(
        tunnels, 1,
        "the forwarder should have opened exactly one tunnel; tinyproxy saw {tunnels} CONNECTs"
    );
    assert_eq!(
        rig.chain.proxy.established(),
        1,
        "tinyproxy tunnels to the tailer"
    );
    let fails = failure_messages(&fwd.stderr_text());
    assert!(
        fails.is_empty(),
        "failures logged on the happy path: {fails:#?}"
    );
    fwd.term_ok();
}

#[test]
fn uds_01_every_record_arrives_at_the_tls_tailer() {
    every_record_arrives(TunnelKind::Uds, true);
}

#[test]
fn mtls_01_every_record_arrives_at_the_tls_tailer() {
    every_record_arrives(TunnelKind::Mtls, true);
}

#[test]
fn uds_01p_every_record_arrives_at_a_plaintext_tailer() {
    every_record_arrives(TunnelKind::Uds, false);
}

#[test]
fn mtls_01p_every_record_arrives_at_a_plaintext_tailer() {
    every_record_arrives(TunnelKind::Mtls, false);
}

// 2 ------------------------------------------------------------------------------------------

/// tinyproxy and its front end are SIGKILLed while events are being written and restarted on
/// the same port/socket: every event arrives at least once, first arrivals in order; the lost
/// tunnel is logged and a second tunnel is opened.
fn proxy_restart_mid_stream(kind: TunnelKind) {
    let mut rig = Rig::new(&label(kind, "proxy-restart"), kind);
    let w = rig.writer();
    let log = w.log_path();
    rig.chain.start(rig.tailer_port);
    let tailer = rig.tls_tailer();
    let mut fwd = Forwarder::start(rig.forwarder_args(&log, true, rig.chain.forwarder_args()));
    let done = Arc::new(AtomicBool::new(false));
    let writer = paced_writer(w, 0, 30, done.clone());

    assert!(
        tailer.wait_for(300, DELIVERY),
        "fewer than 300 records before the proxy kill"
    );
    assert!(
        !done.load(Ordering::SeqCst),
        "the writer finished before the proxy kill: the kill would not be mid-stream"
    );
    rig.chain.stop();
    thread::sleep(Duration::from_millis(700));
    rig.chain.start(rig.tailer_port);

    let expected = writer.join().expect("writer thread");
    expect_all(&tailer, &mut fwd, &expected, "after the proxy restart");
    assert_delivered(&expected, &tailer.records(), true);
    let tunnels = rig.assert_connects_to_tailer("proxy restart");
    assert!(
        tunnels >= 2,
        "only {tunnels} CONNECTs: no new tunnel after the restart"
    );
    assert!(
        !failure_messages(&fwd.stderr_text()).is_empty(),
        "the lost tunnel was not logged"
    );
    assert!(
        connected_lines(&fwd) >= 2,
        "want a `connected to` line per tunnel; stderr:\n{}",
        fwd.stderr_text()
    );
    fwd.term_ok();
}

#[test]
fn uds_02_proxy_restart_mid_stream() {
    proxy_restart_mid_stream(TunnelKind::Uds);
}

#[test]
fn mtls_02_proxy_restart_mid_stream() {
    proxy_restart_mid_stream(TunnelKind::Mtls);
}

// 3 ------------------------------------------------------------------------------------------

/// The tailer is SIGKILLed mid-stream behind a running proxy: while it is down, the forwarder
/// logs tinyproxy's `500 Unable to connect`; after its restart every event arrives at least
/// once, first arrivals in order.
fn tailer_restart_mid_stream(kind: TunnelKind) {
    let mut rig = Rig::new(&label(kind, "tailer-restart"), kind);
    let w = rig.writer();
    let log = w.log_path();
    rig.chain.start(rig.tailer_port);
    let mut tailer = rig.tls_tailer();
    let mut fwd = Forwarder::start(rig.forwarder_args(&log, true, rig.chain.forwarder_args()));
    let done = Arc::new(AtomicBool::new(false));
    let writer = paced_writer(w, 0, 30, done.clone());

    assert!(
        tailer.wait_for(300, DELIVERY),
        "fewer than 300 records before the tailer kill"
    );
    assert!(
        !done.load(Ordering::SeqCst),
        "the writer finished before the tailer kill: the kill would not be mid-stream"
    );
    tailer.kill();
    let msg = wait_failure(&mut fwd, "tailer down behind the proxy", |m| {
        has_number(m, 500) || m.contains("unable to connect")
    });
    eprintln!("[test] logged while the tailer was down: {msg}");
    tailer.restart();

    let expected = writer.join().expect("writer thread");
    expect_all(&tailer, &mut fwd, &expected, "after the tailer restart");
    assert_delivered(&expected, &tailer.records(), true);
    let tunnels = rig.assert_connects_to_tailer("tailer restart");
    assert!(
        tunnels >= 2,
        "only {tunnels} CONNECTs: no new tunnel after the restart"
    );
    assert!(
        rig.chain.proxy.established() >= 2,
        "tinyproxy opened fewer than 2 tunnels to the tailer"
    );
    fwd.term_ok();
}

#[test]
fn uds_03_tailer_restart_mid_stream() {
    tailer_restart_mid_stream(TunnelKind::Uds);
}

#[test]
fn mtls_03_tailer_restart_mid_stream() {
    tailer_restart_mid_stream(TunnelKind::Mtls);
}

// 4 ------------------------------------------------------------------------------------------

/// tinyproxy allows CONNECT to another port only and answers a real 403: the forwarder logs
/// the status (`403 Access violation`) and delivers nothing; tinyproxy restarted with the
/// tailer's port allowed, every event arrives exactly once, in order.
fn proxy_403_then_fixed(kind: TunnelKind) {
    let mut rig = Rig::new(&label(kind, "403"), kind);
    let mut w = rig.writer();
    let wrong = free_port();
    rig.chain.start(wrong);
    let tailer = rig.tls_tailer();
    let mut lines = audit_events(0..1000);
    w.write_lines(&lines);
    let mut fwd =
        Forwarder::start(rig.forwarder_args(&w.log_path(), true, rig.chain.forwarder_args()));
    let msg = wait_failure(&mut fwd, "the proxy's 403", |m| {
        has_number(m, 403) && m.contains("access violation")
    });
    eprintln!("[test] logged: {msg}");
    assert!(
        rig.chain.proxy.refused() >= 1,
        "tinyproxy refused no CONNECT"
    );
    assert!(rig.assert_connects_to_tailer("403") >= 1);
    assert_eq!(
        tailer.line_count(),
        0,
        "records arrived through a refused tunnel"
    );

    rig.chain.proxy.start(rig.tailer_port);
    let more = audit_events(1000..1500);
    w.write_lines(&more);
    lines.extend(more);
    expect_all(
        &tailer,
        &mut fwd,
        &lines,
        "after allowing the tailer's port",
    );
    thread::sleep(Duration::from_millis(300));
    assert_delivered(&lines, &tailer.records(), false);
    assert_eq!(
        rig.chain.proxy.established(),
        1,
        "tunnels opened after the fix"
    );
    fwd.term_ok();
}

#[test]
fn uds_04_proxy_answers_403_then_fixed() {
    proxy_403_then_fixed(TunnelKind::Uds);
}

#[test]
fn mtls_04_proxy_answers_403_then_fixed() {
    proxy_403_then_fixed(TunnelKind::Mtls);
}

// 5 ------------------------------------------------------------------------------------------

/// Nothing listens on the socket path / proxy address at start: the forwarder keeps running
/// and logs the address with the cause (no such file / connection refused); once the chain is
/// started, every event arrives exactly once, in order.
fn proxy_down_at_start(kind: TunnelKind) {
    let mut rig = Rig::new(&label(kind, "down"), kind);
    let mut w = rig.writer();
    let tailer = rig.tls_tailer();
    let mut lines = audit_events(0..1000);
    w.write_lines(&lines);
    let mut fwd =
        Forwarder::start(rig.forwarder_args(&w.log_path(), true, rig.chain.forwarder_args()));
    let addr = rig.chain.address().to_lowercase();
    let msg = wait_failure(&mut fwd, "the unreachable proxy", |m| {
        m.contains(&addr)
            && match kind {
                TunnelKind::Uds => m.contains("no such file") || m.contains("os error 2"),
                TunnelKind::Mtls => m.contains("refused") || m.contains("os error 111"),
            }
    });
    eprintln!("[test] logged: {msg}");
    assert_eq!(tailer.line_count(), 0, "records arrived without the proxy");

    rig.chain.start(rig.tailer_port);
    let more = audit_events(1000..1500);
    w.write_lines(&more);
    lines.extend(more);
    expect_all(&tailer, &mut fwd, &lines, "after the proxy came up");
    thread::sleep(Duration::from_millis(300));
    assert_delivered(&lines, &tailer.records(), false);
    assert_eq!(rig.assert_connects_to_tailer("proxy down at start"), 1);
    fwd.term_ok();
}

#[test]
fn uds_05_proxy_down_at_start() {
    proxy_down_at_start(TunnelKind::Uds);
}

#[test]
fn mtls_05_proxy_down_at_start() {
    proxy_down_at_start(TunnelKind::Mtls);
}

// 6 ------------------------------------------------------------------------------------------

/// A fake proxy behind the real front end answers the CONNECT with 200 and then closes, or
/// writes a 503 into the tunnel: the forwarder sent the right CONNECT, logs the cause and
/// delivers nothing; with tinyproxy in its place every event arrives exactly once, in order.
fn fake_proxy_then_real(kind: TunnelKind, mode: FakeProxyMode) {
    let mut rig = Rig::new(&label(kind, &format!("{mode:?}").to_lowercase()), kind);
    let mut w = rig.writer();
    let tailer = rig.tls_tailer();
    rig.chain.start_front();
    let mut fake = FakeProxy::start(rig.chain.proxy_port, mode);
    let mut lines = audit_events(0..1000);
    w.write_lines(&lines);
    let mut fwd =
        Forwarder::start(rig.forwarder_args(&w.log_path(), true, rig.chain.forwarder_args()));
    let msg = match mode {
        FakeProxyMode::CloseAfter200 => {
            wait_failure(&mut fwd, "the tunnel closed after 200", |m| {
                m.contains("closed") || m.contains("broken pipe") || m.contains("reset")
            })
        }
        FakeProxyMode::Answer503InTunnel => {
            wait_failure(&mut fwd, "the 503 inside the tunnel", |m| {
                has_number(m, 503) || m.contains("no tunnels")
            })
        }
    };
    eprintln!("[test] logged: {msg}");
    let reqs = fake.requests();
    assert!(!reqs.is_empty(), "the fake proxy got no connection");
    let want = connect_line(rig.tailer_port);
    for r in &reqs {
        assert_eq!(
            r.lines().next(),
            Some(want.as_str()),
            "request head the forwarder sent: {r:?}"
        );
    }
    assert_eq!(
        tailer.line_count(),
        0,
        "records arrived through a broken tunnel"
    );

    fake.stop();
    rig.chain.proxy.start(rig.tailer_port);
    let more = audit_events(1000..1500);
    w.write_lines(&more);
    lines.extend(more);
    expect_all(&tailer, &mut fwd, &lines, "after the real proxy took over");
    thread::sleep(Duration::from_millis(300));
    assert_delivered(&lines, &tailer.records(), false);
    assert_eq!(
        rig.assert_connects_to_tailer("real proxy after the fake"),
        1
    );
    fwd.term_ok();
}

#[test]
fn uds_06a_proxy_closes_after_200_then_real_proxy() {
    fake_proxy_then_real(TunnelKind::Uds, FakeProxyMode::CloseAfter200);
}

#[test]
fn mtls_06a_proxy_closes_after_200_then_real_proxy() {
    fake_proxy_then_real(TunnelKind::Mtls, FakeProxyMode::CloseAfter200);
}

#[test]
fn uds_06b_proxy_sends_503_in_the_tunnel_then_real_proxy() {
    fake_proxy_then_real(TunnelKind::Uds, FakeProxyMode::Answer503InTunnel);
}

#[test]
fn mtls_06b_proxy_sends_503_in_the_tunnel_then_real_proxy() {
    fake_proxy_then_real(TunnelKind::Mtls, FakeProxyMode::Answer503InTunnel);
}

// 7 ------------------------------------------------------------------------------------------

/// The proxy client certificate comes from another CA: stunnel rejects it, tinyproxy never
/// sees a CONNECT, the forwarder logs the cause and delivers nothing. The files are then
/// replaced on disk with a good pair (no restart): every event arrives exactly once, in order.
#[test]
fn mtls_07_wrong_proxy_client_certificate_fixed_on_disk() {
    let mut rig = Rig::new("mtls-badcert", TunnelKind::Mtls);
    let mut w = rig.writer();
    let cdir = rig.dir.join("proxy-client");
    fs::create_dir_all(&cdir).expect("mkdir proxy-client");
    let (crt, key) = (cdir.join("tls.crt"), cdir.join("tls.key"));
    replace_file(&rig.pki.path("rogue-client.crt"), &crt);
    replace_file(&rig.pki.path("rogue-client.key"), &key);
    rig.chain.start(rig.tailer_port);
    let tailer = rig.tls_tailer();
    let mut lines = audit_events(0..1000);
    w.write_lines(&lines);
    let mut fwd = Forwarder::start(rig.forwarder_args(
        &w.log_path(),
        true,
        rig.chain.forwarder_args_with_client(&crt, &key),
    ));
    // stunnel sends an `unknown ca` alert and closes; when the CONNECT already sent was unread,
    // the close is a reset that can discard the alert, so a close or reset is all the forwarder
    // may see.
    let msg = wait_failure(&mut fwd, "the rejected proxy client certificate", |m| {
        m.contains("certificate")
            || m.contains("unknownca")
            || m.contains("unknown ca")
            || m.contains("closed")
            || m.contains("reset")
    });
    eprintln!("[test] logged: {msg}");
    let stunnel = rig.chain.stunnel().expect("an mTLS chain has stunnel");
    assert!(
        wait_until(Duration::from_secs(5), || stunnel.rejected_certs() >= 1),
        "stunnel rejected no client certificate"
    );
    assert_eq!(
        rig.chain.proxy.connect_requests().len(),
        0,
        "a CONNECT got past stunnel with the rogue certificate"
    );
    assert_eq!(
        tailer.line_count(),
        0,
        "records arrived with the rogue certificate"
    );

    // Key first: a reader between the two renames sees a mismatched pair and must retry.
    replace_file(&rig.pki.path("proxy-client.key"), &key);
    replace_file(&rig.pki.path("proxy-client.crt"), &crt);
    let more = audit_events(1000..1500);
    w.write_lines(&more);
    lines.extend(more);
    expect_all(
        &tailer,
        &mut fwd,
        &lines,
        "after replacing the client certificate",
    );
    thread::sleep(Duration::from_millis(300));
    assert_delivered(&lines, &tailer.records(), false);
    assert_eq!(
        rig.assert_connects_to_tailer("after the certificate fix"),
        1
    );
    fwd.term_ok();
}

// Harness ------------------------------------------------------------------------------------

/// A TCP server on `port` that answers one connection's first 4 bytes with `pong` + them.
fn echo_once(port: u16) -> thread::JoinHandle<()> {
    let l = TcpListener::bind(("127.0.0.1", port)).expect("bind echo server");
    thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut b = [0u8; 4];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&[b"pong".as_slice(), &b].concat());
            }
        }
    })
}

/// Without the forwarder: each chain tunnels a CONNECT to the allowed port, tinyproxy answers
/// a real 403 for another port, the fake proxy behaves as documented behind the real front
/// end, and (mTLS) stunnel rejects a client certificate from the wrong CA.
fn harness_chain_behaves(kind: TunnelKind) {
    let mut rig = Rig::new(&label(kind, "harness"), kind);
    let target = rig.tailer_port;
    let echo = echo_once(target);
    rig.chain.start(target);

    let mut s = rig.chain.open("proxy-client").expect("open the front end");
    let head = send_connect(&mut *s, target).expect("CONNECT to the allowed port");
    assert!(
        head.starts_with("HTTP/1.0 200"),
        "tinyproxy's answer to an allowed CONNECT: {head:?}"
    );
    s.write_all(b"ping").expect("write into the tunnel");
    s.flush().expect("flush the tunnel");
    let mut b = [0u8; 8];
    s.read_exact(&mut b).expect("read from the tunnel");
    assert_eq!(&b, b"pongping");
    drop(s);
    echo.join().expect("echo thread");
    assert_eq!(
        rig.chain.proxy.connect_requests(),
        vec![connect_line(target)]
    );
    assert_eq!(rig.chain.proxy.established(), 1);

    let other = free_port();
    let mut s = rig.chain.open("proxy-client").expect("open the front end");
    let head = send_connect(&mut *s, other).expect("CONNECT to another port");
    assert!(
        head.starts_with("HTTP/1.1 403 Access violation"),
        "tinyproxy's answer to a CONNECT to a port it does not allow: {head:?}"
    );
    drop(s);
    assert_eq!(rig.chain.proxy.refused(), 1);

    rig.chain.proxy.stop();
    let mut fake = FakeProxy::start(rig.chain.proxy_port, FakeProxyMode::CloseAfter200);
    let mut s = rig.chain.open("proxy-client").expect("open the front end");
    let head = send_connect(&mut *s, target).expect("CONNECT to the fake");
    assert_eq!(head, "HTTP/1.1 200 Connection Established");
    let (rest, _) = read_to_close(&mut *s);
    assert!(rest.is_empty(), "the fake sent more after 200: {rest:?}");
    drop(s);
    fake.stop();
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1, "fake proxy requests: {reqs:?}");
    assert_eq!(reqs[0].lines().next(), Some(connect_line(target).as_str()));

    let mut fake = FakeProxy::start(rig.chain.proxy_port, FakeProxyMode::Answer503InTunnel);
    let mut s = rig.chain.open("proxy-client").expect("open the front end");
    let head = send_connect(&mut *s, target).expect("CONNECT to the fake");
    assert_eq!(head, "HTTP/1.1 200 Connection Established");
    let mut got = vec![0u8; FAKE_503.len()];
    s.read_exact(&mut got).expect("the 503 in the tunnel");
    assert_eq!(got, FAKE_503);
    drop(s);
    fake.stop();

    if kind == TunnelKind::Mtls {
        rig.chain.proxy.start(target);
        let refused = match rig.chain.open("rogue-client") {
            Err(_) => true,
            Ok(mut s) => match send_connect(&mut *s, target) {
                Err(_) => true,
                Ok(head) => panic!("stunnel let a rogue client certificate through: {head:?}"),
            },
        };
        assert!(refused);
        let stunnel = rig.chain.stunnel().expect("an mTLS chain has stunnel");
        assert!(
            wait_until(Duration::from_secs(5), || stunnel.rejected_certs() == 1),
            "stunnel did not log the rejection of the rogue certificate"
        );
        assert_eq!(
            rig.chain.proxy.connect_requests().len(),
            2,
            "the rogue client reached tinyproxy"
        );
    }
}

#[test]
fn harness_uds_chain_tunnels_and_refuses_like_a_proxy() {
    harness_chain_behaves(TunnelKind::Uds);
}

#[test]
fn harness_mtls_chain_tunnels_and_refuses_like_a_proxy() {
    harness_chain_behaves(TunnelKind::Mtls);
}

/// Handshakes two rustls endpoints in memory; the first error either side reports.
fn handshake_in_memory(
    client: &mut rustls::ClientConnection,
    server: &mut rustls::ServerConnection,
) -> Result<(), rustls::Error> {
    fn pass(
        from: &mut dyn FnMut(&mut Vec<u8>) -> bool,
        to: &mut dyn FnMut(&mut &[u8]) -> Result<(), rustls::Error>,
    ) -> Result<(), rustls::Error> {
        let mut buf = Vec::new();
        while from(&mut buf) {}
        let mut rest = &buf[..];
        while !rest.is_empty() {
            to(&mut rest)?;
        }
        Ok(())
    }
    for _ in 0..20 {
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
        pass(
            &mut |b| client.wants_write() && client.write_tls(b).is_ok(),
            &mut |r| {
                server
                    .read_tls(r)
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                server.process_new_packets().map(|_| ())
            },
        )?;
        pass(
            &mut |b| server.wants_write() && server.write_tls(b).is_ok(),
            &mut |r| {
                client
                    .read_tls(r)
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                client.process_new_packets().map(|_| ())
            },
        )?;
    }
    Err(rustls::Error::General(
        "handshake did not finish in 20 rounds".into(),
    ))
}

/// The generated tailer certificates pass rustls (webpki) verification the way the tailer and
/// the forwarder use them, and a client certificate from the rogue CA does not.
#[test]
fn harness_pki_tailer_certificates_pass_rustls() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let dir = TempDir::new("harness-pki");
    let pki = ProxyPki::create(dir.path());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.path("tailer-ca.crt")).expect("tailer-ca.crt"))
        .expect("tailer-ca is a usable trust anchor");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let server_cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_file(pki.path("tailer.crt")).expect("tailer.crt")],
                PrivateKeyDer::from_pem_file(pki.path("tailer.key")).expect("tailer.key"),
            )
            .expect("tailer certificate and key match"),
    );
    for (client, name, ok) in [
        ("forwarder", common::proxy::TAILER_VHOST, true),
        ("forwarder", "127.0.0.1", true),
        ("rogue-client", common::proxy::TAILER_VHOST, false),
    ] {
        let cfg = rustls_client(
            &pki.path("tailer-ca.crt"),
            &pki.path(&format!("{client}.crt")),
            &pki.path(&format!("{client}.key")),
        );
        let sn = ServerName::try_from(name.to_string()).expect("server name");
        let mut c = rustls::ClientConnection::new(cfg, sn).expect("client connection");
        let mut s = rustls::ServerConnection::new(server_cfg.clone()).expect("server connection");
        let res = handshake_in_memory(&mut c, &mut s);
        assert_eq!(
            res.is_ok(),
            ok,
            "client {client} to {name}: handshake result {res:?}"
        );
    }
}
