//! Sans-IO line splitting for one file: feeds bytes in, hands complete lines out with the file
//! offset just past their newline, holds an unterminated tail until its newline arrives, and caps
//! how much of one line it will ever hold (`--max-line-size`).

/// What the splitter found.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A complete, non-empty line without its `\n` (and without a trailing `\r`).
    Line(&'a [u8]),
    /// A line longer than the cap, dropped; `start` is its offset in the file.
    TooLong { start: u64, len: u64 },
}

#[derive(Debug)]
pub struct Splitter {
    partial: Vec<u8>,
    /// File offset where `partial` (or the over-long line being skipped) starts.
    partial_start: u64,
    /// Set while discarding an over-long line until its newline.
    skipping: bool,
    /// File offset just past the last byte fed.
    fed_end: u64,
    max: usize,
}

impl Splitter {
    pub fn new(max_line: usize) -> Splitter {
        Splitter {
            partial: Vec::new(),
            partial_start: 0,
            skipping: false,
            fed_end: 0,
            max: max_line,
        }
    }

    /// Forgets any held tail and restarts at `offset` (new file, truncation).
    pub fn reset(&mut self, offset: u64) {
        self.partial = Vec::new();
        self.partial_start = offset;
        self.skipping = false;
        self.fed_end = offset;
    }

    /// Bytes held for an unterminated line.
    pub fn held(&self) -> usize {
        self.partial.capacity()
    }

    /// Length of the unterminated line held so far.
    pub fn unterminated(&self) -> usize {
        self.partial.len()
    }

    /// How much the held line's buffer may grow beyond the bytes the next read adds to it:
    /// `hold` doubles it when it fills, up to the cap.
    pub fn held_doubling(&self) -> usize {
        if self.partial.is_empty() {
            return 0;
        }
        let cap = self.partial.capacity();
        cap.min((self.max + 1).saturating_sub(cap))
    }

    /// Offset up to which every byte has been handed out or deliberately skipped: the position
    /// to commit once the lines handed out so far are acked.
    pub fn safe_offset(&self) -> u64 {
        self.partial_start
    }

    /// Splits `data`, which starts at file offset `offset` and directly follows what was fed
    /// before. `emit` gets each piece and the file offset just past it.
    pub fn feed(&mut self, data: &[u8], offset: u64, mut emit: impl FnMut(Piece<'_>, u64)) {
        let mut rest = data;
        let mut pos = offset;
        while let Some(nl) = memchr_nl(rest) {
            let end = pos + nl as u64 + 1;
            if self.skipping {
                self.skipping = false;
                emit(
                    Piece::TooLong {
                        start: self.partial_start,
                        len: end - self.partial_start,
                    },
                    end,
                );
            } else if self.partial.is_empty() {
                emit_line(&rest[..nl], self.max, pos, end, &mut emit);
            } else if self.partial.len() + nl - usize::from(ends_in_cr(&self.partial, &rest[..nl]))
                > self.max
            {
                self.partial = Vec::new();
                emit(
                    Piece::TooLong {
                        start: self.partial_start,
                        len: end - self.partial_start,
                    },
                    end,
                );
            } else {
                hold(&mut self.partial, &rest[..nl], self.max + 1);
                let line = std::mem::take(&mut self.partial);
                emit_line(&line, self.max, self.partial_start, end, &mut emit);
                // Keep the allocation for the next tail unless it was a big one.
                if line.capacity() <= 64 * 1024 {
                    self.partial = line;
                    self.partial.clear();
                }
            }
            rest = &rest[nl + 1..];
            pos = end;
            self.partial_start = end;
        }
        self.fed_end = pos + rest.len() as u64;
        if rest.is_empty() || self.skipping {
            return;
        }
        if self.partial.is_empty() {
            self.partial_start = pos;
        }
        // One byte past the cap is held: it may be the `\r` of a line exactly the cap long.
        if self.partial.len() + rest.len() > self.max + 1 {
            self.partial = Vec::new();
            self.skipping = true;
        } else {
            hold(&mut self.partial, rest, self.max + 1);
        }
    }

    /// At the end of a file that will never grow again (rotated away), a held tail is still a
    /// line: hand it out rather than lose it.
    pub fn finish(&mut self, mut emit: impl FnMut(Piece<'_>, u64)) {
        let end = self.fed_end;
        if self.skipping {
            emit(
                Piece::TooLong {
                    start: self.partial_start,
                    len: end - self.partial_start,
                },
                end,
            );
        } else if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            emit_line(&line, self.max, self.partial_start, end, &mut emit);
        }
        self.reset(end);
    }
}

/// Whether the line that `partial` and then `tail` make ends in `\r`.
fn ends_in_cr(partial: &[u8], tail: &[u8]) -> bool {
    tail.last().or(partial.last()) == Some(&b'\r')
}

/// Appends to the held tail. Grows its allocation by doubling, as `Vec` does, but never past
/// `most` (the longest tail ever held): `--mem-buf-limit` counts the allocation, and a tail of
/// 0.6 x the cap doubled to 1.2 x would hold more than the limit allows for.
fn hold(partial: &mut Vec<u8>, bytes: &[u8], most: usize) {
    let need = partial.len() + bytes.len();
    if need > partial.capacity() {
        let want = (partial.capacity() * 2).clamp(need, most.max(need));
        partial.reserve_exact(want - partial.len());
    }
    partial.extend_from_slice(bytes);
}

fn emit_line(line: &[u8], max: usize, start: u64, end: u64, emit: &mut impl FnMut(Piece<'_>, u64)) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > max {
        emit(
            Piece::TooLong {
                start,
                len: end - start,
            },
            end,
        );
    } else if !line.is_empty() {
        emit(Piece::Line(line), end);
    }
}

/// Finds the first `\n`. Audit lines are kilobytes long, so this search is most of the
/// splitter's cost: it tests 64 bytes per step, written as an OR of byte compares with no early
/// exit inside the block, which LLVM compiles to a handful of vector compares and one mask test
/// (SSE2 on x86-64, NEON on aarch64).
fn memchr_nl(s: &[u8]) -> Option<usize> {
    let mut blocks = s.chunks_exact(64);
    let mut base = 0;
    for block in &mut blocks {
        if has_nl(block) {
            return Some(base + first_nl(block));
        }
        base += 64;
    }
    // The last bytes: padded with zeros, which are never a newline, to use the same test.
    let rest = blocks.remainder();
    let mut block = [0u8; 64];
    block[..rest.len()].copy_from_slice(rest);
    has_nl(&block).then(|| base + first_nl(&block))
}

#[inline(always)]
fn has_nl(block: &[u8]) -> bool {
    block.iter().fold(0, |a, &b| a | u8::from(b == b'\n')) != 0
}

/// Index of the first `\n` in a 64-byte block that has one: found 16 bytes at a time, the
/// lowest 0xff byte of the compare mask giving its position.
#[inline(always)]
fn first_nl(block: &[u8]) -> usize {
    let mut at = 0;
    for part in block.chunks_exact(16) {
        let mut mask = [0u8; 16];
        for (m, &b) in mask.iter_mut().zip(part) {
            *m = u8::from(b == b'\n').wrapping_neg();
        }
        let mask = u128::from_le_bytes(mask);
        if mask != 0 {
            return at + (mask.trailing_zeros() / 8) as usize;
        }
        at += 16;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Got {
        L(String, u64),
        Long(u64, u64, u64),
    }

    fn run(max: usize, feeds: &[&[u8]], finish: bool) -> (Vec<Got>, u64) {
        let mut s = Splitter::new(max);
        let mut out = Vec::new();
        let mut off = 0u64;
        let mut sink = |p: Piece<'_>, end: u64| match p {
            Piece::Line(l) => out.push(Got::L(String::from_utf8_lossy(l).into(), end)),
            Piece::TooLong { start, len } => out.push(Got::Long(start, len, end)),
        };
        for f in feeds {
            s.feed(f, off, &mut sink);
            off += f.len() as u64;
        }
        if finish {
            s.finish(&mut sink);
        }
        (out, s.safe_offset())
    }

    use Got::*;

    #[test]
    fn table() {
        let cases: Vec<(usize, Vec<&[u8]>, bool, Vec<Got>, u64)> = vec![
            (
                100,
                vec![b"a\nbb\n"],
                false,
                vec![L("a".into(), 2), L("bb".into(), 5)],
                5,
            ),
            (100, vec![b"a\r\n\n\r\nc"], false, vec![L("a".into(), 3)], 6),
            (
                100,
                vec![b"ab", b"c\nd"],
                false,
                vec![L("abc".into(), 4)],
                4,
            ),
            (
                100,
                vec![b"ab", b"c", b"d\n"],
                false,
                vec![L("abcd".into(), 5)],
                5,
            ),
            (100, vec![b"tail"], true, vec![L("tail".into(), 4)], 4),
            (100, vec![b""], false, vec![], 0),
            (
                3,
                vec![b"abcd\nxy\n"],
                false,
                vec![Long(0, 5, 5), L("xy".into(), 8)],
                8,
            ),
            (
                3,
                vec![b"ab", b"cd", b"ef\nz\n"],
                false,
                vec![Long(0, 7, 7), L("z".into(), 9)],
                9,
            ),
            (
                3,
                vec![b"abcdef", b"gh", b"\nok\n"],
                false,
                vec![Long(0, 9, 9), L("ok".into(), 12)],
                12,
            ),
            // The cap counts the line without its "\r".
            (3, vec![b"abc\r\n"], false, vec![L("abc".into(), 5)], 5),
            (
                3,
                vec![b"x\nabcdefg"],
                true,
                vec![L("x".into(), 2), Long(2, 7, 9)],
                9,
            ),
            // A line exactly the cap long, its "\r" and "\n" in later reads than its text.
            (
                3,
                vec![b"abc", b"\r", b"\nz\n"],
                false,
                vec![L("abc".into(), 5), L("z".into(), 7)],
                7,
            ),
            (
                3,
                vec![b"ab", b"c\r", b"\n"],
                false,
                vec![L("abc".into(), 5)],
                5,
            ),
            (3, vec![b"abc\r", b"x\n"], false, vec![Long(0, 6, 6)], 6),
            (
                3,
                vec![b"abc", b"d", b"\r\n"],
                false,
                vec![Long(0, 6, 6)],
                6,
            ),
        ];
        for (i, (max, feeds, finish, want, safe)) in cases.into_iter().enumerate() {
            let (got, got_safe) = run(max, &feeds, finish);
            assert_eq!(got, want, "case {i}");
            assert_eq!(got_safe, safe, "case {i} safe offset");
        }
    }

    #[test]
    fn memchr_matches_the_naive_search() {
        let mut buf = vec![b'x'; 40];
        assert_eq!(memchr_nl(&buf), None);
        for i in 0..40 {
            for j in i..40 {
                buf.fill(0x8a); // bytes with the high bit set must not confuse the bit trick
                buf[j] = b'\n';
                buf[i] = b'\n';
                assert_eq!(memchr_nl(&buf[..]), Some(i), "{i} {j}");
                assert_eq!(memchr_nl(&buf[..i]), None);
            }
        }
        assert_eq!(memchr_nl(b"\x0b\n"), Some(1));
    }

    #[test]
    fn memchr_finds_every_position_in_long_inputs() {
        // Longer than one 64-byte block, so the block loop, the in-block search and the padded
        // tail are all exercised, with a second newline after the first and none at all.
        for len in [63, 64, 65, 127, 128, 129, 200] {
            let mut buf = vec![0x8a; len];
            assert_eq!(memchr_nl(&buf), None, "{len}");
            for i in 0..len {
                buf.fill(b'x');
                buf[i] = b'\n';
                if i + 17 < len {
                    buf[i + 17] = b'\n';
                }
                assert_eq!(memchr_nl(&buf), Some(i), "{len} {i}");
                assert_eq!(memchr_nl(&buf[..i]), None, "{len} {i}");
                assert_eq!(
                    memchr_nl(&buf[i + 1..]).map(|j| j + i + 1),
                    (i + 17 < len).then_some(i + 17)
                );
            }
        }
    }

    #[test]
    fn every_split_point_gives_the_same_lines() {
        // With the cap at 7 the first line is exactly the cap long before its "\r\n"; at 6 it is
        // one too long.
        let data = b"{\"a\":1}\r\n\nsecond line\nthird\r\n";
        for max in [100, 11, 7, 6] {
            let (whole, _) = run(max, &[data], false);
            assert_eq!(whole.len(), 3, "cap {max}: {whole:?}");
            for cut in 0..data.len() {
                for cut2 in cut..data.len() {
                    let parts = [&data[..cut], &data[cut..cut2], &data[cut2..]];
                    let (got, safe) = run(max, &parts, false);
                    assert_eq!(got, whole, "cap {max}, cuts at {cut} and {cut2}");
                    assert_eq!(safe, data.len() as u64);
                }
            }
        }
    }

    #[test]
    fn a_held_tail_never_allocates_past_the_cap() {
        let max = 10_000;
        let mut s = Splitter::new(max);
        let mut off = 0;
        for _ in 0..(max / 7 + 1) {
            s.feed(b"xxxxxxx", off, |_, _| {});
            off += 7;
            assert!(
                s.held() <= max + 1 || s.skipping,
                "held {} at {off}",
                s.held()
            );
        }
        assert!(s.skipping, "a tail past the cap is dropped");
        assert_eq!(s.held(), 0);
    }

    /// The read budget counts on these two: a feed grows the held buffer by at most the bytes it
    /// adds plus `held_doubling`, and `unterminated` is the line the next newline hands out.
    #[test]
    fn held_growth_is_announced_before_each_feed() {
        let max = 100_000;
        for step in [1usize, 7, 4096, 30_000] {
            let mut s = Splitter::new(max);
            let mut off = 0u64;
            let mut line = Vec::new();
            while line.len() + step <= max {
                let (before, announced) = (s.held(), s.held_doubling());
                let piece = vec![b'x'; step];
                s.feed(&piece, off, |_, _| panic!("no newline fed"));
                off += step as u64;
                line.extend_from_slice(&piece);
                assert!(
                    s.held() <= before + step + announced,
                    "step {step}: held {} from {before} with {announced} announced",
                    s.held()
                );
                assert_eq!(s.unterminated(), line.len(), "step {step}");
            }
            let mut got = Vec::new();
            s.feed(b"\n", off, |p, _| match p {
                Piece::Line(l) => got.push(l.to_vec()),
                Piece::TooLong { .. } => panic!("step {step}: too long"),
            });
            assert_eq!(got, [line], "step {step}");
            assert_eq!((s.unterminated(), s.held_doubling()), (0, 0), "step {step}");
        }
    }
}
