//! The subset of the ONNX protobuf schema (`onnx/onnx.proto`, IR version 3+)
//! that weight conversion reads: model -> graph -> nodes, initializers and
//! attributes. Decoded by `prost` (field numbers as in `onnx.proto`; fields
//! not declared here are skipped by the decoder). Python twin:
//! `onnx.load(path)`.

use prost::Message;

use crate::error::{Error, Result};

/// `onnx.ModelProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
  /// IR version.
  #[prost(int64, tag = "1")]
  pub ir_version: i64,
  /// Producer name.
  #[prost(string, tag = "2")]
  pub producer_name: String,
  /// The graph.
  #[prost(message, optional, tag = "7")]
  pub graph: Option<GraphProto>,
}

/// `onnx.GraphProto`.
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
  /// Nodes in topological order.
  #[prost(message, repeated, tag = "1")]
  pub node: Vec<NodeProto>,
  /// Graph name.
  #[prost(string, tag = "2")]
  pub name: String,
  /// Constant tensors (weights).
  #[prost(message, repeated, tag = "5")]
  pub initializer: Vec<TensorProto>,
}

/// `onnx.NodeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
  /// Input tensor names (`""` for an omitted optional input).
  #[prost(string, repeated, tag = "1")]
  pub input: Vec<String>,
  /// Output tensor names.
  #[prost(string, repeated, tag = "2")]
  pub output: Vec<String>,
  /// Node name (torch exports use the module scope: `/encoder/bert/...`).
  #[prost(string, tag = "3")]
  pub name: String,
  /// Operator type.
  #[prost(string, tag = "4")]
  pub op_type: String,
  /// Attributes.
  #[prost(message, repeated, tag = "5")]
  pub attribute: Vec<AttributeProto>,
  /// Operator domain (`""` or `com.microsoft`).
  #[prost(string, tag = "7")]
  pub domain: String,
}

/// `onnx.AttributeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
  /// Attribute name.
  #[prost(string, tag = "1")]
  pub name: String,
  /// Float value.
  #[prost(float, tag = "2")]
  pub f: f32,
  /// Integer value.
  #[prost(int64, tag = "3")]
  pub i: i64,
  /// Bytes / string value.
  #[prost(bytes = "vec", tag = "4")]
  pub s: Vec<u8>,
  /// Tensor value.
  #[prost(message, optional, tag = "5")]
  pub t: Option<TensorProto>,
  /// Float list.
  #[prost(float, repeated, tag = "7")]
  pub floats: Vec<f32>,
  /// Integer list.
  #[prost(int64, repeated, tag = "8")]
  pub ints: Vec<i64>,
}

/// `onnx.TensorProto` (dense, data in the model file).
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
  /// Shape.
  #[prost(int64, repeated, tag = "1")]
  pub dims: Vec<i64>,
  /// `TensorProto.DataType`: 1 float, 2 uint8, 3 int8, 6 int32, 7 int64.
  #[prost(int32, tag = "2")]
  pub data_type: i32,
  /// Float payload (when not in `raw_data`).
  #[prost(float, repeated, tag = "4")]
  pub float_data: Vec<f32>,
  /// int32 / int8 / uint8 payload (when not in `raw_data`).
  #[prost(int32, repeated, tag = "5")]
  pub int32_data: Vec<i32>,
  /// int64 payload.
  #[prost(int64, repeated, tag = "7")]
  pub int64_data: Vec<i64>,
  /// Name.
  #[prost(string, tag = "8")]
  pub name: String,
  /// Little-endian packed payload.
  #[prost(bytes = "vec", tag = "9")]
  pub raw_data: Vec<u8>,
  /// 1 when the payload is in an external file.
  #[prost(int32, tag = "14")]
  pub data_location: i32,
}

/// ONNX `TensorProto.DataType` codes used here.
pub mod dtype {
  /// float32
  pub const FLOAT: i32 = 1;
  /// uint8
  pub const UINT8: i32 = 2;
  /// int8
  pub const INT8: i32 = 3;
  /// int32
  pub const INT32: i32 = 6;
  /// int64
  pub const INT64: i32 = 7;
}

impl ModelProto {
  /// Decodes a serialized model (python `onnx.load_from_string`); a
  /// truncated or corrupt file is an [`Error::Model`] naming `what`.
  pub fn decode_bytes(bytes: &[u8], what: &str) -> Result<ModelProto> {
    let m = ModelProto::decode(bytes)
      .map_err(|e| Error::Model(format!("{what}: not a valid ONNX model: {e}")))?;
    if m.graph.is_none() {
      return Err(Error::Model(format!("{what}: ONNX model has no graph")));
    }
    Ok(m)
  }
}

impl TensorProto {
  /// Element count from `dims` (checked: non-negative, no overflow).
  pub fn numel(&self) -> Result<usize> {
    let mut n: usize = 1;
    for &d in &self.dims {
      let d = usize::try_from(d)
        .map_err(|_| Error::Model(format!("ONNX tensor {}: negative dim {d}", self.name)))?;
      n = n
        .checked_mul(d)
        .ok_or_else(|| Error::Model(format!("ONNX tensor {}: shape overflows", self.name)))?;
    }
    Ok(n)
  }

  /// Shape as `i32`s.
  pub fn shape(&self) -> Result<Vec<i32>> {
    self
      .dims
      .iter()
      .map(|&d| {
        i32::try_from(d)
          .map_err(|_| Error::Model(format!("ONNX tensor {}: dim {d} too large", self.name)))
      })
      .collect()
  }

  fn raw_or<T>(
    &self,
    width: usize,
    conv: impl Fn(&[u8]) -> T,
    typed: impl FnOnce() -> Vec<T>,
  ) -> Result<Vec<T>> {
    if self.data_location == 1 {
      return Err(Error::Model(format!(
        "ONNX tensor {}: external data is not supported",
        self.name
      )));
    }
    let n = self.numel()?;
    let v: Vec<T> = if !self.raw_data.is_empty() {
      if self.raw_data.len() != n * width {
        return Err(Error::Model(format!(
          "ONNX tensor {}: {} bytes of data for {n} elements of {width} bytes",
          self.name,
          self.raw_data.len()
        )));
      }
      self.raw_data.chunks_exact(width).map(conv).collect()
    } else {
      typed()
    };
    if v.len() != n {
      return Err(Error::Model(format!(
        "ONNX tensor {}: {} values for shape {:?}",
        self.name,
        v.len(),
        self.dims
      )));
    }
    Ok(v)
  }

  /// The values widened to `f32` (float32, int8, uint8, int32, int64
  /// tensors); any other type is an error.
  pub fn to_f32(&self) -> Result<Vec<f32>> {
    match self.data_type {
      dtype::FLOAT => self.raw_or(
        4,
        |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        || self.float_data.clone(),
      ),
      dtype::UINT8 => self.raw_or(
        1,
        |b| f32::from(b[0]),
        || self.int32_data.iter().map(|&v| v as f32).collect(),
      ),
      dtype::INT8 => self.raw_or(
        1,
        |b| f32::from(b[0] as i8),
        || self.int32_data.iter().map(|&v| v as f32).collect(),
      ),
      dtype::INT32 => self.raw_or(
        4,
        |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
        || self.int32_data.iter().map(|&v| v as f32).collect(),
      ),
      dtype::INT64 => self.raw_or(
        8,
        |b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
        || self.int64_data.iter().map(|&v| v as f32).collect(),
      ),
      t => Err(Error::Model(format!(
        "ONNX tensor {}: unsupported data type {t}",
        self.name
      ))),
    }
  }
}
