//! The tailer's reading of one client connection, without the sockets: the shared-key
//! handshake (`handshake::Server`, when the first byte asks for a key), then Forward messages
//! framed by `msgpack::Scanner` as the buffer grows, decoded by `codec::decode_request` (all
//! four modes, gzip included) and printed by `msgpack::write_json`, with the acks. The bytes
//! arrive cut at fuzzer-chosen points and must give the same transcript as arriving whole;
//! every printed line must be JSON that serde_json reads.
#![no_main]

use audit_forwarder::forward::codec::{decode_request, encode_ack};
use audit_forwarder::forward::handshake::Server;
use audit_forwarder::forward::msgpack::{write_json, Scanner};
use audit_forwarder::tailer::{LIMITS, MAX_DECOMPRESSED, MAX_RECORD_JSON};
use audit_forwarder_fuzz::{pieces, split};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

#[derive(Debug, PartialEq)]
enum Event {
    Pong { accepted: bool, pong: Vec<u8> },
    Line(Vec<u8>),
    Ack(Vec<u8>),
    Failed(String),
}

/// What the memory budget typically leaves for inflating one message; the tailer caps it at
/// `MAX_DECOMPRESSED` and at what the budget has left, so any smaller cap is one it uses.
const INFLATE_CAP: usize = if MAX_DECOMPRESSED < 1 << 20 {
    MAX_DECOMPRESSED
} else {
    1 << 20
};

fn check_json(line: &[u8]) {
    let mut de = serde_json::Deserializer::from_slice(line);
    de.disable_recursion_limit();
    if let Err(e) = serde_json::Value::deserialize(&mut de).and_then(|_| de.end()) {
        panic!(
            "printed line is not JSON ({e}): {:?}",
            String::from_utf8_lossy(line)
        );
    }
}

fn connection<'a>(key: bool, pieces: impl Iterator<Item = &'a [u8]>) -> Vec<Event> {
    let mut server = key.then(|| Server::new(b"fuzz key".to_vec(), "tailer".into(), [9; 16]).0);
    let mut scanner = Scanner::new();
    let mut scratch = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        if let Some(s) = &mut server {
            match s.feed(&buf) {
                Ok(None) => continue,
                Ok(Some(outcome)) => {
                    assert!(outcome.consumed > 0 && outcome.consumed <= buf.len());
                    buf.drain(..outcome.consumed);
                    let accepted = outcome.accepted();
                    out.push(Event::Pong {
                        accepted,
                        pong: outcome.pong,
                    });
                    if !accepted {
                        return out;
                    }
                    server = None;
                }
                Err(e) => {
                    out.push(Event::Failed(e.to_string()));
                    return out;
                }
            }
        }
        let mut start = 0;
        loop {
            match scanner.scan(&buf[start..], &LIMITS) {
                Ok(Some(n)) => {
                    let msg = &buf[start..start + n];
                    start += n;
                    let req = match decode_request(msg, INFLATE_CAP, &mut scratch) {
                        Ok(req) => req,
                        Err(e) => {
                            out.push(Event::Failed(e.to_string()));
                            return out;
                        }
                    };
                    let mut entries = 0;
                    for (_time, record) in req.entries() {
                        entries += 1;
                        let mut line = Vec::new();
                        match write_json(record, MAX_RECORD_JSON, &mut line) {
                            Ok(used) => assert_eq!(used, record.len()),
                            Err(e) => {
                                out.push(Event::Failed(e.to_string()));
                                return out;
                            }
                        }
                        check_json(&line);
                        out.push(Event::Line(line));
                    }
                    assert_eq!(entries, req.count);
                    if let Some(chunk) = req.chunk {
                        let mut ack = Vec::new();
                        encode_ack(chunk, &mut ack);
                        out.push(Event::Ack(ack));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(Event::Failed(e.to_string()));
                    return out;
                }
            }
        }
        buf.drain(..start);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let (cuts, payload) = split(data);
    let key = mode & 1 == 1;
    let whole = connection(key, std::iter::once(payload));
    assert_eq!(connection(key, pieces(payload, &cuts)), whole);
});
