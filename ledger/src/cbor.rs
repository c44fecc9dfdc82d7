//! Deterministic CBOR (RFC 8949 §4.2.1) on top of `ciborium`.
//!
//! Signed structures are top-level arrays of integers, byte strings, text and nested arrays:
//! no maps, no floats, no indefinite lengths. ciborium writes integers and lengths in their
//! shortest form, so for this subset its output is the deterministic encoding. A decoder
//! therefore re-encodes what it read and refuses bytes that differ: a second, non-canonical
//! spelling of a signed object would otherwise hash to a different id with the same signature.
//!
//! Every decode is bounded three times: by a byte limit the caller names for the object kind,
//! by a count of data items checked on the raw bytes before anything is allocated, and by a
//! nesting limit, so a hostile peer cannot make the decoder allocate or recurse without end.
//! (Without the item count, a 16 MiB message of one-byte items became a value tree of about
//! half a gigabyte before its shape was checked.)

use ciborium::Value;
use thiserror::Error;

/// How deep any fabnode structure nests; real ones use 4 levels.
pub const NESTING_MAX: usize = 16;

/// Most data items (integers, strings, arrays, ...) in any one message. The largest real one,
/// a heads answer naming 10,000 feeds, has about 30,000; the value tree of this many items
/// stays under a few MiB whatever the message's size.
pub const ITEMS_MAX: usize = 65_536;

/// Why bytes were refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("{what}: {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what}: not valid CBOR: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("{what}: not in deterministic CBOR form (re-encoding differs)")]
    NonCanonical { what: &'static str },
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

impl DecodeError {
    pub fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        DecodeError::Invalid {
            what,
            detail: detail.into(),
        }
    }
}

/// Types with a fixed CBOR shape.
pub trait Cbor: Sized {
    /// Name used in error messages, e.g. `"entry"`.
    const WHAT: &'static str;
    /// Byte limit for one encoded value of this type.
    const BYTES_MAX: usize;
    fn to_value(&self) -> Value;
    fn from_value(value: Value) -> Result<Self, DecodeError>;

    fn to_cbor(&self) -> Vec<u8> {
        encode_value(&self.to_value())
    }

    fn from_cbor(bytes: &[u8]) -> Result<Self, DecodeError> {
        let value = decode_value(bytes, Self::WHAT, Self::BYTES_MAX)?;
        Self::from_value(value)
    }
}

/// Encodes a value. Writing into a `Vec` cannot fail.
pub fn encode_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).expect("writing CBOR into a Vec cannot fail");
    out
}

/// Decodes exactly one canonical CBOR item of at most `max` bytes.
pub fn decode_value(bytes: &[u8], what: &'static str, max: usize) -> Result<Value, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    count_items(bytes, what, ITEMS_MAX)?;
    let mut reader = bytes;
    let value: Value = ciborium::de::from_reader_with_recursion_limit(&mut reader, NESTING_MAX)
        .map_err(|e| DecodeError::Malformed {
            what,
            detail: e.to_string(),
        })?;
    if !reader.is_empty() {
        return Err(DecodeError::Malformed {
            what,
            detail: format!("{} trailing bytes after the item", reader.len()),
        });
    }
    reject_floats_and_maps(&value, what)?;
    if encode_value(&value) != bytes {
        return Err(DecodeError::NonCanonical { what });
    }
    Ok(value)
}

/// Walks the heads of the first CBOR item in `bytes` without allocating, and refuses it when
/// it holds more than `max` data items, claims more than the bytes can hold, or uses an
/// indefinite length.
pub fn count_items(bytes: &[u8], what: &'static str, max: usize) -> Result<(), DecodeError> {
    let malformed = |detail: &str| DecodeError::Malformed {
        what,
        detail: detail.to_owned(),
    };
    let mut at = 0usize;
    // Items still to read, and items seen.
    let (mut pending, mut seen) = (1usize, 0usize);
    while pending > 0 {
        let head = *bytes.get(at).ok_or_else(|| malformed("truncated"))?;
        at += 1;
        let (major, info) = (head >> 5, head & 0x1f);
        let arg_len = match info {
            0..=23 => 0,
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            31 => return Err(malformed("indefinite lengths are not allowed")),
            _ => return Err(malformed("reserved additional information")),
        };
        let arg_bytes = bytes
            .get(at..at + arg_len)
            .ok_or_else(|| malformed("truncated"))?;
        at += arg_len;
        let arg = if arg_len == 0 {
            u64::from(info)
        } else {
            arg_bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b))
        };
        pending -= 1;
        seen += 1;
        if seen > max {
            return Err(DecodeError::invalid(
                what,
                format!("more than {max} data items"),
            ));
        }
        // Anything still to read needs at least one byte each: a claim beyond what is left is
        // refused before it is counted.
        let left = (bytes.len() - at) as u64;
        match major {
            2 | 3 => {
                if arg > left {
                    return Err(malformed("a string longer than the message"));
                }
                at += arg as usize;
            }
            4 | 5 => {
                let items = if major == 5 {
                    arg.saturating_mul(2)
                } else {
                    arg
                };
                if items > left {
                    return Err(malformed("an array longer than the message"));
                }
                pending += items as usize;
            }
            6 => pending += 1,
            _ => {}
        }
    }
    Ok(())
}

fn reject_floats_and_maps(value: &Value, what: &'static str) -> Result<(), DecodeError> {
    match value {
        Value::Float(_) => Err(DecodeError::invalid(what, "floats are not allowed")),
        Value::Map(_) => Err(DecodeError::invalid(what, "maps are not allowed")),
        Value::Tag(_, _) => Err(DecodeError::invalid(what, "tags are not allowed")),
        Value::Array(items) => items
            .iter()
            .try_for_each(|v| reject_floats_and_maps(v, what)),
        _ => Ok(()),
    }
}

/// Reads the fields of a CBOR array in order, with errors that name the field.
#[derive(Debug)]
pub struct Fields {
    what: &'static str,
    items: std::vec::IntoIter<Value>,
}

impl Fields {
    /// Opens `value` as an array of exactly `len` items.
    pub fn new(value: Value, what: &'static str, len: usize) -> Result<Self, DecodeError> {
        match value {
            Value::Array(items) if items.len() == len => Ok(Fields {
                what,
                items: items.into_iter(),
            }),
            Value::Array(items) => Err(DecodeError::invalid(
                what,
                format!("expected an array of {len} fields, got {}", items.len()),
            )),
            _ => Err(DecodeError::invalid(what, "expected an array")),
        }
    }

    fn next(&mut self, field: &str) -> Result<Value, DecodeError> {
        self.items
            .next()
            .ok_or_else(|| DecodeError::invalid(self.what, format!("missing field {field}")))
    }

    fn wrong(&self, field: &str, expected: &str) -> DecodeError {
        DecodeError::invalid(self.what, format!("field {field}: expected {expected}"))
    }

    pub fn value(&mut self, field: &str) -> Result<Value, DecodeError> {
        self.next(field)
    }

    pub fn u64(&mut self, field: &str) -> Result<u64, DecodeError> {
        match self.next(field)? {
            Value::Integer(i) => {
                u64::try_from(i).map_err(|_| self.wrong(field, "an unsigned integer"))
            }
            _ => Err(self.wrong(field, "an unsigned integer")),
        }
    }

    pub fn text(&mut self, field: &str, max: usize) -> Result<String, DecodeError> {
        match self.next(field)? {
            Value::Text(s) if s.len() <= max => Ok(s),
            Value::Text(_) => Err(self.wrong(field, &format!("text of at most {max} bytes"))),
            _ => Err(self.wrong(field, "text")),
        }
    }

    pub fn bytes(&mut self, field: &str, max: usize) -> Result<Vec<u8>, DecodeError> {
        match self.next(field)? {
            Value::Bytes(b) if b.len() <= max => Ok(b),
            Value::Bytes(_) => Err(self.wrong(field, &format!("bytes of at most {max}"))),
            _ => Err(self.wrong(field, "a byte string")),
        }
    }

    pub fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], DecodeError> {
        match self.next(field)? {
            Value::Bytes(b) => b
                .try_into()
                .map_err(|_| self.wrong(field, &format!("{N} bytes"))),
            _ => Err(self.wrong(field, &format!("{N} bytes"))),
        }
    }

    /// A field that is either `null` or `N` bytes.
    pub fn opt_array<const N: usize>(
        &mut self,
        field: &str,
    ) -> Result<Option<[u8; N]>, DecodeError> {
        match self.next(field)? {
            Value::Null => Ok(None),
            Value::Bytes(b) => b
                .try_into()
                .map(Some)
                .map_err(|_| self.wrong(field, &format!("null or {N} bytes"))),
            _ => Err(self.wrong(field, &format!("null or {N} bytes"))),
        }
    }

    pub fn nested<T: Cbor>(&mut self, field: &str) -> Result<T, DecodeError> {
        T::from_value(self.next(field)?)
    }
}

pub fn uint(v: u64) -> Value {
    Value::Integer(v.into())
}

pub fn bytes(b: &[u8]) -> Value {
    Value::Bytes(b.to_vec())
}

pub fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

pub fn opt_bytes(b: Option<&[u8]>) -> Value {
    b.map_or(Value::Null, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_counts_are_checked_on_the_raw_bytes_before_anything_is_built() {
        let ok = encode_value(&Value::Array(vec![
            uint(1),
            bytes(&[7; 40]),
            Value::Array(vec![text("a"), uint(300)]),
        ]));
        assert_eq!(count_items(&ok, "t", 6), Ok(()));
        assert!(count_items(&ok, "t", 5).is_err());
        assert!(decode_value(&ok, "t", 1024).is_ok());
        // 100,000 one-byte integers: refused before a value tree of them exists.
        let mut many = vec![0x9a, 0x00, 0x01, 0x86, 0xa0];
        many.extend(std::iter::repeat_n(0x01, 100_000));
        let e = decode_value(&many, "t", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("data items"), "{e}");
        // Lengths claimed beyond the message, indefinite lengths, truncation.
        for bad in [
            &[0x9b, 0, 0, 1, 0, 0, 0, 0, 0][..],
            &[0x5a, 0xff, 0xff, 0xff, 0xff, 0x00][..],
            &[0x9f, 0x01, 0xff][..],
            &[0x82, 0x01][..],
            &[0x1c][..],
        ] {
            assert!(count_items(bad, "t", ITEMS_MAX).is_err(), "{bad:02x?}");
            assert!(decode_value(bad, "t", 1024).is_err(), "{bad:02x?}");
        }
    }

    #[test]
    fn rejects_non_shortest_integer() {
        // 1 written as a one-byte-argument integer (0x18 0x01) instead of 0x01.
        let err = decode_value(&[0x18, 0x01], "t", 100).unwrap_err();
        assert_eq!(err, DecodeError::NonCanonical { what: "t" });
        assert_eq!(decode_value(&[0x01], "t", 100).unwrap(), uint(1));
    }

    #[test]
    fn rejects_indefinite_length() {
        // [_ 1] indefinite array
        let err = decode_value(&[0x9f, 0x01, 0xff], "t", 100).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Malformed { detail, .. } if detail.contains("indefinite")),
            "{err}"
        );
    }

    #[test]
    fn rejects_trailing_bytes_floats_maps_and_oversize() {
        assert!(matches!(
            decode_value(&[0x01, 0x01], "t", 100),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            decode_value(&[0xf9, 0x3c, 0x00], "t", 100),
            Err(DecodeError::Invalid { .. })
        ));
        assert!(matches!(
            decode_value(&[0xa0], "t", 100),
            Err(DecodeError::Invalid { .. })
        ));
        assert!(matches!(
            decode_value(&[0x80; 10], "t", 4),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn rejects_deep_nesting_without_overflow() {
        let deep = vec![0x81u8; 10_000];
        assert!(decode_value(&deep, "t", 1 << 20).is_err());
    }

    #[test]
    fn rejects_declared_length_beyond_input() {
        // byte string claiming 2^32 bytes, with 3 present
        let bytes = [0x5a, 0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        assert!(matches!(
            decode_value(&bytes, "t", 100),
            Err(DecodeError::Malformed { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_value(&data, "t", 1024);
        }

        #[test]
        fn canonical_values_round_trip(a in proptest::num::u64::ANY, b in proptest::collection::vec(proptest::num::u8::ANY, 0..64), s in "[a-z]{0,20}") {
            let v = Value::Array(vec![uint(a), Value::Bytes(b), text(&s), Value::Null]);
            let enc = encode_value(&v);
            proptest::prop_assert_eq!(decode_value(&enc, "t", 1024).unwrap(), v);
        }
    }
}
