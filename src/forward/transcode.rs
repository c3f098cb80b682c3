//! Hot path from a kube-apiserver audit line to a Fluent Forward entry: one JSON object line
//! becomes `[EventTime, record-map]` in msgpack, written straight into the caller's buffer with no
//! intermediate tree and no allocation besides the growth of that buffer (and, for nesting deeper
//! than kube-apiserver's, a small stack of open containers). Also owns RFC 3339 -> EventTime. A line that is not a strict JSON object (RFC 8259, valid UTF-8, nesting <= 256)
//! becomes `{"log": <line>}` stamped with the caller's "now", so no line is ever dropped.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::sys::json_special_mask;

/// Fluentd's EventTime: seconds and nanoseconds since the Unix epoch (Forward protocol v1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventTime {
    pub secs: u32,
    pub nanos: u32,
}

/// What `append_entry` made of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The line was a JSON object and its record carries every value of it.
    Json,
    /// The line was not a strict JSON object; the record is `{"log": <line>}` at `now`.
    Fallback,
}

/// kube-apiserver nests far less than this; the cap bounds the parser's stack of open containers.
const MAX_DEPTH: usize = 256;
/// Enclosing containers kept in a stack array by the parser; deeper ones go to the heap.
const NEAR_PARENTS: usize = 16;
const STAGE_KEY: &[u8] = b"stageTimestamp";
const RECEIVED_KEY: &[u8] = b"requestReceivedTimestamp";
const _: () = assert!(STAGE_KEY.len() == 14 && RECEIVED_KEY.len() == 24);
/// Msgpack str32/map32/array32 lengths are u32.
const MAX_MSGPACK_LEN: usize = u32::MAX as usize;

/// Why a line was not transcoded. Only the tests read it, to prove that each rejected input is
/// rejected for the intended reason; the hot path just discards it. A one-byte value keeps every
/// `Result` of the parser in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Invalid {
    /// Longer than a msgpack str32 can carry.
    TooLong,
    Utf8,
    /// The line (after whitespace) does not start with `{`.
    NotObject,
    /// Something other than whitespace follows the top-level object.
    Trailing,
    ExpectedValue,
    /// The line ends where a value should start.
    EndOfLine,
    /// Nesting deeper than `MAX_DEPTH`.
    TooDeep,
    ExpectedKey,
    ExpectedColon,
    /// Neither `,` nor `}` after a member.
    ObjectSeparator,
    /// Neither `,` nor `]` after an element.
    ArraySeparator,
    /// Not `true`, `false` or `null`.
    Literal,
    /// A byte below 0x20 inside a string.
    ControlChar,
    Unterminated,
    /// A backslash followed by anything but `"\/bfnrtu`.
    Escape,
    /// `\u` not followed by four hex digits.
    UnicodeEscape,
    LeadingZero,
    ExpectedDigit,
    /// Cannot happen (the number slice is validated ASCII); kept as a value rather than a panic.
    NumberText,
    /// Overflows f64 (e.g. `1e400`).
    NumberRange,
}

/// Appends one entry `[time, record]` for `line` (no trailing newline; caller already stripped
/// `\n` and a trailing `\r`) to `out`.
pub fn append_entry(line: &[u8], now: EventTime, out: &mut Vec<u8>) -> Kind {
    let (kind, end) = append_entry_at(line, now, out, out.len());
    out.truncate(end);
    kind
}

/// Writes one entry for `line` into `out` from `at` on and returns what it made and where the
/// entry ends. `out` may hold bytes past `at` (a reused buffer's earlier contents, or room an
/// earlier entry left): they are overwritten, and whatever lies past the returned end is left for
/// the next entry. A chunk builder that keeps its buffer's length at the high-water mark this
/// way never has the room zeroed again, where truncating after each entry zeroed every byte of
/// output a second time (3% of the forwarder's CPU).
pub fn append_entry_at(line: &[u8], now: EventTime, out: &mut Vec<u8>, at: usize) -> (Kind, usize) {
    debug_assert!(at <= out.len());
    match transcode(line, now, out, at) {
        Ok(end) => (Kind::Json, end),
        Err(_) => {
            out.truncate(at);
            append_fallback(line, now, out);
            (Kind::Fallback, out.len())
        }
    }
}

/// One JSON object (a Kubernetes API answer, a JSON kubeconfig) as a msgpack map, parsed with
/// the same strict grammar as the audit lines, so the project has one JSON parser. On error `out`
/// is left as it was.
pub fn object_to_msgpack(json: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let base = out.len();
    let result = (|| {
        if json.len() > MAX_MSGPACK_LEN {
            return Err(Invalid::TooLong);
        }
        if !is_ascii(json) && std::str::from_utf8(json).is_err() {
            return Err(Invalid::Utf8);
        }
        let i = skip_ws(json, 0);
        if json.get(i) != Some(&b'{') {
            return Err(Invalid::NotObject);
        }
        let mut times = Times::default();
        let (end, at) = top_object(json, i, out, out.len(), &mut times)?;
        out.truncate(at);
        if skip_ws(json, end) != json.len() {
            return Err(Invalid::Trailing);
        }
        Ok(())
    })();
    result.map_err(|e| {
        out.truncate(base);
        format!("not a valid JSON object ({e:?})")
    })
}

/// RFC 3339 timestamp -> EventTime, exact to the nanosecond with integer arithmetic.
///
/// Accepts `YYYY-MM-DD(T|t| )HH:MM:SS[.digits](Z|z|+HH:MM|-HH:MM)`. Fraction digits beyond the
/// ninth are truncated. A leap second (`:60`) counts as the first second of the next minute, which
/// is what POSIX time does. Instants before 1970 or past `u32` seconds are `None`, since an
/// EventTime cannot carry them.
pub fn parse_rfc3339(s: &[u8]) -> Option<EventTime> {
    if s.len() < 20
        || s[4] != b'-'
        || s[7] != b'-'
        || !matches!(s[10], b'T' | b't' | b' ')
        || s[13] != b':'
        || s[16] != b':'
    {
        return None;
    }
    let year = digits(s, 0, 4)?;
    let month = digits(s, 5, 2)?;
    let day = digits(s, 8, 2)?;
    let hour = digits(s, 11, 2)?;
    let minute = digits(s, 14, 2)?;
    let second = digits(s, 17, 2)?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }

    let mut i = 19;
    let mut nanos: u32 = 0;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let first = i;
        while let Some(&d) = s.get(i) {
            if !d.is_ascii_digit() {
                break;
            }
            if i - first < 9 {
                nanos = nanos * 10 + u32::from(d - b'0');
            }
            i += 1;
        }
        let n = i - first;
        if n == 0 {
            return None;
        }
        // A table, not a loop multiplying by ten: LLVM vectorises such a loop into dozens of
        // instructions, and this runs for every line.
        const SCALE: [u32; 9] = [
            100_000_000,
            10_000_000,
            1_000_000,
            100_000,
            10_000,
            1_000,
            100,
            10,
            1,
        ];
        nanos *= SCALE[(n - 1).min(8)];
    }

    let offset: i64 = match s.get(i) {
        Some(b'Z' | b'z') if s.len() == i + 1 => 0,
        Some(&sign @ (b'+' | b'-')) if s.len() == i + 6 && s[i + 3] == b':' => {
            let oh = digits(s, i + 1, 2)?;
            let om = digits(s, i + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };

    let days = days_from_civil(i64::from(year), i64::from(month), i64::from(day));
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset;
    let secs = u32::try_from(secs).ok()?;
    Some(EventTime { secs, nanos })
}

/// Appends the EventTime as msgpack ext type 0 (fixext8: 0xd7 0x00, secs u32 BE, nanos u32 BE).
pub fn write_event_time(t: EventTime, out: &mut Vec<u8>) {
    out.extend_from_slice(&event_time_ext(t));
}

/// The EventTime as `write_event_time` writes it, for writing in place.
fn event_time_ext(t: EventTime) -> [u8; 10] {
    let mut b = [0xd7, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    b[2..].copy_from_slice(&event_time_payload(t));
    b
}

/// The wall clock as an EventTime; a clock before 1970 reads as the epoch, one past 2106 as the
/// last representable second.
pub fn now_event_time() -> EventTime {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => EventTime {
            secs: u32::try_from(d.as_secs()).unwrap_or(u32::MAX),
            nanos: d.subsec_nanos(),
        },
        Err(_) => EventTime { secs: 0, nanos: 0 },
    }
}

fn event_time_payload(t: EventTime) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&t.secs.to_be_bytes());
    b[4..].copy_from_slice(&t.nanos.to_be_bytes());
    b
}

/// `n` ASCII digits at `s[at..]` as a number, or `None` if any is not a digit.
fn digits(s: &[u8], at: usize, n: usize) -> Option<u32> {
    let mut v = 0u32;
    for &d in s.get(at..at + n)? {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(d - b'0');
    }
    Some(v)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`):
/// counting from March makes the leap day the last day of the year, so no table is needed.
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Where the top-level timestamp strings were written in `out`, noted while transcoding so the
/// line is read only once. They are parsed when the top-level map is complete and before its
/// header may grow (which shifts them); values nested deeper only ever shift bytes after them.
/// A repeated key overrides the earlier one, as in any JSON decoder that builds a map.
#[derive(Default)]
struct Times {
    stage: Option<(usize, usize)>,
    received: Option<(usize, usize)>,
    picked: Option<EventTime>,
}

/// Which timestamp a top-level key names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TimeKey {
    None,
    Stage,
    Received,
}

impl TimeKey {
    #[inline]
    fn of(key: &[u8]) -> TimeKey {
        match key {
            STAGE_KEY => TimeKey::Stage,
            RECEIVED_KEY => TimeKey::Received,
            _ => TimeKey::None,
        }
    }
}

impl Times {
    /// Records where the string value of a timestamp key was written, or `None` when the value
    /// is not a string.
    fn note(&mut self, key: TimeKey, at: Option<(usize, usize)>) {
        match key {
            TimeKey::Stage => self.stage = at,
            TimeKey::Received => self.received = at,
            TimeKey::None => {}
        }
    }

    #[inline(never)]
    fn pick(&mut self, out: &[u8]) {
        let parse =
            |r: Option<(usize, usize)>| r.and_then(|(at, end)| parse_rfc3339(&out[at..end]));
        self.picked = parse(self.stage).or_else(|| parse(self.received));
    }
}

/// The entry for `line` written into `out` from `at` on; returns where it ends. Bytes of `out`
/// past that end are left as they were.
fn transcode(line: &[u8], now: EventTime, out: &mut Vec<u8>, at: usize) -> Result<usize, Invalid> {
    if line.len() > MAX_MSGPACK_LEN {
        return Err(Invalid::TooLong);
    }
    // One check up front lets the string scanner copy non-ASCII bytes blindly, and the grammar
    // rejects every non-ASCII byte outside strings. Audit lines are nearly always pure ASCII,
    // which a vectorised test settles for a fraction of the cost of full validation.
    if !is_ascii(line) && std::str::from_utf8(line).is_err() {
        return Err(Invalid::Utf8);
    }
    // Msgpack is rarely longer than the JSON (only floats such as `1.0` grow), so one reservation
    // usually covers the whole entry. Exact, not doubling: a chunk's buffer starts at its target
    // size, so it grows only for the entry that fills it (sealed right after), and doubling a
    // buffer for one near-cap line would hold far more than `--mem-buf-limit` allows for.
    out.reserve_exact((at + line.len() + 64).saturating_sub(out.len()));
    let mut head = [0x92; 11];
    head[1..].copy_from_slice(&event_time_ext(now));
    let time_at = at + 1;
    let o = &mut Out { buf: out, at };
    o.block(&head, head.len());
    let body_at = o.at;

    let i = skip_ws(line, 0);
    if line.get(i) != Some(&b'{') {
        return Err(Invalid::NotObject);
    }
    let mut times = Times::default();
    let (end, at) = top_object(line, i, out, body_at, &mut times)?;
    if skip_ws(line, end) != line.len() {
        return Err(Invalid::Trailing);
    }
    // The time precedes the map in the entry, so it is patched in once the keys have been seen.
    let t = times.picked.unwrap_or(now);
    out[time_at + 2..time_at + 10].copy_from_slice(&event_time_payload(t));
    Ok(at)
}

#[inline(always)]
fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while s.get(i).is_some_and(|&c| is_ws(c)) {
        i += 1;
    }
    i
}

#[inline(always)]
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether every byte is below 0x80. Written as one OR over the whole line, with no early exit,
/// so LLVM vectorises it into a few instructions per 64 bytes; std's `is_ascii` (and the ASCII
/// fast path of `from_utf8`) test as they go and cost two to three times as much.
fn is_ascii(s: &[u8]) -> bool {
    s.iter().fold(0, |a, &b| a | b) < 0x80
}

/// Zeroed room is added to the output this many bytes at a time: enough for most entries in one
/// or two steps, small enough that zeroing it stays a short vector loop.
const OUT_STEP: usize = 1024;

/// The transcoder's view of the output: the entry so far is `buf[..at]`, and `buf[at..]` is zeroed
/// room, added a step at a time, that the next bytes overwrite. Writing into a slice needs one
/// bounds check per write where `Vec` appends update the length each time, and a fixed-size copy
/// into a slice always compiles to plain moves. The hot path (`top_object`, the escape loop)
/// writes through a plain slice of the same room instead; `Out` serves the out-of-line writers,
/// which may grow it.
struct Out<'a> {
    buf: &'a mut Vec<u8>,
    at: usize,
}

impl<'a> Out<'a> {
    /// Writes all of `block` but keeps only its first `used` bytes (at most `N`): a fixed-size
    /// copy and a cut is cheaper than a copy of exactly `used` bytes.
    #[inline(always)]
    fn block<const N: usize>(&mut self, block: &[u8; N], used: usize) {
        let at = self.at;
        match self.buf.get_mut(at..at + N) {
            Some(room) => room.copy_from_slice(block),
            None => grow_and_write(self.buf, at, block),
        }
        self.at = at + used;
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.block(&[b], 1);
    }

    #[inline]
    fn slice(&mut self, bytes: &[u8]) {
        let at = self.at;
        match self.buf.get_mut(at..at + bytes.len()) {
            Some(room) => room.copy_from_slice(bytes),
            None => grow_and_write(self.buf, at, bytes),
        }
        self.at = at + bytes.len();
    }
}

/// Adds room for `bytes` at `at` in `buf` (stopping at the allocation's capacity while that is
/// enough, so growing the room never reallocates needlessly) and writes them. A free function
/// taking `at` by value, as are the other out-of-line writers: were `Out` passed by reference to
/// any of them, its cursor would have to live in memory rather than a register.
#[cold]
#[inline(never)]
fn grow_and_write(buf: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    let end = at + bytes.len();
    let len = (buf.len() + OUT_STEP).min(buf.capacity()).max(end);
    buf.resize(len, 0);
    buf[at..end].copy_from_slice(bytes);
}

/// Transcodes the object at `s[start] == b'{'` into `buf` from `at` on; returns the index after
/// it and the end of the output.
///
/// Iterative rather than recursive: the containers that enclose the current one wait in `near`
/// and `far`, so a member costs no call and the state stays in registers. The common tokens are
/// written into `room`, all of `buf` borrowed as a slice: its pointer and length are then plain
/// values, where through `buf` they would be reloaded after every byte stored (LLVM cannot tell
/// that the bytes are not the `Vec` itself). Whatever needs `buf` (growth, escapes, long strings,
/// numbers) is out of line and `room` is borrowed anew after it.
///
/// Members and elements each have a loop of their own, left only when a container opens or
/// closes: a state variable dispatched after every token compiled to an indirect jump per token
/// (LLVM did not thread the constant states through it), most of it mispredicted on the
/// alternation of keys, strings and nested objects.
fn top_object(
    s: &[u8],
    start: usize,
    buf: &mut Vec<u8>,
    mut at: usize,
    times: &mut Times,
) -> Result<(usize, usize), Invalid> {
    // Each enclosing container as (where its header placeholder is, members so far); whether it
    // is an object is read back from the placeholder, which stays until the container closes.
    // The first few live on the stack (kube-apiserver nests at most about 15 deep); zeroing room
    // for all of `MAX_DEPTH` on every line would cost more than some short lines themselves.
    let mut near = [(0usize, 0usize); NEAR_PARENTS];
    let mut far = Vec::new();
    let mut depth = 1;
    let mut hdr = at;
    let mut count = 0usize;
    let mut room = buf.as_mut_slice();
    if room.len() <= at {
        room = regrow(buf, at + 1);
    }
    room[at] = 0x80;
    at += 1;
    let mut i = skip_ws(s, start + 1);
    if s.get(i) == Some(&b'}') {
        times.pick(&room[..at]);
        return Ok((i + 1, at));
    }
    let mut object = true;

    // One value at `i` (whitespace may come first) of the current container; `$slot` says which
    // timestamp, if any, it is. Opening a non-empty container moves the parser into it and
    // starts over at `$nest` (passed in, as macro hygiene hides the loop's label); an empty one
    // is written whole, like a scalar. A macro, not a function: each of its two uses is then
    // specialised for objects or arrays.
    macro_rules! value {
        ($nest:lifetime, $slot:expr) => {{
            let slot: TimeKey = $slot;
            let c = match s.get(i) {
                Some(&c) if !is_ws(c) => c,
                _ => {
                    i = skip_ws(s, i);
                    match s.get(i) {
                        Some(&c) => c,
                        None => return Err(Invalid::EndOfLine),
                    }
                }
            };
            if c == b'"' {
                let body;
                (body, i, at) = match short_string(s, i, room, at) {
                    Some(done) => done,
                    None => {
                        let done = string(s, i + 1, buf, at)?;
                        room = buf.as_mut_slice();
                        done
                    }
                };
                if slot != TimeKey::None {
                    times.note(slot, Some((body, at)));
                }
            } else {
                if slot != TimeKey::None {
                    times.note(slot, None);
                }
                match c {
                    b'{' | b'[' => {
                        if depth == MAX_DEPTH {
                            return Err(Invalid::TooDeep);
                        }
                        if room.len() <= at {
                            room = regrow(buf, at + 1);
                        }
                        let (tag, close) = if c == b'{' {
                            (0x80, b'}')
                        } else {
                            (0x90, b']')
                        };
                        room[at] = tag;
                        at += 1;
                        i = skip_ws(s, i + 1);
                        if s.get(i) == Some(&close) {
                            i += 1;
                        } else {
                            match near.get_mut(depth - 1) {
                                Some(p) => *p = (hdr, count),
                                None => far.push((hdr, count)),
                            }
                            depth += 1;
                            hdr = at - 1;
                            count = 0;
                            object = c == b'{';
                            continue $nest;
                        }
                    }
                    b't' | b'f' | b'n' | b'-' | b'0'..=b'9' => {
                        let word = match c {
                            b't' => Some((&b"true"[..], 0xc3)),
                            b'f' => Some((&b"false"[..], 0xc2)),
                            b'n' => Some((&b"null"[..], 0xc0)),
                            _ => None,
                        };
                        match word {
                            Some((word, tag)) => {
                                if !s[i..].starts_with(word) {
                                    return Err(Invalid::Literal);
                                }
                                if room.len() <= at {
                                    room = regrow(buf, at + 1);
                                }
                                room[at] = tag;
                                at += 1;
                                i += word.len();
                            }
                            None => match small_uint(s, i) {
                                Some((v, end)) => {
                                    let (block, n) = small_uint_msgpack(v);
                                    let dst = match room.get_mut(at..at + 3) {
                                        Some(dst) => dst,
                                        None => {
                                            room = regrow(buf, at + 3);
                                            &mut room[at..at + 3]
                                        }
                                    };
                                    dst.copy_from_slice(&block);
                                    at += n;
                                    i = end;
                                }
                                None => {
                                    (i, at) = number(s, i, buf, at)?;
                                    room = buf.as_mut_slice();
                                }
                            },
                        }
                    }
                    _ => return Err(Invalid::ExpectedValue),
                }
            }
        }};
    }

    'nest: loop {
        if object {
            loop {
                if s.get(i) != Some(&b'"') {
                    return Err(Invalid::ExpectedKey);
                }
                let key_at;
                (key_at, i, at) = match short_string(s, i, room, at) {
                    Some(done) => done,
                    None => {
                        let done = string(s, i + 1, buf, at)?;
                        room = buf.as_mut_slice();
                        done
                    }
                };
                // The length first: it is at hand, where the key's bytes cost a bounds check.
                let slot = if depth == 1 && matches!(at - key_at, 14 | 24) {
                    TimeKey::of(&room[key_at..at])
                } else {
                    TimeKey::None
                };
                // Compact JSON, the only kind kube-apiserver writes, has the colon right
                // after the key and the value right after the colon: whitespace is looked
                // for only when the expected byte is not there.
                if s.get(i) != Some(&b':') {
                    i = skip_ws(s, i);
                    if s.get(i) != Some(&b':') {
                        return Err(Invalid::ExpectedColon);
                    }
                }
                i += 1;
                value!('nest, slot);
                count += 1;
                match next_byte(s, &mut i) {
                    Some(b',') => i = skip_ws_after(s, i + 1),
                    Some(b'}') => {
                        i += 1;
                        break;
                    }
                    _ => return Err(Invalid::ObjectSeparator),
                }
            }
        } else {
            loop {
                value!('nest, TimeKey::None);
                count += 1;
                match next_byte(s, &mut i) {
                    Some(b',') => i = skip_ws_after(s, i + 1),
                    Some(b']') => {
                        i += 1;
                        break;
                    }
                    _ => return Err(Invalid::ArraySeparator),
                }
            }
        }
        // The container is complete, and so may be those around it: each one's separator after
        // the value just closed is read here, so that the member and element loops need not
        // ask on every turn whether they resume past a nested value.
        loop {
            if depth == 1 {
                times.pick(&room[..at]);
            }
            let (fix, tag16) = if object { (0x80, 0xde) } else { (0x90, 0xdc) };
            if count < 16 {
                room[hdr] = fix | count as u8;
            } else {
                at = widen_container(buf, at, hdr, count, tag16);
                room = buf.as_mut_slice();
            }
            if depth == 1 {
                return Ok((i, at));
            }
            depth -= 1;
            (hdr, count) = match near.get(depth - 1) {
                Some(&p) => p,
                // Pushed when this depth was entered from above.
                None => far.pop().unwrap_or_default(),
            };
            object = room[hdr] == 0x80;
            count += 1;
            match next_byte(s, &mut i) {
                Some(b',') => {
                    i = skip_ws_after(s, i + 1);
                    continue 'nest;
                }
                Some(b'}') if object => i += 1,
                Some(b']') if !object => i += 1,
                _ if object => return Err(Invalid::ObjectSeparator),
                _ => return Err(Invalid::ArraySeparator),
            }
        }
    }
}

/// The byte at `*i` after any whitespace, moving `*i` to it.
#[inline(always)]
fn next_byte(s: &[u8], i: &mut usize) -> Option<u8> {
    match s.get(*i) {
        Some(&c) if !is_ws(c) => Some(c),
        _ => {
            *i = skip_ws(s, *i);
            s.get(*i).copied()
        }
    }
}

/// `skip_ws` for where compact JSON has no whitespace: one test when there is none.
#[inline(always)]
fn skip_ws_after(s: &[u8], i: usize) -> usize {
    if s.get(i).is_some_and(|&c| is_ws(c)) {
        skip_ws(s, i)
    } else {
        i
    }
}

/// Grows the zeroed room of `buf` to at least `end` (as `grow_and_write` does) and lends it out
/// again.
#[cold]
#[inline(never)]
fn regrow(buf: &mut Vec<u8>, end: usize) -> &mut [u8] {
    let len = (buf.len() + OUT_STEP).min(buf.capacity()).max(end);
    buf.resize(len, 0);
    buf.as_mut_slice()
}

/// The string at `s[i] == b'"'` when it has no escape, is shorter than 63 bytes but not 31
/// long, is not among the last bytes of the line and fits in `room` from `at` on: nearly every
/// key and value of an audit line. Its bytes are then settled by one to four block tests and
/// copied as one block with the opening quote, which the header overwrites. Returns where the
/// body starts in the output, the index after the closing quote and the new end of the output;
/// `None` leaves the string to `string`.
#[inline(always)]
fn short_string(s: &[u8], i: usize, room: &mut [u8], at: usize) -> Option<(usize, usize, usize)> {
    let quoted = s.get(i..)?.first_chunk::<32>()?;
    let (head, tail) = quoted.split_at(16);
    let head: &[u8; 16] = head.try_into().ok()?;
    // Bit 0 is the opening quote.
    let mask = json_special_mask(head) & !1;
    if mask != 0 {
        let stop = mask.trailing_zeros() as usize;
        if head[stop] != b'"' {
            return None;
        }
        let dst = room.get_mut(at..at + 16)?;
        dst.copy_from_slice(head);
        let n = stop - 1;
        dst[0] = 0xa0 | n as u8;
        return Some((at + 1, i + stop + 1, at + 1 + n));
    }
    let tail: &[u8; 16] = tail.try_into().ok()?;
    let mask = json_special_mask(tail);
    if mask != 0 {
        let stop = 16 + mask.trailing_zeros() as usize;
        if quoted[stop] != b'"' {
            return None;
        }
        let dst = room.get_mut(at..at + 32)?;
        dst.copy_from_slice(quoted);
        let n = stop - 1;
        dst[0] = 0xa0 | n as u8;
        return Some((at + 1, i + stop + 1, at + 1 + n));
    }
    // A str8 from 32 bytes on (31 is still a fixstr, rare enough to leave to `string`).
    let quoted = s.get(i..)?.first_chunk::<64>()?;
    let (_, rest) = quoted.split_at(32);
    let (third, fourth) = rest.split_at(16);
    let third: &[u8; 16] = third.try_into().ok()?;
    let fourth: &[u8; 16] = fourth.try_into().ok()?;
    let mask = json_special_mask(third) | json_special_mask(fourth) << 16;
    if mask & 1 != 0 || mask == 0 {
        return None;
    }
    let stop = 32 + mask.trailing_zeros() as usize;
    if quoted[stop] != b'"' {
        return None;
    }
    let dst = room.get_mut(at..at + 65)?;
    dst[1..].copy_from_slice(quoted);
    let n = stop - 1;
    dst[0] = 0xd9;
    dst[1] = n as u8;
    Some((at + 2, i + stop + 1, at + 2 + n))
}

/// The string whose body starts at `start` (after its `"`). Writes a msgpack str and returns
/// where its bytes start in the output, the index after the closing quote and the new end of
/// the output.
#[inline(never)]
fn string(
    s: &[u8],
    start: usize,
    buf: &mut Vec<u8>,
    at: usize,
) -> Result<(usize, usize, usize), Invalid> {
    let out = &mut Out { buf, at };
    let stop = find_special(s, start);
    if s.get(stop) != Some(&b'"') {
        return escaped_string(s, start, stop, out.buf, out.at);
    }
    // No escapes (the common case): the length is known before writing anything. A short
    // string is copied as one block with its opening quote, which the fixstr header replaces.
    let n = stop - start;
    let quoted = &s[start - 1..];
    if n < 16 {
        if let Some(block) = quoted.first_chunk::<16>() {
            let at = out.at;
            out.block(block, n + 1);
            out.buf[at] = 0xa0 | n as u8;
            return Ok((at + 1, stop + 1, out.at));
        }
    } else if n < 32 {
        if let Some(block) = quoted.first_chunk::<32>() {
            let at = out.at;
            out.block(block, n + 1);
            out.buf[at] = 0xa0 | n as u8;
            return Ok((at + 1, stop + 1, out.at));
        }
    }
    put_str_header(n, out);
    let at = out.at;
    copy_run(s, start, stop, out);
    Ok((at, stop + 1, out.at))
}

/// The body from `start` has its first escape (or an error) at `stop`. Returns where the body
/// starts in `buf`, the index after the closing quote and the new end of the output.
#[inline(never)]
fn escaped_string(
    s: &[u8],
    start: usize,
    mut stop: usize,
    buf: &mut Vec<u8>,
    at: usize,
) -> Result<(usize, usize, usize), Invalid> {
    let out = &mut Out { buf, at };
    match s.get(stop) {
        Some(b'\\') => {}
        Some(_) => return Err(Invalid::ControlChar),
        None => return Err(Invalid::Unterminated),
    }
    // Every escape decodes to fewer bytes than it spells, so the rest of the line bounds the
    // decoded length: a header sized for it can only have to shrink.
    let hdr = out.at;
    let reserved = str_header_len(s.len() - start);
    out.block(&[0; 5], reserved);
    copy_run(s, start, stop, out);
    // From here on the output is written through `room`, as in `top_object`.
    let mut o = out.at;
    let mut room = buf.as_mut_slice();
    loop {
        // `s[stop]` is the special byte the last run stopped at.
        match s.get(stop) {
            Some(b'\\') => {
                // Escaped JSON inside audit values (`requestObject` annotations) has an escape
                // every dozen bytes: a table turns the common ones into their byte without the
                // jump on the escape letter, which mispredicts on such mixed text. The decoded
                // byte and the next block go out in one write, and when the block holds the
                // next special byte (as it mostly does) the run is over at once.
                // Go's encoder writes `<`, `>` and `&` as `\u003c`, `\u003e`, `\u0026` (a fifth of
                // the escapes in audit values): those take the same path as the two-byte ones.
                let (one, len) = match s.get(stop + 1) {
                    Some(b'u') => (ascii_u_escape(s, stop), 6),
                    Some(&e) => (ONE_BYTE_ESCAPE[usize::from(e)], 2),
                    None => (0, 2),
                };
                if one != 0 {
                    if let Some(block) = s.get(stop + len..).and_then(<[u8]>::first_chunk::<16>) {
                        let dst = match room.get_mut(o..o + 17) {
                            Some(dst) => dst,
                            None => {
                                room = regrow(buf, o + 17);
                                &mut room[o..o + 17]
                            }
                        };
                        dst[0] = one;
                        dst[1..].copy_from_slice(block);
                        let mask = json_special_mask(block);
                        if mask != 0 {
                            let n = mask.trailing_zeros() as usize;
                            stop += len + n;
                            o += 1 + n;
                            continue;
                        }
                        stop += len + 16;
                        o += 17;
                    } else {
                        match room.get_mut(o) {
                            Some(b) => *b = one,
                            None => {
                                room = regrow(buf, o + 1);
                                room[o] = one;
                            }
                        }
                        stop += len;
                        o += 1;
                    }
                } else {
                    (stop, o) = escape(s, stop, buf, o)?;
                    room = buf.as_mut_slice();
                }
            }
            Some(b'"') => break,
            Some(_) => return Err(Invalid::ControlChar),
            None => return Err(Invalid::Unterminated),
        }
        // The plain run to the next special byte. Runs between escapes are short, so it goes a
        // block at a time, each block written whole and the output advanced past its plain
        // bytes: one load serves both the search and the copy.
        loop {
            let Some(block) = s.get(stop..).and_then(<[u8]>::first_chunk::<16>) else {
                let run = stop;
                stop = find_special(s, run);
                let out = &mut Out { buf, at: o };
                copy_run(s, run, stop, out);
                o = out.at;
                room = buf.as_mut_slice();
                break;
            };
            let dst = match room.get_mut(o..o + 16) {
                Some(dst) => dst,
                None => {
                    room = regrow(buf, o + 16);
                    &mut room[o..o + 16]
                }
            };
            dst.copy_from_slice(block);
            let mask = json_special_mask(block);
            if mask == 0 {
                stop += 16;
                o += 16;
                continue;
            }
            let n = mask.trailing_zeros() as usize;
            stop += n;
            o += n;
            break;
        }
    }
    let (body, end) = finish_str(room, hdr, reserved, o);
    Ok((body, stop + 1, end))
}

/// What each two-byte escape `\\x` decodes to, indexed by `x`; 0 for `u` and for the letters
/// JSON does not allow, which `escape` sorts out.
const ONE_BYTE_ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t[b'/' as usize] = b'/';
    t[b'b' as usize] = 0x08;
    t[b'f' as usize] = 0x0c;
    t[b'n' as usize] = b'\n';
    t[b'r' as usize] = b'\r';
    t[b't' as usize] = b'\t';
    t
};

/// Hex digit values, 0xff for bytes that are not hex digits.
const HEX_DIGIT: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = match c as u8 {
            d @ b'0'..=b'9' => d - b'0',
            d @ b'a'..=b'f' => d - b'a' + 10,
            d @ b'A'..=b'F' => d - b'A' + 10,
            _ => 0xff,
        };
        c += 1;
    }
    t
};

/// The ASCII byte a `\u00XX` escape at `s[at] == b'\\'` stands for, or 0 when it is anything
/// else (including `\u0000`, whose byte is 0), which `escape` then decodes.
#[inline(always)]
fn ascii_u_escape(s: &[u8], at: usize) -> u8 {
    match s.get(at + 2..at + 6) {
        Some(&[b'0', b'0', high, low]) => {
            let (high, low) = (HEX_DIGIT[usize::from(high)], HEX_DIGIT[usize::from(low)]);
            if high < 8 && low < 16 {
                high << 4 | low
            } else {
                0
            }
        }
        _ => 0,
    }
}

/// Decodes the escape at `s[at] == b'\\'` that `ONE_BYTE_ESCAPE` does not cover (`\uXXXX`, or an
/// invalid one) into `buf` at `o`; returns the index after it and the new end of the output.
fn escape(s: &[u8], at: usize, buf: &mut Vec<u8>, o: usize) -> Result<(usize, usize), Invalid> {
    let out = &mut Out { buf, at: o };
    if s.get(at + 1) != Some(&b'u') {
        return Err(Invalid::Escape);
    }
    let cp = hex4(s, at + 2)?;
    // `\u003c`, `\u0026`: Go's encoder escapes HTML characters this way.
    if cp < 0x80 {
        out.byte(cp as u8);
        return Ok((at + 6, out.at));
    }
    let (c, next) = match cp {
        0xd800..=0xdbff => {
            // A high surrogate counts only when a low one follows as the next escape;
            // alone (like a lone low surrogate) it cannot be UTF-8 and becomes U+FFFD.
            let low = match s.get(at + 6..at + 8) {
                Some(b"\\u") => hex4(s, at + 8)?,
                _ => 0,
            };
            if (0xdc00..=0xdfff).contains(&low) {
                let c = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
                (char::from_u32(c), at + 12)
            } else {
                (None, at + 6)
            }
        }
        _ => (char::from_u32(cp), at + 6),
    };
    let mut buf = [0u8; 4];
    let c = c.unwrap_or(char::REPLACEMENT_CHARACTER);
    let n = c.encode_utf8(&mut buf).len();
    out.block(&buf, n);
    Ok((next, out.at))
}

/// The integer at `s[i]` when it has one to four digits, no leading zero and nothing after them
/// that would continue a number: most numbers of an audit line (status codes, ports, counts),
/// which then need no call to `number`. Returns it and the index after it.
#[inline(always)]
fn small_uint(s: &[u8], i: usize) -> Option<(u32, usize)> {
    let mut v = match s.get(i) {
        Some(&d @ b'1'..=b'9') => u32::from(d - b'0'),
        _ => return None,
    };
    let mut end = i + 1;
    while end < i + 4 {
        match s.get(end) {
            Some(&d @ b'0'..=b'9') => v = v * 10 + u32::from(d - b'0'),
            _ => break,
        }
        end += 1;
    }
    match s.get(end) {
        Some(b'0'..=b'9' | b'.' | b'e' | b'E') => None,
        _ => Some((v, end)),
    }
}

/// `v` (below 10,000) as `put_uint` writes it, in a block of three with the length used.
#[inline(always)]
fn small_uint_msgpack(v: u32) -> ([u8; 3], usize) {
    if v < 0x80 {
        ([v as u8, 0, 0], 1)
    } else if v <= 0xff {
        ([0xcc, v as u8, 0], 2)
    } else {
        let [hi, lo] = (v as u16).to_be_bytes();
        ([0xcd, hi, lo], 3)
    }
}

/// The number at `s[start]` (`-` or a digit); returns the index after it.
#[inline(never)]
fn number(s: &[u8], start: usize, buf: &mut Vec<u8>, at: usize) -> Result<(usize, usize), Invalid> {
    let out = &mut Out { buf, at };
    let mut i = start;
    let negative = s[i] == b'-';
    if negative {
        i += 1;
    }
    let mut magnitude: u64 = 0;
    let mut overflow = false;
    match s.get(i) {
        Some(b'0') => {
            i += 1;
            if s.get(i).is_some_and(u8::is_ascii_digit) {
                return Err(Invalid::LeadingZero);
            }
        }
        Some(b'1'..=b'9') => {
            while let Some(&d) = s.get(i) {
                if !d.is_ascii_digit() {
                    break;
                }
                match magnitude
                    .checked_mul(10)
                    .and_then(|m| m.checked_add(u64::from(d - b'0')))
                {
                    Some(m) => magnitude = m,
                    None => overflow = true,
                }
                i += 1;
            }
        }
        _ => return Err(Invalid::ExpectedDigit),
    }
    let mut integer = true;
    if s.get(i) == Some(&b'.') {
        i = fraction_digits(s, i + 1)?;
        integer = false;
    }
    if let Some(b'e' | b'E') = s.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = s.get(i) {
            i += 1;
        }
        i = fraction_digits(s, i)?;
        integer = false;
    }

    if integer && !overflow {
        if !negative {
            put_uint(magnitude, out);
            return Ok((i, out.at));
        }
        // -0 stays a float so its sign survives, as serde_json and JavaScript read it.
        if magnitude != 0 && magnitude <= 1 << 63 {
            put_negative(0i64.wrapping_sub(magnitude as i64), out);
            return Ok((i, out.at));
        }
    }
    // The slice holds only ASCII digits, signs, '.', 'e' and 'E', so this cannot fail.
    let text = std::str::from_utf8(&s[start..i]).map_err(|_| Invalid::NumberText)?;
    let f: f64 = text.parse().map_err(|_| Invalid::NumberText)?;
    // Infinity has no JSON spelling: a record carrying it would break JSON encoders downstream
    // (fluentd's to_json raises), so such a line is kept whole as text instead.
    if !f.is_finite() {
        return Err(Invalid::NumberRange);
    }
    put_tagged(0xcb, &f.to_bits().to_be_bytes(), out);
    Ok((i, out.at))
}

/// At least one digit from `i`; returns the index after the last one.
fn fraction_digits(s: &[u8], mut i: usize) -> Result<usize, Invalid> {
    let first = i;
    while s.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    if i == first {
        return Err(Invalid::ExpectedDigit);
    }
    Ok(i)
}

fn hex4(s: &[u8], at: usize) -> Result<u32, Invalid> {
    let bad = Invalid::UnicodeEscape;
    let mut v = 0u32;
    for &h in s.get(at..at + 4).ok_or(bad)? {
        let d = match h {
            b'0'..=b'9' => h - b'0',
            b'a'..=b'f' => h - b'a' + 10,
            b'A'..=b'F' => h - b'A' + 10,
            _ => return Err(bad),
        };
        v = v << 4 | u32::from(d);
    }
    Ok(v)
}

/// Appends `s[start..stop]`. Most keys and values are short: copying them as one fixed 16- or
/// 32-byte block and cutting back compiles to a few vector moves instead of a `memcpy` call.
#[inline(always)]
fn copy_run(s: &[u8], start: usize, stop: usize, out: &mut Out) {
    let n = stop - start;
    let rest = &s[start..];
    if n <= 16 {
        if let Some(block) = rest.first_chunk::<16>() {
            out.block(block, n);
            return;
        }
    } else if n <= 32 {
        if let Some(block) = rest.first_chunk::<32>() {
            out.block(block, n);
            return;
        }
    }
    out.slice(&rest[..n]);
}

/// Index of the first `"`, `\` or control byte at or after `i`, or `s.len()`.
///
/// Sixteen bytes at a time, each block classified by `sys::json_special_mask` (SSE2 on x86-64):
/// most keys and values are shorter, so the loop usually exits on its first test and the exit
/// branch stays predictable.
#[inline(always)]
fn find_special(s: &[u8], mut i: usize) -> usize {
    while let Some(block) = s.get(i..).and_then(<[u8]>::first_chunk::<16>) {
        let mask = json_special_mask(block);
        if mask != 0 {
            return i + mask.trailing_zeros() as usize;
        }
        i += 16;
    }
    // The last bytes of the line: pad with a quote so the block test still applies.
    let rest = s.get(i..).unwrap_or_default();
    let mut block = [b'"'; 16];
    block[..rest.len()].copy_from_slice(rest);
    i + json_special_mask(&block).trailing_zeros() as usize
}

fn str_header_len(len: usize) -> usize {
    match len {
        0..=31 => 1,
        32..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    }
}

/// Writes the minimal str header for `len` (at most `MAX_MSGPACK_LEN`) into `h`, which must be
/// exactly `str_header_len(len)` bytes.
fn write_str_header(len: usize, h: &mut [u8]) {
    match h {
        [b] => *b = 0xa0 | len as u8,
        [t, b] => {
            *t = 0xd9;
            *b = len as u8;
        }
        [t, rest @ ..] if rest.len() == 2 => {
            *t = 0xda;
            rest.copy_from_slice(&(len as u16).to_be_bytes());
        }
        [t, rest @ ..] => {
            *t = 0xdb;
            rest.copy_from_slice(&(len as u32).to_be_bytes());
        }
        [] => {}
    }
}

#[inline]
fn put_str_header(len: usize, out: &mut Out) {
    let mut h = [0u8; 5];
    let n = str_header_len(len);
    write_str_header(len, &mut h[..n]);
    out.block(&h, n);
}

/// Closes a str whose body was written to `buf[hdr + reserved..end]` after `reserved` header
/// bytes: shifts the body down if the minimal header is shorter and writes it. Returns where the
/// body and the str now end.
fn finish_str(buf: &mut [u8], hdr: usize, reserved: usize, end: usize) -> (usize, usize) {
    let body = hdr + reserved;
    let len = end - body;
    let need = str_header_len(len);
    if need < reserved {
        buf.copy_within(body..end, hdr + need);
    }
    write_str_header(len, &mut buf[hdr..hdr + need]);
    (hdr + need, hdr + need + len)
}

/// Returns the new end of the output.
#[inline(never)]
fn widen_container(buf: &mut Vec<u8>, at: usize, hdr: usize, count: usize, tag16: u8) -> usize {
    let out = &mut Out { buf, at };
    let old_end = out.at;
    let mut h = [tag16, 0, 0, 0, 0];
    let n = if count <= 0xffff {
        h[1..3].copy_from_slice(&(count as u16).to_be_bytes());
        3
    } else {
        // Each element takes at least two bytes of the line, which is at most MAX_MSGPACK_LEN.
        h[0] = tag16 + 1;
        h[1..5].copy_from_slice(&(count as u32).to_be_bytes());
        5
    };
    out.block(&[0; 4], n - 1);
    out.buf.copy_within(hdr + 1..old_end, hdr + n);
    out.buf[hdr..hdr + n].copy_from_slice(&h[..n]);
    out.at
}

/// A tag byte and up to eight bytes of payload.
#[inline]
fn put_tagged(tag: u8, payload: &[u8], out: &mut Out) {
    let mut b = [0u8; 9];
    b[0] = tag;
    b[1..1 + payload.len()].copy_from_slice(payload);
    out.block(&b, 1 + payload.len());
}

fn put_uint(v: u64, out: &mut Out) {
    if v < 0x80 {
        out.byte(v as u8);
    } else if v <= 0xff {
        put_tagged(0xcc, &[v as u8], out);
    } else if v <= 0xffff {
        put_tagged(0xcd, &(v as u16).to_be_bytes(), out);
    } else if v <= 0xffff_ffff {
        put_tagged(0xce, &(v as u32).to_be_bytes(), out);
    } else {
        put_tagged(0xcf, &v.to_be_bytes(), out);
    }
}

/// `v` is negative: the signed family is used only below zero, so each value has one encoding.
fn put_negative(v: i64, out: &mut Out) {
    if v >= -32 {
        out.byte(v as u8);
    } else if v >= i64::from(i8::MIN) {
        put_tagged(0xd0, &[v as u8], out);
    } else if v >= i64::from(i16::MIN) {
        put_tagged(0xd1, &(v as i16).to_be_bytes(), out);
    } else if v >= i64::from(i32::MIN) {
        put_tagged(0xd2, &(v as i32).to_be_bytes(), out);
    } else {
        put_tagged(0xd3, &v.to_be_bytes(), out);
    }
}

/// `[now, {"log": <line, invalid UTF-8 replaced by U+FFFD>}]`.
fn append_fallback(line: &[u8], now: EventTime, out: &mut Vec<u8>) {
    out.push(0x92);
    write_event_time(now, out);
    out.extend_from_slice(b"\x81\xa3log");
    append_lossy_str(line, MAX_MSGPACK_LEN, out);
}

/// `bytes` as a msgpack str the way `String::from_utf8_lossy` reads them, cut at a character
/// boundary to at most `cap` bytes (only a line of gigabytes could exceed a str32).
fn append_lossy_str(bytes: &[u8], cap: usize, out: &mut Vec<u8>) {
    let len = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(_) => bytes
            .utf8_chunks()
            .map(|c| c.valid().len() + if c.invalid().is_empty() { 0 } else { 3 })
            .sum(),
    };
    let hdr = out.len();
    let reserved = str_header_len(len.min(cap));
    out.resize(hdr + reserved, 0);
    let body = out.len();
    const FFFD: &[u8] = "\u{fffd}".as_bytes();
    for chunk in bytes.utf8_chunks() {
        let room = cap - (out.len() - body);
        let valid = chunk.valid();
        if valid.len() > room {
            let mut end = room;
            while !valid.is_char_boundary(end) {
                end -= 1;
            }
            out.extend_from_slice(&valid.as_bytes()[..end]);
            break;
        }
        out.extend_from_slice(valid.as_bytes());
        if !chunk.invalid().is_empty() {
            if cap - (out.len() - body) < FFFD.len() {
                break;
            }
            out.extend_from_slice(FFFD);
        }
    }
    let end = out.len();
    let (_, end) = finish_str(out, hdr, reserved, end);
    out.truncate(end);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const NOW: EventTime = EventTime {
        secs: 1_700_000_000,
        nanos: 123_456_789,
    };

    /// Test-only msgpack reader into serde_json::Value that also rejects any non-minimal header.
    struct Dec<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl<'a> Dec<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            let r = self
                .b
                .get(self.i..self.i + n)
                .ok_or_else(|| format!("truncated at {}", self.i))?;
            self.i += n;
            Ok(r)
        }
        fn be(&mut self, n: usize) -> Result<u64, String> {
            Ok(self
                .take(n)?
                .iter()
                .fold(0u64, |a, &b| a << 8 | u64::from(b)))
        }
        fn minimal(&self, ok: bool, what: &str) -> Result<(), String> {
            if ok {
                Ok(())
            } else {
                Err(format!("non-minimal {what} before {}", self.i))
            }
        }
        fn str(&mut self, len: usize) -> Result<String, String> {
            let b = self.take(len)?;
            String::from_utf8(b.to_vec()).map_err(|e| format!("str not UTF-8: {e}"))
        }
        fn value(&mut self) -> Result<Value, String> {
            let t = self.take(1)?[0];
            Ok(match t {
                0x00..=0x7f => Value::from(t),
                0xe0..=0xff => Value::from(t as i8),
                0xc0 => Value::Null,
                0xc2 => Value::Bool(false),
                0xc3 => Value::Bool(true),
                0xcc => {
                    let v = self.be(1)?;
                    self.minimal(v > 0x7f, "uint8")?;
                    Value::from(v)
                }
                0xcd => {
                    let v = self.be(2)?;
                    self.minimal(v > 0xff, "uint16")?;
                    Value::from(v)
                }
                0xce => {
                    let v = self.be(4)?;
                    self.minimal(v > 0xffff, "uint32")?;
                    Value::from(v)
                }
                0xcf => {
                    let v = self.be(8)?;
                    self.minimal(v > 0xffff_ffff, "uint64")?;
                    Value::from(v)
                }
                0xd0 => {
                    let v = self.be(1)? as u8 as i8 as i64;
                    self.minimal(v < -32, "int8")?;
                    Value::from(v)
                }
                0xd1 => {
                    let v = self.be(2)? as u16 as i16 as i64;
                    self.minimal(v < -128, "int16")?;
                    Value::from(v)
                }
                0xd2 => {
                    let v = self.be(4)? as u32 as i32 as i64;
                    self.minimal(v < -32768, "int32")?;
                    Value::from(v)
                }
                0xd3 => {
                    let v = self.be(8)? as i64;
                    self.minimal(v < i64::from(i32::MIN), "int64")?;
                    Value::from(v)
                }
                0xcb => {
                    let f = f64::from_bits(self.be(8)?);
                    if !f.is_finite() {
                        return Err(format!("non-finite float {f}"));
                    }
                    Value::from(f)
                }
                0xa0..=0xbf => Value::String(self.str(usize::from(t & 0x1f))?),
                0xd9 => {
                    let n = self.be(1)? as usize;
                    self.minimal(n > 31, "str8")?;
                    Value::String(self.str(n)?)
                }
                0xda => {
                    let n = self.be(2)? as usize;
                    self.minimal(n > 0xff, "str16")?;
                    Value::String(self.str(n)?)
                }
                0xdb => {
                    let n = self.be(4)? as usize;
                    self.minimal(n > 0xffff, "str32")?;
                    Value::String(self.str(n)?)
                }
                0x90..=0x9f => self.array(usize::from(t & 0x0f))?,
                0xdc => {
                    let n = self.be(2)? as usize;
                    self.minimal(n > 15, "array16")?;
                    self.array(n)?
                }
                0xdd => {
                    let n = self.be(4)? as usize;
                    self.minimal(n > 0xffff, "array32")?;
                    self.array(n)?
                }
                0x80..=0x8f => self.map(usize::from(t & 0x0f))?,
                0xde => {
                    let n = self.be(2)? as usize;
                    self.minimal(n > 15, "map16")?;
                    self.map(n)?
                }
                0xdf => {
                    let n = self.be(4)? as usize;
                    self.minimal(n > 0xffff, "map32")?;
                    self.map(n)?
                }
                _ => return Err(format!("unexpected type byte {t:#04x} at {}", self.i - 1)),
            })
        }
        fn array(&mut self, n: usize) -> Result<Value, String> {
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(self.value()?);
            }
            Ok(Value::Array(v))
        }
        fn map(&mut self, n: usize) -> Result<Value, String> {
            let mut m = serde_json::Map::new();
            for _ in 0..n {
                let k = match self.value()? {
                    Value::String(k) => k,
                    other => return Err(format!("map key is not a str: {other}")),
                };
                let v = self.value()?;
                m.insert(k, v);
            }
            Ok(Value::Object(m))
        }
    }

    /// Decodes one whole entry `[EventTime, map]`; the buffer must hold exactly that.
    fn decode_entry(b: &[u8]) -> Result<(EventTime, Value), String> {
        let mut d = Dec { b, i: 0 };
        if d.take(3)? != [0x92, 0xd7, 0x00] {
            return Err(format!(
                "entry does not start with [fixext8 type 0: {b:02x?}"
            ));
        }
        let t = EventTime {
            secs: d.be(4)? as u32,
            nanos: d.be(4)? as u32,
        };
        let record = d.value()?;
        if !record.is_object() {
            return Err("record is not a map".into());
        }
        if d.i != b.len() {
            return Err(format!("{} trailing bytes", b.len() - d.i));
        }
        Ok((t, record))
    }

    fn entry(line: &[u8]) -> (Kind, Vec<u8>) {
        let mut out = Vec::new();
        let kind = append_entry(line, NOW, &mut out);
        (kind, out)
    }

    /// Value equality where floats may differ by one ulp: serde_json without its
    /// `float_roundtrip` feature is not correctly rounded (e.g. `3.5e-73`), while our floats come
    /// from `str::parse` and are checked bit for bit in `transcode_numbers`. Integers, strings and
    /// structure must match exactly.
    fn same(got: &Value, want: &Value) -> bool {
        match (got, want) {
            (Value::Number(a), Value::Number(b)) if a.is_f64() && b.is_f64() => {
                let (a, b) = (
                    a.as_f64().unwrap_or(f64::NAN),
                    b.as_f64().unwrap_or(f64::NAN),
                );
                a == b || (a.to_bits() as i64 - b.to_bits() as i64).abs() <= 1
            }
            (Value::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
            }
            (Value::Object(a), Value::Object(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same(v, w)))
            }
            _ => got == want,
        }
    }

    fn assert_same(got: &Value, want: &Value, context: &str) {
        assert!(same(got, want), "{context}\n got: {got}\nwant: {want}");
    }

    /// Record bytes (after the array header and the time) of a line that must transcode.
    fn record(line: &[u8]) -> Vec<u8> {
        let (kind, out) = entry(line);
        assert_eq!(kind, Kind::Json, "{}", String::from_utf8_lossy(line));
        out[11..].to_vec()
    }

    fn time_bytes(t: EventTime) -> Vec<u8> {
        let mut v = vec![0xd7, 0x00];
        v.extend_from_slice(&t.secs.to_be_bytes());
        v.extend_from_slice(&t.nanos.to_be_bytes());
        v
    }

    /// msgpack str, built independently of the code under test.
    fn mp_str(s: &str) -> Vec<u8> {
        let n = s.len();
        let mut v = if n < 32 {
            vec![0xa0 | n as u8]
        } else if n < 256 {
            vec![0xd9, n as u8]
        } else if n < 65536 {
            vec![0xda, (n >> 8) as u8, n as u8]
        } else {
            let mut v = vec![0xdb];
            v.extend_from_slice(&(n as u32).to_be_bytes());
            v
        };
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn fallback_bytes(line: &[u8], now: EventTime) -> Vec<u8> {
        let mut v = vec![0x92];
        v.extend(time_bytes(now));
        v.extend_from_slice(b"\x81\xa3log");
        v.extend(mp_str(&String::from_utf8_lossy(line)));
        v
    }

    fn f64_bytes(f: f64) -> Vec<u8> {
        let mut v = vec![0xcb];
        v.extend_from_slice(&f.to_bits().to_be_bytes());
        v
    }

    /// Output decodes to the same value as serde_json reads from the line, with time `now`.
    fn assert_same_as_serde(line: &[u8]) {
        let (kind, out) = entry(line);
        assert_eq!(kind, Kind::Json, "{}", String::from_utf8_lossy(line));
        let (t, got) = decode_entry(&out).unwrap_or_else(|e| panic!("{e}: {out:02x?}"));
        let want: Value = serde_json::from_slice(line).expect("test line is valid for serde_json");
        assert_same(&got, &want, &String::from_utf8_lossy(line));
        assert_eq!(t, NOW);
    }

    /// The string fast paths (`short_string`: one, two or four blocks; `string` beyond and near
    /// the end of the line) and the escape loop, at every length around their block edges, as
    /// keys and values, compact and spaced, far from and close to the end of the line.
    #[test]
    fn transcode_string_lengths_at_block_edges_match_serde_json() {
        let lengths: [usize; 22] = [
            0, 1, 13, 14, 15, 16, 17, 29, 30, 31, 32, 33, 47, 48, 61, 62, 63, 64, 65, 255, 256, 300,
        ];
        for &n in &lengths {
            let plain: String = (0..n).map(|k| (b'a' + (k % 26) as u8) as char).collect();
            // An escape as the first, the 15th/16th/17th and the last byte, and escapes throughout.
            // `\u00XX` below 0x80 (but not `\u0000`) is decoded in line with the two-byte escapes;
            // the others around it go to `escape`.
            let mut escaped = vec![plain.clone()];
            for at in [0, 14, 15, 16, 31, 32, n.saturating_sub(1)] {
                if at < n {
                    for esc in [
                        r#"\""#, r"\u00e9", r"\u003c", r"\u003E", r"\u0026", r"\u0000", r"\u007f",
                        r"\u0080", r"\u0130",
                    ] {
                        let mut e = plain.clone();
                        e.replace_range(at..at + 1, esc);
                        escaped.push(e);
                    }
                }
            }
            escaped.push(
                plain
                    .replace('e', r"\n")
                    .replace('k', r"\\")
                    .replace('q', r#"\""#),
            );
            for v in &escaped {
                for pad in [0, 1, 40, 100] {
                    let tail = format!(r#","z":"{}""#, "y".repeat(pad));
                    assert_same_as_serde(format!(r#"{{"{v}":"{v}"{tail}}}"#).as_bytes());
                    assert_same_as_serde(format!(r#"{{"k":["{v}","{v}"]{tail}}}"#).as_bytes());
                    assert_same_as_serde(format!(r#"{{ "{v}" : "{v}" {tail} }}"#).as_bytes());
                    assert_same_as_serde(format!("{{\"{v}\"\n:\t\"{v}\"\r{tail}}}").as_bytes());
                }
                // Last on the line, where fewer than a block's bytes follow.
                assert_same_as_serde(format!(r#"{{"a":"{v}"}}"#).as_bytes());
                assert_same_as_serde(format!(r#"{{"{v}":1}}"#).as_bytes());
                // Cut inside or right after the string: kept whole as text.
                let line = format!(r#"{{"a":"{v}"}}"#);
                for end in [line.len() - 1, line.len() - 2, 6 + v.len() / 2] {
                    let (kind, out) = entry(&line.as_bytes()[..end]);
                    assert_eq!(kind, Kind::Fallback, "{}", &line[..end]);
                    assert_eq!(out, fallback_bytes(&line.as_bytes()[..end], NOW));
                }
            }
        }
    }

    #[test]
    fn transcode_constructs_match_serde_json() {
        let cases: &[&str] = &[
            r#"{}"#,
            r#"{"a":1}"#,
            r#"{"a":"b"}"#,
            r#"{"t":true,"f":false,"n":null}"#,
            r#"{"e":[],"o":{},"ee":[[]],"oo":{"x":{}}}"#,
            // Empty containers are written whole; a container resumes after a nested one.
            r#"{"a":[{"b":1},{},[]],"c":{"d":{}},"e":[[],[[]],{}],"f":[{"g":[1]},2]}"#,
            r#"{"a":[{},{},{},{},{},{},{},{},[],[],[],[],[],[],[],[],{"x":[]}],"b":{"c":[{}]}}"#,
            r#"{"r":[{"a":{"b":{}},"c":1,"d":2,"e":3,"f":4,"g":5,"h":6,"i":7,"j":8,"k":9,"l":10}]}"#,
            r#"{"o":{"a":{"x":[]},"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"p":15,"q":{}}}"#,
            r#"{"arr":[1,"two",3.5,null,true,false,{"k":[-1]}]}"#,
            r#"{"a":{"b":{"c":{"d":[1,[2,[3,[4]]]]}}}}"#,
            "  \t{ \"a\" : [ 1 , 2 ] , \"b\" : { } }\t \r ",
            "\r\n{\n\"a\"\n:\n1\n}\n",
            r#"{"":""}"#,
            r#"{"é€😀":"ünïcödé ✓ 𝄞"}"#,
            "{\"del\":\"\x7f\"}",
            r#"{"esc":"a\"b\\c\/d\be\ff\ng\rh\ti"}"#,
            r#"{"u":"\u0000\u001f\u0041\u00e9\u20ac\uffff\ud83d\ude00\uD834\uDD1E"}"#,
            r#"{"go":"a\u003cb\u003e\u0026c"}"#,
            r#"{"\u006bey":"v","k\"q":1}"#,
            r#"{"big":18446744073709551615,"neg":-9223372036854775808}"#,
            r#"{"f":[0.1,1.5e3,-1E+2,1e308,1e-320,2.5E-3,0.0,123456789.125]}"#,
            r#"{"huge":[18446744073709551616,-9223372036854775809,123456789012345678901234567890]}"#,
        ];
        for line in cases {
            assert_same_as_serde(line.as_bytes());
        }
    }

    #[test]
    fn transcode_exact_bytes() {
        let cases: &[(&str, &[u8])] = &[
            ("{}", b"\x80"),
            (r#"{"a":1}"#, b"\x81\xa1a\x01"),
            (r#"{"a":[]}"#, b"\x81\xa1a\x90"),
            (r#"{"a":[true,false,null]}"#, b"\x81\xa1a\x93\xc3\xc2\xc0"),
            (r#"{"a":{"b":""}}"#, b"\x81\xa1a\x81\xa1b\xa0"),
            (r#"{"a":1,"a":2}"#, b"\x82\xa1a\x01\xa1a\x02"),
            (r#"{"a":"\n"}"#, b"\x81\xa1a\xa1\n"),
            (r#"{"a":"\ud800"}"#, b"\x81\xa1a\xa3\xef\xbf\xbd"),
        ];
        for (line, want) in cases {
            assert_eq!(record(line.as_bytes()), *want, "{line}");
        }
        // The whole entry, including the array header and the fixext8 time.
        let (_, out) = entry(b"{}");
        let mut want = vec![0x92];
        want.extend(time_bytes(NOW));
        want.push(0x80);
        assert_eq!(out, want);
    }

    #[test]
    fn transcode_numbers() {
        let cases: &[(&str, Vec<u8>)] = &[
            ("0", vec![0x00]),
            ("1", vec![0x01]),
            ("9", vec![0x09]),
            ("10", vec![0x0a]),
            ("99", vec![0x63]),
            ("100", vec![0x64]),
            ("127", vec![0x7f]),
            ("128", vec![0xcc, 0x80]),
            ("255", vec![0xcc, 0xff]),
            ("256", vec![0xcd, 0x01, 0x00]),
            ("999", vec![0xcd, 0x03, 0xe7]),
            ("1000", vec![0xcd, 0x03, 0xe8]),
            ("9999", vec![0xcd, 0x27, 0x0f]),
            ("10000", vec![0xcd, 0x27, 0x10]),
            ("12345", vec![0xcd, 0x30, 0x39]),
            ("1234.5", f64_bytes(1234.5)),
            ("1234e1", f64_bytes(12340.0)),
            ("123E1", f64_bytes(1230.0)),
            ("12.0", f64_bytes(12.0)),
            ("65535", vec![0xcd, 0xff, 0xff]),
            ("65536", vec![0xce, 0, 1, 0, 0]),
            ("4294967295", vec![0xce, 0xff, 0xff, 0xff, 0xff]),
            ("4294967296", vec![0xcf, 0, 0, 0, 1, 0, 0, 0, 0]),
            (
                "9223372036854775807",
                [&[0xcf, 0x7f][..], &[0xff; 7]].concat(),
            ),
            ("9223372036854775808", [&[0xcf, 0x80][..], &[0; 7]].concat()),
            ("18446744073709551615", [&[0xcf][..], &[0xff; 8]].concat()),
            ("18446744073709551616", f64_bytes(18446744073709551616.0)),
            ("-1", vec![0xff]),
            ("-32", vec![0xe0]),
            ("-33", vec![0xd0, 0xdf]),
            ("-128", vec![0xd0, 0x80]),
            ("-129", vec![0xd1, 0xff, 0x7f]),
            ("-32768", vec![0xd1, 0x80, 0x00]),
            ("-32769", vec![0xd2, 0xff, 0xff, 0x7f, 0xff]),
            ("-2147483648", vec![0xd2, 0x80, 0, 0, 0]),
            (
                "-2147483649",
                vec![0xd3, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff],
            ),
            (
                "-9223372036854775807",
                [&[0xd3, 0x80][..], &[0, 0, 0, 0, 0, 0, 1]].concat(),
            ),
            (
                "-9223372036854775808",
                [&[0xd3, 0x80][..], &[0; 7]].concat(),
            ),
            ("-9223372036854775809", f64_bytes(-9223372036854775809.0)),
            ("-0", f64_bytes(-0.0)),
            ("-0.0", f64_bytes(-0.0)),
            ("0.0", f64_bytes(0.0)),
            ("1e308", f64_bytes(1e308)),
            ("1e-320", f64_bytes(1e-320)),
            ("1e-400", f64_bytes(0.0)),
            ("0.1", f64_bytes(0.1)),
            ("1.5e3", f64_bytes(1500.0)),
            ("-1E+2", f64_bytes(-100.0)),
            ("1E-2", f64_bytes(0.01)),
            ("1e0", f64_bytes(1.0)),
            (
                "2.2250738585072011e-308",
                f64_bytes(f64::from_bits(0x000f_ffff_ffff_ffff)),
            ),
            ("1.7976931348623157e308", f64_bytes(f64::MAX)),
            ("0.30000000000000004", f64_bytes(0.30000000000000004)),
        ];
        for (num, want) in cases {
            let line = format!(r#"{{"n":{num}}}"#);
            let mut full = b"\x81\xa1n".to_vec();
            full.extend_from_slice(want);
            assert_eq!(record(line.as_bytes()), full, "{num}");
            // Inside an array the number ends at ']' rather than '}'.
            let line = format!(r#"{{"n":[{num},{num}]}}"#);
            let mut full = b"\x81\xa1n\x92".to_vec();
            full.extend_from_slice(want);
            full.extend_from_slice(want);
            assert_eq!(record(line.as_bytes()), full, "[{num}]");
            // Whitespace after it, and a line that ends right after it.
            let line = format!("{{\"n\" : {num} }}");
            let mut full = b"\x81\xa1n".to_vec();
            full.extend_from_slice(want);
            assert_eq!(record(line.as_bytes()), full, "{num} ");
            let line = format!(r#"{{"n":{num}"#);
            assert_eq!(entry(line.as_bytes()).0, Kind::Fallback, "{line}");
        }
        // Room for the entry runs out at every offset of a small integer's three bytes.
        for pad in 0..40 {
            let line = format!(r#"{{"p":"{}","n":[9999,128,7]}}"#, "x".repeat(1000 + pad));
            assert_same_as_serde(line.as_bytes());
        }
    }

    #[test]
    fn transcode_strings_and_escapes() {
        let cases: &[(&str, &str)] = &[
            (r#""""#, ""),
            (r#""plain""#, "plain"),
            (r#""\"""#, "\""),
            (r#""\\""#, "\\"),
            (r#""\/""#, "/"),
            (r#""\b\f\n\r\t""#, "\u{8}\u{c}\n\r\t"),
            (r#""\u0000""#, "\0"),
            (r#""\u0041\u00e9\u20AC\uFFFF""#, "Aé€\u{ffff}"),
            (r#""\ud83d\ude00""#, "😀"),
            (r#""\uD834\uDD1E x""#, "𝄞 x"),
            (r#""\udbff\udfff""#, "\u{10ffff}"),
            (r#""\ud800""#, "\u{fffd}"),
            (r#""\udc00""#, "\u{fffd}"),
            (r#""\ud800x""#, "\u{fffd}x"),
            (r#""\ud800\u0041""#, "\u{fffd}A"),
            (r#""\ud800\n""#, "\u{fffd}\n"),
            (r#""\ud800\ud800\udc00""#, "\u{fffd}\u{10000}"),
            (r#""\udc00\ud800""#, "\u{fffd}\u{fffd}"),
            (r#""a\ud83d""#, "a\u{fffd}"),
            ("\"raw é € 😀\"", "raw é € 😀"),
            (
                "\"0123456789abcdef\\\"0123456789abcdef\"",
                "0123456789abcdef\"0123456789abcdef",
            ),
            (r#""\\\\\\\\\\\\\\\\\\""#, "\\\\\\\\\\\\\\\\\\"),
        ];
        for (json, want) in cases {
            let line = format!(r#"{{"s":{json}}}"#);
            let mut full = b"\x81\xa1s".to_vec();
            full.extend(mp_str(want));
            assert_eq!(record(line.as_bytes()), full, "{json}");
        }
    }

    #[test]
    fn transcode_length_boundaries_use_minimal_headers() {
        for n in [0, 1, 31, 32, 33, 255, 256, 257, 65535, 65536, 65537, 70000] {
            let plain = "x".repeat(n);
            let line = format!(r#"{{"s":"{plain}"}}"#);
            let mut want = b"\x81\xa1s".to_vec();
            want.extend(mp_str(&plain));
            assert_eq!(record(line.as_bytes()), want, "plain {n}");

            // Same decoded length through the escape path, whose header is sized from an upper bound.
            if n > 0 {
                let escaped = format!(r#"{{"s":"{}\n"}}"#, "x".repeat(n - 1));
                let mut want = b"\x81\xa1s".to_vec();
                want.extend(mp_str(&format!("{}\n", "x".repeat(n - 1))));
                assert_eq!(record(escaped.as_bytes()), want, "escaped {n}");
                assert_same_as_serde(escaped.as_bytes());
            }
        }
        for n in [0usize, 1, 15, 16, 17, 65535, 65536, 65537] {
            let items = vec!["0"; n].join(",");
            let line = format!(r#"{{"a":[{items}]}}"#);
            let rec = record(line.as_bytes());
            let hdr: Vec<u8> = match n {
                0..=15 => vec![0x90 | n as u8],
                16..=65535 => vec![0xdc, (n >> 8) as u8, n as u8],
                _ => [&[0xdd][..], &(n as u32).to_be_bytes()].concat(),
            };
            assert_eq!(&rec[3..3 + hdr.len()], &hdr[..], "array {n}");
            assert_eq!(rec.len(), 3 + hdr.len() + n, "array {n}");
            assert_same_as_serde(line.as_bytes());

            let keys: Vec<String> = (0..n).map(|i| format!(r#""k{i}":{}"#, i % 100)).collect();
            let line = format!("{{{}}}", keys.join(","));
            let rec = record(line.as_bytes());
            let hdr: Vec<u8> = match n {
                0..=15 => vec![0x80 | n as u8],
                16..=65535 => vec![0xde, (n >> 8) as u8, n as u8],
                _ => [&[0xdf][..], &(n as u32).to_be_bytes()].concat(),
            };
            assert_eq!(&rec[..hdr.len()], &hdr[..], "map {n}");
            assert_same_as_serde(line.as_bytes());
        }
    }

    #[test]
    fn transcode_nesting_limit() {
        // The top-level object is depth 1: 255 more arrays reach exactly 256.
        let ok = format!(r#"{{"a":{}{}}}"#, "[".repeat(255), "]".repeat(255));
        let rec = record(ok.as_bytes());
        assert_eq!(rec.len(), 3 + 255);
        assert!(rec[3..].iter().take(254).all(|&b| b == 0x91));
        assert_eq!(rec[3 + 254], 0x90);

        let deep = format!(r#"{{"a":{}{}}}"#, "[".repeat(256), "]".repeat(256));
        let mut out = Vec::new();
        let err = transcode(deep.as_bytes(), NOW, &mut out, 0).unwrap_err();
        assert_eq!(err, Invalid::TooDeep);
        let (kind, out) = entry(deep.as_bytes());
        assert_eq!(kind, Kind::Fallback);
        assert_eq!(out, fallback_bytes(deep.as_bytes(), NOW));

        let deep_objects = format!("{}1{}", r#"{"a":"#.repeat(257), "}".repeat(257));
        let err = transcode(deep_objects.as_bytes(), NOW, &mut Vec::new(), 0).unwrap_err();
        assert_eq!(err, Invalid::TooDeep);
        // Nothing stops a hostile line from nesting a million levels; the cap keeps the stack flat.
        let hostile = "[".repeat(1_000_000);
        assert_eq!(
            entry(format!("{{\"a\":{hostile}").as_bytes()).0,
            Kind::Fallback
        );
    }

    #[test]
    fn transcode_invalid_lines_fall_back() {
        let cases: &[(&[u8], Invalid)] = &[
            (b"", Invalid::NotObject),
            (b"   ", Invalid::NotObject),
            (b"[]", Invalid::NotObject),
            (b"\"s\"", Invalid::NotObject),
            (b"1", Invalid::NotObject),
            (b"null", Invalid::NotObject),
            (b"\x0c{}", Invalid::NotObject),
            (b"\xef\xbb\xbf{}", Invalid::NotObject),
            (b"{", Invalid::ExpectedKey),
            (b"{\"a\"", Invalid::ExpectedColon),
            (b"{\"a\"}", Invalid::ExpectedColon),
            (b"{\"a\":}", Invalid::ExpectedValue),
            (b"{\"a\":", Invalid::EndOfLine),
            (b"{\"a\":1,}", Invalid::ExpectedKey),
            (b"{,}", Invalid::ExpectedKey),
            (b"{a:1}", Invalid::ExpectedKey),
            (b"{'a':1}", Invalid::ExpectedKey),
            (b"{1:1}", Invalid::ExpectedKey),
            (b"{\"a\":1 \"b\":2}", Invalid::ObjectSeparator),
            (b"{\"a\":1", Invalid::ObjectSeparator),
            (b"{\"a\":[1,]}", Invalid::ExpectedValue),
            (b"{\"a\":[1 2]}", Invalid::ArraySeparator),
            (b"{\"a\":[1}", Invalid::ArraySeparator),
            (b"{\"a\":[}", Invalid::ExpectedValue),
            // The separator after a nested container is read where that container closes.
            (b"{\"a\":{\"b\":1}]}", Invalid::ObjectSeparator),
            (b"{\"a\":{\"b\":1} \"c\":2}", Invalid::ObjectSeparator),
            (b"{\"a\":{\"b\":1}", Invalid::ObjectSeparator),
            (b"{\"a\":[[1]}", Invalid::ArraySeparator),
            (b"{\"a\":[{\"b\":1} 2]}", Invalid::ArraySeparator),
            (b"{\"a\":[[1]", Invalid::ArraySeparator),
            (b"{\"a\":[[1],}", Invalid::ExpectedValue),
            (b"{\"a\":{\"b\":[1],}}", Invalid::ExpectedKey),
            (b"{\"a\":1}x", Invalid::Trailing),
            (b"{\"a\":1}{}", Invalid::Trailing),
            (b"{\"a\":1} ,", Invalid::Trailing),
            (b"{} \x00", Invalid::Trailing),
            (b"{\"a\":\"x\x01\"}", Invalid::ControlChar),
            (b"{\"a\":\"\x1f\"}", Invalid::ControlChar),
            (b"{\"a\":\"tab\there\"}", Invalid::ControlChar),
            (b"{\"a\":\"\\n\x0a\"}", Invalid::ControlChar),
            (b"{\"a\":\"unterminated}", Invalid::Unterminated),
            (b"{\"a\":\"esc\\n unterminated}", Invalid::Unterminated),
            (b"{\"a\":\"\\", Invalid::Escape),
            (b"{\"a\":\"\\x\"}", Invalid::Escape),
            (b"{\"a\":\"\\'\"}", Invalid::Escape),
            (b"{\"a\":\"\\U0041\"}", Invalid::Escape),
            (b"{\"a\":\"\\u12\"}", Invalid::UnicodeEscape),
            (b"{\"a\":\"\\u12G4\"}", Invalid::UnicodeEscape),
            (b"{\"a\":\"\\u00G4\"}", Invalid::UnicodeEscape),
            (b"{\"a\":\"\\u003g\"}", Invalid::UnicodeEscape),
            (b"{\"a\":\"x\\u003\"}", Invalid::UnicodeEscape),
            (b"{\"a\":\"x\\u00", Invalid::UnicodeEscape),
            (b"{\"a\":\"x\\u003c", Invalid::Unterminated),
            (
                b"{\"a\":\"0123456789abcdef\\u003c0123456789abcdef",
                Invalid::Unterminated,
            ),
            (b"{\"a\":\"\\ud800\\u12\"}", Invalid::UnicodeEscape),
            (b"{\"a\":\"\\u", Invalid::UnicodeEscape),
            (b"{\"a\":01}", Invalid::LeadingZero),
            (b"{\"a\":-01}", Invalid::LeadingZero),
            (b"{\"a\":00}", Invalid::LeadingZero),
            (b"{\"a\":1.}", Invalid::ExpectedDigit),
            (b"{\"a\":1.e5}", Invalid::ExpectedDigit),
            (b"{\"a\":-}", Invalid::ExpectedDigit),
            (b"{\"a\":-a}", Invalid::ExpectedDigit),
            (b"{\"a\":1e}", Invalid::ExpectedDigit),
            (b"{\"a\":1e+}", Invalid::ExpectedDigit),
            (b"{\"a\":1E-}", Invalid::ExpectedDigit),
            (b"{\"a\":.5}", Invalid::ExpectedValue),
            (b"{\"a\":+1}", Invalid::ExpectedValue),
            (b"{\"a\":0x10}", Invalid::ObjectSeparator),
            (b"{\"a\":1.5.5}", Invalid::ObjectSeparator),
            (b"{\"a\":NaN}", Invalid::ExpectedValue),
            (b"{\"a\":Infinity}", Invalid::ExpectedValue),
            (b"{\"a\":1e400}", Invalid::NumberRange),
            (b"{\"a\":-1e400}", Invalid::NumberRange),
            (b"{\"a\":tru}", Invalid::Literal),
            (b"{\"a\":True}", Invalid::ExpectedValue),
            (b"{\"a\":nul}", Invalid::Literal),
            (b"{\"a\":falsey}", Invalid::ObjectSeparator),
            (b"{\"a\":\"\xff\"}", Invalid::Utf8),
            (b"{\"a\":\"\xc3\"}", Invalid::Utf8),
            (b"{\"a\":\"\xed\xa0\x80\"}", Invalid::Utf8),
            (b"{\"a\":\"\xc0\x80\"}", Invalid::Utf8),
            (b"{\"a\":\"\xf4\x90\x80\x80\"}", Invalid::Utf8),
            (b"\xff{}", Invalid::Utf8),
            (b"{}\xe2\x82", Invalid::Utf8),
            ("{\"a\":1}\u{a0}".as_bytes(), Invalid::Trailing),
        ];
        for (line, why) in cases {
            let shown = String::from_utf8_lossy(line);
            let err = transcode(line, NOW, &mut Vec::new(), 0).expect_err(&shown);
            assert_eq!(err, *why, "{shown}");

            // Appended after earlier entries, which must survive the rollback untouched.
            let mut out = b"earlier".to_vec();
            assert_eq!(append_entry(line, NOW, &mut out), Kind::Fallback, "{shown}");
            assert_eq!(&out[..7], b"earlier");
            assert_eq!(out[7..], fallback_bytes(line, NOW), "{shown}");
            let (t, rec) = decode_entry(&out[7..]).unwrap();
            assert_eq!(t, NOW);
            assert_eq!(
                rec,
                serde_json::json!({ "log": String::from_utf8_lossy(line) })
            );
        }
    }

    #[test]
    fn transcode_invalid_utf8_is_replaced_like_from_utf8_lossy() {
        let cases: &[(&[u8], &str)] = &[
            (b"{\"a\":\"\xff\"}", "{\"a\":\"\u{fffd}\"}"),
            (b"\xc3", "\u{fffd}"),
            (b"ok \xe2\x82 euro", "ok \u{fffd} euro"),
            (b"\xed\xa0\x80", "\u{fffd}\u{fffd}\u{fffd}"),
            (b"\xc0\x80x", "\u{fffd}\u{fffd}x"),
            (b"\xf0\x9f\x98\x80\xf0\x9f\x98", "😀\u{fffd}"),
            (b"\x80\x80\x80", "\u{fffd}\u{fffd}\u{fffd}"),
        ];
        for (line, lossy) in cases {
            assert_eq!(String::from_utf8_lossy(line), *lossy, "table is wrong");
            let (kind, out) = entry(line);
            assert_eq!(kind, Kind::Fallback);
            let mut want = vec![0x92];
            want.extend(time_bytes(NOW));
            want.extend_from_slice(b"\x81\xa3log");
            want.extend(mp_str(lossy));
            assert_eq!(out, want);
        }
        // A long invalid line: the lossy string grows past the str8 range the raw bytes fit in.
        let line = vec![0xffu8; 100];
        let (_, out) = entry(&line);
        assert_eq!(out, fallback_bytes(&line, NOW));
        assert_eq!(out[16..19], [0xda, 0x01, 0x2c]);
    }

    #[test]
    fn transcode_lossy_cap_cuts_at_char_boundaries() {
        let cases: &[(&[u8], usize, &str)] = &[
            (b"abcdef", 4, "abcd"),
            (b"abcdef", 6, "abcdef"),
            ("aé€".as_bytes(), 4, "aé"),
            ("aé€".as_bytes(), 5, "aé"),
            ("aé€".as_bytes(), 6, "aé€"),
            (b"ab\xffcd", 4, "ab"),
            (b"ab\xffcd", 5, "ab\u{fffd}"),
            (b"ab\xffcd", 6, "ab\u{fffd}c"),
            (b"\xff\xff", 3, "\u{fffd}"),
            (b"", 0, ""),
        ];
        for (bytes, cap, want) in cases {
            let mut out = Vec::new();
            append_lossy_str(bytes, *cap, &mut out);
            assert_eq!(out, mp_str(want), "{bytes:?} cap {cap}");
        }
    }

    #[test]
    fn transcode_rfc3339() {
        let t = |secs, nanos| Some(EventTime { secs, nanos });
        let cases: &[(&str, Option<EventTime>)] = &[
            ("1970-01-01T00:00:00Z", t(0, 0)),
            ("2025-07-16T10:12:56.525137Z", t(1752660776, 525_137_000)),
            ("2018-10-26T13:13:03.544952Z", t(1540559583, 544_952_000)),
            ("2018-10-26T13:13:03Z", t(1540559583, 0)),
            ("2018-10-26T13:13:03.5Z", t(1540559583, 500_000_000)),
            ("2018-10-26T13:13:03.12Z", t(1540559583, 120_000_000)),
            ("2018-10-26T13:13:03.123Z", t(1540559583, 123_000_000)),
            ("2018-10-26T13:13:03.1234Z", t(1540559583, 123_400_000)),
            ("2018-10-26T13:13:03.12345Z", t(1540559583, 123_450_000)),
            ("2018-10-26T13:13:03.123456Z", t(1540559583, 123_456_000)),
            ("2018-10-26T13:13:03.1234567Z", t(1540559583, 123_456_700)),
            ("2018-10-26T13:13:03.12345678Z", t(1540559583, 123_456_780)),
            ("2018-10-26T13:13:03.123456789Z", t(1540559583, 123_456_789)),
            (
                "2018-10-26T13:13:03.1234567891Z",
                t(1540559583, 123_456_789),
            ),
            (
                "2018-10-26T13:13:03.12345678912Z",
                t(1540559583, 123_456_789),
            ),
            (
                "2018-10-26T13:13:03.123456789129Z",
                t(1540559583, 123_456_789),
            ),
            (
                "2018-10-26T13:13:03.999999999999Z",
                t(1540559583, 999_999_999),
            ),
            ("2018-10-26T13:13:03.000000001Z", t(1540559583, 1)),
            ("2018-10-26t13:13:03z", t(1540559583, 0)),
            ("2018-10-26 13:13:03Z", t(1540559583, 0)),
            ("2018-10-26T15:13:03+02:00", t(1540559583, 0)),
            ("2018-10-26T07:43:03.25-05:30", t(1540559583, 250_000_000)),
            ("2018-10-26T13:13:03-00:00", t(1540559583, 0)),
            (
                "2018-10-26T23:59:03+23:59",
                t(1540559583 + 10 * 3600 + 46 * 60 - 23 * 3600 - 59 * 60, 0),
            ),
            ("2024-02-29T00:00:00Z", t(1709164800, 0)),
            ("2000-02-29T12:00:00Z", t(951825600, 0)),
            ("2100-02-28T00:00:00Z", t(4107456000, 0)),
            ("2024-12-31T23:59:59Z", t(1735689599, 0)),
            ("2025-01-01T00:00:00Z", t(1735689600, 0)),
            ("2016-12-31T23:59:60Z", t(1483228800, 0)),
            ("2016-12-31T23:59:60.5Z", t(1483228800, 500_000_000)),
            ("1969-12-31T23:00:00-01:00", t(0, 0)),
            ("2106-02-07T06:28:15Z", t(u32::MAX, 0)),
            ("2106-02-07T06:28:15.999999999Z", t(u32::MAX, 999_999_999)),
            ("2106-02-07T06:28:16Z", None),
            ("9999-12-31T23:59:59Z", None),
            ("1969-12-31T23:59:59Z", None),
            ("1970-01-01T00:00:00+00:01", None),
            ("0000-01-01T00:00:00Z", None),
            ("2023-02-29T00:00:00Z", None),
            ("2100-02-29T00:00:00Z", None),
            ("2025-04-31T00:00:00Z", None),
            ("2025-06-31T00:00:00Z", None),
            ("2025-01-32T00:00:00Z", None),
            ("2025-01-00T00:00:00Z", None),
            ("2025-00-10T00:00:00Z", None),
            ("2025-13-10T00:00:00Z", None),
            ("2025-07-16T24:00:00Z", None),
            ("2025-07-16T10:60:00Z", None),
            ("2025-07-16T10:12:61Z", None),
            ("2025-07-16T10:12:56", None),
            ("2025-07-16T10:12:56.Z", None),
            ("2025-07-16T10:12:56.525137", None),
            ("2025-07-16T10:12:56.5a5Z", None),
            ("2025-07-16T10:12:56.525137Zx", None),
            ("2025-07-16T10:12:56Z ", None),
            (" 2025-07-16T10:12:56Z", None),
            ("2025-07-16x10:12:56Z", None),
            ("2025-07-16T10:12:56+0200", None),
            ("2025-07-16T10:12:56+02:0", None),
            ("2025-07-16T10:12:56+02:000", None),
            ("2025-07-16T10:12:56+24:00", None),
            ("2025-07-16T10:12:56+02:60", None),
            ("2025-07-16T10:12:56+0a:00", None),
            ("2025-07-16T10:12:56 +02:00", None),
            ("2025-7-16T10:12:56Z", None),
            ("2025-07-16T1:12:56Z", None),
            ("+025-07-16T10:12:56Z", None),
            ("2025/07/16T10:12:56Z", None),
            ("2025-07-16", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_rfc3339(s.as_bytes()), *want, "{s}");
        }
    }

    #[test]
    fn transcode_days_from_civil_matches_day_by_day_count() {
        // Walks every day from 1970 to 2106 so month lengths and leap years are checked exhaustively.
        let mut days = 0i64;
        for year in 1970u32..2107 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    let s = format!("{year:04}-{month:02}-{day:02}T00:00:00Z");
                    let want = u32::try_from(days * 86_400).ok();
                    assert_eq!(parse_rfc3339(s.as_bytes()).map(|t| t.secs), want, "{s}");
                    days += 1;
                }
            }
        }
        assert_eq!(days, 50_038);
    }

    #[test]
    fn transcode_time_selection() {
        let stage = EventTime {
            secs: 1752660776,
            nanos: 525_137_000,
        };
        let received = EventTime {
            secs: 1752660776,
            nanos: 521_030_000,
        };
        let s = r#""stageTimestamp":"2025-07-16T10:12:56.525137Z""#;
        let r = r#""requestReceivedTimestamp":"2025-07-16T10:12:56.521030Z""#;
        let cases: Vec<(String, EventTime)> = vec![
            (format!("{{{s}}}"), stage),
            (format!("{{{r},{s}}}"), stage),
            (format!("{{{s},{r}}}"), stage),
            (format!(r#"{{"kind":"Event",{r},"verb":"get"}}"#), received),
            (format!(r#"{{{r},"stageTimestamp":"garbage"}}"#), received),
            (format!(r#"{{{r},"stageTimestamp":null}}"#), received),
            (format!(r#"{{{r},"stageTimestamp":1752660776}}"#), received),
            (
                format!(r#"{{{r},"stageTimestamp":["2025-07-16T10:12:56.525137Z"]}}"#),
                received,
            ),
            (
                format!(r#"{{{r},"stageTimestamp":"1969-07-16T10:12:56Z"}}"#),
                received,
            ),
            (
                r#"{"stageTimestamp":"2025-07-16T10:12:56.525137\u005a"}"#.into(),
                stage,
            ),
            (
                r#"{"stage\u0054imestamp":"2025-07-16T10:12:56.525137Z"}"#.into(),
                stage,
            ),
            (
                format!(r#"{{"stageTimestamp":"2000-01-01T00:00:00Z",{s}}}"#),
                stage,
            ),
            (format!(r#"{{{s},"stageTimestamp":"bad",{r}}}"#), received),
            (r#"{"kind":"Event"}"#.into(), NOW),
            (
                r#"{"stageTimestamp":"bad","requestReceivedTimestamp":"bad"}"#.into(),
                NOW,
            ),
            (format!(r#"{{"nested":{{{s},{r}}}}}"#), NOW),
            (format!(r#"{{"list":[{{{s}}}]}}"#), NOW),
            (
                r#"{"StageTimestamp":"2025-07-16T10:12:56.525137Z"}"#.into(),
                NOW,
            ),
            (
                r#"{"stageTimestamp ":"2025-07-16T10:12:56.525137Z"}"#.into(),
                NOW,
            ),
        ];
        for (line, want) in &cases {
            let (kind, out) = entry(line.as_bytes());
            assert_eq!(kind, Kind::Json, "{line}");
            let (t, got) = decode_entry(&out).unwrap();
            assert_eq!(t, *want, "{line}");
            // The keys stay in the record as they were.
            let parsed: Value = serde_json::from_slice(line.as_bytes()).unwrap();
            assert_same(&got, &parsed, line);
        }
    }

    #[test]
    fn transcode_write_event_time_and_now() {
        let mut out = vec![0xaa];
        write_event_time(
            EventTime {
                secs: 0x0102_0304,
                nanos: 0x0506_0708,
            },
            &mut out,
        );
        assert_eq!(out, [0xaa, 0xd7, 0x00, 1, 2, 3, 4, 5, 6, 7, 8]);

        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let now = now_event_time();
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(u64::from(now.secs) >= before && u64::from(now.secs) <= after);
        assert!(now.nanos < 1_000_000_000);
    }

    /// `append_entry_at` into a buffer that already holds bytes past `at` (a reused chunk buffer,
    /// the room an earlier entry left) writes exactly what `append_entry` writes into an empty
    /// one, leaves the bytes before `at` alone, and ends where that entry ends; whatever the stale
    /// bytes are, and whether or not they reach past the entry.
    #[test]
    fn append_entry_at_ignores_what_the_buffer_held_past_at() {
        let mut lines: Vec<Vec<u8>> = sample_lines().into_iter().map(|(_, l)| l).collect();
        lines.push(modern_event());
        for n in [
            0, 1, 13, 14, 15, 16, 29, 30, 31, 32, 33, 62, 63, 64, 200, 300,
        ] {
            let v = "v".repeat(n);
            lines.push(format!(r#"{{"{v}":"{v}","k":["{v}",1,-2,3.5,true,null,{{}},[]]}}"#).into());
            lines.push(format!(r#"{{"e":"{v}\"\u003c\n\u00e9{v}\ud83d\ude00"}}"#).into());
        }
        let many: Vec<String> = (0..70_000).map(|i| i.to_string()).collect();
        lines.push(format!(r#"{{"a":[{}],"o":{{"x":1}}}}"#, many[..20].join(",")).into());
        lines.push(format!(r#"{{"a":[{}]}}"#, many.join(",")).into());
        let members: Vec<String> = (0..40).map(|i| format!(r#""k{i}":{i}"#)).collect();
        lines.push(format!("{{{}}}", members.join(",")).into());
        lines.push(format!(r#"{{"d":{}1{}}}"#, "[".repeat(40), "]".repeat(40)).into());
        lines.push(br#"{"stageTimestamp":"2024-05-01T10:20:30.123456Z","x":1e400}"#.to_vec());
        lines.push(b"not json at all".to_vec());
        lines.push(b"{\"bad\":\"\xff\xfe\"}".to_vec());
        lines.push(br#"{"a":1} trailing"#.to_vec());

        let mut all_fresh = Vec::new();
        for line in &lines {
            let mut fresh = Vec::new();
            let kind = append_entry(line, NOW, &mut fresh);
            all_fresh.extend_from_slice(&fresh);
            let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
            // The reference itself is checked against an independent decoder, so that the two
            // writers cannot agree on a mistake they share.
            match kind {
                Kind::Json => {
                    let (_, got) = decode_entry(&fresh).unwrap_or_else(|e| panic!("{shown}: {e}"));
                    let want: Value = serde_json::from_slice(line).expect("valid for serde_json");
                    assert_same(&got, &want, &shown);
                }
                Kind::Fallback => assert_eq!(fresh, fallback_bytes(line, NOW), "{shown}"),
            }
            for fill in [0x00, 0xff, b'"', b'\\', 0x80, 0x92, 0xd9] {
                for prefix in [0, 3, 17] {
                    for room in [fresh.len() * 2 + 100, fresh.len() / 2, 0] {
                        let mut buf = vec![0x11; prefix];
                        buf.resize(prefix + room, fill);
                        let (got_kind, end) = append_entry_at(line, NOW, &mut buf, prefix);
                        let context = format!("{shown} fill {fill:#x} prefix {prefix} room {room}");
                        assert_eq!(got_kind, kind, "{context}");
                        assert!(buf[..prefix].iter().all(|&b| b == 0x11), "{context}");
                        assert_eq!(&buf[prefix..end], &fresh[..], "{context}");
                    }
                }
            }
        }
        // One after another in a buffer full of stale bytes, as a chunk builder appends them.
        let mut buf = vec![0xa5; all_fresh.len() + 4096];
        let mut at = 0;
        for line in &lines {
            at = append_entry_at(line, NOW, &mut buf, at).1;
        }
        assert_eq!(&buf[..at], &all_fresh[..]);
    }

    /// The sample audit lines of `tests/data`, each named `file:line`.
    fn sample_lines() -> Vec<(String, Vec<u8>)> {
        crate::forward::msgpack::tests::AUDIT_SAMPLES
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .map(|(n, l)| {
                (
                    format!("audit-events.jsonl:{}", n + 1),
                    l.as_bytes().to_vec(),
                )
            })
            .collect()
    }

    #[test]
    fn transcode_audit_samples() {
        let lines = sample_lines();
        let (mut objects, mut from_stage, mut from_received, mut fallbacks) = (0, 0, 0, 0);
        for (name, line) in &lines {
            let mut out = Vec::new();
            let kind = append_entry(line, NOW, &mut out);
            let (t, got) = decode_entry(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
            match serde_json::from_slice::<Value>(line) {
                Ok(want) if want.is_object() => {
                    assert_eq!(kind, Kind::Json, "{name}");
                    assert_same(&got, &want, name);
                    let stage = want["stageTimestamp"]
                        .as_str()
                        .and_then(|s| parse_rfc3339(s.as_bytes()));
                    let received = want["requestReceivedTimestamp"]
                        .as_str()
                        .and_then(|s| parse_rfc3339(s.as_bytes()));
                    assert_eq!(t, stage.or(received).unwrap_or(NOW), "{name}");
                    objects += 1;
                    from_stage += usize::from(stage.is_some());
                    from_received += usize::from(stage.is_none() && received.is_some());
                }
                _ => {
                    assert_eq!(kind, Kind::Fallback, "{name}");
                    assert_eq!(out, fallback_bytes(line, NOW), "{name}");
                    fallbacks += 1;
                }
            }
            // The same event cut short by its last byte, as a torn write would leave it, is kept
            // whole as text.
            let torn = &line[..line.len() - 1];
            let mut out = Vec::new();
            assert_eq!(append_entry(torn, NOW, &mut out), Kind::Fallback, "{name}");
            assert_eq!(out, fallback_bytes(torn, NOW), "{name}");
        }
        // The samples hold every path: the time from stageTimestamp (every real kube-apiserver
        // event), from requestReceivedTimestamp, from "now" (hand-made shapes), and a torn line.
        assert_eq!(
            (objects, from_stage, from_received, fallbacks),
            (17, 15, 1, 1),
            "(objects, from stageTimestamp, from requestReceivedTimestamp, not objects) of {} lines",
            lines.len()
        );
    }

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Whatever the input: no panic, one well-formed entry, and Json exactly when serde_json also
    /// reads an object (serde_json rejects lone surrogates, which we map to U+FFFD, so inputs with
    /// `\u` are compared only one way).
    fn check_arbitrary(line: &[u8]) {
        let mut out = b"prefix".to_vec();
        let kind = append_entry(line, NOW, &mut out);
        assert_eq!(&out[..6], b"prefix");
        let (_, got) = decode_entry(&out[6..])
            .unwrap_or_else(|e| panic!("{e} for {:?}", String::from_utf8_lossy(line)));
        let serde = serde_json::from_slice::<Value>(line)
            .ok()
            .filter(Value::is_object);
        match (kind, serde) {
            (Kind::Json, Some(want)) => assert_same(&got, &want, &String::from_utf8_lossy(line)),
            (Kind::Fallback, None) => assert_eq!(out[6..], fallback_bytes(line, NOW)),
            (Kind::Json, None) if line.windows(2).any(|w| w == b"\\u") => {}
            (kind, serde) => panic!(
                "{kind:?} but serde_json says {serde:?} for {:?}",
                String::from_utf8_lossy(line)
            ),
        }
    }

    #[test]
    fn transcode_never_panics_on_truncations_and_mutations() {
        let lines = sample_lines();
        let (_, sample) = lines
            .iter()
            .find(|(_, l)| String::from_utf8_lossy(l).contains(r#""name":"my-config","#))
            .expect("the ConfigMap sample");
        let extra = br#"{"a":[1,-2,3.5e-7,"\u00e9\ud83d\ude00\n",{"b":null,"c":true}],"d":"x"}"#;
        for base in [&sample[..], &extra[..]] {
            for end in 0..=base.len() {
                check_arbitrary(&base[..end]);
                check_arbitrary(&base[end..]);
            }
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let interesting =
            b"{}[]\",:\\u0123456789abcdefABCDEF-+.eEtrufalsn \t\r\n\x00\x1f\x7f\x80\xc3\xa9\xff";
        for _ in 0..20_000 {
            let mut line = extra.to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(line.len() + 1);
                let b = interesting[rng.below(interesting.len())];
                match rng.below(3) {
                    0 if at < line.len() => line[at] = b,
                    1 if at < line.len() => {
                        line.remove(at);
                    }
                    _ => line.insert(at, b),
                }
            }
            check_arbitrary(&line);
        }
        for _ in 0..5_000 {
            let len = rng.below(64);
            let line: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            check_arbitrary(&line);
            let line: Vec<u8> = (0..len)
                .map(|_| interesting[rng.below(interesting.len())])
                .collect();
            check_arbitrary(&line);
        }
    }

    #[test]
    fn transcode_find_special_agrees_with_bytewise_scan() {
        let mut rng = Rng(42);
        let alphabet = b"ab\"\\\x00\x1f\x20\x7f\x80\xff\x21\x5b\x5d\x22";
        for _ in 0..20_000 {
            let len = rng.below(40);
            let s: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(4) == 0 {
                        alphabet[rng.below(alphabet.len())]
                    } else {
                        rng.next() as u8
                    }
                })
                .collect();
            let start = rng.below(len + 1);
            let want = (start..len)
                .find(|&i| s[i] == b'"' || s[i] == b'\\' || s[i] < 0x20)
                .unwrap_or(len);
            assert_eq!(find_special(&s, start), want, "{s:02x?} from {start}");
        }
    }

    /// A ~1 KB kube-apiserver v1 event as written today (compact, Go escaping, 6-digit fractions).
    fn modern_event() -> Vec<u8> {
        br#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"6f1c5a0e-2b7d-4c9e-9a51-3f0e8d7c2b14","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/kube-system/configmaps?labelSelector=app%3Dcoredns\u0026limit=500\u0026resourceVersion=0","verb":"list","user":{"username":"system:serviceaccount:kube-system:coredns","uid":"0b8b3a62-5d0e-4bb5-a1f4-7c3f0e1d9a22","groups":["system:serviceaccounts","system:serviceaccounts:kube-system","system:authenticated"],"extra":{"authentication.kubernetes.io/credential-id":["JTI=4c1d7e9a-0f35-4b6e-8a2d-91c7b3e5f604"],"authentication.kubernetes.io/node-name":["shoot--garden--prod-worker-z1-5f7d9-x8k2p"],"authentication.kubernetes.io/pod-name":["coredns-7d8c9b6f5-4lq2z"]}},"sourceIPs":["10.250.0.17"],"userAgent":"coredns/v1.11.3 (linux/amd64) kubernetes/$Format","objectRef":{"resource":"configmaps","namespace":"kube-system","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":"2025-07-16T10:12:56.521030Z","stageTimestamp":"2025-07-16T10:12:56.525137Z","annotations":{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"RBAC: allowed by ClusterRoleBinding \"system:coredns\" of ClusterRole \"system:coredns\" to ServiceAccount \"coredns/kube-system\""}}"#.to_vec()
    }

    #[test]
    fn transcode_modern_event_round_trips() {
        let line = modern_event();
        let (kind, out) = entry(&line);
        assert_eq!(kind, Kind::Json);
        let (t, got) = decode_entry(&out).unwrap();
        assert_same(
            &got,
            &serde_json::from_slice::<Value>(&line).unwrap(),
            "modern",
        );
        assert_eq!(
            t,
            EventTime {
                secs: 1752660776,
                nanos: 525_137_000
            }
        );
    }

    /// Splits and transcodes a generated corpus (`gen corpus --out FILE`, path in `PERF_CORPUS`,
    /// default /tmp/perf-corpus.log) as the forwarder does, `PERF_ROUNDS` times (default 5),
    /// reporting the best and median rate. Under callgrind with `PERF_ROUNDS=1` the instruction
    /// count per corpus byte is deterministic, where wall time on a shared machine is not.
    #[test]
    #[ignore = "cost measurement; run with --release --ignored --nocapture, or under callgrind"]
    fn transcode_corpus_cost() {
        let path = std::env::var("PERF_CORPUS").unwrap_or_else(|_| "/tmp/perf-corpus.log".into());
        let data = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{path}: {e} (cargo run --example gen -- corpus)"));
        let rounds: usize = std::env::var("PERF_ROUNDS").map_or(5, |r| r.parse().unwrap());
        let mut out = Vec::with_capacity(1 << 20);
        let mut rates: Vec<f64> = (0..rounds)
            .map(|_| {
                let mut splitter = crate::follow::lines::Splitter::new(1 << 20);
                let (mut json, mut other) = (0usize, 0usize);
                let start = std::time::Instant::now();
                let mut offset = 0u64;
                for chunk in data.chunks(64 * 1024) {
                    splitter.feed(chunk, offset, |piece, _| match piece {
                        crate::follow::lines::Piece::Line(line) => {
                            match append_entry(line, NOW, &mut out) {
                                Kind::Json => json += 1,
                                Kind::Fallback => other += 1,
                            }
                        }
                        crate::follow::lines::Piece::TooLong { .. } => other += 1,
                    });
                    offset += chunk.len() as u64;
                    std::hint::black_box(&out);
                    out.clear();
                }
                let secs = start.elapsed().as_secs_f64();
                assert!(json > 0 && other == 0, "{json} json, {other} other lines");
                data.len() as f64 / 1e6 / secs
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        println!(
            "corpus: {} B, {rounds} rounds: best {:.0} MB/s, median {:.0} MB/s",
            data.len(),
            rates[rounds - 1],
            rates[rounds / 2]
        );
    }

    #[test]
    #[ignore = "throughput figure for information; run with --release --ignored --nocapture"]
    fn transcode_throughput() {
        let line = modern_event();
        let per_round = 100_000;
        let mut out = Vec::with_capacity(1 << 20);
        // The machine is shared, so report the best and the median of several rounds.
        let mut rates: Vec<f64> = (0..7)
            .map(|_| {
                let mut json = 0usize;
                let start = std::time::Instant::now();
                for _ in 0..per_round {
                    if out.len() > (1 << 20) - 2048 {
                        out.clear();
                    }
                    let line = std::hint::black_box(&line[..]);
                    if append_entry(line, NOW, &mut out) == Kind::Json {
                        json += 1;
                    }
                }
                let secs = start.elapsed().as_secs_f64();
                std::hint::black_box(&out);
                assert_eq!(json, per_round);
                (line.len() * per_round) as f64 / 1e6 / secs
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        println!(
            "transcode: {} B event, 7 x {per_round}: best {:.0} MB/s, median {:.0} MB/s ({:.0} ns/event)",
            line.len(),
            rates[6],
            rates[3],
            line.len() as f64 * 1e3 / rates[3]
        );
    }
}
