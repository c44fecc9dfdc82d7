//! ONNX models through tract: parsed, typed and optimised once at load, then shared.

use std::path::Path;
use std::sync::Arc;

use thiserror::Error;
use tract_onnx::prelude::{
    DatumType, Framework, InferenceModelExt, IntoRunnable, IntoTValue, TDim, TValue, TVec,
    Tensor as TractTensor, TypedFact, TypedModel, TypedRunnableModel,
};

use crate::engine::{Dim, Engine, IoFact, ModelInfo, RunError};
use crate::tensor::{DType, Tensor, TensorData};

/// The tract version in this build, from Cargo.lock.
pub const TRACT_VERSION: &str = env!("FAB_TRACT_VERSION");

/// Why a model could not be loaded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadModelError {
    #[error("cannot read model file {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("model is {len} bytes, over the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("not a loadable ONNX model: {0}")]
    Parse(String),
    #[error("tract cannot run this model: {0}")]
    Unsupported(String),
}

/// A loaded, optimised ONNX model.
#[derive(Debug)]
pub struct TractEngine {
    plan: Arc<TypedRunnableModel>,
    info: ModelInfo,
}

fn dtype_of(dt: DatumType) -> Option<DType> {
    Some(match dt {
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        DatumType::I32 => DType::I32,
        DatumType::I64 => DType::I64,
        DatumType::U8 => DType::U8,
        _ => return None,
    })
}

fn fact(model: &TypedModel, name: String, f: &TypedFact) -> Result<IoFact, LoadModelError> {
    let dtype = dtype_of(f.datum_type).ok_or_else(|| {
        LoadModelError::Unsupported(format!(
            "{name}: element type {:?} is not supported",
            f.datum_type
        ))
    })?;
    let _ = model;
    let shape = f
        .shape
        .iter()
        .map(|d: &TDim| match d.to_i64() {
            Ok(n) if n >= 0 => Dim::Fixed(n as usize),
            _ => Dim::Symbolic(d.to_string()),
        })
        .collect();
    Ok(IoFact { name, dtype, shape })
}

impl TractEngine {
    /// Loads an ONNX file of at most `max_bytes`.
    pub fn load(path: &Path, max_bytes: u64) -> Result<Self, LoadModelError> {
        let io = |error| LoadModelError::Io {
            path: path.display().to_string(),
            error,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > max_bytes {
            return Err(LoadModelError::TooLarge {
                len,
                max: max_bytes,
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Self::load_bytes(&bytes)
    }

    /// Loads an ONNX model from bytes.
    pub fn load_bytes(bytes: &[u8]) -> Result<Self, LoadModelError> {
        let model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(|e| LoadModelError::Parse(format!("{e:#}")))?;
        let typed = model
            .into_optimized()
            .map_err(|e| LoadModelError::Unsupported(format!("{e:#}")))?;
        let mut inputs = Vec::new();
        for (i, outlet) in typed
            .input_outlets()
            .map_err(|e| LoadModelError::Unsupported(e.to_string()))?
            .iter()
            .enumerate()
        {
            let name = typed.node(outlet.node).name.clone();
            let f = typed
                .input_fact(i)
                .map_err(|e| LoadModelError::Unsupported(e.to_string()))?;
            inputs.push(fact(&typed, name, f)?);
        }
        let mut outputs = Vec::new();
        for (i, outlet) in typed
            .output_outlets()
            .map_err(|e| LoadModelError::Unsupported(e.to_string()))?
            .iter()
            .enumerate()
        {
            let name = typed
                .outlet_label(*outlet)
                .map(str::to_owned)
                .unwrap_or_else(|| typed.node(outlet.node).name.clone());
            let f = typed
                .output_fact(i)
                .map_err(|e| LoadModelError::Unsupported(e.to_string()))?;
            outputs.push(fact(&typed, name, f)?);
        }
        let plan = typed
            .into_runnable()
            .map_err(|e| LoadModelError::Unsupported(format!("{e:#}")))?;
        Ok(TractEngine {
            plan,
            info: ModelInfo {
                engine: "tract",
                engine_version: TRACT_VERSION,
                inputs,
                outputs,
                threads: 1,
            },
        })
    }
}

fn to_tract(t: Tensor) -> Result<TValue, RunError> {
    let (shape, data) = t.into_parts();
    let r = match data {
        TensorData::F32(v) => TractTensor::from_shape(&shape, &v),
        TensorData::F64(v) => TractTensor::from_shape(&shape, &v),
        TensorData::I32(v) => TractTensor::from_shape(&shape, &v),
        TensorData::I64(v) => TractTensor::from_shape(&shape, &v),
        TensorData::U8(v) => TractTensor::from_shape(&shape, &v),
    };
    r.map(|t| t.into_tvalue())
        .map_err(|e| RunError::InvalidInput(e.to_string()))
}

fn from_tract(v: &TValue) -> Result<Tensor, RunError> {
    let shape = v.shape().to_vec();
    let err = |e: tract_onnx::prelude::TractError| RunError::Engine(e.to_string());
    let data = match v.datum_type() {
        DatumType::F32 => TensorData::F32(
            v.to_plain_array_view::<f32>()
                .map_err(err)?
                .iter()
                .copied()
                .collect(),
        ),
        DatumType::F64 => TensorData::F64(
            v.to_plain_array_view::<f64>()
                .map_err(err)?
                .iter()
                .copied()
                .collect(),
        ),
        DatumType::I32 => TensorData::I32(
            v.to_plain_array_view::<i32>()
                .map_err(err)?
                .iter()
                .copied()
                .collect(),
        ),
        DatumType::I64 => TensorData::I64(
            v.to_plain_array_view::<i64>()
                .map_err(err)?
                .iter()
                .copied()
                .collect(),
        ),
        DatumType::U8 => TensorData::U8(
            v.to_plain_array_view::<u8>()
                .map_err(err)?
                .iter()
                .copied()
                .collect(),
        ),
        other => {
            return Err(RunError::Engine(format!(
                "output type {other:?} is not supported"
            )));
        }
    };
    Tensor::new(shape, data).map_err(|e| RunError::Engine(e.to_string()))
}

impl Engine for TractEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RunError> {
        let values: TVec<TValue> = inputs.into_iter().map(to_tract).collect::<Result<_, _>>()?;
        let outputs = self
            .plan
            .run(values)
            .map_err(|e| RunError::Engine(format!("{e:#}")))?;
        outputs.iter().map(from_tract).collect()
    }
}
