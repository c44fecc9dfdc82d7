//! fab-inference: running models on a node.
//!
//! # Layout
//!
//! - [`tensor`]: [`Tensor`], a typed, shaped array; JSON and `.npy` codecs with size limits;
//!   content digests of inputs and outputs.
//! - [`engine`]: the [`Engine`] trait, [`ModelInfo`] (input/output facts) and input validation.
//! - [`tract_engine`] (feature `tract`): ONNX models through tract, loaded and optimised once.
//! - [`pool`]: [`InferencePool`], worker threads behind a bounded queue, so inference never
//!   runs on the async runtime's threads; each run is metered (CPU time, wall time, peak RSS).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod engine;
pub mod pool;
pub mod tensor;
#[cfg(feature = "tract")]
pub mod tract_engine;

pub use engine::{Dim, Engine, IoFact, ModelInfo, RunError, validate_inputs};
pub use pool::{InferencePool, PoolError, RunReport};
pub use tensor::{DType, Tensor, TensorData, TensorError};
#[cfg(feature = "tract")]
pub use tract_engine::{LoadModelError, TractEngine};
