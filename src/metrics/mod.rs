//! `--metrics-address`: the forwarder seen from outside. It owns the listening socket, the
//! connections of scrapers and probes (at most [`MAX_CLIENTS`], each with a deadline), and the
//! rendering of a [`Snapshot`] of the data path into the Prometheus text format (`/metrics`) and
//! into the readiness verdict (`/readyz`). It runs on the forwarder's loop, so everything it does
//! is bounded: a request is read only up to [`http_server::MAX_HEAD`], a connection lives at most
//! [`CLIENT_DEADLINE`], and extra connections are closed as they are accepted; none of it waits.
//! The tailer serves the same endpoints from its own loop with its own figures ([`tailer`]): the
//! [`Server`] answers from anything that implements [`Answers`].

pub mod http_server;
pub mod tailer;

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use crate::event_loop::{Effect, Source};
use http_server::{Decision, Route, Status};

/// Scrapers and probes held at once; a connection beyond it is closed as soon as it is accepted.
pub const MAX_CLIENTS: usize = 64;
/// How long one connection may take from accept to the last byte of its answer (a slowloris
/// client that trickles its request is closed then).
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(5);
/// Connections accepted in one turn before the loop gets back to forwarding; the rest wait for
/// the next turn.
const ACCEPTS_PER_TURN: usize = 256;
/// Bytes read and thrown away after the answer (so closing does not reset the connection
/// before the client has read it); a client still sending past this is closed.
const DRAIN_MAX: usize = 64 * 1024;

/// The data path's figures at one moment: plain numbers and strings, taken by
/// `Pipeline::snapshot` each time a scrape or probe is answered and for the `stats:` line.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub lines_read: u64,
    pub bytes_read: u64,
    /// Records written whole to a connection, resends included.
    pub records_sent: u64,
    pub records_acked: u64,
    pub bytes_acked: u64,
    pub chunks_unacked: u64,
    pub buffered_bytes: u64,
    pub buffered_peak_bytes: u64,
    /// Bytes that may be in flight now (`forward::pace`).
    pub window_bytes: u64,
    pub mem_buf_limit: u64,
    /// Per followed file, oldest first: its size minus the offset the acks have reached in it.
    pub file_lags: Vec<(String, u64)>,
    /// Rotations seen: new files behind the one being read, truncations in place.
    pub rotations: u64,
    /// Files (or the directory) that cannot be opened right now.
    pub files_unreadable: u64,
    pub lines_too_long: u64,
    pub lines_not_json: u64,
    pub records_rejected: u64,
    pub reconnects: u64,
    /// Connection failures by coarse reason (`net::conn::FailClass` names, then `api` for the
    /// Kubernetes API), every reason listed.
    pub connection_failures: Vec<(&'static str, u64)>,
    pub last_ack: Option<SystemTime>,
    /// The receiver as `HOST:PORT`, when one is known.
    pub target: Option<String>,
    /// Connected and handshaken, chunks may flow.
    pub connected: bool,
    pub last_failure: Option<String>,
    /// How long the connection has been down after having been up (`None` while it is up,
    /// and before the first connection).
    pub down_for: Option<Duration>,
    /// `--backoff-timer`: how long a lost connection may take to come back before `/readyz`
    /// reports it.
    pub reconnect_grace: Duration,
    /// How long chunks have been waiting with no ack arriving (`None` with nothing unacked).
    pub ack_wait: Option<Duration>,
    pub ack_timeout: Duration,
    pub position_writes: u64,
    pub position_write_failures: u64,
    /// Why the audit log cannot be read right now, if it cannot.
    pub read_problem: Option<String>,
}

/// What a [`Server`] answers `/metrics` and `/readyz` from: figures taken after the loop's turn.
pub trait Answers {
    /// The Prometheus text of `/metrics`.
    fn render(&self) -> String;
    /// `/readyz`: ready, or the one-line reason why not.
    fn readiness(&self) -> Result<(), String>;
}

impl Answers for Snapshot {
    fn render(&self) -> String {
        render(self)
    }

    fn readiness(&self) -> Result<(), String> {
        readiness(self)
    }
}

impl Snapshot {
    /// The lag of all files together.
    pub fn lag_total(&self) -> u64 {
        self.file_lags.iter().map(|(_, n)| n).sum()
    }

    pub fn connection_failures_total(&self) -> u64 {
        self.connection_failures.iter().map(|(_, n)| n).sum()
    }
}

/// `/readyz`: ready while connected (or reconnecting for less than `--backoff-timer`) and acks
/// come back within `--ack-timeout`; otherwise the one reason why not.
pub fn readiness(s: &Snapshot) -> Result<(), String> {
    if let Some(p) = &s.read_problem {
        return Err(one_line(&format!("cannot read the audit log: {p}")));
    }
    let Some(target) = &s.target else {
        return Err("no target yet (the receiver is not known)".to_string());
    };
    if !s.connected {
        let why = s
            .last_failure
            .as_ref()
            .map(|f| format!(": {f}"))
            .unwrap_or_default();
        match s.down_for {
            // A receiver that restarts, or a connection the network drops now and then, is back
            // within the backoff: not an outage worth taking the pod out of service for.
            Some(d) if d < s.reconnect_grace => {}
            Some(d) => {
                return Err(one_line(&format!(
                    "not connected to {target} for {}s, longer than --backoff-timer {:?}{why}",
                    d.as_secs(),
                    s.reconnect_grace
                )))
            }
            None if why.is_empty() => return Err(format!("not connected to {target} yet")),
            None => return Err(one_line(&format!("not connected to {target}{why}"))),
        }
    }
    if s.ack_wait.is_some_and(|w| w >= s.ack_timeout) {
        return Err(format!(
            "no ack from {target} within {:?} (--ack-timeout)",
            s.ack_timeout
        ));
    }
    Ok(())
}

/// The `stats:` log line: the key figures of [`render`] as `key=value` pairs, the receiver
/// last (the only value that is not a number).
pub fn stats_line(s: &Snapshot, cpu_seconds: f64) -> String {
    format!(
        "stats: records_sent={} records_acked={} bytes_read={} bytes_acked={} lag_bytes={} \
         chunks_unacked={} buffered={} buffered_peak={} window={} reconnects={} connection_failures={} \
         rotations={} malformed={} skipped_long={} rejected={} position_write_failures={} \
         files_unreadable={} connected={} cpu_s={cpu_seconds:.2} target={}",
        s.records_sent,
        s.records_acked,
        s.bytes_read,
        s.bytes_acked,
        s.lag_total(),
        s.chunks_unacked,
        s.buffered_bytes,
        s.buffered_peak_bytes,
        s.window_bytes,
        s.reconnects,
        s.connection_failures_total(),
        s.rotations,
        s.lines_not_json,
        s.lines_too_long,
        s.records_rejected,
        s.position_write_failures,
        s.files_unreadable,
        u8::from(s.connected),
        s.target.as_deref().unwrap_or("none"),
    )
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The Prometheus text exposition format (version 0.0.4) of a snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut out = Exposition::new("audit_forwarder_");
    out.labelled(
        "build_info",
        "gauge",
        "Always 1; the version is a label.",
        "version",
        [(env!("CARGO_PKG_VERSION"), 1)].into_iter(),
    );
    out.one(
        "lines_read_total",
        "counter",
        "Audit log lines read (each becomes one record).",
        s.lines_read,
    );
    out.one(
        "bytes_read_total",
        "counter",
        "Bytes of audit log lines read, newlines included.",
        s.bytes_read,
    );
    out.one(
        "records_sent_total",
        "counter",
        "Records written to the receiver, resends after a reconnect included.",
        s.records_sent,
    );
    out.one(
        "records_acked_total",
        "counter",
        "Records the receiver acknowledged.",
        s.records_acked,
    );
    out.one(
        "bytes_acked_total",
        "counter",
        "Audit log bytes whose records the receiver acknowledged.",
        s.bytes_acked,
    );
    out.one(
        "chunks_unacked",
        "gauge",
        "Chunks sealed and not yet acknowledged (in flight or waiting to be sent).",
        s.chunks_unacked,
    );
    out.one(
        "buffered_bytes",
        "gauge",
        "Bytes held in memory for lines read but not yet acknowledged.",
        s.buffered_bytes,
    );
    out.one(
        "buffered_peak_bytes",
        "gauge",
        "The most bytes held in memory so far.",
        s.buffered_peak_bytes,
    );
    out.one(
        "window_bytes",
        "gauge",
        "Bytes that may be in flight unacknowledged now: twice the receiver's pace times the round trip, from 8 MiB up to 32 MiB, never above half of --mem-buf-limit.",
        s.window_bytes,
    );
    out.one(
        "mem_buf_limit_bytes",
        "gauge",
        "--mem-buf-limit: the bound of buffered_bytes.",
        s.mem_buf_limit,
    );
    out.labelled(
        "lag_bytes",
        "gauge",
        "Per followed file: its size minus the offset the receiver's acks have reached in it \
         (a rotated file is listed until it is acked to its end).",
        "file",
        s.file_lags.iter().map(|(file, n)| (file.as_str(), *n)),
    );
    out.one(
        "total_lag_bytes",
        "gauge",
        "The sum of lag_bytes over all files.",
        s.lag_total(),
    );
    out.one(
        "rotations_total",
        "counter",
        "Log rotations seen: a new file behind the one being read, or a truncation in place.",
        s.rotations,
    );
    out.reasons(
        "lines_skipped_total",
        "Lines not delivered, by reason (too_long: over --max-line-size).",
        [("too_long", s.lines_too_long)].into_iter(),
    );
    out.one(
        "lines_not_json_total",
        "counter",
        "Lines that are not JSON objects, delivered wrapped as {\"log\": line}.",
        s.lines_not_json,
    );
    out.one(
        "records_rejected_total",
        "counter",
        "Records set aside because the receiver kept dropping the connection over them.",
        s.records_rejected,
    );
    out.one(
        "reconnects_total",
        "counter",
        "Connections to the receiver established after the first one.",
        s.reconnects,
    );
    out.reasons(
        "connection_failures_total",
        "Connection attempts or connections that failed, by coarse reason (api: requests to \
         the Kubernetes API).",
        s.connection_failures.iter().copied(),
    );
    let last_ack = s
        .last_ack
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    out.one(
        "last_ack_timestamp_seconds",
        "gauge",
        "Unix time of the last ack that acknowledged records; 0 before the first.",
        last_ack,
    );
    out.labelled(
        "target_info",
        "gauge",
        "Always 1; the receiver is the label (empty while not known).",
        "target",
        [(s.target.as_deref().unwrap_or(""), 1)].into_iter(),
    );
    out.one(
        "connected",
        "gauge",
        "1 while connected to the receiver (TLS and handshake done), else 0.",
        u64::from(s.connected),
    );
    out.one(
        "position_writes_total",
        "counter",
        "Writes of the position file, successful or not.",
        s.position_writes,
    );
    out.one(
        "position_write_failures_total",
        "counter",
        "Writes of the position file that failed.",
        s.position_write_failures,
    );
    out.one(
        "files_unreadable",
        "gauge",
        "Audit log files (or their directory) that cannot be opened right now; reading waits \
         at the first, so 0 or 1.",
        s.files_unreadable,
    );
    out.one(
        "ready",
        "gauge",
        "1 when /readyz answers 200, else 0.",
        u64::from(readiness(s).is_ok()),
    );
    out.finish()
}

/// Prometheus text being rendered, every family's name under one prefix and given its HELP and
/// TYPE lines before its samples; the forwarder's and the tailer's `/metrics` both write through
/// it.
pub(crate) struct Exposition {
    text: String,
    prefix: &'static str,
}

impl Exposition {
    pub(crate) fn new(prefix: &'static str) -> Exposition {
        Exposition {
            text: String::with_capacity(4096),
            prefix,
        }
    }

    /// One family: `samples` are (labels, value), labels already in `{k="v"}` form or empty.
    pub(crate) fn family<V: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: &[(String, V)],
    ) {
        let p = self.prefix;
        let _ = writeln!(self.text, "# HELP {p}{name} {help}");
        let _ = writeln!(self.text, "# TYPE {p}{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.text, "{p}{name}{labels} {value}");
        }
    }

    /// A family of one unlabelled sample.
    pub(crate) fn one(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help, &[(String::new(), value)]);
    }

    /// A family with one sample per `(value of label key, count)`.
    pub(crate) fn labelled<'a>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        key: &str,
        counts: impl Iterator<Item = (&'a str, u64)>,
    ) {
        let samples: Vec<(String, u64)> = counts
            .map(|(v, n)| (format!("{{{key}=\"{}\"}}", label(v)), n))
            .collect();
        self.family(name, kind, help, &samples);
    }

    /// A counter by `reason`.
    pub(crate) fn reasons<'a>(
        &mut self,
        name: &str,
        help: &str,
        counts: impl Iterator<Item = (&'a str, u64)>,
    ) {
        self.labelled(name, "counter", help, "reason", counts);
    }

    pub(crate) fn finish(self) -> String {
        self.text
    }
}

/// A label value with `\`, `"` and newlines escaped as the text format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

enum Phase {
    Reading,
    /// A request that needs the data path's figures: answered after the turn.
    Pending {
        route: Route,
        head: bool,
    },
    Writing {
        out: Vec<u8>,
        at: usize,
    },
    /// The answer is out and our side shut: reading what the client still sends until it
    /// closes, so our close does not reset the connection under an unread answer.
    Draining {
        drained: usize,
    },
}

struct Client {
    sock: TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
    phase: Phase,
    interest: Interest,
}

/// The metrics endpoint as a source of the loop. Its listener has `base`; client `i` has
/// `base + 1 + i`.
pub struct Server {
    listener: TcpListener,
    base: Token,
    clients: Vec<Option<Client>>,
    /// The last accept pass stopped at [`ACCEPTS_PER_TURN`]: more may be waiting, and
    /// edge-triggered readiness will not say so again.
    backlog: bool,
}

impl Server {
    pub fn new(addr: &str, registry: &Registry, base: Token) -> Result<Server, String> {
        let std_listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("--metrics-address {addr}: {e}"))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| format!("--metrics-address {addr}: {e}"))?;
        let shown = std_listener
            .local_addr()
            .map_or_else(|_| addr.to_string(), |a| a.to_string());
        let mut listener = TcpListener::from_std(std_listener);
        registry
            .register(&mut listener, base, Interest::READABLE)
            .map_err(|e| format!("register metrics listener: {e}"))?;
        info!("serving /metrics, /healthz and /readyz on http://{shown}");
        Ok(Server {
            listener,
            base,
            clients: (0..MAX_CLIENTS).map(|_| None).collect(),
            backlog: false,
        })
    }

    /// Whether a request waits for [`Server::answer_pending`].
    pub fn has_pending(&self) -> bool {
        self.clients
            .iter()
            .flatten()
            .any(|c| matches!(c.phase, Phase::Pending { .. }))
    }

    /// Answers every request that waits for the data path's figures.
    pub fn answer_pending(&mut self, snap: &impl Answers, registry: &Registry) {
        let mut metrics = None;
        for slot in 0..self.clients.len() {
            let Some(c) = &mut self.clients[slot] else {
                continue;
            };
            let Phase::Pending { route, head } = c.phase else {
                continue;
            };
            let out = match route {
                Route::Metrics => {
                    let body = metrics.get_or_insert_with(|| snap.render());
                    http_server::response(
                        Status::Ok,
                        "text/plain; version=0.0.4; charset=utf-8",
                        body.as_bytes(),
                        head,
                    )
                }
                Route::Readyz => match snap.readiness() {
                    Ok(()) => http_server::text(Status::Ok, "ok", head),
                    Err(why) => http_server::text(Status::Unavailable, &why, head),
                },
                Route::Healthz => http_server::text(Status::Ok, "ok", head),
            };
            c.phase = Phase::Writing { out, at: 0 };
            self.progress(slot, registry);
        }
    }

    fn accept(&mut self, registry: &Registry) {
        self.backlog = false;
        for _ in 0..ACCEPTS_PER_TURN {
            let (mut sock, peer) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EMFILE and the like: the next connection's event tries again.
                Err(e) => {
                    debug!("metrics: accept: {e}");
                    return;
                }
            };
            let Some(slot) = self.clients.iter().position(|c| c.is_none()) else {
                debug!("metrics: {peer}: {MAX_CLIENTS} connections open already, closing");
                continue;
            };
            let token = Token(self.base.0 + 1 + slot);
            if registry
                .register(&mut sock, token, Interest::READABLE)
                .is_err()
            {
                continue;
            }
            self.clients[slot] = Some(Client {
                sock,
                buf: Vec::new(),
                deadline: Instant::now() + CLIENT_DEADLINE,
                phase: Phase::Reading,
                interest: Interest::READABLE,
            });
            // Data may have arrived with the connection; its edge is already past.
            self.progress(slot, registry);
        }
        self.backlog = true;
    }

    /// Moves one client as far as its socket allows; closes it when it is done or broken.
    fn progress(&mut self, slot: usize, registry: &Registry) {
        let Some(c) = &mut self.clients[slot] else {
            return;
        };
        let keep = match step(c) {
            Ok(keep) => keep,
            Err(e) => {
                debug!("metrics client: {e}");
                false
            }
        };
        let want = match c.phase {
            Phase::Writing { .. } => Interest::WRITABLE,
            _ => Interest::READABLE,
        };
        let mut keep = keep;
        if keep && want != c.interest {
            let token = Token(self.base.0 + 1 + slot);
            keep = registry.reregister(&mut c.sock, token, want).is_ok();
            c.interest = want;
        }
        if !keep {
            self.close(slot, registry);
        }
    }

    fn close(&mut self, slot: usize, registry: &Registry) {
        if let Some(mut c) = self.clients[slot].take() {
            let _ = registry.deregister(&mut c.sock);
        }
    }
}

/// One client's progress; false when it is finished.
fn step(c: &mut Client) -> io::Result<bool> {
    loop {
        match &mut c.phase {
            Phase::Reading => {
                let mut chunk = [0u8; 2048];
                let eof = match c.sock.read(&mut chunk) {
                    Ok(0) => true,
                    Ok(n) => {
                        c.buf.extend_from_slice(&chunk[..n]);
                        false
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                c.phase = match http_server::decide(&c.buf) {
                    Decision::Partial if eof => return Ok(false),
                    Decision::Partial => continue,
                    Decision::Serve {
                        route: Route::Healthz,
                        head,
                    } => Phase::Writing {
                        out: http_server::text(Status::Ok, "ok", head),
                        at: 0,
                    },
                    Decision::Serve { route, head } => Phase::Pending { route, head },
                    Decision::Refuse(status) => Phase::Writing {
                        out: http_server::text(status, refusal(status), false),
                        at: 0,
                    },
                };
                c.buf = Vec::new();
            }
            // Nothing to do until the loop hands over the figures.
            Phase::Pending { .. } => return Ok(true),
            Phase::Writing { out, at } => {
                if *at == out.len() {
                    let _ = c.sock.shutdown(Shutdown::Write);
                    c.phase = Phase::Draining { drained: 0 };
                    continue;
                }
                match c.sock.write(&out[*at..]) {
                    Ok(0) => return Ok(false),
                    Ok(n) => *at += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Phase::Draining { drained } => {
                let mut sink = [0u8; 4096];
                match c.sock.read(&mut sink) {
                    Ok(0) => return Ok(false),
                    Ok(n) => {
                        *drained += n;
                        if *drained > DRAIN_MAX {
                            return Ok(false);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

fn refusal(status: Status) -> &'static str {
    match status {
        Status::NotFound => "not found: the paths are /metrics, /healthz and /readyz",
        Status::MethodNotAllowed => "method not allowed: only GET and HEAD",
        Status::HeaderTooLarge => "request head too large",
        _ => "bad request",
    }
}

impl Source for Server {
    fn owns(&self, token: Token) -> bool {
        (self.base.0..=self.base.0 + MAX_CLIENTS).contains(&token.0)
    }

    fn on_event(&mut self, token: Token, registry: &Registry, _out: &mut Vec<Effect>) {
        if token == self.base {
            self.accept(registry);
        } else {
            self.progress(token.0 - self.base.0 - 1, registry);
        }
    }

    fn on_time(&mut self, now: Instant, registry: &Registry, _out: &mut Vec<Effect>) {
        if self.backlog {
            self.accept(registry);
        }
        for slot in 0..self.clients.len() {
            if self.clients[slot]
                .as_ref()
                .is_some_and(|c| now >= c.deadline)
            {
                self.close(slot, registry);
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        if self.backlog {
            return Some(Instant::now());
        }
        self.clients.iter().flatten().map(|c| c.deadline).min()
    }
}

/// Checks what both `/metrics` renderers must hold to: every sample follows the HELP and TYPE
/// lines of its own family (by exact name), counters end in `_total`, the text ends a line.
#[cfg(test)]
pub(crate) fn assert_well_formed(text: &str) {
    let mut declared = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            declared = parts.next().unwrap_or("").to_string();
            if parts.next() == Some("counter") {
                assert!(declared.ends_with("_total"), "{line}");
            }
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            assert_eq!(name, declared, "{line} after TYPE {declared}");
        }
    }
    assert!(text.ends_with('\n'));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Snapshot {
        Snapshot {
            target: Some("tailer:24224".into()),
            connected: true,
            ack_timeout: Duration::from_secs(60),
            reconnect_grace: Duration::from_secs(10),
            connection_failures: vec![("refused", 2), ("tls", 0), ("api", 1)],
            ..Snapshot::default()
        }
    }

    #[test]
    fn metrics_readiness_table() {
        type Edit = fn(&mut Snapshot);
        fn down(s: &mut Snapshot, secs: u64) {
            s.connected = false;
            s.down_for = Some(Duration::from_secs(secs));
            s.last_failure = Some("connect to 127.0.0.1:1: refused".into());
        }
        let cases: &[(Edit, Result<(), &str>)] = &[
            (|_| {}, Ok(())),
            (|s| s.ack_wait = Some(Duration::from_secs(5)), Ok(())),
            (
                |s| s.target = None,
                Err("no target yet (the receiver is not known)"),
            ),
            (
                |s| s.connected = false,
                Err("not connected to tailer:24224 yet"),
            ),
            (
                |s| {
                    s.connected = false;
                    s.last_failure = Some("connect to 127.0.0.1:1:\n refused".into());
                },
                Err("not connected to tailer:24224: connect to 127.0.0.1:1: refused"),
            ),
            // A lost connection gets until --backoff-timer to come back.
            (|s| down(s, 0), Ok(())),
            (|s| down(s, 9), Ok(())),
            (
                |s| down(s, 10),
                Err(
                    "not connected to tailer:24224 for 10s, longer than --backoff-timer 10s: \
                     connect to 127.0.0.1:1: refused",
                ),
            ),
            (
                |s| {
                    down(s, 11);
                    s.last_failure = None;
                },
                Err("not connected to tailer:24224 for 11s, longer than --backoff-timer 10s"),
            ),
            // Within the grace, acks that stopped still count.
            (
                |s| {
                    down(s, 2);
                    s.ack_wait = Some(Duration::from_secs(61));
                },
                Err("no ack from tailer:24224 within 60s (--ack-timeout)"),
            ),
            (
                |s| s.ack_wait = Some(Duration::from_secs(60)),
                Err("no ack from tailer:24224 within 60s (--ack-timeout)"),
            ),
            (
                |s| {
                    s.target = None;
                    s.read_problem = Some("cannot open /a/audit.log: Permission denied".into())
                },
                Err("cannot read the audit log: cannot open /a/audit.log: Permission denied"),
            ),
        ];
        for (edit, want) in cases {
            let mut s = healthy();
            edit(&mut s);
            assert_eq!(readiness(&s), want.map_err(str::to_string), "{s:?}");
        }
    }

    #[test]
    fn metrics_render_has_help_type_and_escaped_labels() {
        let mut s = healthy();
        s.target = Some("a\"b\\c".into());
        s.records_acked = 7;
        s.records_sent = 9;
        s.file_lags = vec![("audit-x.log".into(), 5), ("audit.log".into(), 10)];
        let text = render(&s);
        for want in [
            "audit_forwarder_records_acked_total 7\n",
            "audit_forwarder_records_sent_total 9\n",
            "audit_forwarder_target_info{target=\"a\\\"b\\\\c\"} 1\n",
            "audit_forwarder_connected 1\n",
            "audit_forwarder_connection_failures_total{reason=\"refused\"} 2\n",
            "audit_forwarder_connection_failures_total{reason=\"api\"} 1\n",
            "audit_forwarder_lag_bytes{file=\"audit-x.log\"} 5\n",
            "audit_forwarder_lag_bytes{file=\"audit.log\"} 10\n",
            "audit_forwarder_total_lag_bytes 15\n",
            "audit_forwarder_rotations_total 0\n",
            "audit_forwarder_files_unreadable 0\n",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
        assert_well_formed(&text);
    }

    #[test]
    fn metrics_stats_line_carries_the_key_figures() {
        let mut s = healthy();
        s.records_sent = 12;
        s.records_acked = 10;
        s.bytes_read = 4000;
        s.bytes_acked = 3000;
        s.file_lags = vec![("audit-x.log".into(), 5), ("audit.log".into(), 10)];
        s.rotations = 1;
        s.position_write_failures = 4;
        let line = stats_line(&s, 1.5);
        assert_eq!(
            line,
            "stats: records_sent=12 records_acked=10 bytes_read=4000 bytes_acked=3000 \
             lag_bytes=15 chunks_unacked=0 buffered=0 buffered_peak=0 window=0 reconnects=0 \
             connection_failures=3 rotations=1 malformed=0 skipped_long=0 rejected=0 \
             position_write_failures=4 files_unreadable=0 connected=1 cpu_s=1.50 \
             target=tailer:24224"
        );
        s.target = None;
        s.connected = false;
        assert!(stats_line(&s, 0.0).ends_with(" connected=0 cpu_s=0.00 target=none"));
    }
}
