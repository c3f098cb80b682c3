//! The data path: tail -> transcode -> outbox -> conn, and acks back from conn -> outbox ->
//! position file. It owns the inotify of the followed files and the receiver connection; its
//! timers are the backoff, ack timeout, position flush, stats line and shutdown wait.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::{Effect, CONN, INOTIFY};
use crate::cli::{Compress, ForwardArgs};
use crate::config::Config;
use crate::escape;
use crate::follow::lines::Piece;
use crate::follow::offsets::{self, Position, Store};
use crate::follow::saver::{Outcome, Saver};
use crate::follow::tail::{Progress, Tail};
use crate::forward::outbox::{Builder, Outbox};
use crate::forward::transcode::{self, Kind};
use crate::metrics::{self, Snapshot};
use crate::net::conn::{self, Conn, FailClass};
use crate::net::resolve::Resolver;
use crate::repeat::{self, RepeatLog, Say};
use crate::sys;

/// Largest chunk we build; fluent-bit's in_forward buffers whole chunks, so keep them modest.
const CHUNK_TARGET: usize = 512 * 1024;
/// Most bytes in flight on the connection; beyond this the files are the buffer. Throughput is
/// at most the window per ack round trip, so the window must cover bandwidth x delay: 8 MiB
/// held a 50 ms-each-way link to about 75 MB/s where the same veth without delay carried 160
/// (tests/netfaults.rs, `just netbench`); 32 MiB covers about 300 MB/s at a 100 ms round trip.
/// `forward::pace` grows the window up to this only when the acks show it is needed. Memory
/// stays bounded by --mem-buf-limit, of which the window takes at most half.
const WINDOW_MAX: usize = 32 * 1024 * 1024;
/// The window before the acks have shown a long round trip, and the least it shrinks to: a
/// receiver nearby (loopback, the same cluster) runs at full speed with it, and the forwarder's
/// memory stays near 10 MiB there (`forward::pace` grows it towards `WINDOW_MAX` as needed).
const WINDOW_FLOOR: usize = 8 * 1024 * 1024;
/// Smallest read worth a syscall when memory is tight.
const MIN_READ: usize = 4096;
const READ_MAX: usize = 256 * 1024;
const FLUSH_EVERY: Duration = Duration::from_millis(200);
const DIR_RETRY: Duration = Duration::from_secs(1);
/// How long a stop waits for the position file's last writes.
const POSITION_WAIT: Duration = Duration::from_secs(5);
/// A save in flight this long is said at WARN.
const POSITION_STUCK: Duration = Duration::from_secs(10);

struct Stats {
    lines_read: u64,
    bytes_read: u64,
    position_writes: u64,
    position_write_failures: u64,
    /// `acked_total.records` when it last grew, and when that was (wall clock, for the metric).
    acked_seen: u64,
    last_ack: Option<std::time::SystemTime>,
    malformed: u64,
    rejected: u64,
    skipped_long: u64,
    peak: usize,
    last_malformed_log: Option<Instant>,
    malformed_since_log: u64,
    /// Requests to the Kubernetes API that failed (`Effect::ApiFailed`).
    api_failures: u64,
    /// Since when chunks have waited with no ack arriving; `None` with nothing unacked.
    ack_wait_since: Option<Instant>,
}

/// The data path and everything it owns: the followed files, the chunk being built, the chunks
/// in flight, the connection that carries them, and the position file their acks advance.
pub struct Pipeline {
    tail: Tail,
    builder: Builder,
    outbox: Outbox,
    conn: Conn,
    /// Writes the position file on its own thread (an fsync must not stall the loop).
    saver: Saver,
    stats: Stats,
    rng: SplitMix,
    tag: String,
    gzip: bool,
    max_line: u64,
    limit: usize,
    log_path: std::path::PathBuf,
    rejected_path: std::path::PathBuf,
    shutdown_timeout: Duration,
    stats_interval: Duration,
    vhost: String,
    next_stats: Instant,
    next_flush: Instant,
    next_dir_retry: Instant,
    /// Writing the position file fails: since when and how often, for its log.
    position_failing: RepeatLog,
    /// A save that has not finished for `POSITION_STUCK` was said.
    position_stuck_said: bool,
    /// Set by a stop: reading has ended and this is when waiting for acks ends too.
    draining: Option<Instant>,
    /// The last read pass stopped because the window or the memory limit was full, not because
    /// the files had nothing more: acks that free room are then work to do at once.
    read_blocked: bool,
    /// Where a fresh start began reading, taken before its first byte: see
    /// [`Pipeline::save_start`].
    start: Start,
}

/// A fresh start's position, written before its first byte is read ([`Pipeline::save_start`]).
enum Start {
    /// None taken (yet): the position file held one, or there was no file to start in.
    Untaken,
    /// Handed to the writer thread and not written yet: reading waits.
    Saving(Position),
    /// Written, or its write failed and it is retried with the flushes ([`unsaved`]).
    Taken(Position),
}

impl Start {
    fn position(&self) -> Option<&Position> {
        match self {
            Start::Untaken => None,
            Start::Saving(p) | Start::Taken(p) => Some(p),
        }
    }

    /// The write in flight ended, well or not.
    fn ended(&mut self) {
        *self = match std::mem::replace(self, Start::Untaken) {
            Start::Saving(p) => Start::Taken(p),
            other => other,
        };
    }
}

impl Pipeline {
    pub fn new(
        args: &ForwardArgs,
        cfg: Config,
        registry: &Registry,
        resolver: Resolver,
        waker: Arc<mio::Waker>,
    ) -> Result<Pipeline, String> {
        // An unreadable position file may name any file of the rotation set: all are read
        // again (a fresh start would begin at audit.log, or its end, and skip the others). It
        // counts as no position for the store, so the start is written over it at once.
        let (position, read_from) = match offsets::load(&args.position_file) {
            Ok(p) => (p.clone(), p),
            Err(e) => {
                error!(
                    "{e}; reading every file of the rotation set again from its start, so lines \
                     may be sent twice"
                );
                (None, Some(Position::unknown()))
            }
        };
        // The thread wakes the loop through the waker it shares with the resolver threads; the
        // outcome is collected every turn whatever woke it.
        let saver = Saver::start(
            Store::new(args.position_file.clone(), position.clone()),
            move || {
                let _ = waker.wake();
            },
        )
        .map_err(|e| format!("starting the position file's writer thread: {e}"))?;
        let max_line = usize::try_from(args.max_line_size).unwrap_or(usize::MAX);
        let limit = usize::try_from(args.mem_buf_limit).unwrap_or(usize::MAX);
        let tail = Tail::new(
            &args.audit_log_path,
            args.read_from_head,
            max_line,
            args.max_held_bytes,
            read_from,
        )
        .map_err(|e| format!("{}: {e}", args.audit_log_path.display()))?;
        registry
            .register(
                &mut SourceFd(&tail.inotify().as_raw_fd()),
                INOTIFY,
                Interest::READABLE,
            )
            .map_err(|e| format!("register inotify: {e}"))?;
        let mut seed = [0u8; 16];
        sys::random_bytes(&mut seed).map_err(|e| format!("getrandom: {e}"))?;
        let mut rng = SplitMix(u64::from_le_bytes(seed[..8].try_into().unwrap_or([1; 8])));
        let conn = Conn::new(
            conn::Settings {
                // With the Kubernetes API, the client announces the receiver once it (and its TLS
                // material) is known.
                target: match args.kube {
                    Some(_) => None,
                    None => args.target.clone(),
                },
                route: cfg.route,
                backoff_max: args.backoff_max,
                ack_timeout: args.ack_timeout,
                connect_timeout: args.connect_timeout,
                tls: cfg.tls.map(|client| conn::TlsSetup {
                    client,
                    vhost: args.tls.vhost.clone(),
                }),
                handshake: cfg.handshake,
            },
            CONN,
            rng.next(),
            resolver,
        );
        // Memory: the read buffer, a partial line and one chunk being built are fixed costs; the
        // window of chunks in flight gets what is left, and reading stops when it is full.
        let (window, chunk_target) = window_for(limit);
        info!(
            "forwarding {} to {} (position file {}, window {}-{} KiB as the round trip needs)",
            args.audit_log_path.display(),
            match (&args.target, &args.kube) {
                (Some(t), _) => t.to_string(),
                (None, _) => "the tailer the Kubernetes Service names".into(),
            },
            args.position_file.display(),
            WINDOW_FLOOR.min(window) / 1024,
            window / 1024
        );
        let started = Instant::now();
        let mut outbox = Outbox::new(position, &args.tag, chunk_target);
        outbox.keep_spares(window / chunk_target);
        outbox.pace_window(WINDOW_FLOOR, window);
        Ok(Pipeline {
            tail,
            builder: Builder::new(&args.tag, chunk_target),
            outbox,
            conn,
            saver,
            stats: Stats {
                lines_read: 0,
                bytes_read: 0,
                position_writes: 0,
                position_write_failures: 0,
                acked_seen: 0,
                last_ack: None,
                malformed: 0,
                rejected: 0,
                skipped_long: 0,
                peak: 0,
                last_malformed_log: None,
                malformed_since_log: 0,
                api_failures: 0,
                ack_wait_since: None,
            },
            rng,
            tag: args.tag.clone(),
            gzip: matches!(args.compress, Compress::Gzip),
            max_line: args.max_line_size,
            limit,
            log_path: args.audit_log_path.clone(),
            rejected_path: rejected_file(&args.position_file),
            shutdown_timeout: args.shutdown_timeout,
            stats_interval: args.stats_interval,
            vhost: args.tls.vhost.clone(),
            next_stats: started + args.stats_interval,
            next_flush: started + FLUSH_EVERY,
            next_dir_retry: started + DIR_RETRY,
            position_failing: RepeatLog::default(),
            position_stuck_said: false,
            draining: None,
            read_blocked: false,
            start: Start::Untaken,
        })
    }

    /// Events of its own tokens. The connection and the resolver need no handling here: the
    /// connection is driven every turn and collects the resolver's answers itself.
    pub fn on_event(&mut self, token: Token) {
        if token == INOTIFY {
            if let Err(e) = self.tail.on_inotify() {
                warn!("inotify: {e}");
            }
        }
    }

    pub fn apply(&mut self, effect: Effect, registry: &Registry) {
        match effect {
            Effect::Stop(why) => {
                if self.draining.is_none() {
                    info!(
                        "signal {why}: stopping; waiting up to {:?} for {} unacked chunks",
                        self.shutdown_timeout,
                        self.outbox.unacked()
                    );
                    self.draining = Some(Instant::now() + self.shutdown_timeout);
                }
            }
            Effect::ReceiverTls(client) => self.conn.set_tls(conn::TlsSetup {
                client,
                vhost: self.vhost.clone(),
            }),
            Effect::ProxyTls(client) => self.conn.set_proxy_tls(client),
            Effect::Receiver(target) => self.conn.set_target(target, registry),
            Effect::ApiFailed => self.stats.api_failures += 1,
        }
    }

    /// A fresh start (no position file yet) writes where it starts before it reads a byte.
    /// Otherwise a forwarder killed before its first ack was saved (the receiver was down, or
    /// the first fsync was slow) restarts as a fresh start too: at `audit.log`, skipping the file
    /// it had begun, which a rotation meanwhile made a backup. With the start saved, the restart
    /// finds that file by its content (identity rule 4) and reads it again from there. The
    /// start is taken once; a failed write is logged like any position write and retried at
    /// every flush ([`Pipeline::unsaved`]) until it or an acked position is in the file.
    ///
    /// Returns whether reading may go on. While the start's save is in flight it may not, but
    /// the loop is not held for it: a disk that hangs then still leaves signals, the stuck-save
    /// warning and a bounded stop working (the writer thread wakes the loop when it is done).
    fn save_start(&mut self) -> bool {
        if matches!(self.start, Start::Untaken) && self.saver.is_empty() {
            let Some(p) = self.tail.position() else {
                return true;
            };
            self.flush_position(Some(&p));
            self.start = if self.saver.busy() {
                Start::Saving(p)
            } else {
                Start::Taken(p)
            };
        }
        if let Start::Saving(_) = self.start {
            // Collected here, not only later in the turn: the thread's wake-up that ends the
            // wait may be the last event for a while.
            self.collect_position_write();
            if self.saver.busy() {
                return false;
            }
            self.start.ended();
        }
        true
    }

    /// See [`unsaved`].
    fn unsaved(&self) -> Option<&Position> {
        unsaved(
            self.saver.saved(),
            self.outbox.committed(),
            self.start.position(),
        )
    }

    /// Hands `p` (or else [`Pipeline::unsaved`], if any) to the position file's writer, unless
    /// it is still writing the last one; [`Pipeline::collect_position_write`] takes the outcome.
    fn flush_position(&mut self, p: Option<&Position>) {
        if let Some(p) = p.or(self.unsaved()).cloned() {
            if self.saver.offer(&p) {
                self.stats.position_writes += 1;
            }
        }
    }

    /// Counts and logs a save that finished since the last turn.
    fn collect_position_write(&mut self) {
        if let Some(done) = self.saver.collect() {
            note_position_write(
                done,
                &self.saver,
                &mut self.position_failing,
                &mut self.stats,
            );
        }
    }

    /// Waits for the save in flight, if any, at most until `until`, and counts and logs it.
    /// Returns false if it is still being written.
    fn finish_position_write(&mut self, until: Option<Instant>) -> bool {
        if let Some(done) = self.saver.wait(until) {
            note_position_write(
                done,
                &self.saver,
                &mut self.position_failing,
                &mut self.stats,
            );
        }
        !self.saver.busy()
    }

    /// When the loop must wake for the data path: now, if acks freed room while reading was
    /// blocked (sleeping then would leave the window empty until the next timer); otherwise
    /// only for what is pending, so an idle forwarder sleeps until the stats line.
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        if self.draining.is_none()
            && self.read_blocked
            && read_room(&self.tail, &self.builder, &self.outbox, self.limit) >= MIN_READ
        {
            return Some(now);
        }
        // While a save is written, its end wakes the loop; the next one waits for that.
        let flush = (self.unsaved().is_some() && !self.saver.busy()).then_some(self.next_flush);
        let retry = self.tail.needs_tick().then_some(self.next_dir_retry);
        let stuck = match self.saver.busy_since() {
            Some(t) if !self.position_stuck_said => Some(t + POSITION_STUCK),
            _ => None,
        };
        [
            stuck,
            Some(self.next_stats),
            flush,
            self.conn.deadline(&self.outbox),
            self.draining,
            retry,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// One turn of the data path: read what the files have into chunks, drive the connection,
    /// commit acked positions, log stats. Returns true once a stop has finished.
    pub fn turn(&mut self, registry: &Registry) -> Result<bool, String> {
        let now = Instant::now();
        if self.tail.needs_tick() && now >= self.next_dir_retry {
            self.tail.tick();
            self.next_dir_retry = now + DIR_RETRY;
        }
        // Without a receiver there is nothing to fill the window for; the files keep the lines.
        if self.draining.is_none() && self.conn.has_target() {
            self.read()?;
        }
        let (outbox, builder) = (&mut self.outbox, &mut self.builder);
        self.conn.drive(registry, outbox, Instant::now());
        // The connection just became ready, or wrote the last of what was queued: the partial
        // chunk goes now rather than after the next event. On shutdown it goes in any case, to
        // be acked within the shutdown timeout if the receiver allows.
        if builder.records > 0 && (self.draining.is_some() || self.conn.idle(outbox)) {
            seal(outbox, builder, &self.tag, self.gzip, &mut self.rng);
            self.conn.drive(registry, outbox, Instant::now());
        }
        for r in self.outbox.take_rejected() {
            self.stats.rejected += 1;
            set_aside(&self.rejected_path, &r);
        }
        self.note_peak();
        let acked = self.outbox.acked_total.records != self.stats.acked_seen;
        if acked {
            self.stats.acked_seen = self.outbox.acked_total.records;
            self.stats.last_ack = Some(std::time::SystemTime::now());
            self.tail.forget_acked(self.outbox.committed());
        }
        // The ack clock of `/readyz`: it runs while chunks wait and restarts at every ack, so a
        // receiver that takes chunks but never acks shows, also across reconnects.
        self.stats.ack_wait_since = match self.outbox.unacked() {
            0 => None,
            _ if acked => Some(Instant::now()),
            _ => self.stats.ack_wait_since.or_else(|| Some(Instant::now())),
        };

        self.collect_position_write();
        let now = Instant::now();
        match self.saver.busy_since() {
            Some(t) if now.duration_since(t) >= POSITION_STUCK && !self.position_stuck_said => {
                let (what, meanwhile) = match self.start {
                    Start::Saving(_) => (
                        "writing where this fresh start begins",
                        "reading waits for it, so that a restart finds the file it began",
                    ),
                    _ => (
                        "a write",
                        "delivery goes on, but the file stays at the last position written, so \
                         after a crash lines since then are sent again",
                    ),
                };
                warn!(
                    "position file {}: {what} has not finished for {:?} (the disk hangs?); \
                     {meanwhile}",
                    self.saver.path().display(),
                    now.duration_since(t)
                );
                self.position_stuck_said = true;
            }
            None if self.position_stuck_said => {
                info!(
                    "position file {}: the write that hung finished",
                    self.saver.path().display()
                );
                self.position_stuck_said = false;
            }
            _ => {}
        }
        if now >= self.next_flush && self.unsaved().is_some() && !self.saver.busy() {
            self.flush_position(None);
            self.next_flush = now + FLUSH_EVERY;
        }
        if now >= self.next_stats {
            self.log_stats();
            self.next_stats = now + self.stats_interval;
        }
        if let Some(deadline) = self.draining {
            let left = self.outbox.unacked();
            if left == 0 || now >= deadline {
                if left > 0 {
                    warn!(
                        "shutdown timeout: {left} chunks not acked; they will be sent again after restart (position stays at {})",
                        self.outbox.committed().map(|p| p.to_string()).unwrap_or_else(|| "the start".into())
                    );
                }
                self.conn.close(registry);
                // The last acks go into the file before the process exits: after the save in
                // flight (which may be older), one more with the newest position. A disk that
                // hangs is waited for a few seconds at most beyond the shutdown timeout.
                let until = now + POSITION_WAIT;
                let mut done = self.finish_position_write(Some(until));
                // Until the newest is written, or the wait ends with a save still in flight.
                while done && self.unsaved().is_some() && Instant::now() < until {
                    self.flush_position(None);
                    done = self.finish_position_write(Some(until));
                }
                if !done {
                    error!(
                        "position file {}: a write did not finish within {POSITION_WAIT:?} of the \
                         stop; stopping without it, so lines since the last saved position are \
                         sent again after a restart",
                        self.saver.path().display()
                    );
                }
                self.log_stats();
                info!("stopped");
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads until the files have nothing more or the window or memory limit is full, sealing
    /// chunks as they reach their target size.
    fn read(&mut self) -> Result<(), String> {
        if !self.save_start() {
            return Ok(());
        }
        let max_line = self.max_line;
        let et = transcode::now_event_time();
        let (limit, gzip) = (self.limit, self.gzip);
        let Pipeline {
            tail,
            builder,
            outbox,
            stats,
            rng,
            tag,
            conn,
            read_blocked,
            log_path,
            ..
        } = self;
        loop {
            stats.peak = stats.peak.max(buffered(tail, builder, outbox));
            if outbox.bytes() + builder.allocated() >= outbox.window() {
                *read_blocked = true;
                break;
            }
            // A nearly full chunk is sealed rather than topped up with ever smaller reads.
            if builder.records > 0 && builder.room() < (outbox.target() / 16).max(MIN_READ * 3) {
                seal(outbox, builder, tag, gzip, rng);
                continue;
            }
            let mut max = read_room(tail, builder, outbox, limit);
            if max < MIN_READ && outbox.spare_bytes() > 0 {
                // Buffers kept for the next chunks are worth less than reading on: with nothing
                // in flight no ack would ever give the limit back.
                outbox.drop_spares();
                max = read_room(tail, builder, outbox, limit);
            }
            if max < MIN_READ {
                *read_blocked = true;
                break;
            }
            let progress = tail
                .read(max, |piece, _id, name, end| match piece {
                    Piece::Line(line) => {
                        builder.records += 1;
                        builder.source_bytes += line.len() as u64 + 1;
                        stats.lines_read += 1;
                        stats.bytes_read += line.len() as u64 + 1;
                        if builder.append_entry(line, et) == Kind::Fallback {
                            stats.malformed += 1;
                            note_malformed(stats, name, line);
                        }
                        builder.mark(name, end.saturating_sub(line.len() as u64 + 1), end);
                    }
                    Piece::TooLong { start, len } => {
                        stats.skipped_long += 1;
                        warn!(
                            "{name}: skipped a line of {len} bytes at offset {start}: longer than --max-line-size {max_line}"
                        );
                    }
                })
                .map_err(|e| format!("reading {}: {e}", log_path.display()))?;
            builder.end = tail.position();
            match progress {
                Progress::Read => {
                    if builder.entries_len() >= outbox.target() {
                        seal(outbox, builder, tag, gzip, rng);
                    }
                }
                Progress::Switched => seal(outbox, builder, tag, gzip, rng),
                Progress::Idle => {
                    *read_blocked = false;
                    outbox.idle();
                    break;
                }
            }
        }
        // Nagle's rule: a partial chunk goes out when the connection has nothing else to
        // write (low latency when idle); while it connects or is busy, the chunk keeps
        // filling towards its target. A builder with only a position costs nothing to queue.
        if !builder.is_empty() && (builder.records == 0 || conn.idle(outbox)) {
            seal(outbox, builder, tag, gzip, rng);
        }
        Ok(())
    }

    /// The figures of the metrics endpoint, at this moment.
    pub fn snapshot(&self) -> Snapshot {
        let failures = &self.conn.failures;
        Snapshot {
            lines_read: self.stats.lines_read,
            bytes_read: self.stats.bytes_read,
            records_sent: self.outbox.sent_total.records,
            records_acked: self.outbox.acked_total.records,
            bytes_acked: self.outbox.acked_total.source_bytes,
            chunks_unacked: self.outbox.unacked() as u64,
            buffered_bytes: buffered(&self.tail, &self.builder, &self.outbox) as u64,
            buffered_peak_bytes: self.stats.peak as u64,
            window_bytes: self.outbox.window() as u64,
            mem_buf_limit: self.limit as u64,
            file_lags: self.tail.file_lags(self.outbox.committed()),
            rotations: self.tail.rotations(),
            files_unreadable: self.tail.files_unreadable(),
            lines_too_long: self.stats.skipped_long,
            lines_not_json: self.stats.malformed,
            records_rejected: self.stats.rejected,
            reconnects: self.conn.reconnects,
            connection_failures: FailClass::ALL
                .iter()
                .zip(failures)
                .map(|(c, n)| (c.name(), *n))
                .chain([("api", self.stats.api_failures)])
                .collect(),
            last_ack: self.stats.last_ack,
            target: self.conn.target(),
            connected: self.conn.is_ready(),
            last_failure: self.conn.last_failure().map(str::to_string),
            down_for: self.conn.down_since().map(|t| t.elapsed()),
            reconnect_grace: self.conn.backoff_max(),
            ack_wait: self.stats.ack_wait_since.map(|t| t.elapsed()),
            ack_timeout: self.conn.ack_timeout(),
            position_writes: self.stats.position_writes,
            position_write_failures: self.stats.position_write_failures,
            read_problem: self.tail.open_problem().map(str::to_string),
        }
    }

    fn note_peak(&mut self) {
        let now = buffered(&self.tail, &self.builder, &self.outbox);
        self.stats.peak = self.stats.peak.max(now);
    }

    fn log_stats(&self) {
        info!(
            "{}",
            metrics::stats_line(&self.snapshot(), sys::cpu_seconds())
        );
    }
}

/// Where records the receiver would not take are kept: beside the position file.
fn rejected_file(position_file: &std::path::Path) -> std::path::PathBuf {
    let name = position_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".pos").unwrap_or(&name);
    position_file.with_file_name(format!("{stem}.rejected"))
}

/// Logs a record the receiver would not take and appends it to the rejected-records file, so
/// nothing is thrown away unseen.
fn set_aside(path: &std::path::Path, r: &crate::forward::outbox::Rejected) {
    use std::io::Write;
    let kept = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(&r.json));
    let kept = match kept {
        Ok(()) => format!("kept in {}", path.display()),
        Err(e) => format!("NOT kept: writing {} failed: {e}", path.display()),
    };
    error!(
        "{} offset {}: the receiver keeps dropping the connection over this record of {} bytes \
         (likely a receiver limit such as fluent-bit's Buffer_Max_Size or fluentd's \
         chunk_size_limit); skipping it so delivery goes on; {kept}",
        r.file, r.start, r.len
    );
}

/// The window of chunks in flight and the chunk target for `--mem-buf-limit` `limit`: memory
/// for the read buffer, a partial line and one chunk being built is a fixed cost, the window
/// gets at most half of the limit, and a window holds at least four chunks so acks keep
/// coming while more is sent.
fn window_for(limit: usize) -> (usize, usize) {
    let window = WINDOW_MAX.min(limit / 2);
    let chunk_target = CHUNK_TARGET.min(window / 4).max(MIN_READ * 4);
    (window, chunk_target)
}

/// How many bytes the next read may take: none while the window of chunks in flight is full,
/// and at most a quarter of what `--mem-buf-limit` leaves, since a read can grow the partial line
/// by as much as it reads and the chunk by about three times that (short JSON numbers become
/// 9-byte floats). Half the chunk's room: audit JSON never grows in msgpack, so a chunk fills in
/// about four reads; input that does grow only makes its buffer grow, which the window counts.
///
/// Three more costs of a read are known before it and, while chunks are in flight, left out of
/// the room: the line held unterminated, which the read that ends it copies into the chunk while
/// it is still held (as far as the chunk's buffer cannot take it); that line's buffer doubling
/// when a read extends it; and the buffer the next chunk starts in when a read seals one and no
/// kept buffer is left. Uncounted, lines near `--max-line-size` took the peak 7% past the least
/// limit (t23). With nothing in flight no ack would give memory back, so they are not waited
/// for: with the least limit and lines near a cap of up to 1 MiB they fit all the same.
fn read_room(tail: &Tail, builder: &Builder, outbox: &Outbox, limit: usize) -> usize {
    if outbox.bytes() + builder.allocated() >= outbox.window() {
        return 0;
    }
    let ahead = if outbox.bytes() == 0 {
        0
    } else {
        let held_copy = tail.unterminated().saturating_sub(builder.room() / 2);
        let next_chunk = if outbox.spare_bytes() == 0 {
            outbox.target()
        } else {
            0
        };
        held_copy + tail.held_doubling() + next_chunk
    };
    let room = limit.saturating_sub(buffered(tail, builder, outbox) + ahead);
    READ_MAX.min(room / 4).min(builder.room() / 2)
}

/// Bytes held in memory, the figure `--mem-buf-limit` bounds: the read buffer and partial line,
/// the chunk being built, and every unacked chunk.
fn buffered(tail: &Tail, builder: &Builder, outbox: &Outbox) -> usize {
    tail.buffered() + builder.allocated() + outbox.bytes() + outbox.spare_bytes()
}

fn seal(outbox: &mut Outbox, builder: &mut Builder, tag: &str, gzip: bool, rng: &mut SplitMix) {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&rng.next().to_le_bytes());
    id[8..].copy_from_slice(&rng.next().to_le_bytes());
    outbox.seal(builder, tag, gzip, id);
}

/// The position the file should hold and does not yet: the acked one, or before the first ack
/// the start of a fresh start whose write failed (reading has moved on since, so the start must
/// be the one taken before it did).
fn unsaved<'a>(
    saved: Option<&Position>,
    committed: Option<&'a Position>,
    start: Option<&'a Position>,
) -> Option<&'a Position> {
    match committed {
        Some(p) => (saved != Some(p)).then_some(p),
        None => start.filter(|_| saved.is_none()),
    }
}

/// Counts and logs a finished save. A failure is said once with what would fix it, then
/// summarised every few minutes with a count, not at every 200 ms flush; the write is retried
/// at every flush, so a fixed permission is picked up at once.
fn note_position_write(done: Outcome, saver: &Saver, failing: &mut RepeatLog, stats: &mut Stats) {
    let now = Instant::now();
    let e = match done.result {
        Ok(()) => {
            if let Some(r) = failing.recovered(now) {
                info!(
                    "position file {} written again after {} failed attempts",
                    saver.path().display(),
                    r.failures
                );
            }
            return;
        }
        Err(e) => e.to_string(),
    };
    stats.position_write_failures += 1;
    match failing.failed(&e, now, std::time::SystemTime::now()) {
        Say::Quiet => log::debug!("writing position file {}: {e}", saver.path().display()),
        Say::Summary { repeats, since } => error!(
            "writing position file {} still fails: {}; after a restart lines since the last \
             saved position are sent again",
            saver.path().display(),
            repeat::summary(repeats, since, &e)
        ),
        Say::First => {
            let dir = saver
                .path()
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let (uid, gid) = sys::ids();
            error!(
                "writing position file {}: {e}; its directory {} has {}, this process runs as uid {uid} gid {gid}: make the directory writable for it (an fsGroup on the volume, or --position-file in a writable directory); retrying at every flush",
                saver.path().display(),
                dir.display(),
                sys::describe_access(dir)
            );
        }
    }
}

/// Malformed lines are logged at a bounded rate: the first at once, then a summary at most
/// every 10 seconds.
fn note_malformed(stats: &mut Stats, name: &str, line: &[u8]) {
    stats.malformed_since_log += 1;
    let now = Instant::now();
    if stats
        .last_malformed_log
        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
    {
        let prefix = escape::for_log(line, 80);
        warn!(
            "{name}: {} line(s) that are not JSON objects sent as {{\"log\": ...}} records; latest starts \"{prefix}\"",
            stats.malformed_since_log
        );
        stats.last_malformed_log = Some(now);
        stats.malformed_since_log = 0;
    }
}

/// Chunk ids only need to be unique; a seeded SplitMix64 avoids a syscall per chunk.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsaved_is_the_ack_or_else_a_start_never_written() {
        let at = |offset| Position {
            id: offsets::FileId::default(),
            offset,
            done: false,
            name: "audit.log".into(),
        };
        let (start, acked) = (at(0), at(500));
        // What the position file holds: nothing yet, or a position.
        let fresh = || None;
        let holding = Some;
        let cases: &[(
            &str,
            Option<&Position>,
            Option<&Position>,
            Option<&Position>,
            Option<&Position>,
        )] = &[
            ("nothing read yet", fresh(), None, None, None),
            // The first write of the start failed: retried until one is written.
            (
                "start not written",
                fresh(),
                None,
                Some(&start),
                Some(&start),
            ),
            ("start written", holding(&start), None, Some(&start), None),
            // An ack supersedes the start, written or not.
            (
                "acked, start unwritten",
                fresh(),
                Some(&acked),
                Some(&start),
                Some(&acked),
            ),
            (
                "acked",
                holding(&start),
                Some(&acked),
                Some(&start),
                Some(&acked),
            ),
            (
                "ack written",
                holding(&acked),
                Some(&acked),
                Some(&start),
                None,
            ),
            // A restart: the loaded position is committed and in the file.
            ("restart", holding(&acked), Some(&acked), None, None),
        ];
        for (what, saved, committed, start, want) in cases {
            assert_eq!(unsaved(*saved, *committed, *start), *want, "{what}");
        }
    }

    #[test]
    fn window_covers_a_long_round_trip_within_half_the_memory_limit() {
        const MIB: usize = 1024 * 1024;
        // (--mem-buf-limit, window, chunk target)
        let cases = [
            // The default 200M: 32 MiB in flight, 64 chunks of 512 KiB; at a 100 ms round
            // trip that is over 300 MB/s.
            (200 * 1_000_000, 32 * MIB, 512 * 1024),
            (64 * MIB, 32 * MIB, 512 * 1024),
            // Below 64 MiB the limit, not the constant, decides.
            (40 * MIB, 20 * MIB, 512 * 1024),
            (4 * MIB, 2 * MIB, 512 * 1024),
            // Smaller windows keep four chunks in flight, never chunks under 16 KiB.
            (2 * MIB, MIB, 256 * 1024),
            (64 * 1024, 32 * 1024, 16 * 1024),
        ];
        for (limit, window, chunk) in cases {
            assert_eq!(window_for(limit), (window, chunk), "limit {limit}");
        }
        // The bandwidth-delay product the default window holds: 100 ms round trip.
        let (window, _) = window_for(200 * 1_000_000);
        assert!(
            window as f64 / 0.1 >= 300e6,
            "window {window} too small for 300 MB/s x 100 ms"
        );
    }
}
