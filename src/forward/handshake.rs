//! The Fluent Forward protocol v1 shared-key handshake (HELO / PING / PONG), sans-IO, for both
//! ends: [`Client`] is the forwarder's side (answers the server's HELO with a PING, checks the
//! PONG) and [`Server`] is the tailer's side (sends HELO, checks the PING, answers PONG). The
//! caller owns the socket and the receive buffer: it hands in every byte received and not yet
//! consumed, and gets back how many bytes one complete message took and what to send. Nothing
//! here reads clocks, sockets or randomness; the random salt and nonce are passed in.
//!
//! Wire shapes, as fluentd (`in_forward.rb`, `out_forward/handshake_protocol.rb`) and fluent-bit
//! (`in_forward/fw_prot.c`, `out_forward/forward.c`) actually exchange them:
//! - HELO `["HELO", {"nonce": str|bin, "auth": str|bin, "keepalive": bool}]`. fluentd sends the
//!   nonce and auth salt as bin, fluent-bit as a str of raw random (not UTF-8) bytes and without
//!   "keepalive"; either way only the bytes matter. Both send a non-empty auth salt whenever a
//!   shared key is configured, users or not, so a salt does not mean credentials are required.
//! - PING `["PING", hostname, salt, hex(sha512(salt + hostname + nonce + key)), username,
//!   password_digest]`, always 6 elements (both servers reject any other length). The salt is a
//!   str: fluent-bit's in_forward rejects a bin salt, and hashes the str bytes as sent.
//! - PONG `["PONG", ok, reason, hostname, hex(sha512(salt + hostname + nonce + key))]`; on
//!   failure both servers send `""` for hostname and digest, and fluent-bit closes the
//!   connection without any PONG when the shared key does not match.

use crate::escape;
use crate::forward::sha512::Sha512;
use std::fmt;

/// Largest HELO, PING or PONG accepted from a peer (real ones are a few hundred bytes).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// How many characters of a peer's reason or hostname are kept for logs (DNS names stop at 253).
const SHOWN_CHARS: usize = 256;

/// Nesting and value-count caps: handshake messages are small fixed shapes, and the caps bound
/// the work of re-parsing a message that arrives one byte at a time.
const MAX_DEPTH: usize = 8;
const MAX_VALUES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// Bytes that are not msgpack, or msgpack that is not the message due at this point.
    Malformed {
        expected: &'static str,
        detail: String,
    },
    /// A message that would be larger than [`MAX_MESSAGE`].
    TooLarge { expected: &'static str, size: usize },
    /// The server answered the PING with `auth_result` false.
    Rejected { reason: String },
    /// The PONG digest is wrong: whoever answered does not hold our shared key.
    ServerKeyMismatch,
    /// The PONG carries our own hostname. fluentd's out_forward refuses this too: besides being a
    /// loop misconfiguration, a peer without the key could otherwise pass the digest check by
    /// echoing our PING digest back, since both digests are computed the same way.
    SameHostname { hostname: String },
    /// The peer closed the connection before the handshake finished.
    Closed { waiting_for: &'static str },
    /// `feed` was called after the handshake had already succeeded or failed.
    AlreadyFinished,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Malformed { expected, detail } => {
                write!(f, "malformed handshake: expected {expected}, {detail}")
            }
            HandshakeError::TooLarge { expected, size } => write!(
                f,
                "handshake message too large: expected {expected} of at most {MAX_MESSAGE} \
                 bytes, got one of at least {size} bytes"
            ),
            HandshakeError::Rejected { reason } if reason.is_empty() => {
                write!(f, "server rejected the handshake without giving a reason")
            }
            HandshakeError::Rejected { reason } => {
                write!(f, "server rejected the handshake: {reason}")
            }
            HandshakeError::ServerKeyMismatch => {
                write!(
                    f,
                    "server failed shared key check: it does not know our key"
                )
            }
            HandshakeError::SameHostname { hostname } => write!(
                f,
                "server answered with our own hostname \"{hostname}\": refused (the same \
                 self_hostname on both ends, or a peer echoing our PING back)"
            ),
            HandshakeError::Closed {
                waiting_for: "PONG",
            } => write!(
                f,
                "connection closed while waiting for PONG (fluent-bit closes without a PONG \
                 when the shared key does not match)"
            ),
            HandshakeError::Closed { waiting_for } => {
                write!(f, "connection closed while waiting for {waiting_for}")
            }
            HandshakeError::AlreadyFinished => write!(f, "handshake already finished"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// What the forwarder needs to answer a HELO. fluent-bit's in_forward reads a PING into a
/// 1023-byte buffer, and the fixed parts take about 300 bytes, so hostname and username together
/// must stay under about 700 bytes for it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub shared_key: Vec<u8>,
    pub self_hostname: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ClientStep {
    /// No complete message yet: call again with more bytes.
    NeedMore,
    /// The HELO was accepted: send these PING bytes, then feed the server's reply.
    Send(Vec<u8>),
    /// The PONG is verified: the connection may carry events.
    Done,
}

#[derive(Debug)]
enum ClientState {
    AwaitHelo,
    AwaitPong { nonce: Vec<u8> },
    Done,
    Failed,
}

/// The forwarder's half of the handshake for one connection.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    /// Our shared key salt, exactly the bytes sent (lowercase hex of 16 random bytes).
    salt: String,
    state: ClientState,
    keepalive: bool,
    server_hostname: Option<String>,
}

impl Client {
    /// `random` must be fresh random bytes for this connection; they become the salt.
    pub fn new(config: ClientConfig, random: [u8; 16]) -> Client {
        Client {
            config,
            salt: hex(&random),
            state: ClientState::AwaitHelo,
            keepalive: true,
            server_hostname: None,
        }
    }

    /// Feeds the bytes received and not yet consumed. Returns how many bytes the message took
    /// (0 with `NeedMore`) and the next step. Any error ends the handshake.
    pub fn feed(&mut self, buf: &[u8]) -> Result<(usize, ClientStep), HandshakeError> {
        let state = std::mem::replace(&mut self.state, ClientState::Failed);
        let (next, result) = match state {
            ClientState::AwaitHelo => match read_message(buf, "HELO") {
                Ok(Frame::Incomplete) => (ClientState::AwaitHelo, Ok((0, ClientStep::NeedMore))),
                Ok(Frame::Complete(value, used)) => match parse_helo(&value) {
                    Ok(helo) => {
                        self.keepalive = helo.keepalive;
                        let ping = self.ping(helo.nonce, helo.auth);
                        let nonce = helo.nonce.to_vec();
                        (
                            ClientState::AwaitPong { nonce },
                            Ok((used, ClientStep::Send(ping))),
                        )
                    }
                    Err(e) => (ClientState::Failed, Err(e)),
                },
                Err(e) => (ClientState::Failed, Err(e)),
            },
            ClientState::AwaitPong { nonce } => match read_message(buf, "PONG") {
                Ok(Frame::Incomplete) => (
                    ClientState::AwaitPong { nonce },
                    Ok((0, ClientStep::NeedMore)),
                ),
                Ok(Frame::Complete(value, used)) => match self.check_pong(&value, &nonce) {
                    Ok(()) => (ClientState::Done, Ok((used, ClientStep::Done))),
                    Err(e) => (ClientState::Failed, Err(e)),
                },
                Err(e) => (ClientState::Failed, Err(e)),
            },
            ClientState::Done | ClientState::Failed => {
                (state, Err(HandshakeError::AlreadyFinished))
            }
        };
        self.state = next;
        result
    }

    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        matches!(self.state, ClientState::Done)
    }

    /// The HELO's "keepalive": false means the server closes the connection after one batch.
    /// True until a HELO says otherwise (the spec's default).
    pub fn server_keepalive(&self) -> bool {
        self.keepalive
    }

    /// The hostname from a verified PONG, escaped for logs.
    pub fn server_hostname(&self) -> Option<&str> {
        self.server_hostname.as_deref()
    }

    /// The error to report when the connection closes before the handshake is done.
    pub fn closed(&self) -> HandshakeError {
        match self.state {
            ClientState::AwaitHelo => HandshakeError::Closed {
                waiting_for: "HELO",
            },
            ClientState::AwaitPong { .. } => HandshakeError::Closed {
                waiting_for: "PONG",
            },
            ClientState::Done | ClientState::Failed => HandshakeError::AlreadyFinished,
        }
    }

    fn ping(&self, nonce: &[u8], auth: &[u8]) -> Vec<u8> {
        let c = &self.config;
        let digest = shared_key_digest(
            self.salt.as_bytes(),
            c.self_hostname.as_bytes(),
            nonce,
            &c.shared_key,
        );
        // As fluentd's out_forward: with an auth salt, the password digest is always sent,
        // over empty credentials when none are configured (a server without users ignores it,
        // one with users rejects with a reason); without a salt, both fields are empty.
        let (username, password_digest) = if auth.is_empty() {
            ("", String::new())
        } else {
            let username = c.username.as_deref().unwrap_or("");
            let password = c.password.as_deref().unwrap_or("");
            let digest = Sha512::new()
                .update(auth)
                .update(username.as_bytes())
                .update(password.as_bytes())
                .finish();
            (username, hex(&digest))
        };
        let mut out = Out::default();
        out.array(6)
            .str("PING")
            .str(&c.self_hostname)
            .str(&self.salt)
            .str(&digest)
            .str(username)
            .str(&password_digest);
        out.0
    }

    fn check_pong(&mut self, value: &Value, nonce: &[u8]) -> Result<(), HandshakeError> {
        let bad = |detail: String| HandshakeError::Malformed {
            expected: "PONG",
            detail,
        };
        let items = message_items(value, "PONG", 5).map_err(bad)?;
        let ok = match items[1] {
            Value::Bool(b) => b,
            ref other => {
                return Err(bad(format!(
                    "element 1 (auth result) is {}, not a boolean",
                    other.describe()
                )))
            }
        };
        if !ok {
            let reason = match items[2].bytes() {
                Some(r) => escape::for_log(r, SHOWN_CHARS),
                None => format!("(reason is {})", items[2].describe()),
            };
            return Err(HandshakeError::Rejected { reason });
        }
        let hostname = string_field(items, 3, "server hostname").map_err(bad)?;
        let digest = string_field(items, 4, "shared key digest").map_err(bad)?;
        if hostname == self.config.self_hostname.as_bytes() {
            return Err(HandshakeError::SameHostname {
                hostname: escape::for_log(hostname, SHOWN_CHARS),
            });
        }
        let want = shared_key_digest(
            self.salt.as_bytes(),
            hostname,
            nonce,
            &self.config.shared_key,
        );
        if !same_bytes(digest, want.as_bytes()) {
            return Err(HandshakeError::ServerKeyMismatch);
        }
        self.server_hostname = Some(escape::for_log(hostname, SHOWN_CHARS));
        Ok(())
    }
}

/// What the server made of a PING.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PingVerdict {
    Accepted,
    /// Not a PING this server can read (wrong shape, missing or mistyped fields).
    Malformed,
    /// A well-formed PING whose shared-key digest is wrong.
    WrongKey,
}

/// The server's verdict on one PING, with the PONG to send. Unless accepted, the caller sends
/// the PONG and closes.
#[derive(Debug, PartialEq, Eq)]
pub struct PingOutcome {
    /// Bytes of the buffer the PING took.
    pub consumed: usize,
    pub pong: Vec<u8>,
    pub verdict: PingVerdict,
    /// The client's self_hostname, escaped for logs; empty if the PING had none.
    pub client_hostname: String,
    /// Why the PING was refused; empty when accepted.
    pub reason: String,
}

impl PingOutcome {
    pub fn accepted(&self) -> bool {
        self.verdict == PingVerdict::Accepted
    }
}

#[derive(Debug)]
enum ServerState {
    AwaitPing,
    Finished,
}

/// The tailer's half of the handshake for one connection. Shared key only: the HELO carries
/// an empty auth salt, so clients send no credentials.
#[derive(Debug)]
pub struct Server {
    shared_key: Vec<u8>,
    hostname: String,
    nonce: [u8; 16],
    state: ServerState,
}

impl Server {
    /// `nonce` must be fresh random bytes for this connection. Returns the HELO to send first.
    pub fn new(shared_key: Vec<u8>, hostname: String, nonce: [u8; 16]) -> (Server, Vec<u8>) {
        let mut out = Out::default();
        // bin, as fluentd's in_forward sends it; the auth salt stays empty (no users).
        out.array(2)
            .str("HELO")
            .map(3)
            .str("nonce")
            .bin(&nonce)
            .str("auth")
            .str("")
            .str("keepalive")
            .bool(true);
        let server = Server {
            shared_key,
            hostname,
            nonce,
            state: ServerState::AwaitPing,
        };
        (server, out.0)
    }

    /// Feeds the bytes received and not yet consumed. `None`: no complete message yet. A
    /// complete msgpack value that is not a valid PING is answered (like fluentd) with a
    /// refusing PONG; bytes that are not msgpack at all, or too many of them, are an error.
    pub fn feed(&mut self, buf: &[u8]) -> Result<Option<PingOutcome>, HandshakeError> {
        if let ServerState::Finished = self.state {
            return Err(HandshakeError::AlreadyFinished);
        }
        let (value, consumed) = match read_message(buf, "PING") {
            Ok(Frame::Incomplete) => return Ok(None),
            Ok(Frame::Complete(value, used)) => (value, used),
            Err(e) => {
                self.state = ServerState::Finished;
                return Err(e);
            }
        };
        self.state = ServerState::Finished;
        let mut out = Out::default();
        let outcome = match self.check_ping(&value) {
            Ok((client_hostname, salt)) => {
                let digest = shared_key_digest(
                    salt,
                    self.hostname.as_bytes(),
                    &self.nonce,
                    &self.shared_key,
                );
                out.array(5)
                    .str("PONG")
                    .bool(true)
                    .str("")
                    .str(&self.hostname)
                    .str(&digest);
                PingOutcome {
                    consumed,
                    pong: out.0,
                    verdict: PingVerdict::Accepted,
                    client_hostname,
                    reason: String::new(),
                }
            }
            Err((client_hostname, verdict, reason)) => {
                // No hostname or digest for a peer that failed the check, as fluentd and
                // fluent-bit do: nothing key-derived goes to an unauthenticated peer.
                out.array(5)
                    .str("PONG")
                    .bool(false)
                    .str(&reason)
                    .str("")
                    .str("");
                PingOutcome {
                    consumed,
                    pong: out.0,
                    verdict,
                    client_hostname,
                    reason,
                }
            }
        };
        Ok(Some(outcome))
    }

    /// The error to report when the client closes before sending its PING.
    pub fn closed(&self) -> HandshakeError {
        match self.state {
            ServerState::AwaitPing => HandshakeError::Closed {
                waiting_for: "PING",
            },
            ServerState::Finished => HandshakeError::AlreadyFinished,
        }
    }

    /// Ok: (client hostname, salt). Err: (client hostname if known, what was wrong, reason for
    /// the PONG).
    fn check_ping<'a>(
        &self,
        value: &Value<'a>,
    ) -> Result<(String, &'a [u8]), (String, PingVerdict, String)> {
        let invalid = |detail: String| {
            (
                String::new(),
                PingVerdict::Malformed,
                format!("invalid ping message: {detail}"),
            )
        };
        let items = message_items(value, "PING", 6).map_err(invalid)?;
        let hostname = string_field(items, 1, "hostname").map_err(invalid)?;
        let client_hostname = escape::for_log(hostname, SHOWN_CHARS);
        let field = |index, what| {
            string_field(items, index, what).map_err(|e| {
                (
                    client_hostname.clone(),
                    PingVerdict::Malformed,
                    format!("invalid ping message: {e}"),
                )
            })
        };
        let salt = field(2, "shared key salt")?;
        let digest = field(3, "shared key digest")?;
        // Users are not supported: the fields must be there, their content is ignored.
        field(4, "username")?;
        field(5, "password digest")?;
        let want = shared_key_digest(salt, hostname, &self.nonce, &self.shared_key);
        if !same_bytes(digest, want.as_bytes()) {
            return Err((
                client_hostname,
                PingVerdict::WrongKey,
                "shared_key mismatch".to_string(),
            ));
        }
        Ok((client_hostname, salt))
    }
}

/// `hex(sha512(salt + hostname + nonce + shared_key))`, the digest of both PING and PONG.
fn shared_key_digest(salt: &[u8], hostname: &[u8], nonce: &[u8], key: &[u8]) -> String {
    let digest = Sha512::new()
        .update(salt)
        .update(hostname)
        .update(nonce)
        .update(key)
        .finish();
    hex(&digest)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

/// Compares without stopping at the first difference, so timing does not reveal how much of a
/// guessed digest was right.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct Helo<'a> {
    nonce: &'a [u8],
    auth: &'a [u8],
    keepalive: bool,
}

fn parse_helo<'a>(value: &Value<'a>) -> Result<Helo<'a>, HandshakeError> {
    let bad = |detail: String| HandshakeError::Malformed {
        expected: "HELO",
        detail,
    };
    let items = message_items(value, "HELO", 2).map_err(bad)?;
    let entries = match &items[1] {
        Value::Map(entries) => entries,
        other => {
            return Err(bad(format!(
                "element 1 (options) is {}, not a map",
                other.describe()
            )))
        }
    };
    let mut helo = Helo {
        nonce: &[],
        auth: &[],
        keepalive: true,
    };
    let mut have_nonce = false;
    for (key, val) in entries {
        match key.bytes() {
            Some(b"nonce") => match val.bytes() {
                Some(nonce) => {
                    helo.nonce = nonce;
                    have_nonce = true;
                }
                None => {
                    return Err(bad(format!(
                        "option \"nonce\" is {}, not a str or bin",
                        val.describe()
                    )))
                }
            },
            Some(b"auth") => match val {
                // fluentd's out_forward reads a nil auth as "".
                Value::Nil => helo.auth = &[],
                _ => match val.bytes() {
                    Some(auth) => helo.auth = auth,
                    None => {
                        return Err(bad(format!(
                            "option \"auth\" is {}, not a str or bin",
                            val.describe()
                        )))
                    }
                },
            },
            Some(b"keepalive") => match val {
                Value::Bool(b) => helo.keepalive = *b,
                Value::Nil => {}
                _ => {
                    return Err(bad(format!(
                        "option \"keepalive\" is {}, not a boolean",
                        val.describe()
                    )))
                }
            },
            // Options added by later protocol versions are none of our business.
            _ => {}
        }
    }
    if !have_nonce {
        return Err(bad("the options have no \"nonce\"".to_string()));
    }
    Ok(helo)
}

/// The elements of `[name, ...]` with exactly `len` elements.
fn message_items<'v, 'a>(
    value: &'v Value<'a>,
    name: &str,
    len: usize,
) -> Result<&'v [Value<'a>], String> {
    let items = match value {
        Value::Array(items) => items,
        other => {
            return Err(format!(
                "got {}, not an array starting with {name:?}",
                other.describe()
            ))
        }
    };
    match items.first() {
        Some(first) if first.bytes() == Some(name.as_bytes()) => {}
        Some(first) => {
            return Err(format!(
                "the array starts with {}, not {name:?}",
                first.describe()
            ))
        }
        None => return Err(format!("got an empty array, not {name:?}")),
    }
    if items.len() != len {
        return Err(format!("{name} has {} elements, not {len}", items.len()));
    }
    Ok(items)
}

fn string_field<'a>(items: &[Value<'a>], index: usize, what: &str) -> Result<&'a [u8], String> {
    items[index].bytes().ok_or_else(|| {
        format!(
            "element {index} ({what}) is {}, not a str or bin",
            items[index].describe()
        )
    })
}

/// msgpack writer over a Vec. rmp returns `io::Result` even for a Vec, which cannot fail.
#[derive(Default)]
struct Out(Vec<u8>);

const VEC_WRITE: &str = "writing msgpack into a Vec cannot fail";

impl Out {
    fn array(&mut self, len: u32) -> &mut Out {
        rmp::encode::write_array_len(&mut self.0, len).expect(VEC_WRITE);
        self
    }
    fn map(&mut self, len: u32) -> &mut Out {
        rmp::encode::write_map_len(&mut self.0, len).expect(VEC_WRITE);
        self
    }
    fn str(&mut self, s: &str) -> &mut Out {
        rmp::encode::write_str(&mut self.0, s).expect(VEC_WRITE);
        self
    }
    fn bin(&mut self, b: &[u8]) -> &mut Out {
        rmp::encode::write_bin(&mut self.0, b).expect(VEC_WRITE);
        self
    }
    fn bool(&mut self, b: bool) -> &mut Out {
        rmp::encode::write_bool(&mut self.0, b).expect(VEC_WRITE);
        self
    }
}

/// A decoded msgpack value; strings and binaries borrow the input. Numbers and extensions are
/// only recognised and skipped: no handshake field is numeric.
#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Nil,
    Bool(bool),
    Int,
    Float,
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(Vec<Value<'a>>),
    Map(Vec<(Value<'a>, Value<'a>)>),
    Ext,
}

impl<'a> Value<'a> {
    /// The bytes of a str or bin. A str is taken as raw bytes: fluent-bit sends random,
    /// non-UTF-8 bytes as str.
    fn bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Str(b) | Value::Bin(b) => Some(b),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Value::Nil => "nil".to_string(),
            Value::Bool(b) => format!("the boolean {b}"),
            Value::Int => "an integer".to_string(),
            Value::Float => "a float".to_string(),
            Value::Str(s) => format!("the string {}", shown(s)),
            Value::Bin(b) => format!("{} bytes of binary", b.len()),
            Value::Array(items) => format!("an array of {} elements", items.len()),
            Value::Map(entries) => format!("a map of {} entries", entries.len()),
            Value::Ext => "an extension value".to_string(),
        }
    }
}

/// A peer string inside an error message: escaped, quoted, cut at 40 characters.
fn shown(bytes: &[u8]) -> String {
    format!("\"{}\"", escape::for_log(bytes, 40))
}

enum Frame<'a> {
    Incomplete,
    /// The value and how many bytes it took.
    Complete(Value<'a>, usize),
}

/// Decodes the one msgpack value at the start of `buf`.
fn read_message<'a>(buf: &'a [u8], expected: &'static str) -> Result<Frame<'a>, HandshakeError> {
    let mut reader = Reader {
        buf,
        pos: 0,
        values: 0,
    };
    match reader.value(0) {
        Ok(value) => Ok(Frame::Complete(value, reader.pos)),
        // `take` only reports Incomplete for a value ending within MAX_MESSAGE.
        Err(Stop::Incomplete) => Ok(Frame::Incomplete),
        Err(Stop::TooLarge(size)) => Err(HandshakeError::TooLarge { expected, size }),
        Err(Stop::Invalid(detail)) => Err(HandshakeError::Malformed { expected, detail }),
    }
}

enum Stop {
    Incomplete,
    /// The message would end at (at least) this many bytes.
    TooLarge(usize),
    Invalid(String),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    values: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Stop> {
        let end = self.pos.saturating_add(n);
        if end > MAX_MESSAGE {
            return Err(Stop::TooLarge(end));
        }
        if end > self.buf.len() {
            return Err(Stop::Incomplete);
        }
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// A big-endian length of `width` bytes.
    fn len(&mut self, width: usize) -> Result<usize, Stop> {
        let bytes = self.take(width)?;
        Ok(bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b)))
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, Stop> {
        let at = self.pos;
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(Stop::Invalid(format!(
                "got more than {MAX_VALUES} msgpack values in one message"
            )));
        }
        let marker = self.take(1)?[0];
        Ok(match marker {
            0x00..=0x7f | 0xe0..=0xff => Value::Int,
            0x80..=0x8f => self.map(usize::from(marker & 0x0f), depth)?,
            0x90..=0x9f => self.array(usize::from(marker & 0x0f), depth)?,
            0xa0..=0xbf => Value::Str(self.take(usize::from(marker & 0x1f))?),
            0xc0 => Value::Nil,
            0xc1 => {
                return Err(Stop::Invalid(format!(
                    "got byte 0xc1 at offset {at}, which is not msgpack"
                )))
            }
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4..=0xc6 => {
                let n = self.len(1 << (marker - 0xc4))?;
                Value::Bin(self.take(n)?)
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (marker - 0xc7))?;
                self.take(n + 1)?;
                Value::Ext
            }
            0xca => {
                self.take(4)?;
                Value::Float
            }
            0xcb => {
                self.take(8)?;
                Value::Float
            }
            0xcc..=0xcf => {
                self.take(1 << (marker - 0xcc))?;
                Value::Int
            }
            0xd0..=0xd3 => {
                self.take(1 << (marker - 0xd0))?;
                Value::Int
            }
            0xd4..=0xd8 => {
                self.take(1 + (1 << (marker - 0xd4)))?;
                Value::Ext
            }
            0xd9..=0xdb => {
                let n = self.len(1 << (marker - 0xd9))?;
                Value::Str(self.take(n)?)
            }
            0xdc | 0xdd => {
                let n = self.len(if marker == 0xdc { 2 } else { 4 })?;
                self.array(n, depth)?
            }
            0xde | 0xdf => {
                let n = self.len(if marker == 0xde { 2 } else { 4 })?;
                self.map(n, depth)?
            }
        })
    }

    fn check_container(&self, count: usize, depth: usize) -> Result<(), Stop> {
        if depth >= MAX_DEPTH {
            return Err(Stop::Invalid(format!(
                "got values nested deeper than {MAX_DEPTH} levels"
            )));
        }
        if count > MAX_VALUES {
            return Err(Stop::Invalid(format!(
                "got a container of {count} values (at most {MAX_VALUES} expected)"
            )));
        }
        Ok(())
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<Value<'a>, Stop> {
        self.check_container(n, depth)?;
        let mut items = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value<'a>, Stop> {
        self.check_container(n.saturating_mul(2), depth)?;
        let mut entries = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            let key = self.value(depth + 1)?;
            let val = self.value(depth + 1)?;
            entries.push((key, val));
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::sha512::sha512;

    const SALT_RANDOM: [u8; 16] = *b"\x00\x01\x02\x03\xfc\xfd\xfe\xff0123abcd";
    const NONCE: [u8; 16] = *b"\xff\xfe\x80\x81nonce-bytes\x00";

    fn config(key: &str, user: Option<(&str, &str)>) -> ClientConfig {
        ClientConfig {
            shared_key: key.as_bytes().to_vec(),
            self_hostname: "forwarder-0".to_string(),
            username: user.map(|(u, _)| u.to_string()),
            password: user.map(|(_, p)| p.to_string()),
        }
    }

    fn decode(bytes: &[u8]) -> Value<'_> {
        match read_message(bytes, "test message") {
            Ok(Frame::Complete(value, used)) => {
                assert_eq!(used, bytes.len(), "one message, no trailing bytes");
                value
            }
            Ok(Frame::Incomplete) => panic!("incomplete message"),
            Err(e) => panic!("{e}"),
        }
    }

    /// The str/bin elements of a message, as bytes (panics on any other element).
    fn fields(bytes: &[u8]) -> Vec<Vec<u8>> {
        match decode(bytes) {
            Value::Array(items) => items
                .iter()
                .map(|v| v.bytes().expect("str or bin element").to_vec())
                .collect(),
            other => panic!("not an array: {other:?}"),
        }
    }

    fn digest_hex(parts: &[&[u8]]) -> String {
        hex(&sha512(&parts.concat()))
    }

    /// A HELO option value as a peer might send it.
    #[derive(Clone, Copy)]
    enum Opt<'a> {
        Str(&'a [u8]),
        Bin(&'a [u8]),
        Bool(bool),
        Int,
        Nil,
        Absent,
    }

    fn helo(nonce: Opt, auth: Opt, keepalive: Opt) -> Vec<u8> {
        let opts = [("nonce", nonce), ("auth", auth), ("keepalive", keepalive)];
        let present: Vec<_> = opts
            .iter()
            .filter(|(_, v)| !matches!(v, Opt::Absent))
            .collect();
        let mut out = Out::default();
        out.array(2).str("HELO").map(present.len() as u32);
        for (key, val) in present {
            out.str(key);
            match *val {
                Opt::Str(s) => {
                    // Written by hand: rmp's write_str takes &str, and fluent-bit sends
                    // non-UTF-8 bytes as str.
                    rmp::encode::write_str_len(&mut out.0, s.len() as u32).unwrap();
                    out.0.extend_from_slice(s);
                }
                Opt::Bin(b) => {
                    out.bin(b);
                }
                Opt::Bool(b) => {
                    out.bool(b);
                }
                Opt::Int => rmp::encode::write_uint(&mut out.0, 7).map(|_| ()).unwrap(),
                Opt::Nil => rmp::encode::write_nil(&mut out.0).unwrap(),
                Opt::Absent => unreachable!(),
            }
        }
        out.0
    }

    fn pong(ok: bool, reason: &str, hostname: &str, digest: &str) -> Vec<u8> {
        let mut out = Out::default();
        out.array(5)
            .str("PONG")
            .bool(ok)
            .str(reason)
            .str(hostname)
            .str(digest);
        out.0
    }

    fn expect_send(step: Result<(usize, ClientStep), HandshakeError>, len: usize) -> Vec<u8> {
        match step {
            Ok((used, ClientStep::Send(ping))) => {
                assert_eq!(used, len);
                ping
            }
            other => panic!("expected a PING to send, got {other:?}"),
        }
    }

    /// The client's salt is the hex of its random bytes, sent as str and hashed as sent.
    fn salt() -> String {
        hex(&SALT_RANDOM)
    }

    #[test]
    fn handshake_roundtrip() {
        struct Case {
            name: &'static str,
            client_key: &'static str,
            server_key: &'static str,
            user: Option<(&'static str, &'static str)>,
            accepted: bool,
            client: Result<(), HandshakeError>,
        }
        let cases = [
            Case {
                name: "same key",
                client_key: "s3cret",
                server_key: "s3cret",
                user: None,
                accepted: true,
                client: Ok(()),
            },
            Case {
                name: "same empty key (fluent-bit empty_shared_key)",
                client_key: "",
                server_key: "",
                user: None,
                accepted: true,
                client: Ok(()),
            },
            Case {
                name: "credentials configured, server has no users",
                client_key: "s3cret",
                server_key: "s3cret",
                user: Some(("alice", "pw")),
                accepted: true,
                client: Ok(()),
            },
            Case {
                name: "wrong key",
                client_key: "s3cret",
                server_key: "other",
                user: None,
                accepted: false,
                client: Err(HandshakeError::Rejected {
                    reason: "shared_key mismatch".to_string(),
                }),
            },
        ];
        for case in cases {
            let name = case.name;
            let (mut server, helo) = Server::new(
                case.server_key.as_bytes().to_vec(),
                "tailer-1".into(),
                NONCE,
            );
            let mut client = Client::new(config(case.client_key, case.user), SALT_RANDOM);
            let ping = expect_send(client.feed(&helo), helo.len());
            let outcome = server.feed(&ping).unwrap().expect("a complete PING");
            assert_eq!(outcome.consumed, ping.len(), "{name}");
            assert_eq!(outcome.accepted(), case.accepted, "{name}");
            assert_eq!(outcome.client_hostname, "forwarder-0", "{name}");
            let got = client.feed(&outcome.pong).map(|(used, step)| {
                assert_eq!(used, outcome.pong.len(), "{name}");
                assert_eq!(step, ClientStep::Done, "{name}");
            });
            assert_eq!(got, case.client, "{name}");
            assert_eq!(client.is_done(), case.accepted, "{name}");
            if case.accepted {
                assert_eq!(outcome.reason, "", "{name}");
                assert_eq!(client.server_hostname(), Some("tailer-1"), "{name}");
            } else {
                assert_eq!(outcome.reason, "shared_key mismatch", "{name}");
                let pong = fields_with_bool(&outcome.pong);
                assert_eq!(
                    pong,
                    ("shared_key mismatch".into(), String::new(), String::new())
                );
            }
            // Both ends are finished either way.
            assert_eq!(
                client.feed(&[]),
                Err(HandshakeError::AlreadyFinished),
                "{name}"
            );
            assert_eq!(
                server.feed(&ping),
                Err(HandshakeError::AlreadyFinished),
                "{name}"
            );
        }
    }

    /// (reason, hostname, digest) of a PONG.
    fn fields_with_bool(bytes: &[u8]) -> (String, String, String) {
        match decode(bytes) {
            Value::Array(items) => {
                let s = |i: usize| String::from_utf8(items[i].bytes().unwrap().to_vec()).unwrap();
                (s(2), s(3), s(4))
            }
            other => panic!("not an array: {other:?}"),
        }
    }

    #[test]
    fn handshake_server_helo_shape() {
        let (_, helo) = Server::new(b"k".to_vec(), "tailer-1".into(), NONCE);
        let want = Value::Array(vec![
            Value::Str(b"HELO"),
            Value::Map(vec![
                (Value::Str(b"nonce"), Value::Bin(&NONCE)),
                (Value::Str(b"auth"), Value::Str(b"")),
                (Value::Str(b"keepalive"), Value::Bool(true)),
            ]),
        ]);
        assert_eq!(decode(&helo), want);
    }

    /// HELOs as fluentd and fluent-bit send them, and the PING the client answers with.
    #[test]
    fn handshake_client_answers_helo() {
        let auth16: &[u8] = b"\x80\x81\xfe\xffauth-salt-16";
        struct Case {
            name: &'static str,
            helo: Vec<u8>,
            user: Option<(&'static str, &'static str)>,
            nonce: &'static [u8],
            keepalive: bool,
            /// (username, password digest) expected in the PING.
            creds: (&'static str, String),
        }
        let cases = [
            Case {
                name: "fluent-bit: nonce and auth as str of non-UTF-8 bytes, no keepalive",
                helo: helo(Opt::Str(&NONCE), Opt::Str(auth16), Opt::Absent),
                user: None,
                nonce: &NONCE,
                keepalive: true,
                creds: ("", digest_hex(&[auth16])),
            },
            Case {
                name: "fluentd with a shared key: bin nonce, bin auth, keepalive",
                helo: helo(Opt::Bin(&NONCE), Opt::Bin(auth16), Opt::Bool(true)),
                user: None,
                nonce: &NONCE,
                keepalive: true,
                creds: ("", digest_hex(&[auth16])),
            },
            Case {
                name: "auth salt and credentials",
                helo: helo(Opt::Bin(&NONCE), Opt::Bin(auth16), Opt::Bool(false)),
                user: Some(("alice", "pw")),
                nonce: &NONCE,
                keepalive: false,
                creds: ("alice", digest_hex(&[auth16, b"alice", b"pw"])),
            },
            Case {
                name: "empty auth salt: no credentials sent even if configured",
                helo: helo(Opt::Str(b"plain-nonce"), Opt::Str(b""), Opt::Bool(true)),
                user: Some(("alice", "pw")),
                nonce: b"plain-nonce",
                keepalive: true,
                creds: ("", String::new()),
            },
            Case {
                name: "nil auth and nil keepalive read as absent",
                helo: helo(Opt::Bin(&NONCE), Opt::Nil, Opt::Nil),
                user: None,
                nonce: &NONCE,
                keepalive: true,
                creds: ("", String::new()),
            },
        ];
        for case in cases {
            let name = case.name;
            let mut client = Client::new(config("s3cret", case.user), SALT_RANDOM);
            let ping = expect_send(client.feed(&case.helo), case.helo.len());
            let salt = salt();
            let want: Vec<Vec<u8>> = vec![
                b"PING".to_vec(),
                b"forwarder-0".to_vec(),
                salt.clone().into_bytes(),
                digest_hex(&[salt.as_bytes(), b"forwarder-0", case.nonce, b"s3cret"]).into_bytes(),
                case.creds.0.as_bytes().to_vec(),
                case.creds.1.clone().into_bytes(),
            ];
            assert_eq!(fields(&ping), want, "{name}");
            // Every element is a str: fluent-bit's in_forward rejects anything else.
            match decode(&ping) {
                Value::Array(items) => {
                    assert!(items.iter().all(|v| matches!(v, Value::Str(_))), "{name}")
                }
                other => panic!("{name}: {other:?}"),
            }
            assert_eq!(client.server_keepalive(), case.keepalive, "{name}");
        }
    }

    #[test]
    fn handshake_client_rejects_bad_helo() {
        let cases: &[(&str, Vec<u8>, &str)] = &[
            (
                "no nonce",
                helo(Opt::Absent, Opt::Str(b""), Opt::Bool(true)),
                "no \"nonce\"",
            ),
            (
                "integer nonce",
                helo(Opt::Int, Opt::Str(b""), Opt::Absent),
                "option \"nonce\" is an integer",
            ),
            (
                "keepalive not a boolean",
                helo(Opt::Bin(&NONCE), Opt::Str(b""), Opt::Str(b"yes")),
                "option \"keepalive\" is the string \"yes\"",
            ),
            (
                "auth an integer",
                helo(Opt::Bin(&NONCE), Opt::Int, Opt::Absent),
                "option \"auth\" is an integer",
            ),
            (
                "three elements",
                {
                    let mut out = Out::default();
                    out.array(3).str("HELO").map(0).str("x");
                    out.0
                },
                "HELO has 3 elements, not 2",
            ),
            (
                "options not a map",
                {
                    let mut out = Out::default();
                    out.array(2).str("HELO").str("nonce");
                    out.0
                },
                "element 1 (options) is the string \"nonce\", not a map",
            ),
            (
                "a PONG instead",
                pong(true, "", "x", "y"),
                "starts with the string \"PONG\", not \"HELO\"",
            ),
            ("a bare map", vec![0x80], "got a map of 0 entries"),
        ];
        for (name, bytes, detail) in cases {
            let mut client = Client::new(config("k", None), SALT_RANDOM);
            match client.feed(bytes) {
                Err(HandshakeError::Malformed {
                    expected: "HELO",
                    detail: got,
                }) => assert!(got.contains(detail), "{name}: {got}"),
                other => panic!("{name}: {other:?}"),
            }
            assert_eq!(
                client.feed(bytes),
                Err(HandshakeError::AlreadyFinished),
                "{name}"
            );
        }
    }

    #[test]
    fn handshake_client_checks_pong() {
        let salt = salt();
        let good = |key: &str, host: &str| {
            digest_hex(&[salt.as_bytes(), host.as_bytes(), &NONCE, key.as_bytes()])
        };
        let ping_digest = good("s3cret", "forwarder-0");
        let cases: Vec<(&str, Vec<u8>, Result<(), HandshakeError>)> = vec![
            (
                "right digest",
                pong(true, "", "tailer-1", &good("s3cret", "tailer-1")),
                Ok(()),
            ),
            (
                "digest made with another key",
                pong(true, "", "tailer-1", &good("other", "tailer-1")),
                Err(HandshakeError::ServerKeyMismatch),
            ),
            (
                "digest for another hostname",
                pong(true, "", "tailer-1", &good("s3cret", "tailer-2")),
                Err(HandshakeError::ServerKeyMismatch),
            ),
            (
                "uppercase digest",
                pong(
                    true,
                    "",
                    "tailer-1",
                    &good("s3cret", "tailer-1").to_uppercase(),
                ),
                Err(HandshakeError::ServerKeyMismatch),
            ),
            (
                "empty digest",
                pong(true, "", "tailer-1", ""),
                Err(HandshakeError::ServerKeyMismatch),
            ),
            (
                "our PING digest echoed back under our hostname",
                pong(true, "", "forwarder-0", &ping_digest),
                Err(HandshakeError::SameHostname {
                    hostname: "forwarder-0".into(),
                }),
            ),
            (
                "refused by user auth",
                pong(false, "username/password mismatch", "", ""),
                Err(HandshakeError::Rejected {
                    reason: "username/password mismatch".into(),
                }),
            ),
            (
                "refusal reason with a forged log line and terminal controls, escaped",
                pong(false, "no\nERROR forged\x1b[2J\u{202e}", "", ""),
                Err(HandshakeError::Rejected {
                    reason: r"no\nERROR forged\x1b[2J\u{202e}".into(),
                }),
            ),
            (
                "four elements",
                {
                    let mut out = Out::default();
                    out.array(4).str("PONG").bool(true).str("").str("tailer-1");
                    out.0
                },
                Err(HandshakeError::Malformed {
                    expected: "PONG",
                    detail: "PONG has 4 elements, not 5".into(),
                }),
            ),
            (
                "auth result an integer",
                {
                    let mut out = Out::default();
                    out.array(5).str("PONG");
                    rmp::encode::write_uint(&mut out.0, 1).unwrap();
                    out.str("").str("tailer-1").str("");
                    out.0
                },
                Err(HandshakeError::Malformed {
                    expected: "PONG",
                    detail: "element 1 (auth result) is an integer, not a boolean".into(),
                }),
            ),
        ];
        for (name, bytes, want) in cases {
            let mut client = Client::new(config("s3cret", None), SALT_RANDOM);
            let helo = helo(Opt::Bin(&NONCE), Opt::Str(b""), Opt::Absent);
            expect_send(client.feed(&helo), helo.len());
            let got = client.feed(&bytes).map(|(used, step)| {
                assert_eq!((used, step), (bytes.len(), ClientStep::Done), "{name}");
            });
            assert_eq!(got, want, "{name}");
            assert_eq!(client.is_done(), want.is_ok(), "{name}");
        }
    }

    #[test]
    fn handshake_error_messages() {
        let cases = [
            (
                HandshakeError::ServerKeyMismatch,
                "server failed shared key check: it does not know our key",
            ),
            (
                HandshakeError::Rejected {
                    reason: "shared_key mismatch".into(),
                },
                "server rejected the handshake: shared_key mismatch",
            ),
            (
                HandshakeError::Malformed {
                    expected: "PONG",
                    detail: "PONG has 4 elements, not 5".into(),
                },
                "malformed handshake: expected PONG, PONG has 4 elements, not 5",
            ),
            (
                HandshakeError::Closed {
                    waiting_for: "PONG",
                },
                "connection closed while waiting for PONG (fluent-bit closes without a PONG \
                 when the shared key does not match)",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
        let mut client = Client::new(config("k", None), SALT_RANDOM);
        assert_eq!(
            client.closed(),
            HandshakeError::Closed {
                waiting_for: "HELO"
            }
        );
        let helo = helo(Opt::Bin(&NONCE), Opt::Str(b""), Opt::Absent);
        expect_send(client.feed(&helo), helo.len());
        assert_eq!(
            client.closed(),
            HandshakeError::Closed {
                waiting_for: "PONG"
            }
        );
        let (server, _) = Server::new(b"k".to_vec(), "t".into(), NONCE);
        assert_eq!(
            server.closed(),
            HandshakeError::Closed {
                waiting_for: "PING"
            }
        );
    }

    /// PINGs other clients could send, and messages that are not PINGs at all.
    #[test]
    fn handshake_server_checks_ping() {
        let salt = b"0123456789abcdef0123456789abcdef";
        let digest = |host: &[u8], key: &[u8]| digest_hex(&[salt, host, &NONCE, key]);
        let ping = |host: &[u8], digest: &str, bin: bool| {
            let mut out = Out::default();
            out.array(6).str("PING");
            if bin {
                out.bin(host).bin(salt);
            } else {
                out.str(std::str::from_utf8(host).unwrap())
                    .str(std::str::from_utf8(salt).unwrap());
            }
            out.str(digest).str("bob").str("whatever");
            out.0
        };
        let cases: Vec<(&str, Vec<u8>, bool, &str, &str)> =
            vec![
            (
                "str fields, right key",
                ping(b"fb-1", &digest(b"fb-1", b"k"), false),
                true,
                "fb-1",
                "",
            ),
            (
                "bin hostname and salt, right key",
                ping(b"fb-1", &digest(b"fb-1", b"k"), true),
                true,
                "fb-1",
                "",
            ),
            (
                "wrong key",
                ping(b"fb-1", &digest(b"fb-1", b"x"), false),
                false,
                "fb-1",
                "shared_key mismatch",
            ),
            (
                "digest for another hostname",
                ping(b"fb-1", &digest(b"fb-2", b"k"), false),
                false,
                "fb-1",
                "shared_key mismatch",
            ),
            (
                "five elements",
                {
                    let mut out = Out::default();
                    out.array(5).str("PING").str("fb-1").str("s").str("d").str("");
                    out.0
                },
                false,
                "",
                "invalid ping message: PING has 5 elements, not 6",
            ),
            (
                "a v0 Message event instead of a PING",
                {
                    let mut out = Out::default();
                    out.array(3).str("audit").bool(false).map(0);
                    out.0
                },
                false,
                "",
                "invalid ping message: the array starts with the string \"audit\", not \"PING\"",
            ),
            (
                "digest an integer",
                {
                    let mut out = Out::default();
                    out.array(6).str("PING").str("fb-1").str("s");
                    rmp::encode::write_uint(&mut out.0, 5).unwrap();
                    out.str("").str("");
                    out.0
                },
                false,
                "fb-1",
                "invalid ping message: element 3 (shared key digest) is an integer, not a str \
                 or bin",
            ),
        ];
        for (name, bytes, accepted, host, reason) in cases {
            let (mut server, _) = Server::new(b"k".to_vec(), "tailer-1".into(), NONCE);
            let outcome = server.feed(&bytes).unwrap().expect("complete");
            assert_eq!(outcome.consumed, bytes.len(), "{name}");
            assert_eq!(outcome.accepted(), accepted, "{name}");
            assert_eq!(outcome.client_hostname, host, "{name}");
            assert_eq!(outcome.reason, reason, "{name}");
            let kind = match reason {
                "" => PingVerdict::Accepted,
                "shared_key mismatch" => PingVerdict::WrongKey,
                _ => PingVerdict::Malformed,
            };
            assert_eq!(outcome.verdict, kind, "{name}");
            let (got_reason, got_host, got_digest) = fields_with_bool(&outcome.pong);
            assert_eq!(got_reason, reason, "{name}");
            if accepted {
                assert_eq!(got_host, "tailer-1", "{name}");
                assert_eq!(got_digest, digest(b"tailer-1", b"k"), "{name}");
            } else {
                assert_eq!((got_host.as_str(), got_digest.as_str()), ("", ""), "{name}");
            }
        }
    }

    /// Every message split at every byte: each prefix asks for more and changes nothing; the
    /// whole message followed by unrelated bytes consumes exactly the message.
    #[test]
    fn handshake_split_delivery() {
        let (mut server, helo) = Server::new(b"k".to_vec(), "tailer-1".into(), NONCE);
        let mut client = Client::new(config("k", None), SALT_RANDOM);
        let trailer = [0x92, 0xa3, b'n', b'e', b'x'];

        for cut in 0..helo.len() {
            assert_eq!(client.feed(&helo[..cut]), Ok((0, ClientStep::NeedMore)));
        }
        let ping = expect_send(client.feed(&[&helo[..], &trailer].concat()), helo.len());

        for cut in 0..ping.len() {
            assert_eq!(server.feed(&ping[..cut]), Ok(None), "cut at {cut}");
        }
        let outcome = server
            .feed(&[&ping[..], &trailer].concat())
            .unwrap()
            .unwrap();
        assert!(outcome.accepted());
        assert_eq!(outcome.consumed, ping.len());

        let pong = outcome.pong;
        for cut in 0..pong.len() {
            assert_eq!(client.feed(&pong[..cut]), Ok((0, ClientStep::NeedMore)));
        }
        assert_eq!(
            client.feed(&[&pong[..], &trailer].concat()),
            Ok((pong.len(), ClientStep::Done))
        );
    }

    #[test]
    fn handshake_garbage_and_oversize() {
        let mut big_bin = vec![0x92, 0xa4, b'H', b'E', b'L', b'O', 0xc6, 0, 1, 0, 0];
        big_bin.resize(big_bin.len() + 1000, 0);
        let mut just_over = vec![0x91, 0xc6];
        just_over.extend_from_slice(&((MAX_MESSAGE - 5) as u32).to_be_bytes());
        let mut just_fits = vec![0x91, 0xc6];
        just_fits.extend_from_slice(&((MAX_MESSAGE - 6) as u32).to_be_bytes());
        just_fits.resize(MAX_MESSAGE, 0);
        let mut deep = vec![0x91; MAX_DEPTH + 1];
        deep.push(0xc0);
        let mut many = vec![0xdc, 0x04, 0x00];
        many.resize(many.len() + 0x400, 0xc0);

        enum Want {
            Malformed(&'static str),
            TooLarge(usize),
            /// A complete value (of the wrong shape: both ends then refuse it as such).
            Complete,
        }
        let cases: Vec<(&str, Vec<u8>, Want)> = vec![
            (
                "reserved byte 0xc1",
                vec![0xc1],
                Want::Malformed("got byte 0xc1 at offset 0"),
            ),
            (
                "0xc1 inside an array",
                vec![0x92, 0xc0, 0xc1],
                Want::Malformed("offset 2"),
            ),
            (
                "str32 header claiming 70000 bytes",
                vec![0xdb, 0x00, 0x01, 0x11, 0x70],
                Want::TooLarge(5 + 70000),
            ),
            (
                "bin32 of 65536 bytes, partly delivered",
                big_bin,
                Want::TooLarge(11 + 65536),
            ),
            (
                "one byte over the cap",
                just_over,
                Want::TooLarge(MAX_MESSAGE + 1),
            ),
            ("exactly the cap", just_fits, Want::Complete),
            (
                "array32 header claiming 4G elements",
                vec![0xdd, 0xff, 0xff, 0xff, 0xff],
                Want::Malformed("container of 4294967295 values"),
            ),
            (
                "1024 nils in one array (1025 values)",
                many,
                Want::Malformed("more than 1024 msgpack values"),
            ),
            (
                "nested too deep",
                deep,
                Want::Malformed("nested deeper than 8"),
            ),
        ];
        for (name, bytes, want) in cases {
            let mut client = Client::new(config("k", None), SALT_RANDOM);
            let (mut server, _) = Server::new(b"k".to_vec(), "tailer-1".into(), NONCE);
            let from_client = client.feed(&bytes).map(|_| ());
            let from_server = server.feed(&bytes).map(|_| ());
            match want {
                Want::Malformed(detail) => {
                    for (side, got, expected) in [
                        ("client", from_client, "HELO"),
                        ("server", from_server, "PING"),
                    ] {
                        match got {
                            Err(HandshakeError::Malformed {
                                expected: e,
                                detail: d,
                            }) => {
                                assert_eq!(e, expected, "{name} ({side})");
                                assert!(d.contains(detail), "{name} ({side}): {d}");
                            }
                            other => panic!("{name} ({side}): {other:?}"),
                        }
                    }
                }
                Want::TooLarge(size) => {
                    assert_eq!(
                        from_client,
                        Err(HandshakeError::TooLarge {
                            expected: "HELO",
                            size
                        }),
                        "{name}"
                    );
                    assert_eq!(
                        from_server,
                        Err(HandshakeError::TooLarge {
                            expected: "PING",
                            size
                        }),
                        "{name}"
                    );
                }
                Want::Complete => {
                    assert!(
                        matches!(
                            from_client,
                            Err(HandshakeError::Malformed {
                                expected: "HELO",
                                ..
                            })
                        ),
                        "{name}: {from_client:?}"
                    );
                    // The server answers a complete non-PING with a refusing PONG.
                    assert_eq!(from_server, Ok(()), "{name}");
                }
            }
        }
    }

    /// One check against independent implementations: Python's msgpack decodes our PING as
    /// six str elements, and hashlib computes the same digests from the bytes we sent.
    #[test]
    fn handshake_ping_matches_python() {
        const SCRIPT: &str = r#"
import hashlib, sys, msgpack
ping = msgpack.unpackb(sys.stdin.buffer.read(), raw=False)
nonce, key, auth = (bytes.fromhex(a) for a in sys.argv[1:4])
user, password = sys.argv[4], sys.argv[5]
_, host, salt, digest, got_user, got_pw = ping
want = hashlib.sha512(salt.encode() + host.encode() + nonce + key).hexdigest()
want_pw = hashlib.sha512(auth + user.encode() + password.encode()).hexdigest()
print(len(ping), ",".join(type(x).__name__ for x in ping), len(salt),
      digest == want, got_user == user, got_pw == want_pw)
"#;
        let auth: &[u8] = b"\x00\xff\x10auth-salt-xyz";
        let mut client = Client::new(
            ClientConfig {
                shared_key: b"k\xc3\xa9y".to_vec(),
                self_hostname: "forwarder-0".into(),
                username: Some("alice".into()),
                password: Some("pw".into()),
            },
            SALT_RANDOM,
        );
        let helo = helo(Opt::Bin(&NONCE), Opt::Bin(auth), Opt::Absent);
        let ping = expect_send(client.feed(&helo), helo.len());

        let mut child = std::process::Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(SCRIPT)
            .args([hex(&NONCE), hex(b"k\xc3\xa9y"), hex(auth)])
            .args(["alice", "pw"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("/usr/bin/python3 with python3-msgpack is needed for this test");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&ping).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "6 str,str,str,str,str,str 32 True True True"
        );
    }
}
