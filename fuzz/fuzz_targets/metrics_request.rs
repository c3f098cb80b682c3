//! The metrics server's request reader (`metrics::http_server::decide`), called, as the server
//! does, with the whole buffer after each read, the reads cut at fuzzer-chosen points. The
//! server acts on the first decision that is not `Partial`, so: a request served when it
//! arrives whole is served the same when it arrives in pieces (never refused early), a
//! prefix's `Serve` stays that `Serve`, and a prefix's refusal means the whole is refused too.
#![no_main]

use audit_forwarder::metrics::http_server::{decide, response, text, Decision, Status, MAX_HEAD};
use audit_forwarder_fuzz::{prefix_ends, split};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (cuts, buf) = split(data);
    let whole = decide(buf);
    let first = prefix_ends(&cuts, buf.len())
        .map(|end| decide(&buf[..end]))
        .find(|d| *d != Decision::Partial)
        .unwrap_or(Decision::Partial);
    match (whole, first) {
        (Decision::Serve { .. }, _) | (_, Decision::Serve { .. }) => assert_eq!(first, whole),
        (Decision::Refuse(_), Decision::Refuse(_)) | (Decision::Partial, Decision::Partial) => {}
        _ => panic!("whole {whole:?}, first decision in pieces {first:?}"),
    }
    if whole == Decision::Partial {
        assert!(buf.len() <= MAX_HEAD, "partial at {} bytes", buf.len());
    }
    if let Decision::Refuse(status) = whole {
        let answer = text(status, "refused", false);
        assert!(answer.starts_with(format!("HTTP/1.1 {} ", status.code()).as_bytes()));
    }
    let _ = response(Status::Ok, "text/plain", buf, buf.first() == Some(&b'H'));
});
