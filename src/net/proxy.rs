//! The HTTP CONNECT handshake that opens a tunnel to the receiver through a konnectivity proxy
//! (over a Unix socket or a mutual-TLS connection), sans-IO: [`connect_request`] builds the
//! request, [`ConnectResponse`] reads the proxy's answer from the bytes the caller has received
//! so far, and [`describe_non_tls`] explains a tunnel whose first bytes are not TLS. The caller
//! owns the socket and the receive buffer; nothing here reads clocks or sockets.
//!
//! Answers seen in practice, all handled by "any 2xx opens the tunnel, its headers are ignored":
//! - konnectivity up to v0.30: `HTTP/1.1 200 OK` with `Transfer-Encoding: chunked`, yet the raw
//!   tunnel follows the blank line without any chunk framing.
//! - konnectivity v0.31-v0.33: `HTTP/1.1 200 Connection Established` before it dials, so a failed
//!   dial shows up inside the tunnel afterwards (an HTTP error or a close instead of TLS).
//! - konnectivity from v0.34: a 200 only after the dial, else 500/502/503/504 with a short text
//!   body (`currently no tunnels available`, `Backend dial timeout`).
//! - tinyproxy: `HTTP/1.0 200 Connection established`, or 403/407 with an HTML body and no
//!   `Content-Length` (the body ends when it closes).
//!
//! konnectivity dials the request target, not the Host header, so both carry the same address.

use crate::escape;
use std::fmt;
use std::net::SocketAddr;

/// The longest answer header accepted: real ones are a few hundred bytes, and the cap bounds
/// the receive buffer a misbehaving proxy can grow.
pub const MAX_HEADER: usize = 16 * 1024;

/// How many bytes of a refusal's body are shown in the error.
pub const MAX_BODY_SHOWN: usize = 512;

/// How many characters of raw bytes (escaped) an error quotes.
const QUOTED_CHARS: usize = 200;

/// How much of an answer that is not HTTP is waited for (up to its first line end) before it is
/// reported, so that the error can quote more than its first byte.
const GARBAGE_SHOWN: usize = 64;

/// How long a chunk-size line may grow before the chunked body counts as malformed.
const MAX_CHUNK_LINE: usize = 1024;

/// `host:port` as it goes into the request line; IPv6 in brackets. A scope id is left out: it
/// names an interface of this host and means nothing to the proxy.
fn authority(target: SocketAddr) -> String {
    match target {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// `CONNECT <ip>:<port> HTTP/1.1\r\nHost: <ip>:<port>\r\nUser-Agent: audit-forwarder/<version>\r\n\r\n`;
/// IPv6 in brackets.
pub fn connect_request(target: SocketAddr) -> Vec<u8> {
    let a = authority(target);
    format!(
        "CONNECT {a} HTTP/1.1\r\nHost: {a}\r\nUser-Agent: audit-forwarder/{}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// What the answer received so far amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes to decide; call again with more (or `finish` at EOF or on giving up).
    NeedMore,
    /// A 2xx: the tunnel is open. Bytes from `header_len` on belong to the tunnel.
    Open { header_len: usize },
    /// The proxy refused, or did not answer with HTTP.
    Refused(ProxyError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A complete non-2xx answer (or one cut short by EOF after its status line).
    Refused { code: u16 },
    /// No end of header within [`MAX_HEADER`] bytes.
    HeaderTooLarge,
    /// The answer does not start with an `HTTP/1.0` or `HTTP/1.1` status line.
    NotHttp,
    /// The proxy closed the connection before a usable answer (or right after a 2xx, when the
    /// caller reports the close through `finish`).
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    /// The address asked for in the CONNECT.
    pub target: SocketAddr,
    pub kind: ErrorKind,
    /// For `Refused` the status line; otherwise the start of what arrived, if anything. Control
    /// characters and bytes that are not UTF-8 are escaped.
    pub status_line: String,
    /// For `Refused`: the first [`MAX_BODY_SHOWN`] bytes of the body, whitespace runs collapsed
    /// and control characters escaped, with `...` when more was cut off. Empty otherwise.
    pub body: String,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = authority(self.target);
        match self.kind {
            ErrorKind::Refused { .. } => {
                write!(
                    f,
                    "proxy refused CONNECT {target}: \"{}\"",
                    self.status_line
                )?;
                if !self.body.is_empty() {
                    write!(f, ": {}", self.body)?;
                }
                Ok(())
            }
            ErrorKind::HeaderTooLarge => write!(
                f,
                "proxy answer header exceeds {} KiB (CONNECT {target}), starting \"{}\"",
                MAX_HEADER / 1024,
                self.status_line
            ),
            ErrorKind::NotHttp => write!(
                f,
                "proxy answered CONNECT {target} with something other than an HTTP/1.x status \
                 line: \"{}\"",
                self.status_line
            ),
            ErrorKind::Closed if self.status_line.is_empty() => write!(
                f,
                "proxy closed the connection without answering CONNECT {target}"
            ),
            ErrorKind::Closed => write!(
                f,
                "proxy closed the connection after answering CONNECT {target} with only \"{}\"",
                self.status_line
            ),
        }
    }
}

impl std::error::Error for ProxyError {}

/// How a refusal's body ends.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked,
    /// No length and not chunked: the body ends when the proxy closes.
    Close,
}

#[derive(Debug, Clone, Copy)]
struct Head {
    len: usize,
    framing: Framing,
}

/// Reads the proxy's answer incrementally. The caller keeps the receive buffer and passes all
/// of it (every byte received since the CONNECT was sent) to [`feed`](Self::feed) after each
/// read; work already done on earlier bytes is not repeated.
#[derive(Debug, Clone)]
pub struct ConnectResponse {
    target: SocketAddr,
    /// Start of the header line not yet complete; everything before it has been checked.
    line_start: usize,
    /// The status code and shown status line, once the first line is complete and valid.
    status: Option<(u16, String)>,
    head: Option<Head>,
}

impl ConnectResponse {
    pub fn new(target: SocketAddr) -> ConnectResponse {
        ConnectResponse {
            target,
            line_start: 0,
            status: None,
            head: None,
        }
    }

    /// The status line, once it has arrived (for logging a successful CONNECT).
    pub fn status_line(&self) -> Option<&str> {
        self.status.as_ref().map(|(_, line)| line.as_str())
    }

    /// Judges `buf`, all bytes received so far. Once the result is not `NeedMore`, more bytes
    /// give the same result.
    pub fn feed(&mut self, buf: &[u8]) -> Parsed {
        if buf.len() < self.line_start {
            // Not the growing buffer this parser was fed before: start over rather than index
            // past its end.
            *self = ConnectResponse::new(self.target);
        }
        if self.head.is_some() {
            return self.after_head(buf);
        }
        if !could_be_status_line(buf) {
            return match garbage_shown(buf, GARBAGE_SHOWN) {
                Some(shown) => Parsed::Refused(self.error(ErrorKind::NotHttp, shown)),
                None => Parsed::NeedMore,
            };
        }
        let limit = buf.len().min(MAX_HEADER);
        while let Some(i) = buf[self.line_start..limit].iter().position(|&b| b == b'\n') {
            let nl = self.line_start + i;
            let line = trim_cr(&buf[self.line_start..nl]);
            match self.status {
                None => match parse_status(line) {
                    Some(code) => self.status = Some((code, quote(line))),
                    None => return Parsed::Refused(self.error(ErrorKind::NotHttp, &buf[..=nl])),
                },
                Some(_) if line.is_empty() => {
                    self.line_start = nl + 1;
                    self.head = Some(Head {
                        len: nl + 1,
                        framing: framing(&buf[..nl]),
                    });
                    return self.after_head(buf);
                }
                Some(_) => {}
            }
            self.line_start = nl + 1;
        }
        if buf.len() >= MAX_HEADER {
            let first = buf[..MAX_HEADER]
                .split(|&b| b == b'\n')
                .next()
                .unwrap_or(buf);
            return Parsed::Refused(self.error(ErrorKind::HeaderTooLarge, trim_cr(first)));
        }
        Parsed::NeedMore
    }

    /// The error to report when the proxy closed the connection (or the caller gave up
    /// waiting) with `buf` received: a refusal with whatever body arrived, or a close before a
    /// usable answer.
    pub fn finish(&mut self, buf: &[u8]) -> ProxyError {
        match self.feed(buf) {
            Parsed::Refused(e) => return e,
            Parsed::Open { .. } => return self.error(ErrorKind::Closed, buf),
            Parsed::NeedMore => {}
        }
        match (&self.status, self.head) {
            (Some((code, _)), Some(head)) => {
                let (bytes, truncated, _) = body(head.framing, &buf[head.len..]);
                self.refused(*code, &bytes, truncated)
            }
            (Some((code, _)), None) if !(200..300).contains(code) => {
                self.refused(*code, &[], false)
            }
            _ if could_be_status_line(buf) => self.error(ErrorKind::Closed, buf),
            _ => self.error(ErrorKind::NotHttp, buf),
        }
    }

    fn after_head(&self, buf: &[u8]) -> Parsed {
        // `feed` sets `head` only after `status`, and calls this only once `head` is set.
        let (Some((code, _)), Some(head)) = (&self.status, self.head) else {
            unreachable!("after_head without a complete header")
        };
        if (200..300).contains(code) {
            return Parsed::Open {
                header_len: head.len,
            };
        }
        match body(head.framing, &buf[head.len..]) {
            (bytes, truncated, true) => Parsed::Refused(self.refused(*code, &bytes, truncated)),
            (_, _, false) => Parsed::NeedMore,
        }
    }

    fn refused(&self, code: u16, body: &[u8], truncated: bool) -> ProxyError {
        ProxyError {
            target: self.target,
            kind: ErrorKind::Refused { code },
            status_line: self.status_line().unwrap_or_default().to_string(),
            body: show_body(body, truncated),
        }
    }

    fn error(&self, kind: ErrorKind, shown: &[u8]) -> ProxyError {
        ProxyError {
            target: self.target,
            kind,
            status_line: quote(shown),
            body: String::new(),
        }
    }
}

/// Describes the first bytes from a tunnel that should carry TLS but does not, e.g.
/// konnectivity writing an HTTP error into the tunnel after its 200. `None` when they look like
/// a TLS record (or there are none).
pub fn describe_non_tls(first: &[u8]) -> Option<String> {
    // A record starts with its content type (change_cipher_spec 20 .. heartbeat 24) and the
    // major version 3; an alert is TLS too, and rustls explains it better than raw bytes.
    let tls = match first {
        [] => true,
        [t] => (0x14..=0x18).contains(t),
        [t, major, ..] => (0x14..=0x18).contains(t) && *major == 0x03,
    };
    if tls {
        return None;
    }
    Some(format!(
        "the tunnel delivered \"{}\" instead of TLS",
        quote(first)
    ))
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Whether `buf` is a prefix of, or starts with, `HTTP/1.`.
pub(crate) fn could_be_status_line(buf: &[u8]) -> bool {
    const START: &[u8] = b"HTTP/1.";
    let n = buf.len().min(START.len());
    buf[..n] == START[..n]
}

/// The part of a non-HTTP answer to quote, once enough of it has arrived: up to its first line
/// end, at most `cap` bytes. Also the Kubernetes client's HTTP parser's judge of garbage.
pub(crate) fn garbage_shown(buf: &[u8], cap: usize) -> Option<&[u8]> {
    let window = &buf[..buf.len().min(cap)];
    match window.iter().position(|&b| b == b'\n') {
        Some(nl) => Some(&buf[..=nl]),
        None if buf.len() >= cap => Some(window),
        None => None,
    }
}

/// The code of an `HTTP/1.0` or `HTTP/1.1` status line: version, space, three digits, then
/// nothing or a space and a reason.
fn parse_status(line: &[u8]) -> Option<u16> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let (digits, reason) = rest.split_at_checked(3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(reason.is_empty() || reason[0] == b' ') {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    (100..600).contains(&code).then_some(code)
}

/// How the body after `header` (without its blank line) ends; `Transfer-Encoding` wins over
/// `Content-Length`, as RFC 9112 section 6.3 says.
fn framing(header: &[u8]) -> Framing {
    let mut length = None;
    for line in header.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        let value = trim_cr(&line[colon + 1..]).trim_ascii();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or(value);
            if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Framing::Chunked;
            }
        } else if name.eq_ignore_ascii_case(b"content-length") && length.is_none() {
            length = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
        }
    }
    length.map_or(Framing::Close, Framing::Length)
}

/// The body bytes worth showing from `after` (the bytes after the header), whether more were
/// cut off by [`MAX_BODY_SHOWN`], and whether nothing more needs to arrive to show them.
fn body(framing: Framing, after: &[u8]) -> (Vec<u8>, bool, bool) {
    match framing {
        Framing::Length(n) => {
            let avail = after.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let shown = avail.min(MAX_BODY_SHOWN);
            let truncated = n > MAX_BODY_SHOWN as u64 && avail >= MAX_BODY_SHOWN;
            let complete = avail as u64 == n || truncated;
            (after[..shown].to_vec(), truncated, complete)
        }
        Framing::Close => {
            let truncated = after.len() > MAX_BODY_SHOWN;
            let shown = after.len().min(MAX_BODY_SHOWN);
            (after[..shown].to_vec(), truncated, truncated)
        }
        Framing::Chunked => {
            let (mut out, complete) = dechunk(after);
            let truncated = out.len() > MAX_BODY_SHOWN;
            out.truncate(MAX_BODY_SHOWN);
            (out, truncated, complete || truncated)
        }
    }
}

/// Decodes a chunked body as far as it has arrived, stopping once more than
/// [`MAX_BODY_SHOWN`] bytes are out. Returns the data and whether the last chunk was seen.
/// Framing too broken to read on is shown raw from where it broke, and that raw rest, like a
/// body without a length, is over only at the close or once it fills the cap: deciding as soon
/// as the break is seen would show whatever part of the rest had happened to arrive, so the same
/// answer would read differently depending on how the proxy's writes were split.
fn dechunk(mut data: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    while out.len() <= MAX_BODY_SHOWN {
        let Some(nl) = data.iter().position(|&b| b == b'\n') else {
            if data.len() > MAX_CHUNK_LINE {
                out.extend_from_slice(data);
            }
            return (out, false);
        };
        let line = trim_cr(&data[..nl]);
        let digits = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or(line)
            .trim_ascii();
        let size = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.len() <= 15)
            .and_then(|d| usize::from_str_radix(d, 16).ok());
        let Some(size) = size else {
            out.extend_from_slice(data);
            return (out, false);
        };
        data = &data[nl + 1..];
        if size == 0 {
            return (out, true);
        }
        if data.len() < size {
            out.extend_from_slice(data);
            return (out, false);
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size..];
        if let Some(rest) = data
            .strip_prefix(b"\r\n")
            .or_else(|| data.strip_prefix(b"\n"))
        {
            data = rest;
        } else if data.is_empty() || data == b"\r" {
            return (out, false);
        } else {
            out.extend_from_slice(data);
            return (out, false);
        }
    }
    (out, true)
}

/// `bytes` for quoting in an error: escaped, at most [`QUOTED_CHARS`] characters, `...` when
/// cut.
fn quote(bytes: &[u8]) -> String {
    escape::for_log(bytes, QUOTED_CHARS)
}

/// A refusal's body for the error: whitespace runs collapsed to one space, the rest escaped,
/// `...` when `truncated`.
fn show_body(bytes: &[u8], truncated: bool) -> String {
    // The cap may split the last character; that is not a broken byte in the answer.
    let cut_char = match bytes.utf8_chunks().last() {
        Some(last) if truncated => std::str::from_utf8(last.invalid())
            .err()
            .filter(|e| e.error_len().is_none())
            .map_or(0, |_| last.invalid().len()),
        _ => 0,
    };
    let words: Vec<&[u8]> = bytes[..bytes.len() - cut_char]
        .split(u8::is_ascii_whitespace)
        .filter(|w| !w.is_empty())
        .collect();
    let mut out = escape::for_log(&words.join(&b' '), usize::MAX);
    if truncated {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> SocketAddr {
        "10.96.12.34:24224".parse().unwrap()
    }

    /// An answer as Go's `http.Error` writes it (konnectivity from v0.34).
    fn go_error(status: &str, body: &str) -> Vec<u8> {
        let body = format!("{body}\n");
        format!(
            "{status}\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: \
             nosniff\r\nDate: Tue, 04 Mar 2025 10:00:00 GMT\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    const TINYPROXY_403_BODY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n\
        <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.1//EN\" \
        \"http://www.w3.org/TR/xhtml11/DTD/xhtml11.dtd\">\n\
        <html>\n<head><title>403 Access violation</title></head>\n<body>\n\
        <h1>Access violation</h1>\n\
        <p>The CONNECT method not allowed with the port you tried to use.</p>\n\
        <hr />\n<p><em>Generated by tinyproxy version 1.11.1.</em></p>\n</body>\n</html>\n";

    fn tinyproxy(status: &str, extra: &str, body: &str) -> Vec<u8> {
        format!(
            "{status}\r\nServer: tinyproxy/1.11.1\r\nContent-Type: text/html\r\n{extra}\
             Connection: close\r\n\r\n{body}"
        )
        .into_bytes()
    }

    const TLS_SERVER_HELLO: &[u8] = &[
        0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0x00, 0x00, 0x76, 0x03, 0x03,
    ];

    fn cat(a: &[u8], b: &[u8]) -> Vec<u8> {
        [a, b].concat()
    }

    fn refused(prefix: &str) -> String {
        format!("proxy refused CONNECT 10.96.12.34:24224: {prefix}")
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Want {
        Open(usize),
        NeedMore,
        Err(String),
    }

    fn want(p: &Parsed) -> Want {
        match p {
            Parsed::NeedMore => Want::NeedMore,
            Parsed::Open { header_len } => Want::Open(*header_len),
            Parsed::Refused(e) => Want::Err(e.to_string()),
        }
    }

    struct Case {
        name: &'static str,
        answer: Vec<u8>,
        /// `feed` on the whole answer.
        fed: Want,
        /// `finish` on the whole answer (the proxy closed after sending it).
        at_eof: String,
    }

    fn cases() -> Vec<Case> {
        let chunked_200 = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let tiny_200 =
            b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n";
        let established = b"HTTP/1.1 200 Connection Established\r\n\r\n";
        let long_body = "x".repeat(2000);
        let mut big_header = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big_header.len() <= MAX_HEADER {
            big_header
                .extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        vec![
            Case {
                name: "konnectivity <= v0.30: chunked 200, raw TLS follows",
                answer: cat(chunked_200, &[0x16, 0x03, 0x01]),
                fed: Want::Open(chunked_200.len()),
                at_eof: "proxy closed the connection after answering CONNECT 10.96.12.34:24224 \
                         with only \"HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n\
                         \\x16\\x03\\x01\""
                    .into(),
            },
            Case {
                name: "konnectivity v0.31-v0.33: 200 Connection Established, ServerHello follows",
                answer: cat(established, TLS_SERVER_HELLO),
                fed: Want::Open(established.len()),
                at_eof: "proxy closed the connection after answering CONNECT 10.96.12.34:24224 \
                         with only \"HTTP/1.1 200 Connection Established\\r\\n\\r\\n\\x16\\x03\
                         \\x03\\x00z\\x02\\x00\\x00v\\x03\\x03\""
                    .into(),
            },
            Case {
                name: "tinyproxy 200, HTTP/1.0",
                answer: tiny_200.to_vec(),
                fed: Want::Open(tiny_200.len()),
                at_eof: "proxy closed the connection after answering CONNECT 10.96.12.34:24224 \
                         with only \"HTTP/1.0 200 Connection established\\r\\nProxy-agent: \
                         tinyproxy/1.11.1\\r\\n\\r\\n\""
                    .into(),
            },
            Case {
                name: "bare LF line ends, tunnel bytes after the header",
                answer: b"HTTP/1.1 200 OK\nX-A: b\n\n\x16\x03\x03".to_vec(),
                fed: Want::Open(24),
                at_eof: "proxy closed the connection after answering CONNECT 10.96.12.34:24224 \
                         with only \"HTTP/1.1 200 OK\\nX-A: b\\n\\n\\x16\\x03\\x03\""
                    .into(),
            },
            Case {
                name: "Content-Length on a 200 is ignored",
                answer: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nab".to_vec(),
                fed: Want::Open(40),
                at_eof: "proxy closed the connection after answering CONNECT 10.96.12.34:24224 \
                         with only \"HTTP/1.1 200 OK\\r\\nContent-Length: 100\\r\\n\\r\\nab\""
                    .into(),
            },
            Case {
                name: "any 2xx opens, status without reason",
                answer: b"HTTP/1.1 204\r\n\r\n".to_vec(),
                fed: Want::Open(16),
                at_eof: "proxy closed the connection after answering CONNECT 10.96.12.34:24224 \
                         with only \"HTTP/1.1 204\\r\\n\\r\\n\""
                    .into(),
            },
            Case {
                name: "299 is still a 2xx",
                answer: b"HTTP/1.1 299 Odd\r\n\r\n".to_vec(),
                fed: Want::Open(20),
                at_eof: "proxy closed the connection after answering CONNECT 10.96.12.34:24224 \
                         with only \"HTTP/1.1 299 Odd\\r\\n\\r\\n\""
                    .into(),
            },
            Case {
                name: "300 is not",
                answer: b"HTTP/1.1 300 Multiple Choices\r\nContent-Length: 0\r\n\r\n".to_vec(),
                fed: Want::Err(refused("\"HTTP/1.1 300 Multiple Choices\"")),
                at_eof: refused("\"HTTP/1.1 300 Multiple Choices\""),
            },
            Case {
                name: "Transfer-Encoding wins over Content-Length",
                answer: b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\
                          Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                    .to_vec(),
                fed: Want::Err(refused("\"HTTP/1.1 502 Bad Gateway\": hello")),
                at_eof: refused("\"HTTP/1.1 502 Bad Gateway\": hello"),
            },
            Case {
                name: "tinyproxy 403 with HTML body and no length: complete at EOF",
                answer: tinyproxy("HTTP/1.0 403 Access violation", "", TINYPROXY_403_BODY),
                fed: Want::NeedMore,
                at_eof: refused(
                    "\"HTTP/1.0 403 Access violation\": <?xml version=\"1.0\" encoding=\"UTF-8\" \
                     ?> <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.1//EN\" \
                     \"http://www.w3.org/TR/xhtml11/DTD/xhtml11.dtd\"> <html> <head><title>403 \
                     Access violation</title></head> <body> <h1>Access violation</h1> <p>The \
                     CONNECT method not allowed with the port you tried to use.</p> <hr /> \
                     <p><em>Generated by tinyproxy version 1.11.1.</em></p> </body> </html>",
                ),
            },
            Case {
                name: "tinyproxy 407",
                answer: tinyproxy(
                    "HTTP/1.0 407 Proxy Authentication Required",
                    "Proxy-Authenticate: Basic realm=\"tinyproxy\"\r\n",
                    "<html><body><h1>Proxy Authentication Required</h1></body></html>\n",
                ),
                fed: Want::NeedMore,
                at_eof: refused(
                    "\"HTTP/1.0 407 Proxy Authentication Required\": <html><body><h1>Proxy \
                     Authentication Required</h1></body></html>",
                ),
            },
            Case {
                name: "konnectivity >= v0.34: 503 no tunnels",
                answer: go_error(
                    "HTTP/1.1 503 Service Unavailable",
                    "currently no tunnels available",
                ),
                fed: Want::Err(refused(
                    "\"HTTP/1.1 503 Service Unavailable\": currently no tunnels available",
                )),
                at_eof: refused(
                    "\"HTTP/1.1 503 Service Unavailable\": currently no tunnels available",
                ),
            },
            Case {
                name: "konnectivity >= v0.34: 504 dial timeout",
                answer: go_error("HTTP/1.1 504 Gateway Timeout", "Backend dial timeout"),
                fed: Want::Err(refused(
                    "\"HTTP/1.1 504 Gateway Timeout\": Backend dial timeout",
                )),
                at_eof: refused("\"HTTP/1.1 504 Gateway Timeout\": Backend dial timeout"),
            },
            Case {
                name: "konnectivity >= v0.34: 502 dial failure",
                answer: go_error(
                    "HTTP/1.1 502 Bad Gateway",
                    "failed to dial 10.96.12.34:24224: connection refused",
                ),
                fed: Want::Err(refused(
                    "\"HTTP/1.1 502 Bad Gateway\": failed to dial 10.96.12.34:24224: connection \
                     refused",
                )),
                at_eof: refused(
                    "\"HTTP/1.1 502 Bad Gateway\": failed to dial 10.96.12.34:24224: connection \
                     refused",
                ),
            },
            Case {
                name: "500 with a chunked body",
                answer: b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n\
                          e\r\ncurrently no t\r\n10;x=y\r\nunnels available\r\n0\r\n\r\n"
                    .to_vec(),
                fed: Want::Err(refused(
                    "\"HTTP/1.1 500 Internal Server Error\": currently no tunnels available",
                )),
                at_eof: refused(
                    "\"HTTP/1.1 500 Internal Server Error\": currently no tunnels available",
                ),
            },
            Case {
                // Found by fuzz/ (connect): deciding at the break showed whatever part of the
                // rest had arrived, so a later read changed the message.
                name: "chunked body whose framing breaks: the rest shows raw, complete at EOF",
                answer: b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
                          6\r\nno tunXnels\r\n"
                    .to_vec(),
                fed: Want::NeedMore,
                at_eof: refused("\"HTTP/1.1 503 Service Unavailable\": no tunXnels"),
            },
            Case {
                name: "chunked body that is not chunked at all: raw, complete at EOF",
                answer: b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n\
                          dial tcp: connection refused\n"
                    .to_vec(),
                fed: Want::NeedMore,
                at_eof: refused("\"HTTP/1.1 502 Bad Gateway\": dial tcp: connection refused"),
            },
            Case {
                name: "refusal with Content-Length: 0",
                answer: b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_vec(),
                fed: Want::Err(refused("\"HTTP/1.1 403 Forbidden\"")),
                at_eof: refused("\"HTTP/1.1 403 Forbidden\""),
            },
            Case {
                name: "body over 512 bytes is cut",
                answer: format!(
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2000\r\n\r\n{long_body}"
                )
                .into_bytes(),
                fed: Want::Err(refused(&format!(
                    "\"HTTP/1.1 503 Service Unavailable\": {}...",
                    "x".repeat(MAX_BODY_SHOWN)
                ))),
                at_eof: refused(&format!(
                    "\"HTTP/1.1 503 Service Unavailable\": {}...",
                    "x".repeat(MAX_BODY_SHOWN)
                )),
            },
            Case {
                name: "header over the cap",
                answer: big_header,
                fed: Want::Err(
                    "proxy answer header exceeds 16 KiB (CONNECT 10.96.12.34:24224), starting \
                     \"HTTP/1.1 200 OK\""
                        .into(),
                ),
                at_eof: "proxy answer header exceeds 16 KiB (CONNECT 10.96.12.34:24224), \
                         starting \"HTTP/1.1 200 OK\""
                    .into(),
            },
            Case {
                name: "garbage: an SSH server",
                answer: b"SSH-2.0-OpenSSH_9.6\r\nmore".to_vec(),
                fed: Want::Err(
                    "proxy answered CONNECT 10.96.12.34:24224 with something other than an \
                     HTTP/1.x status line: \"SSH-2.0-OpenSSH_9.6\\r\\n\""
                        .into(),
                ),
                at_eof: "proxy answered CONNECT 10.96.12.34:24224 with something other than an \
                         HTTP/1.x status line: \"SSH-2.0-OpenSSH_9.6\\r\\n\""
                    .into(),
            },
            Case {
                name: "garbage: a TLS alert, reported at EOF",
                answer: vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46],
                fed: Want::NeedMore,
                at_eof: "proxy answered CONNECT 10.96.12.34:24224 with something other than an \
                         HTTP/1.x status line: \"\\x15\\x03\\x03\\x00\\x02\\x02F\""
                    .into(),
            },
            Case {
                name: "HTTP/2 status line",
                answer: b"HTTP/2 200\r\n\r\n".to_vec(),
                fed: Want::Err(
                    "proxy answered CONNECT 10.96.12.34:24224 with something other than an \
                     HTTP/1.x status line: \"HTTP/2 200\\r\\n\""
                        .into(),
                ),
                at_eof: "proxy answered CONNECT 10.96.12.34:24224 with something other than an \
                         HTTP/1.x status line: \"HTTP/2 200\\r\\n\""
                    .into(),
            },
            Case {
                name: "malformed code",
                answer: b"HTTP/1.1 2OO OK\r\n\r\n".to_vec(),
                fed: Want::Err(
                    "proxy answered CONNECT 10.96.12.34:24224 with something other than an \
                     HTTP/1.x status line: \"HTTP/1.1 2OO OK\\r\\n\""
                        .into(),
                ),
                at_eof: "proxy answered CONNECT 10.96.12.34:24224 with something other than an \
                         HTTP/1.x status line: \"HTTP/1.1 2OO OK\\r\\n\""
                    .into(),
            },
            Case {
                name: "EOF before anything",
                answer: Vec::new(),
                fed: Want::NeedMore,
                at_eof: "proxy closed the connection without answering CONNECT \
                         10.96.12.34:24224"
                    .into(),
            },
            Case {
                name: "EOF mid-header after a 200 status line",
                answer: b"HTTP/1.1 200 OK\r\nTransfer-Enc".to_vec(),
                fed: Want::NeedMore,
                at_eof: "proxy closed the connection after answering CONNECT 10.96.12.34:24224 \
                         with only \"HTTP/1.1 200 OK\\r\\nTransfer-Enc\""
                    .into(),
            },
            Case {
                name: "EOF mid-status-line",
                answer: b"HTTP/1.1 50".to_vec(),
                fed: Want::NeedMore,
                at_eof: "proxy closed the connection after answering CONNECT 10.96.12.34:24224 \
                         with only \"HTTP/1.1 50\""
                    .into(),
            },
            Case {
                name: "EOF mid-header after a 503 status line",
                answer: b"HTTP/1.1 503 Service Unavailable\r\nContent-Ty".to_vec(),
                fed: Want::NeedMore,
                at_eof: refused("\"HTTP/1.1 503 Service Unavailable\""),
            },
            Case {
                name: "EOF mid-body",
                answer: b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 31\r\n\r\ncurrently"
                    .to_vec(),
                fed: Want::NeedMore,
                at_eof: refused("\"HTTP/1.1 503 Service Unavailable\": currently"),
            },
        ]
    }

    #[test]
    fn proxy_answers_whole() {
        for c in cases() {
            let mut r = ConnectResponse::new(target());
            assert_eq!(want(&r.feed(&c.answer)), c.fed, "{}", c.name);
            let mut r = ConnectResponse::new(target());
            assert_eq!(r.finish(&c.answer).to_string(), c.at_eof, "{}", c.name);
        }
    }

    /// Feeding every prefix, to one parser and to a fresh one: `NeedMore` until the answer is
    /// decided, then the final result for every longer prefix.
    #[test]
    fn proxy_answers_split_at_every_byte() {
        for c in cases() {
            let mut incremental = ConnectResponse::new(target());
            let mut decided = None;
            for k in 0..=c.answer.len() {
                let prefix = &c.answer[..k];
                let got = want(&incremental.feed(prefix));
                if c.answer.len() < 2048 {
                    let fresh = want(&ConnectResponse::new(target()).feed(prefix));
                    assert_eq!(got, fresh, "{} at {k}", c.name);
                }
                match (&decided, got) {
                    (None, Want::NeedMore) => {}
                    (None, got) => {
                        assert_eq!(got, c.fed, "{}: first decision at {k}", c.name);
                        decided = Some(k);
                    }
                    (Some(at), got) => {
                        assert_eq!(got, c.fed, "{}: at {k}, decided at {at}", c.name)
                    }
                }
            }
            if c.fed == Want::NeedMore {
                assert_eq!(decided, None, "{}", c.name);
            } else {
                assert!(decided.is_some(), "{}", c.name);
            }
            // The parser that saw every prefix gives the same EOF error as a fresh one.
            assert_eq!(
                incremental.finish(&c.answer).to_string(),
                c.at_eof,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn proxy_open_is_decided_at_the_blank_line() {
        let header = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let answer = cat(header, &[0x16, 0x03, 0x01, 0x00, 0x05]);
        let mut r = ConnectResponse::new(target());
        for k in 0..header.len() {
            assert_eq!(r.feed(&answer[..k]), Parsed::NeedMore, "at {k}");
        }
        for k in header.len()..=answer.len() {
            let header_len = header.len();
            assert_eq!(r.feed(&answer[..k]), Parsed::Open { header_len }, "at {k}");
        }
        assert_eq!(r.status_line(), Some("HTTP/1.1 200 OK"));
        assert_eq!(&answer[header.len()..], &[0x16, 0x03, 0x01, 0x00, 0x05]);
    }

    #[test]
    fn proxy_refusal_fields() {
        let table: &[(&[u8], ErrorKind, &str, &str)] = &[
            (
                &go_error(
                    "HTTP/1.1 503 Service Unavailable",
                    "currently no tunnels available",
                ),
                ErrorKind::Refused { code: 503 },
                "HTTP/1.1 503 Service Unavailable",
                "currently no tunnels available",
            ),
            (
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n  a\t\t b\r\n\r\nc\x01\"d\"  ",
                ErrorKind::Refused { code: 407 },
                "HTTP/1.1 407 Proxy Authentication Required",
                "a b c\\x01\"d\"",
            ),
            (
                b"HTTP/1.0 403 Forbidden\r\n\r\n\xff\xfe caf\xc3\xa9",
                ErrorKind::Refused { code: 403 },
                "HTTP/1.0 403 Forbidden",
                "\\xff\\xfe caf\u{e9}",
            ),
            (b"", ErrorKind::Closed, "", ""),
            (b"<html>\n", ErrorKind::NotHttp, "<html>\\n", ""),
        ];
        for (answer, kind, status_line, body) in table {
            let e = ConnectResponse::new(target()).finish(answer);
            assert_eq!(e.kind, *kind, "{answer:?}");
            assert_eq!(e.status_line, *status_line, "{answer:?}");
            assert_eq!(e.body, *body, "{answer:?}");
            assert_eq!(e.target, target());
        }
    }

    #[test]
    fn proxy_body_cut_at_cap_does_not_split_a_character() {
        // 511 ASCII bytes and then a two-byte character straddling the cap.
        let body = format!("{}\u{e9}tail", "a".repeat(MAX_BODY_SHOWN - 1));
        let answer = format!("HTTP/1.1 502 Bad Gateway\r\n\r\n{body}");
        let e = ConnectResponse::new(target()).finish(answer.as_bytes());
        assert_eq!(e.body, format!("{}...", "a".repeat(MAX_BODY_SHOWN - 1)));
    }

    #[test]
    fn proxy_connect_request() {
        let version = env!("CARGO_PKG_VERSION");
        let table = [
            ("10.96.12.34:24224", "10.96.12.34:24224"),
            ("[fd00:10:96::c]:24224", "[fd00:10:96::c]:24224"),
            ("[fe80::1%2]:443", "[fe80::1]:443"),
        ];
        for (addr, authority) in table {
            let got = connect_request(addr.parse().unwrap());
            let expected = format!(
                "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: \
                 audit-forwarder/{version}\r\n\r\n"
            );
            assert_eq!(String::from_utf8(got).unwrap(), expected, "{addr}");
        }
    }

    #[test]
    fn proxy_error_names_ipv6_target_in_brackets() {
        let t: SocketAddr = "[fd00::1]:24224".parse().unwrap();
        let e = ConnectResponse::new(t).finish(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert_eq!(
            e.to_string(),
            "proxy refused CONNECT [fd00::1]:24224: \"HTTP/1.1 503 Service Unavailable\""
        );
    }

    #[test]
    fn proxy_describe_non_tls() {
        let mut long = b"HTTP/1.1 502 Bad Gateway\r\n".to_vec();
        long.resize(400, b'z');
        let table: &[(&[u8], Option<String>)] = &[
            (TLS_SERVER_HELLO, None),
            (&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28], None),
            (&[0x16], None),
            (&[], None),
            (
                &go_error(
                    "HTTP/1.1 503 Service Unavailable",
                    "currently no tunnels available",
                )[..50],
                Some(
                    "the tunnel delivered \"HTTP/1.1 503 Service Unavailable\\r\\nContent-Type: \
                     te\" instead of TLS"
                        .into(),
                ),
            ),
            (
                b"\x16\x04",
                Some("the tunnel delivered \"\\x16\\x04\" instead of TLS".into()),
            ),
            (
                &long,
                Some(format!(
                    "the tunnel delivered \"HTTP/1.1 502 Bad Gateway\\r\\n{}...\" instead of TLS",
                    "z".repeat(QUOTED_CHARS - 28)
                )),
            ),
        ];
        for (first, expected) in table {
            assert_eq!(describe_non_tls(first), *expected, "{first:?}");
        }
    }
}
