//! The engine interface and the checks every input passes before a model runs.

use std::fmt;

use thiserror::Error;

use crate::tensor::{DType, Tensor};

/// One dimension of an input or output fact.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    /// A named free dimension, such as a batch size `N`.
    Symbolic(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
        }
    }
}

/// What a model takes or gives at one position.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IoFact {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl fmt::Display for IoFact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        write!(f, "{}: {}[{}]", self.name, self.dtype, dims.join(","))
    }
}

/// A loaded model's description.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelInfo {
    pub engine: &'static str,
    pub engine_version: &'static str,
    pub inputs: Vec<IoFact>,
    pub outputs: Vec<IoFact>,
    /// Threads one run uses; part of the determinism class.
    pub threads: u64,
}

/// Why a run did not produce outputs.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunError {
    /// The caller's input does not fit the model: a 4xx, not the node's fault.
    #[error("input does not match the model: {0}")]
    InvalidInput(String),
    /// The engine failed on an input that passed validation.
    #[error("the engine failed: {0}")]
    Engine(String),
    /// The engine panicked during the run; the worker thread was replaced.
    #[error("the engine crashed during the run ({0}); the worker was replaced")]
    Panicked(String),
}

/// A loaded, ready model. Implementations are shared between worker threads.
pub trait Engine: Send + Sync + fmt::Debug {
    fn info(&self) -> &ModelInfo;
    /// Runs the model on inputs already checked by [`validate_inputs`].
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RunError>;
}

/// Checks count, dtype, rank and fixed dimensions, and that a symbolic dimension has one value
/// across all inputs, before anything runs.
pub fn validate_inputs(info: &ModelInfo, inputs: &[Tensor]) -> Result<(), RunError> {
    let bad = |m: String| Err(RunError::InvalidInput(m));
    if inputs.len() != info.inputs.len() {
        let want: Vec<String> = info.inputs.iter().map(|f| f.to_string()).collect();
        return bad(format!(
            "model takes {} input(s) ({}), got {}",
            info.inputs.len(),
            want.join("; "),
            inputs.len()
        ));
    }
    let mut symbols: Vec<(&str, usize)> = Vec::new();
    for (fact, t) in info.inputs.iter().zip(inputs) {
        if t.dtype() != fact.dtype {
            return bad(format!(
                "input {}: dtype {} but the model expects {}",
                fact.name,
                t.dtype(),
                fact.dtype
            ));
        }
        if t.shape().len() != fact.shape.len() {
            return bad(format!(
                "input {}: rank {} (shape {:?}) but the model expects rank {} ({fact})",
                fact.name,
                t.shape().len(),
                t.shape(),
                fact.shape.len()
            ));
        }
        for (axis, (dim, &got)) in fact.shape.iter().zip(t.shape()).enumerate() {
            match dim {
                Dim::Fixed(want) if *want != got => {
                    return bad(format!(
                        "input {}: dimension {axis} is {got} but the model expects {want} ({fact})",
                        fact.name
                    ));
                }
                Dim::Fixed(_) => {}
                Dim::Symbolic(s) => {
                    if got == 0 {
                        return bad(format!("input {}: dimension {axis} ({s}) is 0", fact.name));
                    }
                    match symbols.iter().find(|(name, _)| name == s) {
                        Some((_, v)) if *v != got => {
                            return bad(format!(
                                "input {}: dimension {axis} ({s}) is {got} but {s} is {v} elsewhere",
                                fact.name
                            ));
                        }
                        Some(_) => {}
                        None => symbols.push((s, got)),
                    }
                }
            }
        }
    }
    Ok(())
}
