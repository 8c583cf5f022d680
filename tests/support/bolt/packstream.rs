//! PackStream (version 1, as Bolt 4.x uses it): the [`Value`] model and its
//! encoder and decoder.
//!
//! The encoder always picks the smallest marker for a size or an integer,
//! like Neo4j and neo4rs do; the decoder accepts every width, as the
//! specification allows. Maps keep their insertion order so that encoded
//! bytes are deterministic and tests can compare them.

use std::fmt;

/// Structure tag of a Duration (months, days, seconds, nanoseconds).
pub const TAG_DURATION: u8 = 0x45;
/// Structure tag of a DateTime with an offset in Bolt 4.x without the
/// `utc` patch (as neo4rs negotiates): local seconds, nanoseconds, offset.
pub const TAG_DATETIME: u8 = 0x46;
/// Structure tag of a LocalDateTime (seconds, nanoseconds).
pub const TAG_LOCAL_DATETIME: u8 = 0x64;
/// Structure tag of a Node (id, labels, properties) in Bolt 4.x.
pub const TAG_NODE: u8 = 0x4E;
/// Structure tag of a Relationship (id, start, end, type, properties) in Bolt 4.x.
pub const TAG_RELATIONSHIP: u8 = 0x52;

/// The most fields a PackStream v1 structure can have (`B0`..`BF`).
pub const MAX_STRUCT_FIELDS: usize = 15;

/// How deeply values may nest before the decoder gives up; a guard against a
/// hostile or corrupt message blowing the stack.
pub const MAX_DEPTH: usize = 64;

/// One PackStream value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Boolean(bool),
    Integer(i64),
    Float(f64),
    Bytes(Vec<u8>),
    String(String),
    List(Vec<Value>),
    /// Entries in order; keys are unique when built through [`Value::map`].
    Map(Vec<(String, Value)>),
    Struct(Struct),
}

/// A tagged structure: Bolt messages, Duration, Node, Relationship, ...
#[derive(Debug, Clone, PartialEq)]
pub struct Struct {
    pub tag: u8,
    pub fields: Vec<Value>,
}

impl Value {
    /// A map from `(key, value)` pairs, in that order.
    pub fn map<K: Into<String>, V: Into<Value>>(
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// The empty map.
    pub fn empty_map() -> Value {
        Value::Map(Vec::new())
    }

    /// A list of anything convertible into a value.
    pub fn list<V: Into<Value>>(items: impl IntoIterator<Item = V>) -> Value {
        Value::List(items.into_iter().map(Into::into).collect())
    }

    pub fn structure(tag: u8, fields: Vec<Value>) -> Value {
        Value::Struct(Struct { tag, fields })
    }

    /// A DateTime at Unix second `unix` with `offset` seconds east of UTC
    /// (tag `0x46`; Bolt 4.x sends the local time's seconds).
    pub fn datetime(unix: i64, offset: i64) -> Value {
        Value::structure(
            TAG_DATETIME,
            vec![
                Value::Integer(unix + offset),
                Value::Integer(0),
                Value::Integer(offset),
            ],
        )
    }

    /// A LocalDateTime (tag `0x64`): seconds and nanoseconds, no zone.
    pub fn local_datetime(seconds: i64) -> Value {
        Value::structure(
            TAG_LOCAL_DATETIME,
            vec![Value::Integer(seconds), Value::Integer(0)],
        )
    }

    /// A Duration structure (tag `0x45`).
    pub fn duration(months: i64, days: i64, seconds: i64, nanoseconds: i64) -> Value {
        Value::structure(
            TAG_DURATION,
            vec![
                Value::Integer(months),
                Value::Integer(days),
                Value::Integer(seconds),
                Value::Integer(nanoseconds),
            ],
        )
    }

    /// A Bolt 4.x Node structure (tag `0x4E`).
    pub fn node(id: i64, labels: &[&str], properties: Value) -> Value {
        Value::structure(
            TAG_NODE,
            vec![
                Value::Integer(id),
                Value::list(labels.iter().copied()),
                properties,
            ],
        )
    }

    /// A Bolt 4.x Relationship structure (tag `0x52`).
    pub fn relationship(id: i64, start: i64, end: i64, typ: &str, properties: Value) -> Value {
        Value::structure(
            TAG_RELATIONSHIP,
            vec![
                Value::Integer(id),
                Value::Integer(start),
                Value::Integer(end),
                Value::from(typ),
                properties,
            ],
        )
    }

    /// The value under `key` when this is a map.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A short name of the kind of value, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Boolean(_) => "boolean",
            Value::Integer(_) => "integer",
            Value::Float(_) => "float",
            Value::Bytes(_) => "bytes",
            Value::String(_) => "string",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Struct(_) => "structure",
        }
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Integer(v.into())
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Integer(v.into())
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Integer(i64::try_from(v).expect("usize fits in i64"))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::String(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::String(v.clone())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Value::list(v)
    }
}

impl From<Struct> for Value {
    fn from(v: Struct) -> Self {
        Value::Struct(v)
    }
}

// ------------------------------------------------------------------ encode

/// Encodes `value` into a new buffer.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

/// Appends the encoding of `value` to `out`.
///
/// Panics on what PackStream cannot represent: a structure with more than
/// [`MAX_STRUCT_FIELDS`] fields, or a size beyond `u32::MAX` (test data
/// never gets there; a panic names the bug).
pub fn encode_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(0xC0),
        Value::Boolean(false) => out.push(0xC2),
        Value::Boolean(true) => out.push(0xC3),
        Value::Integer(i) => encode_int(*i, out),
        Value::Float(f) => {
            out.push(0xC1);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Bytes(b) => {
            size_header(b.len(), None, [0xCC, 0xCD, 0xCE], out);
            out.extend_from_slice(b);
        }
        Value::String(s) => {
            size_header(s.len(), Some(0x80), [0xD0, 0xD1, 0xD2], out);
            out.extend_from_slice(s.as_bytes());
        }
        Value::List(items) => {
            size_header(items.len(), Some(0x90), [0xD4, 0xD5, 0xD6], out);
            for item in items {
                encode_into(item, out);
            }
        }
        Value::Map(entries) => {
            size_header(entries.len(), Some(0xA0), [0xD8, 0xD9, 0xDA], out);
            for (k, v) in entries {
                size_header(k.len(), Some(0x80), [0xD0, 0xD1, 0xD2], out);
                out.extend_from_slice(k.as_bytes());
                encode_into(v, out);
            }
        }
        Value::Struct(s) => {
            assert!(
                s.fields.len() <= MAX_STRUCT_FIELDS,
                "a PackStream structure has at most {MAX_STRUCT_FIELDS} fields, tag {:#04x} has {}",
                s.tag,
                s.fields.len()
            );
            out.push(0xB0 | s.fields.len() as u8);
            out.push(s.tag);
            for f in &s.fields {
                encode_into(f, out);
            }
        }
    }
}

fn encode_int(i: i64, out: &mut Vec<u8>) {
    if (-16..=127).contains(&i) {
        out.push(i as i8 as u8);
    } else if let Ok(v) = i8::try_from(i) {
        out.push(0xC8);
        out.push(v as u8);
    } else if let Ok(v) = i16::try_from(i) {
        out.push(0xC9);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = i32::try_from(i) {
        out.push(0xCA);
        out.extend_from_slice(&v.to_be_bytes());
    } else {
        out.push(0xCB);
        out.extend_from_slice(&i.to_be_bytes());
    }
}

/// Writes the marker for a size: the tiny form when `tiny` is given and the
/// size is at most 15, else the 8-, 16- or 32-bit form.
fn size_header(len: usize, tiny: Option<u8>, sized: [u8; 3], out: &mut Vec<u8>) {
    match (tiny, len) {
        (Some(t), 0..=15) => out.push(t | len as u8),
        (_, 0..=0xFF) => {
            out.push(sized[0]);
            out.push(len as u8);
        }
        (_, 0x100..=0xFFFF) => {
            out.push(sized[1]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            let len = u32::try_from(len).expect("PackStream sizes are at most u32::MAX");
            out.push(sized[2]);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
}

// ------------------------------------------------------------------ decode

/// Why bytes could not be decoded, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackStream at byte {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for DecodeError {}

/// Decodes exactly one value that spans all of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
    let (value, used) = decode_prefix(bytes)?;
    if used != bytes.len() {
        return Err(DecodeError {
            offset: used,
            message: format!("{} trailing bytes after the value", bytes.len() - used),
        });
    }
    Ok(value)
}

/// Decodes one value from the start of `bytes`; returns it and how many
/// bytes it used.
pub fn decode_prefix(bytes: &[u8]) -> Result<(Value, usize), DecodeError> {
    let mut d = Decoder { buf: bytes, pos: 0 };
    let v = d.value(0)?;
    Ok((v, d.pos))
}

struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Decoder<'_> {
    fn err<T>(&self, at: usize, message: impl Into<String>) -> Result<T, DecodeError> {
        Err(DecodeError {
            offset: at,
            message: message.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let start = self.pos;
        match start.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                self.pos = end;
                Ok(&self.buf[start..end])
            }
            _ => self.err(
                start,
                format!(
                    "needs {n} more bytes, {} left",
                    self.buf.len().saturating_sub(start)
                ),
            ),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn size(&mut self, width: u8) -> Result<usize, DecodeError> {
        Ok(match width {
            1 => usize::from(self.u8()?),
            2 => usize::from(u16::from_be_bytes(self.array()?)),
            _ => u32::from_be_bytes(self.array()?) as usize,
        })
    }

    fn string(&mut self, len: usize) -> Result<String, DecodeError> {
        let at = self.pos;
        let bytes = self.take(len)?.to_vec();
        String::from_utf8(bytes).or_else(|e| self.err(at, format!("string is not UTF-8: {e}")))
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let at = self.pos;
        if depth > MAX_DEPTH {
            return self.err(at, format!("values nest deeper than {MAX_DEPTH}"));
        }
        let marker = self.u8()?;
        let v = match marker {
            0x00..=0x7F => Value::Integer(i64::from(marker)),
            0xF0..=0xFF => Value::Integer(i64::from(marker as i8)),
            0xC0 => Value::Null,
            0xC1 => Value::Float(f64::from_be_bytes(self.array()?)),
            0xC2 => Value::Boolean(false),
            0xC3 => Value::Boolean(true),
            0xC8 => Value::Integer(i64::from(i8::from_be_bytes(self.array()?))),
            0xC9 => Value::Integer(i64::from(i16::from_be_bytes(self.array()?))),
            0xCA => Value::Integer(i64::from(i32::from_be_bytes(self.array()?))),
            0xCB => Value::Integer(i64::from_be_bytes(self.array()?)),
            0xCC..=0xCE => {
                let len = self.size(1 << (marker - 0xCC))?;
                Value::Bytes(self.take(len)?.to_vec())
            }
            0x80..=0x8F => Value::String(self.string(usize::from(marker & 0x0F))?),
            0xD0..=0xD2 => {
                let len = self.size(1 << (marker - 0xD0))?;
                Value::String(self.string(len)?)
            }
            0x90..=0x9F | 0xD4..=0xD6 => {
                let len = if marker <= 0x9F {
                    usize::from(marker & 0x0F)
                } else {
                    self.size(1 << (marker - 0xD4))?
                };
                let mut items = Vec::with_capacity(len.min(1024));
                for _ in 0..len {
                    items.push(self.value(depth + 1)?);
                }
                Value::List(items)
            }
            0xA0..=0xAF | 0xD8..=0xDA => {
                let len = if marker <= 0xAF {
                    usize::from(marker & 0x0F)
                } else {
                    self.size(1 << (marker - 0xD8))?
                };
                let mut entries = Vec::with_capacity(len.min(1024));
                for _ in 0..len {
                    let key_at = self.pos;
                    let key = match self.value(depth + 1)? {
                        Value::String(s) => s,
                        other => {
                            return self.err(
                                key_at,
                                format!("map key is a {}, not a string", other.kind()),
                            );
                        }
                    };
                    let value = self.value(depth + 1)?;
                    entries.push((key, value));
                }
                Value::Map(entries)
            }
            0xB0..=0xBF => {
                let len = usize::from(marker & 0x0F);
                let tag = self.u8()?;
                let mut fields = Vec::with_capacity(len);
                for _ in 0..len {
                    fields.push(self.value(depth + 1)?);
                }
                Value::Struct(Struct { tag, fields })
            }
            other => return self.err(at, format!("unknown marker {other:#04x}")),
        };
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: &Value) -> Vec<u8> {
        let bytes = encode(v);
        assert_eq!(&decode(&bytes).expect("decodes"), v, "bytes {bytes:02X?}");
        bytes
    }

    #[test]
    fn scalars() {
        assert_eq!(round_trip(&Value::Null), [0xC0]);
        assert_eq!(round_trip(&Value::Boolean(false)), [0xC2]);
        assert_eq!(round_trip(&Value::Boolean(true)), [0xC3]);
        assert_eq!(
            round_trip(&Value::Float(1.5)),
            [0xC1, 0x3F, 0xF8, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(round_trip(&Value::Float(-0.0))[1], 0x80);
        let nan = encode(&Value::Float(f64::NAN));
        match decode(&nan).unwrap() {
            Value::Float(f) => assert!(f.is_nan()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn integer_marker_boundaries() {
        let cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (1, &[0x01]),
            (127, &[0x7F]),
            (128, &[0xC9, 0x00, 0x80]),
            (-1, &[0xFF]),
            (-16, &[0xF0]),
            (-17, &[0xC8, 0xEF]),
            (-128, &[0xC8, 0x80]),
            (-129, &[0xC9, 0xFF, 0x7F]),
            (32767, &[0xC9, 0x7F, 0xFF]),
            (32768, &[0xCA, 0x00, 0x00, 0x80, 0x00]),
            (-32768, &[0xC9, 0x80, 0x00]),
            (-32769, &[0xCA, 0xFF, 0xFF, 0x7F, 0xFF]),
            (2_147_483_647, &[0xCA, 0x7F, 0xFF, 0xFF, 0xFF]),
            (
                2_147_483_648,
                &[0xCB, 0x00, 0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00],
            ),
            (-2_147_483_648, &[0xCA, 0x80, 0x00, 0x00, 0x00]),
            (
                -2_147_483_649,
                &[0xCB, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF],
            ),
            (
                i64::MAX,
                &[0xCB, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
            ),
            (i64::MIN, &[0xCB, 0x80, 0, 0, 0, 0, 0, 0, 0]),
        ];
        for (i, bytes) in cases {
            assert_eq!(round_trip(&Value::Integer(*i)), *bytes, "{i}");
        }
    }

    #[test]
    fn wider_integer_forms_decode_too() {
        // The specification allows small values in wide forms.
        assert_eq!(decode(&[0xC8, 0x05]).unwrap(), Value::Integer(5));
        assert_eq!(decode(&[0xC9, 0x00, 0x05]).unwrap(), Value::Integer(5));
        assert_eq!(
            decode(&[0xCA, 0xFF, 0xFF, 0xFF, 0xFF]).unwrap(),
            Value::Integer(-1)
        );
        assert_eq!(
            decode(&[0xCB, 0, 0, 0, 0, 0, 0, 0, 0x2A]).unwrap(),
            Value::Integer(42)
        );
    }

    fn header(v: &Value) -> Vec<u8> {
        let bytes = round_trip(v);
        bytes[..bytes.len().min(5)].to_vec()
    }

    #[test]
    fn string_marker_boundaries() {
        let s = |n: usize| Value::String("x".repeat(n));
        assert_eq!(round_trip(&s(0)), [0x80]);
        assert_eq!(header(&s(15))[0], 0x8F);
        assert_eq!(header(&s(16))[..2], [0xD0, 16]);
        assert_eq!(header(&s(255))[..2], [0xD0, 0xFF]);
        assert_eq!(header(&s(256))[..3], [0xD1, 0x01, 0x00]);
        assert_eq!(header(&s(65_535))[..3], [0xD1, 0xFF, 0xFF]);
        assert_eq!(header(&s(65_536))[..5], [0xD2, 0x00, 0x01, 0x00, 0x00]);
        // Multi-byte UTF-8: the size counts bytes, not characters.
        let e = Value::from("é".repeat(8));
        assert_eq!(header(&e)[..2], [0xD0, 16]);
    }

    #[test]
    fn bytes_marker_boundaries() {
        let b = |n: usize| Value::Bytes(vec![7; n]);
        assert_eq!(round_trip(&b(0)), [0xCC, 0]);
        assert_eq!(header(&b(255))[..2], [0xCC, 0xFF]);
        assert_eq!(header(&b(256))[..3], [0xCD, 0x01, 0x00]);
        assert_eq!(header(&b(65_536))[..5], [0xCE, 0x00, 0x01, 0x00, 0x00]);
    }

    #[test]
    fn list_marker_boundaries() {
        let l = |n: usize| Value::List((0..n).map(|i| Value::Integer(i as i64 % 100)).collect());
        assert_eq!(round_trip(&l(0)), [0x90]);
        assert_eq!(header(&l(15))[0], 0x9F);
        assert_eq!(header(&l(16))[..2], [0xD4, 16]);
        assert_eq!(header(&l(255))[..2], [0xD4, 0xFF]);
        assert_eq!(header(&l(256))[..3], [0xD5, 0x01, 0x00]);
        assert_eq!(header(&l(65_535))[..3], [0xD5, 0xFF, 0xFF]);
        assert_eq!(header(&l(65_536))[..5], [0xD6, 0x00, 0x01, 0x00, 0x00]);
    }

    #[test]
    fn map_marker_boundaries() {
        let m = |n: usize| {
            Value::map((0..n).map(|i| (format!("k{i}"), Value::Integer(i as i64 % 100))))
        };
        assert_eq!(round_trip(&m(0)), [0xA0]);
        assert_eq!(header(&m(15))[0], 0xAF);
        assert_eq!(header(&m(16))[..2], [0xD8, 16]);
        assert_eq!(header(&m(255))[..2], [0xD8, 0xFF]);
        assert_eq!(header(&m(256))[..3], [0xD9, 0x01, 0x00]);
        assert_eq!(header(&m(65_536))[..5], [0xDA, 0x00, 0x01, 0x00, 0x00]);
    }

    #[test]
    fn structures() {
        let d = Value::duration(12, 2, 30, 700);
        assert_eq!(
            round_trip(&d),
            [0xB4, 0x45, 0x0C, 0x02, 0x1E, 0xC9, 0x02, 0xBC]
        );
        let n = Value::node(19, &["Person"], Value::map([("name", "Mark")]));
        assert_eq!(
            round_trip(&n),
            [
                0xB3, 0x4E, 0x13, 0x91, 0x86, b'P', b'e', b'r', b's', b'o', b'n', 0xA1, 0x84, b'n',
                b'a', b'm', b'e', 0x84, b'M', b'a', b'r', b'k'
            ]
        );
        let r = Value::relationship(1, 2, 3, "KNOWS", Value::empty_map());
        assert_eq!(&round_trip(&r)[..5], [0xB5, 0x52, 0x01, 0x02, 0x03]);
        let fifteen = Value::structure(0x01, vec![Value::Null; 15]);
        assert_eq!(round_trip(&fifteen)[..2], [0xBF, 0x01]);
        assert_eq!(round_trip(&Value::structure(0x0F, vec![])), [0xB0, 0x0F]);
    }

    #[test]
    #[should_panic(expected = "at most 15 fields")]
    fn sixteen_struct_fields_cannot_be_encoded() {
        encode(&Value::structure(0x01, vec![Value::Null; 16]));
    }

    #[test]
    fn nested_values_round_trip() {
        let v = Value::map([
            ("fields", Value::list(["a", "b"])),
            (
                "nested",
                Value::map([("x", Value::list(vec![Value::Null, 1.into(), 2.5.into()]))]),
            ),
            ("bytes", Value::Bytes(vec![1, 2, 3])),
            ("when", Value::duration(0, 0, 1, 5)),
            ("big", Value::Integer(1 << 40)),
            ("neg", Value::Integer(-300)),
        ]);
        round_trip(&v);
        assert_eq!(v.get("big"), Some(&Value::Integer(1 << 40)));
        assert_eq!(v.get("missing"), None);
    }

    #[test]
    fn map_accessors_and_conversions() {
        let v = Value::map([
            ("a", Value::from(Some("x"))),
            ("b", Value::from(None::<&str>)),
        ]);
        assert_eq!(v.get("a").and_then(Value::as_str), Some("x"));
        assert!(v.get("b").unwrap().is_null());
        assert_eq!(
            Value::from(vec![1i64, 2]).as_list().map(<[Value]>::len),
            Some(2)
        );
    }

    #[test]
    fn decode_errors() {
        // Truncated string, list, integer, structure.
        assert!(decode(&[0x85, b'a']).is_err());
        assert!(decode(&[0x92, 0x01]).is_err());
        assert!(decode(&[0xC9, 0x01]).is_err());
        assert!(decode(&[0xB1, 0x70]).is_err());
        assert!(decode(&[]).is_err());
        // Reserved markers.
        for m in [0xC4u8, 0xC7, 0xCF, 0xD3, 0xD7, 0xDB, 0xDF, 0xE0, 0xEF] {
            let e = decode(&[m]).unwrap_err();
            assert_eq!(e.offset, 0);
            assert!(e.message.contains("unknown marker"), "{e}");
        }
        // Non-string map key.
        assert!(
            decode(&[0xA1, 0x01, 0x02])
                .unwrap_err()
                .message
                .contains("map key")
        );
        // Invalid UTF-8.
        assert!(decode(&[0x81, 0xFF]).unwrap_err().message.contains("UTF-8"));
        // Trailing bytes.
        assert_eq!(decode(&[0x01, 0x02]).unwrap_err().offset, 1);
        assert_eq!(
            decode_prefix(&[0x01, 0x02]).unwrap(),
            (Value::Integer(1), 1)
        );
        // Depth guard.
        let deep = vec![0x91; MAX_DEPTH + 2];
        assert!(decode(&deep).unwrap_err().message.contains("nest"));
        // Huge declared sizes fail cleanly instead of allocating.
        assert!(decode(&[0xD6, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        assert!(decode(&[0xD2, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
    }
}
