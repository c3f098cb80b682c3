//! Following `audit.log` the way lumberjack rotates it. Owns the inotify watch on the log's
//! directory, the queue of files still to read (oldest first, each held open from the moment we
//! learn of it so a later unlink cannot take its data), the line splitter of the file being read,
//! and the start-up search for the file the position names among `audit.log`, `audit-*.log` and
//! `audit-*.log.gz`. Decisions are made only on a listing that no rotation changed while it was
//! taken ([`Tail::list`]): a file missing from one would be older than what gets queued after
//! it, and never read.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use log::{debug, error, info, warn};

use crate::follow::lines::{Piece, Splitter};
use crate::follow::offsets::{self, FileId, Fingerprint, Position, Start, FINGERPRINT_BYTES};
use crate::repeat::{self, RepeatLog, Say};
use crate::sys::{Inotify, InotifyEvent};

const READ_BUF: usize = 256 * 1024;
/// Fingerprints of finished files, so a backup we already read (or its gzipped copy) is never
/// mistaken for a new file. Far more than any `--audit-log-maxbackup` in practice.
const KNOWN_FPS: usize = 1024;
/// For a permission error: who owns `path` with what mode, who we are, and what fixes it (the
/// usual cause: the apiserver writes its log 0600 and this sidecar runs as another uid).
fn access_hint(path: &Path, err: &io::Error) -> String {
    if err.kind() != io::ErrorKind::PermissionDenied {
        return String::new();
    }
    let (uid, gid) = crate::sys::ids();
    format!(
        " ({}; this process runs as uid {uid} gid {gid}). Fix: run the forwarder as the uid \
         that writes the log, the kube-apiserver's (e.g. securityContext.runAsUser: 65532 in \
         Gardener), or make the volume group-readable for gid {gid} (securityContext.fsGroup)",
        crate::sys::describe_access(path)
    )
}

enum Source {
    Plain(File),
    Gz(Box<MultiGzDecoder<BufReader<File>>>),
}

/// A file we still have to read to its end.
struct Held {
    source: Source,
    id: FileId,
    name: String,
    /// Bytes consumed so far (decompressed bytes for gzip).
    offset: u64,
    /// Read again from its start after a truncation in place: NUL bytes before its first line
    /// are skipped. A writer without `O_APPEND` (lumberjack opens `audit.log` so) goes on at its
    /// old offset, and the file reads as zeros up to there.
    after_truncation: bool,
}

impl Held {
    fn is_gz(&self) -> bool {
        matches!(self.source, Source::Gz(_))
    }

    fn file(&self) -> &File {
        match &self.source {
            Source::Plain(f) => f,
            Source::Gz(d) => d.get_ref().get_ref(),
        }
    }

    /// Bytes on disk that only our descriptor keeps alive: the whole file once it is unlinked.
    fn orphaned_bytes(&self) -> u64 {
        match self.file().metadata() {
            Ok(m) if m.nlink() == 0 => m.len(),
            _ => 0,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let r = match &mut self.source {
                Source::Plain(f) => f.read(buf),
                Source::Gz(d) => d.read(buf),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Takes the fingerprint again once the file holds more than it had when last taken.
    fn refresh_fingerprint(&mut self) {
        if let Source::Plain(f) = &self.source {
            if (self.id.fp.len as usize) < FINGERPRINT_BYTES && self.offset > self.id.fp.len as u64
            {
                if let Ok(fp) = plain_fingerprint(f) {
                    self.id.fp = fp;
                }
            }
        }
    }
}

fn plain_fingerprint(f: &File) -> io::Result<Fingerprint> {
    let mut buf = [0u8; FINGERPRINT_BYTES];
    let n = plain_head(f, &mut buf)?;
    Ok(Fingerprint::of(&buf[..n]))
}

/// Fills `buf` from the file's first bytes; returns how many there were.
fn plain_head(f: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// How a plain file was truncated in place, if it was: it is shorter than our offset, or it no
/// longer starts with the bytes its fingerprint was taken of (truncated and written past our
/// offset again before we read on, which its size cannot show). A file that was only appended
/// to or renamed never changes its first bytes, so this holds for every file we hold, not only
/// `audit.log`: one truncated while we were behind may have been rotated since.
fn truncation(h: &Held) -> Option<String> {
    let Source::Plain(f) = &h.source else {
        return None;
    };
    let len = f.metadata().ok()?.len();
    if len < h.offset {
        return Some(format!(
            "was truncated to {len} bytes, below our offset {}",
            h.offset
        ));
    }
    if h.id.fp.is_empty() {
        return None;
    }
    let mut head = [0u8; FINGERPRINT_BYTES];
    let n = plain_head(f, &mut head[..h.id.fp.len as usize]).ok()?;
    (!offsets::head_matches(&head[..n], &h.id.fp)).then(|| {
        format!(
            "was truncated and written again (its first bytes changed) while we were at offset {}",
            h.offset
        )
    })
}

/// A file read to its end and dropped from the queue, remembered until the acks pass its end.
struct Finished {
    dev: u64,
    ino: u64,
    name: String,
    end: u64,
}

/// Finished files remembered at most; beyond, the oldest is forgotten (its lag unreported).
const FINISHED_MAX: usize = 64;

/// One plain file as the lag sees it.
struct Lagging<'a> {
    dev: u64,
    ino: u64,
    name: &'a str,
    size: u64,
    /// Where reading stands in it.
    read: u64,
}

/// One rotation-set member found in the directory.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    gz: bool,
    /// Backup timestamp from the name, milliseconds since the epoch; `None` for `audit.log`.
    ts_ms: Option<i64>,
    dev: u64,
    ino: u64,
    /// Last status change: for a backup, when lumberjack renamed (or created) it.
    ctime_ns: i128,
}

/// What a call to `Tail::read` achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Bytes were read and split; there may be more.
    Read,
    /// The file being read was finished and the next one is now being read from offset 0.
    Switched,
    /// Nothing more to read until inotify says so.
    Idle,
}

pub struct Tail {
    path: PathBuf,
    dir: PathBuf,
    base: String,
    /// `audit-` and `.log` for `audit.log`: lumberjack names backups `<stem>-<time><ext>`.
    prefix: String,
    ext: String,
    read_from_head: bool,
    /// `--max-held-bytes`: the most disk space deleted files may keep while we hold them.
    max_held: u64,
    inotify: Inotify,
    wd: Option<i32>,
    queue: VecDeque<Held>,
    splitter: Splitter,
    known: VecDeque<Fingerprint>,
    /// The end of the last finished file with a strong fingerprint (identity rule 3).
    anchor: Option<Position>,
    rescan: bool,
    waiting_logged: bool,
    /// A file we need could not be opened (EMFILE, EACCES): listing again on the next tick.
    open_failed: bool,
    /// The failure the ticks retry (its log and count), kept until a tick gets through.
    failing: RepeatLog,
    /// The file or directory that could not be opened or listed, for the recovery line.
    failing_subject: Option<PathBuf>,
    /// Files read to their end and left behind (oldest first) whose lines may not all be acked
    /// yet: their lag is still owed ([`Tail::file_lags`]).
    finished: VecDeque<Finished>,
    /// New files queued behind the ones held (each one a rotation), and in-place truncations.
    rotations: u64,
    started: bool,
    pending_position: Option<Position>,
    buf: Vec<u8>,
    events: Vec<InotifyEvent>,
    /// The names of the last listing, to tell whether the directory changed since.
    listed: Vec<String>,
    /// Tests change the directory at a chosen point of a listing ("names": names read, nothing
    /// stat'ed yet; "listed": the listing is complete), where a real rotation can race it.
    #[cfg(test)]
    race: Option<Box<dyn FnMut(&str)>>,
}

impl Tail {
    pub fn new(
        path: &Path,
        read_from_head: bool,
        max_line: usize,
        max_held: u64,
        position: Option<Position>,
    ) -> io::Result<Tail> {
        let mut t = Tail::unstarted(path, read_from_head, max_line, max_held, position)?;
        t.try_start();
        Ok(t)
    }

    fn unstarted(
        path: &Path,
        read_from_head: bool,
        max_line: usize,
        max_held: u64,
        position: Option<Position>,
    ) -> io::Result<Tail> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "audit log path has no UTF-8 file name",
                )
            })?
            .to_string();
        let (stem, ext) = match base.rfind('.') {
            Some(i) if i > 0 => (base[..i].to_string(), base[i..].to_string()),
            _ => (base.clone(), String::new()),
        };
        Ok(Tail {
            path: path.to_path_buf(),
            dir,
            base,
            prefix: format!("{stem}-"),
            ext,
            read_from_head,
            max_held,
            inotify: Inotify::new()?,
            wd: None,
            queue: VecDeque::new(),
            splitter: Splitter::new(max_line),
            known: VecDeque::new(),
            anchor: None,
            rescan: false,
            waiting_logged: false,
            open_failed: false,
            failing: RepeatLog::default(),
            failing_subject: None,
            finished: VecDeque::new(),
            rotations: 0,
            started: false,
            pending_position: position,
            buf: vec![0; READ_BUF],
            events: Vec::new(),
            listed: Vec::new(),
            #[cfg(test)]
            race: None,
        })
    }

    pub fn inotify(&self) -> &Inotify {
        &self.inotify
    }

    /// Whether the directory is not there yet or a file could not be opened: the caller
    /// retries `tick` on a timer.
    pub fn needs_tick(&self) -> bool {
        self.wd.is_none() || self.open_failed
    }

    /// Why a file we need cannot be opened or listed right now (retried on every tick).
    pub fn open_problem(&self) -> Option<&str> {
        self.failing.text().filter(|_| self.open_failed)
    }

    /// Files (or the directory) we need and cannot open right now: reading stops at the first,
    /// so this is 0 or 1.
    pub fn files_unreadable(&self) -> u64 {
        u64::from(self.open_problem().is_some())
    }

    /// Rotations seen: new files queued behind the held ones, and truncations in place.
    pub fn rotations(&self) -> u64 {
        self.rotations
    }

    /// The position to commit once everything handed out so far is acked: where reading
    /// stands, or the end of the last finished file while the current one cannot be told apart
    /// from others yet (identity rule 3).
    pub fn position(&self) -> Option<Position> {
        self.queue.front().map(|h| {
            let current = Position {
                id: h.id,
                offset: self.splitter.safe_offset(),
                done: false,
                name: h.name.clone(),
            };
            offsets::committable(current, self.anchor.as_ref())
        })
    }

    /// Bytes held for an unterminated line plus the read buffer.
    pub fn buffered(&self) -> usize {
        self.splitter.held() + self.buf.len()
    }

    /// Length of the unterminated line held so far: the read that ends it copies it into the
    /// chunk while it is still held.
    pub fn unterminated(&self) -> usize {
        self.splitter.unterminated()
    }

    /// See [`Splitter::held_doubling`].
    pub fn held_doubling(&self) -> usize {
        self.splitter.held_doubling()
    }

    /// The plain files whose bytes may not all be acked, oldest first: the finished ones we
    /// remember, then the ones we hold (gzip backups are left out: their offsets count
    /// decompressed bytes, not the file's size).
    fn lagging(&self) -> Vec<Lagging<'_>> {
        let finished = self.finished.iter().map(|f| Lagging {
            dev: f.dev,
            ino: f.ino,
            name: &f.name,
            size: f.end,
            read: f.end,
        });
        let held = self.queue.iter().enumerate().filter_map(|(i, h)| {
            let Source::Plain(f) = &h.source else {
                return None;
            };
            let read = if i == 0 {
                self.splitter.safe_offset()
            } else {
                h.offset
            };
            Some(Lagging {
                dev: h.id.dev,
                ino: h.id.ino,
                name: &h.name,
                size: f.metadata().map_or(read, |m| m.len()),
                read,
            })
        });
        finished.chain(held).collect()
    }

    /// Per file, by name and oldest first: its size minus the offset the receiver's acks have
    /// reached in it (`committed`). Files before the committed one are acked whole, files after
    /// it not at all. While the committed position is in none of them (no ack since start-up,
    /// or it names a file no longer held), what has been read counts as on its way.
    pub fn file_lags(&self, committed: Option<&Position>) -> Vec<(String, u64)> {
        let files = self.lagging();
        let at = committed.and_then(|c| {
            files
                .iter()
                .rposition(|l| (l.dev, l.ino) == (c.id.dev, c.id.ino))
                .map(|k| (k, c))
        });
        let mut out: Vec<(String, u64)> = Vec::with_capacity(files.len());
        for (i, l) in files.iter().enumerate() {
            let acked = match at {
                Some((k, c)) if i == k && !c.done => c.offset,
                Some((k, _)) if i <= k => l.size,
                Some(_) => 0,
                None => l.read,
            };
            let lag = l.size.saturating_sub(acked);
            // A name seen twice (a rename the listing missed) is one label: one sample.
            match out.iter_mut().find(|(n, _)| n == l.name) {
                Some((_, sum)) => *sum += lag,
                None => out.push((l.name.to_string(), lag)),
            }
        }
        out
    }

    /// Forgets the finished files the acks have gone past: those before the file `committed`
    /// is in. That file itself stays (with lag 0 once acked to its end) until the acks move
    /// into the next one, so the lag of the files after it still counts from it.
    pub fn forget_acked(&mut self, committed: Option<&Position>) {
        let Some(c) = committed else {
            return;
        };
        let id = (c.id.dev, c.id.ino);
        if let Some(k) = self.finished.iter().rposition(|f| (f.dev, f.ino) == id) {
            self.finished.drain(..k);
        } else if self.queue.iter().any(|h| (h.id.dev, h.id.ino) == id) {
            self.finished.clear();
        }
    }

    /// Called on a timer while [`Tail::needs_tick`].
    pub fn tick(&mut self) {
        if self.wd.is_none() {
            self.try_start();
        } else if self.open_failed {
            self.open_failed = false;
            self.list_again();
        }
        if !self.open_failed && self.wd.is_some() {
            let subject = self.failing_subject.take();
            if let Some(r) = self.failing.recovered(std::time::Instant::now()) {
                info!(
                    "{} is readable again after {} failed attempts over {} s; following it",
                    subject.unwrap_or_default().display(),
                    r.failures,
                    r.lasted.as_secs()
                );
            }
        }
        self.limit_held();
    }

    /// Looks at the directory again: the start-up search if it never succeeded, else for files
    /// that are new since the last look.
    fn list_again(&mut self) {
        if !self.started {
            self.startup();
        } else {
            self.rescan_dir();
        }
        self.settle();
    }

    /// `--max-held-bytes`: gives up the oldest deleted files we hold while the space they keep
    /// on disk exceeds the limit, so a receiver that is down for long cannot fill the node's
    /// disk behind kube-apiserver's `--audit-log-maxbackup`.
    fn limit_held(&mut self) {
        let sizes: Vec<u64> = self.queue.iter().map(Held::orphaned_bytes).collect();
        let mut total: u64 = sizes.iter().sum();
        let mut i = 0;
        let mut removed = 0;
        while total > self.max_held && i < sizes.len() {
            if sizes[i] == 0 {
                i += 1;
                continue;
            }
            let at = i - removed;
            let Some(h) = self.queue.remove(at) else {
                break;
            };
            let done = if at == 0 {
                self.splitter.safe_offset()
            } else {
                h.offset
            };
            let unread = if h.is_gz() {
                Some("the rest of its decompressed content".to_string())
            } else {
                let n = sizes[i].saturating_sub(done);
                (n > 0).then(|| format!("{n} bytes"))
            };
            match unread {
                Some(unread) => error!(
                    "releasing {} (inode {}; deleted by the log rotation, still held for \
                     delivery): the deleted files held keep {total} bytes on disk, more than \
                     --max-held-bytes {}; {unread} of it from offset {done} were never read and \
                     will never be delivered",
                    h.name, h.id.ino, self.max_held
                ),
                None => debug!("releasing {}: read to its end, deleted", h.name),
            }
            total -= sizes[i];
            removed += 1;
            i += 1;
            if at == 0 {
                if let Some(next) = self.queue.front() {
                    self.splitter.reset(next.offset);
                }
            }
        }
    }

    /// A file we need cannot be opened.
    fn open_error(&mut self, name: &str, err: &io::Error) {
        let path = self.dir.join(name);
        let text = format!(
            "cannot open {}: {err}{}",
            path.display(),
            access_hint(&path, err)
        );
        self.retry_later(path, text);
    }

    /// Logs a failure that the next tick retries (opening or listing `subject`): at once at
    /// error level, then a summary with the count of failed attempts every
    /// [`repeat::SUMMARY_EVERY`], and again at once when it changes (another error, another
    /// owner or mode).
    fn retry_later(&mut self, subject: PathBuf, text: String) {
        self.open_failed = true;
        let now = std::time::Instant::now();
        match self
            .failing
            .failed(&text, now, std::time::SystemTime::now())
        {
            Say::Quiet => debug!("{text}"),
            Say::Summary { repeats, since } => error!(
                "{} still cannot be read: {}; retrying every second, a fix is picked up without \
                 a restart",
                subject.display(),
                repeat::summary(repeats, since, &text)
            ),
            Say::First => {
                error!("{text}; retrying every second, a fix is picked up without a restart");
            }
        }
        self.failing_subject = Some(subject);
    }

    fn try_start(&mut self) {
        let mask = libc::IN_CREATE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_DELETE
            | libc::IN_MODIFY
            | libc::IN_CLOSE_WRITE
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF
            | libc::IN_ONLYDIR;
        match self.inotify.add_watch(&self.dir, mask) {
            Ok(wd) => {
                self.wd = Some(wd);
                self.waiting_logged = false;
                if !self.started {
                    self.startup();
                } else {
                    self.rescan = true;
                }
            }
            Err(e) => {
                if !self.waiting_logged {
                    warn!(
                        "waiting for directory {} to appear ({e})",
                        self.dir.display()
                    );
                    self.waiting_logged = true;
                }
            }
        }
    }

    /// Drains inotify and looks for new files when the rotation set changed.
    pub fn on_inotify(&mut self) -> io::Result<()> {
        self.events.clear();
        self.inotify.drain(&mut self.events)?;
        for ev in &self.events {
            if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                self.rescan = true;
            }
            if Some(ev.wd) == self.wd
                && ev.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED) != 0
            {
                warn!(
                    "directory {} was removed or moved; waiting for it to appear again",
                    self.dir.display()
                );
                if ev.mask & libc::IN_IGNORED == 0 {
                    if let Some(wd) = self.wd {
                        let _ = self.inotify.rm_watch(wd);
                    }
                }
                self.wd = None;
                self.waiting_logged = true;
                continue;
            }
            let rotation = libc::IN_CREATE
                | libc::IN_MOVED_TO
                | libc::IN_MOVED_FROM
                | libc::IN_DELETE
                | libc::IN_CLOSE_WRITE;
            if ev.mask & rotation != 0 && self.in_rotation_set(&ev.name) {
                // CLOSE_WRITE matters only for a gzip backup being finished, and for a new
                // audit.log that appeared while nothing was held.
                if ev.mask & libc::IN_CLOSE_WRITE == 0
                    || ev.name.ends_with(b".gz")
                    || self.queue.is_empty()
                {
                    self.rescan = true;
                }
            }
        }
        if self.rescan && self.wd.is_some() {
            self.rescan = false;
            self.list_again();
        }
        self.limit_held();
        Ok(())
    }

    fn in_rotation_set(&self, name: &[u8]) -> bool {
        let Ok(name) = std::str::from_utf8(name) else {
            return false;
        };
        name == self.base || self.backup_ts(name).is_some()
    }

    /// `audit-2006-01-02T15-04-05.000.log[.gz]` -> (ms since epoch, gz).
    fn backup_ts(&self, name: &str) -> Option<(i64, bool)> {
        let rest = name.strip_prefix(&self.prefix)?;
        let (rest, gz) = match rest.strip_suffix(".gz") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let ts = rest.strip_suffix(self.ext.as_str())?;
        parse_backup_time(ts).map(|ms| (ms, gz))
    }

    /// The rotation set in chronological order: backups by the time in their name (a plain file
    /// before its gzipped copy), then `audit.log`; `None` when the directory changed while it
    /// was listed, and the caller lists again.
    ///
    /// A listing is names (readdir) and then each name's inode (stat). A rotation in between
    /// changes what a name means: `audit.log` stat'ed after a rename is the new file, and a
    /// backup gzipped meanwhile is gone while its `.gz` was never read as a name. Either way the
    /// renamed file is missing from the listing, and once a newer file is queued it never
    /// counts as new again (identity rule 7). So the names are read again after the stats, and
    /// only an unchanged set of names, every one stat'ed, is a listing: lumberjack never
    /// rotates without adding a name.
    fn list(&mut self) -> io::Result<Option<Vec<Entry>>> {
        let names = self.names()?;
        self.race_point("names");
        let mut out = Vec::new();
        for name in &names {
            let ts = if *name == self.base {
                None
            } else {
                self.backup_ts(name)
            };
            let Ok(md) = fs::metadata(self.dir.join(name)) else {
                debug!("{name} vanished while the directory was listed; listing again");
                return Ok(None);
            };
            if !md.is_file() {
                continue;
            }
            out.push(Entry {
                name: name.clone(),
                gz: ts.is_some_and(|t| t.1),
                ts_ms: ts.map(|t| t.0),
                dev: md.dev(),
                ino: md.ino(),
                ctime_ns: md.ctime() as i128 * 1_000_000_000 + md.ctime_nsec() as i128,
            });
        }
        out.sort_by(|a, b| match (a.ts_ms, b.ts_ms) {
            (None, None) => std::cmp::Ordering::Equal,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(_), None) => std::cmp::Ordering::Less,
            (Some(x), Some(y)) => x.cmp(&y).then(a.gz.cmp(&b.gz)).then(a.name.cmp(&b.name)),
        });
        if self.names()? != names {
            debug!("the directory changed while it was listed; listing again");
            return Ok(None);
        }
        self.listed = names;
        self.race_point("listed");
        Ok(Some(out))
    }

    /// Whether the directory still has the names of the last listing, checked after opening
    /// files by those names. A rotation since adds a name; without it, every file opened is the
    /// one listed. With it, `follow`'s inode check can pass for the wrong file: the listed
    /// `audit.log` renamed and gzipped frees its inode, which the next new `audit.log` may get.
    fn listing_holds(&self) -> bool {
        self.names().is_ok_and(|n| n == self.listed)
    }

    /// [`Tail::list`] for the start-up search and the rescan: `None` when they must wait, with
    /// a retry on the next tick (listing failed) or at once (the directory changed meanwhile).
    fn listing(&mut self) -> Option<Vec<Entry>> {
        match self.list() {
            Ok(Some(entries)) => Some(entries),
            Ok(None) => {
                self.rescan = true;
                None
            }
            Err(e) => {
                let text = format!(
                    "cannot list {}: {e}{}",
                    self.dir.display(),
                    access_hint(&self.dir, &e)
                );
                self.retry_later(self.dir.clone(), text);
                None
            }
        }
    }

    /// The names of the rotation set in the directory, sorted (to compare two readings).
    fn names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for de in fs::read_dir(&self.dir)? {
            let Ok(name) = de?.file_name().into_string() else {
                continue;
            };
            if name == self.base || self.backup_ts(&name).is_some() {
                names.push(name);
            }
        }
        names.sort_unstable();
        Ok(names)
    }

    #[cfg(test)]
    fn race_point(&mut self, at: &str) {
        if let Some(f) = self.race.as_mut() {
            f(at);
        }
    }

    #[cfg(not(test))]
    fn race_point(&mut self, _at: &str) {}

    fn open(&self, e: &Entry) -> io::Result<Held> {
        let path = self.dir.join(&e.name);
        let f = File::open(&path)?;
        let md = f.metadata()?;
        let (source, fp) = if e.gz {
            let fp =
                Fingerprint::read_from(MultiGzDecoder::new(BufReader::new(File::open(&path)?)))?;
            (
                Source::Gz(Box::new(MultiGzDecoder::new(BufReader::new(f)))),
                fp,
            )
        } else {
            let fp = plain_fingerprint(&f)?;
            (Source::Plain(f), fp)
        };
        Ok(Held {
            source,
            id: FileId {
                dev: md.dev(),
                ino: md.ino(),
                fp,
            },
            name: e.name.clone(),
            offset: 0,
            after_truncation: false,
        })
    }

    /// Opens `e` and queues it behind the files already held.
    /// Returns false when the directory changed between listing and opening (lumberjack renamed
    /// `audit.log` or replaced a backup by its gzip in between): the caller stops queueing and
    /// lists again, so no file is skipped and the order stays right.
    fn follow(&mut self, e: &Entry) -> bool {
        match self.open(e) {
            Ok(h) if !e.gz && (h.id.dev, h.id.ino) != (e.dev, e.ino) => {
                debug!("{} changed while being opened; listing again", e.name);
                self.rescan = true;
                false
            }
            Ok(h) => {
                info!("following {}", self.dir.join(&h.name).display());
                self.queue.push_back(h);
                true
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                debug!("{} vanished while being opened; listing again", e.name);
                self.rescan = true;
                false
            }
            Err(err) => {
                // Stop here so the order stays right; the next tick lists and opens again.
                self.open_error(&e.name, &err);
                false
            }
        }
    }

    /// Lists the directory again while the last listing raced with a rotation.
    fn settle(&mut self) {
        for _ in 0..10 {
            if !self.rescan {
                return;
            }
            self.rescan = false;
            self.rescan_dir();
        }
    }

    /// The first bytes of an entry (decompressed for gzip), up to the fingerprint size; an error
    /// when it is gone (`NotFound`) or cannot be read yet (a gzip being written).
    fn entry_head(&self, e: &Entry) -> io::Result<Vec<u8>> {
        let path = self.dir.join(&e.name);
        let f = File::open(path)?;
        let mut buf = [0u8; FINGERPRINT_BYTES];
        let want = FINGERPRINT_BYTES;
        let mut n = 0;
        if e.gz {
            let mut d = MultiGzDecoder::new(BufReader::new(f));
            while n < want {
                let k = d.read(&mut buf[n..want])?;
                if k == 0 {
                    break;
                }
                n += k;
            }
        } else {
            while n < want {
                let k = f.read_at(&mut buf[n..want], n as u64)?;
                if k == 0 {
                    break;
                }
                n += k;
            }
        }
        Ok(buf[..n].to_vec())
    }

    fn startup(&mut self) {
        self.started = true;
        let pos = self.pending_position.take();
        // A rotation racing the first listing leaves nothing queued: list again from scratch.
        for _ in 0..10 {
            self.rescan = false;
            self.startup_once(pos.as_ref());
            if !(self.rescan && self.queue.is_empty()) {
                break;
            }
        }
        if (self.open_failed || self.rescan) && self.queue.is_empty() {
            // Nothing could be opened, or the directory kept changing while it was listed:
            // start over with the same position on the next tick or inotify event (a change
            // leaves one to read).
            self.started = false;
            self.pending_position = pos;
            return;
        }
        self.settle();
    }

    fn startup_once(&mut self, pos: Option<&Position>) {
        let Some(entries) = self.listing() else {
            return;
        };
        let mut first = None;
        let mut offset = 0;
        if let Some(p) = pos {
            let heads: Vec<io::Result<Vec<u8>>> =
                entries.iter().map(|e| self.entry_head(e)).collect();
            // A file gone since the listing (gzipped, deleted) may be where the position
            // points, and its copy is not in this listing: list again rather than place it
            // among what is left.
            if heads.iter().any(|h| {
                h.as_ref()
                    .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
            }) {
                debug!("a file vanished while the position was placed; listing again");
                self.rescan = true;
                return;
            }
            let heads: Vec<Option<&[u8]>> = heads.iter().map(|h| h.as_deref().ok()).collect();
            match offsets::place(p, &heads, &self.dir.display().to_string()) {
                Start::Resume { index, offset: o } => {
                    info!(
                        "resuming {} at offset {o} (position file named {})",
                        entries[index].name, p.name
                    );
                    first = Some(index);
                    offset = o;
                }
                Start::Reread { index, why, lost } => {
                    if lost {
                        error!("{why}");
                    } else {
                        warn!("{why} (lines may be sent twice)");
                    }
                    first = (index < entries.len()).then_some(index);
                }
            }
        } else if let Some(i) = entries.iter().position(|e| e.ts_ms.is_none()) {
            first = Some(i);
        }
        let Some(first) = first else {
            if !self.waiting_logged {
                info!("waiting for {} to appear", self.path.display());
                self.waiting_logged = true;
            }
            return;
        };
        for (k, e) in entries[first..].iter().enumerate() {
            // A plain backup and its gzipped copy can both exist while lumberjack compresses.
            if e.gz
                && entries[first..][..k]
                    .iter()
                    .any(|o| !o.gz && o.ts_ms == e.ts_ms)
            {
                continue;
            }
            if !self.follow(e) {
                break;
            }
        }
        if !self.queue.is_empty() && !self.listing_holds() {
            debug!("the directory changed while its files were opened; listing again");
            self.queue.clear();
            self.rescan = true;
            return;
        }
        let no_position_tail = pos.is_none() && !self.read_from_head;
        if let Some(h) = self.queue.front_mut() {
            let target = if no_position_tail {
                match &h.source {
                    Source::Plain(f) => f.metadata().map(|m| m.len()).unwrap_or(0),
                    Source::Gz(_) => 0,
                }
            } else {
                offset
            };
            if let Err(e) = seek_to(h, target) {
                warn!(
                    "{}: cannot resume at offset {target}: {e}; reading from the start",
                    h.name
                );
                let _ = seek_to(h, 0);
            }
            self.splitter.reset(h.offset);
        }
    }

    /// Finds files created or renamed since we last looked and queues the new ones in order.
    fn rescan_dir(&mut self) {
        let Some(entries) = self.listing() else {
            return;
        };
        for h in self.queue.iter_mut() {
            if !h.is_gz() && (h.id.fp.len as usize) < FINGERPRINT_BYTES {
                if let Source::Plain(f) = &h.source {
                    if let Ok(fp) = plain_fingerprint(f) {
                        h.id.fp = fp;
                    }
                }
            }
        }
        if self.queue.is_empty() {
            // Nothing held: audit.log appeared (again) after we waited for it. A file that
            // appears after we started is new, so it is read from its head.
            if let Some(e) = entries.iter().find(|e| e.ts_ms.is_none()) {
                match self.open(e) {
                    Ok(h) => {
                        info!("following {}", self.dir.join(&h.name).display());
                        self.waiting_logged = false;
                        self.splitter.reset(0);
                        self.queue.push_back(h);
                    }
                    Err(err) => self.open_error(&e.name, &err),
                }
            }
            return;
        }
        // Held files keep the name they have now (a rotated audit.log is a backup), so that
        // what we log about them (a release, a read error) names the file an operator sees.
        for e in entries.iter().filter(|e| !e.gz) {
            for h in self.queue.iter_mut() {
                if !h.is_gz() && offsets::held_open(&h.id, e.dev, e.ino) && h.name != e.name {
                    h.name.clone_from(&e.name);
                }
            }
        }
        let held = |e: &Entry, q: &VecDeque<Held>| {
            q.iter()
                .any(|h| !h.is_gz() && offsets::held_open(&h.id, e.dev, e.ino))
        };
        // Everything after the newest file we hold is newer than it. If that file is gone from
        // the directory (rotated and deleted), compare times instead: a newer backup was renamed
        // (its ctime) at or after the held file's last write (file times are coarse), since
        // lumberjack creates the next file
        // only after renaming the previous one. Backup names are not used for this: their clock
        // is the writer's, not the file system's.
        let newest = self.queue.back().map(|h| h.id).unwrap_or_default();
        let newest_plain = matches!(self.queue.back().map(|h| &h.source), Some(Source::Plain(_)));
        let anchor = entries.iter().position(|e| {
            (!e.gz && newest_plain && offsets::held_open(&newest, e.dev, e.ino))
                || (e.gz
                    && !newest.fp.is_empty()
                    && self
                        .entry_head(e)
                        .is_ok_and(|h| offsets::head_matches(&h, &newest.fp)))
        });
        let newest_mtime_ns = match self.queue.back().map(|h| &h.source) {
            Some(Source::Plain(f)) => f
                .metadata()
                .map(|m| m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128)
                .unwrap_or(0),
            _ => 0,
        };
        let before = self.queue.len();
        for (i, e) in entries.iter().enumerate() {
            if held(e, &self.queue) {
                continue;
            }
            let newer = match anchor {
                Some(a) => i > a,
                None => e.ts_ms.is_none() || e.ctime_ns >= newest_mtime_ns,
            };
            if !newer {
                continue;
            }
            let fp = match self.entry_head(e) {
                Ok(head) => Fingerprint::of(&head),
                // A gzip being written: closing it lists again. Its plain copy, listed before
                // it while it is written, was queued above or read already.
                Err(_) if e.gz => {
                    debug!(
                        "{} is not readable yet; looking again when it is closed",
                        e.name
                    );
                    continue;
                }
                // Gzipped or deleted since the listing: queueing newer files now would put its
                // copy behind them for good (rule 7), so list again.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    debug!("{} vanished since the listing; listing again", e.name);
                    self.rescan = true;
                    break;
                }
                Err(err) => {
                    // Stop here so the order stays right; the next tick lists and reads again.
                    self.open_error(&e.name, &err);
                    break;
                }
            };
            if self.known.iter().any(|k| offsets::suppresses(k, &fp))
                || self
                    .queue
                    .iter()
                    .any(|h| offsets::suppresses(&h.id.fp, &fp))
            {
                continue;
            }
            if !self.follow(e) {
                break;
            }
        }
        if self.queue.len() > before && !self.listing_holds() {
            // Nothing was read from the files just queued: let them go and list again.
            debug!("the directory changed while new files were opened; listing again");
            self.queue.truncate(before);
            self.rescan = true;
        }
        // Each file queued behind a held one is the next of a rotation.
        self.rotations += (self.queue.len() - before) as u64;
    }

    /// Reads up to one buffer from the current file and hands every complete line to `emit`
    /// together with the file offset just past it.
    pub fn read(
        &mut self,
        max: usize,
        mut emit: impl FnMut(Piece<'_>, &FileId, &str, u64),
    ) -> io::Result<Progress> {
        let Some(h) = self.queue.front_mut() else {
            return Ok(Progress::Idle);
        };
        if let Some(how) = truncation(h) {
            warn!(
                "{} {how}; reading it from the start: what it held past that offset before the \
                 truncation and was not yet read cannot be read any more",
                h.name
            );
            return self.restart_truncated();
        }
        let max = max.clamp(1, self.buf.len());
        let n = match h.read(&mut self.buf[..max]) {
            Ok(n) => n,
            Err(e) => {
                // A corrupt gzip backup or an I/O error on a file: say which, and move on to
                // the next file rather than stall forever.
                error!(
                    "reading {} at offset {}: {e}; skipping the rest of it",
                    h.name, h.offset
                );
                0
            }
        };
        if n > 0 {
            let mut start = h.offset;
            h.offset += n as u64;
            h.refresh_fingerprint();
            let mut data = &self.buf[..n];
            if h.after_truncation {
                let zeros = data.iter().take_while(|&&b| b == 0).count();
                if zeros > 0 {
                    debug!(
                        "{}: skipped {zeros} NUL bytes at offset {start} after its truncation",
                        h.name
                    );
                    data = &data[zeros..];
                    start += zeros as u64;
                    self.splitter.reset(start);
                }
                h.after_truncation = data.is_empty();
            }
            let (id, name) = (h.id, &h.name);
            self.splitter
                .feed(data, start, |p, end| emit(p, &id, name, end));
            return Ok(Progress::Read);
        }
        if self.queue.len() > 1 {
            let h = self.queue.front().expect("queue has two entries");
            let (id, name) = (h.id, h.name.clone());
            self.splitter.finish(|p, end| emit(p, &id, &name, end));
            if let Some(done) = self.queue.pop_front() {
                if done.id.fp.is_strong() {
                    if self.known.len() == KNOWN_FPS {
                        self.known.pop_front();
                    }
                    self.known.push_back(done.id.fp);
                    self.anchor = Some(Position {
                        id: done.id,
                        offset: done.offset,
                        done: true,
                        name: done.name.clone(),
                    });
                }
                debug!("finished {} at offset {}", done.name, done.offset);
                if !done.is_gz() {
                    if self.finished.len() == FINISHED_MAX {
                        self.finished.pop_front();
                    }
                    self.finished.push_back(Finished {
                        dev: done.id.dev,
                        ino: done.id.ino,
                        name: done.name,
                        end: done.offset,
                    });
                }
            }
            if let Some(next) = self.queue.front() {
                info!(
                    "rotated: now reading {} from offset {}",
                    next.name, next.offset
                );
                self.splitter.reset(next.offset);
            }
            return Ok(Progress::Switched);
        }
        Ok(Progress::Idle)
    }

    /// Reads the file in front, truncated in place, from its start again.
    fn restart_truncated(&mut self) -> io::Result<Progress> {
        let Some(h) = self.queue.front_mut() else {
            return Ok(Progress::Idle);
        };
        if let Source::Plain(f) = &mut h.source {
            self.rotations += 1;
            f.seek(SeekFrom::Start(0))?;
            h.offset = 0;
            h.after_truncation = true;
            h.id.fp = plain_fingerprint(f).unwrap_or_default();
            self.splitter.reset(0);
        }
        Ok(Progress::Switched)
    }
}

fn seek_to(h: &mut Held, offset: u64) -> io::Result<()> {
    match &mut h.source {
        Source::Plain(f) => {
            let len = f.metadata()?.len();
            if len < offset {
                return Err(io::Error::other(format!(
                    "file is only {len} bytes (truncated?)"
                )));
            }
            f.seek(SeekFrom::Start(offset))?;
        }
        Source::Gz(d) => {
            let skipped = io::copy(&mut d.by_ref().take(offset), &mut io::sink())?;
            if skipped < offset {
                return Err(io::Error::other(format!(
                    "decompressed file is only {skipped} bytes"
                )));
            }
        }
    }
    h.offset = offset;
    Ok(())
}

/// Parses lumberjack's backup time `2006-01-02T15-04-05.000` (UTC) to milliseconds.
fn parse_backup_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 23
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b'-'
        || b[16] != b'-'
        || b[19] != b'.'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (c - b'0') as i64;
        }
        Some(v)
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = crate::forward::transcode::days_from_civil(y, mo, d);
    Some(((days * 86400 + h * 3600 + mi * 60 + se) * 1000) + ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn backup_names() {
        let cases: &[(&str, Option<i64>)] = &[
            ("1970-01-01T00-00-00.000", Some(0)),
            ("2025-07-16T10-12-56.525", Some(1_752_660_776_525)),
            ("2024-02-29T23-59-59.999", Some(1_709_251_199_999)),
            ("2025-13-16T10-12-56.525", None),
            ("2025-07-16T10:12:56.525", None),
            ("2025-07-16T10-12-56", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_backup_time(s), *want, "{s}");
        }
    }

    #[test]
    fn tail_access_hint_only_for_permission_errors() {
        let d = tmp("hint");
        let log = d.0.join("audit.log");
        fs::write(&log, "x\n").unwrap();
        fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        let hint = access_hint(&log, &denied);
        let (uid, gid) = crate::sys::ids();
        for want in [
            "mode 0600".to_string(),
            format!("runs as uid {uid} gid {gid}"),
            "runAsUser".into(),
            "fsGroup".into(),
        ] {
            assert!(hint.contains(&want), "{want:?} missing from {hint:?}");
        }
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(access_hint(&log, &emfile), "");
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn tmp(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("af-tail-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn drain(t: &mut Tail) -> Vec<String> {
        let mut out = Vec::new();
        t.on_inotify().unwrap();
        loop {
            let p = t
                .read(usize::MAX, |p, _, _, _| {
                    if let Piece::Line(l) = p {
                        out.push(String::from_utf8_lossy(l).into_owned())
                    }
                })
                .unwrap();
            if p == Progress::Idle {
                return out;
            }
        }
    }

    fn append(path: &Path, s: &str) {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        f.write_all(s.as_bytes()).unwrap();
    }

    #[test]
    fn follows_rename_rotation_and_deleted_backup() {
        let d = tmp("rot");
        let log = d.0.join("audit.log");
        append(&log, "a1\na2\n");
        let mut t = Tail::new(&log, true, 1024, u64::MAX, None).unwrap();
        assert_eq!(drain(&mut t), ["a1", "a2"]);
        append(&log, "a3\n");
        let b1 = d.0.join("audit-2025-01-01T00-00-00.000.log");
        fs::rename(&log, &b1).unwrap();
        append(&log, "b1\n");
        let b2 = d.0.join("audit-2025-01-01T00-00-01.000.log");
        fs::rename(&log, &b2).unwrap();
        append(&log, "c1\n");
        fs::remove_file(&b1).unwrap();
        assert_eq!(drain(&mut t), ["a3", "b1", "c1"]);
        let p = t.position().unwrap();
        assert_eq!((p.name.as_str(), p.offset), ("audit.log", 3));
    }

    #[test]
    fn tail_file_lags_follow_the_committed_offset() {
        let d = tmp("lag");
        let log = d.0.join("audit.log");
        append(&log, "a1\na2\n");
        let mut t = Tail::new(&log, true, 1024, u64::MAX, None).unwrap();
        let lags = |t: &Tail, c: Option<&Position>| t.file_lags(c);
        let named = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
            v.iter().map(|(n, l)| (n.to_string(), *l)).collect()
        };
        // No ack yet: what is read counts as on its way.
        assert_eq!(lags(&t, None), named(&[("audit.log", 6)]));
        assert_eq!(drain(&mut t), ["a1", "a2"]);
        assert_eq!(lags(&t, None), named(&[("audit.log", 0)]));
        let old = t.position().unwrap();
        let at = |p: &Position, offset: u64| Position {
            offset,
            ..p.clone()
        };
        assert_eq!(lags(&t, Some(&at(&old, 3))), named(&[("audit.log", 3)]));

        // Rotated: the old file is read to its end (9 bytes) and left behind.
        append(&log, "a3\n");
        let b1 = "audit-2025-01-01T00-00-00.000.log";
        fs::rename(&log, d.0.join(b1)).unwrap();
        append(&log, "b1\n");
        assert_eq!(drain(&mut t), ["a3", "b1"]);
        assert_eq!(t.rotations(), 1);
        let new = t.position().unwrap();
        // (committed, lags before forgetting, lags after forgetting).
        let cases: Vec<(Position, Vec<(String, u64)>, Vec<(String, u64)>)> = vec![
            (
                at(&old, 3),
                named(&[(b1, 6), ("audit.log", 3)]),
                named(&[(b1, 6), ("audit.log", 3)]),
            ),
            (
                at(&old, 9),
                named(&[(b1, 0), ("audit.log", 3)]),
                named(&[(b1, 0), ("audit.log", 3)]),
            ),
            (
                at(&new, 2),
                named(&[(b1, 0), ("audit.log", 1)]),
                named(&[("audit.log", 1)]),
            ),
            (
                at(&new, 3),
                named(&[("audit.log", 0)]),
                named(&[("audit.log", 0)]),
            ),
        ];
        for (committed, before, after) in cases {
            assert_eq!(lags(&t, Some(&committed)), before, "{committed}");
            t.forget_acked(Some(&committed));
            assert_eq!(lags(&t, Some(&committed)), after, "{committed}");
        }
    }

    #[test]
    fn resumes_in_gzipped_backup_after_restart() {
        let d = tmp("gz");
        let log = d.0.join("audit.log");
        append(&log, &(event("x1") + &event("x2") + &event("x3")));
        let mut t = Tail::new(&log, true, 1024, u64::MAX, None).unwrap();
        let mut pos = None;
        let mut n = 0;
        t.read(usize::MAX, |p, id, name, end| {
            if let Piece::Line(_) = p {
                n += 1;
                if n == 1 {
                    pos = Some(Position {
                        id: *id,
                        offset: end,
                        done: false,
                        name: name.to_string(),
                    });
                }
            }
        })
        .unwrap();
        drop(t);
        let b1 = d.0.join("audit-2025-01-01T00-00-00.000.log");
        fs::rename(&log, &b1).unwrap();
        gzip(&b1);
        append(&log, &event("y1"));
        let mut t = Tail::new(&log, true, 1024, u64::MAX, pos).unwrap();
        assert_eq!(event_ids(&drain(&mut t)), ["x2", "x3", "y1"]);
    }

    #[test]
    fn copytruncate_reads_from_zero() {
        let d = tmp("trunc");
        let log = d.0.join("audit.log");
        append(&log, "one\ntwo\n");
        let mut t = Tail::new(&log, true, 1024, u64::MAX, None).unwrap();
        assert_eq!(drain(&mut t), ["one", "two"]);
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&log)
            .unwrap();
        append(&log, "3\n");
        assert_eq!(drain(&mut t), ["3"]);
    }

    /// Truncated in place and written again past our offset before we read on (we were
    /// behind): the size never drops below the offset, the first bytes tell, and the new
    /// content is read from its start, the part before our old offset included.
    #[test]
    fn truncated_and_rewritten_past_our_offset_reads_the_new_content_whole() {
        for (tag, first) in [
            ("rw-strong", event("A1") + &event("A2")),
            ("rw-weak", "a\nb\n".into()),
        ] {
            let d = tmp(tag);
            let log = d.0.join("audit.log");
            append(&log, &first);
            let mut t = Tail::new(&log, true, 1 << 20, u64::MAX, None).unwrap();
            assert_eq!(drain(&mut t).len(), 2, "{tag}");
            let before = t.rotations;
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&log)
                .unwrap();
            let new: Vec<String> = ["B1", "B2", "B3", "B4"]
                .iter()
                .map(|id| event(id))
                .collect();
            append(&log, &new.concat());
            let got = drain(&mut t);
            assert_eq!(event_ids(&got), ["B1", "B2", "B3", "B4"], "{tag}");
            assert_eq!(t.rotations, before + 1, "{tag}: counted as a truncation");
            // Reading on does not take it for rewritten again.
            append(&log, &event("B5"));
            assert_eq!(event_ids(&drain(&mut t)), ["B5"], "{tag}");
        }
    }

    /// Truncated and written again while we were behind, then rotated before we read on: the
    /// file is no longer the newest, and its first bytes still tell.
    #[test]
    fn truncated_then_rotated_while_behind_reads_the_new_content_whole() {
        let d = tmp("trunc-rot");
        let log = d.0.join("audit.log");
        append(&log, &(event("A1") + &event("A2") + &event("A3")));
        let mut t = Tail::new(&log, true, 1 << 20, u64::MAX, None).unwrap();
        let mut got = Vec::new();
        // Behind: one line read of three.
        t.read(event("A1").len(), |p, _, _, _| {
            if let Piece::Line(l) = p {
                got.push(String::from_utf8_lossy(l).into_owned())
            }
        })
        .unwrap();
        assert_eq!(event_ids(&got), ["A1"]);
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&log)
            .unwrap();
        append(&log, &["B1", "B2", "B3", "B4"].map(event).concat());
        fs::rename(&log, d.0.join("audit-2025-01-01T00-00-00.000.log")).unwrap();
        append(&log, &event("C1"));
        assert_eq!(event_ids(&drain(&mut t)), ["B1", "B2", "B3", "B4", "C1"]);
    }

    /// A writer without O_APPEND (lumberjack's) goes on at its old offset after a truncation in
    /// place: the file reads as NULs up to there, which are not the start of a line.
    #[test]
    fn nuls_left_by_a_writer_without_o_append_are_skipped() {
        let d = tmp("trunc-hole");
        let log = d.0.join("audit.log");
        let mut w = File::create(&log).unwrap();
        w.write_all((event("A1") + &event("A2")).as_bytes())
            .unwrap();
        let mut t = Tail::new(&log, true, 1 << 20, u64::MAX, None).unwrap();
        assert_eq!(event_ids(&drain(&mut t)), ["A1", "A2"]);
        fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap();
        // Seen truncated before the writer writes again, and after.
        assert!(drain(&mut t).is_empty());
        w.write_all((event("B1") + &event("B2")).as_bytes())
            .unwrap();
        let got = drain(&mut t);
        assert_eq!(event_ids(&got), ["B1", "B2"]);
        assert!(got[0].starts_with('{'), "{:?}", &got[0][..20]);
        w.write_all(event("B3").as_bytes()).unwrap();
        assert_eq!(event_ids(&drain(&mut t)), ["B3"]);
    }

    /// A line long enough that a file of one has a strong fingerprint, unique per `tag`.
    fn event(tag: &str) -> String {
        format!(
            "{{\"auditID\":\"{tag}\",\"pad\":\"{}\"}}\n",
            "x".repeat(300)
        )
    }

    /// The tags of lines made by [`event`].
    fn event_ids(lines: &[String]) -> Vec<&str> {
        lines.iter().map(|l| &l[12..14]).collect()
    }

    fn gzip(src: &Path) {
        let gz = PathBuf::from(format!("{}.gz", src.display()));
        let mut enc =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(&fs::read(src).unwrap()).unwrap();
        enc.finish().unwrap();
        fs::remove_file(src).unwrap();
    }

    /// Issue 7's loss: the position taken right after a rotation named the new, empty
    /// audit.log (empty fingerprint, matching any file); after the next rotation and gzip while
    /// we were down, the reused inode made start-up resume at offset 0 of the newest file.
    #[test]
    fn position_right_after_rotation_survives_rotation_gzip_and_inode_reuse() {
        let d = tmp("rotpos");
        let log = d.0.join("audit.log");
        append(&log, &(event("A1") + &event("A2")));
        let mut t = Tail::new(&log, true, 1 << 20, u64::MAX, None).unwrap();
        assert_eq!(drain(&mut t).len(), 2);
        fs::rename(&log, d.0.join("audit-2025-01-01T00-00-00.000.log")).unwrap();
        File::create(&log).unwrap();
        assert_eq!(drain(&mut t).len(), 0);
        let saved = t.position().unwrap();
        assert!(
            saved.id.fp.is_strong() && saved.done,
            "the position after the rotation must be the finished file's end: {saved:?}"
        );
        drop(t);
        append(&log, &(event("B1") + &event("B2")));
        let b = d.0.join("audit-2025-01-01T00-00-01.000.log");
        fs::rename(&log, &b).unwrap();
        gzip(&b);
        append(&log, &event("C1"));
        let mut t = Tail::new(&log, true, 1 << 20, u64::MAX, Some(saved)).unwrap();
        assert_eq!(event_ids(&drain(&mut t)), ["B1", "B2", "C1"]);
    }

    /// Start-up with a position after x1 in K9.gz, and audit.log holding y1 and y2, while
    /// `change` rotates the directory when the listing reaches `at` (see `Tail::race`);
    /// returns the tags of every line read.
    fn startup_racing(tag: &str, at: &'static str, change: fn(&Path)) -> Vec<String> {
        let d = tmp(tag);
        let log = d.0.join("audit.log");
        let k9 = d.0.join("audit-2025-01-01T00-00-00.000.log");
        append(&k9, &(event("x1") + &event("x2")));
        gzip(&k9);
        append(&log, &(event("y1") + &event("y2")));
        let saved = Position {
            id: FileId {
                dev: 0,
                ino: 0,
                fp: Fingerprint::of(event("x1").as_bytes()),
            },
            offset: event("x1").len() as u64,
            done: false,
            name: "audit.log".to_string(),
        };
        let mut t = Tail::unstarted(&log, true, 1 << 20, u64::MAX, Some(saved)).unwrap();
        let (dir, mut once) = (d.0.clone(), true);
        t.race = Some(Box::new(move |now| {
            if now == at && std::mem::take(&mut once) {
                change(&dir);
            }
        }));
        t.try_start();
        let mut got = drain(&mut t);
        got.extend(drain(&mut t));
        event_ids(&got).into_iter().map(str::to_string).collect()
    }

    /// Issue r02's loss: start-up read the names (K9.gz, audit.log); before it stat'ed them,
    /// audit.log was renamed to K10 and gzipped (K10 gone, K10.gz never listed) and a new
    /// audit.log (z1) created. The stat of `audit.log` then found the new file, so start-up
    /// queued K9.gz and the new audit.log, and K10.gz was older than the newest file held at
    /// every later look: y1 and y2 were never read.
    #[test]
    fn startup_listing_racing_rotation_and_gzip_skips_nothing() {
        let got = startup_racing("race-start", "names", |dir| {
            let k10 = dir.join("audit-2025-01-01T00-00-01.000.log");
            fs::rename(dir.join("audit.log"), &k10).unwrap();
            append(&dir.join("audit.log"), &event("z1"));
            gzip(&k10);
        });
        assert_eq!(got, ["x2", "y1", "y2", "z1"]);
    }

    /// Issue r02's loss, second form: the listing was right (audit.log holding y1 and y2 as
    /// inode X), but before `audit.log` was opened it became K10, was gzipped (freeing X) and
    /// the next rotation created an audit.log that the file system gave inode X again. The open
    /// matched the listed inode, so the newest file was taken for the listed one and K10.gz was
    /// never read. Where X is not reused, the inode check alone makes this pass.
    #[test]
    fn rotation_between_listing_and_open_reusing_the_inode_skips_nothing() {
        let got = startup_racing("race-reuse", "listed", |dir| {
            let log = dir.join("audit.log");
            let x = fs::metadata(&log).unwrap().ino();
            let k10 = dir.join("audit-2025-01-01T00-00-01.000.log");
            fs::rename(&log, &k10).unwrap();
            File::create(&log).unwrap();
            gzip(&k10);
            fs::rename(&log, dir.join("audit-2025-01-01T00-00-02.000.log")).unwrap();
            append(&log, &event("z1"));
            let reused = fs::metadata(&log).unwrap().ino() == x;
            eprintln!("inode {x} reused by the new audit.log: {reused}");
        });
        assert_eq!(got, ["x2", "y1", "y2", "z1"]);
    }

    /// The same race one step later, while following: the listing named K10 (plain), which was
    /// gzipped before its first bytes were read. Skipping it and queueing the newer audit.log
    /// made K10.gz older than the newest held file for good.
    #[test]
    fn backup_gzipped_right_after_a_rescan_listed_it_is_read() {
        let d = tmp("race-rescan");
        let log = d.0.join("audit.log");
        append(&log, &event("a1"));
        let mut t = Tail::new(&log, true, 1 << 20, u64::MAX, None).unwrap();
        assert_eq!(event_ids(&drain(&mut t)), ["a1"]);
        fs::rename(&log, d.0.join("audit-2025-01-01T00-00-00.000.log")).unwrap();
        append(&log, &event("b1"));
        let k10 = d.0.join("audit-2025-01-01T00-00-01.000.log");
        fs::rename(&log, &k10).unwrap();
        append(&log, &event("c1"));
        let mut once = true;
        t.race = Some(Box::new(move |at| {
            if at == "listed" && std::mem::take(&mut once) {
                gzip(&k10);
            }
        }));
        let mut got = drain(&mut t);
        got.extend(drain(&mut t));
        assert_eq!(event_ids(&got), ["b1", "c1"]);
    }

    /// A weak position (nothing strong was ever read) re-reads rather than skips.
    #[test]
    fn weak_position_rereads_from_the_oldest_candidate() {
        let d = tmp("weak");
        let log = d.0.join("audit.log");
        File::create(&log).unwrap();
        let mut t = Tail::new(&log, true, 1 << 20, u64::MAX, None).unwrap();
        assert!(drain(&mut t).is_empty());
        let saved = t.position().unwrap();
        assert!(saved.id.fp.is_empty());
        drop(t);
        append(&log, "b1\n");
        fs::rename(&log, d.0.join("audit-2025-01-01T00-00-01.000.log")).unwrap();
        append(&log, "c1\n");
        let mut t = Tail::new(&log, true, 1 << 20, u64::MAX, Some(saved)).unwrap();
        assert_eq!(drain(&mut t), ["b1", "c1"]);
    }

    /// `--max-held-bytes`: deleted files we hold count against the limit and the oldest is let
    /// go first; files still linked in the directory never count.
    #[test]
    fn held_deleted_files_are_bounded_oldest_released_first() {
        let d = tmp("held");
        let log = d.0.join("audit.log");
        let lines = |tag: &str| {
            (0..3)
                .map(|i| event(&format!("{tag}{i}")))
                .collect::<String>()
        };
        append(&log, &lines("A"));
        let size = fs::metadata(&log).unwrap().len();
        let mut t = Tail::new(&log, true, 1 << 20, size + size / 2, None).unwrap();
        let b1 = d.0.join("audit-2025-01-01T00-00-00.000.log");
        fs::rename(&log, &b1).unwrap();
        append(&log, &lines("B"));
        let b2 = d.0.join("audit-2025-01-01T00-00-01.000.log");
        fs::rename(&log, &b2).unwrap();
        append(&log, &lines("C"));
        t.on_inotify().unwrap();
        assert_eq!(t.queue.len(), 3, "A, B and C are held");
        fs::remove_file(&b1).unwrap();
        t.on_inotify().unwrap();
        assert_eq!(t.queue.len(), 3, "one deleted file is within the limit");
        fs::remove_file(&b2).unwrap();
        assert_eq!(
            event_ids(&drain(&mut t)),
            ["B0", "B1", "B2", "C0", "C1", "C2"]
        );
    }
}
