//! The committed digits model through tract, checked against onnxruntime's reference outputs.

use std::path::PathBuf;
use std::sync::Arc;

use fab_inference::{
    Dim, Engine, InferencePool, PoolError, RunError, Tensor, TensorData, TractEngine,
    validate_inputs,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/digits")
        .join(name)
}

fn npy(name: &str) -> Tensor {
    Tensor::from_npy(&std::fs::read(fixture(name)).unwrap(), 1 << 24).unwrap()
}

fn f32s(t: &Tensor) -> &[f32] {
    match t.data() {
        TensorData::F32(v) => v,
        other => panic!("expected f32, got {:?}", other.dtype()),
    }
}

fn engine() -> TractEngine {
    TractEngine::load(&fixture("digits.onnx"), 1 << 24).unwrap()
}

#[test]
fn facts_are_read_from_the_model() {
    let e = engine();
    let info = e.info();
    assert_eq!(info.inputs.len(), 1);
    assert_eq!(info.inputs[0].name, "image");
    assert_eq!(
        info.inputs[0].shape[1..],
        [Dim::Fixed(1), Dim::Fixed(8), Dim::Fixed(8)]
    );
    assert!(matches!(info.inputs[0].shape[0], Dim::Symbolic(_)));
    let names: Vec<&str> = info.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["logits", "probabilities"]);
    assert_ne!(info.engine_version, "unknown");
}

#[test]
fn outputs_match_onnxruntime_within_1e5_and_accuracy_matches_the_script() {
    let e = engine();
    let images = npy("test_images.npy");
    let labels = match npy("test_labels.npy").data() {
        TensorData::I64(v) => v.clone(),
        _ => panic!("labels are i64"),
    };
    let ref_probs = npy("reference_probabilities.npy");
    let ref_logits = npy("reference_logits.npy");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("meta.json")).unwrap()).unwrap();

    // The whole held-out set as one batch.
    let out = e.run(vec![images.clone()]).unwrap();
    assert_eq!(out[1].shape(), &[360, 10]);
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    let dl = max_diff(f32s(&out[0]), f32s(&ref_logits));
    let dp = max_diff(f32s(&out[1]), f32s(&ref_probs));
    assert!(dl <= 1e-5, "logits differ from onnxruntime by {dl}");
    assert!(dp <= 1e-5, "probabilities differ from onnxruntime by {dp}");

    let correct = (0..360)
        .filter(|&i| out[1].argmax_row(i) == Some(labels[i] as usize))
        .count();
    let accuracy = correct as f64 / 360.0;
    assert_eq!(accuracy, meta["accuracy_onnxruntime"].as_f64().unwrap());
    assert!(accuracy >= 0.95);

    // One image at a time gives the same answers as the batch.
    let pixels = f32s(&images);
    for i in [0usize, 17, 359] {
        let one = Tensor::new(
            vec![1, 1, 8, 8],
            TensorData::F32(pixels[i * 64..(i + 1) * 64].to_vec()),
        )
        .unwrap();
        let o = e.run(vec![one]).unwrap();
        let d = max_diff(f32s(&o[1]), &f32s(&ref_probs)[i * 10..(i + 1) * 10]);
        assert!(d <= 1e-5, "image {i}: {d}");
    }
}

#[test]
fn bad_inputs_are_refused_before_running() {
    let e = engine();
    let info = e.info();
    let cases = [
        (
            Tensor::new(vec![1, 1, 8, 8], TensorData::F64(vec![0.0; 64])).unwrap(),
            "dtype f64",
        ),
        (
            Tensor::new(vec![1, 64], TensorData::F32(vec![0.0; 64])).unwrap(),
            "rank 2",
        ),
        (
            Tensor::new(vec![1, 1, 8, 7], TensorData::F32(vec![0.0; 56])).unwrap(),
            "dimension 3 is 7",
        ),
        (
            Tensor::new(vec![0, 1, 8, 8], TensorData::F32(vec![])).unwrap(),
            "is 0",
        ),
    ];
    for (t, want) in cases {
        match validate_inputs(info, &[t]) {
            Err(RunError::InvalidInput(m)) => assert!(m.contains(want), "{m}"),
            other => panic!("expected InvalidInput containing {want}, got {other:?}"),
        }
    }
    assert!(validate_inputs(info, &[]).is_err());
}

#[test]
fn garbage_model_files_are_clear_errors() {
    assert!(TractEngine::load_bytes(b"not a model").is_err());
    let err = TractEngine::load(&fixture("no-such.onnx"), 1 << 20).unwrap_err();
    assert!(err.to_string().contains("cannot read model file"));
    let err = TractEngine::load(&fixture("digits.onnx"), 100).unwrap_err();
    assert!(err.to_string().contains("over the limit"));
}

#[test]
fn pool_runs_off_thread_meters_and_refuses_when_full() {
    let e: Arc<dyn Engine> = Arc::new(engine());
    let one = Tensor::new(vec![1, 1, 8, 8], TensorData::F32(vec![8.0; 64])).unwrap();
    let pool = InferencePool::new(1, 1);
    let rx = pool.submit(Arc::clone(&e), vec![one.clone()]).unwrap();
    let report = rx.blocking_recv().unwrap();
    assert_eq!(report.outputs.unwrap()[1].shape(), &[1, 10]);
    assert!(report.peak_rss_kib > 0);
    assert!(report.wall > std::time::Duration::ZERO);

    // A large batch keeps the single worker busy; the queue of one then overflows.
    let big = Tensor::new(vec![4096, 1, 8, 8], TensorData::F32(vec![1.0; 4096 * 64])).unwrap();
    let mut accepted = Vec::new();
    let mut busy = 0;
    for _ in 0..50 {
        match pool.submit(Arc::clone(&e), vec![big.clone()]) {
            Ok(rx) => accepted.push(rx),
            Err(PoolError::Busy { .. }) => busy += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert!(
        busy > 0,
        "a queue of 1 must refuse some of 50 quick submits"
    );
    for rx in accepted {
        assert!(rx.blocking_recv().unwrap().outputs.is_ok());
    }
    let bad = Tensor::new(vec![1, 2], TensorData::F32(vec![0.0; 2])).unwrap();
    assert!(matches!(
        pool.submit(e, vec![bad]),
        Err(PoolError::Invalid(_))
    ));
    pool.shutdown();
}
