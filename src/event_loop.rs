//! The forwarder's one `mio::Poll`: signals, inotify and the receiver connection are its only
//! event sources; everything else happens on deadlines computed each turn (backoff, ack timeout,
//! position flush, stats). Data flows one way: tail -> transcode -> outbox -> conn, and acks flow
//! back from conn -> outbox -> position file.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::cli::{Compress, ForwardArgs, Proxy};
use crate::config::{self, Config};
use crate::conn::{self, Conn};
use crate::escape;
use crate::lines::Piece;
use crate::offsets::{self, Store};
use crate::outbox::{Builder, Outbox};
use crate::resolve::{self, Resolver};
use crate::sys::{self, Signals};
use crate::tail::{Progress, Tail};
use crate::transcode::{self, Kind};

const SIGNALS: Token = Token(0);
const INOTIFY: Token = Token(1);
const CONN: Token = Token(2);
const CERTS: Token = Token(3);
const PROXY_CERTS: Token = Token(4);
/// The resolver thread's wake-up: its answer is collected by `conn.drive`, run every turn.
const RESOLVER: Token = Token(5);

/// Largest chunk we build; fluent-bit's in_forward buffers whole chunks, so keep them modest.
const CHUNK_TARGET: usize = 512 * 1024;
/// Most bytes in flight on the connection; beyond this the files are the buffer.
const WINDOW_MAX: usize = 8 * 1024 * 1024;
/// Smallest read worth a syscall when memory is tight.
const MIN_READ: usize = 4096;
const READ_MAX: usize = 256 * 1024;
const FLUSH_EVERY: Duration = Duration::from_millis(200);
const DIR_RETRY: Duration = Duration::from_secs(1);

struct Stats {
    malformed: u64,
    rejected: u64,
    skipped_long: u64,
    peak: usize,
    last_malformed_log: Option<Instant>,
    malformed_since_log: u64,
}

pub fn run(args: &ForwardArgs, cfg: Config) -> Result<(), String> {
    let target = args
        .target
        .clone()
        .ok_or("no --target (main refuses discovery)")?;
    let position = match offsets::load(&args.position_file) {
        Ok(p) => p,
        Err(e) => {
            error!("{e}; starting without a position (files are read from their start, so lines may be sent twice)");
            None
        }
    };
    let mut store = Store::new(args.position_file.clone(), position.clone());
    let max_line = usize::try_from(args.max_line_size).unwrap_or(usize::MAX);
    let limit = usize::try_from(args.mem_buf_limit).unwrap_or(usize::MAX);
    let mut tail = Tail::new(
        &args.audit_log_path,
        args.read_from_head,
        max_line,
        args.max_held_bytes,
        position.clone(),
    )
    .map_err(|e| format!("{}: {e}", args.audit_log_path.display()))?;
    let signals = Signals::new().map_err(|e| format!("signalfd: {e}"))?;
    let mut poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
    let registry = poll
        .registry()
        .try_clone()
        .map_err(|e| format!("epoll: {e}"))?;
    registry
        .register(
            &mut SourceFd(&signals.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )
        .map_err(|e| format!("register signalfd: {e}"))?;
    registry
        .register(
            &mut SourceFd(&tail.inotify().as_raw_fd()),
            INOTIFY,
            Interest::READABLE,
        )
        .map_err(|e| format!("register inotify: {e}"))?;

    // Certificate rotation without restart: the next connection uses the new material.
    let mut cert_watch = match args.plaintext {
        true => None,
        false => Some(watch(
            &registry,
            &[&args.tls.ca, &args.tls.cert, &args.tls.key],
            CERTS,
        )?),
    };
    let mut proxy_watch = match &args.proxy {
        Some(Proxy::Mtls { ca, cert, key, .. }) => {
            Some(watch(&registry, &[ca, cert, key], PROXY_CERTS)?)
        }
        _ => None,
    };
    let mut seed = [0u8; 16];
    sys::random_bytes(&mut seed).map_err(|e| format!("getrandom: {e}"))?;
    let mut rng = SplitMix(u64::from_le_bytes(seed[..8].try_into().unwrap_or([1; 8])));
    let waker = mio::Waker::new(&registry, RESOLVER).map_err(|e| format!("epoll: {e}"))?;
    let resolver = Resolver::new(std::sync::Arc::new(resolve::system_lookup), waker);
    let mut conn = Conn::new(
        conn::Settings {
            target: target.clone(),
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
    let window = WINDOW_MAX.min(limit / 2);
    let chunk_target = CHUNK_TARGET.min(window / 4).max(MIN_READ * 4);
    let mut builder = Builder::new(&args.tag, chunk_target);
    let gzip = matches!(args.compress, Compress::Gzip);
    let mut outbox = Outbox::new(position, &args.tag, chunk_target);
    let rejected_path = rejected_file(&args.position_file);
    let mut stats = Stats {
        malformed: 0,
        rejected: 0,
        skipped_long: 0,
        peak: 0,
        last_malformed_log: None,
        malformed_since_log: 0,
    };

    info!(
        "forwarding {} to {} (position file {}, window {} KiB)",
        args.audit_log_path.display(),
        target,
        args.position_file.display(),
        window / 1024
    );
    let started = Instant::now();
    let mut next_stats = started + args.stats_interval;
    let mut next_flush = started + FLUSH_EVERY;
    let mut next_dir_retry = started + DIR_RETRY;
    let mut draining: Option<Instant> = None;
    let mut events = Events::with_capacity(64);
    // The last read pass stopped because the window or the memory limit was full, not because
    // the files had nothing more: acks that free room are then work to do at once.
    let mut read_blocked = false;

    loop {
        let now = Instant::now();
        // Wake only for what is pending: an idle forwarder sleeps until the stats line.
        let flush = store.is_behind(outbox.committed()).then_some(next_flush);
        let mut wake = [Some(next_stats), flush, conn.deadline(&outbox), draining]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_secs(1));
        if tail.needs_tick() {
            wake = wake.min(next_dir_retry);
        }
        // Never sleep with work pending: room freed by acks means reading on now, not at the
        // next timer (which left the window empty for up to a flush interval per window).
        let pending = draining.is_none()
            && read_blocked
            && read_room(&tail, &builder, &outbox, window, limit) >= MIN_READ;
        let timeout = if pending {
            Duration::ZERO
        } else {
            wake.saturating_duration_since(now)
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(format!("epoll: {e}"));
            }
        }
        for ev in events.iter() {
            match ev.token() {
                SIGNALS => {
                    let got = signals.drain().map_err(|e| format!("signalfd: {e}"))?;
                    if !got.is_empty() && draining.is_none() {
                        info!(
                            "signal {}: stopping; waiting up to {:?} for {} unacked chunks",
                            got[0],
                            args.shutdown_timeout,
                            outbox.unacked()
                        );
                        draining = Some(Instant::now() + args.shutdown_timeout);
                    }
                }
                CERTS => {
                    if let Some(w) = cert_watch.as_mut() {
                        if w.changed() {
                            if let Some(t) = config::reload_tls(&args.tls) {
                                conn.set_tls(t);
                            }
                        }
                    }
                }
                PROXY_CERTS => {
                    if let (Some(w), Some(p)) = (proxy_watch.as_mut(), args.proxy.as_ref()) {
                        if w.changed() {
                            if let Some(t) = config::reload_proxy_tls(p) {
                                conn.set_proxy_tls(t);
                            }
                        }
                    }
                }
                INOTIFY => {
                    if let Err(e) = tail.on_inotify() {
                        warn!("inotify: {e}");
                    }
                }
                _ => {}
            }
        }
        let now = Instant::now();
        if tail.needs_tick() && now >= next_dir_retry {
            tail.tick();
            next_dir_retry = now + DIR_RETRY;
        }

        if draining.is_none() {
            let max_line_u64 = args.max_line_size;
            let et = transcode::now_event_time();
            loop {
                stats.peak = stats.peak.max(buffered(&tail, &builder, &outbox));
                if outbox.bytes() + builder.allocated() >= window {
                    read_blocked = true;
                    break;
                }
                if builder.records > 0 && builder.room() < MIN_READ * 3 {
                    seal(&mut outbox, &mut builder, &args.tag, gzip, &mut rng);
                    continue;
                }
                let max = read_room(&tail, &builder, &outbox, window, limit);
                if max < MIN_READ {
                    read_blocked = true;
                    break;
                }
                let progress = tail
                    .read(max, |piece, _id, name, end| match piece {
                        Piece::Line(line) => {
                            builder.records += 1;
                            builder.source_bytes += line.len() as u64 + 1;
                            if transcode::append_entry(line, et, builder.entries()) == Kind::Fallback {
                                stats.malformed += 1;
                                note_malformed(&mut stats, name, line);
                            }
                            builder.mark(name, end.saturating_sub(line.len() as u64 + 1), end);
                        }
                        Piece::TooLong { start, len } => {
                            stats.skipped_long += 1;
                            warn!(
                                "{name}: skipped a line of {len} bytes at offset {start}: longer than --max-line-size {max_line_u64}"
                            );
                        }
                    })
                    .map_err(|e| format!("reading {}: {e}", args.audit_log_path.display()))?;
                builder.end = tail.position();
                match progress {
                    Progress::Read => {
                        if builder.entries_len() >= outbox.target() {
                            seal(&mut outbox, &mut builder, &args.tag, gzip, &mut rng);
                        }
                    }
                    Progress::Switched => {
                        seal(&mut outbox, &mut builder, &args.tag, gzip, &mut rng)
                    }
                    Progress::Idle => {
                        read_blocked = false;
                        break;
                    }
                }
            }
            // Nagle's rule: a partial chunk goes out when the connection has nothing else to
            // write (low latency when idle); while it connects or is busy, the chunk keeps
            // filling towards its target. A builder with only a position costs nothing to queue.
            if !builder.is_empty() && (builder.records == 0 || conn.idle(&outbox)) {
                seal(&mut outbox, &mut builder, &args.tag, gzip, &mut rng);
            }
        }

        conn.drive(&registry, &mut outbox, Instant::now());
        // The connection just became ready, or wrote the last of what was queued: the partial
        // chunk goes now rather than after the next event. On shutdown it goes in any case, to
        // be acked within the shutdown timeout if the receiver allows.
        if builder.records > 0 && (draining.is_some() || conn.idle(&outbox)) {
            seal(&mut outbox, &mut builder, &args.tag, gzip, &mut rng);
            conn.drive(&registry, &mut outbox, Instant::now());
        }
        for r in outbox.take_rejected() {
            stats.rejected += 1;
            set_aside(&rejected_path, &r);
        }
        stats.peak = stats.peak.max(buffered(&tail, &builder, &outbox));

        let now = Instant::now();
        if now >= next_flush && store.is_behind(outbox.committed()) {
            save_position(&mut store, &outbox);
            next_flush = now + FLUSH_EVERY;
        }
        if now >= next_stats {
            log_stats(&outbox, &conn, &tail, &builder, &stats);
            next_stats = now + args.stats_interval;
        }
        if let Some(deadline) = draining {
            let left = outbox.unacked();
            if left == 0 || now >= deadline {
                if left > 0 {
                    warn!(
                        "shutdown timeout: {left} chunks not acked; they will be sent again after restart (position stays at {})",
                        outbox.committed().map(|p| p.to_string()).unwrap_or_else(|| "the start".into())
                    );
                }
                conn.close(&registry);
                save_position(&mut store, &outbox);
                log_stats(&outbox, &conn, &tail, &builder, &stats);
                info!("stopped");
                return Ok(());
            }
        }
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
fn set_aside(path: &std::path::Path, r: &crate::outbox::Rejected) {
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

/// Watches the directories of certificate files, registered with the loop under `token`.
fn watch(
    registry: &mio::Registry,
    files: &[&std::path::Path],
    token: Token,
) -> Result<config::Watch, String> {
    let w = config::Watch::new(files).map_err(|e| format!("inotify for certificates: {e}"))?;
    registry
        .register(
            &mut SourceFd(&w.inotify().as_raw_fd()),
            token,
            Interest::READABLE,
        )
        .map_err(|e| format!("register inotify: {e}"))?;
    Ok(w)
}

/// How many bytes the next read may take: none while the window of chunks in flight is full,
/// and at most a quarter of what `--mem-buf-limit` leaves, since a read can grow the partial line
/// by as much as it reads and the chunk by about three times that (short JSON numbers become
/// 9-byte floats).
fn read_room(
    tail: &Tail,
    builder: &Builder,
    outbox: &Outbox,
    window: usize,
    limit: usize,
) -> usize {
    if outbox.bytes() + builder.allocated() >= window {
        return 0;
    }
    let room = limit.saturating_sub(buffered(tail, builder, outbox));
    READ_MAX.min(room / 4).min(builder.room() / 3)
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

fn save_position(store: &mut Store, outbox: &Outbox) {
    if let Some(p) = outbox.committed() {
        if let Err(e) = store.save(p) {
            error!("writing position file {}: {e}", store.path().display());
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

fn log_stats(outbox: &Outbox, conn: &Conn, tail: &Tail, builder: &Builder, stats: &Stats) {
    let now_buffered = buffered(tail, builder, outbox);
    info!(
        "stats: records_acked={} bytes_acked={} lag_bytes={} reconnects={} buffered={} buffered_peak={} malformed={} skipped_long={} rejected={} cpu_s={:.2}",
        outbox.acked_total.records,
        outbox.acked_total.source_bytes,
        tail.lag_bytes(),
        conn.reconnects,
        now_buffered,
        stats.peak,
        stats.malformed,
        stats.skipped_long,
        stats.rejected,
        sys::cpu_seconds()
    );
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
