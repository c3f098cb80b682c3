//! End-to-end tests of the forwarder against the real `tailer` receiver and fake receivers:
//! delivery (at least once, in order), rotation and restarts, protocol failures, malformed
//! input and the memory cap. `harness_*` tests check the harness itself without the binary.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// Ceiling for "everything arrives"; polling makes passing tests finish long before it.
const DELIVERY: Duration = Duration::from_secs(60);

/// Waits until every expected record reached the tailer; stops early if the forwarder died.
fn expect_all(t: &Tailer, f: &mut Forwarder, expected: &[String], what: &str) {
    expect_all_within(t, f, expected, what, DELIVERY);
}

fn stderr_shows(f: &Forwarder, all: &[&str], any: &[&str], what: &str) {
    let text = f.stderr_text();
    assert!(
        !lines_mentioning(&text, all, any).is_empty(),
        "forwarder stderr has no line mentioning {what} (all of {all:?}, any of {any:?}); stderr (tail):\n{}",
        &text[text.len().saturating_sub(8000)..]
    );
}

fn last_stats(f: &Forwarder) -> std::collections::BTreeMap<String, u64> {
    let all = f.stats();
    let last = all.last().cloned().unwrap_or_else(|| {
        panic!(
            "no `stats:` line on stderr (one is due at shutdown); stderr:\n{}",
            f.stderr_text()
        )
    });
    for k in STATS_KEYS {
        assert!(last.contains_key(k), "stats line lacks {k}=N: {last:?}");
    }
    last
}

// 1 ------------------------------------------------------------------------------------------

#[test]
fn t01_prewritten_10k_lines_exactly_once_then_sigterm() {
    let dir = TempDir::new("t01");
    let log_dir = dir.join("log");
    let mut w = AuditWriter::create(&log_dir);
    let lines = audit_events(0..10_000);
    w.write_lines(&lines);

    let port = free_port();
    let tailer = Tailer::start(port);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &[]));

    expect_all(&tailer, &mut fwd, &lines, "10k pre-written lines");
    // Give stragglers (duplicates) a moment to show up before the exactly-once check.
    thread::sleep(Duration::from_millis(300));
    assert_delivered(&lines, &tailer.records(), false);

    fwd.term_ok();
    let pos = log_dir.join(".audit-forwarder.pos");
    let meta = fs::metadata(&pos).unwrap_or_else(|e| {
        panic!("position file {} after SIGTERM: {e}", pos.display());
    });
    assert!(meta.len() > 0, "position file {} is empty", pos.display());
    let last = last_stats(&fwd);
    assert_eq!(
        last["records_acked"], 10_000,
        "records_acked in the final stats line: {last:?}"
    );
}

// 2 ------------------------------------------------------------------------------------------

#[test]
fn t02_lines_appended_in_bursts_while_running() {
    let dir = TempDir::new("t02");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let tailer = Tailer::start(port);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &[]));

    let mut all = Vec::new();
    for burst in 0..6u64 {
        let lines = audit_events(burst * 700..burst * 700 + 300 + burst * 80);
        w.write_lines(&lines);
        all.extend(lines);
        expect_all(&tailer, &mut fwd, &all, &format!("burst {burst}"));
        thread::sleep(Duration::from_millis(150 + 50 * burst));
    }
    thread::sleep(Duration::from_millis(300));
    assert_delivered(&all, &tailer.records(), false);
    fwd.term_ok();
}

// 3 ------------------------------------------------------------------------------------------

#[test]
fn t03_rotation_under_load_and_backup_deleted_while_being_read() {
    let dir = TempDir::new("t03");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let tailer = Tailer::start(port);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &[]));

    // Phase A: a writer thread writes continuously and rotates five times in a row.
    let writer = thread::spawn(move || {
        let mut written = Vec::new();
        let mut seq = 0u64;
        for file in 0..6 {
            for _burst in 0..15 {
                let lines = audit_events(seq..seq + 100);
                seq += 100;
                w.write_lines(&lines);
                written.extend(lines);
                thread::sleep(Duration::from_millis(5));
            }
            if file < 5 {
                w.rotate(false, 0);
            }
        }
        (w, written, seq)
    });
    let (mut w, mut expected, mut seq) = writer.join().expect("writer thread");
    assert_eq!(w.backups().len(), 5, "five rotations made five backups");
    expect_all(
        &tailer,
        &mut fwd,
        &expected,
        "phase A (five rotations under load)",
    );

    // Phase B: the forwarder lags (SIGSTOP) while audit.log, which it has open, grows by 4 MB
    // and is rotated, the next file is rotated too, and the big backup is deleted.
    let probe = audit_events(seq..seq + 10);
    seq += 10;
    w.write_lines(&probe);
    expected.extend(probe);
    expect_all(&tailer, &mut fwd, &expected, "probe lines before SIGSTOP");
    fwd.sigstop();
    let at_stop = tailer.line_count();
    assert!(
        fwd.holds_open(&w.log_path()),
        "the stopped forwarder does not hold audit.log open, so it could not read it after \
         rotation + deletion (spec: a rotated file is read to its end even if deleted)"
    );
    let big = audit_events(seq..seq + 4000);
    seq += 4000;
    w.write_lines(&big);
    expected.extend(big);
    let big_backup = w.rotate_file();
    let y = audit_events(seq..seq + 300);
    seq += 300;
    w.write_lines(&y);
    expected.extend(y);
    w.rotate_file();
    fs::remove_file(&big_backup).expect("unlink the big backup");
    let z = audit_events(seq..seq + 300);
    w.write_lines(&z);
    expected.extend(z);
    thread::sleep(Duration::from_millis(300));
    assert!(
        tailer.line_count() == at_stop,
        "records arrived while the forwarder was stopped?"
    );
    fwd.sigcont();

    expect_all(
        &tailer,
        &mut fwd,
        &expected,
        "phase B (deleted backup, double rotation)",
    );
    thread::sleep(Duration::from_millis(300));
    assert_delivered(&expected, &tailer.records(), false);
    fwd.term_ok();
}

// 4 ------------------------------------------------------------------------------------------

#[test]
fn t04_rotation_and_gzip_while_forwarder_is_stopped() {
    let dir = TempDir::new("t04");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let tailer = Tailer::start(port);
    let a = audit_events(0..5000);
    w.write_lines(&a);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &[]));
    assert!(
        tailer.wait_for(100, DELIVERY),
        "no records arrived before the stop"
    );
    fwd.term_ok();
    let delivered_before = tailer.line_count();
    assert!(
        dir.join(".audit-forwarder.pos").exists(),
        "no position file after SIGTERM"
    );

    // While it is down: more lines, a compressed rotation (the positioned file becomes .gz),
    // more lines, a plain rotation, more lines.
    let b = audit_events(5000..5500);
    w.write_lines(&b);
    let first_backup = w.rotate(true, 0);
    let c = audit_events(5500..6000);
    w.write_lines(&c);
    w.rotate(false, 0);
    let d = audit_events(6000..6500);
    w.write_lines(&d);
    let backups = w.backups();
    assert_eq!(backups.len(), 2, "backups: {backups:?}");
    assert!(
        backups[0].to_string_lossy().ends_with(".log.gz") && !first_backup.exists(),
        "the first backup must be gzipped: {backups:?}"
    );
    assert_eq!(
        tailer.line_count(),
        delivered_before,
        "records arrived while the forwarder was down?"
    );

    fwd.restart();
    let expected: Vec<String> = [a, b, c, d].concat();
    expect_all(&tailer, &mut fwd, &expected, "after restart");
    thread::sleep(Duration::from_millis(500));
    // A clean SIGTERM waits for acks and saves the position: nothing is sent twice.
    assert_delivered(&expected, &tailer.records(), false);
    fwd.term_ok();
}

// 5 ------------------------------------------------------------------------------------------

#[test]
fn t05_fast_gzip_rotation_with_deletions_and_sigkills() {
    let dir = TempDir::new("t05");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let tailer = Tailer::start(port);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &[]));
    let mut rng = Rng::for_test("t05");

    // maxbackup 10 at one rotation per 0.2 s: a backup lives ~2 s, long enough for a restarted
    // forwarder to catch up, short enough that files are deleted and inodes get reused.
    let writer = thread::spawn(move || {
        let mut written = Vec::new();
        let mut seq = 0u64;
        for _ in 0..35 {
            let start = Instant::now();
            for _ in 0..8 {
                let lines = audit_events(seq..seq + 10);
                seq += 10;
                w.write_lines(&lines);
                written.extend(lines);
                thread::sleep(Duration::from_millis(15));
            }
            if let Some(rest) = Duration::from_millis(200).checked_sub(start.elapsed()) {
                thread::sleep(rest);
            }
            w.rotate(true, 10);
        }
        let tail = audit_events(seq..seq + 50);
        w.write_lines(&tail);
        written.extend(tail);
        (w, written)
    });
    for kill in 0..3 {
        thread::sleep(Duration::from_millis(rng.range(900, 1900)));
        if writer.is_finished() {
            eprintln!("writer finished before kill {kill}");
            break;
        }
        fwd.kill9();
        // Down for 1-3 rotations: the positioned file is renamed and gzipped meanwhile, and
        // freed inodes get reused by new files.
        thread::sleep(Duration::from_millis(rng.range(250, 650)));
        fwd.restart();
    }
    let (w, expected) = writer.join().expect("writer thread");
    let backups = w.backups();
    assert!(
        backups.len() == 10 && backups.iter().all(|b| b.to_string_lossy().ends_with(".gz")),
        "lumberjack mill: 10 gzipped backups expected, got {backups:?}"
    );
    expect_all(&tailer, &mut fwd, &expected, "fast rotation with kills");
    assert_delivered(&expected, &tailer.records(), true);
    fwd.term_ok();
}

// 6 ------------------------------------------------------------------------------------------

#[test]
fn t06_copytruncate_reads_from_start_again() {
    let dir = TempDir::new("t06");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let tailer = Tailer::start(port);
    let before = audit_events(0..1000);
    w.write_lines(&before);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &[]));
    expect_all(&tailer, &mut fwd, &before, "before copytruncate");

    w.copytruncate(&dir.join("audit.log.1"));
    // Let the forwarder see the truncation before new data arrives; the new content stays
    // smaller than the old offset anyway, so a size check detects it.
    thread::sleep(Duration::from_secs(1));
    let after = audit_events(1000..1300);
    w.write_lines(&after);
    let expected = [before, after].concat();
    expect_all(&tailer, &mut fwd, &expected, "after copytruncate");
    thread::sleep(Duration::from_millis(300));
    assert_delivered(&expected, &tailer.records(), false);
    stderr_shows(&fwd, &["truncat"], &[], "the truncation");
    fwd.term_ok();
}

// 7 ------------------------------------------------------------------------------------------

#[test]
fn t07_sigkill_at_random_moments_under_load() {
    let dir = TempDir::new("t07");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let tailer = Tailer::start(port);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &[]));
    let mut rng = Rng::for_test("t07");

    let writer = thread::spawn(move || {
        let mut written = Vec::new();
        for b in 0..80u64 {
            let lines = audit_events(b * 100..b * 100 + 100);
            w.write_lines(&lines);
            written.extend(lines);
            thread::sleep(Duration::from_millis(50));
        }
        written
    });
    for _ in 0..4 {
        thread::sleep(Duration::from_millis(rng.range(400, 1200)));
        fwd.kill9();
        thread::sleep(Duration::from_millis(rng.range(0, 400)));
        fwd.restart();
    }
    let expected = writer.join().expect("writer thread");
    expect_all(&tailer, &mut fwd, &expected, "after SIGKILLs");
    assert_delivered(&expected, &tailer.records(), true);
    fwd.term_ok();
}

// 8 ------------------------------------------------------------------------------------------

#[test]
fn t08_receiver_absent_at_start() {
    let dir = TempDir::new("t08");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &["--backoff-timer", "1s"]));
    let lines = audit_events(0..2000);
    w.write_lines(&lines);
    thread::sleep(Duration::from_secs(2));
    assert!(
        fwd.is_running(),
        "forwarder exited while the receiver was absent: {:?}",
        fwd.exit_status()
    );
    let tailer = Tailer::start(port);
    expect_all(&tailer, &mut fwd, &lines, "after the receiver appeared");
    thread::sleep(Duration::from_millis(300));
    assert_delivered(&lines, &tailer.records(), false);
    fwd.term_ok();
}

// 9 ------------------------------------------------------------------------------------------

#[test]
fn t09_receiver_killed_and_restarted_mid_stream() {
    let dir = TempDir::new("t09");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let mut tailer = Tailer::start(port);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &["--backoff-timer", "1s"]));

    let writer = thread::spawn(move || {
        let mut written = Vec::new();
        for b in 0..30u64 {
            let lines = audit_events(b * 200..b * 200 + 200);
            w.write_lines(&lines);
            written.extend(lines);
            thread::sleep(Duration::from_millis(100));
        }
        written
    });
    assert!(
        tailer.wait_for(1000, DELIVERY),
        "fewer than 1000 records before the receiver kill"
    );
    tailer.kill();
    thread::sleep(Duration::from_millis(500));
    tailer.restart();
    let expected = writer.join().expect("writer thread");
    expect_all(&tailer, &mut fwd, &expected, "after the receiver restart");
    assert_delivered(&expected, &tailer.records(), true);
    fwd.term_ok();
}

// 10 -----------------------------------------------------------------------------------------

#[test]
fn t10_receiver_that_never_acks() {
    let dir = TempDir::new("t10");
    let mut w = AuditWriter::create(dir.path());
    let lines = audit_events(0..1000);
    w.write_lines(&lines);
    let port = free_port();
    let mut fake = FakeReceiver::start(port, FakeMode::Discard, None);
    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &["--ack-timeout", "1s", "--backoff-timer", "1s"],
    ));
    let start = Instant::now();
    let reconnected = wait_until(Duration::from_secs(20), || {
        fwd.exited() || (fake.connections() >= 2 && start.elapsed() >= Duration::from_secs(2))
    });
    fwd.assert_alive("never-acking receiver");
    assert!(
        fake.frames() >= 1,
        "the forwarder sent no complete frame: {}",
        fake.summary()
    );
    assert!(
        reconnected,
        "the forwarder did not reconnect after the ack timeout: {}",
        fake.summary()
    );
    assert!(
        fake.errors().is_empty(),
        "protocol errors: {}",
        fake.summary()
    );
    fake.stop();

    let tailer = Tailer::start(port);
    expect_all(
        &tailer,
        &mut fwd,
        &lines,
        "after swapping in the real receiver",
    );
    // A 1 s ack timeout on a loaded machine may legitimately resend: at least once.
    assert_delivered(&lines, &tailer.records(), true);
    stderr_shows(
        &fwd,
        &["ack"],
        &["timeout", "timed out", "time out"],
        "the ack timeout",
    );
    fwd.term_ok();
}

// 11 -----------------------------------------------------------------------------------------

#[test]
fn t11_wrong_ack_makes_the_forwarder_disconnect() {
    let dir = TempDir::new("t11");
    let mut w = AuditWriter::create(dir.path());
    let lines = audit_events(0..1000);
    w.write_lines(&lines);
    let port = free_port();
    let mut fake = FakeReceiver::start(port, FakeMode::WrongAck, None);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &["--backoff-timer", "1s"]));
    let closed = wait_until(Duration::from_secs(20), || {
        fwd.exited() || fake.closed_after_wrong_ack() >= 1
    });
    fwd.assert_alive("wrong ack");
    assert!(
        closed,
        "the forwarder kept the connection after a wrong ack: {}",
        fake.summary()
    );
    assert!(
        fake.errors().is_empty(),
        "protocol errors: {}",
        fake.summary()
    );
    fake.stop();

    let tailer = Tailer::start(port);
    expect_all(
        &tailer,
        &mut fwd,
        &lines,
        "after swapping in the real receiver",
    );
    thread::sleep(Duration::from_millis(300));
    assert_delivered(&lines, &tailer.records(), false);
    stderr_shows(
        &fwd,
        &["ack"],
        &[
            "wrong",
            "mismatch",
            "unexpected",
            "invalid",
            "unknown",
            "not match",
            "bad",
        ],
        "the wrong ack",
    );
    fwd.term_ok();
}

// 12 -----------------------------------------------------------------------------------------

#[test]
fn t12_malformed_empty_non_utf8_long_and_unterminated_lines() {
    let dir = TempDir::new("t12");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let tailer = Tailer::start(port);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &["--max-line-size", "4K"]));

    let log = |s: &str| json!({ "log": s }).to_string();
    let mut expected: Vec<String> = Vec::new();

    let e0 = audit_event(0);
    w.write_line(&e0);
    expected.push(e0);

    w.write_raw(b"this is not json {\n");
    expected.push(log("this is not json {"));

    w.write_raw(b"\n");

    let e1 = audit_event(1);
    w.write_line(&e1);
    expected.push(e1);

    w.write_raw(b"\xff\xfe bad\n");
    expected.push(log("\u{FFFD}\u{FFFD} bad"));

    w.write_raw(b"\n\n");

    let legacy = r#"2017-08-10T10:20:30.123456789Z AUDIT: id="5c8e4a5f-9b0e-4c6f-8d8b-1f2e3d4c5b6a" stage="ResponseComplete" ip="10.0.0.1" method="list" user="admin" groups="\"system:masters\",\"system:authenticated\"" as="<self>" asgroups="<lookup>" namespace="kube-system" uri="/api/v1/namespaces/kube-system/pods?limit=500&watch=false" response="200""#;
    w.write_line(legacy);
    expected.push(log(legacy));

    w.write_raw(b"[1,2,3]\n");
    expected.push(log("[1,2,3]"));

    // 10 KB of valid JSON, above --max-line-size 4K: skipped with a warning naming the offset.
    let long_offset = w.offset;
    let long = format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"{AUDIT_ID_PREFIX}{:012}","pad":"{}"}}"#,
        999_999,
        "x".repeat(10_000)
    );
    w.write_line(&long);

    let e2 = audit_event(2);
    w.write_line(&e2);
    expected.push(e2);

    // Real event shapes (up to 3.3 KB, the odd `{"kind": 0}`, a torn event kept as text).
    let mut torn_samples = 0;
    for s in sample_lines() {
        w.write_line(&s);
        if serde_json::from_str::<Value>(&s).is_ok_and(|v| v.is_object()) {
            expected.push(s);
        } else {
            expected.push(log(&s));
            torn_samples += 1;
        }
    }

    // The last line without its newline: held back until the newline comes.
    let e3 = audit_event(3);
    w.write_raw(e3.as_bytes());
    let held = expected.clone();
    expect_all(
        &tailer,
        &mut fwd,
        &held,
        "lines before the unterminated one",
    );
    thread::sleep(Duration::from_secs(1));
    let now = tailer.records();
    assert_delivered(&held, &now, false);
    w.write_raw(b"\n");
    expected.push(e3);
    expect_all(
        &tailer,
        &mut fwd,
        &expected,
        "the line completed by its late newline",
    );
    thread::sleep(Duration::from_millis(300));
    assert_delivered(&expected, &tailer.records(), false);

    let text = fwd.stderr_text();
    let warned = lines_mentioning(&text, &["audit.log"], &[])
        .into_iter()
        .any(|l| has_number(l, long_offset));
    assert!(
        warned,
        "no stderr line names audit.log and offset {long_offset} of the over-long line; stderr:\n{text}"
    );
    fwd.term_ok();
    let last = last_stats(&fwd);
    assert_eq!(last["skipped_long"], 1, "final stats: {last:?}");
    assert_eq!(
        last["malformed"],
        4 + torn_samples,
        "final stats (garbage, non-UTF-8, legacy, array, torn samples): {last:?}"
    );
}

// 13 -----------------------------------------------------------------------------------------

#[test]
fn t13_slow_receiver_and_memory_cap() {
    let dir = TempDir::new("t13");
    let mut w = AuditWriter::create(dir.path());
    let mut lines = Vec::new();
    let mut bytes = 0usize;
    let mut seq = 0u64;
    while bytes < 20_000_000 {
        let l = audit_event(seq);
        seq += 1;
        bytes += l.len() + 1;
        w.write_line(&l);
        lines.push(l);
    }
    let limit = mega_from_help(2);
    let port = free_port();
    // Reads 200 KB/s and acks every frame: the forwarder has 20 MB to send and 2M to hold.
    let mut fake = FakeReceiver::start(port, FakeMode::Ack, Some(200_000));
    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &[
            "--mem-buf-limit",
            "2M",
            "--max-line-size",
            "64K",
            "--stats-interval",
            "200ms",
        ],
    ));
    let start = Instant::now();
    let slow_phase = wait_until(Duration::from_secs(20), || {
        fwd.exited() || (start.elapsed() >= Duration::from_secs(3) && !fake.records().is_empty())
    });
    fwd.assert_alive("slow receiver");
    assert!(
        slow_phase,
        "the slow receiver got no complete chunk: {}",
        fake.summary()
    );
    fake.stop();
    assert!(
        fake.errors().is_empty(),
        "protocol errors: {}",
        fake.summary()
    );
    let from_fake = fake.records();

    let tailer = Tailer::start(port);
    let mut cov = Coverage::new(&lines);
    cov.feed_all(&from_fake);
    if !tailer.wait_all(&mut cov, DELIVERY) {
        fwd.assert_alive("after the slow phase");
        let all: Vec<Value> = from_fake.iter().cloned().chain(tailer.records()).collect();
        assert_delivered(&lines, &all, true);
        panic!("not everything arrived");
    }
    let all: Vec<Value> = from_fake.into_iter().chain(tailer.records()).collect();
    assert_delivered(&lines, &all, true);
    fwd.term_ok();

    let stats = fwd.stats();
    assert!(
        stats.len() >= 5,
        "want a stats line every 200 ms (and at shutdown), got {}",
        stats.len()
    );
    let mut max_peak = 0;
    for (i, s) in stats.iter().enumerate() {
        let peak = *s
            .get("buffered_peak")
            .unwrap_or_else(|| panic!("stats line {i} lacks buffered_peak: {s:?}"));
        let buffered = *s
            .get("buffered")
            .unwrap_or_else(|| panic!("stats line {i} lacks buffered: {s:?}"));
        assert!(
            peak <= limit && buffered <= limit,
            "stats line {i}: buffered={buffered} buffered_peak={peak} above --mem-buf-limit 2M \
             (= {limit} bytes as judged from --help)"
        );
        max_peak = max_peak.max(peak);
    }
    assert!(
        max_peak > 0,
        "buffered_peak stayed 0 while 20 MB went through: {stats:?}"
    );
}

// 14 -----------------------------------------------------------------------------------------

#[test]
fn t14_log_dir_and_file_created_after_start() {
    let dir = TempDir::new("t14");
    let log_dir = dir.join("auditlog");
    let port = free_port();
    let tailer = Tailer::start(port);
    let mut fwd = Forwarder::start(fwd_args(&log_dir.join("audit.log"), port, &[]));
    thread::sleep(Duration::from_secs(1));
    assert!(
        fwd.is_running(),
        "forwarder exited instead of waiting for the missing log: {:?}",
        fwd.exit_status()
    );
    let mut w = AuditWriter::create(&log_dir);
    let lines = audit_events(0..500);
    w.write_lines(&lines);
    expect_all(&tailer, &mut fwd, &lines, "after the log appeared");
    thread::sleep(Duration::from_millis(300));
    assert_delivered(&lines, &tailer.records(), false);
    fwd.term_ok();
}

// 15 -----------------------------------------------------------------------------------------

const PY_DECODE: &str = r#"
import json, sys, msgpack
data = open(sys.argv[1], 'rb').read()
msg = msgpack.unpackb(data, raw=False, strict_map_key=False)
out = {'top_type': type(msg).__name__, 'top_len': len(msg)}
tag, entries, option = msg
out['tag'] = tag
out['tag_type'] = type(tag).__name__
out['entries_type'] = type(entries).__name__
out['option_types'] = {str(k): type(v).__name__ for k, v in option.items()}
out['option'] = {str(k): (v if isinstance(v, (str, int)) else repr(v)) for k, v in option.items()}
times, records = [], []
if isinstance(entries, bytes):
    u = msgpack.Unpacker(raw=False, strict_map_key=False)
    u.feed(entries)
    for t, rec in u:
        if isinstance(t, msgpack.ExtType):
            times.append({'ext': t.code, 'len': len(t.data),
                          'sec': int.from_bytes(t.data[:4], 'big'),
                          'nsec': int.from_bytes(t.data[4:8], 'big')})
        else:
            times.append({'other': repr(t)})
        records.append(rec)
out['times'] = times
out['records'] = records
print(json.dumps(out, default=lambda o: {'__not_json__': repr(o)}))
"#;

#[test]
fn t15_first_frame_decodes_with_python_msgpack() {
    let dir = TempDir::new("t15");
    let mut w = AuditWriter::create(dir.path());
    let lines = audit_events(0..300);
    w.write_lines(&lines);
    let port = free_port();
    let mut fake = FakeReceiver::start(port, FakeMode::Ack, None);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &[]));
    let mut cov = Coverage::new(&lines);
    let all = wait_until(DELIVERY, || {
        cov.feed_all(&fake.records());
        fwd.exited() || cov.is_complete()
    });
    fwd.assert_alive("acking fake receiver");
    assert!(all, "not all records acked by the fake: {}", fake.summary());
    assert!(
        fake.errors().is_empty(),
        "protocol errors: {}",
        fake.summary()
    );
    assert_delivered(&lines, &fake.records(), false);
    fwd.term_ok();
    fake.stop();

    let frame = fake.first_frame().expect("a captured frame");
    let frame_path = dir.join("frame.bin");
    fs::write(&frame_path, &frame).expect("write frame.bin");
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(PY_DECODE)
        .arg(&frame_path)
        .output()
        .expect("run /usr/bin/python3");
    assert!(
        out.status.success(),
        "python msgpack could not decode the first frame ({} bytes): {}",
        frame.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    let d: Value = serde_json::from_slice(&out.stdout).expect("python printed JSON");
    assert_eq!(d["top_type"], "list", "{d}");
    assert_eq!(
        d["top_len"], 3,
        "PackedForward is [tag, entries, option]: {d}"
    );
    assert_eq!(d["tag"], "audit", "tag");
    assert_eq!(d["tag_type"], "str", "tag type");
    assert_eq!(d["entries_type"], "bytes", "entries must be msgpack bin");
    assert_eq!(
        d["option_types"]["chunk"], "str",
        "chunk must be a str: {}",
        d["option"]
    );
    assert!(
        d["option"]["chunk"].as_str().is_some_and(|c| !c.is_empty()),
        "chunk: {}",
        d["option"]
    );
    let records = d["records"].as_array().expect("records array");
    let times = d["times"].as_array().expect("times array");
    assert!(!records.is_empty(), "the first frame has no entries");
    assert_eq!(d["option"]["size"], json!(records.len()), "size == entries");
    for (i, (rec, t)) in records.iter().zip(times).enumerate() {
        let want: Value = serde_json::from_str(&lines[i]).expect("source line");
        assert_eq!(rec, &want, "record {i} differs from source line {i}");
        let stage = want["stageTimestamp"].as_str().expect("stageTimestamp");
        let (sec, nsec) = parse_rfc3339(stage).expect("parse stageTimestamp");
        assert_eq!(
            t,
            &json!({"ext": 0, "len": 8, "sec": sec, "nsec": nsec}),
            "entry {i}: EventTime must equal stageTimestamp {stage}"
        );
    }
}

// Harness self-checks (no binary needed) -----------------------------------------------------

#[test]
fn harness_generated_events_are_realistic_unique_and_deterministic() {
    let mut sizes = (usize::MAX, 0usize);
    let mut with_request_object = 0;
    let mut ids = std::collections::HashSet::new();
    for seq in 0..3000 {
        let l = audit_event(seq);
        assert_eq!(l, audit_event(seq), "deterministic");
        sizes = (sizes.0.min(l.len()), sizes.1.max(l.len()));
        assert!(!l.contains('\n'), "one line");
        let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("seq {seq}: {e}: {l}"));
        assert_eq!(seq_of(&v), Some(seq));
        assert_eq!(
            v["annotations"]["test.audit-forwarder/seq"],
            seq.to_string()
        );
        assert_eq!(v["apiVersion"], "audit.k8s.io/v1");
        for k in ["requestReceivedTimestamp", "stageTimestamp"] {
            let ts = v[k].as_str().expect("timestamp");
            assert!(ts.len() == 27 && ts.ends_with('Z'), "{k}: {ts}");
            let (s, n) = parse_rfc3339(ts).expect("parse");
            assert_eq!(rfc3339_micros(s * 1_000_000 + (n / 1000) as i64), ts);
        }
        if v.get("requestObject").is_some() {
            with_request_object += 1;
        }
        assert!(ids.insert(v["auditID"].to_string()));
    }
    assert!(sizes.0 >= 300 && sizes.1 <= 2000, "sizes {sizes:?}");
    eprintln!("generated sizes {sizes:?}");
    assert!(
        with_request_object > 500,
        "{with_request_object} with requestObject"
    );
    let joined: String = (0..50).map(audit_event).collect();
    for esc in ["\\u003c", "\\u003e", "\\u0026"] {
        assert!(joined.contains(esc), "Go escape {esc} appears");
    }
    assert_eq!(
        parse_rfc3339("2025-07-16T10:12:56Z"),
        Some((1_752_660_776, 0))
    );
    assert_eq!(
        parse_rfc3339("2025-07-16T10:12:56.525137Z"),
        Some((1_752_660_776, 525_137_000))
    );
    assert_eq!(
        lumberjack_stamp(1_752_660_776_007),
        "2025-07-16T10-12-56.007"
    );
}

#[test]
fn harness_assert_delivered_reports_each_problem() {
    let lines = audit_events(0..5);
    let v: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cases: Vec<(&str, Vec<Value>, bool, Option<&str>)> = vec![
        ("exact", v.clone(), false, None),
        (
            "dups allowed",
            [v.clone(), v[2..].to_vec()].concat(),
            true,
            None,
        ),
        (
            "dup refused",
            [v.clone(), v[4..].to_vec()].concat(),
            false,
            Some("DUPLICATED 1"),
        ),
        (
            "missing",
            [&v[..2], &v[3..]].concat(),
            false,
            Some("MISSING 1 of 5"),
        ),
        (
            "order",
            vec![
                v[0].clone(),
                v[2].clone(),
                v[1].clone(),
                v[3].clone(),
                v[4].clone(),
            ],
            true,
            Some("OUT OF ORDER"),
        ),
        (
            "unexpected",
            [v.clone(), vec![json!({"log": "x"})]].concat(),
            true,
            Some("UNEXPECTED 1"),
        ),
    ];
    for (name, records, dups, want) in cases {
        let r = std::panic::catch_unwind(|| assert_delivered(&lines, &records, dups));
        match (r, want) {
            (Ok(()), None) => {}
            (Err(e), Some(w)) => {
                let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
                assert!(msg.contains(w), "{name}: report {msg:?} lacks {w:?}");
            }
            (Ok(()), Some(w)) => panic!("{name}: accepted, want {w}"),
            (Err(_), None) => panic!("{name}: rejected a correct delivery"),
        }
    }
}

#[test]
fn harness_msgpack_reader_and_frame_parser() {
    // (bytes, decoded) pairs from the msgpack spec.
    let cases: Vec<(&[u8], Mp)> = vec![
        (&[0x05], Mp::Int(5)),
        (&[0xff], Mp::Int(-1)),
        (&[0xcd, 0x01, 0x00], Mp::Int(256)),
        (
            &[0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe],
            Mp::Int(-2),
        ),
        (&[0xa2, b'h', b'i'], Mp::Str(b"hi".to_vec())),
        (&[0xc4, 0x01, 0x07], Mp::Bin(vec![7])),
        (
            &[0x92, 0xc0, 0xc3],
            Mp::Array(vec![Mp::Nil, Mp::Bool(true)]),
        ),
        (
            &[0xd7, 0x00, 0, 0, 0, 1, 0, 0, 0, 2],
            Mp::Ext(0, vec![0, 0, 0, 1, 0, 0, 0, 2]),
        ),
        (&[0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0], Mp::Float(1.5)),
    ];
    for (bytes, want) in &cases {
        let (got, used) = mp_decode(bytes).unwrap().unwrap();
        assert_eq!((&got, used), (want, bytes.len()), "{bytes:02x?}");
        for cut in 0..bytes.len() {
            assert!(
                mp_decode(&bytes[..cut]).unwrap().is_none(),
                "{bytes:02x?} cut at {cut}"
            );
        }
    }
    assert!(mp_decode(&[0xc1]).is_err());

    // A frame built by hand: ["audit", bin([[EventTime, {"a":"b"}]]), {"chunk":"c1","size":1}].
    let entry = [
        0x92, 0xd7, 0x00, 0x68, 0x77, 0x7b, 0x28, 0x1f, 0x4d, 0x1d, 0x40, 0x81, 0xa1, b'a', 0xa1,
        b'b',
    ];
    let mut f = vec![
        0x93,
        0xa5,
        b'a',
        b'u',
        b'd',
        b'i',
        b't',
        0xc4,
        entry.len() as u8,
    ];
    f.extend_from_slice(&entry);
    f.extend_from_slice(&[0x82, 0xa5, b'c', b'h', b'u', b'n', b'k', 0xa2, b'c', b'1']);
    f.extend_from_slice(&[0xa4, b's', b'i', b'z', b'e', 0x01]);
    let (m, used) = mp_decode(&f).unwrap().unwrap();
    assert_eq!(used, f.len());
    let fr = parse_frame(&m).unwrap();
    assert_eq!(fr.tag, "audit");
    assert_eq!(fr.chunk, b"c1");
    assert_eq!(fr.records, vec![json!({"a": "b"})]);
    assert_eq!(event_time(&fr.times[0]), Some((0x6877_7b28, 0x1f4d_1d40)));
    assert_eq!(
        encode_ack(b"c1"),
        [0x81, 0xa3, b'a', b'c', b'k', 0xa2, b'c', b'1']
    );
    assert_eq!(encode_ack(&[b'x'; 40])[5..7], [0xd9, 40]);
    let (wa, _) = mp_decode(&WRONG_ACK).unwrap().unwrap();
    assert_eq!(
        wa,
        Mp::Map(vec![(Mp::Str(b"ack".to_vec()), Mp::Str(b"wrong".to_vec()))])
    );
}

#[test]
fn harness_writer_rotates_like_lumberjack() {
    let dir = TempDir::new("harness-writer");
    let mut w = AuditWriter::create(dir.path());
    let mut names = Vec::new();
    for i in 0..5u64 {
        w.write_line(&audit_event(i));
        names.push(w.rotate(i >= 2, 3));
    }
    let backups = w.backups();
    let shown: Vec<String> = backups
        .iter()
        .map(|b| b.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(backups.len(), 3, "{shown:?}");
    assert!(shown.iter().all(|n| n.ends_with(".log.gz")), "{shown:?}");
    for (i, b) in backups.iter().enumerate() {
        let seq = i as u64 + 2;
        assert_eq!(
            gunzip_file(b),
            format!("{}\n", audit_event(seq)).into_bytes()
        );
        assert!(b
            .to_string_lossy()
            .starts_with(&*names[seq as usize].to_string_lossy()));
    }
    // audit-2006-01-02T15-04-05.000.log.gz
    assert!(
        shown
            .iter()
            .all(|n| n.len() == 36 && n.as_bytes()[16] == b'T'),
        "{shown:?}"
    );
    let meta = fs::metadata(w.log_path()).unwrap();
    assert_eq!(meta.len(), 0);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    w.write_line("one");
    w.copytruncate(&dir.join("audit.log.1"));
    w.write_line("two");
    assert_eq!(fs::read(w.log_path()).unwrap(), b"two\n");
    assert_eq!(fs::read(dir.join("audit.log.1")).unwrap(), b"one\n");
}

#[test]
fn harness_port_listening_reads_proc_net_tcp() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    assert!(port_listening(port));
    drop(l);
    // Other tests run in parallel and may take the freed port at once, so the negative case
    // uses a port nothing on this machine listens on (tcpmux).
    assert!(!port_listening(1));
}

// 16 -----------------------------------------------------------------------------------------

/// The file the position names is rotated and its backup deleted while the forwarder is down:
/// the lines it held past the position are gone, and the forwarder must say so (which file,
/// which offset) instead of silently skipping them, then deliver what still exists.
#[test]
fn t16_positioned_file_gone_while_stopped_is_reported_not_skipped_silently() {
    let dir = TempDir::new("t16");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let tailer = Tailer::start(port);
    let a = audit_events(0..2000);
    w.write_lines(&a);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &[]));
    expect_all(&tailer, &mut fwd, &a, "before the stop");
    fwd.term_ok();
    let position = std::fs::read_to_string(dir.join(".audit-forwarder.pos")).unwrap();
    let offset = position
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("offset="))
        .expect("offset in the position file")
        .to_string();

    let lost = audit_events(2000..2100);
    w.write_lines(&lost);
    let backup = w.rotate_file();
    std::fs::remove_file(&backup).unwrap();
    let b = audit_events(2100..2600);
    w.write_lines(&b);

    fwd.restart();
    assert!(
        fwd.wait_log("lost", DELIVERY),
        "no error about the lost data; stderr:\n{}",
        fwd.stderr_text()
    );
    let line = fwd
        .stderr_text()
        .lines()
        .find(|l| l.contains("lost"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("ERROR")
            && line.contains("audit.log")
            && line.contains(&format!("offset {offset}")),
        "the error must name the file and the offset {offset}: {line}"
    );
    let expected: Vec<String> = [a, b].concat();
    expect_all(&tailer, &mut fwd, &expected, "after restart");
    thread::sleep(Duration::from_millis(300));
    assert_delivered(&expected, &tailer.records(), false);
    fwd.term_ok();
}

// 17 -----------------------------------------------------------------------------------------

/// Open descriptors of `pid` that point at deleted files in `dir`.
fn deleted_files_held(pid: i32, dir: &std::path::Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| fs::read_link(e.path()).ok())
                .map(|t| t.display().to_string())
                .filter(|t| t.starts_with(&prefix) && t.ends_with("(deleted)"))
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 7: a file that cannot be opened when it appears (here EMFILE) used to be skipped for
/// good after one warning; it must be retried until it opens, losing nothing.
#[test]
fn t17_file_that_cannot_be_opened_is_retried_not_skipped() {
    let dir = TempDir::new("t17");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let a = audit_events(0..300);
    w.write_lines(&a);
    // No receiver yet: nothing is acked, so every file stays needed.
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &["--backoff-timer", "300ms"]));
    assert!(
        fwd.wait_log("following", DELIVERY),
        "forwarder did not start"
    );
    thread::sleep(Duration::from_millis(300));
    // Descriptors 0-2 are taken, so every new open, socket and pipe fails with EMFILE (the
    // ones already open stay usable).
    set_nofile(fwd.pid(), 3);
    let b = audit_events(300..600);
    w.write_lines(&b);
    w.rotate_file();
    let c = audit_events(600..900);
    w.write_lines(&c);
    w.rotate_file();
    let d = audit_events(900..1000);
    w.write_lines(&d);
    assert!(
        fwd.wait_log("Too many open files", DELIVERY),
        "the opens did not fail; stderr:\n{}",
        fwd.stderr_text()
    );
    thread::sleep(Duration::from_millis(1500));
    set_nofile(fwd.pid(), 1024);
    let tailer = Tailer::start(port);
    let expected: Vec<String> = [a, b, c, d].concat();
    expect_all(
        &tailer,
        &mut fwd,
        &expected,
        "after the descriptors came back",
    );
    // Listing the directory needs a descriptor too, so that is what fails first.
    stderr_shows(
        &fwd,
        &["too many open files", "retrying"],
        &["cannot open", "cannot list"],
        "the failed open",
    );
    fwd.term_ok();
}

// 18 -----------------------------------------------------------------------------------------

/// Issue 7: while the receiver is unreachable, deleted backups used to stay open without bound
/// (the node's disk filled behind `--audit-log-maxbackup`). `--max-held-bytes` bounds them: the
/// oldest is released with an ERROR naming it and the bytes never delivered, and delivery goes
/// on with the rest.
#[test]
fn t18_held_deleted_backups_are_bounded_by_max_held_bytes() {
    let dir = TempDir::new("t18");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    // A small memory limit so reading stops early and most of each file stays unread.
    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &[
            "--max-line-size",
            "64K",
            "--mem-buf-limit",
            "1300K",
            "--max-held-bytes",
            "1M",
            "--backoff-timer",
            "300ms",
        ],
    ));
    let a = audit_events(0..2000);
    w.write_lines(&a);
    thread::sleep(Duration::from_millis(500));
    let mut rotated = Vec::new();
    for k in 0..4u64 {
        rotated.push(w.rotate_file());
        w.write_lines(&audit_events(2000 + k * 2000..4000 + k * 2000));
        thread::sleep(Duration::from_millis(300));
    }
    let last = audit_events(10_000..10_100);
    w.write_lines(&last);
    thread::sleep(Duration::from_millis(500));
    // lumberjack's maxbackup: the backups go while we cannot deliver them.
    for r in &rotated {
        fs::remove_file(r).unwrap();
    }
    assert!(
        fwd.wait_log("--max-held-bytes", DELIVERY),
        "no error about releasing held files; stderr:\n{}",
        fwd.stderr_text()
    );
    thread::sleep(Duration::from_millis(500));
    let held = deleted_files_held(fwd.pid(), dir.path());
    assert!(
        held.len() <= 1,
        "deleted files still held beyond --max-held-bytes 1M (each ~2 MB): {held:?}"
    );
    let line = fwd
        .stderr_text()
        .lines()
        .find(|l| l.contains("--max-held-bytes"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("ERROR")
            && line.contains("bytes")
            && line.contains("never")
            && line.contains("releasing audit-"),
        "the error must name the backup (not the name it had when opened) and say how much was \
         never delivered: {line}"
    );
    // The current audit.log is never released: everything in it arrives.
    let tailer = Tailer::start(port);
    let mut cov = Coverage::new(&last);
    assert!(
        tailer.wait_all(&mut cov, DELIVERY),
        "the lines of the current audit.log did not all arrive"
    );
    fwd.term_ok();
}

// 19 -----------------------------------------------------------------------------------------

/// Issue 7: one valid but huge event (a large RequestResponse body) that the receiver cannot
/// take (fluent-bit resets the connection past its Buffer_Max_Size) used to be resent forever,
/// blocking everything behind it. It must be isolated, logged with file, offset and size, kept
/// in the rejected-records file, counted, and delivery must go on.
#[test]
fn t19_record_the_receiver_cannot_take_is_set_aside_not_blocking() {
    let dir = TempDir::new("t19");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let rx = FakeReceiver::start(port, FakeMode::AckUpTo(1 << 20), None);
    let mut lines = audit_events(0..2000);
    // 2 MB of body inside an otherwise normal event.
    let big = lines[1000].replacen(
        "{\"kind\":\"Event\"",
        &format!("{{\"kind\":\"Event\",\"body\":\"{}\"", "b".repeat(2 << 20)),
        1,
    );
    assert_ne!(big, lines[1000], "the generator's events start with kind");
    let big_offset: u64 = lines[..1000].iter().map(|l| l.len() as u64 + 1).sum();
    lines[1000] = big.clone();
    w.write_lines(&lines);
    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &["--backoff-timer", "300ms", "--stats-interval", "1s"],
    ));
    let mut expected = lines.clone();
    expected.remove(1000);
    let deadline = Instant::now() + DELIVERY;
    let mut cov = Coverage::new(&expected);
    while !cov.is_complete() {
        fwd.assert_alive("delivering around the rejected record");
        cov = Coverage::new(&expected);
        cov.feed_all(&rx.records());
        if Instant::now() >= deadline {
            assert_delivered(&expected, &rx.records(), true);
            panic!("not everything arrived; {}", rx.summary());
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        rx.resets() >= 3,
        "the receiver never reset: {}",
        rx.summary()
    );
    // The record is set aside when the ack for the chunks after it comes back, which may be
    // just after the receiver recorded them.
    wait_until(secs(10), || fwd.stderr_text().contains("keeps dropping"));
    let text = fwd.stderr_text();
    let error = text
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("keeps dropping"))
        .unwrap_or_else(|| panic!("no ERROR about the rejected record; stderr:\n{text}"));
    assert!(
        error.contains("audit.log")
            && error.contains(&format!("offset {big_offset}"))
            && error.contains(&format!("{} bytes", big.len() + 1))
            && error.contains("Buffer_Max_Size"),
        "the error must name file, offset {big_offset}, size {} and the likely cause: {error}",
        big.len() + 1
    );
    let kept = fs::read_to_string(dir.join(".audit-forwarder.rejected"))
        .expect("rejected-records file beside the position file");
    let kept: Vec<Value> = kept
        .lines()
        .map(|l| serde_json::from_str(l).expect("rejected record is one JSON line"))
        .collect();
    let want: Value = serde_json::from_str(&big).unwrap();
    assert_eq!(
        kept,
        vec![want],
        "the rejected file must hold exactly the big event"
    );
    fwd.term_ok();
    assert_eq!(
        last_stats(&fwd).get("rejected"),
        Some(&1),
        "stats must count it"
    );
}

// Issue 7, item 7 ----------------------------------------------------------------------------

/// A target given by name goes through the resolver thread of the real binary (`localhost`
/// comes from /etc/hosts; where it also resolves to ::1 first, the next address is tried).
#[test]
fn target_given_by_name_is_resolved_and_delivered_to() {
    let dir = TempDir::new("byname");
    let mut w = AuditWriter::create(dir.path());
    let lines = audit_events(0..500);
    w.write_lines(&lines);
    let port = free_port();
    let tailer = Tailer::start(port);
    let mut args = fwd_args(&w.log_path(), port, &[]);
    let target = args
        .iter()
        .position(|a| a == "--target")
        .expect("fwd_args passes --target");
    args[target + 1] = format!("localhost:{port}");
    let mut fwd = Forwarder::start(args);
    expect_all(&tailer, &mut fwd, &lines, "target given as localhost");
    assert_delivered(&lines, &tailer.records(), false);
    stderr_shows(
        &fwd,
        &["connected to", &format!("localhost:{port}")],
        &[&format!(":{port})")],
        "the connection naming the host and the address",
    );
    fwd.term_ok();
}

// Issue 7, item 8 ----------------------------------------------------------------------------

/// A receiver that stops reading in the middle of a chunk, without closing, is never asked for
/// an ack: the forwarder must time out on write progress, log it naming the receiver, reconnect
/// and deliver everything once the receiver behaves again.
#[test]
fn receiver_that_stops_reading_mid_chunk_is_timed_out() {
    let dir = TempDir::new("stall");
    let mut w = AuditWriter::create(dir.path());
    // 12 MiB records: the first chunk is larger than both sockets' buffers together (a few MiB
    // on loopback), so writing stops halfway through it, where no ack is awaited.
    let big = |seq: u64| {
        let e = audit_event(seq);
        format!("{{\"pad\":\"{}\",{}", "x".repeat(12 << 20), &e[1..])
    };
    let mut lines = vec![big(0)];
    lines.extend(audit_events(1..200));
    lines.push(big(200));
    w.write_lines(&lines);
    let port = free_port();
    let fake = FakeReceiver::start(port, FakeMode::StallFirst, None);
    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &[
            "--ack-timeout",
            "2s",
            "--backoff-timer",
            "1s",
            "--max-line-size",
            "16M",
        ],
    ));
    let reconnected = wait_until(secs(30), || fwd.exited() || fake.connections() >= 2);
    fwd.assert_alive("receiver that stopped reading");
    assert!(
        reconnected,
        "the forwarder never gave up on the receiver that stopped reading: {}",
        fake.summary()
    );
    let all = wait_until(DELIVERY, || {
        fwd.exited() || fake.record_count() >= lines.len()
    });
    fwd.assert_alive("after the reconnect");
    assert!(all, "not everything arrived: {}", fake.summary());
    assert_delivered(&lines, &fake.records(), true);
    stderr_shows(
        &fwd,
        &["timeout", &format!("127.0.0.1:{port}")],
        &["no bytes", "stopped reading", "write"],
        "the write timeout with the receiver's address",
    );
    fwd.term_ok();
}

// Issue 8 ------------------------------------------------------------------------------------

/// Issue 8: while the connection is being set up, lines that arrive fill chunks up to their
/// target (Nagle's rule) instead of each loop pass sealing its own tiny chunk.
#[test]
fn t20_lines_arriving_before_the_receiver_accepts_make_few_large_chunks() {
    let dir = TempDir::new("t20");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &["--backoff-timer", "200ms"]));
    assert!(
        fwd.wait_log("following", DELIVERY),
        "forwarder did not start"
    );
    let lines = audit_events(0..5000);
    // 5,000 lines in 100 bursts over about a second, each waking the forwarder.
    let started = Instant::now();
    for burst in lines.chunks(50) {
        w.write_lines(burst);
        thread::sleep(Duration::from_millis(10));
    }
    if let Some(rest) = Duration::from_secs(1).checked_sub(started.elapsed()) {
        thread::sleep(rest);
    }
    let rx = FakeReceiver::start(port, FakeMode::Ack, None);
    let mut cov = Coverage::new(&lines);
    let deadline = Instant::now() + DELIVERY;
    while !cov.is_complete() {
        fwd.assert_alive("delivering after the late accept");
        assert!(
            Instant::now() < deadline,
            "not everything arrived: {}",
            rx.summary()
        );
        thread::sleep(Duration::from_millis(100));
        cov = Coverage::new(&lines);
        cov.feed_all(&rx.records());
    }
    assert_delivered(&lines, &rx.records(), false);
    // 512 KiB chunks: the ~1 KB events make about 10 full chunks; a few more for the partial
    // ones at the end and when the connection came up.
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let most = bytes / (512 << 10) + 4;
    assert!(
        rx.frames() <= most,
        "{} chunks for {} lines ({bytes} bytes): at most {most} expected; {}",
        rx.frames(),
        lines.len(),
        rx.summary()
    );
    eprintln!(
        "[t20] {} lines, {bytes} bytes in {} chunks",
        lines.len(),
        rx.frames()
    );
    fwd.term_ok();
}

/// Issue 8: a receiver that acks a whole window at once must not leave the forwarder asleep
/// until its next timer with the window empty; it reads on at once.
#[test]
fn t21_acks_that_free_the_whole_window_are_followed_by_data_at_once() {
    let dir = TempDir::new("t21");
    let mut w = AuditWriter::create(dir.path());
    let lines = audit_events(0..20_000);
    w.write_lines(&lines);
    let port = free_port();
    let rx = FakeReceiver::start(port, FakeMode::AckWhenQuiet, None);
    // A small window (about 550 KiB) so that the run is many windows long.
    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &["--max-line-size", "16K", "--mem-buf-limit", "1100K"],
    ));
    let mut cov = Coverage::new(&lines);
    let deadline = Instant::now() + DELIVERY;
    while !cov.is_complete() {
        fwd.assert_alive("delivering in windows");
        assert!(
            Instant::now() < deadline,
            "not everything arrived: {}",
            rx.summary()
        );
        thread::sleep(Duration::from_millis(200));
        cov = Coverage::new(&lines);
        cov.feed_all(&rx.records());
    }
    let gaps = rx.ack_gaps();
    let total: Duration = gaps.iter().sum();
    let worst = gaps.iter().max().copied().unwrap_or_default();
    eprintln!(
        "[t21] {} ack batches, data followed them after {total:?} in all (worst {worst:?})",
        gaps.len()
    );
    assert!(
        gaps.len() >= 20,
        "expected many windows, got {} batches",
        gaps.len()
    );
    // Reading on at the next timer instead costs up to the 200 ms position flush per window,
    // seconds over this run; reading on at once costs milliseconds.
    assert!(
        total < Duration::from_millis(1500),
        "the forwarder waited {total:?} in all (worst {worst:?}) after {} ack batches that freed its window",
        gaps.len()
    );
    fwd.term_ok();
}

/// Issue 11: a position file that cannot be written is said once, with what fixes it, not at
/// every 200 ms flush; delivery goes on, and a fixed directory is picked up without a restart.
#[test]
fn t22_unwritable_position_file_is_said_once_and_picked_up_when_fixed() {
    let dir = TempDir::new("t22");
    let mut w = AuditWriter::create(&dir.join("log"));
    let lines = audit_events(0..300);
    w.write_lines(&lines[..100]);
    let port = free_port();
    let rx = Tailer::start(port);
    // The directory does not exist yet (root ignores permission bits, a missing directory
    // fails for every uid).
    let pos_dir = dir.join("state");
    let pos = pos_dir.join("audit.pos");
    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &["--position-file", pos.to_str().expect("utf-8 path")],
    ));
    assert!(rx.wait_all_lines(&lines[..100], secs(30)), "first lines");
    w.write_lines(&lines[100..200]);
    assert!(rx.wait_all_lines(&lines[..200], secs(30)), "more lines");
    thread::sleep(Duration::from_secs(2));
    let text = fwd.stderr_text();
    let errors = lines_mentioning(&text, &["error", "position file"], &[]);
    assert_eq!(
        errors.len(),
        1,
        "want one ERROR about the position file in over 2 s of flushes, got: {errors:#?}"
    );
    assert!(
        errors[0].contains("runs as uid") && errors[0].contains("state"),
        "the ERROR must name the directory and our uid: {}",
        errors[0]
    );
    fs::create_dir_all(&pos_dir).expect("mkdir");
    w.write_lines(&lines[200..]);
    assert!(rx.wait_all_lines(&lines, secs(30)), "all lines");
    assert!(
        fwd.wait_log("written again after", secs(10)),
        "the recovery is said"
    );
    assert!(
        wait_until(secs(10), || fs::read_to_string(&pos)
            .is_ok_and(|t| !t.is_empty())),
        "the position file is written once the directory exists"
    );
    fwd.term_ok();
}

// 23 -----------------------------------------------------------------------------------------

/// Lines of a quarter to seven tenths of `--max-line-size`, with `--mem-buf-limit` at the least
/// it accepts (2 x the longest line + 1 MiB). Acked buffers kept for the next chunks count
/// against the limit; once they and the partial line filled it, reading stopped for good, since
/// with nothing in flight no ack would ever free them, and nothing was logged.
#[test]
fn t23_large_lines_at_the_least_mem_buf_limit_all_arrive() {
    let dir = TempDir::new("t23");
    let mut w = AuditWriter::create(dir.path());
    let max_line = 1_000_000usize;
    let limit = 2 * max_line + (1 << 20);
    let mut r = Rng::new(23);
    let lines: Vec<String> = (0..120)
        .map(|seq| {
            let pad = r.range(max_line as u64 / 4, max_line as u64 * 7 / 10) as usize;
            let e = audit_event(seq);
            format!("{{\"pad\":\"{}\",{}", "x".repeat(pad), &e[1..])
        })
        .collect();
    let port = free_port();
    let rx = Tailer::start(port);
    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &[
            "--max-line-size",
            &max_line.to_string(),
            "--mem-buf-limit",
            &limit.to_string(),
            "--stats-interval",
            "1s",
        ],
    ));
    w.write_lines(&lines);
    let all = rx.wait_all_lines(&lines, secs(60));
    fwd.assert_alive("at the least --mem-buf-limit");
    assert!(
        all,
        "{} of {} lines arrived; last stats: {:?}",
        rx.line_count(),
        lines.len(),
        fwd.stats().last()
    );
    fwd.term_ok();
    // The line held unterminated is copied into the chunk when a read ends it, so the chunk can
    // grow by a whole near-cap line at once; reading must leave room for that.
    let stats = fwd.stats();
    let peak = stats
        .iter()
        .filter_map(|s| s.get("buffered_peak").copied())
        .max()
        .unwrap_or_else(|| panic!("no stats line with buffered_peak: {stats:?}"));
    assert!(
        peak > max_line as u64 && peak <= limit as u64,
        "buffered_peak {peak} above --mem-buf-limit {limit} (or not even one line: the test \
         proves nothing)"
    );
}

// 24 -----------------------------------------------------------------------------------------

/// audit.log truncated in place (copytruncate) while the forwarder is behind, then written past
/// the forwarder's offset before it reads on: the file never looks shorter than the offset, so
/// only its changed first bytes tell. Every line written after the truncation must arrive, and
/// the WARN must say what could not be read.
#[test]
fn t24_truncated_while_behind_and_rewritten_past_the_offset_loses_no_new_line() {
    let dir = TempDir::new("t24");
    let mut w = AuditWriter::create(dir.path());
    // About 12 MB: more than the 8 MiB window the forwarder reads ahead while unconnected.
    let old = audit_events(0..12_000);
    w.write_lines(&old);
    let port = free_port();
    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &["--stats-interval", "200ms", "--backoff-timer", "300ms"],
    ));
    let ahead = wait_until(secs(20), || {
        fwd.stats()
            .last()
            .and_then(|s| s.get("bytes_read").copied())
            .is_some_and(|n| n >= 4_000_000)
    });
    assert!(
        ahead,
        "the forwarder did not read ahead: {:?}",
        fwd.stats().last()
    );
    let offset = fwd
        .stats()
        .last()
        .and_then(|s| s.get("bytes_read").copied());
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(w.log_path())
        .expect("truncate audit.log");
    let new = audit_events(100_000..120_000);
    w.write_lines(&new);
    let rx = Tailer::start(port);
    let all_new = rx.wait_all_lines(&new, DELIVERY);
    fwd.assert_alive("after the truncation");
    assert!(
        all_new,
        "lines written after the truncation are missing (the forwarder had read {offset:?} bytes); last stats: {:?}",
        fwd.stats().last()
    );
    let text = fwd.stderr_text();
    let warned = lines_mentioning(&text, &["audit.log", "truncated and written again"], &[]);
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(warned[0].contains("WARN"), "{}", warned[0]);
    fwd.term_ok();
}

// 25 -----------------------------------------------------------------------------------------

/// A receiver that resets three connections in a row, each right after the lone large record the
/// forwarder sent first on it, then takes everything: three drops and a probe that worked (the
/// chunks after the record were taken) looked like a record the receiver cannot take, and it was
/// set aside. It is sent once more on a fresh connection first, and arrives.
#[test]
fn t25_a_receiver_restarting_at_the_wrong_moments_gets_its_large_record() {
    let dir = TempDir::new("t25");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let rx = FakeReceiver::start(port, FakeMode::ResetFirst(3), None);
    let big = audit_event(0).replacen(
        "{\"kind\":\"Event\"",
        &format!("{{\"kind\":\"Event\",\"body\":\"{}\"", "b".repeat(400_000)),
        1,
    );
    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &["--backoff-timer", "300ms", "--stats-interval", "1s"],
    ));
    // Alone in its chunk, sent first on every connection, and larger than the chunk of the
    // lines after it (a record no larger than one the receiver took is never suspected).
    w.write_line(&big);
    assert!(
        wait_until(secs(20), || rx.resets() >= 1),
        "the receiver never reset: {}",
        rx.summary()
    );
    let rest = audit_events(1..200);
    w.write_lines(&rest);
    let mut lines = vec![big];
    lines.extend(rest);
    let deadline = Instant::now() + DELIVERY;
    loop {
        fwd.assert_alive("while the receiver resets");
        let mut cov = Coverage::new(&lines);
        cov.feed_all(&rx.records());
        if cov.is_complete() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not everything arrived; {}; stderr:\n{}",
            rx.summary(),
            fwd.stderr_text()
        );
        thread::sleep(Duration::from_millis(200));
    }
    // Not `assert_delivered`: the probe sent the chunks after the record first, so the record
    // arrives after them; order is given up for that one record, in this fault only.
    assert!(rx.resets() >= 3, "{}", rx.summary());
    let text = fwd.stderr_text();
    assert!(
        !text.contains("keeps dropping"),
        "a record the receiver takes was set aside:\n{text}"
    );
    assert!(
        !dir.join(".audit-forwarder.rejected").exists(),
        "nothing may be in the rejected file"
    );
    fwd.term_ok();
}

// 26 -----------------------------------------------------------------------------------------

/// The position file is written (two fsyncs) every 200 ms; on a busy disk one fsync took up to
/// 256 ms, and written on the event loop it stalled reading, sending and acks alike (delivery
/// p99 went from under 1 ms to 220 ms). Here its writes block for as long as the test likes: a
/// FIFO sits where the temp file goes, so opening it waits for a reader. Lines must keep
/// arriving meanwhile, and the file must catch up once writing works again.
#[test]
fn t26_a_position_write_that_blocks_does_not_stall_delivery() {
    let dir = TempDir::new("t26");
    let mut w = AuditWriter::create(dir.path());
    let lines = audit_events(0..300);
    w.write_lines(&lines[..100]);
    let port = free_port();
    let rx = Tailer::start(port);
    let pos = dir.join("audit.pos");
    let args = fwd_args(
        &w.log_path(),
        port,
        &["--position-file", pos.to_str().expect("utf-8 path")],
    );
    let mut fwd = Forwarder::start(args.clone());
    assert!(rx.wait_all_lines(&lines[..100], secs(30)), "first lines");
    fwd.term_ok();
    let saved = fs::read_to_string(&pos).expect("position after the first run");

    let tmp = dir.join("audit.pos.tmp");
    mkfifo(&tmp);
    let mut fwd = Forwarder::start(args);
    w.write_lines(&lines[100..200]);
    assert!(
        rx.wait_all_lines(&lines[..200], secs(30)),
        "lines after the restart"
    );
    // Past a flush of the acked position, whose write now waits on the FIFO.
    thread::sleep(Duration::from_millis(1000));
    w.write_lines(&lines[200..]);
    assert!(
        rx.wait_all_lines(&lines, secs(30)),
        "lines written while the position write blocks; stderr:\n{}",
        fwd.stderr_text()
    );
    assert_eq!(
        fs::read_to_string(&pos).expect("position"),
        saved,
        "the position file changed, so its write did not block and this test proves nothing"
    );

    // A reader lets the blocked write go on (a FIFO cannot be fsynced, so that one fails and
    // is logged); with the FIFO gone the next write succeeds.
    let reader = open_fifo(&tmp);
    assert!(
        fwd.wait_log("writing position file", secs(10)),
        "the failed write is logged"
    );
    fs::remove_file(&tmp).expect("remove the FIFO");
    drop(reader);
    assert!(
        fwd.wait_log("written again after", secs(10)),
        "the recovery is said; stderr:\n{}",
        fwd.stderr_text()
    );
    fwd.term_ok();
    let text = assert_saved_at_end(&pos, &w.log_path());
    assert_delivered(&lines, &rx.records(), false);

    // A stop while the write still blocks waits a bounded time for it, then says so.
    mkfifo(&tmp);
    let more = audit_events(300..310);
    let mut args = fwd_args(
        &w.log_path(),
        port,
        &["--position-file", pos.to_str().expect("utf-8 path")],
    );
    args.extend(["--shutdown-timeout".into(), "1s".into()]);
    let mut fwd = Forwarder::start(args);
    w.write_lines(&more);
    assert!(rx.wait_all_lines(&more, secs(30)), "lines of the last run");
    // A save that hangs is said while delivery goes on, not only at the stop.
    assert!(
        fwd.wait_log("has not finished for", secs(30)),
        "a hung save is said at WARN; stderr:\n{}",
        fwd.stderr_text()
    );
    stop_with_save_hung(&mut fwd);
    assert_eq!(fs::read_to_string(&pos).expect("position"), text);
}

/// A fresh start writes where it begins before reading a line (so that a restart finds the
/// file it began). If that first write hangs, reading waits, but the loop must not: the hang is
/// said while it lasts, lines flow once it ends, and a stop during it exits in bounded time.
/// Before, the loop itself waited on the write, so a SIGTERM went unanswered until SIGKILL.
#[test]
fn t27_a_fresh_start_whose_first_position_write_hangs_still_answers() {
    let dir = TempDir::new("t27");
    let mut w = AuditWriter::create(dir.path());
    let lines = audit_events(0..100);
    w.write_lines(&lines[..50]);
    let port = free_port();
    let rx = Tailer::start(port);
    let pos = dir.join("audit.pos");
    let tmp = dir.join("audit.pos.tmp");
    let args = fwd_args(
        &w.log_path(),
        port,
        &[
            "--position-file",
            pos.to_str().expect("utf-8 path"),
            "--read-from-head",
        ],
    );

    mkfifo(&tmp);
    let mut fwd = Forwarder::start(args.clone());
    assert!(
        fwd.wait_log(
            "writing where this fresh start begins has not finished",
            secs(30)
        ),
        "the hung first write is said; stderr:\n{}",
        fwd.stderr_text()
    );
    assert!(
        rx.records().is_empty(),
        "lines were read before the start was saved"
    );
    // A reader lets the write go on (it fails at the fsync, a FIFO's); with the FIFO gone the
    // next write succeeds.
    let reader = open_fifo(&tmp);
    assert!(
        fwd.wait_log("the write that hung finished", secs(10)),
        "the end of the hang is said; stderr:\n{}",
        fwd.stderr_text()
    );
    fs::remove_file(&tmp).expect("remove the FIFO");
    drop(reader);
    w.write_lines(&lines[50..]);
    assert!(
        rx.wait_all_lines(&lines, secs(30)),
        "lines after the first write ended; stderr:\n{}",
        fwd.stderr_text()
    );
    fwd.term_ok();
    assert_saved_at_end(&pos, &w.log_path());
    assert_delivered(&lines, &rx.records(), false);

    // A stop while the first write still hangs.
    fs::remove_file(&pos).expect("remove the position file");
    mkfifo(&tmp);
    let mut fwd = Forwarder::start(args);
    assert!(
        fwd.wait_log("forwarding", secs(10)),
        "started; stderr:\n{}",
        fwd.stderr_text()
    );
    thread::sleep(Duration::from_millis(500));
    stop_with_save_hung(&mut fwd);
    assert_eq!(
        rx.records().len(),
        lines.len(),
        "nothing read in the last run"
    );
}

/// Puts a FIFO at `path`: a save that opens it for writing blocks until a reader comes.
fn mkfifo(path: &std::path::Path) {
    let st = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(st.success(), "mkfifo {}", path.display());
}

/// Opens the FIFO at `path` (for reading, and writing so that the open itself cannot block):
/// a save blocked opening it goes on.
fn open_fifo(path: &std::path::Path) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open the FIFO")
}

/// Stops `fwd` while a position save hangs: it must exit 0 in bounded time and say that the
/// position was not written.
fn stop_with_save_hung(fwd: &mut Forwarder) {
    let stopped = Instant::now();
    let st = fwd.term(secs(30));
    assert!(st.success(), "exit status {st:?}");
    assert!(
        stopped.elapsed() < secs(20),
        "took {:?} to stop",
        stopped.elapsed()
    );
    assert!(
        fwd.wait_log("did not finish within", secs(1)),
        "the stop says the position was not written; stderr:\n{}",
        fwd.stderr_text()
    );
}

/// Asserts that the position file `pos` holds the end of `log` (all of it acked and saved) and
/// returns its text.
fn assert_saved_at_end(pos: &std::path::Path, log: &std::path::Path) -> String {
    let end = fs::metadata(log).expect("log").len();
    let text = fs::read_to_string(pos).expect("position at the end");
    assert!(
        text.contains(&format!(" offset={end} ")),
        "the last acked position (offset {end}) is in the file: {text}"
    );
    text
}
