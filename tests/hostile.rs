//! End-to-end: the real `tailer` under hostile clients while a real forwarder delivers to it.
//! The clients are what anyone who can connect may send (random bytes, truncated and oversized
//! msgpack, map keys nested 40 deep, handshakes that never end, idle connections, large
//! messages never finished, thousands of idle connections, connections beyond --max-clients);
//! the forwarder's records must all arrive exactly as generated, and the tailer's peak memory
//! must stay within a stated bound.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::Instant;

const KEY: &str = "hostile-test-key";
/// What the tailer's default --mem-budget (200M) allows, plus its code, stdout buffer, the
/// forwarder's connection and the allocator's slack. Without the budget, the twelve large
/// unfinished messages below alone take 720 MB.
const PEAK_RSS_BOUND: u64 = 300 << 20;

/// Reads one msgpack value; bytes after it stay in `buf`.
fn read_value(s: &mut TcpStream, buf: &mut Vec<u8>) -> Mp {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((v, used)) = mp_decode(buf).expect("the tailer sent msgpack") {
            buf.drain(..used);
            return v;
        }
        let n = s.read(&mut chunk).expect("read from the tailer");
        assert!(
            n > 0,
            "the tailer closed the connection during the handshake"
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// hex(sha512(data)), by python3 (a tool the end-to-end tests already need), so the digest is
/// not computed by the code under test.
fn sha512_hex(data: &[u8]) -> String {
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha512(bytes.fromhex(sys.argv[1])).hexdigest())",
            &hex,
        ])
        .output()
        .expect("run /usr/bin/python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A connection that passed the shared-key handshake, as a client holding the key would.
fn authenticated(port: u16) -> TcpStream {
    let mut s = connect_tailer(port);
    let mut buf = Vec::new();
    let helo = read_value(&mut s, &mut buf);
    let nonce = match &helo {
        Mp::Array(items) if items.len() == 2 => match &items[1] {
            Mp::Map(pairs) => pairs.iter().find_map(|(k, v)| match (k, v) {
                (Mp::Str(k), Mp::Bin(n) | Mp::Str(n)) if k == b"nonce" => Some(n.clone()),
                _ => None,
            }),
            _ => None,
        },
        _ => None,
    }
    .unwrap_or_else(|| panic!("not a HELO with a nonce: {helo:?}"));
    let (salt, host) = ("hostile-salt", "hostile-client");
    let digest = sha512_hex(&[salt.as_bytes(), host.as_bytes(), &nonce, KEY.as_bytes()].concat());
    let mut ping = Vec::new();
    rmp::encode::write_array_len(&mut ping, 6).unwrap();
    for field in ["PING", host, salt, &digest, "", ""] {
        rmp::encode::write_str(&mut ping, field).unwrap();
    }
    s.write_all(&ping).unwrap();
    match read_value(&mut s, &mut buf) {
        Mp::Array(items) if items.get(1) == Some(&Mp::Bool(true)) => s,
        other => panic!("the tailer refused the PING: {other:?}"),
    }
}

/// PackedForward `["hostile", bin(entries), {"chunk": id}]`; `entries_len` may declare more
/// entry bytes than `entries` holds, for messages that are never finished.
fn packed_forward(entries: &[u8], entries_len: u32, chunk: &str) -> Vec<u8> {
    let mut msg = Vec::new();
    rmp::encode::write_array_len(&mut msg, 3).unwrap();
    rmp::encode::write_str(&mut msg, "hostile").unwrap();
    rmp::encode::write_bin_len(&mut msg, entries_len).unwrap();
    msg.extend_from_slice(entries);
    rmp::encode::write_map_len(&mut msg, 1).unwrap();
    rmp::encode::write_str(&mut msg, "chunk").unwrap();
    rmp::encode::write_str(&mut msg, chunk).unwrap();
    msg
}

/// One entry `[time, record]` with `record` given as msgpack bytes.
fn entry(record: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    rmp::encode::write_array_len(&mut e, 2).unwrap();
    rmp::encode::write_uint(&mut e, 1_700_000_000).unwrap();
    e.extend_from_slice(record);
    e
}

/// Waits until the tailer printed every line of `lines`, failing if the forwarder exits or
/// `timeout_s` passes.
fn wait_delivered(
    tailer: &Tailer,
    fwd: &mut Forwarder,
    lines: &[String],
    timeout_s: u64,
    beside: &str,
) {
    let mut cov = Coverage::new(lines);
    let deadline = Instant::now() + secs(timeout_s);
    while !tailer.wait_all(&mut cov, ms(500)) {
        fwd.assert_alive(&format!("delivering beside {beside}"));
        assert!(
            Instant::now() < deadline,
            "{} of {} records missing after {timeout_s} s beside {beside}; tailer stderr \
             (tail):\n{}",
            cov.remaining(),
            lines.len(),
            tail(&tailer.stderr_text())
        );
    }
}

#[test]
fn tailer_survives_hostile_clients_while_a_forwarder_delivers() {
    let dir = TempDir::new("hostile");
    let mut w = AuditWriter::create(&dir.join("log"));
    let lines = audit_events(0..5_000);
    w.write_lines(&lines);
    let port = free_port();
    let tailer = Tailer::start_with(
        port,
        vec![
            "--shared-key".into(),
            KEY.into(),
            // The forwarder refuses a PONG with its own hostname, which both would announce.
            "--self-hostname".into(),
            "hostile-tailer".into(),
            "--client-timeout".into(),
            "5s".into(),
        ],
    );
    let mut hostile: Vec<(&str, thread::JoinHandle<()>)> = Vec::new();
    let mut spawn = |name: &'static str, f: Box<dyn FnOnce() + Send>| {
        hostile.push((name, thread::spawn(f)));
    };

    // Twelve clients each hold 60 MB of a 64 MB message and never finish it.
    for _ in 0..12 {
        spawn(
            "large unfinished message",
            Box::new(move || {
                let mut s = authenticated(port);
                let _ = s.write_all(&packed_forward(&[], 64_000_000, "bGFyZ2U="));
                let zeros = vec![0u8; 1 << 20];
                for _ in 0..60 {
                    if s.write_all(&zeros).is_err() {
                        break;
                    }
                }
                wait_closed(&mut s);
            }),
        );
    }
    // Many connections that never say anything (nor send the PING the tailer waits for).
    let idle: Vec<TcpStream> = (0..150).map(|_| connect_tailer(port)).collect();
    spawn(
        "idle connections",
        Box::new(move || {
            for mut s in idle {
                wait_closed(&mut s);
            }
        }),
    );
    spawn(
        "unfinished handshake",
        Box::new(move || {
            let mut s = connect_tailer(port);
            // The PING's first bytes, then nothing.
            s.write_all(&[0x96, 0xa4, b'P', b'I']).unwrap();
            wait_closed(&mut s);
        }),
    );
    spawn(
        "endless handshake",
        Box::new(move || {
            let mut s = connect_tailer(port);
            // A PING whose hostname declares a gigabyte and never ends.
            let mut ping = vec![0x96, 0xa4, b'P', b'I', b'N', b'G', 0xdb];
            ping.extend_from_slice(&(1u32 << 30).to_be_bytes());
            let _ = s.write_all(&ping);
            let junk = vec![b'h'; 64 << 10];
            for _ in 0..1024 {
                if s.write_all(&junk).is_err() {
                    break;
                }
            }
            wait_closed(&mut s);
        }),
    );
    spawn(
        "random bytes",
        Box::new(move || {
            let mut rng = Rng::for_test("hostile random bytes");
            let bytes: Vec<u8> = (0..256 << 10).map(|_| rng.next_u64() as u8).collect();
            send_and_wait_closed(authenticated(port), &bytes, false);
        }),
    );
    spawn(
        "truncated msgpack",
        Box::new(move || {
            let e = entry(&[0x81, 0xa1, b'k', 0xa1, b'v']);
            let msg = packed_forward(&e, e.len() as u32, "dHJ1bmM=");
            send_and_wait_closed(authenticated(port), &msg[..msg.len() - 5], true);
        }),
    );
    spawn(
        "oversized msgpack",
        Box::new(move || {
            let msg = packed_forward(&[0; 4096], 100_000_000, "b3ZlcnNpemU=");
            send_and_wait_closed(authenticated(port), &msg[..4096], false);
        }),
    );
    // {"hostile": M40}: M0 is 1, Mn a map whose only key is Mn-1. 130 bytes as one message;
    // escaping every level's key again printed 2^40 bytes.
    let mut nested = vec![0x81, 0xa7];
    nested.extend_from_slice(b"hostile");
    nested.extend(std::iter::repeat_n(0x81, 40));
    nested.push(0x01);
    nested.extend(std::iter::repeat_n(0x03, 40));
    let nested_msg = {
        let e = entry(&nested);
        packed_forward(&e, e.len() as u32, "bmVzdGVk")
    };
    assert!(nested_msg.len() <= 130, "{} bytes", nested_msg.len());
    let (nested_tx, nested_ack) = std::sync::mpsc::channel();
    spawn(
        "nested map keys",
        Box::new(move || {
            let mut s = authenticated(port);
            s.write_all(&nested_msg).unwrap();
            let mut buf = Vec::new();
            let _ = nested_tx.send(read_value(&mut s, &mut buf));
        }),
    );

    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &["--shared-key", KEY]));
    wait_delivered(&tailer, &mut fwd, &lines, 120, "hostile clients");
    assert_eq!(
        nested_ack
            .recv_timeout(secs(60))
            .expect("an answer to the nested-key message"),
        mp_decode(&encode_ack(b"bmVzdGVk")).unwrap().unwrap().0,
        "the nested-key message is acked"
    );
    for (name, t) in hostile {
        t.join()
            .unwrap_or_else(|_| panic!("hostile client thread {name:?} failed"));
    }
    // All hostile connections are closed by now; anything the forwarder resends would be in.
    thread::sleep(ms(500));
    let peak = tailer.peak_rss().expect("the tailer is still running");
    eprintln!(
        "tailer peak RSS (VmHWM): {:.1} MiB",
        peak as f64 / (1 << 20) as f64
    );
    assert!(
        peak < PEAK_RSS_BOUND,
        "tailer peak RSS {peak} bytes, over {PEAK_RSS_BOUND}"
    );

    let (hostile_records, records): (Vec<Value>, Vec<Value>) = tailer
        .records()
        .into_iter()
        .partition(|r| seq_of(r).is_none());
    assert_delivered(&lines, &records, false);
    // The one hostile record that was valid is printed once, its keys not re-escaped per level.
    assert_eq!(hostile_records.len(), 1, "{hostile_records:?}");
    let printed = serde_json::to_string(&hostile_records[0]).unwrap();
    assert!(printed.len() < 400, "{printed}");
    assert!(printed.starts_with(r#"{"hostile":{"{{{{"#), "{printed}");

    // Each kind of hostility was seen, and refused with a reason naming the client.
    let log = tailer.stderr_text();
    for why in [
        "over the memory budget",
        "bytes of a message but not the rest within 5s (--client-timeout)",
        "did not complete its handshake within 5s (--client-timeout)",
        "closed the connection inside a message",
        "exceeds the cap of 67108864",
    ] {
        assert!(
            !lines_mentioning(&log, &["disconnected", why], &["client 127.0.0.1:"]).is_empty(),
            "no disconnect for {why:?} in the tailer's log (tail):\n{}",
            tail(&log)
        );
    }
    // The endless PING hits the handshake's size cap, whichever check sees it first.
    assert!(
        !lines_mentioning(
            &log,
            &["disconnected"],
            &["message larger than 65536 bytes", "shared-key handshake: "]
        )
        .is_empty(),
        "the endless handshake was not refused; tailer log (tail):\n{}",
        tail(&log)
    );
    fwd.term_ok();
}

/// Thousands of idle connections, more than `--max-clients` allows: the tailer holds as many as
/// it may (its and this process's open-files limits raised for it), closes the rest as soon as
/// it accepts them with one warning each, and a forwarder that holds a slot goes on delivering.
/// Idle connections cost the tailer little: a small bound on its peak RSS proves no per-client
/// buffer is allocated before a client sends something.
#[test]
fn tailer_holds_thousands_of_idle_connections_and_refuses_those_beyond_max_clients() {
    const MAX_CLIENTS: usize = 2_000;
    const IDLE: usize = 2_500;
    /// Measured 7.8 MiB (code, stdout buffer, the forwarder's connection, 1,999 idle clients'
    /// state); a 64 KiB read buffer per idle client alone would be 125 MiB.
    const IDLE_RSS_BOUND: u64 = 32 << 20;
    // Default soft limits (1024 on many systems) are below what either side needs.
    let limit = (IDLE + 512) as u64;
    set_nofile(std::process::id() as i32, limit);
    let dir = TempDir::new("hostile-idle");
    let mut w = AuditWriter::create(&dir.join("log"));
    let port = free_port();
    let tailer = Tailer::start_launched(
        port,
        vec!["--max-clients".into(), MAX_CLIENTS.to_string()],
        vec!["prlimit".into(), format!("--nofile={limit}:"), bin()],
    );
    let first = audit_events(0..1_000);
    w.write_lines(&first);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &[]));
    wait_delivered(&tailer, &mut fwd, &first, 60, "no other client");

    // The forwarder holds one slot now; the idle connections take the others, then overflow.
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| {
            TcpStream::connect(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();
    for s in &idle {
        s.set_nonblocking(true).unwrap();
    }
    let closed = |s: &TcpStream| {
        let mut b = [0u8; 1];
        match (&*s).read(&mut b) {
            Ok(0) => true,
            Ok(_) => panic!("the tailer sent bytes to a plain idle client"),
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    };
    let held_at_most = MAX_CLIENTS - 1;
    let mut refused = 0;
    let settled = wait_until(secs(60), || {
        refused = idle.iter().filter(|s| closed(s)).count();
        refused >= IDLE - held_at_most
    });
    assert!(
        settled,
        "{refused} of {IDLE} idle connections closed, expected {}; tailer stderr (tail):\n{}",
        IDLE - held_at_most,
        tail(&tailer.stderr_text())
    );
    // Nothing more is closed once the tailer is full: the held ones stay.
    thread::sleep(ms(500));
    refused = idle.iter().filter(|s| closed(s)).count();
    assert_eq!(refused, IDLE - held_at_most, "idle connections closed");
    let log = tailer.stderr_text();
    let refusals = lines_mentioning(
        &log,
        &[&format!(
            "refused: {MAX_CLIENTS} clients are connected, as many as --max-clients allows"
        )],
        &["client 127.0.0.1:"],
    );
    assert_eq!(
        refusals.len(),
        refused,
        "one warning per refused connection"
    );

    // While the slots are all taken, the forwarder's connection goes on delivering.
    let second = audit_events(1_000..4_000);
    w.write_lines(&second);
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    wait_delivered(&tailer, &mut fwd, &all, 60, "thousands of idle connections");
    let peak = tailer.peak_rss().expect("the tailer is still running");
    eprintln!(
        "tailer peak RSS with {held_at_most} idle clients: {:.1} MiB",
        peak as f64 / (1 << 20) as f64
    );
    assert!(
        peak < IDLE_RSS_BOUND,
        "tailer peak RSS {peak} bytes with idle clients, over {IDLE_RSS_BOUND}"
    );
    assert_delivered(&all, &tailer.records(), false);
    drop(idle);
    fwd.term_ok();
}

fn tail(text: &str) -> &str {
    let mut at = text.len().saturating_sub(6000);
    while !text.is_char_boundary(at) {
        at += 1;
    }
    &text[at..]
}
