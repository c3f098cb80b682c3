//! The receiving side (`audit-forwarder tailer`): a Fluent Forward server that prints each record
//! it receives as one JSON line on stdout and acks a chunk only after its records reached stdout.
//! Owns the listening socket and its clients (each optionally behind rustls and the Forward
//! shared-key handshake), the limits every client is held to (connection count, timeouts, one
//! memory budget for all input buffers, the size of a record's JSON), the stdout writer, and the
//! reload of the server's TLS material when the files change, and what it counts for
//! `--metrics-address` (served by `metrics::Server` on this loop). Decoding is `forward`'s job,
//! the handshake's wire format `handshake`'s, reading certificates `tls`'s, and rendering the
//! counts `metrics::tailer`'s.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rustls::{ServerConfig, ServerConnection};

use crate::cli::{SharedKey, TailerTls};
use crate::config;
use crate::event_loop::Source as _;
use crate::forward::codec as forward;
use crate::forward::handshake::{self, PingVerdict};
use crate::forward::msgpack::{self, Limits, Scanner};
use crate::metrics::{
    self,
    tailer::{Closed, Counters, Decode, Handshake, Snapshot},
};
use crate::net::tls;
use crate::net::transport::{flush_tls, tls_failure, tls_write, TlsFailure};
use crate::sys;

pub struct TailerArgs {
    /// `host:port`; host may be a name, an IPv4 address or a bracketed IPv6 address.
    pub listen: String,
    /// Count records instead of printing them (for benchmarks).
    pub discard: bool,
    /// None: plain TCP.
    pub tls: Option<TailerTls>,
    /// Some: every client must pass the shared-key handshake before it may send records.
    pub shared_key: Option<SharedKey>,
    /// The hostname announced in the PONG; None: the machine's hostname.
    pub self_hostname: Option<String>,
    pub limits: ClientLimits,
    /// Some: serve /metrics, /healthz and /readyz on this `HOST:PORT`.
    pub metrics_address: Option<String>,
}

/// What clients may cost us, alone and together (`--max-clients`, `--client-timeout`,
/// `--idle-timeout`, `--mem-budget`). Anyone who can connect is held to these: plain TCP is the
/// default, and even a TLS client has sent nothing authenticated before its handshake ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_clients: usize,
    /// The TLS and shared-key handshakes must be over this long after the connection was
    /// accepted, each message complete this long after its first byte, and pending acks read
    /// within this long.
    pub client_timeout: Duration,
    /// A connection with no message in progress is closed after this long without traffic.
    pub idle_timeout: Duration,
    /// Bytes of input buffers all clients together may hold, and the most that decompressing
    /// one message may take besides.
    pub mem_budget: usize,
}

/// What [`serve`] runs with: [`TailerArgs`] with the files already read.
pub struct Settings {
    pub discard: bool,
    pub tls: Option<ServerTls>,
    pub shared_key: Option<ServerKey>,
    pub limits: ClientLimits,
    pub metrics_address: Option<String>,
}

/// The server's TLS configuration and the files it is rebuilt from when they change.
pub struct ServerTls {
    pub files: TailerTls,
    pub config: Arc<ServerConfig>,
}

pub struct ServerKey {
    pub key: Vec<u8>,
    /// Announced in the PONG.
    pub hostname: String,
}

/// Largest single Forward message we buffer; fluentd's default chunk limit is 8 MiB and
/// fluent-bit's is smaller, so this leaves room without letting a peer take unbounded memory.
const MAX_MESSAGE: usize = 64 << 20;
const READ_STEP: usize = 64 << 10;
/// Cap on the entries of one CompressedPackedForward message once inflated.
pub const MAX_DECOMPRESSED: usize = 256 << 20;
/// Acks a client has not read yet; a client this far behind is not reading at all.
const MAX_PENDING_ACKS: usize = 1 << 20;
/// Buffer capacity kept between messages; more is returned to the allocator. The forwarder's
/// chunks are about 512 KiB, so its connection keeps reusing one buffer.
const KEEP_CAPACITY: usize = 1 << 20;
/// Longest JSON line printed for one record; a record that needs more is refused like an
/// undecodable message. Kubernetes audit events stay far below it (the forwarder's default
/// `--max-line-size` is 10 MB), and it bounds what a small hostile record can make us write.
pub const MAX_RECORD_JSON: usize = MAX_MESSAGE;
/// The first and the longest wait before `accept` is tried again after it failed.
const ACCEPT_RETRY_FIRST: Duration = Duration::from_millis(50);
const ACCEPT_RETRY_MAX: Duration = Duration::from_secs(1);
/// How far ahead "no deadline" lies; the loop recomputes its deadlines at least this often.
const NO_DEADLINE: Duration = Duration::from_secs(3600);
/// Unread input discarded before closing a socket, so the close is a FIN rather than a RST that
/// could destroy a PONG or acks still in flight; bounded so a flooding client costs little.
const DRAIN_ON_CLOSE: usize = 256 << 10;
const STATS_EVERY: Duration = Duration::from_secs(1);
/// Framing caps of an incoming Forward message (public for the fuzz target).
pub const LIMITS: Limits = Limits {
    max_len: MAX_MESSAGE,
    max_depth: msgpack::DEFAULT_MAX_DEPTH,
};
const LISTENER: Token = Token(0);
const CERTS: Token = Token(1);
/// The metrics endpoint's listener; its clients take the tokens up to `FIRST_CLIENT`.
const METRICS: Token = Token(2);
/// Client `i` of the slot table has token `FIRST_CLIENT + i`.
const FIRST_CLIENT: usize = METRICS.0 + 1 + metrics::MAX_CLIENTS;

#[derive(Debug)]
pub enum Error {
    /// Unusable TLS files, shared-key file or hostname at start-up: a configuration error.
    Config(String),
    Resolve {
        addr: String,
        source: io::Error,
    },
    NoAddress {
        addr: String,
    },
    Bind {
        addr: SocketAddr,
        source: io::Error,
    },
    Poll(io::Error),
    /// The inotify instance that watches the certificate directories.
    Inotify(io::Error),
    /// Writing records to stdout failed (EPIPE when the reader went away).
    Output(io::Error),
    /// `--metrics-address` cannot be served (bind failed).
    Metrics(String),
}

impl Error {
    /// Whether the operator has to fix the configuration (exit code 2 rather than 1).
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(msg) => write!(f, "tailer: {msg}"),
            Error::Resolve { addr, source } => {
                write!(f, "tailer: resolving --listen {addr}: {source}")
            }
            Error::NoAddress { addr } => {
                write!(f, "tailer: --listen {addr} resolves to no address")
            }
            Error::Bind { addr, source } => write!(f, "tailer: listening on {addr}: {source}"),
            Error::Poll(e) => write!(f, "tailer: poll: {e}"),
            Error::Inotify(e) => write!(f, "tailer: inotify for the TLS files: {e}"),
            Error::Output(e) => write!(f, "tailer: writing records to stdout: {e}"),
            Error::Metrics(msg) => write!(f, "tailer: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

/// Reads the TLS material and the shared key. Every error names the file or flag at fault.
pub fn settings(args: &TailerArgs) -> Result<Settings, Error> {
    let tls = match &args.tls {
        None => None,
        Some(files) => Some(ServerTls {
            config: server_config(files).map_err(|e| Error::Config(format!("TLS: {e}")))?,
            files: files.clone(),
        }),
    };
    let shared_key = match &args.shared_key {
        None => None,
        Some(key) => Some(ServerKey {
            key: config::read_shared_key(key).map_err(Error::Config)?,
            hostname: match &args.self_hostname {
                Some(h) => h.clone(),
                None => sys::hostname().map_err(|e| {
                    Error::Config(format!(
                        "--self-hostname not set and the hostname is unknown: {e}"
                    ))
                })?,
            },
        }),
    };
    Ok(Settings {
        discard: args.discard,
        tls,
        shared_key,
        limits: args.limits,
        metrics_address: args.metrics_address.clone(),
    })
}

fn server_config(t: &TailerTls) -> Result<Arc<ServerConfig>, tls::TlsError> {
    let files = tls::ServerFiles {
        cert: t.cert.clone(),
        key: t.key.clone(),
        client_ca: t.client_ca.clone(),
    };
    if t.max_version_12 {
        tls::server_config_tls12_only(&files)
    } else {
        tls::server_config(&files)
    }
}

impl Settings {
    /// For the start-up line: what a client has to do to be served.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        match &self.tls {
            None => parts.push("plain TCP".to_string()),
            Some(t) => {
                parts.push(if t.files.max_version_12 {
                    "TLS 1.2".to_string()
                } else {
                    "TLS 1.3/1.2".to_string()
                });
                if let Some(ca) = &t.files.client_ca {
                    parts.push(format!("client certificates from {}", ca.display()));
                }
            }
        }
        if let Some(k) = &self.shared_key {
            parts.push(format!("shared key required, announcing {:?}", k.hostname));
        }
        if self.discard {
            parts.push("discarding records".to_string());
        }
        let l = &self.limits;
        parts.push(format!(
            "at most {} clients, client timeout {:?}, idle timeout {:?}, memory budget {} bytes",
            l.max_clients, l.client_timeout, l.idle_timeout, l.mem_budget
        ));
        parts.join(", ")
    }
}

impl ServerTls {
    fn reload(&mut self) {
        let mut names = vec![self.files.cert.display(), self.files.key.display()];
        if let Some(ca) = &self.files.client_ca {
            names.push(ca.display());
        }
        let names = names
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        match server_config(&self.files) {
            Ok(config) => {
                self.config = config;
                info!("tailer: TLS material reloaded from {names}; new connections use it");
            }
            Err(e) => error!(
                "tailer: TLS material changed but cannot be used ({e}); keeping the previous one"
            ),
        }
    }
}

/// Reads the configured files, binds the first address `args.listen` resolves to and serves
/// until stdout fails. Configuration errors come before any socket is bound.
pub fn run(args: &TailerArgs) -> Result<(), Error> {
    let settings = settings(args)?;
    let addr = args
        .listen
        .to_socket_addrs()
        .map_err(|source| Error::Resolve {
            addr: args.listen.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| Error::NoAddress {
            addr: args.listen.clone(),
        })?;
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    info!("tailer: listening on {addr} ({})", settings.describe());
    let out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    serve(listener, settings, out)
}

/// The event loop. Returns only on a fatal error: poll failure or an unwritable `out`.
pub fn serve(
    listener: std::net::TcpListener,
    settings: Settings,
    out: impl Write,
) -> Result<(), Error> {
    let mut server = Server::new(listener, settings, out)?;
    loop {
        server.turn()?;
    }
}

/// Everything the event loop owns; one `turn` is one poll and what follows from it.
struct Server<W> {
    poll: Poll,
    events: Events,
    listener: TcpListener,
    tls: Option<ServerTls>,
    /// The certificate files, when listening with TLS.
    watch: Option<config::Watch>,
    shared_key: Option<ServerKey>,
    limits: ClientLimits,
    /// Slot `i` is the client with token `FIRST_CLIENT + i`.
    clients: Vec<Option<Client>>,
    sink: Sink<W>,
    /// No client deadline is earlier than this; `sweep` looks at them all then.
    next_sweep: Instant,
    /// Set while `accept` fails (EMFILE): the listener is edge-triggered, so the connections
    /// already queued raise no new event and have to be fetched on a timer.
    accept_retry: Option<Instant>,
    accept_delay: Duration,
    /// Why accept failed last, while it keeps failing (for `/readyz`).
    accept_error: Option<String>,
    next_stats: Instant,
    logged: (u64, u64),
    /// `--metrics-address`: answered after each turn from [`Server::snapshot`].
    metrics: Option<metrics::Server>,
}

impl<W: Write> Server<W> {
    fn new(
        listener: std::net::TcpListener,
        settings: Settings,
        out: W,
    ) -> Result<Server<W>, Error> {
        let Settings {
            discard,
            tls,
            shared_key,
            limits,
            metrics_address,
        } = settings;
        listener.set_nonblocking(true).map_err(Error::Poll)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new().map_err(Error::Poll)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(Error::Poll)?;
        // Certificate rotation without restart: Kubernetes swaps a mounted Secret's files under
        // us, and the next connection must get the new ones.
        let watch = match &tls {
            None => None,
            Some(t) => {
                let mut files: Vec<&Path> = vec![&t.files.cert, &t.files.key];
                if let Some(ca) = &t.files.client_ca {
                    files.push(ca);
                }
                let w = config::Watch::new(&files).map_err(Error::Inotify)?;
                poll.registry()
                    .register(
                        &mut SourceFd(&w.inotify().as_raw_fd()),
                        CERTS,
                        Interest::READABLE,
                    )
                    .map_err(Error::Inotify)?;
                Some(w)
            }
        };
        let metrics = match metrics_address {
            None => None,
            Some(addr) => Some(
                metrics::Server::new(&addr, poll.registry(), METRICS).map_err(Error::Metrics)?,
            ),
        };
        let now = Instant::now();
        Ok(Server {
            poll,
            events: Events::with_capacity(256),
            listener,
            tls,
            watch,
            shared_key,
            limits,
            clients: Vec::new(),
            sink: Sink {
                out,
                discard,
                scratch: Vec::new(),
                line: Vec::new(),
                acks: Vec::new(),
                read_buf: vec![0; READ_STEP].into_boxed_slice(),
                counts: Counters::default(),
                bytes: 0,
                mem: Mem {
                    used: 0,
                    budget: limits.mem_budget,
                },
            },
            next_sweep: now + NO_DEADLINE,
            accept_retry: None,
            accept_delay: ACCEPT_RETRY_FIRST,
            accept_error: None,
            next_stats: now + STATS_EVERY,
            logged: (0, 0),
            metrics,
        })
    }

    /// Waits for the next event or deadline and handles what is due.
    fn turn(&mut self) -> Result<(), Error> {
        let mut wake = self.next_sweep;
        if let Some(at) = self.accept_retry {
            wake = wake.min(at);
        }
        if self.sink.discard {
            wake = wake.min(self.next_stats);
        }
        if let Some(at) = self.metrics.as_ref().and_then(|m| m.deadline()) {
            wake = wake.min(at);
        }
        let timeout = wake.saturating_duration_since(Instant::now());
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(Error::Poll(e)),
        }
        let Server {
            poll,
            events,
            clients,
            sink,
            limits,
            next_sweep,
            metrics,
            ..
        } = self;
        let mut accept = false;
        for event in events.iter() {
            match event.token() {
                LISTENER => {
                    accept = true;
                    continue;
                }
                CERTS => {
                    if let (Some(w), Some(t)) = (self.watch.as_mut(), self.tls.as_mut()) {
                        if w.changed() {
                            t.reload();
                        }
                    }
                    continue;
                }
                token if token.0 < FIRST_CLIENT => {
                    if let Some(m) = metrics.as_mut().filter(|m| m.owns(token)) {
                        // The endpoint has no effect on the data path: nothing is collected.
                        m.on_event(token, poll.registry(), &mut Vec::new());
                    }
                    continue;
                }
                _ => {}
            }
            let idx = event.token().0 - FIRST_CLIENT;
            let Some(client) = clients.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            let mut verdict = Verdict::Keep;
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                verdict = client.on_readable(sink)?;
            }
            if let Verdict::Keep = verdict {
                verdict = client.write_pending();
            }
            if let Verdict::Keep = verdict {
                verdict = client.update_interest(poll, event.token());
            }
            if let Verdict::Keep = verdict {
                *next_sweep = (*next_sweep).min(client.deadline(limits).0);
                continue;
            }
            if let Some(mut client) = clients[idx].take() {
                client.close(poll, verdict, &mut sink.mem, &mut sink.counts);
            }
        }
        let now = Instant::now();
        if accept || self.accept_retry.is_some_and(|at| now >= at) {
            self.accept();
        }
        if now >= self.next_sweep {
            self.sweep(now);
        }
        if let Some(m) = self.metrics.as_mut() {
            m.on_time(now, self.poll.registry(), &mut Vec::new());
        }
        if self.metrics.as_ref().is_some_and(|m| m.has_pending()) {
            let snap = self.snapshot();
            if let Some(m) = self.metrics.as_mut() {
                m.answer_pending(&snap, self.poll.registry());
            }
        }
        if self.sink.discard && now >= self.next_stats {
            let counts = (self.sink.counts.records, self.sink.bytes);
            if counts != self.logged {
                self.logged = counts;
                info!("tailer: records={} bytes={}", counts.0, counts.1);
            }
            self.next_stats = now + STATS_EVERY;
        }
        Ok(())
    }

    /// Accepts what is queued; on failure retries on a timer, backing off up to a second.
    fn accept(&mut self) {
        let new = NewClient {
            tls: self.tls.as_ref().map(|t| &t.config),
            shared_key: self.shared_key.as_ref(),
            limits: &self.limits,
        };
        let counts = &mut self.sink.counts;
        match accept_all(&self.listener, &self.poll, &mut self.clients, &new, counts) {
            Ok(()) => {
                self.accept_error = None;
                if self.accept_retry.take().is_some() {
                    info!("tailer: accepting connections again");
                }
                self.accept_delay = ACCEPT_RETRY_FIRST;
            }
            Err(e) => {
                // One line per episode: the retries would otherwise log several times a second.
                if self.accept_retry.is_none() {
                    warn!(
                        "tailer: accept failed: {e}; retrying every {}s at most until it works \
                         (EMFILE: raise the open-files limit or lower --max-clients)",
                        ACCEPT_RETRY_MAX.as_secs()
                    );
                }
                self.accept_error = Some(e.to_string());
                self.accept_retry = Some(Instant::now() + self.accept_delay);
                self.accept_delay = (self.accept_delay * 2).min(ACCEPT_RETRY_MAX);
            }
        }
        // A client accepted just now has its first deadline no sooner than this.
        let first = self.limits.client_timeout.min(self.limits.idle_timeout);
        self.next_sweep = self.next_sweep.min(Instant::now() + first);
    }

    /// Closes the clients whose deadline has passed and finds the next deadline.
    fn sweep(&mut self, now: Instant) {
        let mut next = now + NO_DEADLINE;
        for slot in &mut self.clients {
            let Some(client) = slot else {
                continue;
            };
            let (at, wait) = client.deadline(&self.limits);
            if at > now {
                next = next.min(at);
                continue;
            }
            let verdict = client.expired(wait, &self.limits);
            if let Some(mut client) = slot.take() {
                client.close(
                    &self.poll,
                    verdict,
                    &mut self.sink.mem,
                    &mut self.sink.counts,
                );
            }
        }
        self.next_sweep = next;
    }

    /// The figures `/metrics` and `/readyz` answer from.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            counters: self.sink.counts.clone(),
            clients_connected: self.clients.iter().flatten().count() as u64,
            max_clients: self.limits.max_clients as u64,
            mem_used: self.sink.mem.used as u64,
            mem_budget: self.sink.mem.budget as u64,
            mem_min_free: READ_STEP as u64,
            accept_failing: self.accept_error.clone(),
        }
    }
}

/// What every new connection starts with.
struct NewClient<'a> {
    tls: Option<&'a Arc<ServerConfig>>,
    shared_key: Option<&'a ServerKey>,
    limits: &'a ClientLimits,
}

/// Accepts until the queue is empty. `Err` is a failing `accept` (EMFILE, ENFILE, ENOBUFS):
/// the connection stays queued for the caller to retry.
fn accept_all(
    listener: &TcpListener,
    poll: &Poll,
    clients: &mut Vec<Option<Client>>,
    new: &NewClient<'_>,
    counts: &mut Counters,
) -> io::Result<()> {
    loop {
        let (mut stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let connected = clients.iter().filter(|c| c.is_some()).count();
        if connected >= new.limits.max_clients {
            // Closed before anything is read: the peer sees its connection end and retries.
            counts.clients_refused += 1;
            warn!(
                "tailer: client {peer} refused: {connected} clients are connected, as many as \
                 --max-clients allows"
            );
            continue;
        }
        // Acks are tiny writes the sender waits for; Nagle would hold them back.
        if let Err(e) = stream.set_nodelay(true) {
            warn!("tailer: client {peer}: TCP_NODELAY: {e}");
        }
        let tls = match new.tls {
            None => None,
            Some(config) => match ServerConnection::new(config.clone()) {
                Ok(conn) => Some(conn),
                Err(e) => {
                    warn!("tailer: client {peer}: cannot start TLS: {e}");
                    continue;
                }
            },
        };
        // The HELO is the first thing a client gets (after TLS), before it says anything.
        let (phase, wbuf) = match new.shared_key {
            None => (Phase::Data, Vec::new()),
            Some(k) => {
                let mut nonce = [0u8; 16];
                if let Err(e) = sys::random_bytes(&mut nonce) {
                    warn!("tailer: client {peer}: no random nonce for the handshake: {e}");
                    continue;
                }
                let (server, helo) =
                    handshake::Server::new(k.key.clone(), k.hostname.clone(), nonce);
                (Phase::AwaitPing(server), helo)
            }
        };
        let idx = clients.iter().position(Option::is_none).unwrap_or_else(|| {
            clients.push(None);
            clients.len() - 1
        });
        let token = Token(FIRST_CLIENT + idx);
        if let Err(e) = poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            warn!("tailer: client {peer}: cannot register: {e}");
            continue;
        }
        info!("tailer: client {peer} connected");
        counts.clients_accepted += 1;
        let now = Instant::now();
        let mut client = Client {
            stream,
            tls,
            peer,
            phase,
            rbuf: Vec::new(),
            scanner: Scanner::new(),
            wbuf,
            wpos: 0,
            eof: false,
            interest: Interest::READABLE,
            connected: now,
            active: now,
            msg_started: None,
            charged: 0,
        };
        let mut verdict = client.write_pending();
        if let Verdict::Keep = verdict {
            verdict = client.update_interest(poll, token);
        }
        match verdict {
            Verdict::Keep => clients[idx] = Some(client),
            // Nothing was read yet, so nothing was charged to the budget.
            other => client.close(poll, other, &mut Mem::default(), counts),
        }
    }
}

/// What happens to a client after an event.
enum Verdict {
    Keep,
    /// Ordinary end of a connection (logged at info).
    Done(Closed, String),
    /// The peer broke the protocol or the socket failed (logged as a warning).
    Fail(Why, String),
}

/// What a failed client is counted as; the verdict's text says it for the log.
#[derive(Clone, Copy)]
enum Why {
    Decode(Decode),
    Handshake(Handshake),
    /// A message or its acks took longer than `--client-timeout`.
    Timeout,
    /// It let more acks pile up than [`MAX_PENDING_ACKS`].
    AcksUnread,
    Io,
}

impl Verdict {
    /// Counts how the connection ended (and the failure that ended it).
    fn count(&self, counts: &mut Counters) {
        let closed = match self {
            Verdict::Keep => Closed::Peer,
            Verdict::Done(closed, _) => *closed,
            Verdict::Fail(Why::Decode(d), _) => {
                counts.decode_error(*d);
                Closed::Rejected
            }
            Verdict::Fail(Why::Handshake(h), _) => {
                counts.handshake_failure(*h);
                if *h == Handshake::Timeout {
                    Closed::Timeout
                } else {
                    Closed::Rejected
                }
            }
            Verdict::Fail(Why::Timeout, _) => Closed::Timeout,
            Verdict::Fail(Why::AcksUnread, _) => Closed::Rejected,
            Verdict::Fail(Why::Io, _) => Closed::IoError,
        };
        counts.closed(closed);
    }
}

/// The decode-error reason of a msgpack error: a size over a cap, or malformed bytes.
fn msgpack_reason(e: &msgpack::Error) -> Decode {
    match e {
        msgpack::Error::TooLong { .. } | msgpack::Error::TooLarge { .. } => Decode::Oversized,
        _ => Decode::Msgpack,
    }
}

/// Where a connection is in the Forward protocol.
enum Phase {
    /// The HELO is sent or queued; the next message must be a PING.
    AwaitPing(handshake::Server),
    /// Forward messages.
    Data,
    /// The PING was refused: the refusing PONG is queued, input is ignored, and the connection
    /// closes once the PONG is out.
    Refused,
}

struct Client {
    stream: TcpStream,
    tls: Option<ServerConnection>,
    peer: SocketAddr,
    phase: Phase,
    /// Received plaintext; starts at a message boundary.
    rbuf: Vec<u8>,
    scanner: Scanner,
    /// Plaintext to send (HELO, PONG, acks); `wbuf[wpos..]` is still to be sent.
    wbuf: Vec<u8>,
    wpos: usize,
    /// The peer shut down its sending side; we stay only to deliver pending acks.
    eof: bool,
    interest: Interest,
    connected: Instant,
    /// When bytes last moved either way.
    active: Instant,
    /// When the first byte of the message at the start of `rbuf` arrived; None while `rbuf`
    /// is empty.
    msg_started: Option<Instant>,
    /// The capacity of `rbuf` counted in `Mem::used`.
    charged: usize,
}

/// The memory budget shared by all clients: the capacity of their input buffers.
#[derive(Debug, Default)]
struct Mem {
    used: usize,
    budget: usize,
}

/// What a client's next deadline waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Handshake,
    Message,
    Acks,
    Idle,
}

/// Where records go, plus the buffers reused across messages.
struct Sink<W> {
    out: W,
    discard: bool,
    scratch: Vec<u8>,
    line: Vec<u8>,
    acks: Vec<u8>,
    read_buf: Box<[u8]>,
    counts: Counters,
    /// Plaintext bytes received from all clients (for the `--discard` stats line).
    bytes: u64,
    mem: Mem,
}

impl Client {
    /// Most input buffered before it must make a complete message of the current phase.
    fn input_cap(&self) -> usize {
        match self.phase {
            Phase::AwaitPing(_) => handshake::MAX_MESSAGE,
            Phase::Data | Phase::Refused => MAX_MESSAGE,
        }
    }

    /// Drains the socket until WouldBlock, delivering complete messages as they pile up.
    fn on_readable<W: Write>(&mut self, sink: &mut Sink<W>) -> Result<Verdict, Error> {
        let now = Instant::now();
        loop {
            if let Phase::Refused = self.phase {
                // Whatever else arrives is never looked at; `close` discards it.
                return Ok(Verdict::Keep);
            }
            let cap = self.input_cap();
            if self.rbuf.len() >= cap {
                let verdict = self.process(sink)?;
                if !matches!(verdict, Verdict::Keep) {
                    return Ok(verdict);
                }
                if let Phase::Refused = self.phase {
                    return Ok(Verdict::Keep);
                }
                if self.rbuf.len() >= self.input_cap() {
                    let why = match self.phase {
                        Phase::AwaitPing(_) => Why::Handshake(Handshake::BadPing),
                        _ => Why::Decode(Decode::Oversized),
                    };
                    return Ok(Verdict::Fail(
                        why,
                        format!("message larger than {} bytes", self.input_cap()),
                    ));
                }
            }
            match self.read_plaintext(&mut sink.read_buf) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => {
                    self.active = now;
                    if self.reserve(n, &mut sink.mem).is_err() {
                        // Complete messages waiting in `rbuf` may free what is needed.
                        let verdict = self.process(sink)?;
                        if !matches!(verdict, Verdict::Keep) {
                            return Ok(verdict);
                        }
                        if let Err(why) = self.reserve(n, &mut sink.mem) {
                            return Ok(Verdict::Fail(Why::Decode(Decode::MemoryBudget), why));
                        }
                    }
                    if self.rbuf.is_empty() {
                        self.msg_started = Some(now);
                    }
                    self.rbuf.extend_from_slice(&sink.read_buf[..n]);
                    sink.bytes += n as u64;
                    // Each message is handled, and its ack sent, as soon as it is complete, not
                    // after the socket is drained: a forwarder with a window in flight gets
                    // its acks one by one and keeps sending, and `rbuf` stays about one message
                    // long instead of growing to the window and being given back afterwards.
                    if self.rbuf.len() >= READ_STEP {
                        let verdict = self.process(sink)?;
                        if !matches!(verdict, Verdict::Keep) {
                            return Ok(verdict);
                        }
                        let verdict = self.write_pending();
                        if !matches!(verdict, Verdict::Keep) {
                            return Ok(verdict);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Acks for what we already printed are still worth trying to deliver.
                    self.process(sink)?;
                    let handshaking = self.tls.as_ref().is_some_and(|c| c.is_handshaking());
                    return Ok(match tls_failure(&e) {
                        Some(tls_err) => Verdict::Fail(
                            if handshaking {
                                Why::Handshake(Handshake::Tls)
                            } else {
                                Why::Io
                            },
                            format!("TLS: {}", tls::explain_client_failure(tls_err)),
                        ),
                        None => Verdict::Fail(Why::Io, format!("read: {e}")),
                    });
                }
            }
        }
        let verdict = self.process(sink)?;
        if !matches!(verdict, Verdict::Keep) || !self.eof {
            return Ok(verdict);
        }
        if self.tls.as_ref().is_some_and(|c| c.is_handshaking()) {
            // Port probes do this; a client that disagrees with us sends an alert instead.
            return Ok(Verdict::Done(
                Closed::Peer,
                "closed by peer during the TLS handshake".into(),
            ));
        }
        match &self.phase {
            Phase::AwaitPing(_) if self.rbuf.is_empty() => Ok(Verdict::Done(
                Closed::Peer,
                "closed by peer before the shared-key handshake".into(),
            )),
            Phase::AwaitPing(server) => Ok(Verdict::Fail(
                Why::Handshake(Handshake::Closed),
                format!(
                    "shared-key handshake: {} ({} bytes of it pending)",
                    server.closed(),
                    self.rbuf.len()
                ),
            )),
            Phase::Data if !self.rbuf.is_empty() => Ok(Verdict::Fail(
                Why::Decode(Decode::Truncated),
                format!(
                    "closed the connection inside a message ({} bytes pending)",
                    self.rbuf.len()
                ),
            )),
            Phase::Data | Phase::Refused => Ok(Verdict::Keep),
        }
    }

    /// One read of application bytes: straight from the socket, or through rustls (which
    /// also advances its handshake and answers alerts on the way). 0 means the peer is done.
    fn read_plaintext(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(conn) = self.tls.as_mut() else {
            return self.stream.read(buf);
        };
        loop {
            match conn.reader().read(buf) {
                // Ok(0) here is the peer's close_notify.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // Handshake flights and alerts have to go out before the peer sends more.
            flush_tls(conn, &mut self.stream)?;
            match conn.read_tls(&mut self.stream)? {
                0 => return Ok(0),
                _ => {
                    conn.process_new_packets()
                        .map_err(|e| io::Error::other(TlsFailure(e)))?;
                }
            }
        }
    }

    /// Runs the handshake on `rbuf` while one is due, then delivers Forward messages.
    fn process<W: Write>(&mut self, sink: &mut Sink<W>) -> Result<Verdict, Error> {
        if let Phase::AwaitPing(server) = &mut self.phase {
            let outcome = match server.feed(&self.rbuf) {
                Ok(None) => return Ok(Verdict::Keep),
                Ok(Some(outcome)) => outcome,
                Err(e) => {
                    return Ok(Verdict::Fail(
                        Why::Handshake(Handshake::BadPing),
                        format!("shared-key handshake: {e}"),
                    ))
                }
            };
            self.rbuf.drain(..outcome.consumed);
            self.message_done();
            self.wbuf.extend_from_slice(&outcome.pong);
            if outcome.accepted() {
                info!(
                    "tailer: client {} passed the shared-key check (hostname \"{}\")",
                    self.peer, outcome.client_hostname
                );
                self.phase = Phase::Data;
            } else {
                warn!(
                    "tailer: client {} failed the shared-key check: {}",
                    self.peer, outcome.reason
                );
                // Counted now: the connection ends as an ordinary one once the PONG is out.
                sink.counts
                    .handshake_failure(if outcome.verdict == PingVerdict::Malformed {
                        Handshake::BadPing
                    } else {
                        Handshake::SharedKey
                    });
                self.phase = Phase::Refused;
            }
        }
        match self.phase {
            Phase::Data => self.deliver(sink),
            // Not ours to read any more: whatever followed the refused PING is dropped.
            Phase::Refused => {
                self.rbuf = Vec::new();
                self.settle(&mut sink.mem);
                self.msg_started = None;
                Ok(Verdict::Keep)
            }
            Phase::AwaitPing(_) => Ok(Verdict::Keep),
        }
    }

    /// Prints the records of every complete message in `rbuf`, flushes them, and only then
    /// queues the acks, so an acked chunk is on stdout even if we die right after.
    fn deliver<W: Write>(&mut self, sink: &mut Sink<W>) -> Result<Verdict, Error> {
        let mut start = 0;
        let mut verdict = Verdict::Keep;
        let mut printed = false;
        sink.acks.clear();
        loop {
            match self.scanner.scan(&self.rbuf[start..], &LIMITS) {
                Ok(Some(n)) => {
                    let msg = &self.rbuf[start..start + n];
                    start += n;
                    match sink.message(msg)? {
                        Ok(any) => printed |= any,
                        Err((kind, why)) => {
                            verdict = Verdict::Fail(Why::Decode(kind), why);
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    verdict = Verdict::Fail(
                        Why::Decode(msgpack_reason(&e)),
                        format!("not a msgpack message: {e}"),
                    );
                    break;
                }
            }
        }
        if start > 0 {
            self.rbuf.drain(..start);
            self.message_done();
        }
        // A single large message must not pin its buffers for the life of the connection.
        self.rbuf.shrink_to(KEEP_CAPACITY);
        self.settle(&mut sink.mem);
        sink.scratch.clear();
        sink.scratch.shrink_to(KEEP_CAPACITY);
        sink.line.clear();
        sink.line.shrink_to(KEEP_CAPACITY);
        if printed {
            sink.out.flush().map_err(Error::Output)?;
        }
        self.wbuf.extend_from_slice(&sink.acks);
        if self.wbuf.len() - self.wpos > MAX_PENDING_ACKS {
            return Ok(Verdict::Fail(
                Why::AcksUnread,
                format!(
                    "not reading its acks ({} bytes pending)",
                    self.wbuf.len() - self.wpos
                ),
            ));
        }
        Ok(verdict)
    }

    /// Called when messages (or the PING) were consumed from the front of `rbuf`: whatever
    /// follows is the start of the next message.
    fn message_done(&mut self) {
        self.msg_started = (!self.rbuf.is_empty()).then(Instant::now);
    }

    /// Makes room in `rbuf` for `n` more bytes, growing it the way `Vec` does but never past
    /// what the memory budget has left; `Err` says why the room is not there.
    fn reserve(&mut self, n: usize, mem: &mut Mem) -> Result<(), String> {
        let need = self.rbuf.len() + n;
        let cap = self.rbuf.capacity();
        if need <= cap {
            return Ok(());
        }
        let free = mem.budget.saturating_sub(mem.used);
        let grow = need.max(cap * 2).max(READ_STEP).min(cap + free);
        if grow < need {
            return Err(format!(
                "over the memory budget: its message needs {} more bytes of buffer, and \
                 {} of --mem-budget {} bytes are held by all clients",
                need - cap,
                mem.used,
                mem.budget
            ));
        }
        self.rbuf.reserve_exact(grow - self.rbuf.len());
        self.settle(mem);
        Ok(())
    }

    /// Brings the budget in line with the capacity `rbuf` has now.
    fn settle(&mut self, mem: &mut Mem) {
        let cap = self.rbuf.capacity();
        mem.used = mem.used - self.charged + cap;
        self.charged = cap;
    }

    /// Handshakes (TLS, shared key), started messages and unread acks are bounded by
    /// `--client-timeout`; a connection with none of those by `--idle-timeout`.
    fn deadline(&self, limits: &ClientLimits) -> (Instant, Wait) {
        let handshaking = self.tls.as_ref().is_some_and(|c| c.is_handshaking())
            || !matches!(self.phase, Phase::Data);
        if handshaking {
            (self.connected + limits.client_timeout, Wait::Handshake)
        } else if let Some(at) = self.msg_started {
            (at + limits.client_timeout, Wait::Message)
        } else if self.output_pending() {
            (self.active + limits.client_timeout, Wait::Acks)
        } else {
            (self.active + limits.idle_timeout, Wait::Idle)
        }
    }

    /// Why the connection is closed when the deadline of `wait` has passed.
    fn expired(&self, wait: Wait, limits: &ClientLimits) -> Verdict {
        let t = limits.client_timeout;
        match wait {
            Wait::Handshake => Verdict::Fail(
                Why::Handshake(Handshake::Timeout),
                format!("did not complete its handshake within {t:?} (--client-timeout)"),
            ),
            Wait::Message => Verdict::Fail(
                Why::Timeout,
                format!(
                    "sent {} bytes of a message but not the rest within {t:?} (--client-timeout)",
                    self.rbuf.len()
                ),
            ),
            Wait::Acks => Verdict::Fail(
                Why::Timeout,
                format!("did not read its acks for {t:?} (--client-timeout)"),
            ),
            Wait::Idle => Verdict::Done(
                Closed::Idle,
                format!("idle for {:?} (--idle-timeout)", limits.idle_timeout),
            ),
        }
    }

    /// Whether plaintext may go out: not before the TLS handshake has authenticated the peer.
    fn can_send(&self) -> bool {
        self.tls.as_ref().is_none_or(|c| !c.is_handshaking())
    }

    /// Something is waiting for socket space: our plaintext, or TLS records inside rustls.
    fn output_pending(&self) -> bool {
        (self.wpos < self.wbuf.len() && self.can_send())
            || self.tls.as_ref().is_some_and(|c| c.wants_write())
    }

    /// Sends as much of `wbuf` as the socket takes, encrypted and flushed right away, so an
    /// ack leaves as soon as its records are written.
    fn write_pending(&mut self) -> Verdict {
        while self.wpos < self.wbuf.len() && self.can_send() {
            let rest = &self.wbuf[self.wpos..];
            let res = match self.tls.as_mut() {
                None => self.stream.write(rest),
                Some(conn) => tls_write(conn, &mut self.stream, rest),
            };
            match res {
                Ok(0) => {
                    return Verdict::Fail(Why::Io, "write: connection accepts no more bytes".into())
                }
                Ok(n) => {
                    self.wpos += n;
                    self.active = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Verdict::Fail(Why::Io, format!("write: {e}")),
            }
        }
        if let Some(conn) = self.tls.as_mut() {
            if let Err(e) = flush_tls(conn, &mut self.stream) {
                return Verdict::Fail(Why::Io, format!("write: {e}"));
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            // A client that let a megabyte of acks pile up must not keep that buffer.
            self.wbuf.shrink_to(READ_STEP);
            self.wpos = 0;
        }
        if !self.output_pending() {
            if let Phase::Refused = self.phase {
                return Verdict::Done(
                    Closed::Rejected,
                    "refused after the failed shared-key check".into(),
                );
            }
            if self.eof {
                return Verdict::Done(Closed::Peer, "closed by peer".into());
            }
        }
        Verdict::Keep
    }

    /// WRITABLE only while output waits for socket space; READABLE until the peer's EOF, and
    /// not at all once the connection is refused.
    fn update_interest(&mut self, poll: &Poll, token: Token) -> Verdict {
        let pending = self.output_pending();
        let refused = matches!(self.phase, Phase::Refused);
        let want = match (refused || self.eof, pending) {
            (false, false) => Interest::READABLE,
            (false, true) => Interest::READABLE | Interest::WRITABLE,
            (true, true) => Interest::WRITABLE,
            (true, false) if refused => {
                return Verdict::Done(
                    Closed::Rejected,
                    "refused after the failed shared-key check".into(),
                )
            }
            (true, false) => return Verdict::Done(Closed::Peer, "closed by peer".into()),
        };
        if want != self.interest {
            if let Err(e) = poll.registry().reregister(&mut self.stream, token, want) {
                return Verdict::Fail(Why::Io, format!("reregister: {e}"));
            }
            self.interest = want;
        }
        Verdict::Keep
    }

    fn close(&mut self, poll: &Poll, verdict: Verdict, mem: &mut Mem, counts: &mut Counters) {
        self.rbuf = Vec::new();
        self.settle(mem);
        verdict.count(counts);
        // One last non-blocking attempt for acks of records already printed (the peer resends
        // whatever it does not see acked, so a failure here costs duplicates, not loss), and for
        // a TLS alert telling the client why it is refused.
        match self.tls.as_mut() {
            None => {
                if self.wpos < self.wbuf.len() {
                    let _ = self.stream.write(&self.wbuf[self.wpos..]);
                }
            }
            Some(conn) => {
                if self.wpos < self.wbuf.len() && !conn.is_handshaking() {
                    let _ = tls_write(conn, &mut self.stream, &self.wbuf[self.wpos..]);
                }
                if let Verdict::Done(..) = verdict {
                    conn.send_close_notify();
                }
                let _ = flush_tls(conn, &mut self.stream);
            }
        }
        let mut junk = [0u8; 4096];
        let mut drained = 0;
        while drained < DRAIN_ON_CLOSE {
            match self.stream.read(&mut junk) {
                Ok(n) if n > 0 => drained += n,
                _ => break,
            }
        }
        // Dropping the stream closes it, which also removes it from the poll set.
        let _ = poll.registry().deregister(&mut self.stream);
        match verdict {
            Verdict::Keep => info!("tailer: client {} disconnected", self.peer),
            Verdict::Done(_, why) => info!("tailer: client {} disconnected: {why}", self.peer),
            Verdict::Fail(_, why) => warn!("tailer: client {} disconnected: {why}", self.peer),
        }
    }
}

impl<W: Write> Sink<W> {
    /// Handles one complete message: `Ok(Err((reason, why)))` if the peer sent something
    /// invalid, `Ok(Ok(printed_any))` otherwise; `Err` only when `out` fails.
    fn message(&mut self, msg: &[u8]) -> Result<Result<bool, (Decode, String)>, Error> {
        let Sink {
            out,
            discard,
            scratch,
            line,
            acks,
            counts,
            mem,
            ..
        } = self;
        // Inflating is held to what the memory budget has left, so a compressed message
        // cannot take more than the budget promises.
        let cap = MAX_DECOMPRESSED.min(mem.budget.saturating_sub(mem.used));
        let req = match forward::decode_request(msg, cap, scratch) {
            Ok(req) => req,
            Err(e) => {
                let reason = match &e {
                    forward::Error::Msgpack { source, .. } => msgpack_reason(source),
                    forward::Error::Invalid(_) => Decode::Protocol,
                    forward::Error::TooLarge { .. } => Decode::Oversized,
                    forward::Error::Decompress(_) => Decode::Gzip,
                };
                return Ok(Err((reason, format!("invalid Forward message: {e}"))));
            }
        };
        if *discard {
            // `decode_request` walked every entry to count them, which is all the validation
            // a discarding tailer does; walking them again would only count them twice.
            counts.records += req.count as u64;
        } else {
            for (_time, record) in req.entries() {
                line.clear();
                if let Err(e) = msgpack::write_json(record, MAX_RECORD_JSON, line) {
                    return Ok(Err((msgpack_reason(&e), format!("record: {e}"))));
                }
                line.push(b'\n');
                out.write_all(line).map_err(Error::Output)?;
                counts.records += 1;
            }
        }
        counts.messages += 1;
        counts.bytes += msg.len() as u64;
        if let Some(chunk) = req.chunk {
            forward::encode_ack(chunk, acks);
            counts.acks += 1;
        }
        Ok(Ok(!*discard && req.count > 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::handshake::{ClientStep, HandshakeError};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, ProtocolVersion, RootCertStore, StreamOwned};
    use std::net::{Shutdown, TcpStream as StdStream};
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::{Mutex, Once};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn lines(&self) -> Vec<serde_json::Value> {
            let out = self.0.lock().unwrap();
            std::str::from_utf8(&out)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    /// The defaults of the command line.
    const LIMITS_DEFAULT: ClientLimits = ClientLimits {
        max_clients: 256,
        client_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(600),
        mem_budget: 200_000_000,
    };

    fn plain(discard: bool) -> Settings {
        Settings {
            discard,
            tls: None,
            shared_key: None,
            limits: LIMITS_DEFAULT,
            metrics_address: None,
        }
    }

    fn start(
        settings: Settings,
        out: impl Write + Send + 'static,
    ) -> (SocketAddr, std::thread::JoinHandle<Result<(), Error>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        (
            addr,
            std::thread::spawn(move || serve(listener, settings, out)),
        )
    }

    fn connect(addr: SocketAddr) -> StdStream {
        let s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// The first `n` sample audit events (`tests/data`).
    fn sample_events(n: usize) -> Vec<serde_json::Value> {
        let mut events = msgpack::tests::sample_events();
        assert!(events.len() >= n);
        events.truncate(n);
        events
    }

    fn packed(events: &[serde_json::Value], chunk: &str, compressed: bool) -> Vec<u8> {
        let mut entries = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            rmp::encode::write_array_len(&mut entries, 2).unwrap();
            rmp::encode::write_uint(&mut entries, 1_700_000_000 + i as u64).unwrap();
            msgpack::tests::encode_json(ev, &mut entries);
        }
        if compressed {
            let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            g.write_all(&entries).unwrap();
            entries = g.finish().unwrap();
        }
        let mut msg = Vec::new();
        forward::encode_packed_forward(
            "audit",
            &entries,
            events.len(),
            chunk,
            compressed,
            &mut msg,
        );
        msg
    }

    fn read_ack(s: &mut impl Read) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            if let Some((id, _)) = forward::parse_ack(&buf).unwrap() {
                return id.to_vec();
            }
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed before the ack");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends one message and waits for what comes back: `Ok(Some(ack id))`, `Ok(None)` when
    /// the server closed first, `Err` when the connection failed (TLS alert, reset).
    fn exchange(s: &mut (impl Read + Write), msg: &[u8]) -> io::Result<Option<Vec<u8>>> {
        s.write_all(msg)?;
        s.flush()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            match forward::parse_ack(&buf) {
                Ok(Some((id, _))) => return Ok(Some(id.to_vec())),
                Ok(None) => {}
                Err(e) => return Err(io::Error::other(format!("not an ack: {e:?}"))),
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The server turned the client away: no ack, and the connection ended (EOF, reset or a
    /// TLS alert), never a read timeout.
    fn assert_refused(result: io::Result<Option<Vec<u8>>>, what: &str) {
        match result {
            Ok(None) => {}
            Err(e)
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            other => panic!("{what}: expected the server to refuse, got {other:?}"),
        }
    }

    /// The server closed the connection: EOF or a reset, never data or a timeout.
    fn assert_closed(s: &mut impl Read) {
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the server to close, got {other:?}"),
        }
    }

    /// Everything until the server closes (EOF or an error after it).
    fn read_until_closed(s: &mut impl Read) -> Vec<u8> {
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => return all,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("the server did not close the connection; got {all:?}")
                }
                Err(_) => return all,
            }
        }
    }

    // ---- log capture: what an operator is told is part of the behaviour under test ----

    static LOGS: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());

    struct Capture;

    static CAPTURE: Capture = Capture;

    impl log::Log for Capture {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.target() == module_path!().trim_end_matches("::tests")
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                LOGS.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((r.level(), r.args().to_string()));
            }
        }
        fn flush(&self) {}
    }

    fn capture_logs() {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            log::set_logger(&CAPTURE)
                .expect("the tailer tests install the only logger of the test process");
            log::set_max_level(log::LevelFilter::Info);
        });
    }

    /// Waits for a tailer log line at `level` that contains every needle: the server thread
    /// logs a refusal after the client has already seen it.
    fn wait_log(level: log::Level, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let logs = LOGS.lock().unwrap_or_else(|p| p.into_inner());
                let hit = logs
                    .iter()
                    .find(|(l, line)| *l == level && needles.iter().all(|n| line.contains(n)));
                if let Some((_, line)) = hit {
                    return line.clone();
                }
                assert!(
                    Instant::now() < deadline,
                    "no {level} line with {needles:?} among {logs:#?}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // ---- certificates, made with the openssl command line like tls.rs's tests ----

    const VHOST: &str = "kubernetes-audit-tailer";

    /// Two CAs, ca1 and ca2, each issuing a server certificate `serverN.crt` (key `server.key`,
    /// valid for VHOST and 127.0.0.1) and a client certificate `clientN.crt` (key
    /// `client.key`). The directory is removed when the value is dropped.
    struct Pki {
        dir: PathBuf,
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Runs one openssl command line (arguments split on whitespace) in `dir`.
    fn openssl(dir: &Path, command: &str) {
        let out = Command::new("openssl")
            .args(command.split_whitespace())
            .current_dir(dir)
            .output()
            .expect("the openssl command is needed to generate test certificates");
        assert!(
            out.status.success(),
            "openssl {command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    const SERVER_EXT: &str = "basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:kubernetes-audit-tailer, IP:127.0.0.1
";

    const CLIENT_EXT: &str = "basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
";

    impl Pki {
        fn new(test: &str) -> Pki {
            let dir = std::env::temp_dir().join(format!(
                "audit-forwarder-tailer-{}-{test}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            // Owned before anything can fail, so a failing openssl still removes the directory.
            let pki = Pki { dir };
            let d = pki.dir.as_path();
            std::fs::write(d.join("server.ext"), SERVER_EXT).unwrap();
            std::fs::write(d.join("client.ext"), CLIENT_EXT).unwrap();
            for key in ["server", "client", "ca1", "ca2"] {
                openssl(
                    d,
                    &format!("ecparam -name prime256v1 -genkey -noout -out {key}.key"),
                );
            }
            for n in [1, 2] {
                openssl(
                    d,
                    &format!("req -x509 -new -key ca{n}.key -subj /CN=test-ca{n} -days 3650 -out ca{n}.crt"),
                );
                for role in ["server", "client"] {
                    openssl(
                        d,
                        &format!("req -new -key {role}.key -subj /CN={role}{n} -out {role}{n}.csr"),
                    );
                    openssl(
                        d,
                        &format!(
                            "x509 -req -in {role}{n}.csr -CA ca{n}.crt -CAkey ca{n}.key \
                             -CAcreateserial -days 30 -extfile {role}.ext -out {role}{n}.crt"
                        ),
                    );
                }
            }
            pki
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.join(name)
        }

        /// The forwarder's client configuration: trusts `ca`, presents `cert`.
        fn client(&self, ca: &str, cert: &str) -> Arc<ClientConfig> {
            tls::client_tls(&tls::ClientSettings {
                files: tls::ClientFiles {
                    ca: self.path(ca),
                    cert: self.path(cert),
                    key: self.path("client.key"),
                },
                vhost: VHOST.to_string(),
                verify_hostname: true,
            })
            .unwrap()
            .config
        }

        /// A client that presents no certificate at all.
        fn anonymous(&self, ca: &str) -> Arc<ClientConfig> {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_file(self.path(ca)).unwrap())
                .unwrap();
            Arc::new(
                ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
            )
        }

        fn server(&self, cert: &str, client_ca: Option<&str>, max_version_12: bool) -> TailerTls {
            TailerTls {
                cert: self.path(cert),
                key: self.path("server.key"),
                client_ca: client_ca.map(|ca| self.path(ca)),
                max_version_12,
            }
        }

        /// Settings of a TLS server, built the way `run` builds them.
        fn settings(&self, tls: TailerTls, shared_key: Option<&str>) -> Settings {
            settings(&TailerArgs {
                listen: "unused".into(),
                discard: false,
                tls: Some(tls),
                shared_key: shared_key.map(|k| SharedKey::Value(k.into())),
                self_hostname: Some("test-tailer".into()),
                limits: LIMITS_DEFAULT,
                metrics_address: None,
            })
            .unwrap()
        }
    }

    type TlsStream = StreamOwned<ClientConnection, StdStream>;

    fn connect_tls(addr: SocketAddr, config: Arc<ClientConfig>) -> TlsStream {
        let conn = ClientConnection::new(config, ServerName::try_from(VHOST).unwrap()).unwrap();
        StreamOwned::new(conn, connect(addr))
    }

    /// The forwarder's half of the shared-key handshake; `Err` is how the server answered.
    fn client_handshake(s: &mut (impl Read + Write), key: &str) -> Result<(), HandshakeError> {
        let mut client = handshake::Client::new(
            handshake::ClientConfig {
                shared_key: key.as_bytes().to_vec(),
                self_hostname: "test-forwarder".into(),
                username: None,
                password: None,
            },
            [7; 16],
        );
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            let (used, step) = client.feed(&buf)?;
            buf.drain(..used);
            match step {
                ClientStep::Done => {
                    assert!(
                        buf.is_empty(),
                        "the server sent more than the PONG: {buf:?}"
                    );
                    return Ok(());
                }
                ClientStep::Send(ping) => {
                    s.write_all(&ping).unwrap();
                    s.flush().unwrap();
                    continue;
                }
                ClientStep::NeedMore => {}
            }
            match s.read(&mut chunk) {
                Ok(0) => return Err(client.closed()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading the handshake: {e}"),
            }
        }
    }

    fn with_key(mut settings: Settings, key: &str) -> Settings {
        settings.shared_key = Some(ServerKey {
            key: key.as_bytes().to_vec(),
            hostname: "test-tailer".into(),
        });
        settings
    }

    // ---- plain TCP ----

    #[test]
    fn prints_records_acks_chunks_and_survives_garbage() {
        let out = Shared::default();
        let (addr, _server) = start(plain(false), out.clone());
        let events = sample_events(12);

        // A message split across two writes, then a compressed one on the same connection.
        let mut c1 = connect(addr);
        let msg = packed(&events[..5], "Y2h1bmstMQ==", false);
        c1.write_all(&msg[..msg.len() / 2]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        c1.write_all(&msg[msg.len() / 2..]).unwrap();
        assert_eq!(read_ack(&mut c1), b"Y2h1bmstMQ==");
        assert_eq!(
            out.lines(),
            events[..5],
            "records are on stdout before the ack"
        );
        c1.write_all(&packed(&events[5..8], "Y2h1bmstMg==", true))
            .unwrap();
        assert_eq!(read_ack(&mut c1), b"Y2h1bmstMg==");
        assert_eq!(out.lines(), events[..8]);

        // Garbage: the server drops this client only.
        let mut c2 = connect(addr);
        c2.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_closed(&mut c2);

        // A third client is served; it half-closes and still gets its ack before EOF.
        let mut c3 = connect(addr);
        c3.write_all(&packed(&events[8..12], "Y2h1bmstMw==", false))
            .unwrap();
        c3.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_ack(&mut c3), b"Y2h1bmstMw==");
        assert_closed(&mut c3);
        assert_eq!(out.lines(), events[..12]);

        // The first connection is still alive after all that.
        c1.write_all(&packed(&events[..1], "Y2h1bmstNA==", false))
            .unwrap();
        assert_eq!(read_ack(&mut c1), b"Y2h1bmstNA==");
        assert_eq!(out.lines().len(), 13);
    }

    #[test]
    fn pipelined_messages_get_acks_in_order() {
        let out = Shared::default();
        let (addr, _server) = start(plain(false), out.clone());
        let events = sample_events(3);
        let mut c = connect(addr);
        let mut all = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            all.extend_from_slice(&packed(std::slice::from_ref(ev), &format!("id-{i}"), false));
        }
        c.write_all(&all).unwrap();
        for i in 0..3 {
            assert_eq!(read_ack_buffered(&mut c), format!("id-{i}").into_bytes());
        }
        assert_eq!(out.lines(), events);
    }

    /// Like `read_ack` but reads exactly one ack's bytes so pipelined acks are not swallowed:
    /// every ack here is `{"ack": "id-N"}`, 10 bytes.
    fn read_ack_buffered(s: &mut StdStream) -> Vec<u8> {
        let mut buf = [0u8; 10];
        s.read_exact(&mut buf).unwrap();
        let (id, used) = forward::parse_ack(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        id.to_vec()
    }

    #[test]
    fn discard_counts_and_still_acks() {
        let out = Shared::default();
        let (addr, _server) = start(plain(true), out.clone());
        let mut c = connect(addr);
        c.write_all(&packed(&sample_events(4), "ZGlzY2FyZA==", false))
            .unwrap();
        assert_eq!(read_ack(&mut c), b"ZGlzY2FyZA==");
        assert!(out.0.lock().unwrap().is_empty());
    }

    #[test]
    fn stdout_failure_stops_the_server() {
        let (addr, server) = start(plain(false), Broken);
        let mut c = connect(addr);
        c.write_all(&packed(&sample_events(1), "ZXBpcGU=", false))
            .unwrap();
        assert_closed(&mut c);
        match server.join().unwrap() {
            Err(Error::Output(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
            other => panic!("expected an output error, got {other:?}"),
        }
    }

    fn args(listen: &str) -> TailerArgs {
        TailerArgs {
            listen: listen.into(),
            discard: true,
            tls: None,
            shared_key: None,
            self_hostname: None,
            limits: LIMITS_DEFAULT,
            metrics_address: None,
        }
    }

    #[test]
    fn run_reports_unusable_listen_addresses() {
        let cases = [
            (
                "no port",
                "127.0.0.1",
                "tailer: resolving --listen 127.0.0.1:",
            ),
            (
                "bad port",
                "127.0.0.1:http",
                "tailer: resolving --listen 127.0.0.1:http:",
            ),
            (
                "not local",
                "192.0.2.1:0",
                "tailer: listening on 192.0.2.1:0:",
            ),
        ];
        for (name, listen, want) in cases {
            let err = run(&args(listen)).expect_err(name);
            assert!(err.to_string().starts_with(want), "{name}: {err}");
            assert!(!err.is_config(), "{name}: {err:?}");
        }
    }

    #[test]
    fn run_reports_configuration_errors_before_binding() {
        let pki = Pki::new("config-errors");
        let missing = pki.path("missing.pem");
        let m = missing.display().to_string();
        let tls = |cert: &str, key: &str, ca: Option<&str>| TailerTls {
            cert: pki.path(cert),
            key: pki.path(key),
            client_ca: ca.map(|c| pki.path(c)),
            max_version_12: false,
        };
        let cases: Vec<(&str, Option<TailerTls>, Option<SharedKey>, String)> = vec![
            (
                "certificate file missing",
                Some(tls("missing.pem", "server.key", None)),
                None,
                format!("tailer: TLS: {m}: file not found"),
            ),
            (
                "key file missing",
                Some(tls("server1.crt", "missing.pem", None)),
                None,
                format!("tailer: TLS: {m}: file not found"),
            ),
            (
                "key of another certificate",
                Some(tls("server1.crt", "client.key", None)),
                None,
                "does not match the certificate".to_string(),
            ),
            (
                "client CA missing",
                Some(tls("server1.crt", "server.key", Some("missing.pem"))),
                None,
                format!("tailer: TLS: {m}: file not found"),
            ),
            (
                "client CA holds a key",
                Some(tls("server1.crt", "server.key", Some("ca1.key"))),
                None,
                "no certificates found".to_string(),
            ),
            (
                "shared-key file missing",
                None,
                Some(SharedKey::File(missing.clone())),
                format!("tailer: --shared-key-file {m}:"),
            ),
        ];
        for (name, tls, shared_key, want) in cases {
            // An address that cannot be bound: the configuration must fail first.
            let args = TailerArgs {
                tls,
                shared_key,
                self_hostname: Some("test-tailer".into()),
                ..args("192.0.2.1:0")
            };
            let err = run(&args).expect_err(name);
            assert!(err.is_config(), "{name}: {err:?}");
            assert!(err.to_string().contains(&want), "{name}: {err}");
        }
    }

    // ---- TLS ----

    #[test]
    fn tls_clients_get_records_printed_and_acked() {
        capture_logs();
        let pki = Pki::new("tls-data");
        let events = sample_events(12);
        // One message far bigger than a TLS record and rustls' buffers.
        let many: Vec<_> = events.iter().cycle().take(1500).cloned().collect();
        let cases = [
            ("TLS 1.3", None, false, ProtocolVersion::TLSv1_3),
            (
                "TLS 1.3, mTLS",
                Some("ca1.crt"),
                false,
                ProtocolVersion::TLSv1_3,
            ),
            ("TLS 1.2 only", None, true, ProtocolVersion::TLSv1_2),
            (
                "TLS 1.2 only, mTLS",
                Some("ca1.crt"),
                true,
                ProtocolVersion::TLSv1_2,
            ),
        ];
        for (name, client_ca, tls12, version) in cases {
            let out = Shared::default();
            let settings = pki.settings(pki.server("server1.crt", client_ca, tls12), None);
            let (addr, _server) = start(settings, out.clone());
            let mut c = connect_tls(addr, pki.client("ca1.crt", "client1.crt"));
            let ack = exchange(&mut c, &packed(&events[..5], "dGxzLTE=", false)).unwrap();
            assert_eq!(ack.as_deref(), Some(&b"dGxzLTE="[..]), "{name}");
            assert_eq!(out.lines(), events[..5], "{name}");
            assert_eq!(c.conn.protocol_version(), Some(version), "{name}");
            let ack = exchange(&mut c, &packed(&events[5..], "dGxzLTI=", true)).unwrap();
            assert_eq!(ack.as_deref(), Some(&b"dGxzLTI="[..]), "{name}");
            let ack = exchange(&mut c, &packed(&many, "dGxzLTM=", false)).unwrap();
            assert_eq!(ack.as_deref(), Some(&b"dGxzLTM="[..]), "{name}");
            let want: Vec<_> = events.iter().chain(&many).cloned().collect();
            assert_eq!(out.lines(), want, "{name}");

            // A clean TLS close is answered in kind.
            c.conn.send_close_notify();
            c.flush().unwrap();
            let mut b = [0u8; 16];
            assert_eq!(c.read(&mut b).unwrap(), 0, "{name}");
            let peer = c.sock.local_addr().unwrap().to_string();
            wait_log(
                log::Level::Info,
                &[&format!("client {peer} disconnected: closed by peer")],
            );

            // A port probe (connect, close) is an ordinary event, not a TLS failure.
            let probe = connect(addr);
            let peer = probe.local_addr().unwrap().to_string();
            drop(probe);
            wait_log(
                log::Level::Info,
                &[&format!(
                    "client {peer} disconnected: closed by peer during the TLS handshake"
                )],
            );
        }
    }

    #[test]
    fn client_certificates_are_required_and_checked() {
        capture_logs();
        let pki = Pki::new("mtls");
        let events = sample_events(3);
        for tls12 in [false, true] {
            let out = Shared::default();
            let settings = pki.settings(pki.server("server1.crt", Some("ca1.crt"), tls12), None);
            let (addr, _server) = start(settings, out.clone());
            let mut good = connect_tls(addr, pki.client("ca1.crt", "client1.crt"));
            let ack = exchange(&mut good, &packed(&events[..1], "Z29vZA==", false)).unwrap();
            assert_eq!(ack.as_deref(), Some(&b"Z29vZA=="[..]));

            let refusals = [
                (
                    "no certificate",
                    connect_tls(addr, pki.anonymous("ca1.crt")),
                    "the client presented no certificate",
                ),
                (
                    "certificate from another CA",
                    connect_tls(addr, pki.client("ca1.crt", "client2.crt")),
                    "not signed by the client CA",
                ),
            ];
            for (name, mut bad, why) in refusals {
                let peer = bad.sock.local_addr().unwrap().to_string();
                let result = exchange(&mut bad, &packed(&events[1..2], "YmFk", false));
                assert_refused(result, &format!("tls12={tls12} {name}"));
                let line = wait_log(log::Level::Warn, &[&format!("client {peer} "), why]);
                assert!(line.starts_with("tailer: client "), "{line}");
            }

            // The refusals cost nobody else anything.
            let ack = exchange(&mut good, &packed(&events[2..3], "c3RpbGw=", false)).unwrap();
            assert_eq!(ack.as_deref(), Some(&b"c3RpbGw="[..]));
            assert_eq!(
                out.lines(),
                [events[0].clone(), events[2].clone()],
                "tls12={tls12}"
            );
        }
    }

    #[test]
    fn certificate_changes_apply_to_new_connections() {
        capture_logs();
        let pki = Pki::new("rotation");
        let live = pki.path("live.crt");
        // Kubernetes replaces a mounted Secret by renaming, never by rewriting in place.
        let replace = |content: &[u8]| {
            let tmp = pki.path("live.tmp");
            std::fs::write(&tmp, content).unwrap();
            std::fs::rename(&tmp, &live).unwrap();
        };
        replace(&std::fs::read(pki.path("server1.crt")).unwrap());
        let settings = pki.settings(pki.server("live.crt", None, false), None);
        let out = Shared::default();
        let (addr, _server) = start(settings, out.clone());
        let events = sample_events(3);
        let msg = |i: usize| packed(&events[i..i + 1], &format!("cm90-{i}"), false);

        let mut old = connect_tls(addr, pki.client("ca1.crt", "client1.crt"));
        assert_eq!(
            exchange(&mut old, &msg(0)).unwrap(),
            Some(b"cm90-0".to_vec())
        );

        replace(&std::fs::read(pki.path("server2.crt")).unwrap());
        wait_log(
            log::Level::Info,
            &["TLS material reloaded from", &live.display().to_string()],
        );
        let mut new = connect_tls(addr, pki.client("ca2.crt", "client2.crt"));
        assert_eq!(
            exchange(&mut new, &msg(1)).unwrap(),
            Some(b"cm90-1".to_vec())
        );
        // The connection made before the change keeps its session.
        assert_eq!(
            exchange(&mut old, &msg(2)).unwrap(),
            Some(b"cm90-2".to_vec())
        );

        replace(b"not a certificate\n");
        wait_log(
            log::Level::Error,
            &[
                &live.display().to_string(),
                "cannot be used",
                "keeping the previous one",
            ],
        );
        let mut after = connect_tls(addr, pki.client("ca2.crt", "client2.crt"));
        assert_eq!(
            exchange(&mut after, &msg(0)).unwrap(),
            Some(b"cm90-0".to_vec())
        );
        let trusting_ca1 = connect_tls(addr, pki.client("ca1.crt", "client1.crt"));
        let mut trusting_ca1 = trusting_ca1;
        assert_refused(
            exchange(&mut trusting_ca1, &msg(1)),
            "a client trusting only the old CA",
        );
    }

    // ---- shared key ----

    #[test]
    fn shared_key_handshake_comes_before_any_data() {
        capture_logs();
        let pki = Pki::new("shared-key");
        let events = sample_events(2);
        let cases = [
            // name, over TLS, the client's key, accepted
            ("plain, right key", false, "s3cret", true),
            ("TLS, right key", true, "s3cret", true),
            ("plain, wrong key", false, "guess", false),
            ("TLS, wrong key", true, "guess", false),
        ];
        for (name, over_tls, key, accepted) in cases {
            let out = Shared::default();
            let settings = if over_tls {
                pki.settings(
                    pki.server("server1.crt", Some("ca1.crt"), false),
                    Some("s3cret"),
                )
            } else {
                with_key(plain(false), "s3cret")
            };
            let (addr, _server) = start(settings, out.clone());
            let (peer, verdict, after): (String, _, io::Result<Option<Vec<u8>>>) = if over_tls {
                let mut c = connect_tls(addr, pki.client("ca1.crt", "client1.crt"));
                let peer = c.sock.local_addr().unwrap().to_string();
                let verdict = client_handshake(&mut c, key);
                (
                    peer,
                    verdict,
                    exchange(&mut c, &packed(&events, "a2V5", false)),
                )
            } else {
                let mut c = connect(addr);
                let peer = c.local_addr().unwrap().to_string();
                let verdict = client_handshake(&mut c, key);
                (
                    peer,
                    verdict,
                    exchange(&mut c, &packed(&events, "a2V5", false)),
                )
            };
            if accepted {
                assert_eq!(verdict, Ok(()), "{name}");
                assert_eq!(after.unwrap(), Some(b"a2V5".to_vec()), "{name}");
                assert_eq!(out.lines(), events, "{name}");
                wait_log(
                    log::Level::Info,
                    &[&format!("client {peer} passed the shared-key check")],
                );
            } else {
                assert_eq!(
                    verdict,
                    Err(HandshakeError::Rejected {
                        reason: "shared_key mismatch".into()
                    }),
                    "{name}"
                );
                assert_refused(after, name);
                assert!(out.lines().is_empty(), "{name}");
                wait_log(
                    log::Level::Warn,
                    &[&format!(
                        "tailer: client {peer} failed the shared-key check: shared_key mismatch"
                    )],
                );
            }
        }
    }

    #[test]
    fn clients_that_skip_the_ping_are_refused() {
        capture_logs();
        let pki = Pki::new("no-ping");
        let events = sample_events(2);
        for over_tls in [false, true] {
            let out = Shared::default();
            let settings = if over_tls {
                pki.settings(pki.server("server1.crt", None, true), Some("s3cret"))
            } else {
                with_key(plain(false), "s3cret")
            };
            let (addr, _server) = start(settings, out.clone());
            // Forward data straight away, as a forwarder configured without the key would.
            let msg = packed(&events, "bm8tcGluZw==", false);
            let (peer, received) = if over_tls {
                let mut c = connect_tls(addr, pki.client("ca1.crt", "client1.crt"));
                c.write_all(&msg).unwrap();
                c.flush().unwrap();
                (
                    c.sock.local_addr().unwrap().to_string(),
                    read_until_closed(&mut c),
                )
            } else {
                let mut c = connect(addr);
                c.write_all(&msg).unwrap();
                (
                    c.local_addr().unwrap().to_string(),
                    read_until_closed(&mut c),
                )
            };
            // What came back is exactly a HELO and a refusing PONG: no ack.
            let mut client = handshake::Client::new(
                handshake::ClientConfig {
                    shared_key: b"s3cret".to_vec(),
                    self_hostname: "test-forwarder".into(),
                    username: None,
                    password: None,
                },
                [1; 16],
            );
            let (used, step) = client.feed(&received).unwrap();
            assert!(
                matches!(step, ClientStep::Send(_)),
                "tls={over_tls}: {step:?}"
            );
            match client.feed(&received[used..]) {
                Err(HandshakeError::Rejected { reason }) => {
                    assert!(reason.starts_with("invalid ping message"), "{reason}")
                }
                other => panic!("tls={over_tls}: expected a refusing PONG, got {other:?}"),
            }
            assert!(out.lines().is_empty(), "tls={over_tls}");
            wait_log(
                log::Level::Warn,
                &[&format!(
                    "client {peer} failed the shared-key check: invalid ping message"
                )],
            );
        }
    }

    // ---- hostile clients ----

    fn limited(f: impl FnOnce(&mut ClientLimits)) -> Settings {
        let mut settings = plain(false);
        f(&mut settings.limits);
        settings
    }

    /// Small generated events, so these tests need no sample files.
    fn events(n: usize) -> Vec<serde_json::Value> {
        (0..n)
            .map(|i| serde_json::json!({"kind": "Event", "seq": i, "verb": "get"}))
            .collect()
    }

    /// A PackedForward message of one entry whose record is `record` (msgpack bytes as given).
    fn raw_record(record: &[u8], chunk: &str) -> Vec<u8> {
        let mut entries = Vec::new();
        rmp::encode::write_array_len(&mut entries, 2).unwrap();
        rmp::encode::write_uint(&mut entries, 1_700_000_000).unwrap();
        entries.extend_from_slice(record);
        let mut msg = Vec::new();
        forward::encode_packed_forward("audit", &entries, 1, chunk, false, &mut msg);
        msg
    }

    /// The peer address the server logs for this client.
    fn peer_of(s: &StdStream) -> String {
        s.local_addr().unwrap().to_string()
    }

    #[test]
    fn nested_map_keys_print_linearly_and_oversized_records_are_refused() {
        capture_logs();
        let out = Shared::default();
        let (addr, _server) = start(plain(false), out.clone());
        // {"a": M22} where M0 is 1 and Mn is a map whose only key is Mn-1: 2 x 22 + 4 bytes
        // that printed as megabytes when every level's key was escaped again.
        let depth = 22;
        let mut record = vec![0x81, 0xa1, b'a'];
        record.extend(std::iter::repeat_n(0x81, depth));
        record.push(0x01);
        record.extend(std::iter::repeat_n(0x03, depth));
        let mut c = connect(addr);
        let ack = exchange(&mut c, &raw_record(&record, "bmVzdGVk")).unwrap();
        assert_eq!(ack.as_deref(), Some(&b"bmVzdGVk"[..]));
        let printed = out.0.lock().unwrap().len();
        assert!(
            printed < 8 * record.len(),
            "{printed} bytes printed for a {}-byte record",
            record.len()
        );
        let lines = out.lines();
        let inner = lines[0]["a"].as_object().unwrap();
        assert_eq!(inner.values().next(), Some(&serde_json::json!(3)));

        // 12 million control characters: 72 MB of JSON, over the cap of one record. The client
        // is dropped like one that sent an undecodable message, its chunk not acked.
        let mut huge = vec![0x81, 0xa1, b'a'];
        rmp::encode::write_str_len(&mut huge, 12_000_000).unwrap();
        huge.resize(huge.len() + 12_000_000, 0x01);
        let mut c2 = connect(addr);
        let peer = peer_of(&c2);
        assert_refused(
            exchange(&mut c2, &raw_record(&huge, "aHVnZQ==")),
            "huge record",
        );
        wait_log(
            log::Level::Warn,
            &[
                &format!("client {peer} disconnected: record: "),
                &format!("its JSON text exceeds the cap of {MAX_RECORD_JSON} bytes"),
            ],
        );
        assert_eq!(
            out.lines().len(),
            1,
            "nothing of the refused record printed"
        );
        // Others are still served.
        let ack = exchange(&mut c, &packed(&events(2), "YWZ0ZXI=", false)).unwrap();
        assert_eq!(ack.as_deref(), Some(&b"YWZ0ZXI="[..]));
    }

    #[test]
    fn stalled_and_idle_clients_are_closed_after_their_timeout() {
        capture_logs();
        let pki = Pki::new("timeouts");
        let short = |mut s: Settings| {
            s.limits.client_timeout = Duration::from_secs(1);
            s.limits.idle_timeout = Duration::from_secs(2);
            s
        };
        let (plain_addr, _a) = start(short(plain(false)), Shared::default());
        let (key_addr, _b) = start(short(with_key(plain(false), "s3cret")), Shared::default());
        let tls_settings = pki.settings(pki.server("server1.crt", None, false), None);
        let (tls_addr, _c) = start(short(tls_settings), Shared::default());
        let begun = Instant::now();

        // Says nothing at all.
        let mut idle = connect(plain_addr);
        // Half a message, then nothing.
        let mut half = connect(plain_addr);
        let msg = packed(&events(3), "aGFsZg==", false);
        half.write_all(&msg[..msg.len() / 2]).unwrap();
        // Gets the HELO and never sends the PING.
        let mut no_ping = connect(key_addr);
        // Opens TCP to the TLS port and never starts TLS.
        let mut no_tls = connect(tls_addr);
        // Keeps sending complete messages, more slowly than the timeouts but never stalling.
        let mut busy = connect(plain_addr);
        let cases = [
            (
                &mut idle,
                log::Level::Info,
                "idle for 2s (--idle-timeout)",
                2,
            ),
            (
                &mut half,
                log::Level::Warn,
                "bytes of a message but not the rest within 1s (--client-timeout)",
                1,
            ),
            (
                &mut no_ping,
                log::Level::Warn,
                "did not complete its handshake within 1s (--client-timeout)",
                1,
            ),
            (
                &mut no_tls,
                log::Level::Warn,
                "did not complete its handshake within 1s (--client-timeout)",
                1,
            ),
        ];
        for i in 0..5 {
            let id = format!("busy-{i}");
            let ack = exchange(&mut busy, &packed(&events(1), &id, false)).unwrap();
            assert_eq!(ack, Some(id.into_bytes()), "busy message {i}");
            std::thread::sleep(Duration::from_millis(700));
        }
        for (s, level, why, after) in cases {
            let peer = peer_of(s);
            read_until_closed(s);
            assert!(begun.elapsed() >= Duration::from_secs(after), "{why}");
            wait_log(level, &[&format!("client {peer} disconnected: "), why]);
        }
        let ack = exchange(&mut busy, &packed(&events(1), "c3RpbGw=", false)).unwrap();
        assert_eq!(
            ack.as_deref(),
            Some(&b"c3RpbGw="[..]),
            "the busy client was kept"
        );
    }

    #[test]
    fn connections_beyond_max_clients_are_refused() {
        capture_logs();
        let (addr, _server) = start(limited(|l| l.max_clients = 2), Shared::default());
        let mut first = connect(addr);
        let mut second = connect(addr);
        for (i, c) in [&mut first, &mut second].into_iter().enumerate() {
            let id = format!("client-{i}");
            let ack = exchange(c, &packed(&events(1), &id, false)).unwrap();
            assert_eq!(ack, Some(id.into_bytes()));
        }
        let mut third = connect(addr);
        let peer = peer_of(&third);
        assert_closed(&mut third);
        wait_log(
            log::Level::Warn,
            &[&format!(
                "client {peer} refused: 2 clients are connected, as many as --max-clients allows"
            )],
        );
        let gone = peer_of(&first);
        drop(first);
        wait_log(log::Level::Info, &[&format!("client {gone} disconnected")]);
        let mut fourth = connect(addr);
        let ack = exchange(&mut fourth, &packed(&events(1), "NHRo", false)).unwrap();
        assert_eq!(ack.as_deref(), Some(&b"NHRo"[..]));
    }

    #[test]
    fn memory_budget_drops_the_client_that_would_exceed_it() {
        capture_logs();
        let out = Shared::default();
        let (addr, _server) = start(limited(|l| l.mem_budget = 8 << 20), out.clone());
        let big = |n: usize, i: usize| serde_json::json!({"seq": i, "big": "x".repeat(n)});
        // A holds 3 MiB of a 4 MiB message.
        let mut a = connect(addr);
        let a_msg = packed(&[big(4 << 20, 0)], "YQ==", false);
        a.write_all(&a_msg[..3 << 20]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // B's 6 MiB message does not fit beside it.
        let mut b = connect(addr);
        b.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let peer = peer_of(&b);
        let b_msg = packed(&[big(6 << 20, 1)], "Yg==", false);
        assert_refused(exchange(&mut b, &b_msg), "the client over the budget");
        wait_log(
            log::Level::Warn,
            &[
                &format!("client {peer} disconnected: over the memory budget"),
                "of --mem-budget 8388608 bytes are held by all clients",
            ],
        );
        // A is unharmed and finishes its message.
        a.write_all(&a_msg[3 << 20..]).unwrap();
        assert_eq!(read_ack(&mut a), b"YQ==");
        // With A's message done, the same 6 MiB fit.
        let mut c = connect(addr);
        let ack = exchange(&mut c, &b_msg).unwrap();
        assert_eq!(ack.as_deref(), Some(&b"Yg=="[..]));
        assert_eq!(out.lines(), [big(4 << 20, 0), big(6 << 20, 1)]);
    }

    #[test]
    fn buffers_shrink_after_a_large_message() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let out = Shared::default();
        let mut server = Server::new(listener, plain(false), out.clone()).unwrap();
        let record = serde_json::json!({"big": "y".repeat(20 << 20)});
        let plain_msg = packed(std::slice::from_ref(&record), "cGxhaW4=", false);
        let gzip_msg = packed(std::slice::from_ref(&record), "Z3ppcA==", true);
        let client = std::thread::spawn(move || {
            let mut c = connect(addr);
            for (msg, id) in [(plain_msg, "cGxhaW4="), (gzip_msg, "Z3ppcA==")] {
                c.write_all(&msg).unwrap();
                assert_eq!(read_ack(&mut c), id.as_bytes());
            }
            // Wakes the server's poll, so the loop below sees this thread finished.
            drop(connect(addr));
            c
        });
        while !client.is_finished() {
            server.turn().unwrap();
        }
        let _open = client.join().unwrap();
        assert_eq!(out.lines(), [record.clone(), record]);
        let held = server.clients.iter().flatten().next().unwrap();
        for (name, capacity) in [
            ("input", held.rbuf.capacity()),
            ("output line", server.sink.line.capacity()),
            ("inflated entries", server.sink.scratch.capacity()),
            ("acks", held.wbuf.capacity()),
        ] {
            assert!(
                capacity <= KEEP_CAPACITY,
                "{name} buffer kept {capacity} bytes"
            );
        }
        assert_eq!(server.sink.mem.used, held.rbuf.capacity());
    }

    const EMFILE_CHILD: &str = "AUDIT_FORWARDER_TEST_EMFILE_CHILD";

    #[test]
    fn accept_is_retried_after_emfile() {
        // The open-files limit is per process, so the test runs in a child process.
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "tailer::tests::emfile_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(EMFILE_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(
            child.status.success() && stdout.contains("1 passed"),
            "child: {}\n{stdout}\n{}",
            child.status,
            String::from_utf8_lossy(&child.stderr)
        );
    }

    #[test]
    #[ignore = "run by accept_is_retried_after_emfile in a child process"]
    fn emfile_child() {
        if std::env::var_os(EMFILE_CHILD).is_none() {
            return;
        }
        capture_logs();
        sys::limit_open_files(64).unwrap();
        let (addr, _server) = start(plain(false), Shared::default());
        let mut served = connect(addr);
        let ack = exchange(&mut served, &packed(&events(1), "YQ==", false)).unwrap();
        assert_eq!(ack.as_deref(), Some(&b"YQ=="[..]));
        // Every descriptor taken but one, which the next client's socket gets: the server's
        // accept then has none left.
        let mut fill = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => fill.push(f),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                Err(e) => panic!("open /dev/null: {e}"),
            }
        }
        fill.pop();
        let mut late = connect(addr);
        wait_log(
            log::Level::Warn,
            &["tailer: accept failed: Too many open files"],
        );
        // No new connection arrives to wake the listener; the retry must find this one.
        drop(fill);
        let ack = exchange(&mut late, &packed(&events(1), "bGF0ZQ==", false)).unwrap();
        assert_eq!(ack.as_deref(), Some(&b"bGF0ZQ=="[..]));
        wait_log(log::Level::Info, &["tailer: accepting connections again"]);
    }
}
