#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU, in under 5 minutes: the epoch benchmark
# (lecture path vs project path, float32 and every autocast mode, each against its own
# GEMM peak) and the `gpu` tests. Record the numbers in docs/benchmarks.md with the card.
#   benchmarks/gpu_check.sh DATA_DIR [OUT]      (from the repo root, after `make install`)
set -euo pipefail
data=${1:?usage: benchmarks/gpu_check.sh DATA_DIR [OUT]}
out=${2:-dae-work/gpu-check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
timeout 240 .venv/bin/dae bench --data-dir "$data" --epochs 3 --device cuda --json "$out/bench.json" \
    | tee "$out/bench.txt"
timeout 150 .venv/bin/python -m pytest -q -m gpu -rs | tee "$out/pytest-gpu.txt"
