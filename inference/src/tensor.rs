//! Typed, shaped arrays and their codecs.
//!
//! JSON form: `{"dtype":"f32","shape":[1,1,8,8],"data":[...]}` with `data` flat, row-major.
//! `.npy` form: NumPy's format versions 1–3, little-endian, C order.
//! Every decoder takes a byte limit and checks that the element count matches the shape
//! before allocating for it.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Highest rank accepted.
pub const RANK_MAX: usize = 8;

/// Element types fabnode moves between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F64,
    I32,
    I64,
    U8,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
        }
    }

    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::U8 => 1,
        }
    }

    fn npy_descr(self) -> &'static str {
        match self {
            DType::F32 => "<f4",
            DType::F64 => "<f8",
            DType::I32 => "<i4",
            DType::I64 => "<i8",
            DType::U8 => "|u1",
        }
    }

    fn from_npy_descr(d: &str) -> Option<DType> {
        Some(match d {
            "<f4" => DType::F32,
            "<f8" => DType::F64,
            "<i4" => DType::I32,
            "<i8" => DType::I64,
            "|u1" | "<u1" => DType::U8,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The elements of a tensor, flat and row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::U8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F64(_) => DType::F64,
            TensorData::I32(_) => DType::I32,
            TensorData::I64(_) => DType::I64,
            TensorData::U8(_) => DType::U8,
        }
    }

    fn le_bytes(&self) -> Vec<u8> {
        match self {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::U8(v) => v.clone(),
        }
    }

    fn from_le_bytes(dtype: DType, b: &[u8]) -> TensorData {
        fn chunks<const N: usize, T>(b: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
            b.chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
                .collect()
        }
        match dtype {
            DType::F32 => TensorData::F32(chunks(b, f32::from_le_bytes)),
            DType::F64 => TensorData::F64(chunks(b, f64::from_le_bytes)),
            DType::I32 => TensorData::I32(chunks(b, i32::from_le_bytes)),
            DType::I64 => TensorData::I64(chunks(b, i64::from_le_bytes)),
            DType::U8 => TensorData::U8(b.to_vec()),
        }
    }
}

/// A typed, shaped array whose element count always matches its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

/// Why tensor bytes were refused.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum TensorError {
    #[error("tensor is {len} bytes, over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("tensor JSON is malformed: {0}")]
    Json(String),
    #[error("shape {shape:?} holds {expected} elements but data has {found}")]
    ShapeMismatch {
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    #[error("rank {0} is over the limit of {RANK_MAX}")]
    RankTooHigh(usize),
    #[error("shape {0:?} is too large")]
    ShapeOverflow(Vec<usize>),
    #[error("element {index} ({value}) is not a valid {dtype}")]
    BadElement {
        index: usize,
        value: String,
        dtype: DType,
    },
    #[error(".npy: {0}")]
    Npy(String),
}

#[derive(Deserialize)]
struct TensorJson {
    dtype: DType,
    shape: Vec<usize>,
    data: Numbers,
}

/// The JSON form of a tensor as a field of a larger document (an API request body), parsed
/// without a `serde_json::Value` tree; turn it into a [`Tensor`] with [`Tensor::from_json`].
#[derive(Deserialize)]
#[serde(transparent)]
pub struct JsonTensor(TensorJson);

impl std::fmt::Debug for JsonTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonTensor")
            .field("dtype", &self.0.dtype)
            .field("shape", &self.0.shape)
            .field("len", &self.0.data.len())
            .finish()
    }
}

/// A tensor is written as its JSON form, `{"dtype", "shape", "data"}` (data flat, row-major).
impl Serialize for Tensor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Tensor", 3)?;
        st.serialize_field("dtype", &self.dtype())?;
        st.serialize_field("shape", &self.shape)?;
        match &self.data {
            TensorData::F32(v) => st.serialize_field("data", v)?,
            TensorData::F64(v) => st.serialize_field("data", v)?,
            TensorData::I32(v) => st.serialize_field("data", v)?,
            TensorData::I64(v) => st.serialize_field("data", v)?,
            TensorData::U8(v) => st.serialize_field("data", v)?,
        }
        st.end()
    }
}

/// Read from the JSON form with the same checks as [`Tensor::from_json`]: numbers packed as
/// they are parsed (no value tree), shape and element range checked.
impl<'de> Deserialize<'de> for Tensor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let parsed = JsonTensor::deserialize(d)?;
        Tensor::from_json(parsed).map_err(serde::de::Error::custom)
    }
}

/// A JSON number as it was written.
#[derive(Clone, Copy, Debug)]
enum Num {
    Pos(u64),
    Neg(i64),
    Float(f64),
}

impl Num {
    fn as_i64(self) -> Option<i64> {
        match self {
            Num::Pos(u) => i64::try_from(u).ok(),
            Num::Neg(i) => Some(i),
            Num::Float(_) => None,
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Pos(u) => u as f64,
            Num::Neg(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::Pos(u) => write!(f, "{u}"),
            Num::Neg(i) => write!(f, "{i}"),
            Num::Float(x) => write!(f, "{x}"),
        }
    }
}

/// JSON numbers packed as they are read: a kind byte, then a varint (integers) or eight bytes
/// (floats), so one-digit numbers take two bytes and none more than eleven. A
/// `serde_json::Value` tree costs 32 bytes a number plus its vector: a 14 MiB request body of
/// small numbers grew the node by 350 MiB before its shape was checked.
#[derive(Default)]
struct Numbers {
    buf: Vec<u8>,
    len: usize,
}

impl Numbers {
    const POS: u8 = 0;
    const NEG: u8 = 1;
    const FLOAT: u8 = 2;

    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, n: Num) {
        fn varint(buf: &mut Vec<u8>, mut v: u64) {
            loop {
                let byte = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    buf.push(byte);
                    return;
                }
                buf.push(byte | 0x80);
            }
        }
        match n {
            Num::Pos(u) => {
                self.buf.push(Self::POS);
                varint(&mut self.buf, u);
            }
            // -1 is stored as 0, -2 as 1, ...: small magnitudes stay short.
            Num::Neg(i) => {
                self.buf.push(Self::NEG);
                varint(&mut self.buf, !(i as u64));
            }
            Num::Float(x) => {
                self.buf.push(Self::FLOAT);
                self.buf.extend_from_slice(&x.to_le_bytes());
            }
        }
        self.len += 1;
    }

    fn iter(&self) -> impl Iterator<Item = Num> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let kind = *self.buf.get(at)?;
            at += 1;
            if kind == Self::FLOAT {
                let bytes: [u8; 8] = self.buf.get(at..at + 8)?.try_into().ok()?;
                at += 8;
                return Some(Num::Float(f64::from_le_bytes(bytes)));
            }
            let (mut v, mut shift) = (0u64, 0u32);
            loop {
                let b = *self.buf.get(at)?;
                at += 1;
                v |= u64::from(b & 0x7f).checked_shl(shift)?;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            Some(if kind == Self::NEG {
                Num::Neg(!v as i64)
            } else {
                Num::Pos(v)
            })
        })
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Num, E> {
                Ok(Num::Pos(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Num, E> {
                Ok(if v >= 0 {
                    Num::Pos(v as u64)
                } else {
                    Num::Neg(v)
                })
            }
            fn visit_f64<E>(self, v: f64) -> Result<Num, E> {
                Ok(Num::Float(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Numbers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Numbers;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of numbers")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Numbers, A::Error> {
                let mut out = Numbers::default();
                while let Some(n) = seq.next_element::<Num>()? {
                    out.push(n);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Serialize)]
struct TensorJsonOut<'a> {
    dtype: DType,
    shape: &'a [usize],
    data: serde_json::Value,
}

fn element_count(shape: &[usize]) -> Result<usize, TensorError> {
    if shape.len() > RANK_MAX {
        return Err(TensorError::RankTooHigh(shape.len()));
    }
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| TensorError::ShapeOverflow(shape.to_vec()))
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Self, TensorError> {
        let expected = element_count(&shape)?;
        if expected != data.len() {
            return Err(TensorError::ShapeMismatch {
                shape,
                expected,
                found: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }

    /// Size of the raw element bytes.
    pub fn byte_len(&self) -> usize {
        self.data.len() * self.dtype().size_bytes()
    }

    /// Parses the JSON form from at most `max_bytes` bytes.
    pub fn from_json_bytes(bytes: &[u8], max_bytes: usize) -> Result<Self, TensorError> {
        if bytes.len() > max_bytes {
            return Err(TensorError::TooLarge {
                len: bytes.len(),
                max: max_bytes,
            });
        }
        let parsed: TensorJson =
            serde_json::from_slice(bytes).map_err(|e| TensorError::Json(e.to_string()))?;
        Self::from_json_parts(parsed.dtype, parsed.shape, parsed.data)
    }

    /// Parses the JSON form from an already-parsed value.
    pub fn from_json_value(value: serde_json::Value) -> Result<Self, TensorError> {
        let parsed: TensorJson =
            serde_json::from_value(value).map_err(|e| TensorError::Json(e.to_string()))?;
        Self::from_json_parts(parsed.dtype, parsed.shape, parsed.data)
    }

    /// A tensor from its JSON form parsed as a field of a larger document.
    pub fn from_json(parsed: JsonTensor) -> Result<Self, TensorError> {
        let JsonTensor(t) = parsed;
        Self::from_json_parts(t.dtype, t.shape, t.data)
    }

    fn from_json_parts(
        dtype: DType,
        shape: Vec<usize>,
        data: Numbers,
    ) -> Result<Self, TensorError> {
        let expected = element_count(&shape)?;
        if expected != data.len() {
            return Err(TensorError::ShapeMismatch {
                shape,
                expected,
                found: data.len(),
            });
        }
        let bad = |index: usize, n: Num| TensorError::BadElement {
            index,
            value: n.to_string(),
            dtype,
        };
        // Each element straight into its type: no intermediate vector of wider integers.
        fn ints<T: TryFrom<i64>>(
            data: &Numbers,
            bad: impl Fn(usize, Num) -> TensorError,
        ) -> Result<Vec<T>, TensorError> {
            let mut out = Vec::with_capacity(data.len());
            for (i, n) in data.iter().enumerate() {
                out.push(
                    n.as_i64()
                        .and_then(|v| T::try_from(v).ok())
                        .ok_or_else(|| bad(i, n))?,
                );
            }
            Ok(out)
        }
        let data = match dtype {
            DType::F32 => TensorData::F32(
                data.iter()
                    .enumerate()
                    .map(|(i, n)| {
                        Some(n.as_f64())
                            .filter(|v| v.abs() <= f32::MAX as f64)
                            .map(|v| v as f32)
                            .ok_or_else(|| bad(i, n))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            DType::F64 => TensorData::F64(data.iter().map(Num::as_f64).collect()),
            DType::I64 => TensorData::I64(ints(&data, bad)?),
            DType::I32 => TensorData::I32(ints(&data, bad)?),
            DType::U8 => TensorData::U8(ints(&data, bad)?),
        };
        Ok(Tensor { shape, data })
    }

    pub fn to_json_value(&self) -> serde_json::Value {
        let data = match &self.data {
            TensorData::F32(v) => serde_json::json!(v),
            TensorData::F64(v) => serde_json::json!(v),
            TensorData::I32(v) => serde_json::json!(v),
            TensorData::I64(v) => serde_json::json!(v),
            TensorData::U8(v) => serde_json::json!(v),
        };
        serde_json::to_value(TensorJsonOut {
            dtype: self.dtype(),
            shape: &self.shape,
            data,
        })
        .expect("a tensor always serialises to JSON")
    }

    /// Parses NumPy `.npy` bytes (format 1.0, 2.0 or 3.0; little-endian; C order).
    pub fn from_npy(bytes: &[u8], max_bytes: usize) -> Result<Self, TensorError> {
        let npy = |m: &str| TensorError::Npy(m.to_owned());
        if bytes.len() > max_bytes {
            return Err(TensorError::TooLarge {
                len: bytes.len(),
                max: max_bytes,
            });
        }
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err(npy("missing the \\x93NUMPY magic; not a .npy file"));
        }
        let major = bytes[6];
        let (header_len, start): (usize, usize) = match major {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 => {
                if bytes.len() < 12 {
                    return Err(npy("truncated header"));
                }
                (
                    u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                    12,
                )
            }
            v => return Err(TensorError::Npy(format!("unsupported format version {v}"))),
        };
        let end = start
            .checked_add(header_len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| npy("truncated header"))?;
        let header =
            std::str::from_utf8(&bytes[start..end]).map_err(|_| npy("header is not text"))?;
        let descr = dict_value(header, "descr").ok_or_else(|| npy("header has no 'descr'"))?;
        let descr = descr.trim_matches(|c| c == '\'' || c == '"');
        let dtype = DType::from_npy_descr(descr).ok_or_else(|| {
            TensorError::Npy(format!(
                "dtype '{descr}' is not supported; use little-endian f4, f8, i4, i8 or u1"
            ))
        })?;
        match dict_value(header, "fortran_order") {
            Some("False") => {}
            Some("True") => {
                return Err(npy(
                    "Fortran-order arrays are not supported; save with C order",
                ));
            }
            _ => return Err(npy("header has no valid 'fortran_order'")),
        }
        let shape_text = dict_value(header, "shape").ok_or_else(|| npy("header has no 'shape'"))?;
        let shape =
            parse_shape(shape_text).ok_or_else(|| npy("'shape' is not a tuple of integers"))?;
        let count = element_count(&shape)?;
        let body = &bytes[end..];
        let want = count
            .checked_mul(dtype.size_bytes())
            .ok_or_else(|| TensorError::ShapeOverflow(shape.clone()))?;
        if body.len() != want {
            return Err(TensorError::Npy(format!(
                "shape {shape:?} of {dtype} needs {want} data bytes, file has {}",
                body.len()
            )));
        }
        Ok(Tensor {
            shape,
            data: TensorData::from_le_bytes(dtype, body),
        })
    }

    /// Writes NumPy `.npy` format 1.0.
    pub fn to_npy(&self) -> Vec<u8> {
        let shape = match self.shape.len() {
            1 => format!("({},)", self.shape[0]),
            _ => format!(
                "({})",
                self.shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header = format!(
            "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
            self.dtype().npy_descr()
        );
        // Pad so the data starts on a 64-byte boundary, header ends with '\n'.
        let unpadded = 10 + header.len() + 1;
        header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
        header.push('\n');
        let mut out = Vec::with_capacity(10 + header.len() + self.byte_len());
        out.extend_from_slice(b"\x93NUMPY\x01\x00");
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.data.le_bytes());
        out
    }

    /// Content digest: BLAKE3 over a fixed layout of dtype, shape and little-endian elements,
    /// so equal tensors have equal digests whatever codec carried them.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"fabnode/v1/tensor\0");
        h.update(self.dtype().name().as_bytes());
        h.update(&[0]);
        h.update(&(self.shape.len() as u32).to_le_bytes());
        for d in &self.shape {
            h.update(&(*d as u64).to_le_bytes());
        }
        h.update(&self.data.le_bytes());
        *h.finalize().as_bytes()
    }

    /// Index of the largest element along the last axis of row `row`, for classifiers.
    pub fn argmax_row(&self, row: usize) -> Option<usize> {
        let width = *self.shape.last()?;
        let start = row.checked_mul(width)?;
        let vals: Vec<f64> = match &self.data {
            TensorData::F32(v) => v
                .get(start..start + width)?
                .iter()
                .map(|&x| x as f64)
                .collect(),
            TensorData::F64(v) => v.get(start..start + width)?.to_vec(),
            _ => return None,
        };
        vals.iter()
            .enumerate()
            .fold(None, |best: Option<(usize, f64)>, (i, &v)| match best {
                Some((_, b)) if b >= v => best,
                _ => Some((i, v)),
            })
            .map(|(i, _)| i)
    }
}

/// Digest of a list of named tensors, in order: the input or output digest of a job.
pub fn digest_named(tensors: &[(String, Tensor)]) -> [u8; 32] {
    digest_pairs(tensors.iter().map(|(n, t)| (n.as_str(), t)))
}

/// [`digest_named`] of borrowed (name, tensor) pairs: the same digest, no copy of the data.
pub fn digest_pairs<'a>(tensors: impl ExactSizeIterator<Item = (&'a str, &'a Tensor)>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"fabnode/v1/tensors\0");
    h.update(&(tensors.len() as u32).to_le_bytes());
    for (name, t) in tensors {
        h.update(&(name.len() as u32).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&t.digest());
    }
    *h.finalize().as_bytes()
}

/// Finds `'key': value` in a NumPy header dict; returns the raw value text.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_single = format!("'{key}':");
    let pat_double = format!("\"{key}\":");
    let at = header
        .find(&pat_single)
        .map(|i| i + pat_single.len())
        .or_else(|| header.find(&pat_double).map(|i| i + pat_double.len()))?;
    let rest = header[at..].trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

fn parse_shape(text: &str) -> Option<Vec<usize>> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_numbers_read_back_exactly() {
        let all = [
            Num::Pos(0),
            Num::Pos(1),
            Num::Pos(127),
            Num::Pos(128),
            Num::Pos(u64::MAX),
            Num::Neg(-1),
            Num::Neg(-129),
            Num::Neg(i64::MIN),
            Num::Float(0.5),
            Num::Float(-1e300),
            Num::Float(f64::MIN_POSITIVE),
        ];
        let mut n = Numbers::default();
        for x in all {
            n.push(x);
        }
        assert_eq!(n.len(), all.len());
        let back: Vec<String> = n.iter().map(|x| format!("{x:?}")).collect();
        let want: Vec<String> = all.iter().map(|x| format!("{x:?}")).collect();
        assert_eq!(back, want);
        // One-digit numbers take two bytes each.
        let mut small = Numbers::default();
        for _ in 0..1000 {
            small.push(Num::Pos(7));
        }
        assert_eq!(small.buf.len(), 2000);
    }

    fn t() -> Tensor {
        Tensor::new(
            vec![2, 3],
            TensorData::F32(vec![0.0, 1.5, -2.0, 3.25, 4.0, 5.0]),
        )
        .unwrap()
    }

    #[test]
    fn json_round_trip_and_errors() {
        let v = t().to_json_value();
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(Tensor::from_json_bytes(&bytes, 1 << 20).unwrap(), t());

        type Check = fn(&TensorError) -> bool;
        let cases: &[(&str, Check)] = &[
            (r#"{"dtype":"f32","shape":[2,2],"data":[1,2,3]}"#, |e| {
                matches!(
                    e,
                    TensorError::ShapeMismatch {
                        expected: 4,
                        found: 3,
                        ..
                    }
                )
            }),
            (r#"{"dtype":"f16","shape":[1],"data":[1]}"#, |e| {
                matches!(e, TensorError::Json(_))
            }),
            (r#"{"dtype":"f32","shape":[1],"data":[1"#, |e| {
                matches!(e, TensorError::Json(_))
            }),
            (r#"{"dtype":"u8","shape":[1],"data":[256]}"#, |e| {
                matches!(e, TensorError::BadElement { .. })
            }),
            (r#"{"dtype":"i32","shape":[1],"data":[1.5]}"#, |e| {
                matches!(e, TensorError::BadElement { .. })
            }),
            (r#"{"dtype":"f32","shape":[1],"data":[1e300]}"#, |e| {
                matches!(e, TensorError::BadElement { .. })
            }),
            (
                r#"{"dtype":"f32","shape":[4294967296,4294967296,4294967296],"data":[]}"#,
                |e| matches!(e, TensorError::ShapeOverflow(_)),
            ),
            (
                r#"{"dtype":"f32","shape":[1,1,1,1,1,1,1,1,1],"data":[1]}"#,
                |e| matches!(e, TensorError::RankTooHigh(9)),
            ),
        ];
        for (text, check) in cases {
            let err = Tensor::from_json_bytes(text.as_bytes(), 1 << 20).unwrap_err();
            assert!(check(&err), "{text}: {err}");
        }
        let err = Tensor::from_json_bytes(&bytes, 10).unwrap_err();
        assert!(matches!(err, TensorError::TooLarge { max: 10, .. }));
    }

    #[test]
    fn npy_round_trip_and_errors() {
        for tensor in [
            t(),
            Tensor::new(vec![3], TensorData::I64(vec![1, -2, 3])).unwrap(),
            Tensor::new(vec![], TensorData::U8(vec![7])).unwrap(),
        ] {
            let bytes = tensor.to_npy();
            assert_eq!((bytes.len() - tensor.byte_len()) % 64, 0);
            assert_eq!(Tensor::from_npy(&bytes, 1 << 20).unwrap(), tensor);
        }
        let good = t().to_npy();
        assert!(Tensor::from_npy(&good[..good.len() - 1], 1 << 20).is_err());
        assert!(Tensor::from_npy(&good[..20], 1 << 20).is_err());
        assert!(Tensor::from_npy(b"PK\x03\x04 not npy at all", 1 << 20).is_err());
        let replace = |from: &[u8], to: &[u8]| {
            let mut b = good.clone();
            let at = b.windows(from.len()).position(|w| w == from).unwrap();
            b[at..at + from.len()].copy_from_slice(to);
            b
        };
        assert!(Tensor::from_npy(&replace(b"<f4", b">f4"), 1 << 20).is_err());
        let fortran = replace(b"'fortran_order': False", b"'fortran_order': True ");
        assert!(
            Tensor::from_npy(&fortran, 1 << 20)
                .unwrap_err()
                .to_string()
                .contains("Fortran")
        );
        assert!(matches!(
            Tensor::from_npy(&good, 16),
            Err(TensorError::TooLarge { .. })
        ));
    }

    #[test]
    fn digest_depends_on_dtype_shape_and_values() {
        let a = t();
        let b = Tensor::new(vec![3, 2], a.data().clone()).unwrap();
        let c = Tensor::new(
            vec![2, 3],
            TensorData::F32(vec![0.0, 1.5, -2.0, 3.25, 4.0, 5.5]),
        )
        .unwrap();
        assert_ne!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
        assert_eq!(
            a.digest(),
            Tensor::from_npy(&a.to_npy(), 1 << 20).unwrap().digest()
        );
        assert_eq!(a.argmax_row(1), Some(2));
    }

    proptest::proptest! {
        #[test]
        fn npy_decoder_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend_from_slice(&data);
            let _ = Tensor::from_npy(&bytes, 1 << 16);
        }

        #[test]
        fn json_decoder_never_panics(s in ".{0,200}") {
            let _ = Tensor::from_json_bytes(s.as_bytes(), 1 << 16);
        }
    }
}
