//! GGUF reader: metadata, tensor directory, quantised blocks ([`blocks`]) and dequantisation to
//! f32; [`hf`] presents a GGUF file under Hugging Face names.
//!
//! The file is memory-mapped; tensors are dequantised on demand. Every error names the file and,
//! where it applies, the metadata key or tensor.

pub mod blocks;
pub mod hf;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use super::FormatError;
use blocks::{BlockKind, Blocks};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value, as typed in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short human-readable rendering (arrays are summarised).
    pub fn summary(&self) -> String {
        match self {
            Value::String(s) if s.len() > 60 => format!("{:?}…", &s[..s.floor_char_boundary(60)]),
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) => format!("[{} items]", a.len()),
            Value::Bool(b) => b.to_string(),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            other => other
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| format!("{other:?}")),
        }
    }
}

/// The ggml tensor types this reader knows by name. Only some are dequantised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    BF16,
    Other(u32),
}

impl GgmlType {
    fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// (elements per block, bytes per block)
    fn block(self) -> Option<(usize, usize)> {
        match self {
            Self::F32 => Some((1, 4)),
            Self::F16 | Self::BF16 => Some((1, 2)),
            Self::Q4_0 => Some((32, 18)),
            Self::Q4_1 => Some((32, 20)),
            Self::Q8_0 => Some((32, 34)),
            Self::Other(_) => None,
        }
    }

    /// The block layout of a quantised type the decode kernel reads.
    pub fn block_kind(self) -> Option<BlockKind> {
        match self {
            Self::Q4_0 => Some(BlockKind::Q4_0),
            Self::Q4_1 => Some(BlockKind::Q4_1),
            Self::Q8_0 => Some(BlockKind::Q8_0),
            _ => None,
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::Other(v) => ggml_type_name(v).to_string(),
            known => format!("{known:?}"),
        }
    }
}

fn ggml_type_name(v: u32) -> &'static str {
    match v {
        6 => "Q5_0",
        7 => "Q5_1",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16..=23 => "IQ (importance) quant",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        _ => "unknown ggml type",
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` varies fastest (a PyTorch `[out, in]` weight is `[in, out]` here).
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Shape in PyTorch / safetensors order (slowest-varying first).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// An opened GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data_start: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: impl Into<String>) -> FormatError {
        FormatError::Format {
            path: self.path.to_path_buf(),
            detail: format!("{} (at byte {})", what.into(), self.pos),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(format!(
                "file is truncated while reading {what} (needs {n} bytes, {} left)",
                self.buf.len().saturating_sub(self.pos)
            ))),
        }
    }

    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self, what: &str) -> Result<String, FormatError> {
        let len = self.u64(what)?;
        if len > self.buf.len() as u64 {
            return Err(self.err(format!(
                "file is truncated or corrupt: {what} claims {len} bytes, more than the file has"
            )));
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.err(format!("{what}: string is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value, FormatError> {
        let what = format!("metadata value of `{key}`");
        Ok(match ty {
            0 => Value::U8(self.take(1, &what)?[0]),
            1 => Value::I8(self.take(1, &what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(
                self.take(2, &what)?.try_into().expect("2"),
            )),
            3 => Value::I16(i16::from_le_bytes(
                self.take(2, &what)?.try_into().expect("2"),
            )),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(self.u32(&what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(&what)?)),
            7 => Value::Bool(self.take(1, &what)?[0] != 0),
            8 => Value::String(self.string(&what)?),
            9 => {
                if depth > 2 {
                    return Err(self.err(format!("`{key}`: arrays nested too deeply")));
                }
                let elem_ty = self.u32(&what)?;
                let len = self.u64(&what)?;
                if len > (self.buf.len() - self.pos) as u64 {
                    return Err(self.err(format!("file is truncated or corrupt: `{key}` claims {len} items, more than the bytes left")));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(self.u64(&what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(&what)?)),
            other => return Err(self.err(format!("`{key}`: unknown metadata value type {other}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
        // SAFETY: the mapping is read-only; a file changed underneath us is the user's doing and
        // at worst yields wrong numbers, which the loader's shape checks bound.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
        let mut cur = Cursor {
            buf: &mmap,
            pos: 0,
            path,
        };
        let magic = cur.take(4, "the magic number")?;
        if magic != MAGIC {
            return Err(cur.err(format!(
                "not a GGUF file: magic is {magic:?}, expected \"GGUF\""
            )));
        }
        let version = cur.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(cur.err(format!(
                "unsupported GGUF version {version} (supported: 2, 3)"
            )));
        }
        let n_tensors = cur.u64("the tensor count")?;
        let n_kv = cur.u64("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = cur.string("a metadata key")?;
            let ty = cur.u32("a metadata type")?;
            let value = cur.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16) as usize);
        for _ in 0..n_tensors {
            let name = cur.string("a tensor name")?;
            let n_dims = cur.u32("tensor dimensions")?;
            if n_dims > 4 {
                return Err(cur.err(format!("tensor `{name}` has {n_dims} dimensions (max 4)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(cur.u64("a tensor dimension")?);
            }
            let dtype = GgmlType::from_u32(cur.u32("a tensor type")?);
            let offset = cur.u64("a tensor offset")?;
            if dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .is_none()
            {
                return Err(cur.err(format!(
                    "tensor `{name}` has dimensions {dims:?} whose product overflows"
                )));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                dtype,
                offset,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT);
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(cur.err(format!(
                "`general.alignment` is {alignment}, not a power of two"
            )));
        }
        let data_start = (cur.pos as u64).div_ceil(alignment) * alignment;
        let gguf = GgufFile {
            path: path.to_path_buf(),
            mmap,
            version,
            metadata,
            tensors,
            data_start,
        };
        gguf.check_extents()?;
        Ok(gguf)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor's bytes must lie inside the file: a truncated download is caught at open.
    fn check_extents(&self) -> Result<(), FormatError> {
        let len = self.mmap.len() as u64;
        for t in &self.tensors {
            let Some(bytes) = self.byte_len(t) else {
                continue;
            };
            let end = self.data_start + t.offset + bytes;
            if end > len {
                return Err(FormatError::Format {
                    path: self.path.clone(),
                    detail: format!(
                        "file is truncated: tensor `{}` needs bytes up to {end}, the file has {len}",
                        t.name
                    ),
                });
            }
        }
        Ok(())
    }

    fn byte_len(&self, t: &TensorInfo) -> Option<u64> {
        let (block, bytes) = t.dtype.block()?;
        Some(t.n_elements().div_ceil(block as u64) * bytes as u64)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required metadata key, with an error naming it.
    pub fn require(&self, key: &str) -> Result<&Value, FormatError> {
        self.metadata
            .get(key)
            .ok_or_else(|| FormatError::MissingKey {
                path: self.path.clone(),
                key: key.to_string(),
            })
    }

    pub fn require_u64(&self, key: &str) -> Result<u64, FormatError> {
        self.require(key)?
            .as_u64()
            .ok_or_else(|| self.bad_key(key, "an unsigned integer"))
    }

    pub fn require_f64(&self, key: &str) -> Result<f64, FormatError> {
        self.require(key)?
            .as_f64()
            .ok_or_else(|| self.bad_key(key, "a number"))
    }

    pub fn require_str(&self, key: &str) -> Result<&str, FormatError> {
        self.require(key)?
            .as_str()
            .ok_or_else(|| self.bad_key(key, "a string"))
    }

    pub fn bad_key(&self, key: &str, expected: &str) -> FormatError {
        FormatError::BadKey {
            path: self.path.clone(),
            key: key.to_string(),
            detail: format!("expected {expected}"),
        }
    }

    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, FormatError> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| FormatError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    /// A tensor's bytes in the file (bounds checked at open), or `None` for a type without a
    /// known block size.
    fn raw(&self, info: &TensorInfo) -> Option<&[u8]> {
        let bytes = self.byte_len(info)? as usize;
        let start = (self.data_start + info.offset) as usize;
        Some(&self.mmap[start..start + bytes])
    }

    /// A 2-D tensor's blocks, decoded, when its type is a block type the decode kernel reads.
    pub fn blocks(&self, info: &TensorInfo) -> Result<Option<Blocks>, FormatError> {
        let Some(kind) = info.dtype.block_kind() else {
            return Ok(None);
        };
        let shape = info.shape();
        if shape.len() != 2 {
            return Ok(None);
        }
        let raw = self.raw(info).expect("block types have a block size");
        Blocks::decode(kind, shape[0], shape[1], raw)
            .map(Some)
            .map_err(|detail| {
                FormatError::format(&self.path, format!("tensor `{}`: {detail}", info.name))
            })
    }

    /// Dequantise a tensor to f32, in ggml element order (i.e. row-major in [`TensorInfo::shape`]).
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>, FormatError> {
        let Some(raw) = self.raw(info) else {
            return Err(FormatError::UnsupportedDtype {
                path: self.path.clone(),
                tensor: info.name.clone(),
                dtype: info.dtype.name(),
                supported: "F32, F16, BF16, Q8_0, Q4_0, Q4_1",
            });
        };
        let n = info.n_elements() as usize;
        let (block, _) = info.dtype.block().expect("checked above");
        if !n.is_multiple_of(block) {
            return Err(FormatError::Format {
                path: self.path.clone(),
                detail: format!(
                    "tensor `{}` has {n} elements, not a multiple of its block size {block}",
                    info.name
                ),
            });
        }
        Ok(dequantize_raw(info.dtype, raw, n))
    }
}

/// Dequantise `n` elements of `raw` stored as `dtype`. Lengths must already be checked.
pub fn dequantize_raw(dtype: GgmlType, raw: &[u8], n: usize) -> Vec<f32> {
    if let Some(kind) = dtype.block_kind() {
        // One row of blocks: the row structure does not change the values.
        return Blocks::decode(kind, 1, n, raw)
            .expect("lengths checked by the caller")
            .dequantize();
    }
    match dtype {
        GgmlType::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect(),
        GgmlType::F16 => raw
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        GgmlType::BF16 => raw
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => unreachable!("callers check the type"),
    }
}

/// Undo llama.cpp's Q/K row permutation (made so that adjacent-pair RoPE works) to get the
/// Hugging Face half-split layout. `data` is row-major `[n_heads * head_dim, cols]`.
pub fn unpermute_qk(data: &[f32], n_heads: usize, cols: usize) -> Vec<f32> {
    let head_dim = data.len() / cols / n_heads;
    let mut out = Vec::with_capacity(data.len());
    for dst in 0..data.len() / cols {
        let src = qk_source_row(dst, head_dim);
        out.extend_from_slice(&data[src * cols..(src + 1) * cols]);
    }
    out
}

/// The GGUF row that holds Hugging Face Q/K row `dst`: HF row (h, s, i) — head, half, index in
/// the half — is GGUF row (h, i, s).
pub fn qk_source_row(dst: usize, head_dim: usize) -> usize {
    let half = head_dim / 2;
    let (h, rem) = (dst / head_dim, dst % head_dim);
    let (s, i) = (rem / half, rem % half);
    h * head_dim + i * 2 + s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: reshape(n_head, 2, hd/2, cols).swapaxes(1, 2)
        let (n_heads, hd, cols) = (2, 4, 3);
        let hf: Vec<f32> = (0..n_heads * hd * cols).map(|v| v as f32).collect();
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..n_heads {
            for s in 0..2 {
                for i in 0..hd / 2 {
                    let src = h * hd + s * hd / 2 + i;
                    let dst = h * hd + i * 2 + s;
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(unpermute_qk(&gguf, n_heads, cols), hf);
    }

    /// A minimal GGUF v3 file: one string metadata key and the given tensors (name, dims, type, bytes).
    fn write_gguf(tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) -> tempfile::NamedTempFile {
        let mut b = Vec::new();
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend(1u64.to_le_bytes());
        string(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        string(&mut b, "llama");
        let mut offset = 0u64;
        for (name, dims, ty, data) in tensors {
            string(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        b.resize(b.len().div_ceil(32) * 32, 0);
        for (_, _, _, data) in tensors {
            b.extend(data);
            b.resize(b.len().div_ceil(32) * 32, 0);
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &b).unwrap();
        f
    }

    #[test]
    fn f16_and_bf16_tensors_read_in_pytorch_shape_order() {
        let f16s: Vec<u8> = [1.0f32, -2.0, 0.5, 4.0, 8.0, -1.0]
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16s: Vec<u8> = [3.0f32, -0.25]
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        let f = write_gguf(&[("a", vec![3, 2], 1, f16s), ("b", vec![2], 30, bf16s)]);
        let g = GgufFile::open(f.path()).unwrap();
        let a = g.tensor_info("a").unwrap();
        assert_eq!(a.shape(), vec![2, 3]);
        assert_eq!(
            g.dequantize(a).unwrap(),
            vec![1.0, -2.0, 0.5, 4.0, 8.0, -1.0]
        );
        assert_eq!(
            g.dequantize(g.tensor_info("b").unwrap()).unwrap(),
            vec![3.0, -0.25]
        );
        assert_eq!(g.require_str("general.architecture").unwrap(), "llama");
    }

    #[test]
    fn an_unsupported_quantisation_names_its_type_and_tensor() {
        let f = write_gguf(&[("blk.0.ffn_up.weight", vec![256, 1], 12, vec![0u8; 144])]);
        let g = GgufFile::open(f.path()).unwrap();
        let e = g
            .dequantize(g.tensor_info("blk.0.ffn_up.weight").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Q4_K") && e.contains("blk.0.ffn_up.weight") && e.contains("Q4_1"),
            "{e}"
        );
        let missing = g.require("llama.block_count").unwrap_err().to_string();
        assert!(missing.contains("llama.block_count"), "{missing}");
    }
}
