//! The forwarder's decoders of what the receiver sends: the `{"ack": chunk}` answers
//! (`codec::parse_ack`) and the server's half of the shared-key handshake as the client reads
//! it (`handshake::Client`: HELO, then PONG). Both are fed as the forwarder's receive buffer
//! grows, cut at fuzzer-chosen points, and must give the same transcript as the whole input.
//! A third mode runs a complete handshake with a fuzzer-chosen key and hostname against the
//! tailer's `Server`, which must succeed.
#![no_main]

use audit_forwarder::forward::codec::parse_ack;
use audit_forwarder::forward::handshake::{Client, ClientConfig, ClientStep, Server};
use audit_forwarder_fuzz::{pieces, split};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Event {
    Ack(Vec<u8>),
    Send(Vec<u8>),
    Done,
    Failed(String),
}

/// The acks read from a receive buffer growing piece by piece, consumed from its front.
fn acks<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Vec<Event> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match parse_ack(&buf) {
                Ok(None) => break,
                Ok(Some((id, used))) => {
                    assert!(used > 0 && used <= buf.len());
                    out.push(Event::Ack(id.to_vec()));
                    buf.drain(..used);
                }
                // Which of several faults is named can depend on how much had arrived.
                Err(e) => {
                    let _ = e.to_string();
                    out.push(Event::Failed(String::new()));
                    return out;
                }
            }
        }
    }
    out
}

fn config(user: bool) -> ClientConfig {
    ClientConfig {
        shared_key: b"fuzz key".to_vec(),
        self_hostname: "forwarder".into(),
        username: user.then(|| "user".into()),
        password: user.then(|| "secret".into()),
    }
}

/// The client's steps for the bytes a server sent, arriving piece by piece.
fn client<'a>(user: bool, pieces: impl Iterator<Item = &'a [u8]>) -> Vec<Event> {
    let mut c = Client::new(config(user), [7; 16]);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match c.feed(&buf) {
                Ok((_, ClientStep::NeedMore)) => break,
                Ok((used, step)) => {
                    assert!(used > 0 && used <= buf.len());
                    buf.drain(..used);
                    let done = step == ClientStep::Done;
                    out.push(match step {
                        ClientStep::Send(ping) => Event::Send(ping),
                        _ => Event::Done,
                    });
                    if done {
                        let _ = c.server_hostname();
                        return out;
                    }
                }
                Err(e) => {
                    out.push(Event::Failed(e.to_string()));
                    return out;
                }
            }
        }
    }
    let _ = c.closed().to_string();
    out
}

fn roundtrip(payload: &[u8]) {
    let (key, name) = payload.split_at(payload.len() / 2);
    let name = String::from_utf8_lossy(name);
    let cfg = ClientConfig {
        shared_key: key.to_vec(),
        self_hostname: format!("fwd-{name}"),
        username: None,
        password: None,
    };
    let mut c = Client::new(cfg, [1; 16]);
    let (mut s, helo) = Server::new(key.to_vec(), format!("srv-{name}"), [2; 16]);
    let Ok((n, ClientStep::Send(ping))) = c.feed(&helo) else {
        panic!("client refused the tailer's HELO")
    };
    assert_eq!(n, helo.len());
    let outcome = s
        .feed(&ping)
        .expect("server reads the PING")
        .expect("a complete PING");
    assert!(outcome.accepted(), "PING refused: {}", outcome.reason);
    assert_eq!(outcome.consumed, ping.len());
    assert_eq!(
        c.feed(&outcome.pong),
        Ok((outcome.pong.len(), ClientStep::Done))
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let (cuts, payload) = split(data);
    match mode % 4 {
        0 => assert_eq!(acks(pieces(payload, &cuts)), acks(std::iter::once(payload))),
        1 | 2 => {
            let user = mode % 4 == 2;
            let whole = client(user, std::iter::once(payload));
            assert_eq!(client(user, pieces(payload, &cuts)), whole);
        }
        _ => roundtrip(payload),
    }
});
