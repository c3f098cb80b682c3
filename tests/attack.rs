//! Attempts to break the changes for issues 7 and 8 (identity rules, held-file limit, rejected
//! records, Nagle batching, zero-timeout polls), against the real binary. A test marked
//! `#[ignore]` demonstrates a problem that is still open; its comment says what it shows.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

const DELIVERY: Duration = Duration::from_secs(30);

/// CPU seconds (user + system) the process `pid` has used, from /proc/<pid>/stat.
fn cpu_s(pid: i32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').expect("comm field") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the comm.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // /proc reports clock ticks in USER_HZ, which is 100 on Linux.
    ticks as f64 / 100.0
}

/// Lines of the rejected-records file beside the default position file, as JSON.
fn rejected(dir: &TempDir) -> Vec<Value> {
    let text = fs::read_to_string(dir.join(".audit-forwarder.rejected")).unwrap_or_default();
    // A line being appended right now is not complete yet: read up to the last newline.
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("rejected record is one JSON line"))
        .collect()
}

/// Issue 7 item 3 asks to isolate a record only when the receiver drops the connection over the
/// same chunk "several times in a row *while other chunks went through*". `dropped_by_peer`
/// counts three drops of the oldest chunk and nothing else, so a receiver that drops *every*
/// connection for a while (fluentd restarting behind an L4 load balancer or TCP proxy that
/// accepts and then closes, a receiver out of buffer) gets perfectly good records split off and
/// set aside in the rejected file: they never reach the receiver once it is healthy again.
/// With the default --backoff-timer 10s this takes about 15 drops, i.e. an outage of a few
/// minutes; here a 100ms backoff makes it seconds.
#[test]
fn outage_that_drops_every_connection_rejects_nothing() {
    let dir = TempDir::new("attack-outage");
    let mut w = AuditWriter::create(dir.path());
    let lines = audit_events(0..20);
    w.write_lines(&lines);
    let port = free_port();
    // Every message is larger than 1 byte: the connection is reset on each one, as a receiver
    // that is down behind a proxy would.
    let mut down = FakeReceiver::start(port, FakeMode::AckUpTo(1), None);
    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &["--backoff-timer", "100ms", "--stats-interval", "1s"],
    ));
    // An outage of 8 seconds.
    thread::sleep(Duration::from_secs(8));
    let resets = down.resets();
    down.stop();
    let up = FakeReceiver::start(port, FakeMode::Ack, None);
    let mut cov = Coverage::new(&lines);
    let ok = wait_until(DELIVERY, || {
        cov = Coverage::new(&lines);
        cov.feed_all(&up.records());
        cov.is_complete()
    });
    let kept = rejected(&dir);
    fwd.term_ok();
    assert!(
        ok && kept.is_empty(),
        "after an outage with {resets} resets, {} of {} records never reached the healthy \
         receiver; {} were set aside as rejected; ERRORs:\n{}",
        cov.remaining(),
        lines.len(),
        kept.len(),
        lines_mentioning(&fwd.stderr_text(), &[" error audit_forwarder"], &[]).join("\n")
    );
}

/// The idle forwarder must sleep in poll: healthy and idle, with the receiver down (backoff),
/// and with a receiver that takes the chunk but never acks.
#[test]
fn idle_forwarder_does_not_spin() {
    let dir = TempDir::new("attack-idle");
    let mut w = AuditWriter::create(dir.path());
    let lines = audit_events(0..50);
    w.write_lines(&lines);
    let port = free_port();
    let tailer = Tailer::start(port);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &["--backoff-timer", "1s"]));
    assert!(
        tailer.wait_all_lines(&lines, DELIVERY),
        "lines did not arrive"
    );
    let measure = |fwd: &Forwarder, what: &str| {
        thread::sleep(Duration::from_secs(1));
        let before = cpu_s(fwd.pid());
        thread::sleep(Duration::from_secs(5));
        let used = cpu_s(fwd.pid()) - before;
        assert!(used < 0.5, "{what}: {used:.2} CPU-s in 5 s while idle");
    };
    measure(&fwd, "delivered, idle");
    drop(tailer);
    w.write_lines(&audit_events(50..60));
    measure(&fwd, "receiver down, reconnecting");
    let _rx = FakeReceiver::start(port, FakeMode::Discard, None);
    thread::sleep(Duration::from_secs(2));
    measure(&fwd, "receiver never acks");
    fwd.term(Duration::from_secs(30));
}

/// SIGTERM while a partial chunk is held back by Nagle batching (the connection is busy with a
/// slow receiver): nothing may be lost; what was not acked is read again after a restart.
#[test]
fn sigterm_with_a_partial_chunk_held_by_nagle_loses_nothing() {
    let dir = TempDir::new("attack-nagle-term");
    let mut w = AuditWriter::create(dir.path());
    let lines = audit_events(0..3000);
    let port = free_port();
    let rx = FakeReceiver::start(port, FakeMode::Ack, Some(200_000));
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &["--shutdown-timeout", "1s"]));
    for l in &lines {
        w.write_line(l);
    }
    thread::sleep(Duration::from_millis(500));
    fwd.term(Duration::from_secs(30));
    drop(rx);
    let tailer = Tailer::start(port);
    fwd.restart();
    let tail_lines = &lines[lines.len() - 100..];
    assert!(
        tailer.wait_all_lines(tail_lines, DELIVERY),
        "the last lines never arrived after SIGTERM and restart"
    );
    fwd.term_ok();
}

/// Identity rule 6 lets only strong fingerprints hide a file as already read. A rotated
/// backup shorter than 256 bytes that gets its gzip copy while the plain file is still listed
/// (lumberjack writes the .gz, then removes the plain file; a rescan can fall in between) is
/// then followed a second time: its lines are delivered twice without any crash.
#[test]
#[ignore = "open: a tiny backup (< 256 bytes) is read again from its gzip copy; duplicates, never loss (identity rule 5 prefers re-reading)"]
fn tiny_backup_gzipped_while_listed_is_read_twice() {
    let dir = TempDir::new("attack-tiny-gz");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let tailer = Tailer::start(port);
    w.write_line(r#"{"kind":"Event","n":1}"#);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &[]));
    assert!(tailer.wait_for(1, DELIVERY), "first line did not arrive");
    let d = dir.path().to_path_buf();
    w.rotate_file_with(|backup| {
        // The forwarder sees the rename (and keeps reading the backup it holds).
        thread::sleep(Duration::from_secs(1));
        // lumberjack's compress: the .gz appears while the plain backup is still there.
        let tmp = d.join("copy.tmp");
        fs::copy(backup, &tmp).unwrap();
        gzip_file(&tmp);
        let mut gz = backup.as_os_str().to_owned();
        gz.push(".gz");
        fs::rename(d.join("copy.tmp.gz"), &gz).unwrap();
        thread::sleep(Duration::from_secs(1));
        fs::remove_file(backup).unwrap();
    });
    w.write_line(r#"{"kind":"Event","n":2}"#);
    assert!(tailer.wait_for(2, DELIVERY), "second line did not arrive");
    thread::sleep(Duration::from_secs(2));
    let got = tailer.lines();
    fwd.term_ok();
    assert_eq!(got.len(), 2, "each line once, no crash happened: {got:#?}");
}

/// SIGKILL right after a rotation while the new audit.log has 1-255 bytes (a weak
/// fingerprint), then rotation with gzip and inode reuse while down: every line arrives.
#[test]
fn sigkill_after_rotation_with_short_new_file() {
    for short in [1usize, 100, 255] {
        let dir = TempDir::new("attack-short");
        let mut w = AuditWriter::create(dir.path());
        let port = free_port();
        let tailer = Tailer::start(port);
        let a = audit_events(0..5);
        w.write_lines(&a);
        let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &[]));
        assert!(tailer.wait_all_lines(&a, DELIVERY), "A did not arrive");
        w.rotate_file();
        // An unterminated start of a line: `short` bytes, fingerprint weak.
        let b0 = format!(
            "{{\"kind\":\"Event\",\"pad\":\"{}\"}}",
            "p".repeat(short.max(30) - 29)
        );
        let b0 = &b0[..short.min(b0.len())];
        w.write_raw(b0.as_bytes());
        thread::sleep(Duration::from_millis(1500));
        fwd.kill9();
        // Finish the line, add more, rotate with gzip (frees the inode), write C.
        let rest = &format!(
            "{{\"kind\":\"Event\",\"pad\":\"{}\"}}",
            "p".repeat(short.max(30) - 29)
        )[b0.len()..];
        w.write_raw(format!("{rest}\n").as_bytes());
        let b = audit_events(100..103);
        w.write_lines(&b);
        w.rotate_file_with(gzip_file);
        let c = audit_events(200..203);
        w.write_lines(&c);
        fwd.restart();
        let mut all = b.clone();
        all.extend(c.clone());
        assert!(
            tailer.wait_all_lines(&all, DELIVERY),
            "short={short}: B or C lost after SIGKILL; stderr:\n{}",
            fwd.stderr_text()
        );
        fwd.term_ok();
        let errors =
            lines_mentioning(&fwd.stderr_text(), &[" error audit_forwarder"], &[]).join("\n");
        assert!(errors.is_empty(), "short={short}: false ERRORs:\n{errors}");
    }
}

/// SIGKILLs `fwd`, which has acked nothing of `a` (the lines of the first file, still
/// `audit.log`); while it is down the first file gets A2 and becomes a gzipped backup, B a
/// plain one, C the new audit.log. Restarts it towards a tailer and asserts that A, A2, B and
/// C all arrive; returns the forwarder's output.
fn killed_before_the_first_ack_then_rotations(
    w: &mut AuditWriter,
    fwd: &mut Forwarder,
    port: u16,
    a: &[String],
    what: &str,
) -> String {
    fwd.kill9();
    let a2 = audit_events(50..53);
    w.write_lines(&a2);
    w.rotate_file_with(gzip_file);
    let b = audit_events(100..103);
    w.write_lines(&b);
    w.rotate_file();
    let c = audit_events(200..203);
    w.write_lines(&c);
    let tailer = Tailer::start(port);
    fwd.restart();
    let all: Vec<String> = a.iter().chain(&a2).chain(&b).chain(&c).cloned().collect();
    assert!(
        tailer.wait_all_lines(&all, DELIVERY),
        "{what}: lines lost after a SIGKILL before the first ack; got {} of {}; stderr:\n{}",
        tailer.line_count(),
        all.len(),
        fwd.stderr_text()
    );
    fwd.term_ok();
    fwd.stderr_text()
}

/// A forwarder killed before any ack reached its position file (here the receiver was down
/// all along; in a CI run it was the first fsync taking longer than the 1.8 s until the kill)
/// and restarted after rotations resumes in the file it had begun, now a gzipped backup, not at
/// the new `audit.log` as a first start would: a fresh start writes its position before it
/// reads a byte. Both with a first file that identifies itself (A: 5 lines) and with an empty
/// one (weak position: read again from the oldest file, duplicates allowed).
#[test]
fn sigkill_before_the_first_ack_then_rotations_loses_nothing() {
    for initial in [5u64, 0] {
        let dir = TempDir::new("attack-first-ack");
        let mut w = AuditWriter::create(dir.path());
        let port = free_port();
        let a = audit_events(0..initial);
        w.write_lines(&a);
        let mut fwd =
            Forwarder::start(fwd_args(&w.log_path(), port, &["--backoff-timer", "200ms"]));
        assert!(
            fwd.wait_log("refused", DELIVERY),
            "initial={initial}: no connection attempt logged; stderr:\n{}",
            fwd.stderr_text()
        );
        let text = killed_before_the_first_ack_then_rotations(
            &mut w,
            &mut fwd,
            port,
            &a,
            &format!("initial={initial}"),
        );
        let placed = if initial > 0 {
            "resuming audit-"
        } else {
            "lines may be sent twice"
        };
        assert!(
            text.contains(placed),
            "initial={initial}: the restart must say \"{placed}\"; stderr:\n{text}"
        );
        let errors = lines_mentioning(&text, &[" error audit_forwarder"], &[]).join("\n");
        assert!(
            errors.is_empty(),
            "initial={initial}: false ERRORs:\n{errors}"
        );
    }
}

/// The rejected-record path with `--compress gzip`: a big, poorly compressible record the
/// receiver resets over is isolated, decompressed into the rejected file, and the others arrive.
#[test]
fn gzip_record_the_receiver_cannot_take_is_set_aside() {
    let dir = TempDir::new("attack-gzip-reject");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let rx = FakeReceiver::start(port, FakeMode::AckUpTo(600 << 10), None);
    let mut lines = audit_events(0..400);
    let mut rng = Rng::for_test("gzip-reject");
    let body: String = (0..(2 << 20))
        .map(|_| char::from(b"0123456789abcdef"[rng.range(0, 16) as usize]))
        .collect();
    let big = lines[200].replacen(
        "{\"kind\":\"Event\"",
        &format!("{{\"kind\":\"Event\",\"body\":\"{body}\""),
        1,
    );
    lines[200] = big.clone();
    w.write_lines(&lines);
    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &["--backoff-timer", "200ms", "--compress", "gzip"],
    ));
    let mut expected = lines.clone();
    expected.remove(200);
    let mut cov = Coverage::new(&expected);
    let ok = wait_until(DELIVERY, || {
        cov = Coverage::new(&expected);
        cov.feed_all(&rx.records());
        cov.is_complete()
    });
    // The record is set aside when the ack for the chunks after it comes back, which may be
    // just after the receiver recorded them.
    wait_until(secs(10), || !rejected(&dir).is_empty());
    let kept = rejected(&dir);
    fwd.term_ok();
    assert!(ok, "{} records missing; {}", cov.remaining(), rx.summary());
    let want: Value = serde_json::from_str(&big).unwrap();
    assert_eq!(
        kept,
        vec![want],
        "the rejected file must hold the big event"
    );
}

/// An unterminated last line when the file is rotated is delivered once (as a line), and a
/// SIGKILL + restart afterwards neither loses nor repeats the rotated file.
#[test]
fn unterminated_line_at_rotation_is_delivered_once() {
    let dir = TempDir::new("attack-unterminated");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let tailer = Tailer::start(port);
    let a = audit_events(0..5);
    w.write_lines(&a);
    let partial = audit_event(5);
    w.write_raw(partial.as_bytes());
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &[]));
    assert!(tailer.wait_all_lines(&a, DELIVERY), "A did not arrive");
    w.rotate_file();
    let b = audit_events(10..12);
    w.write_lines(&b);
    let mut all = a.clone();
    all.push(partial.clone());
    all.extend(b.clone());
    assert!(
        tailer.wait_all_lines(&all, DELIVERY),
        "partial line or B missing"
    );
    thread::sleep(Duration::from_millis(1500));
    fwd.kill9();
    let c = audit_events(20..22);
    w.write_lines(&c);
    fwd.restart();
    all.extend(c.clone());
    assert!(
        tailer.wait_all_lines(&all, DELIVERY),
        "C missing after restart"
    );
    thread::sleep(Duration::from_secs(1));
    fwd.term_ok();
    let got = tailer.lines();
    assert_eq!(
        got.len(),
        all.len(),
        "duplicates after a clean SIGKILL point: {}",
        got.len()
    );
}

/// --max-held-bytes smaller than one file: the receiver is down, the window is small, the
/// backup being read is deleted. It is released with an ERROR; everything of the current
/// audit.log still arrives, in order, once the receiver is back.
#[test]
fn max_held_smaller_than_one_file() {
    let dir = TempDir::new("attack-maxheld");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let a = audit_events(0..6000);
    w.write_lines(&a);
    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &[
            "--max-held-bytes",
            "100K",
            "--max-line-size",
            "1M",
            "--mem-buf-limit",
            "4M",
            "--backoff-timer",
            "200ms",
        ],
    ));
    thread::sleep(Duration::from_secs(1));
    w.rotate(false, 0);
    let b = audit_events(10_000..10_050);
    w.write_lines(&b);
    thread::sleep(Duration::from_millis(500));
    for p in w.backups() {
        fs::remove_file(p).unwrap();
    }
    // Let the deletion be noticed (inotify, or the tick).
    assert!(
        fwd.wait_log("--max-held-bytes", Duration::from_secs(10)),
        "no release ERROR; stderr:\n{}",
        fwd.stderr_text()
    );
    let tailer = Tailer::start(port);
    assert!(tailer.wait_all_lines(&b, DELIVERY), "B did not all arrive");
    thread::sleep(Duration::from_secs(1));
    fwd.assert_alive("after releasing a held file");
    let got: Vec<u64> = tailer.records().iter().filter_map(seq_of).collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(got, sorted, "records out of order after a release");
    fwd.term_ok();
}

/// Finding 1 made hostile: anyone who can connect to a plaintext `tailer` can hold its shared
/// `--mem-budget` with one unfinished message; the tailer then drops the forwarder's connection
/// on every chunk ("over the memory budget"), and the forwarder, counting three drops per
/// chunk, splits its chunks and sets good audit records aside: they never reach the receiver,
/// even after the hostile client is gone. An attacker can thus keep chosen audit events away
/// from the audit pipeline.
#[test]
fn hostile_client_holding_the_tailer_budget_gets_nothing_rejected() {
    use std::io::Write;
    let dir = TempDir::new("attack-budget");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let tailer = Tailer::start_with(
        port,
        vec![
            "--mem-budget".into(),
            "2M".into(),
            "--client-timeout".into(),
            "60s".into(),
        ],
    );
    // One unfinished PackedForward message: declares 3 MB of entries, sends 1.99 MB of them.
    let mut hostile = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut msg = vec![0x93, 0xa7];
    msg.extend_from_slice(b"hostile");
    msg.push(0xc6);
    msg.extend_from_slice(&3_000_000u32.to_be_bytes());
    msg.extend(std::iter::repeat_n(0u8, 1_995_000));
    hostile.write_all(&msg).unwrap();
    thread::sleep(Duration::from_millis(500));
    let lines = audit_events(0..20);
    w.write_lines(&lines);
    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &["--backoff-timer", "100ms", "--stats-interval", "1s"],
    ));
    thread::sleep(Duration::from_secs(8));
    drop(hostile);
    let ok = tailer.wait_all_lines(&lines, Duration::from_secs(10));
    let kept = rejected(&dir);
    fwd.term_ok();
    assert!(
        ok && kept.is_empty(),
        "{} of {} good records were set aside as rejected and never delivered; forwarder \
         ERRORs:\n{}",
        kept.len(),
        lines.len(),
        lines_mentioning(&fwd.stderr_text(), &[" error audit_forwarder"], &[]).join("\n")
    );
}

/// A receiver whose per-message limit is below the chunk target (fluent-bit's in_forward with
/// `Buffer_Max_Size 200k`): every full chunk is dropped three times, then split, then its
/// halves are dropped three times each... Nothing learns the limit, so each chunk costs
/// several reconnections with backoff, and 6 MB of audit log take minutes.
#[test]
fn receiver_limit_below_chunk_target_is_learned() {
    let dir = TempDir::new("attack-crawl");
    let mut w = AuditWriter::create(dir.path());
    let port = free_port();
    let rx = FakeReceiver::start(port, FakeMode::AckUpTo(200_000), None);
    let lines = audit_events(0..5000);
    w.write_lines(&lines);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &["--stats-interval", "5s"]));
    let started = Instant::now();
    let mut cov = Coverage::new(&lines);
    let ok = wait_until(Duration::from_secs(120), || {
        cov = Coverage::new(&lines);
        cov.feed_all(&rx.records());
        cov.is_complete()
    });
    let took = started.elapsed();
    let kept = rejected(&dir);
    fwd.term(Duration::from_secs(30));
    // Against a receiver without the limit this takes well under a second.
    assert!(
        ok && took < Duration::from_secs(20),
        "after {took:?}: {} of {} records still missing, {} resets, {} rejected",
        cov.remaining(),
        lines.len(),
        rx.resets(),
        kept.len()
    );
}

/// The fresh-start position write fails (its directory does not exist yet, as in
/// core::t22), the directory appears, and the forwarder is SIGKILLed before any ack while the
/// receiver is down; rotations follow. The start position must reach the position file once
/// it can be written, else the restart is a fresh start at the new `audit.log` and loses the
/// first file.
#[test]
fn start_position_written_late_after_a_failed_first_write() {
    let dir = TempDir::new("attack-start-late");
    let mut w = AuditWriter::create(&dir.join("log"));
    let port = free_port();
    let a = audit_events(0..5);
    w.write_lines(&a);
    let pos_dir = dir.join("state");
    let pos = pos_dir.join("audit.pos");
    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &[
            "--backoff-timer",
            "200ms",
            "--position-file",
            pos.to_str().expect("utf-8 path"),
        ],
    ));
    assert!(
        fwd.wait_log("writing position file", DELIVERY) && fwd.wait_log("refused", DELIVERY),
        "no failed position write and connection attempt logged; stderr:\n{}",
        fwd.stderr_text()
    );
    fs::create_dir_all(&pos_dir).expect("mkdir");
    // Flushes run every 200 ms; without the retry the file never appears before an ack.
    assert!(
        wait_until(secs(5), || pos.exists()),
        "the start position was not written once its directory existed; stderr:\n{}",
        fwd.stderr_text()
    );
    let text = killed_before_the_first_ack_then_rotations(&mut w, &mut fwd, port, &a, "late start");
    assert!(
        text.contains("resuming audit-"),
        "the restart must resume in the gzipped first file; stderr:\n{text}"
    );
}

/// A position file that cannot be decoded (here empty, as a `touch` or another tool leaves
/// it) after lines were written and rotated while the forwarder was down. The forwarder says
/// it reads every file of the rotation set again, and must: not only `audit.log` (and not from
/// its end with `--read-from-head=false`).
#[test]
fn unreadable_position_file_rereads_every_file() {
    for head in ["true", "false"] {
        let dir = TempDir::new("attack-bad-pos");
        let mut w = AuditWriter::create(dir.path());
        let port = free_port();
        let tailer = Tailer::start(port);
        let a = audit_events(0..5);
        w.write_lines(&a);
        let flag = format!("--read-from-head={head}");
        let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &[flag.as_str()]));
        // With --read-from-head=false A is before the start: write one more line to know the
        // forwarder is following.
        let a1 = audit_events(10..11);
        thread::sleep(Duration::from_millis(500));
        w.write_lines(&a1);
        assert!(tailer.wait_all_lines(&a1, DELIVERY), "head={head}: A1");
        fwd.term_ok();
        let b = audit_events(100..103);
        w.write_lines(&b);
        w.rotate_file();
        let c = audit_events(200..203);
        w.write_lines(&c);
        fs::write(dir.join(".audit-forwarder.pos"), "").expect("empty the position file");
        fwd.restart();
        let all: Vec<String> = b.iter().chain(&c).cloned().collect();
        assert!(
            tailer.wait_all_lines(&all, DELIVERY),
            "head={head}: lines lost after an unreadable position file; stderr:\n{}",
            fwd.stderr_text()
        );
        fwd.term_ok();
        let text = fwd.stderr_text();
        let errors = lines_mentioning(&text, &[" error audit_forwarder"], &[]);
        assert!(
            errors.len() == 1 && errors[0].contains("every file"),
            "head={head}: want one ERROR, about the unreadable position file: {errors:#?}"
        );
        assert!(
            text.contains("reading again from the oldest file"),
            "head={head}: the re-read must be said; stderr:\n{text}"
        );
    }
}
