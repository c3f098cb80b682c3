//! The request side of the metrics endpoint's HTTP/1.1, sans-IO: bytes a client sent in, a
//! decision out (wait for more, serve a route, or refuse with a status), and the answer's bytes.
//! Only what a Prometheus scraper or a kubelet probe sends is understood: `GET` or `HEAD` of a
//! path, headers read past and ignored, no body, one request per connection (the answer says
//! `Connection: close`). The head is capped so a client cannot grow our buffer.

/// The most bytes of request line and headers we hold; beyond it the answer is 431.
pub const MAX_HEAD: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Healthz,
    Readyz,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    HeaderTooLarge,
    Unavailable,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::HeaderTooLarge => 431,
            Status::Unavailable => 503,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::HeaderTooLarge => "Request Header Fields Too Large",
            Status::Unavailable => "Service Unavailable",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The head is not complete yet (and within the cap).
    Partial,
    /// A well-formed request for a route; `head` means the answer carries no body.
    Serve { route: Route, head: bool },
    /// Answer with this status and close.
    Refuse(Status),
}

/// What the bytes received so far ask for. Called again with the whole buffer after each read;
/// a request line that is already wrong is refused before its end arrives.
pub fn decide(buf: &[u8]) -> Decision {
    let line_end = buf.iter().position(|&b| b == b'\n');
    let line = match line_end {
        Some(n) => &buf[..n],
        None => buf,
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // Only printable ASCII and spaces belong in a request line (RFC 9112 section 3).
    if line.iter().any(|&b| !(0x20..0x7f).contains(&b)) {
        return Decision::Refuse(Status::BadRequest);
    }
    let Some(line_end) = line_end else {
        return partial(buf);
    };
    let Some(head_end) = find_head_end(&buf[line_end..]) else {
        return partial(buf);
    };
    if line_end + head_end > MAX_HEAD {
        return Decision::Refuse(Status::HeaderTooLarge);
    }
    if !headers_well_formed(&buf[line_end + 1..line_end + head_end]) {
        return Decision::Refuse(Status::BadRequest);
    }
    request_line(line)
}

fn partial(buf: &[u8]) -> Decision {
    if buf.len() > MAX_HEAD {
        Decision::Refuse(Status::HeaderTooLarge)
    } else {
        Decision::Partial
    }
}

/// The end of the header block within `rest` (which starts at the request line's LF): the
/// index just past the empty line, CRLF or bare LF.
fn find_head_end(rest: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(n) = rest[at..].iter().position(|&b| b == b'\n') {
        let start = at + n + 1;
        let next = &rest[start..];
        if next.starts_with(b"\n") {
            return Some(start + 1);
        }
        if next.starts_with(b"\r\n") {
            return Some(start + 2);
        }
        at = start;
    }
    None
}

/// Each header line is `name: value` with a token name; values are not looked at.
fn headers_well_formed(block: &[u8]) -> bool {
    block
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .all(|l| match l.iter().position(|&b| b == b':') {
            Some(colon) => colon > 0 && l[..colon].iter().all(|&b| is_tchar(b)),
            None => false,
        })
}

fn request_line(line: &[u8]) -> Decision {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Decision::Refuse(Status::BadRequest);
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Decision::Refuse(Status::BadRequest);
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Decision::Refuse(Status::BadRequest);
    }
    if !target.starts_with(b"/") {
        return Decision::Refuse(Status::BadRequest);
    }
    let head = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => return Decision::Refuse(Status::MethodNotAllowed),
    };
    let path = match target.iter().position(|&b| b == b'?') {
        Some(q) => &target[..q],
        None => target,
    };
    let route = match path {
        b"/metrics" => Route::Metrics,
        b"/healthz" => Route::Healthz,
        b"/readyz" => Route::Readyz,
        _ => return Decision::Refuse(Status::NotFound),
    };
    Decision::Serve { route, head }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A whole answer: status line, headers, and the body unless `head`.
pub fn response(status: Status, content_type: &str, body: &[u8], head: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        status.code(),
        status.reason(),
        body.len()
    )
    .into_bytes();
    if status == Status::MethodNotAllowed {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    if !head {
        out.extend_from_slice(body);
    }
    out
}

/// A short plain-text answer, such as a refusal or a probe's verdict.
pub fn text(status: Status, body: &str, head: bool) -> Vec<u8> {
    let body = format!("{body}\n");
    response(status, "text/plain; charset=utf-8", body.as_bytes(), head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_server_decide_table() {
        use Decision::*;
        let serve = |route, head| Serve { route, head };
        let long_header = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        let long_partial = "a".repeat(MAX_HEAD + 1);
        let just_fits = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD - 40)
        );
        let cases: &[(&[u8], Decision)] = &[
            (b"", Partial),
            (b"GE", Partial),
            (b"GET /metrics HTTP/1.1\r\n", Partial),
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\n", Partial),
            (
                b"GET /metrics HTTP/1.1\r\n\r\n",
                serve(Route::Metrics, false),
            ),
            (
                b"GET /metrics HTTP/1.1\r\nHost: a:9\r\nAccept: */*\r\n\r\n",
                serve(Route::Metrics, false),
            ),
            (b"GET /metrics HTTP/1.0\n\n", serve(Route::Metrics, false)),
            (
                b"HEAD /healthz HTTP/1.1\r\n\r\n",
                serve(Route::Healthz, true),
            ),
            (
                b"GET /readyz?verbose=1 HTTP/1.1\r\n\r\n",
                serve(Route::Readyz, false),
            ),
            // Bytes after the head (a pipelined request, a body) are ignored: we close.
            (
                b"GET /healthz HTTP/1.1\r\n\r\nGARBAGE",
                serve(Route::Healthz, false),
            ),
            (
                b"POST /metrics HTTP/1.1\r\n\r\n",
                Refuse(Status::MethodNotAllowed),
            ),
            (
                b"DELETE /x HTTP/1.1\r\n\r\n",
                Refuse(Status::MethodNotAllowed),
            ),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Refuse(Status::NotFound)),
            (b"GET / HTTP/1.1\r\n\r\n", Refuse(Status::NotFound)),
            (b"GET /metrics/ HTTP/1.1\r\n\r\n", Refuse(Status::NotFound)),
            (b"GET /metrics HTTP/2.0\r\n\r\n", Refuse(Status::BadRequest)),
            (b"GET /metrics\r\n\r\n", Refuse(Status::BadRequest)),
            (
                b"GET  /metrics HTTP/1.1\r\n\r\n",
                Refuse(Status::BadRequest),
            ),
            (b"GET metrics HTTP/1.1\r\n\r\n", Refuse(Status::BadRequest)),
            (b"G(T /metrics HTTP/1.1\r\n\r\n", Refuse(Status::BadRequest)),
            (
                b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
                Refuse(Status::BadRequest),
            ),
            (
                b"GET /metrics HTTP/1.1\r\n: empty\r\n\r\n",
                Refuse(Status::BadRequest),
            ),
            (
                b"GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n",
                Refuse(Status::BadRequest),
            ),
            // Binary garbage is refused at once, before any line end.
            (b"\x16\x03\x01\x02\x00", Refuse(Status::BadRequest)),
            (b"GET /\x00", Refuse(Status::BadRequest)),
            (long_partial.as_bytes(), Refuse(Status::HeaderTooLarge)),
            (long_header.as_bytes(), Refuse(Status::HeaderTooLarge)),
            (just_fits.as_bytes(), serve(Route::Metrics, false)),
        ];
        for (input, want) in cases {
            assert_eq!(
                decide(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(&input[..input.len().min(80)])
            );
        }
    }

    #[test]
    fn http_server_response_shape() {
        let r = text(Status::Unavailable, "no target yet", false);
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 14\r\nConnection: close\r\n\r\nno target yet\n"
        );
        let r = String::from_utf8(text(Status::MethodNotAllowed, "x", true)).unwrap();
        assert!(r.contains("Allow: GET, HEAD\r\n"), "{r}");
        assert!(r.ends_with("Content-Length: 2\r\nAllow: GET, HEAD\r\nConnection: close\r\n\r\n"));
    }
}
