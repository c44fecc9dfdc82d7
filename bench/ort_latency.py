#!/usr/bin/env python3
"""Per-inference latency of an ONNX model under onnxruntime (CPU, 1 thread), one input row per
run, timed like `fabnode bench engine`: the same rows in the same order, the same warm-up."""
import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
DIGITS = os.path.join(HERE, "..", "fixtures", "digits")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=os.path.join(DIGITS, "digits.onnx"))
    p.add_argument("--input", default=os.path.join(DIGITS, "test_images.npy"))
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--out")
    a = p.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    batch = np.load(a.input)
    rows = [batch[i : i + 1] for i in range(len(batch))]

    for i in range(a.warmup):
        sess.run(None, {name: rows[i % len(rows)]})
    samples = []
    for i in range(a.runs):
        x = rows[i % len(rows)]
        t0 = time.perf_counter_ns()
        sess.run(None, {name: x})
        samples.append(time.perf_counter_ns() - t0)
    s = sorted(v / 1e3 for v in samples)
    pick = lambda q: s[round((len(s) - 1) * q)]
    result = {
        "bench": "engine",
        "engine": f"onnxruntime-{ort.__version__} (Python binding)",
        "threads": 1,
        "model": a.model,
        "inputs": len(rows),
        "latency": {
            "runs": len(s),
            "median_us": pick(0.5),
            "mean_us": sum(s) / len(s),
            "p90_us": pick(0.9),
            "p99_us": pick(0.99),
            "min_us": s[0],
            "max_us": s[-1],
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
