#!/usr/bin/env bash
# Side-by-side latency of the digits model: fabnode's engine (tract) vs onnxruntime, same
# inputs, same thread count, same core; then end-to-end `POST /v1/jobs` with the ledger on.
#
#   python3 -m pip install -r bench/requirements.txt
#   bench/engine_vs_ort.sh            # RUNS=5000 bench/engine_vs_ort.sh for more samples
#
# Results land in target/bench/*.json and a Markdown table on stdout (docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-2000}"
PY="${PYTHON:-python3}"
CPU="${BENCH_CPU:-1}"
pin() { if command -v taskset >/dev/null; then taskset -c "$CPU" "$@"; else "$@"; fi; }

cargo build --release -p fabnode
out=target/bench
mkdir -p "$out"
bin=target/release/fabnode

# Interleave two rounds of each so drift in machine load hits both alike.
for round in 1 2; do
  pin "$bin" bench engine --runs "$RUNS" --out "$out/engine-tract-$round.json" >/dev/null
  pin "$PY" bench/ort_latency.py --runs "$RUNS" --out "$out/engine-ort-$round.json" >/dev/null
done
"$bin" bench submit --runs 1000 --out "$out/submit.json" >/dev/null

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), pinned to CPU $CPU for the engine runs"
"$PY" bench/compare.py "$out"/engine-tract-1.json "$out"/engine-ort-1.json "$out"/engine-tract-2.json "$out"/engine-ort-2.json "$out"/submit.json
