//! What every layer shares and nothing else provides: files written atomically, JSON read with
//! errors that name the file and line, SHA-256, the clock, and switchyard's home folder.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A file that could not be read, parsed or written; names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is there but its contents are not what was expected (the detail says where).
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
}

impl FileError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        FileError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn parse(path: &Path, detail: impl std::fmt::Display) -> Self {
        FileError::Parse {
            path: path.to_path_buf(),
            detail: detail.to_string(),
        }
    }
}

/// Write `bytes` to `path` atomically: a temporary file in the same folder, then a rename, so a
/// killed process never leaves a half-written file under the real name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| FileError::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| FileError::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| FileError::io(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| FileError::io(path, e))?;
    // Temporary files are created 0600; what we write is meant to be shared like any other file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path)
        .map_err(|e| FileError::io(path, e.error))?;
    Ok(())
}

/// [`write_atomic`] of a value as pretty-printed JSON.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), FileError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| FileError::parse(path, e))?;
    write_atomic(path, text.as_bytes())
}

/// Read and parse a JSON file; a parse error names the file, line and column.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let text = std::fs::read_to_string(path).map_err(|e| FileError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| FileError::parse(path, e))
}

/// Compact JSON with every object's keys sorted, whatever order the value keeps them in: what
/// cache keys and fingerprints hash, so that they stay the same from build to build.
pub fn canonical_json(v: &serde_json::Value) -> String {
    fn write(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&o[k], out);
                }
                out.push('}');
            }
            serde_json::Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// Lower-case hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of a file, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> Result<String, FileError> {
    let mut f = std::fs::File::open(path).map_err(|e| FileError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| FileError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Today's date in UTC, `YYYY-MM-DD`.
pub fn today() -> String {
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let days = (now_s() / 86_400.0).floor() as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Where switchyard keeps models, caches and peer environments: `$SWITCHYARD_HOME`, default
/// `~/.cache/switchyard`.
pub fn home_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("SWITCHYARD_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    dirs::cache_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("switchyard")
}

/// A request to stop soon, shared between whoever asks (Ctrl-C in the CLI, a test) and the long
/// work that checks it at safe points (training after a step, an eval between requests).
#[derive(Debug, Clone, Default)]
pub struct Interrupt(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Interrupt {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the work to stop; returns whether it had already been asked.
    pub fn trigger(&self) -> bool {
        self.0.swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The `q` quantile (0..=1) by linear interpolation between order statistics (numpy's default).
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth_whatever_the_insertion_order() {
        let v = serde_json::json!({"b": 1, "a": [{"d": "x\"y", "c": 2.5}, null], "A": true});
        assert_eq!(
            canonical_json(&v),
            r#"{"A":true,"a":[{"c":2.5,"d":"x\"y"},null],"b":1}"#
        );
    }

    #[test]
    fn atomic_writes_replace_whole_files_and_json_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.json");
        write_json(&p, &serde_json::json!({"a": 1})).unwrap();
        write_atomic(&p, b"{\n  \"a\": \n}").unwrap();
        let e = read_json::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(e.contains("a.json") && e.contains("line 3"), "{e}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            1
        );
        assert_eq!(sha256_file(&p).unwrap(), sha256_hex(b"{\n  \"a\": \n}"));
    }
}
