//! Chunks between the file and the receiver: building -> queued -> written -> acked. The committed
//! position is the end of the longest acked prefix, so a crash at any moment resends at most the
//! unacked window and never skips data the receiver has not confirmed.
//!
//! Also what keeps one record from blocking everything behind it: a record larger than the chunk
//! target travels in a chunk of its own, and a chunk the receiver keeps dropping the connection
//! over ([`Outbox::dropped_by_peer`]) is split in halves until the one record it cannot take is
//! alone. If the receiver then takes the chunks after it on a connection that skips it (the probe)
//! and drops a fresh connection over it once more, that record is set aside as [`Rejected`] (the
//! caller logs it and writes it to the rejected-records file) and delivery moves on.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::time::Instant;

use crate::escape;
use crate::follow::offsets::Position;
use crate::forward::codec as forward;
use crate::forward::msgpack;
use crate::forward::pace::Pace;
use crate::forward::transcode;

/// Connections the receiver dropped in a row while the same chunk was the oldest one written
/// and unacked, before that chunk is taken apart. A receiver that restarts now and then hits one
/// chunk once, not three times running.
pub const DROPS_BEFORE_ISOLATING: u32 = 3;
/// Chunks are never made smaller than this after splits.
const MIN_TARGET: usize = 64 << 10;

/// Where one record came from: the byte range of its line in the file, and where its entry ends
/// in the chunk's entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub entry_end: usize,
    pub start: u64,
    pub end: u64,
}

/// A record the receiver would not take, set aside so delivery can go on.
#[derive(Debug)]
pub struct Rejected {
    pub file: String,
    /// The line's byte range in `file`.
    pub start: u64,
    pub len: u64,
    /// The record as one JSON line (the audit event as read).
    pub json: Vec<u8>,
}

/// What the receiver's dropped connections say about the oldest chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Suspicion {
    None,
    /// Dropped this many times in a row while this chunk was the oldest written.
    Dropped([u8; 24], u32),
    /// A one-record chunk the current connection skips, to see whether the receiver takes the
    /// chunks after it.
    Probing([u8; 24]),
    /// The probe worked: the chunk goes once more, first on a fresh connection, and a drop over
    /// it there sets it aside. Three drops and a probe can also be a receiver that restarted
    /// three times at the wrong moment; a record it can take must not be set aside for that.
    Confirming([u8; 24]),
}

pub struct Chunk {
    pub id: [u8; 24],
    /// The complete PackedForward message; empty for a position marker.
    frame: Vec<u8>,
    /// Where the entries sit in `frame` (gzipped for CompressedPackedForward).
    entries_at: std::ops::Range<usize>,
    gzip: bool,
    pub records: u64,
    /// Source bytes (lines with their newlines) the chunk covers, for the stats.
    pub source_bytes: u64,
    /// Where the file position may move once this chunk and all before it are acked; `None`
    /// for the first parts of a split chunk, which must not move it past records still unacked.
    pub end: Option<Position>,
    /// The file the records came from and each record's place in it.
    file: String,
    marks: Vec<Mark>,
    acked: bool,
    sent_at: Option<Instant>,
}

impl Chunk {
    pub fn id_str(&self) -> &str {
        // The id is base64 text we generated ourselves.
        std::str::from_utf8(&self.id).unwrap_or("?")
    }
}

/// Entries being gathered for the next chunk, written straight into the frame that will be sent:
/// `[tag, bin32(entries), {"chunk": id, "size": n}]`. The bin length is patched at seal time, so
/// entries are never copied; a 32-bit bin header for a small chunk is valid MessagePack.
pub struct Builder {
    /// The frame so far is `frame[..len]`. What lies past `len` (the rest of a reused buffer,
    /// room an entry did not use) is overwritten by the next entries and cut off at seal time:
    /// the buffer's length stays at its high-water mark, so its room is zeroed once, not again
    /// for every entry.
    frame: Vec<u8>,
    len: usize,
    header: usize,
    capacity: usize,
    pub records: u64,
    pub source_bytes: u64,
    /// Set by the caller after each read batch.
    pub end: Option<Position>,
    /// The file the records come from (a chunk never spans files) and each record's place.
    file: String,
    marks: Vec<Mark>,
}

impl Builder {
    pub fn new(tag: &str, capacity: usize) -> Builder {
        let mut b = Builder {
            frame: Vec::new(),
            len: 0,
            header: 0,
            capacity,
            records: 0,
            source_bytes: 0,
            end: None,
            file: String::new(),
            marks: Vec::new(),
        };
        b.start(tag);
        b
    }

    /// Drops the entries after they went into a chunk. A buffer grown by one huge record is given
    /// back: kept, it would count against the window and stop reading for good.
    fn clear(&mut self, tag: &str) {
        if self.frame.capacity() > self.capacity * 2 {
            self.start(tag);
        } else {
            self.len = self.header;
        }
    }

    /// Notes that the entry just appended is the line `start..end` of `file`.
    pub fn mark(&mut self, file: &str, start: u64, end: u64) {
        if self.marks.is_empty() && self.file != file {
            self.file.clear();
            self.file.push_str(file);
        }
        self.marks.push(Mark {
            entry_end: self.entries_len(),
            start,
            end,
        });
    }

    fn start(&mut self, tag: &str) {
        self.start_in(tag, None);
    }

    /// Starts the next chunk in `reuse` (an acked chunk's buffer) when there is one: a fresh
    /// 512 KiB buffer is a fresh mapping whose pages fault in one by one, about 5% of the
    /// forwarder's CPU. The reused buffer keeps its bytes (see `len`): the header is written
    /// over them.
    fn start_in(&mut self, tag: &str, reuse: Option<Vec<u8>>) {
        let mut head = Vec::with_capacity(tag.len() + 16);
        head.push(0x93);
        // Writing into a Vec cannot fail.
        let _ = rmp::encode::write_str(&mut head, tag);
        head.extend_from_slice(&[0xc6, 0, 0, 0, 0]);
        let mut frame = reuse.unwrap_or_else(|| Vec::with_capacity(self.capacity));
        if frame.len() >= head.len() {
            frame[..head.len()].copy_from_slice(&head);
        } else {
            frame.clear();
            frame.extend_from_slice(&head);
        }
        self.frame = frame;
        self.header = head.len();
        self.len = head.len();
    }

    /// Transcodes `line` into the next entry (see `transcode::append_entry`).
    pub fn append_entry(&mut self, line: &[u8], now: transcode::EventTime) -> transcode::Kind {
        let (kind, end) = transcode::append_entry_at(line, now, &mut self.frame, self.len);
        self.len = end;
        kind
    }

    /// Appends bytes as they are: entries built by hand, in tests.
    #[cfg(test)]
    pub fn append_raw(&mut self, bytes: &[u8]) {
        self.frame.truncate(self.len);
        self.frame.extend_from_slice(bytes);
        self.len = self.frame.len();
    }

    /// The entries so far.
    pub fn entries(&self) -> &[u8] {
        &self.frame[self.header..self.len]
    }

    pub fn entries_len(&self) -> usize {
        self.len - self.header
    }

    /// Bytes of entries that still fit without growing the buffer.
    pub fn room(&self) -> usize {
        self.frame.capacity().saturating_sub(self.len + 64)
    }

    pub fn allocated(&self) -> usize {
        self.frame.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0 && self.end.is_none()
    }
}

/// PackedForward `[tag, bin(entries), {"chunk", "size"}]` from a copy of the entries: only for
/// the rare chunk that is split.
fn packed_frame(tag: &str, entries: &[u8], records: u64, id: &[u8; 24]) -> (Vec<u8>, usize) {
    let mut frame = Vec::with_capacity(entries.len() + 128);
    frame.push(0x93);
    // Writing into a Vec cannot fail.
    let _ = rmp::encode::write_str(&mut frame, tag);
    let _ = rmp::encode::write_bin_len(&mut frame, entries.len() as u32);
    let at = frame.len();
    frame.extend_from_slice(entries);
    let _ = rmp::encode::write_map_len(&mut frame, 2);
    let _ = rmp::encode::write_str(&mut frame, "chunk");
    let _ = rmp::encode::write_str(&mut frame, std::str::from_utf8(id).unwrap_or(""));
    let _ = rmp::encode::write_str(&mut frame, "size");
    let _ = rmp::encode::write_uint(&mut frame, records);
    (frame, at)
}

/// CompressedPackedForward: `[tag, bin(gzip(entries)), {"chunk", "size", "compressed": "gzip"}]`.
/// Level 1: audit JSON compresses about 8:1 even so, and higher levels cost several times the CPU
/// for a few percent. Returns the frame and where the gzipped entries start in it.
fn compressed_frame(tag: &str, entries: &[u8], records: u64, id: &[u8; 24]) -> (Vec<u8>, usize) {
    use flate2::write::GzEncoder;
    let mut frame = Vec::with_capacity(entries.len() / 6 + 128);
    frame.push(0x93);
    // Writing into a Vec cannot fail.
    let _ = rmp::encode::write_str(&mut frame, tag);
    frame.extend_from_slice(&[0xc6, 0, 0, 0, 0]);
    let header = frame.len();
    let mut enc = GzEncoder::new(frame, flate2::Compression::new(1));
    let _ = enc.write_all(entries);
    let mut frame = enc.finish().unwrap_or_default();
    if frame.len() < header {
        return (frame, 0);
    }
    let len = (frame.len() - header) as u32;
    frame[header - 4..header].copy_from_slice(&len.to_be_bytes());
    let _ = rmp::encode::write_map_len(&mut frame, 3);
    let _ = rmp::encode::write_str(&mut frame, "chunk");
    let _ = rmp::encode::write_str(&mut frame, std::str::from_utf8(id).unwrap_or(""));
    let _ = rmp::encode::write_str(&mut frame, "size");
    let _ = rmp::encode::write_uint(&mut frame, records);
    let _ = rmp::encode::write_str(&mut frame, "compressed");
    let _ = rmp::encode::write_str(&mut frame, "gzip");
    (frame, header)
}

#[derive(Debug, PartialEq, Eq)]
pub enum AckError {
    /// The receiver acked a chunk id we have not sent on this connection (the id, escaped for
    /// logs).
    Unknown(String),
}

#[derive(Default, Debug, Clone, Copy)]
pub struct Acked {
    pub records: u64,
    pub source_bytes: u64,
}

pub struct Outbox {
    chunks: VecDeque<Chunk>,
    /// Index of the chunk being written; `write_off` bytes of it are already out.
    next: usize,
    write_off: usize,
    bytes: usize,
    committed: Option<Position>,
    pub acked_total: Acked,
    /// Records and source bytes of every chunk written whole to a connection, resends included.
    pub sent_total: Acked,
    tag: String,
    /// The largest entries a chunk should carry; a bigger record gets a chunk of its own.
    target: usize,
    /// Whether the receiver has been dropping connections over one chunk.
    suspicion: Suspicion,
    rejected: Vec<Rejected>,
    /// Makes the ids of split parts unique.
    splits: u64,
    /// The largest message the receiver has acked: a record is only rejected for its size.
    largest_acked: usize,
    /// A probe found the skipped chunk blameless: a new connection must send it first.
    reconnect: bool,
    /// Acked chunks' buffers kept for the builder, the smallest size worth keeping and how many
    /// to keep while data flows.
    spare: Vec<Vec<u8>>,
    spare_min: usize,
    spare_max: usize,
    /// How many bytes may be in flight, from the acks' pace and round trip.
    pace: Pace,
}

/// Buffers kept when idle: one being filled while the other's chunk is in flight.
const SPARES_IDLE: usize = 2;

impl Outbox {
    pub fn new(committed: Option<Position>, tag: &str, target: usize) -> Outbox {
        Outbox {
            chunks: VecDeque::new(),
            next: 0,
            write_off: 0,
            bytes: 0,
            committed,
            acked_total: Acked::default(),
            sent_total: Acked::default(),
            tag: tag.to_string(),
            target,
            suspicion: Suspicion::None,
            rejected: Vec::new(),
            splits: 0,
            largest_acked: 0,
            reconnect: false,
            spare: Vec::new(),
            spare_min: target,
            spare_max: SPARES_IDLE,
            pace: Pace::new(usize::MAX, usize::MAX),
        }
    }

    /// Lets between `floor` and `cap` bytes be in flight, as the acks show the receiver's pace
    /// and round trip need (see [`Pace`]); until called, no limit.
    pub fn pace_window(&mut self, floor: usize, cap: usize) {
        self.pace = Pace::new(floor, cap);
    }

    /// The bytes that may be in flight now.
    pub fn window(&self) -> usize {
        self.pace.window()
    }

    /// The files ran dry: the window a burst earned does not outlive it.
    pub fn idle(&mut self) {
        self.pace.idle();
        self.release_spares();
    }

    /// Keeps up to `n` acked buffers (at least [`SPARES_IDLE`]) for the chunks that follow. A
    /// receiver that acks a whole window at once frees every buffer together; were they given
    /// back to the allocator, the next window would be built in fresh pages, each faulted in and
    /// zeroed by the kernel (a few percent of the forwarder's CPU at full speed).
    pub fn keep_spares(&mut self, n: usize) {
        self.spare_max = n.max(SPARES_IDLE);
    }

    /// Gives back all but [`SPARES_IDLE`] kept buffers: called when the files have nothing more,
    /// so an idle forwarder holds no more than a busy one needs for its next chunk.
    pub fn release_spares(&mut self) {
        self.spare.truncate(SPARES_IDLE);
    }

    /// Whether chunk `i` went out, whole or in part, on the current connection.
    fn written(&self, i: usize) -> bool {
        i < self.next || (i == self.next && self.write_off > 0)
    }

    /// Gives back every kept buffer: for a reader the memory limit holds still. Kept buffers are
    /// memory, not data, so acks never free them; under a tight `--mem-buf-limit` they could keep
    /// reading stopped with nothing in flight.
    pub fn drop_spares(&mut self) {
        self.spare = Vec::new();
    }

    /// Memory held by kept buffers (part of what `--mem-buf-limit` bounds).
    pub fn spare_bytes(&self) -> usize {
        self.spare.iter().map(|v| v.capacity()).sum()
    }

    /// Records set aside since the last call, for the caller to log and keep.
    pub fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    /// Bytes held by unacked chunks.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn committed(&self) -> Option<&Position> {
        self.committed.as_ref()
    }

    /// Whether every queued chunk has been written (acked ones count as written).
    pub fn all_written(&self) -> bool {
        self.chunks.iter().skip(self.next).all(|c| c.acked) && self.write_off == 0
    }

    /// Chunks not yet acked (position markers excluded).
    pub fn unacked(&self) -> usize {
        self.chunks.iter().filter(|c| !c.acked).count()
    }

    /// Turns the builder into a chunk. A builder with no records still carries a position
    /// (skipped lines, a finished file); it is kept in order and counts as acked at once. A
    /// record larger than the chunk target is put in a chunk of its own.
    pub fn seal(&mut self, b: &mut Builder, tag: &str, gzip: bool, random: [u8; 16]) {
        let Some(end) = b.end.take() else { return };
        let marks = std::mem::take(&mut b.marks);
        let parts = parts_isolating(&marks, self.target);
        if parts.len() > 1 {
            // The builder's buffer is taken, not copied, and the next chunk starts in a kept
            // buffer: a copy and a builder still sized for the big record held that record three
            // times over, past `--mem-buf-limit` (t23).
            let frame = std::mem::take(&mut b.frame);
            let entries = &frame[b.header..b.len];
            b.start_in(tag, self.spare.pop());
            b.records = 0;
            b.source_bytes = 0;
            let last = parts.len() - 1;
            for (i, range) in parts.into_iter().enumerate() {
                // Only the last part may move the position: it covers the builder's end.
                let part_end = (i == last).then(|| end.clone());
                self.push_part(entries, &marks, range, &b.file, part_end, gzip, random);
            }
            self.advance_commit();
            return;
        }
        let id = forward::new_chunk_id(random);
        let mut frame = Vec::new();
        let mut entries_at = 0..0;
        if b.records > 0 && gzip {
            let at;
            (frame, at) = compressed_frame(tag, b.entries(), b.records, &id);
            entries_at = at..at + gzip_len(&frame, at);
            b.clear(tag);
        } else if b.records > 0 {
            let len = b.entries_len() as u32;
            b.frame.truncate(b.len);
            b.frame[b.header - 4..b.header].copy_from_slice(&len.to_be_bytes());
            entries_at = b.header..b.header + len as usize;
            // Writing into a Vec cannot fail.
            let _ = rmp::encode::write_map_len(&mut b.frame, 2);
            let _ = rmp::encode::write_str(&mut b.frame, "chunk");
            let _ = rmp::encode::write_str(&mut b.frame, std::str::from_utf8(&id).unwrap_or(""));
            let _ = rmp::encode::write_str(&mut b.frame, "size");
            let _ = rmp::encode::write_uint(&mut b.frame, b.records);
            frame = std::mem::take(&mut b.frame);
            b.start_in(tag, self.spare.pop());
        } else {
            b.clear(tag);
        }
        self.bytes += frame.capacity();
        self.chunks.push_back(Chunk {
            id,
            frame,
            entries_at,
            gzip,
            records: b.records,
            source_bytes: b.source_bytes,
            end: Some(end),
            file: b.file.clone(),
            marks,
            acked: b.records == 0,
            sent_at: None,
        });
        b.records = 0;
        b.source_bytes = 0;
        self.advance_commit();
    }

    /// Queues the records `range` of `entries` (described by `marks`) as a chunk of their own.
    #[allow(clippy::too_many_arguments)]
    fn push_part(
        &mut self,
        entries: &[u8],
        marks: &[Mark],
        range: std::ops::Range<usize>,
        file: &str,
        end: Option<Position>,
        gzip: bool,
        random: [u8; 16],
    ) -> usize {
        let from = if range.start == 0 {
            0
        } else {
            marks[range.start - 1].entry_end
        };
        let to = marks[range.end - 1].entry_end;
        let base = from;
        let part_marks: Vec<Mark> = marks[range.clone()]
            .iter()
            .map(|m| Mark {
                entry_end: m.entry_end - base,
                ..*m
            })
            .collect();
        self.splits += 1;
        let mut random = random;
        for (r, s) in random.iter_mut().zip(self.splits.to_le_bytes()) {
            *r ^= s;
        }
        let id = forward::new_chunk_id(random);
        let records = range.len() as u64;
        let (frame, at) = if gzip {
            compressed_frame(&self.tag, &entries[from..to], records, &id)
        } else {
            packed_frame(&self.tag, &entries[from..to], records, &id)
        };
        let entries_at = if gzip {
            at..at + gzip_len(&frame, at)
        } else {
            at..at + (to - from)
        };
        let source_bytes = part_marks.iter().map(|m| m.end - m.start).sum();
        self.bytes += frame.capacity();
        let chunk = Chunk {
            id,
            frame,
            entries_at,
            gzip,
            records,
            source_bytes,
            end,
            file: file.to_string(),
            marks: part_marks,
            acked: false,
            sent_at: None,
        };
        self.chunks.push_back(chunk);
        self.chunks.len() - 1
    }

    /// The receiver closed or reset the connection. When that happens for the third time in a
    /// row while the same chunk was the oldest unacked one and had gone out (at least in part),
    /// the chunk may be what it cannot take: a chunk of several records is split in halves (and
    /// new chunks are made smaller), which loses nothing whatever the cause. A single record is
    /// set aside only on evidence that the receiver takes other chunks: the next connection
    /// skips it (the probe), and it is rejected only when another chunk is acked there. A
    /// receiver that drops the probe connection too is failing everything (an outage, a full
    /// memory budget), and the record stays.
    pub fn dropped_by_peer(&mut self) {
        if let Suspicion::Confirming(p) = self.suspicion {
            self.suspicion = Suspicion::None;
            let oldest = self.chunks.iter().position(|c| !c.acked);
            match oldest.filter(|&i| self.chunks[i].id == p && self.written(i)) {
                Some(i) => {
                    self.rewind();
                    self.reject(i);
                }
                // Dropped before it went out: no verdict, the count starts again.
                None => self.suspicion = Suspicion::Dropped(p, 0),
            }
            return;
        }
        if let Suspicion::Probing(p) = self.suspicion {
            self.suspicion = Suspicion::None;
            log::warn!(
                "the receiver also dropped the connection that skipped chunk {}: it is failing \
                 everything, not that record; sending it again in order",
                String::from_utf8_lossy(&p)
            );
            return;
        }
        let Some(i) = self.chunks.iter().position(|c| !c.acked) else {
            return;
        };
        if !self.written(i) {
            return;
        }
        let id = self.chunks[i].id;
        let count = match self.suspicion {
            Suspicion::Dropped(s, n) if s == id => n + 1,
            _ => 1,
        };
        if count < DROPS_BEFORE_ISOLATING {
            self.suspicion = Suspicion::Dropped(id, count);
            return;
        }
        self.suspicion = Suspicion::None;
        // The connection is gone: everything unacked goes out again on the next one.
        self.rewind();
        if self.chunks[i].marks.len() > 1 {
            self.split(i);
            return;
        }
        if self
            .chunks
            .iter()
            .skip(i + 1)
            .any(|c| !c.acked && c.records > 0)
        {
            log::warn!(
                "the receiver dropped the connection {DROPS_BEFORE_ISOLATING} times in a row over \
                 chunk {} (one record of {} bytes from {}); the next connection sends the chunks \
                 after it first, to tell a record it cannot take from a receiver that is down",
                self.chunks[i].id_str(),
                self.chunks[i].source_bytes,
                self.chunks[i].file
            );
            self.suspicion = Suspicion::Probing(id);
        }
    }

    /// Replaces chunk `i` by its two halves, and makes chunks no larger than a half from now on,
    /// the ones already queued included: a receiver with a message limit below the chunk
    /// target would otherwise drop every chunk three times before taking its halves.
    fn split(&mut self, i: usize) {
        let Some(c) = self.chunks.get(i) else {
            return;
        };
        let mid = c.marks.len() / 2;
        let len = c.marks.last().map_or(0, |m| m.entry_end);
        let half = c.marks[mid - 1]
            .entry_end
            .max(len - c.marks[mid - 1].entry_end);
        let (id, records, file) = (c.id_str().to_string(), c.records, c.file.clone());
        self.target = self.target.min(half).max(MIN_TARGET);
        log::warn!(
            "the receiver dropped the connection {DROPS_BEFORE_ISOLATING} times in a row over \
             chunk {id} ({records} records, {len} bytes, from {file}); splitting it, and making \
             chunks at most {} bytes from now on (a receiver message limit such as fluent-bit's \
             Buffer_Max_Size?)",
            self.target
        );
        self.rechunk(i, vec![0..mid, mid..c.marks.len()]);
        let mut j = 0;
        while j < self.chunks.len() {
            let c = &self.chunks[j];
            let size = c.marks.last().map_or(0, |m| m.entry_end);
            if !c.acked && c.sent_at.is_none() && c.marks.len() > 1 && size > self.target {
                let parts = parts_by_size(&c.marks, self.target);
                let n = parts.len();
                self.rechunk(j, parts);
                j += n;
            } else {
                j += 1;
            }
        }
    }

    /// Replaces chunk `i` by chunks of its record ranges `parts`, in place; only the last part
    /// may move the position.
    fn rechunk(&mut self, i: usize, parts: Vec<std::ops::Range<usize>>) {
        let Some(c) = self.chunks.remove(i) else {
            return;
        };
        self.bytes -= c.frame.capacity();
        let entries = match chunk_entries(&c) {
            Ok(e) => e,
            Err(e) => {
                // Cannot happen for frames we built; keep the chunk rather than lose it.
                log::error!("chunk {} cannot be taken apart: {e}", c.id_str());
                self.bytes += c.frame.capacity();
                self.chunks.insert(i, c);
                return;
            }
        };
        let tail: Vec<Chunk> = self.chunks.drain(i..).collect();
        let random = *c.id.first_chunk::<16>().unwrap_or(&[0; 16]);
        let last = parts.len().saturating_sub(1);
        for (k, range) in parts.into_iter().enumerate() {
            let end = if k == last { c.end.clone() } else { None };
            self.push_part(&entries, &c.marks, range, &c.file, end, c.gzip, random);
        }
        self.chunks.extend(tail);
    }

    /// Sets the one record of chunk `i` aside: it counts as done, so the position may move past
    /// it, and the caller logs it and keeps it in the rejected-records file.
    fn reject(&mut self, i: usize) {
        let Some(c) = self.chunks.remove(i) else {
            return;
        };
        self.bytes -= c.frame.capacity();
        let json = match chunk_entries(&c) {
            Ok(entries) => record_json(&entries),
            Err(e) => format!("{{\"log\":\"(record could not be decoded: {e})\"}}\n").into_bytes(),
        };
        let m = c.marks.first().copied().unwrap_or(Mark {
            entry_end: 0,
            start: 0,
            end: 0,
        });
        self.rejected.push(Rejected {
            file: c.file.clone(),
            start: m.start,
            len: m.end - m.start,
            json,
        });
        self.chunks.insert(
            i,
            Chunk {
                frame: Vec::new(),
                entries_at: 0..0,
                records: 0,
                source_bytes: 0,
                marks: Vec::new(),
                acked: true,
                ..c
            },
        );
        self.advance_commit();
    }

    /// Whether the connection must be dropped and made again (see `reconnect`); asking clears it.
    pub fn take_reconnect(&mut self) -> bool {
        std::mem::take(&mut self.reconnect)
    }

    /// The chunk target: new chunks are sealed once their entries reach it.
    pub fn target(&self) -> usize {
        self.target
    }

    /// A new connection: everything unacked is sent again, in order.
    pub fn rewind(&mut self) {
        self.next = 0;
        self.write_off = 0;
        for c in &mut self.chunks {
            c.sent_at = None;
        }
    }

    fn skip_acked(&mut self) {
        while self.next < self.chunks.len()
            && (self.chunks[self.next].acked
                || self.suspicion == Suspicion::Probing(self.chunks[self.next].id))
        {
            self.next += 1;
            self.write_off = 0;
        }
    }

    /// Writes queued frames until done or the writer would block. Returns true when everything
    /// queued is written.
    pub fn write_to(&mut self, w: &mut impl Write, now: Instant) -> io::Result<bool> {
        loop {
            self.skip_acked();
            let Some(c) = self.chunks.get_mut(self.next) else {
                return Ok(true);
            };
            match w.write(&c.frame[self.write_off..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "connection accepted no bytes",
                    ))
                }
                Ok(n) => {
                    self.write_off += n;
                    if self.write_off == c.frame.len() {
                        c.sent_at = Some(now);
                        self.sent_total.records += c.records;
                        self.sent_total.source_bytes += c.source_bytes;
                        self.next += 1;
                        self.write_off = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// When the oldest written-but-unacked chunk was written.
    pub fn oldest_unacked_sent(&self) -> Option<(Instant, &str)> {
        self.chunks
            .iter()
            .find(|c| !c.acked && c.sent_at.is_some())
            .and_then(|c| c.sent_at.map(|t| (t, c.id_str())))
    }

    /// Records an ack. Returns the records/bytes that became committed.
    pub fn ack(&mut self, id: &[u8], now: Instant) -> Result<Acked, AckError> {
        let Some(c) = self
            .chunks
            .iter_mut()
            .find(|c| !c.acked && c.sent_at.is_some() && c.id[..] == *id)
        else {
            return Err(AckError::Unknown(escape::for_log(id, 64)));
        };
        c.acked = true;
        if let Some(sent) = c.sent_at {
            self.pace.on_ack(c.frame.len(), sent, now);
        }
        self.largest_acked = self.largest_acked.max(c.frame.len());
        // The receiver took a chunk on the connection that skipped the suspect record: that
        // record is what it cannot take, if it is larger than anything the receiver ever took
        // (a message limit). One no larger was dropped for something passing (a memory budget
        // held by others, a restart): it stays, in order. An ack of the suspect itself clears
        // the suspicion.
        match std::mem::replace(&mut self.suspicion, Suspicion::None) {
            Suspicion::Dropped(s, n) if s[..] != *id => self.suspicion = Suspicion::Dropped(s, n),
            Suspicion::Confirming(s) if s[..] != *id => self.suspicion = Suspicion::Confirming(s),
            Suspicion::Confirming(s) => log::info!(
                "the receiver took chunk {} on a fresh connection: its drops were a passing \
                 fault, not that record",
                String::from_utf8_lossy(&s)
            ),
            Suspicion::Probing(p) => {
                if let Some(i) = self.chunks.iter().position(|c| c.id == p) {
                    let size = self.chunks[i].frame.len();
                    if size > MIN_TARGET && size > self.largest_acked {
                        log::warn!(
                            "the receiver took the chunks after {} but not it: sending it once \
                             more, first on a fresh connection, before setting it aside",
                            String::from_utf8_lossy(&p)
                        );
                        self.suspicion = Suspicion::Confirming(p);
                        self.reconnect = true;
                    } else {
                        log::warn!(
                        "the receiver took the chunks after {} but dropped the connection over it \
                         although it is no larger than what it takes: a passing fault, not this \
                         record; reconnecting to send it again, first",
                        String::from_utf8_lossy(&p)
                    );
                        self.reconnect = true;
                    }
                }
            }
            _ => {}
        }
        Ok(self.advance_commit())
    }

    fn advance_commit(&mut self) -> Acked {
        let mut done = Acked::default();
        while self.chunks.front().is_some_and(|c| c.acked) {
            let Some(c) = self.chunks.pop_front() else {
                break;
            };
            self.bytes -= c.frame.capacity();
            // Buffers of the builder's size are kept for the next chunks.
            if self.spare.len() < self.spare_max
                && c.frame.capacity() >= self.spare_min
                && c.frame.capacity() <= self.spare_min * 2
            {
                self.spare.push(c.frame);
            }
            done.records += c.records;
            done.source_bytes += c.source_bytes;
            if let Some(end) = c.end {
                self.committed = Some(end);
            }
            if self.next > 0 {
                self.next -= 1;
            } else {
                self.write_off = 0;
            }
        }
        self.acked_total.records += done.records;
        self.acked_total.source_bytes += done.source_bytes;
        done
    }
}

/// Record ranges such that every record over `target` is alone and the others stay together.
fn parts_isolating(marks: &[Mark], target: usize) -> Vec<std::ops::Range<usize>> {
    let mut parts = Vec::new();
    let (mut from, mut part_start) = (0, 0);
    for (i, m) in marks.iter().enumerate() {
        if m.entry_end - from > target {
            if part_start < i {
                parts.push(part_start..i);
            }
            parts.push(i..i + 1);
            part_start = i + 1;
        }
        from = m.entry_end;
    }
    if part_start < marks.len() {
        parts.push(part_start..marks.len());
    }
    parts
}

/// Record ranges of consecutive records whose entries stay within `target` (a record larger
/// than that alone).
fn parts_by_size(marks: &[Mark], target: usize) -> Vec<std::ops::Range<usize>> {
    let mut parts = Vec::new();
    let (mut start, mut from) = (0, 0);
    for (i, m) in marks.iter().enumerate() {
        if i > start && m.entry_end - from > target {
            parts.push(start..i);
            start = i;
            from = marks[i - 1].entry_end;
        }
    }
    if start < marks.len() {
        parts.push(start..marks.len());
    }
    parts
}

/// Length of the bin payload whose header ends at `at` (its 4-byte length precedes it).
fn gzip_len(frame: &[u8], at: usize) -> usize {
    frame
        .get(at.wrapping_sub(4)..at)
        .and_then(|b| b.try_into().ok())
        .map_or(0, |b| u32::from_be_bytes(b) as usize)
}

/// The chunk's entries as sent, uncompressed.
fn chunk_entries(c: &Chunk) -> io::Result<Vec<u8>> {
    let raw = c.frame.get(c.entries_at.clone()).unwrap_or_default();
    if !c.gzip {
        return Ok(raw.to_vec());
    }
    let mut out = Vec::new();
    io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(raw), &mut out)?;
    Ok(out)
}

/// The record of one `[time, record]` entry as a JSON line.
fn record_json(entry: &[u8]) -> Vec<u8> {
    let mut r = msgpack::Reader::new(entry);
    let mut out = Vec::new();
    let ok = r.array_len().is_ok()
        && r.skip().is_ok()
        && msgpack::write_json(r.remaining(), usize::MAX, &mut out).is_ok();
    if !ok {
        out.clear();
        out.extend_from_slice(b"{\"log\":\"(record could not be decoded)\"}");
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::offsets::FileId;

    fn pos(off: u64) -> Position {
        Position {
            id: FileId::default(),
            offset: off,
            done: false,
            name: "audit.log".into(),
        }
    }

    fn add(o: &mut Outbox, n: u8, records: u64, end: u64) {
        let mut b = Builder::new("audit", 64);
        if records > 0 {
            b.append_raw(&[0x92, 0x00, 0x80]);
        }
        b.records = records;
        b.source_bytes = end;
        b.end = Some(pos(end));
        o.seal(&mut b, "audit", false, [n; 16]);
    }

    fn unlimited() -> Trickle {
        Trickle {
            out: Vec::new(),
            budget: usize::MAX,
        }
    }

    /// A writer that takes at most `cap` bytes per call, then blocks.
    struct Trickle {
        out: Vec<u8>,
        budget: usize,
    }
    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.budget).min(7);
            self.budget -= n;
            self.out.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn commits_only_the_acked_prefix_and_resends_in_order() {
        let mut o = Outbox::new(None, "audit", 1 << 20);
        add(&mut o, 1, 1, 10);
        add(&mut o, 2, 1, 20);
        add(&mut o, 0, 0, 25); // a skipped over-long line: no records, just a position
        add(&mut o, 3, 1, 30);
        let now = Instant::now();
        let mut w = unlimited();
        assert!(o.write_to(&mut w, now).unwrap());
        let ids: Vec<[u8; 24]> = o.chunks.iter().map(|c| c.id).collect();
        // An ack for a chunk never sent on this connection is refused.
        assert!(matches!(
            o.ack(b"nope", Instant::now()),
            Err(AckError::Unknown(_))
        ));
        // Out-of-order ack: nothing commits until the first one is acked.
        o.ack(&ids[1], Instant::now()).unwrap();
        assert_eq!(o.committed(), None);
        let done = o.ack(&ids[0], Instant::now()).unwrap();
        assert_eq!(
            (done.records, o.committed().map(|p| p.offset)),
            (2, Some(25))
        );
        // Reconnect: only the unacked chunk goes out again.
        o.rewind();
        let mut w2 = unlimited();
        assert!(o.write_to(&mut w2, now).unwrap());
        assert_eq!(w2.out, o.chunks[0].frame);
        o.ack(&ids[3], Instant::now()).unwrap();
        assert_eq!((o.committed().map(|p| p.offset), o.bytes()), (Some(30), 0));
        assert_eq!(o.acked_total.records, 3);
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut o = Outbox::new(None, "audit", 1 << 20);
        add(&mut o, 1, 1, 10);
        add(&mut o, 2, 1, 20);
        let whole: Vec<u8> = o.chunks.iter().flat_map(|c| c.frame.clone()).collect();
        let mut w = Trickle {
            out: Vec::new(),
            budget: 0,
        };
        let now = Instant::now();
        let mut rounds = 0;
        while !o.write_to(&mut w, now).unwrap() {
            w.budget = 5;
            rounds += 1;
        }
        assert_eq!(w.out, whole);
        assert!(rounds > 5);
        assert!(o.oldest_unacked_sent().is_some());
    }

    /// A builder holding one record per `sizes` entry: `{"n": i, "pad": "x..."}` lines of about
    /// that many bytes, from file offset 0 on.
    fn builder_with(sizes: &[usize]) -> Builder {
        let mut lines = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            // Large pads are hex noise, so that gzip cannot shrink them below a receiver limit.
            let pad: String = if n > 1000 {
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ n as u64;
                (0..n)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        char::from(b"0123456789abcdef"[(x % 16) as usize])
                    })
                    .collect()
            } else {
                "x".repeat(n)
            };
            lines.push(format!("{{\"n\":{i},\"pad\":\"{pad}\"}}").into_bytes());
        }
        let mut b = Builder::new("audit", 1 << 16);
        append_lines(&mut b, &lines, transcode::now_event_time());
        b
    }

    /// Appends `lines` to `b` as the pipeline does, as the lines of `audit.log` from offset 0 on.
    fn append_lines(b: &mut Builder, lines: &[Vec<u8>], now: transcode::EventTime) {
        let mut off = 0;
        for line in lines {
            b.append_entry(line, now);
            b.records += 1;
            b.source_bytes += line.len() as u64 + 1;
            b.mark("audit.log", off, off + line.len() as u64 + 1);
            off += line.len() as u64 + 1;
        }
        b.end = Some(pos(off));
    }

    fn record_numbers(o: &Outbox) -> Vec<Vec<u64>> {
        o.chunks
            .iter()
            .filter(|c| c.records > 0)
            .map(|c| {
                let entries = chunk_entries(c).unwrap();
                let mut r = msgpack::Reader::new(&entries);
                let mut out = Vec::new();
                while !r.is_empty() {
                    let entry = r.skip().unwrap();
                    let json = record_json(entry);
                    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
                    out.push(v["n"].as_u64().unwrap());
                }
                out
            })
            .collect()
    }

    #[test]
    fn a_record_over_the_target_travels_alone() {
        for gzip in [false, true] {
            let mut o = Outbox::new(None, "audit", 1000);
            let mut b = builder_with(&[10, 20, 5000, 30, 40, 3000]);
            o.seal(&mut b, "audit", gzip, [1; 16]);
            assert_eq!(
                record_numbers(&o),
                [vec![0, 1], vec![2], vec![3, 4], vec![5]],
                "gzip {gzip}"
            );
            // Only the last part may move the position.
            let ends: Vec<Option<u64>> = o
                .chunks
                .iter()
                .map(|c| c.end.as_ref().map(|p| p.offset))
                .collect();
            let total = b.source_bytes;
            assert_eq!(ends[..3], [None, None, None], "gzip {gzip}");
            assert!(ends[3].is_some() && total == 0, "gzip {gzip}: {ends:?}");
            let ids: std::collections::HashSet<[u8; 24]> = o.chunks.iter().map(|c| c.id).collect();
            assert_eq!(ids.len(), 4, "chunk ids must differ");
            // A buffer grown by a huge record is given back, else it would fill the window.
            let mut b = builder_with(&[10, 300_000, 10]);
            o.seal(&mut b, "audit", gzip, [5; 16]);
            assert!(b.allocated() <= 2 << 16, "gzip {gzip}: {}", b.allocated());
        }
    }

    /// The chunks written on the current connection.
    fn sent_ids(o: &Outbox) -> Vec<[u8; 24]> {
        o.chunks
            .iter()
            .filter(|c| c.sent_at.is_some())
            .map(|c| c.id)
            .collect()
    }

    /// Writes everything, then reports a dropped connection (the receiver reset on it).
    fn send_and_drop(o: &mut Outbox) {
        o.rewind();
        let mut w = unlimited();
        o.write_to(&mut w, Instant::now()).unwrap();
        o.dropped_by_peer();
    }

    #[test]
    fn a_chunk_the_receiver_keeps_dropping_is_split_down_to_the_record_it_rejects() {
        for gzip in [false, true] {
            let mut o = Outbox::new(None, "audit", 1 << 20);
            let mut b = builder_with(&[10, 20, 200_000, 40]);
            o.seal(&mut b, "audit", gzip, [2; 16]);
            // Twice is not enough: a receiver restarting now and then is not a verdict.
            send_and_drop(&mut o);
            send_and_drop(&mut o);
            assert_eq!(record_numbers(&o), [vec![0, 1, 2, 3]]);
            send_and_drop(&mut o);
            assert_eq!(record_numbers(&o), [vec![0, 1], vec![2, 3]], "gzip {gzip}");
            // The receiver takes [0, 1] and keeps dropping [2, 3], then [2].
            o.rewind();
            let mut w = unlimited();
            o.write_to(&mut w, Instant::now()).unwrap();
            let first = o.chunks[0].id;
            o.ack(&first, Instant::now()).unwrap();
            assert_eq!(
                o.committed(),
                None,
                "a first half must not move the position"
            );
            for _ in 0..3 {
                send_and_drop(&mut o);
            }
            assert_eq!(record_numbers(&o), [vec![2], vec![3]]);
            for _ in 0..3 {
                send_and_drop(&mut o);
            }
            // One record: not rejected on drops alone. The next connection skips it and sends
            // [3] first; the receiver taking [3] is the evidence.
            assert_eq!(record_numbers(&o), [vec![2], vec![3]]);
            assert!(o.take_rejected().is_empty());
            o.rewind();
            let mut probe = unlimited();
            o.write_to(&mut probe, Instant::now()).unwrap();
            let sent = sent_ids(&o);
            assert_eq!(sent.len(), 1, "only the chunk after the suspect goes out");
            o.ack(&sent[0], Instant::now()).unwrap();
            assert!(
                o.take_rejected().is_empty(),
                "gzip {gzip}: not on the probe alone"
            );
            assert!(
                o.take_reconnect(),
                "it goes once more on a fresh connection"
            );
            // Dropped there too: set aside.
            send_and_drop(&mut o);
            assert_eq!(record_numbers(&o), Vec::<Vec<u64>>::new());
            let rejected = o.take_rejected();
            assert_eq!(rejected.len(), 1);
            let v: serde_json::Value = serde_json::from_slice(&rejected[0].json).unwrap();
            assert_eq!(v["n"], 2);
            assert_eq!(
                (rejected[0].file.as_str(), rejected[0].start),
                ("audit.log", 64)
            );
            assert!(rejected[0].json.ends_with(b"\n"));
            // [3] went through on the probe connection: the position reaches the end.
            assert_eq!(
                o.committed().map(|p| p.offset),
                Some(27 + 37 + 200_017 + 57)
            );
            assert_eq!(o.unacked(), 0);
            assert_eq!(
                o.acked_total.records, 3,
                "the rejected record is not counted as acked"
            );
        }
    }

    #[test]
    fn drops_before_a_chunk_went_out_or_after_its_ack_do_not_count() {
        let mut o = Outbox::new(None, "audit", 1 << 20);
        let mut b = builder_with(&[10, 20]);
        o.seal(&mut b, "audit", false, [3; 16]);
        for _ in 0..5 {
            // Connection lost before anything was written (the receiver is down).
            o.rewind();
            o.dropped_by_peer();
        }
        assert_eq!(record_numbers(&o), [vec![0, 1]]);
        send_and_drop(&mut o);
        send_and_drop(&mut o);
        // An ack of the suspect clears it.
        o.rewind();
        let mut w = unlimited();
        o.write_to(&mut w, Instant::now()).unwrap();
        let id = o.chunks[0].id;
        o.ack(&id, Instant::now()).unwrap();
        let mut b = builder_with(&[10, 20]);
        o.seal(&mut b, "audit", false, [4; 16]);
        send_and_drop(&mut o);
        send_and_drop(&mut o);
        assert_eq!(
            record_numbers(&o),
            [vec![0, 1]],
            "two drops on the new chunk only"
        );
    }

    /// A chunk built in a reused buffer, which still holds the bytes of the larger chunk before
    /// it past the builder's end, goes out byte for byte as the same chunk built in a fresh
    /// buffer: plain, split around a record larger than the target, and gzipped.
    #[test]
    fn a_reused_buffer_builds_the_same_frames_as_a_fresh_one() {
        let t = transcode::EventTime {
            secs: 1_700_000_000,
            nanos: 5,
        };
        let lines = |n: usize, pad: usize| -> Vec<Vec<u8>> {
            (0..n)
                .map(|i| format!(r#"{{"n":{i},"pad":"{}"}}"#, "y".repeat(pad + i % 7)).into_bytes())
                .collect()
        };
        let fill = |b: &mut Builder, lines: &[Vec<u8>]| append_lines(b, lines, t);
        let frames =
            |o: &Outbox| -> Vec<Vec<u8>> { o.chunks.iter().map(|c| c.frame.clone()).collect() };
        let big = lines(200, 300);
        let mut cases = vec![(lines(40, 10), false), (lines(40, 10), true)];
        // A record over the 64 KiB target between small ones: the chunk is split in three.
        let mut split = lines(5, 10);
        split.insert(
            2,
            format!(r#"{{"huge":"{}"}}"#, "z".repeat(70_000)).into_bytes(),
        );
        cases.push((split, false));
        for (small, gzip) in cases {
            let mut reused = Outbox::new(None, "audit", 1 << 16);
            let mut b = Builder::new("audit", 1 << 16);
            fill(&mut b, &big);
            reused.seal(&mut b, "audit", gzip, [1; 16]);
            reused.write_to(&mut unlimited(), Instant::now()).unwrap();
            let ids: Vec<_> = reused.chunks.iter().map(|c| c.id).collect();
            for id in &ids {
                reused.ack(id, Instant::now()).unwrap();
            }
            if !gzip {
                assert!(reused.spare_bytes() > 0, "the acked buffer is kept");
                // The next seal hands that buffer to the builder.
                fill(&mut b, &big);
                reused.seal(&mut b, "audit", gzip, [3; 16]);
            }
            assert!(
                b.frame.len() > b.len + 1000,
                "the builder's buffer holds stale bytes past its end"
            );
            fill(&mut b, &small);
            reused.seal(&mut b, "audit", gzip, [2; 16]);

            let mut fresh = Outbox::new(None, "audit", 1 << 16);
            let mut b = Builder::new("audit", 1 << 16);
            fill(&mut b, &small);
            fresh.seal(&mut b, "audit", gzip, [2; 16]);
            let want = frames(&fresh);
            let got = frames(&reused);
            assert!(!want.is_empty());
            assert_eq!(got[got.len() - want.len()..], want[..], "gzip {gzip}");
        }
    }

    #[test]
    fn acked_chunk_buffers_are_reused_by_the_builder() {
        let mut o = Outbox::new(None, "audit", 1 << 16);
        let mut b = builder_with(&[10, 20]);
        o.seal(&mut b, "audit", false, [6; 16]);
        assert_eq!(o.spare_bytes(), 0);
        let mut w = unlimited();
        o.write_to(&mut w, Instant::now()).unwrap();
        let id = o.chunks[0].id;
        o.ack(&id, Instant::now()).unwrap();
        assert!(o.spare_bytes() >= 1 << 16, "the acked buffer is kept");
        let kept = o.spare[0].as_ptr();
        // The next seal hands the kept buffer to the builder for the chunk after it.
        b.append_raw(&[0x92, 0x00, 0x80]);
        b.records = 1;
        b.end = Some(pos(1));
        o.seal(&mut b, "audit", false, [7; 16]);
        assert_eq!(b.frame.as_ptr(), kept);
        assert_eq!(o.spare_bytes(), 0);
    }

    #[test]
    fn a_window_acked_at_once_keeps_its_buffers_until_idle() {
        let target = 1 << 16;
        for (keep, kept_after_acks) in [(0, 2), (2, 2), (8, 8), (20, 10)] {
            let mut o = Outbox::new(None, "audit", target);
            o.keep_spares(keep);
            let mut w = unlimited();
            let mut ids = Vec::new();
            for n in 0..10u8 {
                let mut b = builder_with(&[10]);
                o.seal(&mut b, "audit", false, [n; 16]);
                ids.push(o.chunks.back().map(|c| c.id).unwrap());
            }
            o.write_to(&mut w, Instant::now()).unwrap();
            for id in &ids {
                o.ack(id, Instant::now()).unwrap();
            }
            assert_eq!(o.spare.len(), kept_after_acks, "keep {keep}");
            assert!(o.spare_bytes() >= kept_after_acks * target);
            o.release_spares();
            assert_eq!(o.spare.len(), 2, "keep {keep}: idle keeps two");
            o.drop_spares();
            assert_eq!(o.spare_bytes(), 0, "keep {keep}: dropped");
        }
    }

    /// A receiver that drops everything (an outage behind a load balancer, a tailer whose
    /// memory budget a hostile client holds) must not get good records rejected.
    #[test]
    fn a_receiver_that_drops_every_connection_gets_nothing_rejected() {
        let mut o = Outbox::new(None, "audit", 1 << 20);
        let mut b = builder_with(&[10]);
        o.seal(&mut b, "audit", false, [8; 16]);
        let mut b = builder_with(&[20]);
        o.seal(&mut b, "audit", false, [9; 16]);
        for _ in 0..60 {
            send_and_drop(&mut o);
        }
        assert!(o.take_rejected().is_empty());
        assert_eq!(record_numbers(&o).len(), 2);
        // Healthy again: both are delivered in order.
        o.rewind();
        let mut w = unlimited();
        o.write_to(&mut w, Instant::now()).unwrap();
        let ids: Vec<[u8; 24]> = o.chunks.iter().map(|c| c.id).collect();
        assert!(
            o.chunks.iter().all(|c| c.sent_at.is_some()),
            "nothing skipped"
        );
        for id in ids {
            o.ack(&id, Instant::now()).unwrap();
        }
        assert_eq!(o.acked_total.records, 2);
        assert!(o.take_rejected().is_empty());
    }

    #[test]
    fn parts_by_size_table() {
        let marks = |ends: &[usize]| -> Vec<Mark> {
            ends.iter()
                .map(|&e| Mark {
                    entry_end: e,
                    start: 0,
                    end: 0,
                })
                .collect()
        };
        let cases: &[(&[usize], usize, Vec<std::ops::Range<usize>>)] = &[
            (&[10, 20, 30], 100, vec![0..3]),
            (&[10, 20, 30], 20, vec![0..2, 2..3]),
            (&[10, 20, 30], 10, vec![0..1, 1..2, 2..3]),
            (&[50, 60, 200, 210], 40, vec![0..1, 1..2, 2..3, 3..4]),
            (&[5, 10, 100, 105, 110], 50, vec![0..2, 2..3, 3..5]),
        ];
        for (ends, target, want) in cases {
            assert_eq!(
                &parts_by_size(&marks(ends), *target),
                want,
                "{ends:?} {target}"
            );
        }
    }

    /// After a split, the chunks already queued are cut to the new target too, so a receiver
    /// limit below the target costs three drops once, not per chunk.
    #[test]
    fn a_split_cuts_the_queued_chunks_to_the_new_target() {
        let mut o = Outbox::new(None, "audit", 1 << 20);
        for n in 0..3u8 {
            let mut b = builder_with(&[200_000; 4]);
            o.seal(&mut b, "audit", false, [n; 16]);
        }
        for _ in 0..3 {
            send_and_drop(&mut o);
        }
        assert!(o.target() < 450_000, "target {}", o.target());
        let sizes: Vec<usize> = o.chunks.iter().map(|c| c.records as usize).collect();
        assert_eq!(sizes, [2, 2, 2, 2, 2, 2], "every chunk cut in two");
        let ends: Vec<bool> = o.chunks.iter().map(|c| c.end.is_some()).collect();
        assert_eq!(ends, [false, true, false, true, false, true]);
    }

    /// Three drops and a probe that worked can also be a receiver that restarted at the wrong
    /// moments: the record goes once more, first on a fresh connection, and taken there it is
    /// delivered, not set aside. A drop on that connection before it went out is no verdict.
    #[test]
    fn a_record_taken_on_the_confirming_connection_is_not_set_aside() {
        let mut o = Outbox::new(None, "audit", 1 << 20);
        let mut b = builder_with(&[200_000]);
        o.seal(&mut b, "audit", false, [20; 16]);
        let mut b = builder_with(&[40]);
        o.seal(&mut b, "audit", false, [21; 16]);
        let suspect = o.chunks[0].id;
        for _ in 0..3 {
            send_and_drop(&mut o);
        }
        o.rewind();
        let mut w = unlimited();
        o.write_to(&mut w, Instant::now()).unwrap();
        let probe = sent_ids(&o);
        assert_eq!(probe.len(), 1);
        assert_ne!(probe[0], suspect);
        o.ack(&probe[0], Instant::now()).unwrap();
        assert!(o.take_reconnect());
        // The fresh connection drops before writing anything: no verdict.
        o.rewind();
        o.dropped_by_peer();
        assert!(o.take_rejected().is_empty());
        assert_eq!(o.unacked(), 1);
        // The next one takes it.
        o.rewind();
        o.write_to(&mut w, Instant::now()).unwrap();
        assert!(o.chunks[0].sent_at.is_some() && o.chunks[0].id == suspect);
        o.ack(&suspect, Instant::now()).unwrap();
        assert!(o.take_rejected().is_empty());
        assert_eq!(o.unacked(), 0);
        assert_eq!(o.acked_total.records, 2);
    }

    /// A one-record chunk no larger than messages the receiver took before is not rejected
    /// even when the probe succeeds: its drops were a passing fault.
    #[test]
    fn a_record_no_larger_than_what_was_taken_before_is_never_rejected() {
        let mut o = Outbox::new(None, "audit", 1 << 20);
        let mut w = unlimited();
        let mut b = builder_with(&[5000]);
        o.seal(&mut b, "audit", false, [10; 16]);
        o.write_to(&mut w, Instant::now()).unwrap();
        let first = o.chunks[0].id;
        o.ack(&first, Instant::now()).unwrap();
        for (n, size) in [(11u8, 100), (12, 100)] {
            let mut b = builder_with(&[size]);
            o.seal(&mut b, "audit", false, [n; 16]);
        }
        for _ in 0..3 {
            send_and_drop(&mut o);
        }
        o.rewind();
        o.write_to(&mut w, Instant::now()).unwrap();
        let probe_sent = sent_ids(&o);
        o.ack(&probe_sent[0], Instant::now()).unwrap();
        assert!(o.take_rejected().is_empty());
        assert_eq!(o.unacked(), 1, "the suspect stays, to be sent again");
        assert!(o.take_reconnect(), "a new connection sends it first");
        assert!(!o.take_reconnect());
        o.rewind();
        o.write_to(&mut w, Instant::now()).unwrap();
        assert!(
            o.chunks[0].sent_at.is_some(),
            "and goes out first on the next connection"
        );
    }
}
