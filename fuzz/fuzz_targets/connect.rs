//! The proxy's answer to CONNECT (`net::proxy::ConnectResponse`), fed as the receive buffer
//! grows at fuzzer-chosen points: once decided, every longer prefix gives the same decision, a
//! fresh parser agrees with the incremental one on every prefix, the decision on the whole
//! input is the first one made, and the error at EOF is the same either way.
#![no_main]

use audit_forwarder::net::proxy::{describe_non_tls, ConnectResponse, Parsed};
use audit_forwarder_fuzz::{prefix_ends, split};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;

fuzz_target!(|data: &[u8]| {
    let (cuts, answer) = split(data);
    let target: SocketAddr = "[fd00::1]:24224".parse().expect("literal address");
    let whole = ConnectResponse::new(target).feed(answer);
    let mut incremental = ConnectResponse::new(target);
    let mut decided: Option<Parsed> = None;
    for end in prefix_ends(&cuts, answer.len()) {
        let prefix = &answer[..end];
        let got = incremental.feed(prefix);
        assert_eq!(
            got,
            ConnectResponse::new(target).feed(prefix),
            "fresh at {end}"
        );
        match &decided {
            Some(first) => assert_eq!(&got, first, "changed its mind at {end}"),
            None if got != Parsed::NeedMore => decided = Some(got),
            None => {}
        }
    }
    assert_eq!(decided.unwrap_or(Parsed::NeedMore), whole);
    let at_eof = ConnectResponse::new(target).finish(answer);
    assert_eq!(incremental.finish(answer), at_eof);
    let _ = at_eof.to_string();
    if let Parsed::Open { header_len } = whole {
        assert!(header_len <= answer.len());
        let _ = describe_non_tls(&answer[header_len..]);
    }
});
