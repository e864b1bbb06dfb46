//! safetensors weights: one file, or a folder's shards listed by `model.safetensors.index.json`;
//! and writing them.

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
            other => {
                return Err(FormatError::UnsupportedDtype {
                    path: shard.path.clone(),
                    tensor: name.to_string(),
                    dtype: format!("{other:?}"),
                    supported: "F32, F16, BF16",
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
