//! Chunks between the file and the receiver: building -> queued -> written -> acked. The committed
//! position is the end of the longest acked prefix, so a crash at any moment resends at most the
//! unacked window and never skips data the receiver has not confirmed.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::time::Instant;

use crate::escape;
use crate::forward;
use crate::offsets::Position;

pub struct Chunk {
    pub id: [u8; 24],
    /// The complete PackedForward message; empty for a position marker.
    frame: Vec<u8>,
    pub records: u64,
    /// Source bytes (lines with their newlines) the chunk covers, for the stats.
    pub source_bytes: u64,
    /// Where the file position may move once this chunk and all before it are acked.
    pub end: Position,
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
    frame: Vec<u8>,
    header: usize,
    capacity: usize,
    pub records: u64,
    pub source_bytes: u64,
    /// Set by the caller after each read batch.
    pub end: Option<Position>,
}

impl Builder {
    pub fn new(tag: &str, capacity: usize) -> Builder {
        let mut b = Builder {
            frame: Vec::new(),
            header: 0,
            capacity,
            records: 0,
            source_bytes: 0,
            end: None,
        };
        b.start(tag);
        b
    }

    fn start(&mut self, tag: &str) {
        self.frame = Vec::with_capacity(self.capacity);
        self.frame.push(0x93);
        // Writing into a Vec cannot fail.
        let _ = rmp::encode::write_str(&mut self.frame, tag);
        self.frame.extend_from_slice(&[0xc6, 0, 0, 0, 0]);
        self.header = self.frame.len();
    }

    /// Where entries are appended.
    pub fn entries(&mut self) -> &mut Vec<u8> {
        &mut self.frame
    }

    pub fn entries_len(&self) -> usize {
        self.frame.len() - self.header
    }

    /// Bytes of entries that still fit without growing the buffer.
    pub fn room(&self) -> usize {
        self.frame.capacity().saturating_sub(self.frame.len() + 64)
    }

    pub fn allocated(&self) -> usize {
        self.frame.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0 && self.end.is_none()
    }
}

/// CompressedPackedForward: `[tag, bin(gzip(entries)), {"chunk", "size", "compressed": "gzip"}]`.
/// Level 1: audit JSON compresses about 8:1 even so, and higher levels cost several times the CPU
/// for a few percent.
fn compressed_frame(tag: &str, entries: &[u8], records: u64, id: &[u8; 24]) -> Vec<u8> {
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
    let len = (frame.len() - header) as u32;
    frame[header - 4..header].copy_from_slice(&len.to_be_bytes());
    let _ = rmp::encode::write_map_len(&mut frame, 3);
    let _ = rmp::encode::write_str(&mut frame, "chunk");
    let _ = rmp::encode::write_str(&mut frame, std::str::from_utf8(id).unwrap_or(""));
    let _ = rmp::encode::write_str(&mut frame, "size");
    let _ = rmp::encode::write_uint(&mut frame, records);
    let _ = rmp::encode::write_str(&mut frame, "compressed");
    let _ = rmp::encode::write_str(&mut frame, "gzip");
    frame
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
}

impl Outbox {
    pub fn new(committed: Option<Position>) -> Outbox {
        Outbox {
            chunks: VecDeque::new(),
            next: 0,
            write_off: 0,
            bytes: 0,
            committed,
            acked_total: Acked::default(),
        }
    }

    /// Bytes held by unacked chunks.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn committed(&self) -> Option<&Position> {
        self.committed.as_ref()
    }

    /// Chunks not yet acked (position markers excluded).
    pub fn unacked(&self) -> usize {
        self.chunks.iter().filter(|c| !c.acked).count()
    }

    /// Turns the builder into a chunk. A builder with no records still carries a position
    /// (skipped lines, a finished file); it is kept in order and counts as acked at once.
    pub fn seal(&mut self, b: &mut Builder, tag: &str, gzip: bool, random: [u8; 16]) {
        let Some(end) = b.end.take() else { return };
        let id = forward::new_chunk_id(random);
        let mut frame = Vec::new();
        if b.records > 0 && gzip {
            frame = compressed_frame(tag, &b.frame[b.header..], b.records, &id);
            b.frame.truncate(b.header);
        } else if b.records > 0 {
            let len = b.entries_len() as u32;
            b.frame[b.header - 4..b.header].copy_from_slice(&len.to_be_bytes());
            // Writing into a Vec cannot fail.
            let _ = rmp::encode::write_map_len(&mut b.frame, 2);
            let _ = rmp::encode::write_str(&mut b.frame, "chunk");
            let _ = rmp::encode::write_str(&mut b.frame, std::str::from_utf8(&id).unwrap_or(""));
            let _ = rmp::encode::write_str(&mut b.frame, "size");
            let _ = rmp::encode::write_uint(&mut b.frame, b.records);
            frame = std::mem::take(&mut b.frame);
            b.start(tag);
        } else {
            b.frame.truncate(b.header);
        }
        self.bytes += frame.capacity();
        self.chunks.push_back(Chunk {
            id,
            frame,
            records: b.records,
            source_bytes: b.source_bytes,
            end,
            acked: b.records == 0,
            sent_at: None,
        });
        b.records = 0;
        b.source_bytes = 0;
        self.advance_commit();
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
        while self.next < self.chunks.len() && self.chunks[self.next].acked {
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
    pub fn ack(&mut self, id: &[u8]) -> Result<Acked, AckError> {
        let Some(c) = self
            .chunks
            .iter_mut()
            .find(|c| !c.acked && c.sent_at.is_some() && c.id[..] == *id)
        else {
            return Err(AckError::Unknown(escape::for_log(id, 64)));
        };
        c.acked = true;
        Ok(self.advance_commit())
    }

    fn advance_commit(&mut self) -> Acked {
        let mut done = Acked::default();
        while self.chunks.front().is_some_and(|c| c.acked) {
            let Some(c) = self.chunks.pop_front() else {
                break;
            };
            self.bytes -= c.frame.capacity();
            done.records += c.records;
            done.source_bytes += c.source_bytes;
            self.committed = Some(c.end);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offsets::FileId;

    fn pos(off: u64) -> Position {
        Position {
            id: FileId::default(),
            offset: off,
            name: "audit.log".into(),
        }
    }

    fn add(o: &mut Outbox, n: u8, records: u64, end: u64) {
        let mut b = Builder::new("audit", 64);
        if records > 0 {
            b.entries().extend_from_slice(&[0x92, 0x00, 0x80]);
        }
        b.records = records;
        b.source_bytes = end;
        b.end = Some(pos(end));
        o.seal(&mut b, "audit", false, [n; 16]);
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
        let mut o = Outbox::new(None);
        add(&mut o, 1, 1, 10);
        add(&mut o, 2, 1, 20);
        add(&mut o, 0, 0, 25); // a skipped over-long line: no records, just a position
        add(&mut o, 3, 1, 30);
        let now = Instant::now();
        let mut w = Trickle {
            out: Vec::new(),
            budget: usize::MAX,
        };
        assert!(o.write_to(&mut w, now).unwrap());
        let ids: Vec<[u8; 24]> = o.chunks.iter().map(|c| c.id).collect();
        // An ack for a chunk never sent on this connection is refused.
        assert!(matches!(o.ack(b"nope"), Err(AckError::Unknown(_))));
        // Out-of-order ack: nothing commits until the first one is acked.
        o.ack(&ids[1]).unwrap();
        assert_eq!(o.committed(), None);
        let done = o.ack(&ids[0]).unwrap();
        assert_eq!(
            (done.records, o.committed().map(|p| p.offset)),
            (2, Some(25))
        );
        // Reconnect: only the unacked chunk goes out again.
        o.rewind();
        let mut w2 = Trickle {
            out: Vec::new(),
            budget: usize::MAX,
        };
        assert!(o.write_to(&mut w2, now).unwrap());
        assert_eq!(w2.out, o.chunks[0].frame);
        o.ack(&ids[3]).unwrap();
        assert_eq!((o.committed().map(|p| p.offset), o.bytes()), (Some(30), 0));
        assert_eq!(o.acked_total.records, 3);
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut o = Outbox::new(None);
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
}
