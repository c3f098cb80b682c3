//! The connection to the receiver as an explicit state machine, advanced only by readiness
//! events and timers:
//! `Down` (backoff) -> `Resolving` -> `Connecting` -> [`ProxyTls` -> ] [`Proxying` (HTTP
//! CONNECT) -> ] `Tls` -> `Handshake` (shared key) -> `Ready`. Through a konnectivity Unix socket
//! the CONNECT goes straight over the socket; through an mTLS proxy it goes inside TLS to the
//! proxy, and the TLS to the receiver then runs inside that.
//! Names are resolved on the resolver thread (`resolve`), never on the loop, at every attempt;
//! the attempt then tries every address in turn: the next one when a connect fails or times
//! out, and, through a proxy, the next receiver address when the proxy refuses a CONNECT.
//! Any other fault (TLS failure, rejected handshake, EOF, socket error, ack timeout, no write
//! progress, an ack for a chunk we did not send), or the last address failing, drops the socket
//! and goes back to `Down` with exponential backoff and jitter; the outbox then resends every
//! unacked chunk in order on the next connection.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use rustls::ClientConnection;

use crate::cli::Target;
use crate::escape;
use crate::forward::codec as forward;
use crate::forward::handshake;
use crate::forward::outbox::{AckError, Outbox};
use crate::net::proxy;
use crate::net::resolve::{Resolver, Ticket};
use crate::net::tls;
use crate::net::transport::{tls_failure, Socket, Transport};
use crate::repeat::{self, RepeatLog, Say};
use crate::sys;

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
    /// Waiting for the resolver thread; it wakes the loop when the answer is there.
    Resolving {
        ticket: Ticket,
        want: Want,
        deadline: Instant,
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
        /// Since when bytes have been waiting with none written: a receiver that stops reading
        /// in the middle of a chunk is never asked for an ack, so this is its timeout.
        stalled_since: Option<Instant>,
    },
}

/// Which name a lookup is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// The socket's peer: the receiver, or the mTLS proxy.
    Dial,
    /// The receiver, asked of the proxy with CONNECT.
    Via,
}

/// The addresses of one connection attempt, tried in turn before backing off.
#[derive(Default)]
struct Plan {
    /// The receiver's addresses (direct) or the mTLS proxy's; unused with the konnectivity socket.
    dial: Vec<SocketAddr>,
    dial_at: usize,
    /// The receiver's addresses for CONNECT (proxied routes only).
    via: Vec<SocketAddr>,
    via_at: usize,
    /// Why each address tried before the current one failed.
    failed: Vec<String>,
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
    /// `None` while the receiver is not known (discovery has not found it, or its Service is
    /// gone): the connection stays down and nothing is sent.
    pub target: Option<Target>,
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
    /// The failures since the last success: why the last one failed (for `/readyz`), and a
    /// fault that repeats on every attempt logged once at warn, then at debug with a summary
    /// every few minutes, and its end once at info.
    repeats: RepeatLog,
    /// Since when the connection is down after having been up: `/readyz` gives a reconnect
    /// until `--backoff-timer` before it reports the connection lost.
    down_since: Option<Instant>,
    /// The last "address failed, trying the next" line, so a repeat is logged at debug.
    last_skip: Option<String>,
    resolver: Resolver,
    plan: Plan,
    /// The address of the attempt's socket, named in the log line of its failure.
    peer: Option<String>,
    rng: u64,
    /// Failures by [`FailClass`], for the metrics.
    pub failures: [u64; FailClass::ALL.len()],
    /// The phase the last transition started from: what a failure is classified by.
    phase: FailClass,
}

/// A coarse reason class of a connection failure, for the metrics: an operator alerts on
/// "refused" differently than on "tls".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailClass {
    Resolve,
    Refused,
    Timeout,
    Tls,
    Proxy,
    Handshake,
    /// The receiver closed or reset an established connection.
    Closed,
    Other,
}

impl FailClass {
    pub const ALL: [FailClass; 8] = [
        FailClass::Resolve,
        FailClass::Refused,
        FailClass::Timeout,
        FailClass::Tls,
        FailClass::Proxy,
        FailClass::Handshake,
        FailClass::Closed,
        FailClass::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FailClass::Resolve => "resolve",
            FailClass::Refused => "refused",
            FailClass::Timeout => "timeout",
            FailClass::Tls => "tls",
            FailClass::Proxy => "proxy",
            FailClass::Handshake => "handshake",
            FailClass::Closed => "closed",
            FailClass::Other => "other",
        }
    }

    /// The class a state's failures fall in unless their text says otherwise.
    fn of_state(state: &State) -> FailClass {
        match state {
            State::Down { .. } => FailClass::Other,
            State::Resolving { .. } => FailClass::Resolve,
            State::Connecting { .. } => FailClass::Refused,
            State::ProxyTls { .. } | State::Tls { .. } => FailClass::Tls,
            State::Proxying { .. } => FailClass::Proxy,
            State::Handshake { .. } => FailClass::Handshake,
            State::Ready { .. } => FailClass::Closed,
        }
    }

    /// The failure's class from the phase it happened in and its text: timeouts are one class
    /// whatever the phase; a connect that failed otherwise than by refusal (no route, a
    /// konnectivity socket missing) is "other", as are protocol faults of an open connection.
    fn classify(phase: FailClass, reason: &str) -> FailClass {
        let r = reason.to_ascii_lowercase();
        if r.contains("timed out") || r.contains("timeout") || r.contains("no answer") {
            return FailClass::Timeout;
        }
        match phase {
            FailClass::Refused if !r.contains("refused") => FailClass::Other,
            FailClass::Closed
                if !["closed", "reset", "eof", "end of file", "broken pipe"]
                    .iter()
                    .any(|w| r.contains(w)) =>
            {
                FailClass::Other
            }
            other => other,
        }
    }
}

type Step = Result<(), String>;

impl Conn {
    pub fn new(cfg: Settings, token: Token, seed: u64, resolver: Resolver) -> Conn {
        Conn {
            cfg,
            state: State::Down {
                retry_at: Instant::now(),
            },
            token,
            attempts: 0,
            reconnects: 0,
            connected_once: false,
            repeats: RepeatLog::default(),
            down_since: None,
            last_skip: None,
            resolver,
            plan: Plan::default(),
            peer: None,
            rng: seed | 1,
            failures: [0; FailClass::ALL.len()],
            phase: FailClass::Other,
        }
    }

    /// New TLS material for the next connection (the current one, if any, keeps its session).
    pub fn set_tls(&mut self, setup: TlsSetup) {
        self.cfg.tls = Some(setup);
        self.retry_soon();
    }

    /// New TLS material for the mTLS proxy, for the next connection.
    pub fn set_proxy_tls(&mut self, client: tls::ClientTls) {
        if let Route::Mtls { tls, .. } = &mut self.cfg.route {
            *tls = client;
        }
        self.retry_soon();
    }

    /// Points the connection at another receiver (or at none). A connection to the old one is
    /// closed; the chunks it had not acked go again, in order, to the new one.
    pub fn set_target(&mut self, target: Option<Target>, registry: &Registry) {
        if target == self.cfg.target {
            return;
        }
        match (&self.cfg.target, &target) {
            (Some(old), Some(new)) => info!(
                "receiver changed from {old} to {new}: unacked chunks will be sent again to {new}"
            ),
            (None, Some(new)) => info!("receiver is {new}"),
            (Some(old), None) => {
                info!("receiver {old} is gone: delivery paused, the position stays at the last ack")
            }
            (None, None) => {}
        }
        if self.is_ready() {
            self.down_since = Some(Instant::now());
        }
        self.close(registry);
        self.cfg.target = target;
        self.repeats.reset();
        self.attempts = 0;
        self.state = State::Down {
            retry_at: Instant::now(),
        };
    }

    pub fn has_target(&self) -> bool {
        self.cfg.target.is_some()
    }

    /// The receiver as `HOST:PORT`, if known.
    pub fn target(&self) -> Option<String> {
        self.cfg.target.as_ref().map(|t| t.to_string())
    }

    /// Connected and past TLS and the handshake: chunks may flow.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }

    /// Why the last attempt or connection failed, until one succeeds.
    pub fn last_failure(&self) -> Option<&str> {
        self.repeats.text()
    }

    pub fn ack_timeout(&self) -> Duration {
        self.cfg.ack_timeout
    }

    /// `--backoff-timer`: the longest wait between attempts.
    pub fn backoff_max(&self) -> Duration {
        self.cfg.backoff_max
    }

    /// Since when the connection is down after having been up (`None` while up, and before the
    /// first connection).
    pub fn down_since(&self) -> Option<Instant> {
        self.down_since
    }

    /// The receiver for log lines.
    fn shown(&self) -> String {
        match &self.cfg.target {
            Some(t) => t.to_string(),
            None => "the receiver (not known yet)".into(),
        }
    }

    /// A fixed configuration deserves a prompt retry rather than the rest of a long backoff.
    fn retry_soon(&mut self) {
        if let State::Down { retry_at } = &mut self.state {
            *retry_at = (*retry_at).min(Instant::now() + BACKOFF_START);
            self.attempts = 0;
        }
    }

    /// Ready with nothing left to write: the moment to send a partial chunk (Nagle's rule).
    /// While connecting, or while earlier chunks are still going out, the caller keeps filling
    /// the chunk instead, so a slow receiver or a reconnect gets a few large chunks rather than
    /// thousands of tiny ones.
    pub fn idle(&self, outbox: &Outbox) -> bool {
        match &self.state {
            State::Ready { link, .. } => outbox.all_written() && !link.t.wants_write(),
            _ => false,
        }
    }

    /// The next moment a timer must wake the loop for this connection.
    pub fn deadline(&self, outbox: &Outbox) -> Option<Instant> {
        match &self.state {
            State::Down { retry_at } => self.cfg.target.as_ref().map(|_| *retry_at),
            State::Resolving { deadline, .. }
            | State::Connecting { deadline, .. }
            | State::ProxyTls { deadline, .. }
            | State::Proxying { deadline, .. }
            | State::Tls { deadline, .. }
            | State::Handshake { deadline, .. } => Some(*deadline),
            State::Ready { stalled_since, .. } => outbox
                .oldest_unacked_sent()
                .map(|(t, _)| t)
                .into_iter()
                .chain(*stalled_since)
                .min()
                .map(|t| t + self.cfg.ack_timeout),
        }
    }

    /// Does whatever the current state allows: start a connection once the backoff has passed,
    /// finish a pending connect, advance TLS and the handshake, read acks, write queued chunks.
    /// Spurious calls are harmless.
    pub fn drive(&mut self, registry: &Registry, outbox: &mut Outbox, now: Instant) {
        if let Err(reason) = self.step(registry, outbox, now) {
            self.fail(reason, now);
        }
    }

    fn step(&mut self, registry: &Registry, outbox: &mut Outbox, now: Instant) -> Step {
        loop {
            let state = std::mem::replace(&mut self.state, State::Down { retry_at: now });
            self.phase = FailClass::of_state(&state);
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
        let target = self.shown();
        match state {
            State::Down { retry_at } => {
                if now < retry_at || self.cfg.target.is_none() {
                    return Ok((State::Down { retry_at }, false));
                }
                self.plan = Plan::default();
                Ok((self.next_lookup(registry, now)?, true))
            }
            State::Resolving {
                ticket,
                want,
                deadline,
            } => {
                let answer = self.resolver.answer(ticket);
                let (host, _) = self.name_of(want);
                let addrs = match answer {
                    Some(Ok(addrs)) if addrs.is_empty() => {
                        return Err(format!("resolve {host}: no addresses"))
                    }
                    Some(Ok(addrs)) => addrs,
                    Some(Err(e)) => return Err(e),
                    None if now >= deadline => {
                        return Err(format!(
                            "resolve {host}: no answer within {:?} (--connect-timeout)",
                            self.cfg.connect_timeout
                        ))
                    }
                    None => {
                        let state = State::Resolving {
                            ticket,
                            want,
                            deadline,
                        };
                        return Ok((state, false));
                    }
                };
                debug!("{host} resolves to {addrs:?}");
                match want {
                    Want::Dial => self.plan.dial = addrs,
                    Want::Via => self.plan.via = addrs,
                }
                Ok((self.next_lookup(registry, now)?, true))
            }
            State::Connecting { mut link, deadline } => {
                let failed = match link.t.sock.connected() {
                    Ok(true) => None,
                    Ok(false) if now >= deadline => Some(format!(
                        "connect to {}: timed out after {:?}",
                        link.peer, self.cfg.connect_timeout
                    )),
                    Ok(false) => return Ok((State::Connecting { link, deadline }, false)),
                    Err(e) => Some(format!("connect to {}: {e}", link.peer)),
                };
                if let Some(reason) = failed {
                    let _ = registry.deregister(&mut link.t.sock);
                    self.next_dial(reason)?;
                    return Ok((self.dial(registry, now)?, true));
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
                    // Another address of the receiver may be reachable from the proxy: ask for it
                    // on a new tunnel.
                    proxy::Parsed::Refused(e) => {
                        let _ = registry.deregister(&mut link.t.sock);
                        self.next_via(e.to_string())?;
                        Ok((self.dial(registry, now)?, true))
                    }
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
                            return Ok((self.ready(link, outbox, now), true));
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
                stalled_since,
            } => {
                let sent_before = link.t.bytes_sent();
                if let Err(e) = read_acks(&mut link.t, &mut rbuf, outbox, &mut self.attempts) {
                    if matches!(e, ReadError::Io(_)) {
                        outbox.dropped_by_peer();
                    }
                    return Err(self.describe_str(e, &link.t));
                }
                if outbox.take_reconnect() {
                    return Err(
                        "reconnecting to resend, in order, a chunk skipped to probe the \
                                receiver"
                            .to_string(),
                    );
                }
                if let Some((sent, id)) = outbox.oldest_unacked_sent() {
                    if now >= sent + self.cfg.ack_timeout {
                        return Err(format!(
                            "ack timeout: no ack for chunk {id} within {:?}",
                            self.cfg.ack_timeout
                        ));
                    }
                }
                let done = match outbox.write_to(&mut link.t, now) {
                    Ok(done) => done,
                    Err(e) => {
                        outbox.dropped_by_peer();
                        return Err(format!("write: {}", self.describe(&e, &link.t)));
                    }
                };
                let waiting = !done || link.t.wants_write();
                let stalled_since = match (waiting, link.t.bytes_sent() != sent_before) {
                    (false, _) => None,
                    (true, true) => Some(now),
                    (true, false) => Some(stalled_since.unwrap_or(now)),
                };
                if let Some(since) = stalled_since {
                    if now >= since + self.cfg.ack_timeout {
                        return Err(format!(
                            "write timeout: the receiver took no bytes for {:?} (--ack-timeout) \
                             with more waiting (it stopped reading)",
                            self.cfg.ack_timeout
                        ));
                    }
                }
                // Interest comes from state: wait for WRITABLE only while a write is stuck.
                let want = if waiting {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
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
                        stalled_since,
                    },
                    false,
                ))
            }
        }
    }

    /// The name and port a lookup is for.
    fn name_of(&self, want: Want) -> (&str, u16) {
        match (want, &self.cfg.route) {
            (Want::Dial, Route::Mtls { host, port, .. }) => (host, *port),
            _ => match &self.cfg.target {
                Some(t) => (&t.host, t.port),
                None => ("", 0),
            },
        }
    }

    /// Asks for the next name this attempt needs, or dials once every name is resolved.
    fn next_lookup(&mut self, registry: &Registry, now: Instant) -> Result<State, String> {
        let proxied = !matches!(self.cfg.route, Route::Direct);
        let dials_a_name = !matches!(self.cfg.route, Route::Uds(_));
        let want = if dials_a_name && self.plan.dial.is_empty() {
            Want::Dial
        } else if proxied && self.plan.via.is_empty() {
            Want::Via
        } else {
            return self.dial(registry, now);
        };
        let (host, port) = self.name_of(want);
        let host = host.to_string();
        let ticket = self.resolver.ask(&host, port);
        Ok(State::Resolving {
            ticket,
            want,
            deadline: now + self.cfg.connect_timeout,
        })
    }

    /// Starts a nonblocking connect to the current address of the plan, going on to the next
    /// address when one fails at once.
    fn dial(&mut self, registry: &Registry, now: Instant) -> Result<State, String> {
        loop {
            let (sock, peer) = match self.open() {
                Ok(s) => s,
                Err(reason) => {
                    self.next_dial(reason)?;
                    continue;
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
            debug!("connecting to {} via {}", self.shown(), link.peer);
            self.peer = Some(link.peer.clone());
            return Ok(State::Connecting {
                link,
                deadline: now + self.cfg.connect_timeout,
            });
        }
    }

    fn open(&self) -> Result<(Socket, String), String> {
        let addr = self.plan.dial.get(self.plan.dial_at).copied();
        match (&self.cfg.route, addr) {
            (Route::Uds(path), _) => {
                let s = UnixStream::connect(path).map_err(|e| {
                    format!(
                        "connect to konnectivity socket {} (--konnectivity-uds-socket): {e}",
                        path.display()
                    )
                })?;
                Ok((Socket::Unix(s), format!("proxy {}", path.display())))
            }
            (Route::Direct, Some(addr)) => {
                let s = TcpStream::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
                Ok((Socket::Tcp(s), addr.to_string()))
            }
            (Route::Mtls { .. }, Some(addr)) => {
                let s = TcpStream::connect(addr)
                    .map_err(|e| format!("connect to proxy {addr} (--proxy-host): {e}"))?;
                Ok((Socket::Tcp(s), format!("proxy {addr}")))
            }
            // next_lookup dials only once the name is resolved to at least one address.
            (_, None) => Err("no address to connect to".to_string()),
        }
    }

    /// The current address could not be connected to: on to the next one, or the attempt's
    /// failure when none is left.
    fn next_dial(&mut self, reason: String) -> Result<(), String> {
        let p = &mut self.plan;
        if matches!(self.cfg.route, Route::Uds(_)) || p.dial_at + 1 >= p.dial.len() {
            return Err(p.summary(reason));
        }
        p.dial_at += 1;
        let next = p.dial[p.dial_at];
        self.skip(reason, next);
        Ok(())
    }

    /// The proxy refused the CONNECT to the current receiver address: on to the next one
    /// through the same proxy address, or the attempt's failure when none is left.
    fn next_via(&mut self, reason: String) -> Result<(), String> {
        let p = &mut self.plan;
        if p.via_at + 1 >= p.via.len() {
            return Err(p.summary(reason));
        }
        p.via_at += 1;
        let next = p.via[p.via_at];
        self.skip(reason, next);
        Ok(())
    }

    /// Logs an address that failed, once at warn while the same failure repeats.
    fn skip(&mut self, reason: String, next: SocketAddr) {
        let line = format!("{}: {reason}; trying the next address {next}", self.shown());
        if self.last_skip.as_deref() == Some(line.as_str()) {
            debug!("{line}");
        } else {
            warn!("{line}");
        }
        self.last_skip = Some(line);
        self.plan.failed.push(reason);
    }

    /// Sends `CONNECT <ip>:<port>`: proxies resolve names on their own side, so the target is
    /// resolved here (`Want::Via`) and sent as an address.
    fn start_connect(&mut self, link: Link, now: Instant) -> Result<State, String> {
        // next_lookup dials a proxy only once the receiver's name is resolved.
        let Some(addr) = self.plan.via.get(self.plan.via_at).copied() else {
            return Err(format!("no address of {} to CONNECT to", self.shown()));
        };
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
            None => self.ready(link, outbox, now),
        }
    }

    fn ready(&mut self, link: Link, outbox: &mut Outbox, now: Instant) -> State {
        if self.connected_once {
            self.reconnects += 1;
        }
        self.connected_once = true;
        self.down_since = None;
        if let Some(r) = self.repeats.recovered(now) {
            info!(
                "connected to {} ({}): recovered after {} failed attempts over {:.1}s; {} chunks to send",
                self.shown(),
                link.peer,
                r.failures,
                r.lasted.as_secs_f64(),
                outbox.unacked()
            );
        } else if self.reconnects == 0 {
            info!(
                "connected to {} ({}); {} chunks to send",
                self.shown(),
                link.peer,
                outbox.unacked()
            );
        } else {
            info!(
                "reconnected to {} ({}); {} chunks to resend",
                self.shown(),
                link.peer,
                outbox.unacked()
            );
        }
        outbox.rewind();
        State::Ready {
            link,
            rbuf: Vec::new(),
            interest: Interest::READABLE | Interest::WRITABLE,
            stalled_since: None,
        }
    }

    fn describe(&self, e: &io::Error, t: &Transport) -> String {
        if let Some(err) = tls_failure(e) {
            // konnectivity may answer 200 and then write its HTTP error into the tunnel.
            if let Some(what) = proxy::describe_non_tls(&t.first) {
                return what;
            }
            return match &self.cfg.tls {
                Some(setup) => setup.client.explain(err, &setup.vhost),
                None => tls::explain(err, "", None),
            };
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

    fn fail(&mut self, reason: String, now: Instant) {
        // `step` took the state out before the transition that failed, so its socket is gone
        // already (closing the descriptor removes it from epoll); only its address is left.
        let delay = self.next_backoff();
        let at = peer_hint(&self.peer.take());
        let class = FailClass::classify(self.phase, &reason);
        if let Some(n) = FailClass::ALL
            .iter()
            .position(|c| *c == class)
            .and_then(|i| self.failures.get_mut(i))
        {
            *n += 1;
        }
        if self.connected_once && self.down_since.is_none() {
            self.down_since = Some(now);
        }
        let (shown, secs) = (self.shown(), delay.as_secs_f64());
        match self.repeats.failed(&reason, now, SystemTime::now()) {
            Say::First => warn!("{shown}{at}: {reason}; retrying in {secs:.1}s"),
            Say::Quiet => debug!("{shown}{at}: {reason}; retrying in {secs:.1}s"),
            Say::Summary { repeats, since } => warn!(
                "{shown}: connection failures {}; retrying with backoff up to {:?} \
                 (--backoff-timer)",
                repeat::summary(repeats, since, &reason),
                self.cfg.backoff_max
            ),
        }
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

/// The resolved address, which the target (a name) does not show.
fn peer_hint(peer: &Option<String>) -> String {
    match peer {
        Some(p) => format!(" ({p})"),
        None => String::new(),
    }
}

impl Plan {
    /// The attempt's failure: the last address's reason, and the earlier ones.
    fn summary(&self, reason: String) -> String {
        if self.failed.is_empty() {
            return reason;
        }
        format!("{reason} (before that: {})", self.failed.join("; "))
    }
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
    let now = Instant::now();
    // Acks that arrived before an EOF still count.
    let mut used = 0;
    loop {
        match forward::parse_ack(&rbuf[used..]) {
            Ok(Some((id, n))) => {
                match outbox.ack(id, now) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::resolve::tests::{woken, Gate};
    use crate::net::resolve::Lookup;
    use mio::{Events, Poll, Waker};
    use std::net::TcpListener;

    #[test]
    fn conn_failure_classes() {
        use FailClass::*;
        let cases = [
            (
                Refused,
                "connect to 127.0.0.1:9: Connection refused (os error 111)",
                Refused,
            ),
            (
                Refused,
                "connect to 127.0.0.1:9: timed out after 10s",
                Timeout,
            ),
            (
                Refused,
                "connect to 10.0.0.1:9: No route to host (os error 113)",
                Other,
            ),
            (Resolve, "resolve tailer: no addresses", Resolve),
            (
                Resolve,
                "resolve tailer: no answer within 10s (--connect-timeout)",
                Timeout,
            ),
            (Tls, "invalid peer certificate: UnknownIssuer", Tls),
            (Proxy, "the proxy answered 403 Forbidden", Proxy),
            (
                Handshake,
                "shared-key handshake: the server refused",
                Handshake,
            ),
            (Closed, "Connection reset by peer (os error 104)", Closed),
            (Closed, "the receiver closed the connection (EOF)", Closed),
            (
                Closed,
                "ack timeout: no ack for chunk x within 60s",
                Timeout,
            ),
            (Closed, "an ack for a chunk we did not send", Other),
            (Other, "register socket: out of memory", Other),
        ];
        for (phase, reason, want) in cases {
            assert_eq!(
                FailClass::classify(phase, reason),
                want,
                "{phase:?} {reason}"
            );
        }
    }

    const CONN: Token = Token(1);
    const WAKE: Token = Token(9);
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

    fn conn(poll: &Poll, host: &str, port: u16, lookup: Lookup) -> Conn {
        let waker = Waker::new(poll.registry(), WAKE).unwrap();
        let settings = Settings {
            target: Some(Target {
                host: host.into(),
                port,
            }),
            route: Route::Direct,
            backoff_max: Duration::from_secs(1),
            ack_timeout: Duration::from_secs(60),
            connect_timeout: CONNECT_TIMEOUT,
            tls: None,
            handshake: None,
        };
        Conn::new(settings, CONN, 1, Resolver::new(lookup, waker))
    }

    /// An address on 127.0.0.1 that refuses connections: bound by us, then released.
    fn refusing() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn listening() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    /// Runs the loop's rhythm (drive, then poll) until `done` holds or 10 s pass.
    fn drive_until(
        c: &mut Conn,
        poll: &mut Poll,
        outbox: &mut Outbox,
        done: impl Fn(&State) -> bool,
    ) -> bool {
        let mut events = Events::with_capacity(8);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            c.drive(poll.registry(), outbox, Instant::now());
            if done(&c.state) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
        }
    }

    fn ready(s: &State) -> bool {
        matches!(s, State::Ready { .. })
    }

    /// The peer the listener sees, once the connection is in its queue.
    fn accepted(l: &TcpListener) -> bool {
        l.set_nonblocking(true).unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if l.accept().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn a_hanging_lookup_leaves_the_loop_free_and_every_address_is_tried() {
        let mut poll = Poll::new().unwrap();
        let gate = Gate::new();
        let (listener, good) = listening();
        let bad = refusing();
        let mut c = conn(&poll, "receiver.test", good.port(), gate.lookup());
        let mut outbox = Outbox::new(None, "audit", 1 << 20);

        // The lookup hangs; drive returns at once, again and again, and the loop's timer is the
        // resolution deadline.
        let t0 = Instant::now();
        for i in 0..3 {
            c.drive(poll.registry(), &mut outbox, t0 + Duration::from_secs(i));
            assert!(matches!(c.state, State::Resolving { .. }));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "drive waited for the lookup"
        );
        assert_eq!(c.deadline(&outbox), Some(t0 + CONNECT_TIMEOUT));
        let asked = || gate.calls.lock().unwrap().clone();
        let end = Instant::now() + Duration::from_secs(10);
        while asked().is_empty() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            asked(),
            ["receiver.test"],
            "one lookup, on the resolver thread"
        );

        // The answer wakes the loop; the first address refuses, the second is used.
        gate.release(Ok(vec![bad, good]));
        assert!(woken(&mut poll, WAKE), "the resolver did not wake the loop");
        assert!(
            drive_until(&mut c, &mut poll, &mut outbox, ready),
            "never ready; last failure: {:?}",
            c.last_failure()
        );
        assert!(
            accepted(&listener),
            "the listening address got no connection"
        );
        assert_eq!(c.plan.failed.len(), 1, "{:?}", c.plan.failed);
        assert!(
            c.plan.failed[0].contains(&bad.to_string()),
            "{:?}",
            c.plan.failed
        );
    }

    #[test]
    fn a_lookup_slower_than_the_connect_timeout_backs_off_and_serves_the_next_attempt() {
        let mut poll = Poll::new().unwrap();
        let gate = Gate::new();
        let (listener, good) = listening();
        let mut c = conn(&poll, "slow.test", good.port(), gate.lookup());
        let mut outbox = Outbox::new(None, "audit", 1 << 20);
        let t0 = Instant::now();
        c.drive(poll.registry(), &mut outbox, t0);
        c.drive(poll.registry(), &mut outbox, t0 + CONNECT_TIMEOUT);
        let Some(State::Down { retry_at }) = Some(&c.state) else {
            panic!("still waiting after the connect timeout");
        };
        let retry_at = *retry_at;
        let why = c.last_failure().unwrap_or_default().to_string();
        assert!(why.contains("resolve slow.test: no answer"), "{why}");

        // The hung lookup finishes during the backoff; the next attempt uses its answer.
        gate.release(Ok(vec![good]));
        assert!(woken(&mut poll, WAKE));
        c.drive(poll.registry(), &mut outbox, retry_at);
        assert!(matches!(
            c.state,
            State::Connecting { .. } | State::Ready { .. }
        ));
        assert!(drive_until(&mut c, &mut poll, &mut outbox, ready));
        assert!(accepted(&listener));
        assert_eq!(gate.calls.lock().unwrap().len(), 1);
    }

    #[test]
    fn when_every_address_fails_the_failure_names_each_of_them() {
        let mut poll = Poll::new().unwrap();
        let (a, b) = (refusing(), refusing());
        let lookup: Lookup = Arc::new(move |_: &str, _| Ok(vec![a, b]));
        let mut c = conn(&poll, "gone.test", a.port(), lookup);
        let mut outbox = Outbox::new(None, "audit", 1 << 20);
        let down = |s: &State| matches!(s, State::Down { .. });
        c.drive(poll.registry(), &mut outbox, Instant::now());
        assert!(drive_until(&mut c, &mut poll, &mut outbox, down));
        let why = c.last_failure().unwrap_or_default().to_string();
        assert!(
            why.contains(&a.to_string()) && why.contains(&b.to_string()),
            "{why}"
        );
    }

    #[test]
    fn a_literal_address_is_dialed_without_a_lookup() {
        let mut poll = Poll::new().unwrap();
        let (listener, good) = listening();
        let never: Lookup = Arc::new(|h: &str, _| panic!("looked up {h}"));
        let mut c = conn(&poll, "127.0.0.1", good.port(), never);
        let mut outbox = Outbox::new(None, "audit", 1 << 20);
        assert!(drive_until(&mut c, &mut poll, &mut outbox, ready));
        assert!(accepted(&listener));
    }
}
