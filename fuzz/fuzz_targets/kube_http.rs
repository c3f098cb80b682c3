//! The Kubernetes API answer reader (`kube::http::ResponseParser`) fed in fuzzer-chosen pieces
//! must give exactly what it gives for the whole input, and a complete answer goes on to the
//! Service and Secret readers (`kube::api`) and the JSON parser behind them.
#![no_main]

use audit_forwarder::kube::api::{self, Answer};
use audit_forwarder::kube::http::{HttpError, Response, ResponseParser};
use audit_forwarder_fuzz::{pieces, split};
use libfuzzer_sys::fuzz_target;

/// Small enough that the fuzzer reaches the body cap, large enough for real objects.
const BODY_CAP: usize = 2048;

fn run<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Result<Response, HttpError> {
    let mut p = ResponseParser::new(BODY_CAP);
    for piece in pieces {
        if let Some(r) = p.feed(piece)? {
            // A parser that has answered refuses more input rather than parsing it.
            assert!(p.feed(b"x").is_err());
            return Ok(r);
        }
    }
    p.eof()
}

fuzz_target!(|data: &[u8]| {
    let (cuts, input) = split(data);
    let whole = run(std::iter::once(input));
    assert_eq!(run(pieces(input, &cuts)), whole);
    match whole {
        Ok(response) => {
            assert!(response.body.len() <= BODY_CAP);
            let _ = response.status_line();
            if let Answer::Found(service) = api::service(&response) {
                let _ = api::target(&service);
            }
            if let Answer::Found(secret) = api::secret(&response) {
                let _ = api::material(&secret, "ca.crt", "tls.crt", "tls.key");
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
