//! Reading an ONNX model: protobuf decoding (types generated from the vendored `onnx.proto` by
//! rust-protobuf at build time), tensors (inline, `raw_data` or external data) and attributes.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use protobuf::Message;

use crate::error::ImportError;
use crate::protos::onnx::{
    attribute_proto::AttributeType, tensor_proto, AttributeProto, ModelProto, NodeProto,
    TensorProto,
};

/// ONNX `TensorProto.DataType` codes the importer reads.
pub(crate) mod dtype {
    pub const FLOAT: i32 = 1;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const DOUBLE: i32 = 11;
}

/// A constant tensor: dims (full ONNX shape, batch included where it has one) and values in f64
/// (exact for float32 and for the int64 shape values the importer meets).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Const {
    /// ONNX dims.
    pub dims: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f64>,
}

impl Const {
    /// A scalar.
    pub fn scalar(v: f64) -> Const {
        Const { dims: vec![], data: vec![v] }
    }

    /// A 1-D tensor.
    pub fn vector(v: Vec<f64>) -> Const {
        Const { dims: vec![v.len()], data: v }
    }

    /// The values as f32 (weights).
    pub fn f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }

    /// The values as i64 (shapes, axes); errors when one is not an integer.
    pub fn ints(&self) -> Result<Vec<i64>, String> {
        self.data
            .iter()
            .map(|&v| {
                if v.fract() == 0.0 && v.abs() < 9.0e15 {
                    Ok(v as i64)
                } else {
                    Err(format!("expected integers, got {v}"))
                }
            })
            .collect()
    }
}

/// Decodes a model file. Errors: [`ImportError::Io`], [`ImportError::Parse`].
pub(crate) fn read_model(path: &Path) -> Result<ModelProto, ImportError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ImportError::Io { path: path.display().to_string(), source: e })?;
    ModelProto::parse_from_bytes(&bytes).map_err(|e| ImportError::Parse {
        path: path.display().to_string(),
        reason: format!("protobuf decoding failed: {e}"),
    })
}

/// Reads tensors' data, loading each external data file (relative to the model's folder) once.
pub(crate) struct TensorReader {
    dir: PathBuf,
    model: String,
    files: HashMap<String, Vec<u8>>,
}

impl TensorReader {
    /// A reader for the model at `model_path` (external data is looked up beside it).
    pub fn new(model_path: &Path) -> TensorReader {
        let dir = match model_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        TensorReader { dir, model: model_path.display().to_string(), files: HashMap::new() }
    }

    fn bad(&self, reason: String) -> ImportError {
        ImportError::Parse { path: self.model.clone(), reason }
    }

    /// The bytes of an external tensor (`location`, `offset`, `length` entries). The location
    /// must be a relative path inside the model's folder (no `..`, not absolute).
    fn external(&mut self, t: &TensorProto) -> Result<Vec<u8>, ImportError> {
        let mut location = None;
        let (mut offset, mut length) = (0usize, None);
        for e in &t.external_data {
            let num = |v: &str| {
                v.parse::<usize>().map_err(|_| {
                    self.bad(format!(
                        "tensor '{}': external data {} = '{v}' is not a number",
                        t.name, e.key
                    ))
                })
            };
            match e.key.as_str() {
                "location" => location = Some(e.value.clone()),
                "offset" => offset = num(&e.value)?,
                "length" => length = Some(num(&e.value)?),
                _ => {}
            }
        }
        let loc = location.ok_or_else(|| {
            self.bad(format!("tensor '{}': external data without a location", t.name))
        })?;
        let rel = Path::new(&loc);
        if rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(self.bad(format!(
                "tensor '{}': external data location '{loc}' must be a file name inside the \
                 model's folder (no absolute path, no '..')",
                t.name
            )));
        }
        if !self.files.contains_key(&loc) {
            let p = self.dir.join(rel);
            let bytes = std::fs::read(&p)
                .map_err(|e| ImportError::Io { path: p.display().to_string(), source: e })?;
            self.files.insert(loc.clone(), bytes);
        }
        let data = &self.files[&loc];
        let end = match length {
            Some(l) => offset.checked_add(l),
            None => Some(data.len()),
        };
        match end {
            Some(end) if offset <= end && end <= data.len() => Ok(data[offset..end].to_vec()),
            _ => Err(self.bad(format!(
                "tensor '{}': external data [{offset}, +{length:?}) is outside '{loc}' ({} bytes)",
                t.name,
                data.len()
            ))),
        }
    }

    /// Decodes a tensor (float32, float64, int32 or int64; inline, raw or external). Errors
    /// with [`ImportError::Parse`] on another data type or a length that does not match the
    /// dims.
    pub fn tensor(&mut self, t: &TensorProto) -> Result<Const, ImportError> {
        let dims: Vec<usize> = t
            .dims
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| self.bad(format!("tensor '{}' has dim {d}", t.name)))
            })
            .collect::<Result<_, _>>()?;
        let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let n = n.ok_or_else(|| self.bad(format!("tensor '{}' dims {dims:?} overflow", t.name)))?;
        let external = t.data_location.enum_value() == Ok(tensor_proto::DataLocation::EXTERNAL);
        let raw = if external {
            Some(self.external(t)?)
        } else if !t.raw_data.is_empty() {
            Some(t.raw_data.clone())
        } else {
            None
        };
        let data: Vec<f64> = match (t.data_type, raw) {
            (dtype::FLOAT, Some(r)) => {
                le_chunks::<4>(&r).map(|b| f32::from_le_bytes(b) as f64).collect()
            }
            (dtype::DOUBLE, Some(r)) => le_chunks::<8>(&r).map(f64::from_le_bytes).collect(),
            (dtype::INT64, Some(r)) => {
                le_chunks::<8>(&r).map(|b| i64::from_le_bytes(b) as f64).collect()
            }
            (dtype::INT32, Some(r)) => {
                le_chunks::<4>(&r).map(|b| i32::from_le_bytes(b) as f64).collect()
            }
            (dtype::FLOAT, None) => t.float_data.iter().map(|&v| v as f64).collect(),
            (dtype::DOUBLE, None) => t.double_data.clone(),
            (dtype::INT64, None) => t.int64_data.iter().map(|&v| v as f64).collect(),
            (dtype::INT32, None) => t.int32_data.iter().map(|&v| v as f64).collect(),
            (d, _) => {
                return Err(self.bad(format!(
                    "tensor '{}' has ONNX data type {d}; the importer reads float32, float64, \
                     int32 and int64 tensors",
                    t.name
                )))
            }
        };
        let bytes_per = if matches!(t.data_type, dtype::FLOAT | dtype::INT32) { 4 } else { 8 };
        if data.len() != n {
            return Err(self.bad(format!(
                "tensor '{}' of dims {dims:?} needs {n} values ({} bytes), has {}",
                t.name,
                n * bytes_per,
                data.len()
            )));
        }
        Ok(Const { dims, data })
    }
}

/// `N`-byte little-endian chunks (a trailing partial chunk is dropped; the length check catches
/// it).
fn le_chunks<const N: usize>(r: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    r.chunks_exact(N).map(|c| {
        let mut b = [0u8; N];
        b.copy_from_slice(c);
        b
    })
}

/// A node's attributes by name.
pub(crate) struct Attrs<'a>(HashMap<&'a str, &'a AttributeProto>);

impl<'a> Attrs<'a> {
    /// The attributes of `n`.
    pub fn of(n: &'a NodeProto) -> Attrs<'a> {
        Attrs(n.attribute.iter().map(|a| (a.name.as_str(), a)).collect())
    }

    /// An integer attribute, or `default`.
    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.0.get(name).map_or(default, |a| a.i)
    }

    /// A float attribute, or `default`.
    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.0.get(name).map_or(default, |a| a.f)
    }

    /// An integer list attribute (`None` when absent).
    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.0.get(name).map(|a| a.ints.clone())
    }

    /// A string attribute, or `default`.
    pub fn string(&self, name: &str, default: &str) -> String {
        self.0.get(name).map_or(default.to_string(), |a| String::from_utf8_lossy(&a.s).into_owned())
    }

    /// The raw attribute.
    pub fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.0.get(name).copied()
    }
}

/// The value of a `Constant` node (attribute `value`, `value_float(s)` or `value_int(s)`).
pub(crate) fn constant_value(n: &NodeProto, reader: &mut TensorReader) -> Result<Const, String> {
    let a = Attrs::of(n);
    if let Some(t) = a.get("value") {
        return reader.tensor(&t.t).map_err(|e| e.to_string());
    }
    if let Some(v) = a.get("value_float") {
        return Ok(Const::scalar(v.f as f64));
    }
    if let Some(v) = a.get("value_int") {
        return Ok(Const::scalar(v.i as f64));
    }
    if let Some(v) = a.get("value_floats") {
        return Ok(Const::vector(v.floats.iter().map(|&x| x as f64).collect()));
    }
    if let Some(v) = a.get("value_ints") {
        return Ok(Const::vector(v.ints.iter().map(|&x| x as f64).collect()));
    }
    let kinds: Vec<String> = n
        .attribute
        .iter()
        .map(|a| format!("{} ({:?})", a.name, a.type_.enum_value_or(AttributeType::UNDEFINED)))
        .collect();
    Err(format!(
        "Constant with attributes {kinds:?} (sparse or string constants are not supported)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protos::onnx::StringStringEntryProto;

    fn entry(k: &str, v: &str) -> StringStringEntryProto {
        let mut e = StringStringEntryProto::new();
        e.key = k.into();
        e.value = v.into();
        e
    }

    fn tensor(dims: &[i64], dtype: i32) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = "t".into();
        t.dims = dims.to_vec();
        t.data_type = dtype;
        t
    }

    #[test]
    fn raw_typed_and_external_data_decode() {
        let dir = std::env::temp_dir().join(format!("polypi-onnx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = TensorReader::new(&dir.join("m.onnx"));
        let mut t = tensor(&[2], dtype::FLOAT);
        t.raw_data = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(r.tensor(&t).unwrap().data, vec![1.5, -2.0]);
        let mut t = tensor(&[3], dtype::INT64);
        t.int64_data = vec![1, -1, 7];
        assert_eq!(r.tensor(&t).unwrap().ints().unwrap(), vec![1, -1, 7]);
        // External: bytes 4..8 of m.onnx.data.
        let bytes: Vec<u8> = [9.0f32, 0.25].iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.join("m.onnx.data"), &bytes).unwrap();
        let mut t = tensor(&[1], dtype::FLOAT);
        t.data_location = tensor_proto::DataLocation::EXTERNAL.into();
        t.external_data =
            vec![entry("location", "m.onnx.data"), entry("offset", "4"), entry("length", "4")];
        assert_eq!(r.tensor(&t).unwrap().data, vec![0.25]);
        // Past the end of the file.
        t.external_data[1] = entry("offset", "8");
        assert!(r.tensor(&t).unwrap_err().to_string().contains("outside"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_tensors_are_refused() {
        let mut r = TensorReader::new(Path::new("m.onnx"));
        // Data shorter than the dims.
        let mut t = tensor(&[3], dtype::FLOAT);
        t.float_data = vec![1.0, 2.0];
        assert!(r.tensor(&t).unwrap_err().to_string().contains("needs 3 values"));
        // float16 is not read.
        let t = tensor(&[1], 10);
        assert!(r.tensor(&t).unwrap_err().to_string().contains("data type 10"));
        // External data may not leave the model's folder.
        for loc in ["../secret.bin", "/etc/passwd"] {
            let mut t = tensor(&[1], dtype::FLOAT);
            t.data_location = tensor_proto::DataLocation::EXTERNAL.into();
            t.external_data = vec![entry("location", loc)];
            let e = r.tensor(&t).unwrap_err().to_string();
            assert!(e.contains("inside the model's folder"), "{loc}: {e}");
        }
    }
}
