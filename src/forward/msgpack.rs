//! MessagePack reading without I/O: framing (`value_len`, `Scanner`), a borrowing typed cursor
//! (`Reader`) and the msgpack -> JSON printer used by the tailer (`write_json`). Writing msgpack is
//! left to `rmp::encode`; this module owns everything that interprets bytes a peer sent us, so
//! every length it reads is checked against the input and against caller-given caps.

use std::fmt;

/// Nesting depth that no audit event comes near (Kubernetes objects nest a few dozen levels) but
/// that keeps the per-value bookkeeping of a hostile peer small.
pub const DEFAULT_MAX_DEPTH: usize = 1024;

/// Caps applied while framing values a peer can make arbitrarily large.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest declared str/bin/ext byte length or array/map item count.
    pub max_len: usize,
    /// Largest number of arrays/maps open at the same time.
    pub max_depth: usize,
}

/// The family of a msgpack value, from its marker byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nil,
    Bool,
    Int,
    Float,
    Str,
    Bin,
    Array,
    Map,
    Ext,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Nil => "nil",
            Kind::Bool => "bool",
            Kind::Int => "int",
            Kind::Float => "float",
            Kind::Str => "str",
            Kind::Bin => "bin",
            Kind::Array => "array",
            Kind::Map => "map",
            Kind::Ext => "ext",
        }
    }
}

/// What went wrong, and where (`offset` counts from the start of the buffer given to the call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The input ended inside a value that the caller said was complete.
    Truncated {
        offset: usize,
        expected: &'static str,
    },
    /// A marker of the wrong family, or the never-used marker 0xc1.
    Unexpected {
        offset: usize,
        expected: &'static str,
        found: u8,
    },
    /// A declared length or item count above `Limits::max_len`.
    TooLong { offset: usize, len: u64, max: usize },
    /// More than `Limits::max_depth` arrays/maps nested.
    TooDeep { offset: usize, max: usize },
    /// An integer that does not fit the requested type.
    OutOfRange {
        offset: usize,
        expected: &'static str,
    },
    /// `write_json` would print more than `max` bytes (`offset` is where it stopped reading).
    TooLarge { offset: usize, max: usize },
}

fn marker_name(b: u8) -> &'static str {
    if b == 0xc1 {
        return "never-used marker";
    }
    match head(&[b], 0) {
        Ok(Some(h)) => h.kind.name(),
        // Markers with a length field need more than one byte to parse; the family is known
        // from the byte alone.
        _ => match b {
            0xc4..=0xc6 => "bin",
            0xc7..=0xc9 | 0xd4..=0xd8 => "ext",
            0xca | 0xcb => "float",
            0xcc..=0xd3 => "int",
            0xd9..=0xdb => "str",
            0xdc | 0xdd => "array",
            0xde | 0xdf => "map",
            _ => "value",
        },
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated { offset, expected } => {
                write!(f, "at byte {offset}: input ends inside {expected}")
            }
            Error::Unexpected {
                offset,
                expected,
                found,
            } => write!(
                f,
                "at byte {offset}: expected {expected}, found 0x{found:02x} ({})",
                marker_name(*found)
            ),
            Error::TooLong { offset, len, max } => {
                write!(
                    f,
                    "at byte {offset}: declared length {len} exceeds the cap of {max}"
                )
            }
            Error::TooDeep { offset, max } => {
                write!(f, "at byte {offset}: nesting deeper than {max} levels")
            }
            Error::OutOfRange { offset, expected } => {
                write!(f, "at byte {offset}: integer does not fit {expected}")
            }
            Error::TooLarge { offset, max } => {
                write!(
                    f,
                    "at byte {offset}: its JSON text exceeds the cap of {max} bytes"
                )
            }
        }
    }
}

impl std::error::Error for Error {}

/// A decoded marker: for scalars `hdr` is the whole value and `len` is 0; for str/bin/ext `hdr`
/// covers marker, length and ext type and `len` is the payload size; for array/map `len` is the
/// item (pair) count.
#[derive(Debug, Clone, Copy)]
struct Head {
    kind: Kind,
    hdr: usize,
    len: u64,
}

/// Decodes the marker at the start of `buf`; `Ok(None)` if the header is not complete yet.
fn head(buf: &[u8], offset: usize) -> Result<Option<Head>, Error> {
    let Some(&m) = buf.first() else {
        return Ok(None);
    };
    let fixed = |kind, hdr, len| Head { kind, hdr, len };
    // Markers whose length follows as a big-endian field: (kind, field size, ext type byte).
    let (kind, field, extra) = match m {
        0x00..=0x7f | 0xe0..=0xff => return complete(buf, fixed(Kind::Int, 1, 0)),
        0x80..=0x8f => return complete(buf, fixed(Kind::Map, 1, u64::from(m & 0x0f))),
        0x90..=0x9f => return complete(buf, fixed(Kind::Array, 1, u64::from(m & 0x0f))),
        0xa0..=0xbf => return complete(buf, fixed(Kind::Str, 1, u64::from(m & 0x1f))),
        0xc0 => return complete(buf, fixed(Kind::Nil, 1, 0)),
        0xc1 => {
            return Err(Error::Unexpected {
                offset,
                expected: "a msgpack value",
                found: m,
            })
        }
        0xc2 | 0xc3 => return complete(buf, fixed(Kind::Bool, 1, 0)),
        0xca => return complete(buf, fixed(Kind::Float, 5, 0)),
        0xcb => return complete(buf, fixed(Kind::Float, 9, 0)),
        0xcc | 0xd0 => return complete(buf, fixed(Kind::Int, 2, 0)),
        0xcd | 0xd1 => return complete(buf, fixed(Kind::Int, 3, 0)),
        0xce | 0xd2 => return complete(buf, fixed(Kind::Int, 5, 0)),
        0xcf | 0xd3 => return complete(buf, fixed(Kind::Int, 9, 0)),
        0xd4..=0xd8 => return complete(buf, fixed(Kind::Ext, 2, 1 << (m - 0xd4))),
        0xc4 => (Kind::Bin, 1, 0),
        0xc5 => (Kind::Bin, 2, 0),
        0xc6 => (Kind::Bin, 4, 0),
        0xc7 => (Kind::Ext, 1, 1),
        0xc8 => (Kind::Ext, 2, 1),
        0xc9 => (Kind::Ext, 4, 1),
        0xd9 => (Kind::Str, 1, 0),
        0xda => (Kind::Str, 2, 0),
        0xdb => (Kind::Str, 4, 0),
        0xdc => (Kind::Array, 2, 0),
        0xdd => (Kind::Array, 4, 0),
        0xde => (Kind::Map, 2, 0),
        0xdf => (Kind::Map, 4, 0),
    };
    let hdr = 1 + field + extra;
    if buf.len() < hdr {
        return Ok(None);
    }
    let len = be(&buf[1..1 + field]);
    Ok(Some(Head { kind, hdr, len }))
}

fn complete(buf: &[u8], h: Head) -> Result<Option<Head>, Error> {
    Ok((buf.len() >= h.hdr).then_some(h))
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |acc, &b| acc << 8 | u64::from(b))
}

/// Bytes the value occupies after its header (0 for containers, whose items follow as values).
fn payload_len(h: &Head) -> u64 {
    match h.kind {
        Kind::Str | Kind::Bin | Kind::Ext => h.len,
        _ => 0,
    }
}

/// Length of the first complete msgpack value in `buf`, `Ok(None)` if more bytes are needed.
pub fn value_len(buf: &[u8], limits: &Limits) -> Result<Option<usize>, Error> {
    Scanner::new().scan(buf, limits)
}

/// Resumable `value_len` for a receive buffer that only grows at its end: a value arriving in
/// many reads is walked once in total instead of once per read.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Start of the first token not yet walked.
    pos: usize,
    /// Items still to come in each open array/map (map pairs count as two items).
    pending: Vec<u64>,
}

impl Scanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets progress; the next `scan` starts a new value at the start of its buffer.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.pending.clear();
    }

    /// Continues walking the value at the start of `buf`, which must begin with the bytes given
    /// to earlier calls since the last reset. Returns the value's length once it is complete
    /// (and resets), `Ok(None)` if more bytes are needed.
    pub fn scan(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<usize>, Error> {
        loop {
            let Some(rest) = buf.get(self.pos..) else {
                // Only reachable if the caller shrank the buffer: nothing new to look at.
                return Ok(None);
            };
            let Some(h) = head(rest, self.pos)? else {
                return Ok(None);
            };
            if matches!(
                h.kind,
                Kind::Str | Kind::Bin | Kind::Ext | Kind::Array | Kind::Map
            ) && h.len > limits.max_len as u64
            {
                return Err(Error::TooLong {
                    offset: self.pos,
                    len: h.len,
                    max: limits.max_len,
                });
            }
            match h.kind {
                Kind::Array | Kind::Map => {
                    if self.pending.len() >= limits.max_depth {
                        return Err(Error::TooDeep {
                            offset: self.pos,
                            max: limits.max_depth,
                        });
                    }
                    self.pos += h.hdr;
                    let items = if h.kind == Kind::Map {
                        h.len * 2
                    } else {
                        h.len
                    };
                    if items > 0 {
                        self.pending.push(items);
                        continue;
                    }
                }
                _ => {
                    let total = h.hdr as u64 + payload_len(&h);
                    if (rest.len() as u64) < total {
                        return Ok(None);
                    }
                    self.pos += total as usize;
                }
            }
            // One item is complete; it may complete its container, and so on upwards.
            loop {
                match self.pending.last_mut() {
                    None => {
                        let len = self.pos;
                        self.reset();
                        return Ok(Some(len));
                    }
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.pending.pop();
                    }
                }
            }
        }
    }
}

/// A borrowing cursor over a buffer that holds complete values: running out of input is an
/// error here, not "need more".
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: Limits,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self::with_limits(
            buf,
            Limits {
                max_len: usize::MAX,
                max_depth: DEFAULT_MAX_DEPTH,
            },
        )
    }

    /// `limits` apply to `skip`, the only read that walks nested values.
    pub fn with_limits(buf: &'a [u8], limits: Limits) -> Self {
        Reader {
            buf,
            pos: 0,
            limits,
        }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn head(&self, expected: &'static str) -> Result<Head, Error> {
        head(self.remaining(), self.pos)?.ok_or(Error::Truncated {
            offset: self.pos,
            expected,
        })
    }

    fn unexpected(&self, expected: &'static str) -> Error {
        Error::Unexpected {
            offset: self.pos,
            expected,
            found: self.buf[self.pos],
        }
    }

    pub fn peek_kind(&self) -> Result<Kind, Error> {
        // A truncated header still has a known family.
        match head(self.remaining(), self.pos)? {
            Some(h) => Ok(h.kind),
            None if self.is_empty() => Err(Error::Truncated {
                offset: self.pos,
                expected: "a msgpack value",
            }),
            None => Err(Error::Truncated {
                offset: self.pos,
                expected: marker_name(self.buf[self.pos]),
            }),
        }
    }

    fn container(&mut self, kind: Kind, expected: &'static str) -> Result<u32, Error> {
        let h = self.head(expected)?;
        if h.kind != kind {
            return Err(self.unexpected(expected));
        }
        self.pos += h.hdr;
        // Container counts are at most 32 bits wide on the wire.
        Ok(h.len as u32)
    }

    pub fn array_len(&mut self) -> Result<u32, Error> {
        self.container(Kind::Array, "array")
    }

    pub fn map_len(&mut self) -> Result<u32, Error> {
        self.container(Kind::Map, "map")
    }

    fn bytes(
        &mut self,
        str_ok: bool,
        bin_ok: bool,
        expected: &'static str,
    ) -> Result<&'a [u8], Error> {
        let h = self.head(expected)?;
        let ok = (str_ok && h.kind == Kind::Str) || (bin_ok && h.kind == Kind::Bin);
        if !ok {
            return Err(self.unexpected(expected));
        }
        let start = self.pos + h.hdr;
        let end = self.checked_end(start, h.len, expected)?;
        self.pos = end;
        Ok(&self.buf[start..end])
    }

    fn checked_end(&self, start: usize, len: u64, expected: &'static str) -> Result<usize, Error> {
        if len > (self.buf.len() - start) as u64 {
            return Err(Error::Truncated {
                offset: self.pos,
                expected,
            });
        }
        Ok(start + len as usize)
    }

    pub fn str(&mut self) -> Result<&'a [u8], Error> {
        self.bytes(true, false, "str")
    }

    #[cfg(test)]
    pub fn bin(&mut self) -> Result<&'a [u8], Error> {
        self.bytes(false, true, "bin")
    }

    pub fn str_or_bin(&mut self) -> Result<&'a [u8], Error> {
        self.bytes(true, true, "str or bin")
    }

    fn integer(&mut self, expected: &'static str) -> Result<Int, Error> {
        let h = self.head(expected)?;
        if h.kind != Kind::Int {
            return Err(self.unexpected(expected));
        }
        let v = int_at(&self.buf[self.pos..self.pos + h.hdr]);
        self.pos += h.hdr;
        Ok(v)
    }

    pub fn uint(&mut self) -> Result<u64, Error> {
        let at = self.pos;
        match self.integer("unsigned integer")? {
            Int::U(v) => Ok(v),
            Int::I(v) if v >= 0 => Ok(v as u64),
            Int::I(_) => Err(Error::OutOfRange {
                offset: at,
                expected: "unsigned integer",
            }),
        }
    }

    pub fn int(&mut self) -> Result<i64, Error> {
        let at = self.pos;
        match self.integer("integer")? {
            Int::I(v) => Ok(v),
            Int::U(v) => i64::try_from(v).map_err(|_| Error::OutOfRange {
                offset: at,
                expected: "i64",
            }),
        }
    }

    /// A float32 or float64.
    pub fn float(&mut self) -> Result<f64, Error> {
        let h = self.head("float")?;
        if h.kind != Kind::Float {
            return Err(self.unexpected("float"));
        }
        let v = float_at(&self.buf[self.pos..self.pos + h.hdr]);
        self.pos += h.hdr;
        Ok(v)
    }

    /// Extension type and payload.
    pub fn ext(&mut self) -> Result<(i8, &'a [u8]), Error> {
        let h = self.head("ext")?;
        if h.kind != Kind::Ext {
            return Err(self.unexpected("ext"));
        }
        let ty = self.buf[self.pos + h.hdr - 1] as i8;
        let start = self.pos + h.hdr;
        let end = self.checked_end(start, h.len, "ext")?;
        self.pos = end;
        Ok((ty, &self.buf[start..end]))
    }

    /// Steps over one value of any kind and returns its raw bytes.
    pub fn skip(&mut self) -> Result<&'a [u8], Error> {
        let rest = self.remaining();
        let offset = self.pos;
        match value_len(rest, &self.limits).map_err(|e| shift(e, offset))? {
            Some(n) => {
                self.pos += n;
                Ok(&rest[..n])
            }
            None => Err(Error::Truncated {
                offset,
                expected: "a msgpack value",
            }),
        }
    }
}

/// Rebases an error's offset from a sub-slice onto the enclosing buffer.
fn shift(e: Error, by: usize) -> Error {
    match e {
        Error::Truncated { offset, expected } => Error::Truncated {
            offset: offset + by,
            expected,
        },
        Error::Unexpected {
            offset,
            expected,
            found,
        } => Error::Unexpected {
            offset: offset + by,
            expected,
            found,
        },
        Error::TooLong { offset, len, max } => Error::TooLong {
            offset: offset + by,
            len,
            max,
        },
        Error::TooDeep { offset, max } => Error::TooDeep {
            offset: offset + by,
            max,
        },
        Error::OutOfRange { offset, expected } => Error::OutOfRange {
            offset: offset + by,
            expected,
        },
        Error::TooLarge { offset, max } => Error::TooLarge {
            offset: offset + by,
            max,
        },
    }
}

enum Int {
    U(u64),
    I(i64),
}

/// Decodes a complete integer value (`v` is exactly its bytes).
fn int_at(v: &[u8]) -> Int {
    let m = v[0];
    let n = be(&v[1..]);
    match m {
        0x00..=0x7f => Int::U(u64::from(m)),
        0xe0..=0xff => Int::I(i64::from(m as i8)),
        0xcc..=0xcf => Int::U(n),
        0xd0 => Int::I(i64::from(n as u8 as i8)),
        0xd1 => Int::I(i64::from(n as u16 as i16)),
        0xd2 => Int::I(i64::from(n as u32 as i32)),
        _ => Int::I(n as i64),
    }
}

/// Decodes a complete float32/float64 value (`v` is exactly its bytes).
fn float_at(v: &[u8]) -> f64 {
    let n = be(&v[1..]);
    if v[0] == 0xca {
        f64::from(f32::from_bits(n as u32))
    } else {
        f64::from_bits(n)
    }
}

/// Writes one msgpack value as compact JSON and returns the bytes it occupied. On error `out` is
/// left as it was. Walks nested values with an explicit stack, so hostile nesting costs memory
/// proportional to the input, never native stack.
///
/// JSON keys must be strings. A scalar key is written as its JSON text in quotes (`{"1":2}`);
/// a key that is an array or a map becomes one string holding its compact JSON text, escaped
/// once. Inside that text, nested array and map keys are written as they are rather than
/// stringified again, because escaping per level doubles the backslashes at every level: a
/// 130-byte message with keys nested 40 deep would print terabytes. The output is therefore
/// linear in the input, and more than `max_out` bytes of it is refused with `Error::TooLarge`.
pub fn write_json(value: &[u8], max_out: usize, out: &mut Vec<u8>) -> Result<usize, Error> {
    let start = out.len();
    let r = write_json_inner(value, max_out, out);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

struct Frame {
    map: bool,
    total: u64,
    left: u64,
    /// Where an array or map used as a key of this map started in `out`: its JSON text becomes
    /// a string once the key is complete. Set on at most one frame at a time (the outermost
    /// such key); keys nested inside it stay as they are.
    key_start: Option<usize>,
}

fn write_json_inner(value: &[u8], max_out: usize, out: &mut Vec<u8>) -> Result<usize, Error> {
    // The length `out` must not exceed.
    let limit = out.len().saturating_add(max_out);
    let too_large = |pos| Error::TooLarge {
        offset: pos,
        max: max_out,
    };
    let mut stack: Vec<Frame> = Vec::new();
    // Whether some frame's `key_start` is set: keys inside that key are not stringified again.
    let mut in_key = false;
    // The JSON text of a container key while it is escaped into a string; allocated only if
    // the record has such keys, which audit events never do.
    let mut key_text: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        let mut is_key = false;
        if let Some(f) = stack.last() {
            let i = f.total - f.left;
            if f.map && i % 2 == 1 {
                out.push(b':');
            } else {
                is_key = f.map;
                if i > 0 {
                    out.push(b',');
                }
            }
        }
        let rest = &value[pos..];
        let h = head(rest, pos)?.ok_or(Error::Truncated {
            offset: pos,
            expected: "a msgpack value",
        })?;
        let total = h.hdr as u64 + payload_len(&h);
        if (rest.len() as u64) < total {
            return Err(Error::Truncated {
                offset: pos,
                expected: h.kind.name(),
            });
        }
        let total = total as usize;
        let container = matches!(h.kind, Kind::Array | Kind::Map);
        let quote = is_key && !container && !matches!(h.kind, Kind::Str | Kind::Bin);
        if is_key && container && !in_key {
            if let Some(f) = stack.last_mut() {
                f.key_start = Some(out.len());
                in_key = true;
            }
        }
        if quote {
            // Scalar text (digits, `.`, `-`, `e`, null, true, false) needs no escaping.
            out.push(b'"');
        }
        let payload = &rest[h.hdr..total];
        match h.kind {
            Kind::Nil => out.extend_from_slice(b"null"),
            Kind::Bool => out.extend_from_slice(if rest[0] == 0xc3 { b"true" } else { b"false" }),
            Kind::Int => match int_at(&rest[..total]) {
                Int::U(v) => write_u64(v, out),
                Int::I(v) => {
                    if v < 0 {
                        out.push(b'-');
                    }
                    write_u64(v.unsigned_abs(), out);
                }
            },
            Kind::Float => {
                if rest[0] == 0xca {
                    let f = f32::from_bits(be(&rest[1..5]) as u32);
                    write_float(f.is_finite(), format_args!("{f:?}"), out);
                } else {
                    let f = float_at(&rest[..total]);
                    write_float(f.is_finite(), format_args!("{f:?}"), out);
                }
            }
            Kind::Str | Kind::Bin => {
                if !write_json_str(payload, limit, out) {
                    return Err(too_large(pos));
                }
            }
            Kind::Ext => {
                let ty = rest[h.hdr - 1] as i8;
                if ty == 0 && payload.len() == 8 {
                    write_event_time(payload, out);
                } else {
                    out.extend_from_slice(b"null");
                }
            }
            Kind::Array | Kind::Map => {
                let map = h.kind == Kind::Map;
                out.push(if map { b'{' } else { b'[' });
                pos += h.hdr;
                if h.len > 0 {
                    let items = if map { h.len * 2 } else { h.len };
                    stack.push(Frame {
                        map,
                        total: items,
                        left: items,
                        key_start: None,
                    });
                    continue;
                }
                out.push(if map { b'}' } else { b']' });
            }
        }
        if quote {
            out.push(b'"');
        }
        if !container {
            pos += total;
        }
        loop {
            if out.len() > limit {
                return Err(too_large(pos));
            }
            let Some(f) = stack.last_mut() else {
                return Ok(pos);
            };
            if f.map && (f.total - f.left) % 2 == 0 {
                if let Some(s) = f.key_start.take() {
                    in_key = false;
                    key_text.clear();
                    key_text.extend_from_slice(&out[s..]);
                    out.truncate(s);
                    if !write_json_str(&key_text, limit, out) {
                        return Err(too_large(pos));
                    }
                }
            }
            f.left -= 1;
            if f.left > 0 {
                break;
            }
            out.push(if f.map { b'}' } else { b']' });
            stack.pop();
        }
    }
}

fn write_u64(mut v: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Rust's `{:?}` gives the shortest text that reads back as the same float, but prints whole
/// numbers below 1e16 as `1.0` and larger ones as `1e16`; either way a `.` or `e` is present,
/// which JSON readers need to keep the value a float. Appending `.0` guards the guarantee.
fn write_float(finite: bool, text: fmt::Arguments<'_>, out: &mut Vec<u8>) {
    if !finite {
        out.extend_from_slice(b"null");
        return;
    }
    let start = out.len();
    fmt::Write::write_fmt(&mut VecWriter(out), text)
        // Formatting a float into memory has no failure path.
        .expect("formatting a float cannot fail");
    if !out[start..]
        .iter()
        .any(|&b| b == b'.' || b == b'e' || b == b'E')
    {
        out.extend_from_slice(b".0");
    }
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Fluentd EventTime (ext 0: u32 BE seconds, u32 BE nanoseconds) as a decimal number of seconds,
/// written digit-exact rather than through f64 so no nanoseconds are lost.
fn write_event_time(payload: &[u8], out: &mut Vec<u8>) {
    let secs = be(&payload[..4]);
    let nanos = be(&payload[4..]);
    if nanos >= 1_000_000_000 {
        // Out-of-range nanoseconds cannot be written as a fraction; add them up as a float.
        let f = secs as f64 + nanos as f64 / 1e9;
        write_float(true, format_args!("{f:?}"), out);
        return;
    }
    write_u64(secs, out);
    out.push(b'.');
    let mut digits = Vec::with_capacity(9);
    write_u64(nanos, &mut digits);
    out.extend(std::iter::repeat_n(b'0', 9 - digits.len()));
    out.extend_from_slice(&digits);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A JSON string literal: `"` and `\` escaped, control characters as `\u00XX`, other UTF-8 kept
/// as is, each invalid UTF-8 sequence replaced by U+FFFD (as `String::from_utf8_lossy` does).
/// Returns false, with `out` partly written, as soon as `out` would grow past `limit`; the
/// checks sit where the text is longer than the input, so the common case pays nothing.
#[must_use]
fn write_json_str(bytes: &[u8], limit: usize, out: &mut Vec<u8>) -> bool {
    // The literal is at least as long as the input plus its quotes.
    if out.len().saturating_add(bytes.len()).saturating_add(2) > limit {
        return false;
    }
    out.push(b'"');
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid().as_bytes();
        let mut run = 0;
        for (i, &b) in valid.iter().enumerate() {
            if b >= 0x20 && b != b'"' && b != b'\\' {
                continue;
            }
            out.extend_from_slice(&valid[run..i]);
            run = i + 1;
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                _ => out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0x0f)],
                ]),
            }
            if out.len() > limit {
                return false;
            }
        }
        out.extend_from_slice(&valid[run..]);
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
            if out.len() > limit {
                return false;
            }
        }
    }
    out.push(b'"');
    out.len() <= limit
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const BIG: Limits = Limits {
        max_len: usize::MAX,
        max_depth: DEFAULT_MAX_DEPTH,
    };

    fn enc(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut v = Vec::new();
        f(&mut v);
        v
    }

    /// One sample of every marker family, with the JSON we print for it.
    fn samples() -> Vec<(&'static str, Vec<u8>, String)> {
        use rmp::encode as e;
        let long = "x".repeat(300);
        let forty = "y".repeat(40);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("nil", vec![0xc0], "null"),
            ("false", vec![0xc2], "false"),
            ("true", vec![0xc3], "true"),
            ("posfixint", vec![0x05], "5"),
            ("negfixint", vec![0xff], "-1"),
            ("u8", vec![0xcc, 200], "200"),
            ("u16", vec![0xcd, 1, 0], "256"),
            ("u32", vec![0xce, 0, 1, 0, 0], "65536"),
            (
                "u64 max",
                enc(|v| drop(e::write_u64(v, u64::MAX))),
                "18446744073709551615",
            ),
            ("i8", vec![0xd0, 0x80], "-128"),
            ("i16", vec![0xd1, 0xff, 0x00], "-256"),
            ("i32", vec![0xd2, 0xff, 0xff, 0xff, 0xfe], "-2"),
            (
                "i64 min",
                enc(|v| drop(e::write_i64(v, i64::MIN))),
                "-9223372036854775808",
            ),
            ("f32", enc(|v| drop(e::write_f32(v, 0.1))), "0.1"),
            ("f64", enc(|v| drop(e::write_f64(v, 1.5))), "1.5"),
            ("f64 whole", enc(|v| drop(e::write_f64(v, 3.0))), "3.0"),
            ("f64 big", enc(|v| drop(e::write_f64(v, 1e300))), "1e300"),
            ("f64 nan", enc(|v| drop(e::write_f64(v, f64::NAN))), "null"),
            (
                "f64 inf",
                enc(|v| drop(e::write_f64(v, f64::INFINITY))),
                "null",
            ),
            ("fixstr", vec![0xa2, b'h', b'i'], "\"hi\""),
            ("str8", enc(|v| drop(e::write_str(v, &forty))), "FORTY"),
            ("str16", enc(|v| drop(e::write_str(v, &long))), "LONG"),
            ("str32", vec![0xdb, 0, 0, 0, 1, b'z'], "\"z\""),
            ("bin8", vec![0xc4, 2, b'o', b'k'], "\"ok\""),
            ("bin16", vec![0xc5, 0, 1, b'a'], "\"a\""),
            ("bin32", vec![0xc6, 0, 0, 0, 0], "\"\""),
            ("fixext1", vec![0xd4, 5, 1], "null"),
            ("fixext2", vec![0xd5, 5, 1, 2], "null"),
            ("fixext4", vec![0xd6, 5, 1, 2, 3, 4], "null"),
            (
                "fixext8 eventtime",
                vec![0xd7, 0, 0x65, 0x53, 0xf1, 0x00, 0x07, 0x5b, 0xcd, 0x15],
                "1700000000.123456789",
            ),
            ("fixext16", [vec![0xd8, 1], vec![0; 16]].concat(), "null"),
            (
                "ext8 eventtime",
                vec![0xc7, 8, 0, 0, 0, 0, 1, 0, 0, 0, 5],
                "1.000000005",
            ),
            ("ext16", vec![0xc8, 0, 1, 9, 0], "null"),
            ("ext32", vec![0xc9, 0, 0, 0, 0, 9], "null"),
            ("fixarray", vec![0x92, 0x01, 0xa1, b'a'], "[1,\"a\"]"),
            ("empty array", vec![0x90], "[]"),
            ("array16", vec![0xdc, 0, 2, 0xc0, 0xc3], "[null,true]"),
            ("array32", vec![0xdd, 0, 0, 0, 1, 0x90], "[[]]"),
            ("fixmap", vec![0x81, 0xa1, b'k', 0x80], "{\"k\":{}}"),
            ("map16", vec![0xde, 0, 1, 0xa1, b'k', 0x07], "{\"k\":7}"),
            (
                "map32",
                vec![0xdf, 0, 0, 0, 1, 0xa1, b'k', 0x90],
                "{\"k\":[]}",
            ),
            ("map with int key", vec![0x81, 0x01, 0x02], "{\"1\":2}"),
            (
                "map with array key",
                vec![0x81, 0x92, 0x01, 0xa1, b'"', 0xc0],
                "{\"[1,\\\"\\\\\\\"\\\"]\":null}",
            ),
            (
                "map with map key",
                vec![0x82, 0x81, 0x01, 0x02, 0x03, 0xa1, b'a', 0x04],
                "{\"{\\\"1\\\":2}\":3,\"a\":4}",
            ),
            (
                "map key inside a map key: its text is escaped once",
                vec![0x81, 0x81, 0x81, 0x01, 0x02, 0x03, 0x04],
                "{\"{{\\\"1\\\":2}:3}\":4}",
            ),
            (
                "scalar keys",
                vec![
                    0x84, 0xc0, 0x01, 0xc3, 0x02, 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0, 0x03, 0xd4,
                    5, 1, 0x04,
                ],
                "{\"null\":1,\"true\":2,\"1.5\":3,\"null\":4}",
            ),
            (
                "map with bin key",
                vec![0x81, 0xc4, 1, b'b', 0x05],
                "{\"b\":5}",
            ),
            (
                "nested",
                vec![
                    0x82, 0xa1, b'a', 0x91, 0x91, 0x90, 0xa1, b'b', 0x81, 0xa1, b'c', 0xc2,
                ],
                "{\"a\":[[[]]],\"b\":{\"c\":false}}",
            ),
        ];
        cases
            .into_iter()
            .map(|(name, bytes, json)| {
                let json = match json {
                    "FORTY" => format!("\"{forty}\""),
                    "LONG" => format!("\"{long}\""),
                    other => other.to_string(),
                };
                (name, bytes, json)
            })
            .collect()
    }

    #[test]
    fn value_len_of_every_type_and_every_truncation() {
        for (name, bytes, _) in samples() {
            assert_eq!(value_len(&bytes, &BIG), Ok(Some(bytes.len())), "{name}");
            let mut more = bytes.clone();
            more.extend_from_slice(&[0xc1, 0xc1]);
            assert_eq!(
                value_len(&more, &BIG),
                Ok(Some(bytes.len())),
                "{name} + trailing"
            );
            for cut in 0..bytes.len() {
                assert_eq!(
                    value_len(&bytes[..cut], &BIG),
                    Ok(None),
                    "{name} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn scanner_resumes_across_growing_buffer() {
        for (name, bytes, _) in samples() {
            let mut s = Scanner::new();
            let mut got = None;
            for end in 0..=bytes.len() {
                got = s.scan(&bytes[..end], &BIG).unwrap();
                if end < bytes.len() {
                    assert_eq!(got, None, "{name} at {end}");
                }
            }
            assert_eq!(got, Some(bytes.len()), "{name}");
            // Completed values reset the scanner for the next one.
            assert_eq!(s.scan(&bytes, &BIG), Ok(Some(bytes.len())), "{name} again");
        }
    }

    #[test]
    fn value_len_rejects() {
        let tight = Limits {
            max_len: 3,
            max_depth: 2,
        };
        let cases: Vec<(&str, Vec<u8>, Limits, Error)> = vec![
            (
                "never-used marker",
                vec![0xc1],
                BIG,
                Error::Unexpected {
                    offset: 0,
                    expected: "a msgpack value",
                    found: 0xc1,
                },
            ),
            (
                "0xc1 inside array",
                vec![0x92, 0x01, 0xc1],
                BIG,
                Error::Unexpected {
                    offset: 2,
                    expected: "a msgpack value",
                    found: 0xc1,
                },
            ),
            (
                "str too long",
                vec![0xa4, 1, 2, 3, 4],
                tight,
                Error::TooLong {
                    offset: 0,
                    len: 4,
                    max: 3,
                },
            ),
            (
                "bin32 declared huge",
                vec![0xc6, 0xff, 0xff, 0xff, 0xff],
                tight,
                Error::TooLong {
                    offset: 0,
                    len: u32::MAX as u64,
                    max: 3,
                },
            ),
            (
                "ext too long",
                vec![0xd7, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                tight,
                Error::TooLong {
                    offset: 0,
                    len: 8,
                    max: 3,
                },
            ),
            (
                "array count too big",
                vec![0x94],
                tight,
                Error::TooLong {
                    offset: 0,
                    len: 4,
                    max: 3,
                },
            ),
            (
                "map count too big",
                vec![0x91, 0xde, 0, 9],
                tight,
                Error::TooLong {
                    offset: 1,
                    len: 9,
                    max: 3,
                },
            ),
            (
                "too deep",
                vec![0x91, 0x91, 0x91, 0x01],
                tight,
                Error::TooDeep { offset: 2, max: 2 },
            ),
            (
                "too deep empty",
                vec![0x91, 0x91, 0x90],
                tight,
                Error::TooDeep { offset: 2, max: 2 },
            ),
        ];
        for (name, bytes, limits, want) in cases {
            assert_eq!(value_len(&bytes, &limits), Err(want), "{name}");
        }
        // At the cap exactly is fine.
        assert_eq!(value_len(&[0x91, 0x91, 0x01], &tight), Ok(Some(3)));
        assert_eq!(value_len(&[0xa3, 1, 2, 3], &tight), Ok(Some(4)));
    }

    #[test]
    fn value_len_of_huge_declared_count_is_linear() {
        // 4 billion declared items backed by 1 MiB of input: must come back quickly as "need more".
        let mut buf = vec![0xdd, 0xff, 0xff, 0xff, 0xff];
        buf.resize(1 << 20, 0x01);
        assert_eq!(value_len(&buf, &BIG), Ok(None));
    }

    #[test]
    fn write_json_table() {
        for (name, bytes, json) in samples() {
            let mut out = b"prefix".to_vec();
            assert_eq!(
                write_json(&bytes, usize::MAX, &mut out),
                Ok(bytes.len()),
                "{name}"
            );
            assert_eq!(std::str::from_utf8(&out[6..]).unwrap(), json, "{name}");
            // Whatever we print must be JSON.
            serde_json::from_slice::<serde_json::Value>(&out[6..])
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn write_json_nested_keys_grow_linearly() {
        // Level 0 is the int 1; level n is a map whose only key is level n-1, with value 3:
        // 2n+1 bytes. Stringifying every level's key again doubled the output per level.
        let nested = |depth: usize| {
            let mut v = vec![0x81; depth];
            v.push(0x01);
            v.extend(std::iter::repeat_n(0x03, depth));
            v
        };
        let mut out = Vec::new();
        assert_eq!(write_json(&nested(3), usize::MAX, &mut out), Ok(7));
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"{{\"1\":3}:3}":3}"#);
        for depth in [8, 20, 40, 100_000] {
            let v = nested(depth);
            let mut out = Vec::new();
            assert_eq!(write_json(&v, usize::MAX, &mut out), Ok(v.len()), "{depth}");
            assert!(
                out.len() <= 4 * v.len(),
                "depth {depth}: {} bytes of JSON from {} bytes",
                out.len(),
                v.len()
            );
            let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let (key, value) = back.as_object().unwrap().iter().next().unwrap();
            assert_eq!(value, 3, "depth {depth}");
            // The key is the text of the levels below, each `{<level below>:3}`.
            assert_eq!(key.matches(":3}").count(), depth - 1, "depth {depth}");
        }
    }

    #[test]
    fn write_json_refuses_output_over_the_cap() {
        let mut cases = samples();
        let controls = enc(|v| drop(rmp::encode::write_str(v, "\u{0}\u{1}\u{1f}")));
        cases.push(("control characters", controls, String::new()));
        cases.push(("invalid utf8", vec![0xa3, 0xff, 0xfe, 0xfd], String::new()));
        let mut nils = vec![0xdc, 0x03, 0xe8];
        nils.extend([0xc0; 1000]);
        cases.push(("1000 nils", nils, String::new()));
        let deep_key = [vec![0x81; 50], vec![0xa1, b'"'], vec![0x03; 50]].concat();
        cases.push(("nested keys", deep_key, String::new()));
        for (name, bytes, _) in cases {
            let mut full = Vec::new();
            write_json(&bytes, usize::MAX, &mut full).unwrap();
            let mut out = b"keep".to_vec();
            assert_eq!(
                write_json(&bytes, full.len(), &mut out),
                Ok(bytes.len()),
                "{name}: exactly at the cap"
            );
            assert_eq!(out[4..], full, "{name}");
            let mut out = b"keep".to_vec();
            match write_json(&bytes, full.len() - 1, &mut out) {
                Err(Error::TooLarge { max, .. }) => assert_eq!(max, full.len() - 1, "{name}"),
                other => panic!("{name}: one byte over the cap gave {other:?}"),
            }
            assert_eq!(out, b"keep", "{name}");
        }
        let big = enc(|v| drop(rmp::encode::write_str(v, &"a".repeat(1000))));
        let err = write_json(&big, 100, &mut Vec::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "at byte 0: its JSON text exceeds the cap of 100 bytes"
        );
    }

    #[test]
    fn write_json_strings() {
        let cases: &[(&str, &[u8], &str)] = &[
            ("plain", b"abc", "\"abc\""),
            ("quote and backslash", b"a\"b\\c", "\"a\\\"b\\\\c\""),
            (
                "controls",
                b"\n\t\x00\x1f",
                "\"\\u000a\\u0009\\u0000\\u001f\"",
            ),
            ("del kept", b"\x7f", "\"\x7f\""),
            ("utf8 kept", "é€😀".as_bytes(), "\"é€😀\""),
            ("invalid utf8", b"a\xffb\xe2\x82", "\"a\u{fffd}b\u{fffd}\""),
            ("go escapes kept literal", b"<&>", "\"<&>\""),
        ];
        for (name, s, json) in cases {
            let mut v = enc(|v| drop(rmp::encode::write_str_len(v, s.len() as u32)));
            v.extend_from_slice(s);
            let mut out = Vec::new();
            write_json(&v, usize::MAX, &mut out).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), *json, "{name}");
        }
    }

    #[test]
    fn write_json_floats_read_back_as_the_same_float() {
        for f in [
            0.1,
            -0.0,
            1e16,
            1e-7,
            123456789.125,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            2.5e15,
        ] {
            let v = enc(|v| drop(rmp::encode::write_f64(v, f)));
            let mut out = Vec::new();
            write_json(&v, usize::MAX, &mut out).unwrap();
            let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert!(back.is_f64(), "{f}: {}", String::from_utf8_lossy(&out));
            assert_eq!(back.as_f64().unwrap().to_bits(), f.to_bits(), "{f}");
        }
    }

    #[test]
    fn write_json_errors_leave_output_untouched() {
        let cases: &[(&str, &[u8], Error)] = &[
            (
                "empty",
                &[],
                Error::Truncated {
                    offset: 0,
                    expected: "a msgpack value",
                },
            ),
            (
                "short str",
                &[0xa3, b'a'],
                Error::Truncated {
                    offset: 0,
                    expected: "str",
                },
            ),
            (
                "short array",
                &[0x92, 0x01],
                Error::Truncated {
                    offset: 2,
                    expected: "a msgpack value",
                },
            ),
            (
                "0xc1 in map",
                &[0x81, 0xa1, b'k', 0xc1],
                Error::Unexpected {
                    offset: 3,
                    expected: "a msgpack value",
                    found: 0xc1,
                },
            ),
        ];
        for (name, bytes, want) in cases {
            let mut out = b"keep".to_vec();
            assert_eq!(
                write_json(bytes, usize::MAX, &mut out),
                Err(want.clone()),
                "{name}"
            );
            assert_eq!(out, b"keep", "{name}");
        }
    }

    #[test]
    fn write_json_deep_nesting_does_not_recurse() {
        let depth = 200_000;
        let mut v = vec![0x91; depth];
        v.push(0xc0);
        let mut out = Vec::new();
        assert_eq!(write_json(&v, usize::MAX, &mut out), Ok(depth + 1));
        assert_eq!(out.len(), 2 * depth + 4);
    }

    /// JSON -> msgpack the plain way (str keys, smallest int encoding, f64 floats).
    pub(crate) fn encode_json(v: &serde_json::Value, out: &mut Vec<u8>) {
        use rmp::encode as e;
        use serde_json::Value;
        match v {
            Value::Null => e::write_nil(out).unwrap(),
            Value::Bool(b) => e::write_bool(out, *b).unwrap(),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    e::write_uint(out, u).unwrap();
                } else if let Some(i) = n.as_i64() {
                    e::write_sint(out, i).unwrap();
                } else {
                    e::write_f64(out, n.as_f64().unwrap()).unwrap();
                }
            }
            Value::String(s) => e::write_str(out, s).unwrap(),
            Value::Array(a) => {
                e::write_array_len(out, a.len() as u32).unwrap();
                a.iter().for_each(|x| encode_json(x, out));
            }
            Value::Object(m) => {
                e::write_map_len(out, m.len() as u32).unwrap();
                for (k, x) in m {
                    e::write_str(out, k).unwrap();
                    encode_json(x, out);
                }
            }
        }
    }

    /// The hand-written audit lines of `tests/data` (its README says what each covers), compiled
    /// in so that no test reads anything outside the repository.
    pub(crate) const AUDIT_SAMPLES: &str = include_str!("../../tests/data/audit-events.jsonl");

    /// The sample lines that are JSON objects, parsed, in file order.
    pub(crate) fn sample_events() -> Vec<serde_json::Value> {
        AUDIT_SAMPLES
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(serde_json::Value::is_object)
            .collect()
    }

    #[test]
    fn write_json_roundtrips_audit_samples() {
        // Re-encode every sample event into msgpack (the transcoder's job, done here with
        // serde_json + rmp) and check that what we print parses back to the same JSON value.
        let events = sample_events();
        assert!(events.len() >= 17, "only {} sample events", events.len());
        for orig in events {
            let mut mp = Vec::new();
            encode_json(&orig, &mut mp);
            assert_eq!(value_len(&mp, &BIG), Ok(Some(mp.len())));
            let mut out = Vec::new();
            assert_eq!(write_json(&mp, usize::MAX, &mut out), Ok(mp.len()));
            let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, orig);
        }
    }

    #[test]
    fn reader_typed_reads() {
        use rmp::encode as e;
        let mut buf = Vec::new();
        e::write_array_len(&mut buf, 2).unwrap();
        e::write_map_len(&mut buf, 1).unwrap();
        e::write_str(&mut buf, "k").unwrap();
        e::write_bin(&mut buf, b"v").unwrap();
        e::write_uint(&mut buf, 300).unwrap();
        e::write_sint(&mut buf, -5).unwrap();
        e::write_i64(&mut buf, 7).unwrap();
        e::write_f32(&mut buf, 2.5).unwrap();
        e::write_ext_meta(&mut buf, 2, 3).unwrap();
        buf.extend_from_slice(b"xy");
        e::write_array_len(&mut buf, 1).unwrap();
        e::write_nil(&mut buf).unwrap();
        e::write_str(&mut buf, "s").unwrap();

        let mut r = Reader::new(&buf);
        assert_eq!(r.peek_kind(), Ok(Kind::Array));
        assert_eq!(r.array_len(), Ok(2));
        assert_eq!(r.map_len(), Ok(1));
        assert_eq!(r.str(), Ok(&b"k"[..]));
        assert_eq!(r.str_or_bin(), Ok(&b"v"[..]));
        assert_eq!(r.uint(), Ok(300));
        assert_eq!(r.int(), Ok(-5));
        assert_eq!(r.uint(), Ok(7), "signed encoding of a positive value");
        assert_eq!(r.float(), Ok(2.5));
        assert_eq!(r.ext(), Ok((3, &b"xy"[..])));
        assert_eq!(r.skip(), Ok(&[0x91, 0xc0][..]));
        assert_eq!(r.str_or_bin(), Ok(&b"s"[..]));
        assert!(r.is_empty());
        assert_eq!(r.position(), buf.len());
    }

    #[test]
    fn reader_errors_name_expected_and_found() {
        type Op = fn(&mut Reader<'_>) -> Result<(), Error>;
        let cases: &[(&str, &[u8], Op, &str)] = &[
            (
                "array wanted, str found",
                &[0xa1, b'x'],
                |r| r.array_len().map(drop),
                "at byte 0: expected array, found 0xa1 (str)",
            ),
            (
                "map wanted, array found",
                &[0x90],
                |r| r.map_len().map(drop),
                "at byte 0: expected map, found 0x90 (array)",
            ),
            (
                "str wanted, bin found",
                &[0xc4, 0],
                |r| r.str().map(drop),
                "at byte 0: expected str, found 0xc4 (bin)",
            ),
            (
                "bin wanted, str found",
                &[0xa0],
                |r| r.bin().map(drop),
                "at byte 0: expected bin, found 0xa0 (str)",
            ),
            (
                "str or bin wanted, int found",
                &[0x01],
                |r| r.str_or_bin().map(drop),
                "at byte 0: expected str or bin, found 0x01 (int)",
            ),
            (
                "uint wanted, negative found",
                &[0xff],
                |r| r.uint().map(drop),
                "at byte 0: integer does not fit unsigned integer",
            ),
            (
                "int wanted, u64 too big",
                &[0xcf, 0xff, 0, 0, 0, 0, 0, 0, 0],
                |r| r.int().map(drop),
                "at byte 0: integer does not fit i64",
            ),
            (
                "uint wanted, nil found",
                &[0xc0],
                |r| r.uint().map(drop),
                "at byte 0: expected unsigned integer, found 0xc0 (nil)",
            ),
            (
                "float wanted, int found",
                &[0x00],
                |r| r.float().map(drop),
                "at byte 0: expected float, found 0x00 (int)",
            ),
            (
                "ext wanted, map found",
                &[0x80],
                |r| r.ext().map(drop),
                "at byte 0: expected ext, found 0x80 (map)",
            ),
            (
                "truncated str",
                &[0xa5, b'a'],
                |r| r.str().map(drop),
                "at byte 0: input ends inside str",
            ),
            (
                "truncated header",
                &[0xcd, 1],
                |r| r.uint().map(drop),
                "at byte 0: input ends inside unsigned integer",
            ),
            (
                "empty",
                &[],
                |r| r.peek_kind().map(drop),
                "at byte 0: input ends inside a msgpack value",
            ),
            (
                "peek truncated bin header",
                &[0xc5, 0],
                |r| r.peek_kind().map(drop),
                "at byte 0: input ends inside bin",
            ),
            (
                "peek never-used",
                &[0xc1],
                |r| r.peek_kind().map(drop),
                "at byte 0: expected a msgpack value, found 0xc1 (never-used marker)",
            ),
            (
                "skip truncated",
                &[0x92, 0x01],
                |r| r.skip().map(drop),
                "at byte 0: input ends inside a msgpack value",
            ),
            (
                "skip reports absolute offset",
                &[0x01, 0x91, 0xc1],
                |r| {
                    r.uint()?;
                    r.skip().map(drop)
                },
                "at byte 2: expected a msgpack value, found 0xc1 (never-used marker)",
            ),
        ];
        for (name, bytes, op, want) in cases {
            let mut r = Reader::new(bytes);
            let err = op(&mut r).expect_err(name);
            assert_eq!(err.to_string(), *want, "{name}");
        }
    }
}
