//! The connection to the receiver as an explicit state machine, advanced only by readiness
//! events and timers:
//! `Down` (backoff) -> `Connecting` -> [`ProxyTls` -> ] [`Proxying` (HTTP CONNECT) -> ] `Tls` ->
//! `Handshake` (shared key) -> `Ready`. Through a konnectivity Unix socket the CONNECT goes
//! straight over the socket; through an mTLS proxy it goes inside TLS to the proxy, and the TLS
//! to the receiver then runs inside that.
//! Any fault (connect error, TLS failure, rejected handshake, EOF, socket error, ack timeout, an
//! ack for a chunk we did not send) drops the socket and goes back to `Down` with exponential
//! backoff and jitter; the outbox then resends every unacked chunk in order on the next
//! connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use rustls::ClientConnection;

use crate::cli::Target;
use crate::escape;
use crate::forward;
use crate::handshake;
use crate::outbox::{AckError, Outbox};
use crate::proxy;
use crate::sys;
use crate::tls;
use crate::transport::{tls_failure, Socket, Transport};

const BACKOFF_START: Duration = Duration::from_millis(100);
/// Acks are tiny; anything bigger than this without a complete message is not an ack stream.
const MAX_ACK_BUF: usize = 64 * 1024;

struct Link {
    t: Transport,
    /// The address we connected to, for log lines.
    peer: String,
}

enum State {
    Down {
        retry_at: Instant,
    },
    Connecting {
        link: Link,
        deadline: Instant,
    },
    /// TLS to the mTLS proxy.
    ProxyTls {
        link: Link,
        deadline: Instant,
    },
    /// CONNECT sent (or being sent), waiting for the proxy's answer.
    Proxying {
        link: Link,
        out: Vec<u8>,
        rbuf: Vec<u8>,
        parser: proxy::ConnectResponse,
        deadline: Instant,
    },
    Tls {
        link: Link,
        deadline: Instant,
    },
    Handshake {
        link: Link,
        hs: Box<handshake::Client>,
        rbuf: Vec<u8>,
        out: Vec<u8>,
        deadline: Instant,
    },
    Ready {
        link: Link,
        rbuf: Vec<u8>,
        interest: Interest,
    },
}

/// TLS to the receiver; replaced (by the event loop) when the certificate files change.
pub struct TlsSetup {
    pub client: tls::ClientTls,
    pub vhost: String,
}

/// How the receiver is reached.
pub enum Route {
    Direct,
    /// konnectivity: HTTP CONNECT over a Unix socket beside the apiserver.
    Uds(std::path::PathBuf),
    /// HTTP CONNECT inside mTLS to a proxy (e.g. Gardener's reversed-VPN envoy).
    Mtls {
        host: String,
        port: u16,
        tls: tls::ClientTls,
    },
}

pub struct Settings {
    pub target: Target,
    pub route: Route,
    pub backoff_max: Duration,
    pub ack_timeout: Duration,
    pub connect_timeout: Duration,
    pub tls: Option<TlsSetup>,
    pub handshake: Option<handshake::ClientConfig>,
}

pub struct Conn {
    cfg: Settings,
    state: State,
    token: Token,
    attempts: u32,
    /// Connections established after the first one.
    pub reconnects: u64,
    connected_once: bool,
    /// The last failure, so a fault that repeats on every attempt is logged once at warn and
    /// then at debug until something changes.
    last_failure: Option<String>,
    rng: u64,
}

type Step = Result<(), String>;

impl Conn {
    pub fn new(cfg: Settings, token: Token, seed: u64) -> Conn {
        Conn {
            cfg,
            state: State::Down {
                retry_at: Instant::now(),
            },
            token,
            attempts: 0,
            reconnects: 0,
            connected_once: false,
            last_failure: None,
            rng: seed | 1,
        }
    }

    /// New TLS material for the next connection (the current one, if any, keeps its session).
    pub fn set_tls(&mut self, client: tls::ClientTls) {
        if let Some(t) = self.cfg.tls.as_mut() {
            t.client = client;
        }
        self.retry_soon();
    }

    /// New TLS material for the mTLS proxy, for the next connection.
    pub fn set_proxy_tls(&mut self, client: tls::ClientTls) {
        if let Route::Mtls { tls, .. } = &mut self.cfg.route {
            *tls = client;
        }
        self.retry_soon();
    }

    /// A fixed configuration deserves a prompt retry rather than the rest of a long backoff.
    fn retry_soon(&mut self) {
        if let State::Down { retry_at } = &mut self.state {
            *retry_at = (*retry_at).min(Instant::now() + BACKOFF_START);
            self.attempts = 0;
        }
    }

    /// The next moment a timer must wake the loop for this connection.
    pub fn deadline(&self, outbox: &Outbox) -> Option<Instant> {
        match &self.state {
            State::Down { retry_at } => Some(*retry_at),
            State::Connecting { deadline, .. }
            | State::ProxyTls { deadline, .. }
            | State::Proxying { deadline, .. }
            | State::Tls { deadline, .. }
            | State::Handshake { deadline, .. } => Some(*deadline),
            State::Ready { .. } => outbox
                .oldest_unacked_sent()
                .map(|(t, _)| t + self.cfg.ack_timeout),
        }
    }

    /// Does whatever the current state allows: start a connection once the backoff has passed,
    /// finish a pending connect, advance TLS and the handshake, read acks, write queued chunks.
    /// Spurious calls are harmless.
    pub fn drive(&mut self, registry: &Registry, outbox: &mut Outbox, now: Instant) {
        if let Err(reason) = self.step(registry, outbox, now) {
            self.fail(registry, reason, now);
        }
    }

    fn step(&mut self, registry: &Registry, outbox: &mut Outbox, now: Instant) -> Step {
        loop {
            let state = std::mem::replace(&mut self.state, State::Down { retry_at: now });
            let (next, again) = self.advance(state, registry, outbox, now)?;
            self.state = next;
            if !again {
                return Ok(());
            }
        }
    }

    /// One transition. Returns the new state and whether to try the next one at once.
    fn advance(
        &mut self,
        state: State,
        registry: &Registry,
        outbox: &mut Outbox,
        now: Instant,
    ) -> Result<(State, bool), String> {
        let target = &self.cfg.target;
        match state {
            State::Down { retry_at } => {
                if now < retry_at {
                    return Ok((State::Down { retry_at }, false));
                }
                let (sock, peer) = match &self.cfg.route {
                    Route::Direct => {
                        let addr = resolve(&target.host, target.port)?;
                        let s = TcpStream::connect(addr)
                            .map_err(|e| format!("connect to {addr}: {e}"))?;
                        (Socket::Tcp(s), addr.to_string())
                    }
                    Route::Uds(path) => {
                        let s = UnixStream::connect(path).map_err(|e| {
                            format!("connect to konnectivity socket {} (--konnectivity-uds-socket): {e}", path.display())
                        })?;
                        (Socket::Unix(s), format!("proxy {}", path.display()))
                    }
                    Route::Mtls { host, port, .. } => {
                        let addr = resolve(host, *port)?;
                        let s = TcpStream::connect(addr)
                            .map_err(|e| format!("connect to proxy {addr} (--proxy-host): {e}"))?;
                        (Socket::Tcp(s), format!("proxy {addr}"))
                    }
                };
                let mut link = Link {
                    t: Transport::new(sock),
                    peer,
                };
                registry
                    .register(
                        &mut link.t.sock,
                        self.token,
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(|e| format!("register socket: {e}"))?;
                debug!("connecting to {target} via {}", link.peer);
                Ok((
                    State::Connecting {
                        link,
                        deadline: now + self.cfg.connect_timeout,
                    },
                    true,
                ))
            }
            State::Connecting { mut link, deadline } => {
                match link.t.sock.connected() {
                    Ok(true) => {}
                    Ok(false) if now >= deadline => {
                        return Err(format!(
                            "connect to {}: timed out after {:?}",
                            link.peer, self.cfg.connect_timeout
                        ))
                    }
                    Ok(false) => return Ok((State::Connecting { link, deadline }, false)),
                    Err(e) => return Err(format!("connect to {}: {e}", link.peer)),
                }
                if let Socket::Tcp(s) = &link.t.sock {
                    let _ = s.set_nodelay(true);
                }
                match &self.cfg.route {
                    Route::Direct => Ok((self.start_tls(link, now)?, true)),
                    Route::Uds(_) => Ok((self.start_connect(link, now)?, true)),
                    Route::Mtls { host, tls, .. } => {
                        tls.presented.clear();
                        let name = tls::server_name(host).map_err(|e| e.to_string())?;
                        let conn = ClientConnection::new(Arc::clone(&tls.config), name)
                            .map_err(|e| format!("TLS setup for the proxy: {e}"))?;
                        link.t.outer = Some(conn);
                        Ok((State::ProxyTls { link, deadline }, true))
                    }
                }
            }
            State::ProxyTls { mut link, deadline } => match link.t.handshake() {
                Ok(true) => Ok((self.start_connect(link, now)?, true)),
                Ok(false) if now >= deadline => Err(format!(
                    "TLS handshake with the proxy timed out after {:?}",
                    self.cfg.connect_timeout
                )),
                Ok(false) => Ok((State::ProxyTls { link, deadline }, false)),
                Err(e) => Err(self.describe_proxy_tls(&e)),
            },
            State::Proxying {
                mut link,
                mut out,
                mut rbuf,
                mut parser,
                deadline,
            } => {
                flush_out(&mut link.t, &mut out).map_err(|e| self.describe_proxy_tls(&e))?;
                let eof = match read_some(
                    &mut link.t,
                    &mut rbuf,
                    proxy::MAX_HEADER + proxy::MAX_BODY_SHOWN,
                ) {
                    Ok(()) => false,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => true,
                    // Over the cap: the parser names the oversized header below.
                    Err(_) if rbuf.len() > proxy::MAX_HEADER => false,
                    Err(e) => {
                        return Err(format!(
                            "{}{}",
                            self.describe_proxy_tls(&e),
                            self.proxy_refusal_hint()
                        ))
                    }
                };
                match parser.feed(&rbuf) {
                    proxy::Parsed::Open { header_len } => {
                        debug!(
                            "{}: CONNECT {} answered \"{}\"",
                            link.peer,
                            target,
                            first_line(&rbuf)
                        );
                        link.t.open_tunnel(&rbuf[header_len..]);
                        Ok((self.start_tls(link, now)?, true))
                    }
                    proxy::Parsed::Refused(e) => Err(e.to_string()),
                    proxy::Parsed::NeedMore if eof => Err(format!(
                        "{}{}",
                        parser.finish(&rbuf),
                        self.proxy_refusal_hint()
                    )),
                    // tinyproxy's refusals carry no length: their body ends when it closes, so a
                    // refusal that arrived whole is reported at the deadline rather than lost.
                    proxy::Parsed::NeedMore if now >= deadline && !rbuf.is_empty() => {
                        Err(parser.finish(&rbuf).to_string())
                    }
                    proxy::Parsed::NeedMore if now >= deadline => Err(format!(
                        "no answer to CONNECT {target} within {:?} (--connect-timeout)",
                        self.cfg.connect_timeout
                    )),
                    proxy::Parsed::NeedMore => Ok((
                        State::Proxying {
                            link,
                            out,
                            rbuf,
                            parser,
                            deadline,
                        },
                        false,
                    )),
                }
            }
            State::Tls { mut link, deadline } => match link.t.handshake() {
                Ok(true) => {
                    if let Some(c) = &link.t.inner {
                        debug!(
                            "TLS with {} established ({:?})",
                            link.peer,
                            c.protocol_version()
                                .map(|v| format!("{v:?}"))
                                .unwrap_or_default()
                        );
                    }
                    Ok((self.after_tls(link, outbox, now), true))
                }
                Ok(false) if now >= deadline => Err(format!(
                    "TLS handshake timed out after {:?}",
                    self.cfg.connect_timeout
                )),
                Ok(false) => Ok((State::Tls { link, deadline }, false)),
                Err(e) => Err(self.describe(&e, &link.t)),
            },
            State::Handshake {
                mut link,
                mut hs,
                mut rbuf,
                mut out,
                deadline,
            } => {
                flush_out(&mut link.t, &mut out).map_err(|e| self.describe(&e, &link.t))?;
                // A refusing server writes its PONG and closes: the PONG (with its reason) may
                // arrive together with the EOF, so read what came before judging the close.
                let eof = match read_some(&mut link.t, &mut rbuf, handshake::MAX_MESSAGE) {
                    Ok(()) => false,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => true,
                    Err(e) => return Err(self.describe(&e, &link.t)),
                };
                loop {
                    let (used, step) = hs
                        .feed(&rbuf)
                        .map_err(|e| format!("shared-key handshake: {e}"))?;
                    rbuf.drain(..used);
                    match step {
                        handshake::ClientStep::NeedMore => break,
                        handshake::ClientStep::Send(bytes) => {
                            out.extend_from_slice(&bytes);
                            flush_out(&mut link.t, &mut out)
                                .map_err(|e| self.describe(&e, &link.t))?;
                        }
                        handshake::ClientStep::Done => {
                            debug!(
                                "{}: shared-key handshake done with \"{}\" (keepalive {})",
                                link.peer,
                                hs.server_hostname().unwrap_or(""),
                                hs.server_keepalive()
                            );
                            if !rbuf.is_empty() {
                                return Err("unexpected bytes after PONG".to_string());
                            }
                            return Ok((self.ready(link, outbox), true));
                        }
                    }
                }
                if eof {
                    return Err(hs.closed().to_string());
                }
                if now >= deadline {
                    return Err(format!(
                        "shared-key handshake timed out after {:?}",
                        self.cfg.connect_timeout
                    ));
                }
                Ok((
                    State::Handshake {
                        link,
                        hs,
                        rbuf,
                        out,
                        deadline,
                    },
                    false,
                ))
            }
            State::Ready {
                mut link,
                mut rbuf,
                interest,
            } => {
                if let Err(e) = read_acks(&mut link.t, &mut rbuf, outbox, &mut self.attempts) {
                    return Err(self.describe_str(e, &link.t));
                }
                if let Some((sent, id)) = outbox.oldest_unacked_sent() {
                    if now >= sent + self.cfg.ack_timeout {
                        return Err(format!(
                            "ack timeout: no ack for chunk {id} within {:?}",
                            self.cfg.ack_timeout
                        ));
                    }
                }
                let done = outbox
                    .write_to(&mut link.t, now)
                    .map_err(|e| format!("write: {}", self.describe(&e, &link.t)))?;
                // Interest comes from state: wait for WRITABLE only while a write is stuck.
                let want = if done && !link.t.wants_write() {
                    Interest::READABLE
                } else {
                    Interest::READABLE | Interest::WRITABLE
                };
                if want != interest {
                    registry
                        .reregister(&mut link.t.sock, self.token, want)
                        .map_err(|e| format!("reregister: {e}"))?;
                }
                Ok((
                    State::Ready {
                        link,
                        rbuf,
                        interest: want,
                    },
                    false,
                ))
            }
        }
    }

    /// Sends `CONNECT <ip>:<port>`: proxies resolve names on their own side, so the target is
    /// always resolved here and sent as an address.
    fn start_connect(&mut self, link: Link, now: Instant) -> Result<State, String> {
        let addr = resolve(&self.cfg.target.host, self.cfg.target.port)?;
        Ok(State::Proxying {
            link,
            out: proxy::connect_request(addr),
            rbuf: Vec::new(),
            parser: proxy::ConnectResponse::new(addr),
            deadline: now + self.cfg.connect_timeout,
        })
    }

    /// TLS to the receiver (inside the tunnel, if any), or straight on without TLS.
    fn start_tls(&mut self, mut link: Link, now: Instant) -> Result<State, String> {
        match &self.cfg.tls {
            Some(tls) => {
                tls.client.presented.clear();
                let name = tls::server_name(&tls.vhost).map_err(|e| e.to_string())?;
                let conn = ClientConnection::new(Arc::clone(&tls.client.config), name)
                    .map_err(|e| format!("TLS setup: {e}"))?;
                link.t.inner = Some(conn);
                Ok(State::Tls {
                    link,
                    deadline: now + self.cfg.connect_timeout,
                })
            }
            // No TLS layer: the Tls state sees a finished handshake and moves on at once.
            None => Ok(State::Tls {
                link,
                deadline: now + self.cfg.connect_timeout,
            }),
        }
    }

    /// With TLS 1.3 the proxy checks our certificate after the client considers the handshake
    /// done; its alert is often lost in the reset that follows, so say what the likely cause is.
    fn proxy_refusal_hint(&self) -> &'static str {
        match self.cfg.route {
            Route::Mtls { .. } => {
                " (an mTLS proxy that closes before answering CONNECT has usually refused our \
                 client certificate: check --proxy-client-crt-file and --proxy-client-key-file)"
            }
            _ => "",
        }
    }

    fn describe_proxy_tls(&self, e: &io::Error) -> String {
        match (tls_failure(e), &self.cfg.route) {
            (Some(err), Route::Mtls { host, tls, .. }) => {
                let msg = tls::explain(err, host, tls.presented.get().as_deref());
                let msg = msg
                    .replace("--tls-ca-file", "--proxy-ca-file")
                    .replace("--tls-crt-file", "--proxy-client-crt-file")
                    .replace("--tls-key-file", "--proxy-client-key-file")
                    .replace("--tls-vhost", "--proxy-host");
                format!("TLS to the proxy: {msg}")
            }
            _ => e.to_string(),
        }
    }

    fn after_tls(&mut self, link: Link, outbox: &mut Outbox, now: Instant) -> State {
        match &self.cfg.handshake {
            Some(cfg) => {
                let mut salt = [0u8; 16];
                let _ = sys::random_bytes(&mut salt);
                State::Handshake {
                    link,
                    hs: Box::new(handshake::Client::new(cfg.clone(), salt)),
                    rbuf: Vec::new(),
                    out: Vec::new(),
                    deadline: now + self.cfg.connect_timeout,
                }
            }
            None => self.ready(link, outbox),
        }
    }

    fn ready(&mut self, link: Link, outbox: &mut Outbox) -> State {
        if self.connected_once {
            self.reconnects += 1;
        }
        self.connected_once = true;
        if self.last_failure.take().is_some() || self.reconnects == 0 {
            info!(
                "connected to {} ({}); {} chunks to send",
                self.cfg.target,
                link.peer,
                outbox.unacked()
            );
        } else {
            info!(
                "reconnected to {} ({}); {} chunks to resend",
                self.cfg.target,
                link.peer,
                outbox.unacked()
            );
        }
        outbox.rewind();
        State::Ready {
            link,
            rbuf: Vec::new(),
            interest: Interest::READABLE | Interest::WRITABLE,
        }
    }

    fn describe(&self, e: &io::Error, t: &Transport) -> String {
        if let Some(err) = tls_failure(e) {
            let vhost = self
                .cfg
                .tls
                .as_ref()
                .map(|t| t.vhost.as_str())
                .unwrap_or("");
            let presented = self.cfg.tls.as_ref().and_then(|t| t.client.presented.get());
            // konnectivity may answer 200 and then write its HTTP error into the tunnel.
            if let Some(what) = proxy::describe_non_tls(&t.first) {
                return what;
            }
            return tls::explain(err, vhost, presented.as_deref());
        }
        if e.kind() == io::ErrorKind::UnexpectedEof
            && t.inner.as_ref().is_some_and(|c| c.is_handshaking())
        {
            if let Some(what) = proxy::describe_non_tls(&t.first) {
                return format!("{what}, then closed it");
            }
            return if t.first.is_empty() && !matches!(self.cfg.route, Route::Direct) {
                "the tunnel was closed right after the proxy's 200 answer, before any TLS \
                 from the receiver (the proxy could not reach it?)"
                    .to_string()
            } else {
                "the receiver closed the connection during the TLS handshake (does it listen \
                 with TLS? it may also have refused our client certificate)"
                    .to_string()
            };
        }
        e.to_string()
    }

    fn describe_str(&self, e: ReadError, t: &Transport) -> String {
        match e {
            ReadError::Io(e) => self.describe(&e, t),
            ReadError::Protocol(s) => s,
        }
    }

    fn fail(&mut self, registry: &Registry, reason: String, now: Instant) {
        let old = std::mem::replace(&mut self.state, State::Down { retry_at: now });
        let mut old_peer = None;
        match old {
            State::Connecting { mut link, .. }
            | State::ProxyTls { mut link, .. }
            | State::Proxying { mut link, .. }
            | State::Tls { mut link, .. }
            | State::Handshake { mut link, .. }
            | State::Ready { mut link, .. } => {
                let _ = registry.deregister(&mut link.t.sock);
                old_peer = Some(link.peer);
            }
            State::Down { .. } => {}
        }
        let delay = self.next_backoff();
        let at = outbox_hint(&old_peer);
        if self.last_failure.as_deref() == Some(reason.as_str()) {
            debug!(
                "{}{at}: {reason}; retrying in {:.1}s",
                self.cfg.target,
                delay.as_secs_f64()
            );
        } else {
            warn!(
                "{}{at}: {reason}; retrying in {:.1}s",
                self.cfg.target,
                delay.as_secs_f64()
            );
        }
        self.last_failure = Some(reason);
        self.state = State::Down {
            retry_at: now + delay,
        };
    }

    /// 100 ms doubling up to `--backoff-timer`, with jitter so that many forwarders restarted
    /// together do not reconnect in lockstep.
    fn next_backoff(&mut self) -> Duration {
        let exp = BACKOFF_START.saturating_mul(1u32 << self.attempts.min(20));
        let cap = exp.min(self.cfg.backoff_max).max(Duration::from_millis(1));
        self.attempts = self.attempts.saturating_add(1);
        // xorshift64: jitter needs no cryptographic quality.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = 0.5 + (self.rng % 1000) as f64 / 2000.0;
        cap.mul_f64(frac)
    }

    /// Drops the connection without a backoff (shutdown).
    pub fn close(&mut self, registry: &Registry) {
        if let State::Connecting { link, .. }
        | State::ProxyTls { link, .. }
        | State::Proxying { link, .. }
        | State::Tls { link, .. }
        | State::Handshake { link, .. }
        | State::Ready { link, .. } = &mut self.state
        {
            if let Some(c) = link.t.inner.as_mut() {
                c.send_close_notify();
                let _ = link.t.handshake();
            }
            let _ = registry.deregister(&mut link.t.sock);
        }
        self.state = State::Down {
            retry_at: Instant::now() + Duration::from_secs(3600),
        };
    }
}

/// The resolved address when it says more than the target does.
fn outbox_hint(peer: &Option<String>) -> String {
    match peer {
        Some(p) => format!(" ({p})"),
        None => String::new(),
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {host}: no addresses"))
}

/// How many characters of what a peer sent an error or log line quotes.
const QUOTED_CHARS: usize = 200;

fn first_line(b: &[u8]) -> String {
    let end = b
        .iter()
        .position(|&c| c == b'\r' || c == b'\n')
        .unwrap_or(b.len());
    escape::for_log(&b[..end], QUOTED_CHARS)
}

/// Writes what `out` holds until it is empty or the transport would block.
fn flush_out(t: &mut Transport, out: &mut Vec<u8>) -> io::Result<()> {
    while !out.is_empty() {
        match t.write(out) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "connection accepted no bytes",
                ))
            }
            Ok(n) => {
                out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let _ = t.handshake();
    Ok(())
}

/// Reads until the transport would block; EOF is `UnexpectedEof`.
fn read_some(t: &mut Transport, rbuf: &mut Vec<u8>, cap: usize) -> io::Result<()> {
    let mut tmp = [0u8; 4096];
    loop {
        match t.read(&mut tmp) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "receiver closed the connection",
                ))
            }
            Ok(n) => {
                rbuf.extend_from_slice(&tmp[..n]);
                if rbuf.len() > cap {
                    return Err(io::Error::other(format!(
                        "receiver sent {} bytes without a complete message",
                        rbuf.len()
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

enum ReadError {
    Io(io::Error),
    Protocol(String),
}

/// Reads until the socket would block and applies every complete ack.
fn read_acks(
    t: &mut Transport,
    rbuf: &mut Vec<u8>,
    outbox: &mut Outbox,
    attempts: &mut u32,
) -> Result<(), ReadError> {
    let res = read_some(t, rbuf, MAX_ACK_BUF);
    // Acks that arrived before an EOF still count.
    let mut used = 0;
    loop {
        match forward::parse_ack(&rbuf[used..]) {
            Ok(Some((id, n))) => {
                match outbox.ack(id) {
                    Ok(_) => *attempts = 0,
                    Err(AckError::Unknown(id)) => {
                        return Err(ReadError::Protocol(format!(
                            "ack for a chunk we did not send: \"{id}\""
                        )))
                    }
                }
                used += n;
            }
            Ok(None) => break,
            Err(e) => {
                // Through a tunnel this is typically the proxy's HTTP error written after its 200.
                let got = &rbuf[used..];
                return Err(ReadError::Protocol(format!(
                    "bad ack: {e}; the receiver sent \"{}\"",
                    escape::for_log(got, QUOTED_CHARS)
                )));
            }
        }
    }
    rbuf.drain(..used);
    res.map_err(ReadError::Io)
}
