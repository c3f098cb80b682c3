//! The connection to the receiver as an explicit state machine, advanced only by readiness
//! events and timers: `Down` (waiting out a backoff) -> `Connecting` -> `Ready`. Any fault (connect
//! error, EOF, socket error, ack timeout, an ack for a chunk we did not send) drops the socket and
//! goes back to `Down` with exponential backoff and jitter; the outbox then resends every unacked
//! chunk in order on the next connection.

use std::io::{self, Read};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::cli::Target;
use crate::forward;
use crate::outbox::{AckError, Outbox};

const BACKOFF_START: Duration = Duration::from_millis(100);
/// Acks are tiny; anything bigger than this without a complete message is not an ack stream.
const MAX_ACK_BUF: usize = 64 * 1024;

enum State {
    Down {
        retry_at: Instant,
    },
    Connecting {
        sock: TcpStream,
        peer: SocketAddr,
        deadline: Instant,
    },
    Ready {
        sock: TcpStream,
        peer: SocketAddr,
        rbuf: Vec<u8>,
        interest: Interest,
    },
}

pub struct Settings {
    pub target: Target,
    pub backoff_max: Duration,
    pub ack_timeout: Duration,
    pub connect_timeout: Duration,
}

pub struct Conn {
    cfg: Settings,
    state: State,
    token: Token,
    attempts: u32,
    /// Connections established after the first one.
    pub reconnects: u64,
    connected_once: bool,
    rng: u64,
}

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
            rng: seed | 1,
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }

    /// The next moment a timer must wake the loop for this connection.
    pub fn deadline(&self, outbox: &Outbox) -> Option<Instant> {
        match &self.state {
            State::Down { retry_at } => Some(*retry_at),
            State::Connecting { deadline, .. } => Some(*deadline),
            State::Ready { .. } => outbox
                .oldest_unacked_sent()
                .map(|(t, _)| t + self.cfg.ack_timeout),
        }
    }

    /// Does whatever the current state allows: start a connection once the backoff has passed,
    /// finish a pending connect, read acks, write queued chunks. Spurious calls are harmless.
    pub fn drive(&mut self, registry: &Registry, outbox: &mut Outbox, now: Instant) {
        if let Err(reason) = self.step(registry, outbox, now) {
            self.fail(registry, reason, now);
        }
    }

    fn step(
        &mut self,
        registry: &Registry,
        outbox: &mut Outbox,
        now: Instant,
    ) -> Result<(), String> {
        loop {
            match &mut self.state {
                State::Down { retry_at } => {
                    if now < *retry_at {
                        return Ok(());
                    }
                    let peer = resolve(&self.cfg.target)?;
                    let mut sock =
                        TcpStream::connect(peer).map_err(|e| format!("connect to {peer}: {e}"))?;
                    registry
                        .register(
                            &mut sock,
                            self.token,
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .map_err(|e| format!("register socket: {e}"))?;
                    debug!("connecting to {} ({peer})", self.cfg.target);
                    self.state = State::Connecting {
                        sock,
                        peer,
                        deadline: now + self.cfg.connect_timeout,
                    };
                }
                State::Connecting {
                    sock,
                    peer,
                    deadline,
                } => {
                    if let Ok(Some(e)) | Err(e) = sock.take_error() {
                        return Err(format!("connect to {peer}: {e}"));
                    }
                    match sock.peer_addr() {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                            if now >= *deadline {
                                return Err(format!(
                                    "connect to {peer}: timed out after {:?}",
                                    self.cfg.connect_timeout
                                ));
                            }
                            return Ok(());
                        }
                        Err(e) => return Err(format!("connect to {peer}: {e}")),
                    }
                    let _ = sock.set_nodelay(true);
                    let peer = *peer;
                    let State::Connecting { sock, .. } =
                        std::mem::replace(&mut self.state, State::Down { retry_at: now })
                    else {
                        unreachable!("matched Connecting above")
                    };
                    if self.connected_once {
                        self.reconnects += 1;
                    }
                    self.connected_once = true;
                    info!(
                        "connected to {} ({peer}); {} chunks to (re)send",
                        self.cfg.target,
                        outbox.unacked()
                    );
                    outbox.rewind();
                    self.state = State::Ready {
                        sock,
                        peer,
                        rbuf: Vec::new(),
                        interest: Interest::READABLE | Interest::WRITABLE,
                    };
                }
                State::Ready {
                    sock,
                    peer,
                    rbuf,
                    interest,
                } => {
                    read_acks(sock, rbuf, outbox, &mut self.attempts)
                        .map_err(|e| format!("{peer}: {e}"))?;
                    if let Some((sent, id)) = outbox.oldest_unacked_sent() {
                        if now >= sent + self.cfg.ack_timeout {
                            return Err(format!(
                                "{peer}: no ack for chunk {id} within {:?}",
                                self.cfg.ack_timeout
                            ));
                        }
                    }
                    let done = outbox
                        .write_to(sock, now)
                        .map_err(|e| format!("{peer}: write: {e}"))?;
                    // Interest comes from state: wait for WRITABLE only while a write is stuck.
                    let want = if done {
                        Interest::READABLE
                    } else {
                        Interest::READABLE | Interest::WRITABLE
                    };
                    if want != *interest {
                        registry
                            .reregister(sock, self.token, want)
                            .map_err(|e| format!("reregister: {e}"))?;
                        *interest = want;
                    }
                    return Ok(());
                }
            }
        }
    }

    fn fail(&mut self, registry: &Registry, reason: String, now: Instant) {
        let old = std::mem::replace(&mut self.state, State::Down { retry_at: now });
        match old {
            State::Connecting { mut sock, .. } | State::Ready { mut sock, .. } => {
                let _ = registry.deregister(&mut sock);
            }
            State::Down { .. } => {}
        }
        let delay = self.next_backoff();
        warn!(
            "{}: {reason}; retrying in {:.1}s",
            self.cfg.target,
            delay.as_secs_f64()
        );
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
        if let State::Connecting { sock, .. } | State::Ready { sock, .. } = &mut self.state {
            let _ = registry.deregister(sock);
        }
        self.state = State::Down {
            retry_at: Instant::now() + Duration::from_secs(3600),
        };
    }
}

fn resolve(t: &Target) -> Result<SocketAddr, String> {
    (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {t}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {t}: no addresses"))
}

/// Reads until the socket would block and applies every complete ack.
fn read_acks(
    sock: &mut TcpStream,
    rbuf: &mut Vec<u8>,
    outbox: &mut Outbox,
    attempts: &mut u32,
) -> Result<(), String> {
    let mut tmp = [0u8; 4096];
    loop {
        match sock.read(&mut tmp) {
            Ok(0) => return Err("receiver closed the connection".into()),
            Ok(n) => {
                rbuf.extend_from_slice(&tmp[..n]);
                if rbuf.len() > MAX_ACK_BUF {
                    return Err(format!(
                        "receiver sent {} bytes that are not an ack",
                        rbuf.len()
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let mut used = 0;
    loop {
        match forward::parse_ack(&rbuf[used..]) {
            Ok(Some((id, n))) => {
                match outbox.ack(id) {
                    Ok(_) => *attempts = 0,
                    Err(AckError::Unknown(id)) => {
                        return Err(format!("ack for unknown chunk {id:?}"))
                    }
                }
                used += n;
            }
            Ok(None) => break,
            Err(e) => return Err(format!("bad ack: {e}")),
        }
    }
    rbuf.drain(..used);
    Ok(())
}
