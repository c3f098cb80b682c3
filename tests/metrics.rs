//! End-to-end tests of `--metrics-address`: `/metrics` scraped during real runs to the tailer and
//! parsed whole by a strict Prometheus text-format reader, its counters checked against what the
//! tailer received; `/readyz` following the receiver going away and coming back; and hostile
//! clients on the metrics port (garbage, oversized heads, slow and idle connections) that must
//! not cost a single record.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

const DELIVERY: Duration = Duration::from_secs(60);

/// The forwarder's families, checked by the shared strict reader.
fn parse_prometheus(text: &str) -> Result<BTreeMap<String, f64>, String> {
    common::parse_prometheus(text, "audit_forwarder_")
}

/// A scrape, parsed whole; a malformed line fails the test.
fn scrape(port: u16) -> BTreeMap<String, f64> {
    let (code, body) = get(port, "/metrics");
    assert_eq!(code, 200, "/metrics answered {code}: {body}");
    parse_prometheus(&body).unwrap_or_else(|e| panic!("/metrics: {e}\n{body}"))
}

fn metric(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(&format!("audit_forwarder_{key}"))
        .unwrap_or_else(|| panic!("no audit_forwarder_{key} in {m:#?}"))
}

/// Sum of every sample of one family (all label sets).
fn family_sum(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    let name = format!("audit_forwarder_{name}");
    m.iter()
        .filter(|(k, _)| *k == &name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

fn with_metrics(log: &std::path::Path, port: u16, mport: u16, extra: &[&str]) -> Vec<String> {
    let addr = format!("127.0.0.1:{mport}");
    let mut args = fwd_args(log, port, &["--metrics-address", &addr]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn wait_metrics_up(f: &mut Forwarder, mport: u16) {
    let up = wait_until(secs(20), || port_listening(mport) || f.exited());
    f.assert_alive("metrics listener");
    assert!(
        up,
        "metrics port {mport} not listening; stderr:\n{}",
        f.stderr_text()
    );
}

/// A forwarder with metrics that has delivered the lines written before it started, and is
/// ready: the run a test then disturbs. Fields drop in order, the directory last.
struct Run {
    fwd: Forwarder,
    tailer: Tailer,
    w: AuditWriter,
    port: u16,
    mport: u16,
    _dir: TempDir,
}

fn delivered_run(tag: &str, lines: &[String], extra: &[&str]) -> Run {
    let dir = TempDir::new(tag);
    let mut w = AuditWriter::create(&dir.join("log"));
    w.write_lines(lines);
    let (port, mport) = (free_port(), free_port());
    let tailer = Tailer::start(port);
    let mut fwd = Forwarder::start(with_metrics(&w.log_path(), port, mport, extra));
    wait_metrics_up(&mut fwd, mport);
    expect_all_within(
        &tailer,
        &mut fwd,
        lines,
        "the lines before the start",
        DELIVERY,
    );
    assert!(wait_until(secs(10), || get(mport, "/readyz").0 == 200));
    Run {
        fwd,
        tailer,
        w,
        port,
        mport,
        _dir: dir,
    }
}

#[test]
fn harness_prometheus_parser_rejects_malformed_lines() {
    let good = "# HELP audit_forwarder_x_total X.\n# TYPE audit_forwarder_x_total counter\n\
                audit_forwarder_x_total{a=\"q\\\"\\\\\",b=\"\"} 3\naudit_forwarder_x_total 1e3\n";
    let m = parse_prometheus(good).unwrap();
    assert_eq!(m["audit_forwarder_x_total"], 1000.0);
    assert_eq!(m["audit_forwarder_x_total{a=\"q\\\"\\\\\",b=\"\"}"], 3.0);
    let head = "# HELP audit_forwarder_x_total X.\n# TYPE audit_forwarder_x_total counter\n";
    for bad in [
        "audit_forwarder_x_total 1\n",
        "# TYPE audit_forwarder_x_total counter\naudit_forwarder_x_total 1\n",
        "# HELP audit_forwarder_x X.\n# TYPE audit_forwarder_x counter\naudit_forwarder_x 1\n",
    ] {
        assert!(parse_prometheus(bad).is_err(), "{bad:?}");
    }
    for sample in [
        "audit_forwarder_x_total one",
        "audit_forwarder_x_total  1",
        "audit_forwarder_x_total{a=\"1} 1",
        "audit_forwarder_x_total{a=1} 1",
        "audit_forwarder_x_total{a=\"\\x\"} 1",
        "audit_forwarder_x_total 1 2 3",
        "audit_forwarder_y_total 1",
        "",
    ] {
        let text = format!("{head}{sample}\n");
        assert!(parse_prometheus(&text).is_err(), "{sample:?}");
    }
}

/// m01: the counters agree with what the tailer received, the lag falls to 0, and the probes
/// answer as documented.
#[test]
fn m01_scrape_matches_what_the_tailer_received() {
    let dir = TempDir::new("m01");
    let mut w = AuditWriter::create(&dir.join("log"));
    let first = audit_events(0..3000);
    w.write_lines(&first);
    let (port, mport) = (free_port(), free_port());
    let tailer = Tailer::start(port);
    let mut fwd = Forwarder::start(with_metrics(&w.log_path(), port, mport, &[]));
    wait_metrics_up(&mut fwd, mport);
    // A scrape while lines are still being written and sent parses too.
    let more = audit_events(3000..6000);
    for part in more.chunks(500) {
        w.write_lines(part);
        scrape(mport);
    }
    let all: Vec<String> = first.iter().chain(&more).cloned().collect();
    expect_all_within(&tailer, &mut fwd, &all, "6000 lines", DELIVERY);
    let bytes: usize = all.iter().map(|l| l.len() + 1).sum();

    let mut m = BTreeMap::new();
    let settled = wait_until(secs(20), || {
        m = scrape(mport);
        metric(&m, "records_acked_total") >= 6000.0 && metric(&m, "total_lag_bytes") == 0.0
    });
    assert!(settled, "acked and lag did not settle: {m:#?}");
    let received = tailer.line_count() as f64;
    assert_eq!(metric(&m, "records_acked_total"), received, "{m:#?}");
    assert_eq!(metric(&m, "lines_read_total"), 6000.0);
    assert_eq!(metric(&m, "bytes_read_total"), bytes as f64);
    assert_eq!(metric(&m, "bytes_acked_total"), bytes as f64);
    assert_eq!(metric(&m, "chunks_unacked"), 0.0);
    assert_eq!(metric(&m, "lines_skipped_total{reason=\"too_long\"}"), 0.0);
    assert_eq!(metric(&m, "mem_buf_limit_bytes"), 200_000_000.0);
    assert_eq!(family_sum(&m, "connection_failures_total"), 0.0);
    assert_eq!(metric(&m, "reconnects_total"), 0.0);
    assert_eq!(metric(&m, "ready"), 1.0);
    let target = format!("target_info{{target=\"127.0.0.1:{port}\"}}");
    assert_eq!(metric(&m, &target), 1.0);
    assert_eq!(metric(&m, "connected"), 1.0);
    let build = format!("build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert!(metric(&m, &build) == 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last_ack = metric(&m, "last_ack_timestamp_seconds");
    assert!(
        (now - last_ack).abs() < 120.0,
        "last ack {last_ack}, now {now}"
    );
    // The position file is written as acks come in (every 200 ms at most).
    let wrote = wait_until(secs(10), || {
        metric(&scrape(mport), "position_writes_total") >= 1.0
    });
    assert!(wrote, "no position file write counted");
    assert_eq!(metric(&scrape(mport), "position_write_failures_total"), 0.0);

    assert_eq!(get(mport, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(mport, "/readyz"), (200, "ok\n".to_string()));
    let (code, body) = http(mport, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!((code, body.as_str()), (200, ""));
    fwd.term_ok();
}

/// m02: a killed tailer shows as a failure with its reason and /readyz 503 with a one-line
/// reason; when it comes back, a reconnect and /readyz 200, and nothing is lost.
#[test]
fn m02_killed_tailer_turns_readyz_503_and_back() {
    let first = audit_events(0..1000);
    let mut r = delivered_run("m02", &first, &["--backoff-timer", "500ms"]);

    r.tailer.kill();
    let second = audit_events(1000..2000);
    r.w.write_lines(&second);
    let mut last = (0, String::new());
    let down = wait_until(secs(30), || {
        last = get(r.mport, "/readyz");
        last.0 == 503
    });
    assert!(down, "/readyz stayed {last:?} with the tailer killed");
    assert!(
        last.1
            .starts_with(&format!("not connected to 127.0.0.1:{}", r.port)),
        "{last:?}"
    );
    assert_eq!(last.1.lines().count(), 1, "{last:?}");
    let refused = "connection_failures_total{reason=\"refused\"}";
    let mut m = BTreeMap::new();
    let counted = wait_until(secs(30), || {
        m = scrape(r.mport);
        metric(&m, refused) >= 1.0
    });
    assert!(counted, "no refused connection counted: {m:#?}");
    assert_eq!(metric(&m, "ready"), 0.0);
    let target = format!("target_info{{target=\"127.0.0.1:{}\"}}", r.port);
    assert_eq!(metric(&m, &target), 1.0);
    assert_eq!(metric(&m, "connected"), 0.0);
    assert_eq!(get(r.mport, "/healthz").0, 200);

    r.tailer.restart();
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    expect_all_within(
        &r.tailer,
        &mut r.fwd,
        &all,
        "2000 after the restart",
        DELIVERY,
    );
    let up = wait_until(secs(30), || get(r.mport, "/readyz").0 == 200);
    assert!(
        up,
        "/readyz did not return to 200: {:?}",
        get(r.mport, "/readyz")
    );
    let m = scrape(r.mport);
    assert!(metric(&m, "reconnects_total") >= 1.0, "{m:#?}");
    assert!(metric(&m, "records_acked_total") >= 2000.0, "{m:#?}");
    r.fwd.term_ok();
}

/// m03: garbage, oversized heads, wrong methods and paths get their error answers; a slow
/// client (taking a slot first) and 200 idle connections hold the port; the forward run
/// meanwhile delivers every record, the first thousand within 3 s, before the slow client's
/// deadline (a loop waiting on it would be late), and the endpoint answers again once the idle
/// ones time out.
#[test]
fn m03_hostile_clients_cannot_stall_forwarding() {
    let dir = TempDir::new("m03");
    let w = AuditWriter::create(&dir.join("log"));
    let (port, mport) = (free_port(), free_port());
    let tailer = Tailer::start(port);
    let mut fwd = Forwarder::start(with_metrics(&w.log_path(), port, mport, &[]));
    wait_metrics_up(&mut fwd, mport);

    assert_metrics_refusals(mport);

    // Lines flow while the port is held by idle clients and a slowloris.
    let lines = audit_events(0..20_000);
    let w = deliver_while_metrics_port_is_held(w, &tailer, &mut fwd, mport, 200, &lines);
    let m = scrape(mport);
    assert_eq!(metric(&m, "lines_read_total"), 20_000.0);
    drop(w);
    fwd.term_ok();
}

fn bytes_of(lines: &[String]) -> f64 {
    lines.iter().map(|l| l.len() + 1).sum::<usize>() as f64
}

/// The `file` labels of `lag_bytes` in a scrape, with their values.
fn file_lags(m: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    m.iter()
        .filter_map(|(k, v)| {
            let file = k.strip_prefix("audit_forwarder_lag_bytes{file=\"")?;
            Some((file.strip_suffix("\"}")?.to_string(), *v))
        })
        .collect()
}

/// m04: records sent, acked and received agree; each file's lag is its size minus what was
/// acked in it: 0 when caught up; after a rotation with the receiver down, the rotated file
/// owes exactly the lines written before the rotation and the new audit.log the lines after,
/// the rotation is counted once, and once delivery resumes the rotated file's label goes and
/// audit.log's lag falls to 0.
#[test]
fn m04_records_sent_per_file_lag_and_rotations() {
    let first = audit_events(0..2000);
    let mut r = delivered_run("m04", &first, &["--backoff-timer", "1s"]);
    let mut m = BTreeMap::new();
    let caught_up = wait_until(secs(20), || {
        m = scrape(r.mport);
        metric(&m, "records_acked_total") == 2000.0 && metric(&m, "total_lag_bytes") == 0.0
    });
    assert!(caught_up, "not caught up: {m:#?}");
    assert_eq!(r.tailer.line_count(), 2000);
    assert!(metric(&m, "records_sent_total") >= 2000.0, "{m:#?}");
    let lags = file_lags(&m);
    assert_eq!(lags, BTreeMap::from([("audit.log".to_string(), 0.0)]));
    assert_eq!(metric(&m, "rotations_total"), 0.0);
    assert_eq!(metric(&m, "files_unreadable"), 0.0);

    // The receiver is down: what is written now is read but not acked.
    r.tailer.kill();
    let before = audit_events(2000..3000);
    r.w.write_lines(&before);
    let backup = r.w.rotate_file();
    let after = audit_events(3000..3500);
    r.w.write_lines(&after);
    let backup_name = backup
        .file_name()
        .and_then(|n| n.to_str())
        .expect("backup name")
        .to_string();
    let want = BTreeMap::from([
        (backup_name.clone(), bytes_of(&before)),
        ("audit.log".to_string(), bytes_of(&after)),
    ]);
    let owed = wait_until(secs(30), || {
        m = scrape(r.mport);
        metric(&m, "lines_read_total") == 3500.0 && file_lags(&m) == want
    });
    assert!(owed, "lags {:?}, want {want:?}: {m:#?}", file_lags(&m));
    assert_eq!(
        metric(&m, "total_lag_bytes"),
        bytes_of(&before) + bytes_of(&after)
    );
    assert_eq!(metric(&m, "rotations_total"), 1.0, "{m:#?}");
    assert_eq!(metric(&m, "records_acked_total"), 2000.0);

    r.tailer.restart();
    let all: Vec<String> = first.iter().chain(&before).chain(&after).cloned().collect();
    expect_all_within(
        &r.tailer,
        &mut r.fwd,
        &all,
        "3500 after the restart",
        DELIVERY,
    );
    let paid = wait_until(secs(20), || {
        m = scrape(r.mport);
        metric(&m, "records_acked_total") == 3500.0
            && file_lags(&m) == BTreeMap::from([("audit.log".to_string(), 0.0)])
    });
    assert!(paid, "lags {:?} after delivery: {m:#?}", file_lags(&m));
    assert_eq!(metric(&m, "total_lag_bytes"), 0.0);
    assert_eq!(metric(&m, "rotations_total"), 1.0);
    assert!(metric(&m, "records_sent_total") >= 3500.0, "{m:#?}");
    assert_eq!(
        r.tailer.line_count(),
        3500,
        "the tailer got each record once"
    );
    assert_delivered(&all, &r.tailer.records(), false);
    // The stats line at shutdown carries the same figures.
    r.fwd.term_ok();
    let stats = r.fwd.stats();
    let last = stats.last().expect("a stats line at shutdown");
    assert_eq!(last.get("records_acked"), Some(&3500), "{last:?}");
    assert_eq!(last.get("rotations"), Some(&1), "{last:?}");
    assert_eq!(last.get("lag_bytes"), Some(&0), "{last:?}");
    assert!(
        last.get("records_sent").is_some_and(|n| *n >= 3500),
        "{last:?}"
    );
}

/// m05: a tailer restarted within `--backoff-timer` leaves /readyz at 200 throughout; one
/// killed for longer turns it 503 with the reason once the backoff has passed, its refusals are
/// counted as `refused` and logged at WARN once, not per attempt, and its return is one INFO
/// line with the count.
#[test]
fn m05_readyz_grace_and_repeated_refusals_summarised() {
    let first = audit_events(0..500);
    let mut r = delivered_run("m05", &first, &["--backoff-timer", "8s"]);

    // Down for a second and a half, well within the backoff: /readyz stays 200 while the
    // connection is down and refused, and after it came back.
    r.tailer.kill();
    let gap = Instant::now();
    let (mut probes, mut saw_down) = (Vec::new(), false);
    while gap.elapsed() < ms(1500) {
        probes.push(get(r.mport, "/readyz"));
        saw_down |= metric(&scrape(r.mport), "connected") == 0.0;
        thread::sleep(ms(100));
    }
    r.tailer.restart();
    let back = wait_until(secs(30), || {
        probes.push(get(r.mport, "/readyz"));
        let m = scrape(r.mport);
        metric(&m, "reconnects_total") >= 1.0 && metric(&m, "connected") == 1.0
    });
    assert!(back, "did not reconnect after a quick restart");
    assert!(
        saw_down,
        "the connection never showed as down while the tailer was gone"
    );
    let not_ready: Vec<_> = probes.iter().filter(|(code, _)| *code != 200).collect();
    assert!(
        not_ready.is_empty(),
        "/readyz left 200 during an outage within --backoff-timer: {not_ready:?}"
    );
    let second = audit_events(500..700);
    r.w.write_lines(&second);
    let mut all: Vec<String> = first.iter().chain(&second).cloned().collect();
    expect_all_within(
        &r.tailer,
        &mut r.fwd,
        &all,
        "after the quick restart",
        DELIVERY,
    );

    // Killed for longer: 503 once the backoff has passed, with the reason.
    let refused = "connection_failures_total{reason=\"refused\"}";
    let refused_before = metric(&scrape(r.mport), refused);
    let log_from = r.fwd.stderr_text().len();
    r.tailer.kill();
    let killed_at = Instant::now();
    let third = audit_events(700..900);
    r.w.write_lines(&third);
    all.extend(third);
    let mut last = (0, String::new());
    let down = wait_until(secs(40), || {
        last = get(r.mport, "/readyz");
        last.0 == 503
    });
    assert!(down, "/readyz stayed {last:?} with the tailer gone");
    assert!(
        killed_at.elapsed() >= secs(7),
        "/readyz turned 503 after {:?}, within --backoff-timer 8s: {last:?}",
        killed_at.elapsed()
    );
    let target = format!("127.0.0.1:{}", r.port);
    assert!(
        last.1
            .starts_with(&format!("not connected to {target} for "))
            && last.1.contains("--backoff-timer 8s")
            && last.1.contains("refused"),
        "{last:?}"
    );
    // Refusals keep coming for a while longer; they are counted, not each logged.
    thread::sleep(secs(4));
    let m = scrape(r.mport);
    let refusals = metric(&m, refused) - refused_before;
    assert!(refusals >= 4.0, "only {refusals} refusals counted: {m:#?}");
    let text = r.fwd.stderr_text()[log_from..].to_string();
    let warned = lines_mentioning(&text, &[&target, "refused"], &[])
        .into_iter()
        .filter(|l| l.contains("WARN"))
        .collect::<Vec<_>>();
    assert!(
        !warned.is_empty() && warned.len() <= 2,
        "{refusals} refusals logged at WARN {} times (want the first only): {warned:#?}",
        warned.len()
    );

    r.tailer.restart();
    expect_all_within(
        &r.tailer,
        &mut r.fwd,
        &all,
        "after the long outage",
        DELIVERY,
    );
    let recovered = wait_until(secs(10), || {
        let text = r.fwd.stderr_text()[log_from..].to_string();
        !lines_mentioning(&text, &[&target, "recovered after"], &[]).is_empty()
    });
    let text = r.fwd.stderr_text()[log_from..].to_string();
    let lines = lines_mentioning(&text, &[&target, "recovered after"], &[]);
    assert!(
        recovered && lines.len() == 1 && lines[0].contains("INFO"),
        "one INFO recovery line: {lines:#?}"
    );
    assert!(wait_until(secs(20), || get(r.mport, "/readyz").0 == 200));
    r.fwd.term_ok();
}
