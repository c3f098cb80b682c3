//! The JSON -> msgpack transcoder (`append_entry`, the audit line hot path) against serde_json
//! and rmp as independent implementations: whenever serde_json reads the line as a JSON object,
//! the entry must be `[EventTime, map]` and the map, decoded by rmp, must be the same value
//! (numbers compared by kind and bits); otherwise the entry is the `{"log": line}` fallback.
//! What the transcoder documents and asserted here: a repeated key is kept in the map and the
//! last one wins (as in serde_json); integers beyond u64/i64 become the nearest f64; `-0` is a
//! float; a lone surrogate escape becomes U+FFFD (serde_json refuses it); invalid UTF-8 or
//! nesting deeper than 256 makes the line a fallback; the time is `stageTimestamp`, else
//! `requestReceivedTimestamp`, else the caller's "now".
#![no_main]

use audit_forwarder::forward::transcode::{append_entry, parse_rfc3339, EventTime, Kind};
use libfuzzer_sys::fuzz_target;
use rmp::Marker;
use serde_json::Value;

#[derive(Debug)]
enum Mp {
    Nil,
    Bool(bool),
    U(u64),
    I(i64),
    F(f64),
    Str(String),
    Arr(Vec<Mp>),
    Map(Vec<(String, Mp)>),
    Time(u32, u32),
}

/// Decodes one value with rmp's marker reader; panics on anything the transcoder must never
/// write (non-UTF-8 str, non-str keys, float32, bin, unknown ext).
fn decode(r: &mut &[u8]) -> Mp {
    use rmp::decode::*;
    let m = read_marker(r).expect("marker");
    let n = |r: &mut &[u8], k: usize| -> u64 {
        let (b, rest) = r.split_at(k);
        *r = rest;
        b.iter().fold(0u64, |a, &x| a << 8 | u64::from(x))
    };
    let str_of = |r: &mut &[u8], len: usize| -> String {
        let (b, rest) = r.split_at(len);
        *r = rest;
        String::from_utf8(b.to_vec()).expect("msgpack str is UTF-8")
    };
    match m {
        Marker::Null => Mp::Nil,
        Marker::True => Mp::Bool(true),
        Marker::False => Mp::Bool(false),
        Marker::FixPos(v) => Mp::U(u64::from(v)),
        Marker::FixNeg(v) => Mp::I(i64::from(v)),
        Marker::U8 => Mp::U(n(r, 1)),
        Marker::U16 => Mp::U(n(r, 2)),
        Marker::U32 => Mp::U(n(r, 4)),
        Marker::U64 => Mp::U(n(r, 8)),
        Marker::I8 => Mp::I(i64::from(n(r, 1) as u8 as i8)),
        Marker::I16 => Mp::I(i64::from(n(r, 2) as u16 as i16)),
        Marker::I32 => Mp::I(i64::from(n(r, 4) as u32 as i32)),
        Marker::I64 => Mp::I(n(r, 8) as i64),
        Marker::F64 => Mp::F(f64::from_bits(n(r, 8))),
        Marker::FixStr(len) => Mp::Str(str_of(r, usize::from(len))),
        Marker::Str8 => {
            let len = n(r, 1) as usize;
            Mp::Str(str_of(r, len))
        }
        Marker::Str16 => {
            let len = n(r, 2) as usize;
            Mp::Str(str_of(r, len))
        }
        Marker::Str32 => {
            let len = n(r, 4) as usize;
            Mp::Str(str_of(r, len))
        }
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
            let len = match m {
                Marker::FixArray(l) => usize::from(l),
                Marker::Array16 => n(r, 2) as usize,
                _ => n(r, 4) as usize,
            };
            Mp::Arr((0..len).map(|_| decode(r)).collect())
        }
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
            let len = match m {
                Marker::FixMap(l) => usize::from(l),
                Marker::Map16 => n(r, 2) as usize,
                _ => n(r, 4) as usize,
            };
            let mut pairs = Vec::with_capacity(len);
            for _ in 0..len {
                let Mp::Str(k) = decode(r) else {
                    panic!("map key is not a str")
                };
                pairs.push((k, decode(r)));
            }
            Mp::Map(pairs)
        }
        Marker::FixExt8 => {
            assert_eq!(n(r, 1), 0, "ext type of EventTime");
            Mp::Time(n(r, 4) as u32, n(r, 4) as u32)
        }
        other => panic!("marker the transcoder never writes: {other:?}"),
    }
}

/// Whether the minimal encoding was used for each length and integer is not asserted; the
/// value is: numbers by kind and exact bits, maps with the last of repeated keys winning.
fn same(m: &Mp, v: &Value) -> bool {
    match (m, v) {
        (Mp::Nil, Value::Null) => true,
        (Mp::Bool(a), Value::Bool(b)) => a == b,
        (Mp::U(a), Value::Number(n)) => n.as_u64() == Some(*a) && !n.is_f64(),
        (Mp::I(a), Value::Number(n)) => *a < 0 && n.as_i64() == Some(*a) && !n.is_f64(),
        (Mp::F(a), Value::Number(n)) => {
            n.is_f64() && n.as_f64().map(f64::to_bits) == Some(a.to_bits())
        }
        (Mp::Str(a), Value::String(b)) => a == b,
        (Mp::Arr(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (Mp::Map(pairs), Value::Object(obj)) => {
            let mut last: Vec<(&str, &Mp)> = Vec::new();
            for (k, val) in pairs {
                match last.iter_mut().find(|(lk, _)| *lk == k.as_str()) {
                    Some(slot) => slot.1 = val,
                    None => last.push((k, val)),
                }
            }
            last.len() == obj.len()
                && last
                    .iter()
                    .all(|(k, val)| obj.get(*k).is_some_and(|o| same(val, o)))
        }
        _ => false,
    }
}

/// The deepest nesting a JSON reader reaches in `s`, stopping at nothing: strings are skipped
/// as JSON lexes them (a backslash escapes the next byte), so a bracket inside one does not
/// count. Counting those too made it no bound at all: `]` in strings let a line nested 257 deep
/// (or a million deep, overflowing the stack with serde_json's limit lifted) measure 256.
fn depth_bound(s: &[u8]) -> usize {
    let (mut d, mut max) = (0usize, 0usize);
    let mut bytes = s.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'[' | b'{' => {
                d += 1;
                max = max.max(d);
            }
            b']' | b'}' => d = d.saturating_sub(1),
            b'"' => {
                while let Some(&c) = bytes.next() {
                    match c {
                        b'\\' => {
                            bytes.next();
                        }
                        b'"' => break,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    max
}

fn serde(line: &[u8]) -> Result<Value, serde_json::Error> {
    use serde::Deserialize;
    let mut de = serde_json::Deserializer::from_slice(line);
    // The transcoder accepts nesting up to 256; serde_json's own limit is 128. Unlimited only
    // where the bound says the stack stays small.
    if depth_bound(line) <= 300 {
        de.disable_recursion_limit();
    }
    let v = Value::deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

fuzz_target!(|line: &[u8]| {
    let now = EventTime {
        secs: 1_700_000_000,
        nanos: 123,
    };
    let mut out = vec![0xc0]; // a byte already there: the entry must be appended after it
    let kind = append_entry(line, now, &mut out);
    assert_eq!(out[0], 0xc0);
    let mut r = &out[1..];
    let Mp::Arr(entry) = decode(&mut r) else {
        panic!("entry is not an array")
    };
    assert!(r.is_empty(), "{} bytes after the entry", r.len());
    let [Mp::Time(secs, nanos), record] = &entry[..] else {
        panic!("entry is not [time, record]: {entry:?}")
    };
    let time = EventTime {
        secs: *secs,
        nanos: *nanos,
    };
    let parsed = serde(line);
    match (kind, &parsed) {
        (Kind::Json, Ok(v @ Value::Object(obj))) => {
            assert!(same(record, v), "record {record:?} != serde_json {v:?}");
            let pick = |k: &str| {
                obj.get(k)
                    .and_then(Value::as_str)
                    .and_then(|s| parse_rfc3339(s.as_bytes()))
            };
            let want = pick("stageTimestamp")
                .or_else(|| pick("requestReceivedTimestamp"))
                .unwrap_or(now);
            assert_eq!(time, want);
        }
        (Kind::Json, Err(e)) => {
            // Only a lone surrogate escape: serde_json refuses it, the transcoder writes U+FFFD.
            let msg = e.to_string();
            assert!(
                msg.contains("surrogate") || msg.contains("hex escape"),
                "transcoded a line serde_json refuses: {msg}"
            );
            assert!(matches!(record, Mp::Map(_)));
        }
        (Kind::Json, Ok(v)) => panic!("transcoded a line that is not an object: {v:?}"),
        (Kind::Fallback, Ok(Value::Object(_))) if depth_bound(line) <= 256 => {
            panic!("serde_json reads a JSON object that became a fallback")
        }
        (Kind::Fallback, _) => {
            let Mp::Map(pairs) = record else {
                panic!("fallback record is not a map")
            };
            let [(k, Mp::Str(text))] = &pairs[..] else {
                panic!("fallback record is not {{log: str}}: {pairs:?}")
            };
            assert_eq!(k, "log");
            assert_eq!(*text, String::from_utf8_lossy(line));
            assert_eq!(time, now);
        }
    }
});
