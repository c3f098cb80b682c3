//! A JSON document as a small tree, for the few documents that are read whole rather than
//! streamed: Kubernetes API answers and JSON kubeconfigs. Parsed by the transcoder's grammar
//! (`transcode::object_to_msgpack`) and read back from its msgpack, so there is one JSON parser
//! in the project and these documents get the same strictness as audit lines.

use crate::forward::msgpack::{Kind, Reader};
use crate::forward::transcode;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Value>),
    /// Members in document order; lookups are linear, which suits objects of a few dozen keys.
    Object(Vec<(String, Value)>),
}

/// Parses a JSON text whose top level is an object.
pub fn parse(text: &[u8]) -> Result<Value, String> {
    let mut mp = Vec::with_capacity(text.len() + 16);
    transcode::object_to_msgpack(text, &mut mp)?;
    let mut r = Reader::new(&mp);
    read(&mut r).map_err(|e| format!("reading back the parsed JSON: {e:?}"))
}

fn read(r: &mut Reader) -> Result<Value, crate::forward::msgpack::Error> {
    Ok(match r.peek_kind()? {
        Kind::Nil => {
            r.skip()?;
            Value::Null
        }
        Kind::Bool => Value::Bool(r.skip()? == [0xc3]),
        Kind::Int => {
            let mut ahead = r.clone();
            match ahead.int() {
                Ok(v) => {
                    *r = ahead;
                    Value::Int(v)
                }
                // Above i64::MAX: kept as the float JSON would have given it anyway.
                Err(_) => Value::Float(r.uint()? as f64),
            }
        }
        Kind::Float => Value::Float(r.float()?),
        Kind::Map => {
            let n = r.map_len()?;
            let mut members = Vec::with_capacity(n.min(1024) as usize);
            for _ in 0..n {
                let key = String::from_utf8_lossy(r.str()?).into_owned();
                members.push((key, read(r)?));
            }
            Value::Object(members)
        }
        Kind::Array => {
            let n = r.array_len()?;
            let mut items = Vec::with_capacity(n.min(1024) as usize);
            for _ in 0..n {
                items.push(read(r)?);
            }
            Value::Array(items)
        }
        // The transcoder writes only the kinds above; strings are UTF-8 checked by it.
        _ => Value::Str(String::from_utf8_lossy(r.str_or_bin()?).into_owned()),
    })
}

impl Value {
    /// The member `key` of an object; `None` for a missing key or a value that is not an object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follows a path of object keys.
    pub fn at(&self, path: &[&str]) -> Option<&Value> {
        path.iter().try_fold(self, |v, k| v.get(k))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, Value};

    #[test]
    fn reads_every_kind_and_nesting() {
        let v = parse(
            br#" {"s":"a\u00e9\"b","i":-3,"u":24224,"f":1.5,"t":true,"n":null,
                 "a":[1,{"x":[]}],"o":{"k":{}},"big":18446744073709551615} "#,
        )
        .expect("valid");
        assert_eq!(v.get("s").and_then(Value::as_str), Some("a\u{e9}\"b"));
        assert_eq!(v.get("i").and_then(Value::as_i64), Some(-3));
        assert_eq!(v.get("u").and_then(Value::as_i64), Some(24224));
        assert_eq!(v.get("f"), Some(&Value::Float(1.5)));
        assert_eq!(v.get("t").and_then(Value::as_bool), Some(true));
        assert_eq!(v.get("n"), Some(&Value::Null));
        let a = v.get("a").and_then(Value::as_array).expect("array");
        assert_eq!(a[0], Value::Int(1));
        assert_eq!(a[1].get("x"), Some(&Value::Array(vec![])));
        assert_eq!(v.at(&["o", "k"]), Some(&Value::Object(vec![])));
        assert_eq!(v.get("big"), Some(&Value::Float(18446744073709551615.0)));
        assert_eq!(v.at(&["o", "missing"]), None);
        assert_eq!(v.at(&["s", "x"]), None);
    }

    #[test]
    fn refuses_what_is_not_one_json_object() {
        for bad in [
            &b"[1,2]"[..],
            b"{\"a\":1} x",
            b"{\"a\":}",
            b"{\"a\":1",
            b"",
            b"{\"a\":\"\xff\"}",
        ] {
            let err = parse(bad).expect_err(&String::from_utf8_lossy(bad));
            assert!(err.contains("not a valid JSON object"), "{err}");
        }
    }
}
