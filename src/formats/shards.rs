//! safetensors weights: one file, a folder's shards listed by `model.safetensors.index.json`, or
//! Mistral's `consolidated*.safetensors`; and writing them. FP8 (e4m3) weights are dequantised as
//! they are read, with their block scales (`<name>_scale_inv`, DeepSeek's layout, or
//! `<name>_scale`, compressed-tensors'): `w[i, j] = q[i, j] · scale[i / bh, j / bw]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::{FormatError, HostTensor, TensorSource};
use crate::util::{read_json, write_atomic};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

/// The safetensors files of a folder, mapped, with a name → shard index.
pub struct SafetensorsFolder {
    dir: PathBuf,
    shards: Vec<Shard>,
    index: BTreeMap<String, usize>,
    /// `[rows, cols]` of the FP8 scale blocks (`quantization_config.weight_block_size`).
    fp8_block: Option<[usize; 2]>,
}

/// An FP8 e4m3 (`float8_e4m3fn`: no infinities, 0x7f/0xff NaN) byte as f32.
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((b >> 3) & 0x0f) as i32;
    let man = (b & 0x07) as f32;
    if exp == 0x0f && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

impl SafetensorsFolder {
    pub fn open(dir: &Path) -> Result<Self, FormatError> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<String> = if index_path.exists() {
            #[derive(serde::Deserialize)]
            struct Index {
                weight_map: BTreeMap<String, String>,
            }
            let idx: Index = read_json(&index_path)?;
            let mut files: Vec<String> = idx.weight_map.into_values().collect();
            files.sort();
            files.dedup();
            files
        } else if dir.join("model.safetensors").exists() {
            vec!["model.safetensors".into()]
        } else {
            return Err(FormatError::MissingTensor {
                path: dir.to_path_buf(),
                name: "model.safetensors (or model.safetensors.index.json)".into(),
            });
        };
        Self::open_files(dir, files.iter().map(|f| dir.join(f)).collect())
    }

    /// Mistral's native layout: `consolidated.safetensors` or its numbered parts.
    pub fn open_consolidated(dir: &Path) -> Result<Self, FormatError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| FormatError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("consolidated") && n.ends_with(".safetensors"))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(FormatError::MissingTensor {
                path: dir.to_path_buf(),
                name: "consolidated.safetensors".into(),
            });
        }
        Self::open_files(dir, files)
    }

    /// Dequantise FP8 weights with scale blocks of `[rows, cols]`.
    pub fn with_fp8_blocks(mut self, block: Option<[usize; 2]>) -> Self {
        self.fp8_block = block;
        self
    }

    /// `q · scale` blockwise, for an FP8 weight `name` `[rows, cols]` (a vector scale or a
    /// single one are per-row and per-tensor).
    fn dequantise(&self, name: &str, t: &mut HostTensor) -> Result<(), FormatError> {
        let scale = [format!("{name}_scale_inv"), format!("{name}_scale")]
            .into_iter()
            .find(|n| self.index.contains_key(n));
        let Some(scale_name) = scale else {
            return Err(FormatError::Format {
                path: self.dir.clone(),
                detail: format!("FP8 tensor `{name}` has no `{name}_scale_inv` or `{name}_scale`"),
            });
        };
        let s = self.get(&scale_name)?.expect("indexed");
        let (rows, cols) = match t.shape[..] {
            [r, c] => (r, c),
            _ => {
                return Err(FormatError::Format {
                    path: self.dir.clone(),
                    detail: format!(
                        "FP8 tensor `{name}` has shape {:?}; only matrices are supported",
                        t.shape
                    ),
                });
            }
        };
        let (sr, sc) = match s.shape[..] {
            [] => (1, 1),
            [n] => (n, 1),
            [a, b] => (a, b),
            _ => (0, 0),
        };
        let [bh, bw] = match (sr, sc) {
            (1, 1) => [rows, cols],
            (n, 1) if n == rows => [1, cols],
            _ => self.fp8_block.ok_or_else(|| FormatError::Format {
                path: self.dir.clone(),
                detail: format!(
                    "FP8 tensor `{name}` has block scales but config.json's quantization_config has no weight_block_size"
                ),
            })?,
        };
        if rows.div_ceil(bh) != sr || cols.div_ceil(bw) != sc {
            return Err(FormatError::Shape {
                path: self.dir.clone(),
                tensor: scale_name,
                found: s.shape.clone(),
                expected: vec![rows.div_ceil(bh), cols.div_ceil(bw)],
            });
        }
        for (i, row) in t.data.chunks_mut(cols).enumerate() {
            let srow = &s.data[(i / bh) * sc..(i / bh + 1) * sc];
            for (j, x) in row.iter_mut().enumerate() {
                *x *= srow[j / bw];
            }
        }
        Ok(())
    }

    /// One safetensors file (an adapter's weights, for instance).
    pub fn open_file(path: &Path) -> Result<Self, FormatError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::open_files(dir, vec![path.to_path_buf()])
    }

    fn open_files(dir: &Path, files: Vec<PathBuf>) -> Result<Self, FormatError> {
        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        for path in files {
            let file = std::fs::File::open(&path).map_err(|e| FormatError::io(&path, e))?;
            // SAFETY: read-only mapping of a file we do not modify.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(&path, e))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| FormatError::Format {
                path: path.clone(),
                detail: format!("not a valid safetensors file: {e}"),
            })?;
            for name in st.names() {
                index.insert(name.to_string(), shards.len());
            }
            shards.push(Shard { path, mmap });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            index,
            fp8_block: None,
        })
    }
}

impl TensorSource for SafetensorsFolder {
    fn origin(&self) -> &Path {
        &self.dir
    }

    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn dtype_of(&self, name: &str) -> Option<String> {
        let shard = &self.shards[*self.index.get(name)?];
        let st = SafeTensors::deserialize(&shard.mmap).ok()?;
        Some(format!("{:?}", st.tensor(name).ok()?.dtype()))
    }

    fn get(&self, name: &str) -> Result<Option<HostTensor>, FormatError> {
        let Some(&i) = self.index.get(name) else {
            return Ok(None);
        };
        let shard = &self.shards[i];
        let st = SafeTensors::deserialize(&shard.mmap).map_err(|e| FormatError::Format {
            path: shard.path.clone(),
            detail: e.to_string(),
        })?;
        let view = st.tensor(name).map_err(|e| FormatError::Format {
            path: shard.path.clone(),
            detail: e.to_string(),
        })?;
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F8_E4M3 => {
                let mut t = HostTensor::new(
                    view.shape().to_vec(),
                    bytes.iter().map(|&b| e4m3_to_f32(b)).collect(),
                );
                self.dequantise(name, &mut t)?;
                return Ok(Some(t));
            }
            other => {
                return Err(FormatError::UnsupportedDtype {
                    path: shard.path.clone(),
                    tensor: name.to_string(),
                    dtype: format!("{other:?}"),
                    supported: "F32, F16, BF16, F8_E4M3 (with block scales)",
                });
            }
        };
        Ok(Some(HostTensor::new(view.shape().to_vec(), data)))
    }
}

/// Write tensors as one safetensors file (f32), atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
) -> Result<(), FormatError> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            let bytes: &[u8] = bytemuck::cast_slice(&t.data);
            safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| FormatError::format(path, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes =
        safetensors::serialize(views, Some(meta)).map_err(|e| FormatError::format(path, e))?;
    Ok(write_atomic(path, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_decodes_normals_subnormals_and_nan() {
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(e4m3_to_f32(0xb8), -1.0);
        assert_eq!(e4m3_to_f32(0x7e), 448.0, "the largest finite value");
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9), "the smallest subnormal");
        assert_eq!(e4m3_to_f32(0x3c), 1.5);
        assert!(e4m3_to_f32(0x7f).is_nan() && e4m3_to_f32(0xff).is_nan());
    }

    /// An FP8 weight with its scale blocks (one partial), and one without any scale.
    #[test]
    fn fp8_blocks_dequantise_and_a_missing_scale_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        // [3, 2] weights of 1.0 (0x38) in blocks of [2, 2]: rows 0-1 scale 0.5, row 2 scale 4.
        let w = [0x38u8; 6];
        let scale: Vec<u8> = [0.5f32, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = vec![
            (
                "a.weight",
                safetensors::tensor::TensorView::new(Dtype::F8_E4M3, vec![3, 2], &w).unwrap(),
            ),
            (
                "a.weight_scale_inv",
                safetensors::tensor::TensorView::new(Dtype::F32, vec![2, 1], &scale).unwrap(),
            ),
            (
                "b.weight",
                safetensors::tensor::TensorView::new(Dtype::F8_E4M3, vec![3, 2], &w).unwrap(),
            ),
        ];
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let src = SafetensorsFolder::open_file(&path)
            .unwrap()
            .with_fp8_blocks(Some([2, 2]));
        assert_eq!(
            src.get("a.weight").unwrap().unwrap().data,
            [0.5, 0.5, 0.5, 0.5, 4.0, 4.0]
        );
        let e = src.get("b.weight").unwrap_err().to_string();
        assert!(e.contains("b.weight_scale_inv"), "{e}");
        // Without the config's block size, block scales cannot be placed.
        let src = SafetensorsFolder::open_file(&path).unwrap();
        let e = src.get("a.weight").unwrap_err().to_string();
        assert!(e.contains("weight_block_size"), "{e}");
        // A block size that does not fit the scale's shape is named.
        let src = SafetensorsFolder::open_file(&path)
            .unwrap()
            .with_fp8_blocks(Some([1, 2]));
        let e = src.get("a.weight").unwrap_err().to_string();
        assert!(
            e.contains("a.weight_scale_inv") && e.contains("[3, 1]"),
            "{e}"
        );
    }
}
