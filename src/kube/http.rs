//! The HTTP/1.1 client codec for the Kubernetes API, sans-IO: the bytes of one `GET` request
//! ([`request`]) and a parser that turns the bytes of the answer, as they arrive, into one
//! [`Response`] ([`ResponseParser`]). Sockets, TLS and timeouts belong to the caller.
//!
//! The parser follows RFC 9112 for what the apiserver (and the proxies in front of some) send:
//! `Content-Length`, `chunked` (extensions ignored, trailers skipped), a body read to EOF when
//! neither is given, interim 1xx answers skipped, no body for 204 and 304. It is strict where
//! leniency lets a peer smuggle or confuse framing (conflicting lengths, obs-fold, a
//! `Transfer-Encoding` other than `chunked`), and every buffer a peer can grow has a cap.

use std::fmt;

use crate::escape;
use crate::net::proxy::{could_be_status_line, garbage_shown};

/// Cap on one header block (status line, header fields, blank line), and on a chunked body's
/// trailer section. The apiserver sends well under 1 KiB; proxies add a few lines.
pub const MAX_HEAD: usize = 64 * 1024;

/// Cap on one chunk-size line (size and extensions). Nobody sends extensions to us; the cap only
/// bounds what a broken peer can make us buffer.
const MAX_CHUNK_LINE: usize = 4096;

/// Interim (1xx) answers skipped before the final one; more means a peer that never answers.
const MAX_INTERIM: u32 = 16;

/// Characters of a status line, header line or non-HTTP answer quoted in an error.
const QUOTED: usize = 120;

/// How the request authenticates. Client-certificate authentication happens in TLS, so its
/// requests carry no `Authorization` header ([`Auth::None`]).
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Bearer(String),
    Basic { username: String, password: String },
}

// The credentials never reach a log through `{:?}`.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("Auth::None"),
            Auth::Bearer(_) => f.write_str("Auth::Bearer(<redacted>)"),
            Auth::Basic { username, .. } => {
                write!(
                    f,
                    "Auth::Basic {{ username: {username:?}, password: <redacted> }}"
                )
            }
        }
    }
}

/// The bytes of `GET <path>` for the server named by `host_header` (`host` or `host:port`, as
/// the kubeconfig's `server` URL has it). An input that would break out of its place in the
/// request (a line break, any control character, a space in the path or host) is an error
/// naming the input but never quoting a credential. Callers trim token files first, as
/// client-go does: a token read from a file ends with a newline more often than not.
pub fn request(host_header: &str, path: &str, auth: &Auth) -> Result<Vec<u8>, String> {
    visible("the request path", path, false, true)?;
    if !path.starts_with('/') {
        return Err(format!(
            "the request path \"{}\" does not start with '/'",
            escape::for_log(path.as_bytes(), QUOTED)
        ));
    }
    visible("the Host header", host_header, false, true)?;
    if host_header.is_empty() {
        return Err("the Host header is empty".into());
    }
    let authorization = match auth {
        Auth::None => None,
        Auth::Bearer(token) => {
            visible("the bearer token", token, false, false)?;
            if token.is_empty() {
                return Err("the bearer token is empty".into());
            }
            Some(format!("Bearer {token}"))
        }
        Auth::Basic { username, password } => {
            visible("the basic-auth username", username, true, true)?;
            visible("the basic-auth password", password, true, false)?;
            // RFC 7617: the first colon ends the user-id, so one inside it cannot be sent.
            if username.contains(':') {
                return Err("the basic-auth username contains ':', which RFC 7617 forbids".into());
            }
            let pair = format!("{username}:{password}");
            Some(format!("Basic {}", base64_encode(pair.as_bytes())))
        }
    };
    let mut out = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nAccept: application/json\r\n\
         User-Agent: audit-forwarder/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(value) = authorization {
        out.push_str("Authorization: ");
        out.push_str(&value);
        out.push_str("\r\n");
    }
    // One request per connection: the checks run once a minute, so keep-alive would save one
    // TLS handshake a minute at the price of detecting stale pooled connections and the cases
    // where the server closes first. With `close` the server ends every body it does not frame
    // by closing, and a connection never outlives the answer it carries.
    out.push_str("Connection: close\r\n\r\n");
    Ok(out.into_bytes())
}

/// Refuses control characters (CR and LF above all: header injection) and, where `space` is
/// false, spaces. A secret (`quote` false) is described by position only.
fn visible(what: &str, value: &str, space: bool, quote: bool) -> Result<(), String> {
    let bad = value
        .bytes()
        .position(|b| b.is_ascii_control() || (b == b' ' && !space));
    match bad {
        None => Ok(()),
        Some(at) if quote => Err(format!(
            "{what} \"{}\" contains byte {:#04x} at offset {at}, which cannot go into an HTTP \
             request",
            escape::for_log(value.as_bytes(), QUOTED),
            value.as_bytes()[at]
        )),
        Some(at) => Err(format!(
            "{what} contains byte {:#04x} at offset {at}, which cannot go into an HTTP request",
            value.as_bytes()[at]
        )),
    }
}

/// Standard base64 with padding (RFC 4648 section 4), for the basic-auth credentials.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The reason phrase, escaped for logs (it comes from the peer).
    pub reason: String,
    /// Names as sent; look them up with [`Response::header`]. Values are trimmed, and bytes that
    /// are not UTF-8 are replaced.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name`, compared without regard to case.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `403 Forbidden`, for messages.
    pub fn status_line(&self) -> String {
        if self.reason.is_empty() {
            self.status.to_string()
        } else {
            format!("{} {}", self.status, self.reason)
        }
    }
}

/// What was wrong with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It does not start with `HTTP/1.0` or `HTTP/1.1` (a TLS alert, a banner, another protocol).
    NotHttp,
    BadStatusLine,
    /// A header line without a valid name, with control characters, or folded (obs-fold).
    BadHeader,
    HeadTooLarge,
    /// Lengths that contradict each other or a transfer coding we cannot read.
    BadFraming,
    BodyTooLarge,
    BadChunk,
    /// The peer closed before the answer was complete.
    CutShort,
    /// The parser was used after it had returned its answer.
    AlreadyComplete,
}

/// A broken answer: the fault, what exactly was found (escaped for logs), and the status line
/// when it had arrived (escaped too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub fault: Fault,
    pub detail: String,
    pub status_line: Option<String>,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)?;
        match &self.status_line {
            Some(line) => write!(f, " (answer \"{line}\")"),
            None => Ok(()),
        }
    }
}

/// The head of the answer being read, kept for its body's state and for errors.
#[derive(Debug)]
struct Head {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    shown: String,
}

#[derive(Debug)]
enum Framing {
    Length {
        remaining: u64,
    },
    /// Read until the peer closes.
    Close,
    Chunked(Chunk),
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Waiting for a chunk-size line.
    Size,
    Data {
        remaining: u64,
    },
    /// Waiting for the line end after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; `seen` bytes of them so far.
    Trailers {
        seen: usize,
    },
}

#[derive(Debug)]
enum State {
    /// Waiting for a header block; `scanned` bytes of the buffer hold complete lines that are
    /// not the end of the block (so that a block arriving byte by byte is not searched again
    /// from its start).
    Head {
        scanned: usize,
    },
    Body {
        head: Head,
        framing: Framing,
        body: Vec<u8>,
    },
    Done,
}

enum Step {
    NeedMore,
    Again,
    Complete(Response),
}

/// Reads one answer from the bytes of a connection, fed as they arrive.
#[derive(Debug)]
pub struct ResponseParser {
    body_cap: usize,
    /// Received and not yet consumed.
    buf: Vec<u8>,
    state: State,
    interim: u32,
}

impl ResponseParser {
    /// A parser that refuses bodies over `body_cap` bytes.
    pub fn new(body_cap: usize) -> ResponseParser {
        ResponseParser {
            body_cap,
            buf: Vec::new(),
            state: State::Head { scanned: 0 },
            interim: 0,
        }
    }

    /// Takes the next bytes of the connection; `Some` once the answer is complete. Bytes after
    /// the answer are ignored: with `Connection: close` there is nothing after it.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<Response>, HttpError> {
        if matches!(self.state, State::Done) {
            return Err(already_complete());
        }
        self.buf.extend_from_slice(bytes);
        loop {
            match self.step()? {
                Step::NeedMore => return Ok(None),
                Step::Again => {}
                Step::Complete(response) => {
                    self.state = State::Done;
                    self.buf = Vec::new();
                    return Ok(Some(response));
                }
            }
        }
    }

    /// The peer closed: completes a body read to EOF; anything else still open was cut short.
    pub fn eof(&mut self) -> Result<Response, HttpError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Done => Err(already_complete()),
            State::Head { .. } if self.buf.is_empty() && self.interim == 0 => Err(HttpError {
                fault: Fault::CutShort,
                detail: "the connection closed before any answer".into(),
                status_line: None,
            }),
            State::Head { .. } if self.buf.is_empty() => Err(HttpError {
                fault: Fault::CutShort,
                detail: format!(
                    "the connection closed after {} interim (1xx) answer(s) and before the final \
                     one",
                    self.interim
                ),
                status_line: None,
            }),
            State::Head { .. } if !could_be_status_line(&self.buf) => Err(not_http(&self.buf)),
            State::Head { .. } => Err(HttpError {
                fault: Fault::CutShort,
                detail: format!(
                    "the connection closed inside the header block, after {} bytes",
                    self.buf.len()
                ),
                status_line: Some(quote(first_line(&self.buf))),
            }),
            State::Body {
                head,
                framing,
                body,
            } => {
                let detail = match framing {
                    Framing::Close => return Ok(finish(head, body)),
                    Framing::Length { remaining } => format!(
                        "the connection closed after {} of {} body bytes",
                        body.len(),
                        body.len() as u64 + remaining
                    ),
                    Framing::Chunked(Chunk::Trailers { .. }) => {
                        "the connection closed inside the chunked body's trailer section".into()
                    }
                    Framing::Chunked(_) => format!(
                        "the connection closed inside the chunked body, after {} bytes of data",
                        body.len()
                    ),
                };
                Err(HttpError {
                    fault: Fault::CutShort,
                    detail,
                    status_line: Some(head.shown),
                })
            }
        }
    }

    fn step(&mut self) -> Result<Step, HttpError> {
        let body_cap = self.body_cap;
        match &mut self.state {
            State::Done => Err(already_complete()),
            State::Head { scanned } => {
                if !could_be_status_line(&self.buf) {
                    // Wait for a whole first line (or enough of one) so the error quotes the
                    // same bytes however the answer was split.
                    return match garbage_shown(&self.buf, QUOTED) {
                        Some(shown) => Err(not_http(shown)),
                        None => Ok(Step::NeedMore),
                    };
                }
                let Some(end) = head_end(&self.buf, scanned) else {
                    if self.buf.len() > MAX_HEAD {
                        return Err(head_too_large(&self.buf));
                    }
                    return Ok(Step::NeedMore);
                };
                if end > MAX_HEAD {
                    return Err(head_too_large(&self.buf));
                }
                let head = parse_head(&self.buf[..end])?;
                self.buf.drain(..end);
                self.state = State::Head { scanned: 0 };
                if (100..200).contains(&head.status) {
                    // 101 would switch protocols, which this client never asks for.
                    self.interim += 1;
                    if head.status == 101 || self.interim > MAX_INTERIM {
                        return Err(HttpError {
                            fault: Fault::BadStatusLine,
                            detail: format!(
                                "unexpected interim answer {} (number {})",
                                head.status, self.interim
                            ),
                            status_line: Some(head.shown),
                        });
                    }
                    return Ok(Step::Again);
                }
                let framing = framing(&head, body_cap)?;
                if let Framing::Length { remaining: 0 } = framing {
                    return Ok(Step::Complete(finish(head, Vec::new())));
                }
                self.state = State::Body {
                    head,
                    framing,
                    body: Vec::new(),
                };
                Ok(Step::Again)
            }
            State::Body {
                head,
                framing,
                body,
            } => {
                let done = match framing {
                    Framing::Length { remaining } => take(&mut self.buf, body, remaining),
                    Framing::Close => {
                        if body.len() + self.buf.len() > body_cap {
                            return Err(HttpError {
                                fault: Fault::BodyTooLarge,
                                detail: format!(
                                    "the body (read to EOF) exceeds the cap of {body_cap} bytes"
                                ),
                                status_line: Some(head.shown.clone()),
                            });
                        }
                        body.append(&mut self.buf);
                        return Ok(Step::NeedMore);
                    }
                    Framing::Chunked(chunk) => {
                        match chunked(&mut self.buf, chunk, body, body_cap, &head.shown)? {
                            Some(done) => done,
                            None => return Ok(Step::Again),
                        }
                    }
                };
                if !done {
                    return Ok(Step::NeedMore);
                }
                let State::Body { head, body, .. } =
                    std::mem::replace(&mut self.state, State::Done)
                else {
                    unreachable!("matched State::Body above");
                };
                Ok(Step::Complete(finish(head, body)))
            }
        }
    }
}

/// Moves up to `remaining` bytes from `buf` to `body`; whether `remaining` reached zero.
fn take(buf: &mut Vec<u8>, body: &mut Vec<u8>, remaining: &mut u64) -> bool {
    let n = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
    body.extend_from_slice(&buf[..n]);
    buf.drain(..n);
    *remaining -= n as u64;
    *remaining == 0
}

/// One step of a chunked body: `Some(true)` when the body is over, `Some(false)` when more
/// bytes are needed, `None` when the state moved on and there may be more to do.
fn chunked(
    buf: &mut Vec<u8>,
    chunk: &mut Chunk,
    body: &mut Vec<u8>,
    body_cap: usize,
    shown: &str,
) -> Result<Option<bool>, HttpError> {
    let error = |fault, detail| HttpError {
        fault,
        detail,
        status_line: Some(shown.to_string()),
    };
    match chunk {
        Chunk::Size => {
            let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err(error(Fault::BadChunk, chunk_line_too_long(buf)));
                }
                return Ok(Some(false));
            };
            if nl > MAX_CHUNK_LINE {
                return Err(error(Fault::BadChunk, chunk_line_too_long(buf)));
            }
            let line = trim_cr(&buf[..nl]);
            let size = chunk_size(line).map_err(|e| error(Fault::BadChunk, e))?;
            buf.drain(..=nl);
            *chunk = if size == 0 {
                Chunk::Trailers { seen: 0 }
            } else {
                let total = (body.len() as u64).saturating_add(size);
                if total > body_cap as u64 {
                    return Err(error(
                        Fault::BodyTooLarge,
                        format!(
                            "the chunked body reaches {total} bytes, over the cap of {body_cap} \
                             bytes"
                        ),
                    ));
                }
                Chunk::Data { remaining: size }
            };
            Ok(None)
        }
        Chunk::Data { remaining } => {
            if take(buf, body, remaining) {
                *chunk = Chunk::DataEnd;
                Ok(None)
            } else {
                Ok(Some(false))
            }
        }
        Chunk::DataEnd => {
            let n = match buf.as_slice() {
                [] | [b'\r'] => return Ok(Some(false)),
                [b'\r', b'\n', ..] => 2,
                [b'\n', ..] => 1,
                [b, ..] => {
                    return Err(error(
                        Fault::BadChunk,
                        format!(
                            "a chunk's data is followed by byte {b:#04x} instead of its line \
                             end (chunk size wrong?), after {} bytes of data",
                            body.len()
                        ),
                    ))
                }
            };
            buf.drain(..n);
            *chunk = Chunk::Size;
            Ok(None)
        }
        Chunk::Trailers { seen } => {
            let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                if *seen + buf.len() > MAX_HEAD {
                    return Err(error(Fault::HeadTooLarge, trailers_too_large()));
                }
                return Ok(Some(false));
            };
            *seen += nl + 1;
            if *seen > MAX_HEAD {
                return Err(error(Fault::HeadTooLarge, trailers_too_large()));
            }
            let empty = trim_cr(&buf[..nl]).is_empty();
            buf.drain(..=nl);
            if empty {
                Ok(Some(true))
            } else {
                Ok(None)
            }
        }
    }
}

/// The size of a chunk-size line: hex digits, then optionally whitespace and `;extensions`,
/// which carry nothing we use.
fn chunk_size(line: &[u8]) -> Result<u64, String> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    let rest = rest.trim_ascii_start();
    if digits.is_empty() || !(rest.is_empty() || rest[0] == b';') {
        return Err(format!(
            "bad chunk-size line \"{}\"",
            escape::for_log(line, QUOTED)
        ));
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = u64::from((d as char).to_digit(16).unwrap_or(0));
        n.checked_mul(16)
            .and_then(|n| n.checked_add(v))
            .ok_or_else(|| {
                format!(
                    "chunk size \"{}\" overflows 64 bits",
                    escape::for_log(digits, QUOTED)
                )
            })
    })
}

fn chunk_line_too_long(buf: &[u8]) -> String {
    format!(
        "a chunk-size line is longer than {MAX_CHUNK_LINE} bytes: \"{}\"",
        quote(first_line(buf))
    )
}

fn trailers_too_large() -> String {
    format!("the chunked body's trailer section exceeds {MAX_HEAD} bytes")
}

/// The end of the header block (just after its blank line), searching from `*scanned`, which
/// is moved past the complete lines seen.
fn head_end(buf: &[u8], scanned: &mut usize) -> Option<usize> {
    while let Some(nl) = buf[*scanned..].iter().position(|&b| b == b'\n') {
        let line = trim_cr(&buf[*scanned..*scanned + nl]);
        let start = *scanned;
        *scanned += nl + 1;
        // An empty first line is not the end of a block; parse_head refuses it as a status line.
        if line.is_empty() && start > 0 {
            return Some(*scanned);
        }
    }
    None
}

/// The status line and header fields of a complete header block.
fn parse_head(block: &[u8]) -> Result<Head, HttpError> {
    let mut lines = block.split(|&b| b == b'\n').map(trim_cr);
    let first = lines.next().unwrap_or_default();
    let shown = quote(first);
    let bad_status = || HttpError {
        fault: Fault::BadStatusLine,
        detail: "bad status line".into(),
        status_line: Some(shown.clone()),
    };
    let (http10, status, reason) = parse_status_line(first).ok_or_else(bad_status)?;
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let bad = |what: &str| HttpError {
            fault: Fault::BadHeader,
            detail: format!("{what}: \"{}\"", quote(line)),
            status_line: Some(shown.clone()),
        };
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(bad("a folded header line (obs-fold, refused by RFC 9112)"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad("a header line without ':'"))?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Err(bad("a header name that is not a token"));
        }
        if value.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
            return Err(bad("a control character in a header value"));
        }
        headers.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    let head = Head {
        status,
        reason: escape::for_log(reason, QUOTED),
        headers,
        shown,
    };
    // RFC 9112 section 6.1: `Transfer-Encoding` in an HTTP/1.0 answer means broken framing.
    if http10 && values(&head, "transfer-encoding").next().is_some() {
        return Err(HttpError {
            fault: Fault::BadFraming,
            detail: "an HTTP/1.0 answer with Transfer-Encoding".into(),
            status_line: Some(head.shown),
        });
    }
    Ok(head)
}

/// `HTTP/1.x SP 3DIGIT [SP reason]`: whether it is 1.0, the code, the reason. A missing space
/// before an empty reason is accepted, as RFC 9112 section 4 asks of recipients.
fn parse_status_line(line: &[u8]) -> Option<(bool, u16, &[u8])> {
    let (http10, rest) = match line.split_at_checked(9)? {
        (b"HTTP/1.1 ", rest) => (false, rest),
        (b"HTTP/1.0 ", rest) => (true, rest),
        _ => return None,
    };
    let (digits, reason) = rest.split_at_checked(3)?;
    let reason = match reason {
        [] => reason,
        [b' ', reason @ ..] => reason,
        _ => return None,
    };
    if !digits.iter().all(u8::is_ascii_digit)
        || reason.iter().any(|&b| b.is_ascii_control() && b != b'\t')
    {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    (100..=599)
        .contains(&code)
        .then_some((http10, code, reason))
}

/// The comma-separated elements of every header called `name`.
fn values<'a>(head: &'a Head, name: &'a str) -> impl Iterator<Item = &'a str> {
    head.headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
}

/// How the body ends (RFC 9112 section 6.3).
fn framing(head: &Head, body_cap: usize) -> Result<Framing, HttpError> {
    let error = |fault, detail| HttpError {
        fault,
        detail,
        status_line: Some(head.shown.clone()),
    };
    if head.status == 204 || head.status == 304 {
        return Ok(Framing::Length { remaining: 0 });
    }
    // Transfer-Encoding overrides Content-Length. Only `chunked` alone is read: any other coding
    // would hand the JSON reader compressed bytes.
    let codings: Vec<&str> = values(head, "transfer-encoding")
        .filter(|c| !c.is_empty())
        .collect();
    if !codings.is_empty() {
        return match codings.as_slice() {
            [c] if c.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked(Chunk::Size)),
            _ => Err(error(
                Fault::BadFraming,
                format!(
                    "unsupported Transfer-Encoding \"{}\"",
                    escape::for_log(codings.join(", ").as_bytes(), QUOTED)
                ),
            )),
        };
    }
    let mut length: Option<u64> = None;
    for v in values(head, "content-length") {
        let n = (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .then(|| v.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| {
                error(
                    Fault::BadFraming,
                    format!(
                        "bad Content-Length \"{}\"",
                        escape::for_log(v.as_bytes(), QUOTED)
                    ),
                )
            })?;
        match length {
            Some(m) if m != n => {
                return Err(error(
                    Fault::BadFraming,
                    format!("conflicting Content-Length values {m} and {n}"),
                ))
            }
            _ => length = Some(n),
        }
    }
    match length {
        Some(n) if n > body_cap as u64 => Err(error(
            Fault::BodyTooLarge,
            format!("Content-Length {n} exceeds the cap of {body_cap} bytes"),
        )),
        Some(n) => Ok(Framing::Length { remaining: n }),
        None => Ok(Framing::Close),
    }
}

fn finish(head: Head, body: Vec<u8>) -> Response {
    Response {
        status: head.status,
        reason: head.reason,
        headers: head.headers,
        body,
    }
}

/// RFC 9110 section 5.6.2 `tchar`.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn not_http(shown: &[u8]) -> HttpError {
    HttpError {
        fault: Fault::NotHttp,
        detail: format!(
            "the answer is not HTTP/1.x: \"{}\"",
            quote(first_line(shown))
        ),
        status_line: None,
    }
}

fn head_too_large(buf: &[u8]) -> HttpError {
    HttpError {
        fault: Fault::HeadTooLarge,
        detail: format!("the header block exceeds {MAX_HEAD} bytes"),
        status_line: Some(quote(first_line(buf))),
    }
}

fn already_complete() -> HttpError {
    HttpError {
        fault: Fault::AlreadyComplete,
        detail: "the answer was already complete".into(),
        status_line: None,
    }
}

/// Up to the first line end, at most [`QUOTED`] bytes, without the CR.
fn first_line(buf: &[u8]) -> &[u8] {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    trim_cr(&line[..line.len().min(QUOTED)])
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn quote(bytes: &[u8]) -> String {
    escape::for_log(bytes, QUOTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: usize = 1000;

    /// Feeds `input` cut at `cuts` (ascending offsets), then EOF if no answer came before.
    fn run(input: &[u8], cap: usize, cuts: &[usize]) -> Result<Response, HttpError> {
        let mut p = ResponseParser::new(cap);
        let mut from = 0;
        for &to in cuts.iter().chain([input.len()].iter()) {
            if let Some(r) = p.feed(&input[from..to])? {
                return Ok(r);
            }
            from = to;
        }
        p.eof()
    }

    /// The answer for `input` fed whole, after checking that byte-by-byte feeding and random
    /// splits give exactly the same result.
    fn parse_every_way(name: &str, input: &[u8], cap: usize) -> Result<Response, HttpError> {
        let whole = run(input, cap, &[]);
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert_eq!(run(input, cap, &bytewise), whole, "{name}: byte by byte");
        // xorshift64: the splits need no quality, only repeatability.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ input.len() as u64;
        for _ in 0..20 {
            let mut cuts = Vec::new();
            let mut at = 0;
            loop {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                at += 1 + (x % 40) as usize;
                if at >= input.len() {
                    break;
                }
                cuts.push(at);
            }
            assert_eq!(run(input, cap, &cuts), whole, "{name}: cut at {cuts:?}");
        }
        whole
    }

    enum Want {
        Ok(u16, &'static [u8]),
        Err(Fault, &'static str),
    }

    fn ok(name: &'static str, input: &[u8], status: u16, body: &'static [u8]) -> Case {
        (name, input.to_vec(), CAP, Want::Ok(status, body))
    }

    fn err(name: &'static str, input: &[u8], fault: Fault, detail: &'static str) -> Case {
        (name, input.to_vec(), CAP, Want::Err(fault, detail))
    }

    type Case = (&'static str, Vec<u8>, usize, Want);

    #[test]
    fn parses_answers_the_same_however_they_are_split() {
        let mut big_head = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big_head.len() <= MAX_HEAD {
            big_head.extend_from_slice(
                b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        big_head.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        let mut big_trailers =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        while big_trailers.len() <= 2 * MAX_HEAD {
            big_trailers.extend_from_slice(
                b"X-Trailer: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n",
            );
        }
        big_trailers.extend_from_slice(b"\r\n");
        let mut eof_body = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        eof_body.resize(eof_body.len() + CAP + 1, b'x');
        let mut long_chunk_line =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        long_chunk_line.resize(long_chunk_line.len() + MAX_CHUNK_LINE, b'e');
        long_chunk_line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        let many_continues = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM as usize + 1);

        let cases: Vec<Case> = vec![
            ok(
                "content-length",
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
                200,
                b"{\"a\":1}",
            ),
            ok(
                "bytes after the answer are ignored",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 500 x\r\n\r\n",
                200,
                b"ok",
            ),
            ok(
                "content-length 0",
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                200,
                b"",
            ),
            ok(
                "header names in any case",
                b"HTTP/1.1 200 OK\r\ncontent-LENGTH:2\r\n\r\nok",
                200,
                b"ok",
            ),
            ok(
                "repeated equal content-length",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nok",
                200,
                b"ok",
            ),
            ok(
                "chunked with extensions and trailers",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;name=value\r\n{\"a\"\r\n\
                  3 ; x=\"y;z\"\r\n:1}\r\n0;last\r\nX-Trailer: t\r\nOther: u\r\n\r\n",
                200,
                b"{\"a\":1}",
            ),
            ok(
                "chunked, upper-case hex, leading zeros, bare LF line ends",
                b"HTTP/1.1 200 OK\nTransfer-Encoding: Chunked\n\n00A\n0123456789\n0\n\n",
                200,
                b"0123456789",
            ),
            ok(
                "chunked wins over content-length (RFC 9112 6.3)",
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n\
                  2\r\nok\r\n0\r\n\r\n",
                200,
                b"ok",
            ),
            ok(
                "read to EOF without a length",
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello\r\nworld",
                200,
                b"hello\r\nworld",
            ),
            ok(
                "100 Continue, then the answer",
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                200,
                b"ok",
            ),
            ok("204 has no body", b"HTTP/1.1 204 No Content\r\n\r\n", 204, b""),
            ok(
                "304 has no body whatever its length says",
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",
                304,
                b"",
            ),
            ok(
                "no reason phrase, no space",
                b"HTTP/1.1 404\r\nContent-Length: 1\r\n\r\n\xff",
                404,
                b"\xff",
            ),
            ok(
                "big chunks within the cap",
                &[
                    &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1f4\r\n"[..],
                    &[b'a'; 500],
                    b"\r\n1F4\r\n",
                    &[b'a'; 500],
                    b"\r\n0\r\n\r\n",
                ]
                .concat(),
                200,
                &[b'a'; 1000],
            ),
            err(
                "header block over the cap",
                &big_head,
                Fault::HeadTooLarge,
                "the header block exceeds 65536 bytes",
            ),
            err(
                "trailers over the cap",
                &big_trailers,
                Fault::HeadTooLarge,
                "trailer section exceeds 65536 bytes",
            ),
            err(
                "content-length over the body cap",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n",
                Fault::BodyTooLarge,
                "Content-Length 1001 exceeds the cap of 1000 bytes",
            ),
            err(
                "chunked body over the body cap",
                &[
                    &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n"[..],
                    &[b'a'; 600],
                    b"\r\n258\r\n",
                ]
                .concat(),
                Fault::BodyTooLarge,
                "the chunked body reaches 1200 bytes, over the cap of 1000 bytes",
            ),
            err(
                "body to EOF over the body cap",
                &eof_body,
                Fault::BodyTooLarge,
                "exceeds the cap of 1000 bytes",
            ),
            err(
                "bad chunk size",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                Fault::BadChunk,
                "bad chunk-size line \"zz\"",
            ),
            err(
                "negative chunk size",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
                Fault::BadChunk,
                "bad chunk-size line \"-1\"",
            ),
            err(
                "chunk size overflowing 64 bits",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
                Fault::BadChunk,
                "chunk size \"10000000000000000\" overflows 64 bits",
            ),
            err(
                "chunk size line over its cap",
                &long_chunk_line,
                Fault::BadChunk,
                "a chunk-size line is longer than 4096 bytes: \"1;eeee",
            ),
            err(
                "chunk longer than its size",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
                Fault::BadChunk,
                "followed by byte 0x64 instead of its line end (chunk size wrong?), after 3 bytes",
            ),
            err(
                "body cut short at EOF",
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcd",
                Fault::CutShort,
                "the connection closed after 4 of 10 body bytes",
            ),
            err(
                "chunked body cut short at EOF",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n5\r\nab",
                Fault::CutShort,
                "inside the chunked body, after 7 bytes of data",
            ),
            err(
                "chunked body without its last chunk",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n",
                Fault::CutShort,
                "inside the chunked body, after 5 bytes of data",
            ),
            err(
                "chunked body cut in its trailers",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\r\n",
                Fault::CutShort,
                "inside the chunked body's trailer section",
            ),
            err(
                "header block cut short at EOF",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
                Fault::CutShort,
                "the connection closed inside the header block, after 36 bytes",
            ),
            err("nothing at all", b"", Fault::CutShort, "before any answer"),
            err(
                "only an interim answer",
                b"HTTP/1.1 100 Continue\r\n\r\n",
                Fault::CutShort,
                "after 1 interim (1xx) answer(s)",
            ),
            err(
                "conflicting content-length",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
                Fault::BadFraming,
                "conflicting Content-Length values 2 and 3",
            ),
            err(
                "conflicting content-length in one list",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2,3\r\n\r\nok",
                Fault::BadFraming,
                "conflicting Content-Length values 2 and 3",
            ),
            err(
                "content-length not a number",
                b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
                Fault::BadFraming,
                "bad Content-Length \"+2\"",
            ),
            err(
                "content-length overflowing 64 bits",
                b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\nok",
                Fault::BadFraming,
                "bad Content-Length \"18446744073709551616\"",
            ),
            err(
                "a coding other than chunked",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Fault::BadFraming,
                "unsupported Transfer-Encoding \"gzip, chunked\"",
            ),
            err(
                "transfer-encoding in HTTP/1.0",
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                Fault::BadFraming,
                "an HTTP/1.0 answer with Transfer-Encoding",
            ),
            err(
                "obs-fold",
                b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
                Fault::BadHeader,
                "obs-fold",
            ),
            err(
                "space before the colon",
                b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
                Fault::BadHeader,
                "a header name that is not a token: \"Content-Length : 2\"",
            ),
            err(
                "CR inside a header value",
                b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n",
                Fault::BadHeader,
                "a control character in a header value: \"X-A: a\\rb\"",
            ),
            err(
                "header line without a colon",
                b"HTTP/1.1 200 OK\r\nnonsense\r\n\r\n",
                Fault::BadHeader,
                "a header line without ':'",
            ),
            err(
                "a two-digit status",
                b"HTTP/1.1 20 OK\r\n\r\n",
                Fault::BadStatusLine,
                "bad status line",
            ),
            err(
                "no space after the status",
                b"HTTP/1.1 200OK\r\n\r\n",
                Fault::BadStatusLine,
                "bad status line",
            ),
            err(
                "HTTP/1.2",
                b"HTTP/1.2 200 OK\r\n\r\n",
                Fault::BadStatusLine,
                "bad status line",
            ),
            err(
                "switching protocols",
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
                Fault::BadStatusLine,
                "unexpected interim answer 101 (number 1)",
            ),
            err(
                "endless 100 Continue",
                &many_continues,
                Fault::BadStatusLine,
                "unexpected interim answer 100 (number 17)",
            ),
            err(
                "SSH banner",
                b"SSH-2.0-OpenSSH_9.6\r\nmore",
                Fault::NotHttp,
                "the answer is not HTTP/1.x: \"SSH-2.0-OpenSSH_9.6\"",
            ),
            err(
                "TLS alert (plain HTTP to a TLS port)",
                b"\x15\x03\x03\x00\x02\x02\x46",
                Fault::NotHttp,
                "not HTTP/1.x: \"\\x15\\x03\\x03\\x00\\x02\\x02F\"",
            ),
            err(
                "HTTP/2 preface answer",
                b"HTTP/2 200\r\n\r\n",
                Fault::NotHttp,
                "not HTTP/1.x: \"HTTP/2 200\"",
            ),
            err(
                "an empty line first",
                b"\r\nHTTP/1.1 200 OK\r\n\r\n",
                Fault::NotHttp,
                "not HTTP/1.x: \"\"",
            ),
        ];
        for (name, input, cap, want) in cases {
            let got = parse_every_way(name, &input, cap);
            match (want, got) {
                (Want::Ok(status, body), Ok(r)) => {
                    assert_eq!((r.status, r.body.as_slice()), (status, body), "{name}");
                }
                (Want::Err(fault, detail), Err(e)) => {
                    assert_eq!(e.fault, fault, "{name}: {e}");
                    assert!(e.detail.contains(detail), "{name}: {e}");
                }
                (Want::Ok(..), Err(e)) => panic!("{name}: {e}"),
                (Want::Err(..), Ok(r)) => panic!("{name}: answered {}", r.status_line()),
            }
        }
    }

    #[test]
    fn keeps_status_reason_and_headers_and_quotes_them_escaped() {
        let r = run(
            b"HTTP/1.1 403 Forbidden\r\nAudit-Id: 4f\xc3\xa9\r\nContent-Type:application/json \r\n\
              Content-Length: 2\r\n\r\n{}",
            CAP,
            &[],
        )
        .expect("valid");
        assert_eq!(r.status_line(), "403 Forbidden");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("AUDIT-ID"), Some("4f\u{e9}"));
        assert_eq!(r.header("missing"), None);
        assert_eq!(r.headers.len(), 3);

        let r = run(b"HTTP/1.1 500 Bad\xe2\x80\xaeGood\r\n\r\n", CAP, &[]).expect("valid");
        assert_eq!(r.reason, "Bad\\u{202e}Good");

        let e = run(b"HTTP/1.1 200 OK\x1b[2J\r\n\r\n", CAP, &[]).expect_err("control");
        assert_eq!(e.status_line.as_deref(), Some("HTTP/1.1 200 OK\\x1b[2J"));
        let e =
            run(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", CAP, &[]).expect_err("short");
        assert_eq!(
            e.to_string(),
            "the connection closed after 2 of 9 body bytes (answer \"HTTP/1.1 200 OK\")"
        );
    }

    #[test]
    fn refuses_use_after_the_answer() {
        let mut p = ResponseParser::new(CAP);
        let r = p.feed(b"HTTP/1.1 204 No Content\r\n\r\n").expect("valid");
        assert_eq!(r.map(|r| r.status), Some(204));
        assert_eq!(
            p.feed(b"x").map_err(|e| e.fault),
            Err(Fault::AlreadyComplete)
        );
        assert_eq!(p.eof().map_err(|e| e.fault), Err(Fault::AlreadyComplete));
    }

    #[test]
    fn builds_get_requests() {
        let version = env!("CARGO_PKG_VERSION");
        let table: &[(Auth, &str)] = &[
            (Auth::None, ""),
            (
                Auth::Bearer("eyJhbGciOiJSUzI1NiJ9.e30.c2ln".into()),
                "Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln\r\n",
            ),
            (
                Auth::Basic {
                    username: "Aladdin".into(),
                    password: "open sesame".into(),
                },
                "Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n",
            ),
        ];
        for (auth, line) in table {
            let got = request("10.0.0.1:6443", "/api/v1/namespaces/audit/services/x", auth)
                .expect("valid");
            let want = format!(
                "GET /api/v1/namespaces/audit/services/x HTTP/1.1\r\nHost: 10.0.0.1:6443\r\n\
                 Accept: application/json\r\nUser-Agent: audit-forwarder/{version}\r\n{line}\
                 Connection: close\r\n\r\n"
            );
            assert_eq!(String::from_utf8_lossy(&got), want, "{auth:?}");
        }
    }

    #[test]
    fn refuses_request_inputs_that_would_inject_headers() {
        let token = |t: &str| Auth::Bearer(t.into());
        let table: &[(&str, &str, Auth, &str)] = &[
            (
                "h",
                "/a\r\nX-Evil: 1",
                Auth::None,
                "the request path \"/a\\r\\nX-Evil: 1\" contains byte 0x0d",
            ),
            (
                "h",
                "/a b",
                Auth::None,
                "the request path \"/a b\" contains byte 0x20",
            ),
            ("h", "api/v1", Auth::None, "does not start with '/'"),
            (
                "h\nX: 1",
                "/",
                Auth::None,
                "the Host header \"h\\nX: 1\" contains byte 0x0a",
            ),
            ("", "/", Auth::None, "the Host header is empty"),
            (
                "h",
                "/",
                token("s3cret\n"),
                "the bearer token contains byte 0x0a at offset 6",
            ),
            ("h", "/", token(""), "the bearer token is empty"),
            (
                "h",
                "/",
                Auth::Basic {
                    username: "a:b".into(),
                    password: "p".into(),
                },
                "contains ':'",
            ),
            (
                "h",
                "/",
                Auth::Basic {
                    username: "a".into(),
                    password: "s3cret\r".into(),
                },
                "the basic-auth password contains byte 0x0d at offset 6",
            ),
        ];
        for (host, path, auth, want) in table {
            let e = request(host, path, auth).expect_err(want);
            assert!(e.contains(want), "{e}");
            assert!(!e.contains("s3cret"), "a credential leaked: {e}");
        }
        assert!(!format!("{:?}", token("s3cret")).contains("s3cret"));
    }

    #[test]
    fn base64_encoding_round_trips() {
        for text in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "\u{fb}\u{ff}",
        ] {
            let enc = base64_encode(text.as_bytes());
            assert_eq!(enc.len() % 4, 0, "{text:?}");
            assert_eq!(
                crate::kube::base64::decode(enc.as_bytes()).as_deref(),
                Ok(text.as_bytes()),
                "{text:?} -> {enc}"
            );
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
    }
}
