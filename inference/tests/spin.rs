//! The committed spin model (fixed heavy work per run, for scheduler tests) through tract,
//! checked against onnxruntime's reference output.

use std::path::PathBuf;

use fab_inference::{Engine, Tensor, TensorData, TractEngine};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/spin")
        .join(name)
}

fn npy(name: &str) -> Tensor {
    Tensor::from_npy(&std::fs::read(fixture(name)).unwrap(), 1 << 20).unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    match t.data() {
        TensorData::F32(v) => v.clone(),
        other => panic!("expected f32, got {:?}", other.dtype()),
    }
}

#[test]
fn spin_matches_onnxruntime_within_1e4() {
    let e = TractEngine::load(&fixture("spin.onnx"), 1 << 24).unwrap();
    let info = e.info();
    assert_eq!(info.inputs[0].name, "x");
    assert_eq!(info.outputs[0].name, "y");
    let out = e.run(vec![npy("sample.npy")]).unwrap();
    let (got, want) = (f32s(&out[0]), f32s(&npy("reference_y.npy")));
    assert_eq!(got.len(), 256);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "largest difference {worst}");
    // The output is not trivial: the layers keep a spread of values.
    assert!(want.iter().any(|v| v.abs() > 0.1), "{want:?}");
}
