//! Inputs the fuzz targets in `fuzz/` once failed on, replayed through the same library calls
//! with the outcome that is right for them. Each input is the crash file minus its first byte,
//! which only told the target how to cut the rest (see `fuzz/src/lib.rs`).

use std::net::SocketAddr;

use audit_forwarder::net::proxy::{ConnectResponse, ErrorKind, Parsed};

/// `fuzz/artifacts/connect/crash-a8feafb74ec136afb25b8a7c389bf2941ced9c1d`, fed byte by byte:
/// a 503 whose chunked body breaks after its first chunk (`6\r\n` and six bytes, then no CRLF).
/// The parser decided at the break with the raw rest that had arrived so far, so one more byte
/// changed the refusal it had already returned. The raw rest now waits for the close (or the
/// display cap) like a body without a length.
#[test]
fn connect_broken_chunked_refusal_is_decided_the_same_however_it_arrives() {
    let answer: &[u8] =
        b"HTTP/1.1 503 Service Hin\r\n\xff\x10\x00\x00ent-L Pr\x7fxy`AuTquired'\r\n\
        Transfer-Encoding: chunked\r\n\r\n6\r\nl\x01\x00\x00\x00\x00\x00\x00(\n\rllo\r\n";
    let target: SocketAddr = "[fd00::1]:24224".parse().unwrap();
    let mut parser = ConnectResponse::new(target);
    for end in 0..=answer.len() {
        assert_eq!(
            parser.feed(&answer[..end]),
            Parsed::NeedMore,
            "prefix of {end} bytes"
        );
    }
    let at_eof = parser.finish(answer);
    assert_eq!(ConnectResponse::new(target).finish(answer), at_eof);
    assert_eq!(at_eof.kind, ErrorKind::Refused { code: 503 });
    assert_eq!(at_eof.status_line, "HTTP/1.1 503 Service Hin");
    assert_eq!(
        at_eof.body, "l\\x01\\x00\\x00\\x00\\x00\\x00\\x00( llo",
        "the first chunk, then the rest raw, whitespace runs collapsed"
    );
}
