//! Dataset files through polars: JSONL, JSON, Parquet and CSV, read into rows of JSON values so
//! that every format and column mapping works on the same shape.

use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde_json::{Map, Value};

use super::DataError;

/// One row of a dataset file, with the number users see (line for JSONL and CSV, row otherwise).
#[derive(Debug, Clone)]
pub struct Row {
    pub file: PathBuf,
    /// 1-based: the line in JSONL, the data line in CSV (header is line 1), the row index otherwise.
    pub line: usize,
    pub fields: Map<String, Value>,
}

impl Row {
    pub fn err(&self, detail: impl Into<String>) -> DataError {
        DataError::Row {
            file: self.file.clone(),
            line: self.line,
            detail: detail.into(),
        }
    }

    /// A string column, which must be present and not null.
    pub fn str(&self, key: &str) -> Result<&str, DataError> {
        match self.fields.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(Value::Null) | None => Err(self.err(format!("missing `{key}`"))),
            Some(other) => {
                Err(self.err(format!("`{key}` must be a string, found {}", kind(other))))
            }
        }
    }

    /// A string column that may be absent or null.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, DataError> {
        match self.fields.get(key) {
            Some(Value::Null) | None => Ok(None),
            _ => self.str(key).map(Some),
        }
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The formats a file can be in, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Jsonl,
    Json,
    Parquet,
    Csv,
}

impl FileFormat {
    pub fn of(path: &Path) -> Result<Self, DataError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" => Ok(Self::Jsonl),
            "json" => Ok(Self::Json),
            "parquet" => Ok(Self::Parquet),
            "csv" => Ok(Self::Csv),
            _ => Err(DataError::File {
                file: path.to_path_buf(),
                detail: "unknown file type: use .jsonl, .json, .parquet or .csv".into(),
            }),
        }
    }
}

/// Read a whole dataset file into a polars DataFrame.
pub fn read_frame(path: &Path) -> Result<DataFrame, DataError> {
    let format = FileFormat::of(path)?;
    let file_err = |detail: String| DataError::File {
        file: path.to_path_buf(),
        detail,
    };
    if !path.is_file() {
        return Err(file_err("no such file".into()));
    }
    let open = || std::fs::File::open(path).map_err(|e| file_err(e.to_string()));
    let frame = match format {
        FileFormat::Jsonl => {
            // polars names no line for malformed JSON; find it ourselves first.
            check_jsonl(path)?;
            JsonReader::new(open()?)
                .with_json_format(JsonFormat::JsonLines)
                .finish()
        }
        FileFormat::Json => JsonReader::new(open()?).finish(),
        FileFormat::Parquet => ParquetReader::new(open()?).finish(),
        FileFormat::Csv => CsvReadOptions::default()
            .with_has_header(true)
            .try_into_reader_with_file_path(Some(path.to_path_buf()))
            .and_then(|r| r.finish()),
    };
    frame.map_err(|e| file_err(e.to_string()))
}

/// Every line of a JSONL file must be a JSON object (blank lines excepted).
fn check_jsonl(path: &Path) -> Result<(), DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::File {
        file: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |detail: String| DataError::Row {
            file: path.to_path_buf(),
            line: i + 1,
            detail,
        };
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(_)) => {}
            Ok(other) => {
                return Err(bad(format!(
                    "expected a JSON object, found {}",
                    kind(&other)
                )));
            }
            Err(e) => return Err(bad(format!("not valid JSON: {e}"))),
        }
    }
    Ok(())
}

/// Read a dataset file into rows.
pub fn read_rows(path: &Path) -> Result<Vec<Row>, DataError> {
    let df = read_frame(path)?;
    let format = FileFormat::of(path)?;
    // JSONL rows map to lines when the file has no blank lines; keep the true line numbers.
    let jsonl_lines: Option<Vec<usize>> = (format == FileFormat::Jsonl).then(|| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, _)| i + 1)
            .collect()
    });
    let columns = df.columns();
    let mut rows = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let mut fields = Map::new();
        for c in columns {
            let v = c.get(i).map_err(|e| DataError::File {
                file: path.to_path_buf(),
                detail: e.to_string(),
            })?;
            fields.insert(c.name().to_string(), to_json(&v));
        }
        let line = match (&jsonl_lines, format) {
            (Some(lines), _) => lines.get(i).copied().unwrap_or(i + 1),
            (None, FileFormat::Csv) => i + 2,
            _ => i + 1,
        };
        rows.push(Row {
            file: path.to_path_buf(),
            line,
            fields,
        });
    }
    Ok(rows)
}

/// A polars value as JSON (nested lists and structs included).
pub fn to_json(v: &AnyValue) -> Value {
    match v {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::Bool(*b),
        AnyValue::String(s) => Value::String(s.to_string()),
        AnyValue::StringOwned(s) => Value::String(s.to_string()),
        AnyValue::Int8(x) => (*x).into(),
        AnyValue::Int16(x) => (*x).into(),
        AnyValue::Int32(x) => (*x).into(),
        AnyValue::Int64(x) => (*x).into(),
        AnyValue::UInt8(x) => (*x).into(),
        AnyValue::UInt16(x) => (*x).into(),
        AnyValue::UInt32(x) => (*x).into(),
        AnyValue::UInt64(x) => (*x).into(),
        AnyValue::Float32(x) => {
            serde_json::Number::from_f64(*x as f64).map_or(Value::Null, Value::Number)
        }
        AnyValue::Float64(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
        AnyValue::List(s) => Value::Array(s.iter().map(|x| to_json(&x)).collect()),
        AnyValue::Struct(_, _, _) | AnyValue::StructOwned(_) => {
            let mut m = Map::new();
            for (field, value) in v._iter_struct_av().zip(struct_fields(v)) {
                m.insert(value, to_json(&field));
            }
            Value::Object(m)
        }
        other => Value::String(other.to_string()),
    }
}

fn struct_fields(v: &AnyValue) -> Vec<String> {
    match v {
        AnyValue::Struct(_, _, fields) => fields.iter().map(|f| f.name().to_string()).collect(),
        AnyValue::StructOwned(b) => b.1.iter().map(|f| f.name().to_string()).collect(),
        _ => Vec::new(),
    }
}
