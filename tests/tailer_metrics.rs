//! End-to-end tests of `audit-forwarder tailer --metrics-address`: the real tailer scraped while a
//! real forwarder delivers to it, every `/metrics` answer parsed whole by the strict reader of
//! tests/common; its counters checked against what the tailer printed and what the forwarder saw
//! acked; clients that send garbage, hold a wrong shared key or never finish a handshake counted
//! under their reason; and hostile clients on the metrics port that must not cost a record.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::TcpStream;

const DELIVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A scrape of the tailer, parsed whole; a malformed line fails the test.
fn scrape(mport: u16) -> BTreeMap<String, f64> {
    let (code, body) = get(mport, "/metrics");
    assert_eq!(code, 200, "/metrics answered {code}: {body}");
    parse_prometheus(&body, "audit_tailer_").unwrap_or_else(|e| panic!("/metrics: {e}\n{body}"))
}

fn metric(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(&format!("audit_tailer_{key}"))
        .unwrap_or_else(|| panic!("no audit_tailer_{key} in {m:#?}"))
}

/// The samples of one family by reason label.
fn by_reason(m: &BTreeMap<String, f64>, family: &str) -> BTreeMap<String, f64> {
    let prefix = format!("audit_tailer_{family}{{reason=\"");
    m.iter()
        .filter_map(|(k, v)| {
            let reason = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            Some((reason.to_string(), *v))
        })
        .collect()
}

/// A tailer on `port` serving its metrics on `mport`; `extra` after them.
fn tailer_with_metrics(port: u16, mport: u16, extra: &[&str]) -> Tailer {
    let mut args = vec![
        "--metrics-address".to_string(),
        format!("127.0.0.1:{mport}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let t = Tailer::start_with(port, args);
    assert!(
        wait_until(secs(20), || port_listening(mport)),
        "tailer metrics port {mport} not listening; stderr:\n{}",
        t.stderr_text()
    );
    t
}

#[test]
fn harness_prometheus_parser_holds_the_tailer_prefix() {
    let tailer = "# HELP audit_tailer_x_total X.\n# TYPE audit_tailer_x_total counter\n\
                  audit_tailer_x_total{reason=\"a\"} 2\n";
    assert_eq!(
        parse_prometheus(tailer, "audit_tailer_").unwrap()["audit_tailer_x_total{reason=\"a\"}"],
        2.0
    );
    assert!(parse_prometheus(tailer, "audit_forwarder_").is_err());
    for bad in [
        "audit_tailer_x_total{reason=\"a\"} two\n",
        "audit_tailer_x_total{reason=a} 2\n",
        "audit_tailer_y_total 1\n",
    ] {
        let text =
            format!("# HELP audit_tailer_x_total X.\n# TYPE audit_tailer_x_total counter\n{bad}");
        assert!(parse_prometheus(&text, "audit_tailer_").is_err(), "{bad:?}");
    }
}

/// t01: records, messages and acks counted by the tailer agree with what it printed and with the
/// forwarder's acked count; the client gauge follows the forwarder coming and going.
#[test]
fn t01_tailer_counts_match_what_it_printed_and_the_forwarder_acked() {
    let dir = TempDir::new("tm01");
    let mut w = AuditWriter::create(&dir.join("log"));
    let lines = audit_events(0..5000);
    w.write_lines(&lines[..2500]);
    let (port, mport, fport) = (free_port(), free_port(), free_port());
    let tailer = tailer_with_metrics(port, mport, &[]);
    let m = scrape(mport);
    assert_eq!(metric(&m, "records_received_total"), 0.0);
    assert_eq!(metric(&m, "clients_connected"), 0.0);
    assert_eq!(metric(&m, "mem_budget_bytes"), 200_000_000.0);
    assert_eq!(metric(&m, "clients_max"), 256.0);
    let build = format!("build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(metric(&m, &build), 1.0);
    assert_eq!(get(mport, "/readyz"), (200, "ok\n".to_string()));

    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &["--metrics-address", &format!("127.0.0.1:{fport}")],
    ));
    w.write_lines(&lines[2500..]);
    expect_all_within(&tailer, &mut fwd, &lines, "5000 lines", DELIVERY);

    // The forwarder's acked count catches up with the acks it reads after the tailer sent them.
    let mut m = BTreeMap::new();
    let mut acked = 0.0;
    let settled = wait_until(secs(20), || {
        m = scrape(mport);
        let (code, body) = get(fport, "/metrics");
        acked = parse_prometheus(&body, "audit_forwarder_")
            .ok()
            .and_then(|f| f.get("audit_forwarder_records_acked_total").copied())
            .unwrap_or(-1.0);
        code == 200
            && metric(&m, "records_received_total") == tailer.line_count() as f64
            && acked == metric(&m, "records_received_total")
    });
    let received = metric(&m, "records_received_total");
    assert!(
        settled,
        "tailer counted {received}, printed {}, forwarder acked {acked}",
        tailer.line_count()
    );
    assert!(received >= 5000.0, "{m:#?}");
    let messages = metric(&m, "messages_received_total");
    assert!(messages >= 1.0, "{m:#?}");
    // Every chunk of the forwarder asks for an ack, so each message got one.
    assert_eq!(metric(&m, "acks_sent_total"), messages, "{m:#?}");
    // msgpack of an audit event is not much smaller than its JSON line.
    let json_bytes: usize = lines.iter().map(String::len).sum();
    let bytes = metric(&m, "bytes_received_total");
    assert!(
        bytes >= json_bytes as f64 / 2.0,
        "{bytes} msgpack bytes for {json_bytes} bytes of JSON"
    );
    assert_eq!(metric(&m, "clients_connected"), 1.0, "{m:#?}");
    assert_eq!(metric(&m, "clients_accepted_total"), 1.0, "{m:#?}");
    assert_eq!(metric(&m, "clients_refused_total"), 0.0);
    for family in [
        "decode_errors_total",
        "handshake_failures_total",
        "clients_closed_total",
    ] {
        let samples = by_reason(&m, family);
        assert!(samples.len() >= 5, "{family}: {samples:?}");
        assert!(samples.values().all(|v| *v == 0.0), "{family}: {samples:?}");
    }
    assert!(metric(&m, "mem_used_bytes") <= metric(&m, "mem_budget_bytes"));
    assert_eq!(metric(&m, "ready"), 1.0);
    assert_eq!(get(mport, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(mport, "/readyz"), (200, "ok\n".to_string()));
    let (code, body) = http(mport, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!((code, body.as_str()), (200, ""));

    fwd.term_ok();
    let gone = wait_until(secs(20), || {
        m = scrape(mport);
        metric(&m, "clients_connected") == 0.0
    });
    assert!(gone, "the forwarder left but the gauge stayed: {m:#?}");
    assert_eq!(by_reason(&m, "clients_closed_total")["peer"], 1.0, "{m:#?}");
    assert_eq!(metric(&m, "records_received_total"), received);
}

/// t02: garbage of each kind is a decode error under its reason; a wrong shared key, a client
/// that never sends its PING and one that sends garbage instead are handshake failures; the
/// right key then delivers everything and the gauge returns to 0.
#[test]
fn t02_refused_clients_are_counted_by_reason() {
    let (port, mport) = (free_port(), free_port());
    let plain = tailer_with_metrics(port, mport, &[]);
    // str 32 declaring 100 MiB, over the 64 MiB a message may have.
    let oversized: &[u8] = &[0xdb, 0x06, 0x40, 0x00, 0x00];
    // [tag, bin "notgzip", {"compressed": "gzip"}]
    let mut bad_gzip = vec![0x93, 0xa3, b't', b'a', b'g', 0xc4, 0x07];
    bad_gzip.extend_from_slice(b"notgzip");
    bad_gzip.extend_from_slice(&[0x81, 0xaa]);
    bad_gzip.extend_from_slice(b"compressed");
    bad_gzip.extend_from_slice(&[0xa4, b'g', b'z', b'i', b'p']);
    let cases: &[(&str, &[u8], bool)] = &[
        ("msgpack", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false),
        ("msgpack", b"\xc1", false),
        ("protocol", &[0x91, 0xa3, b't', b'a', b'g'], false),
        ("oversized", oversized, false),
        ("gzip", &bad_gzip, false),
        // [tag, ... and then the end of the connection.
        ("truncated", &[0x92, 0xa3, b't', b'a', b'g'], true),
    ];
    for (_, bytes, eof) in cases {
        send_and_wait_closed(connect_tailer(port), bytes, *eof);
    }
    let mut m = BTreeMap::new();
    let counted = wait_until(secs(10), || {
        m = scrape(mport);
        metric(&m, "clients_connected") == 0.0
    });
    assert!(counted, "garbage clients still connected: {m:#?}");
    let decode = by_reason(&m, "decode_errors_total");
    let want: BTreeMap<String, f64> = [
        ("msgpack", 2.0),
        ("protocol", 1.0),
        ("gzip", 1.0),
        ("oversized", 1.0),
        ("memory_budget", 0.0),
        ("truncated", 1.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(decode, want, "{m:#?}");
    let closed = by_reason(&m, "clients_closed_total");
    assert_eq!(closed["rejected"], 6.0, "{closed:?}");
    assert_eq!(metric(&m, "clients_accepted_total"), 6.0);
    assert_eq!(metric(&m, "records_received_total"), 0.0);
    drop(plain);

    // Shared key, and a short --client-timeout for the client that never sends its PING.
    let (port, mport) = (free_port(), free_port());
    let keyed = tailer_with_metrics(
        port,
        mport,
        &[
            "--shared-key",
            "s3cret",
            "--self-hostname",
            "tailer-tm02",
            "--client-timeout",
            "1s",
        ],
    );
    let silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    send_and_wait_closed(connect_tailer(port), b"\xc1", false);
    let dir = TempDir::new("tm02");
    let mut w = AuditWriter::create(&dir.join("log"));
    let lines = audit_events(0..500);
    w.write_lines(&lines);
    let mut wrong = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &[
            "--shared-key",
            "guess",
            "--backoff-timer",
            "500ms",
            "--shutdown-timeout",
            "0s",
        ],
    ));
    let failed = wait_until(secs(30), || {
        m = scrape(mport);
        let h = by_reason(&m, "handshake_failures_total");
        h["shared_key"] >= 1.0 && h["timeout"] >= 1.0
    });
    assert!(failed, "handshake failures not counted: {m:#?}");
    wrong.assert_alive("forwarder with the wrong key");
    wrong.term(secs(15));
    drop(silent);
    let m = scrape(mport);
    let h = by_reason(&m, "handshake_failures_total");
    assert_eq!(h["bad_ping"], 1.0, "{h:?}");
    assert_eq!(h["timeout"], 1.0, "{h:?}");
    assert_eq!(h["tls"], 0.0, "{h:?}");
    assert_eq!(metric(&m, "records_received_total"), 0.0);
    assert_eq!(keyed.line_count(), 0);
    let closed = by_reason(&m, "clients_closed_total");
    assert_eq!(closed["client_timeout"], 1.0, "{closed:?}");

    let mut right = Forwarder::start(fwd_args(&w.log_path(), port, &["--shared-key", "s3cret"]));
    expect_all_within(&keyed, &mut right, &lines, "500 lines, right key", DELIVERY);
    right.term_ok();
    let mut m = BTreeMap::new();
    let settled = wait_until(secs(20), || {
        m = scrape(mport);
        metric(&m, "clients_connected") == 0.0
            && metric(&m, "records_received_total") == keyed.line_count() as f64
    });
    assert!(settled, "{m:#?} vs {} printed", keyed.line_count());
    // Every accepted client ended exactly once.
    let closed: f64 = by_reason(&m, "clients_closed_total").values().sum();
    assert_eq!(closed, metric(&m, "clients_accepted_total"), "{m:#?}");
}

/// t03: malformed and oversized requests, a slow client and a few hundred idle connections on
/// the tailer's metrics port while a forwarder delivers 20,000 lines: every line arrives (the
/// first thousand within 3 s, before the slow client's deadline), and the endpoint answers again
/// once the held connections are gone.
#[test]
fn t03_hostile_metrics_clients_cannot_stall_the_tailer() {
    let dir = TempDir::new("tm03");
    let w = AuditWriter::create(&dir.join("log"));
    let (port, mport) = (free_port(), free_port());
    let tailer = tailer_with_metrics(port, mport, &[]);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &[]));

    assert_metrics_refusals(mport);
    let lines = audit_events(0..20_000);
    let w = deliver_while_metrics_port_is_held(w, &tailer, &mut fwd, mport, 300, &lines);
    let mut m = BTreeMap::new();
    let settled = wait_until(secs(10), || {
        m = scrape(mport);
        metric(&m, "records_received_total") == tailer.line_count() as f64
    });
    assert!(settled, "{m:#?} vs {} printed", tailer.line_count());
    assert!(metric(&m, "records_received_total") >= 20_000.0);
    assert_eq!(metric(&m, "clients_accepted_total"), 1.0, "{m:#?}");
    drop(w);
    fwd.term_ok();
}
