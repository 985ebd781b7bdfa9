#!/usr/bin/env bash
# Every benchmark of docs/benchmarks.md in one go (about 20 minutes on 2 CPU cores; needs
# PostgreSQL at 127.0.0.1:5432 for the servers part, and hey for the model server's load).
# Writes one file per benchmark into OUT.
#   benchmarks/run_all.sh DATA_DIR [OUT]      (from the repo root, after `make install`)
# On a GPU machine: DEVICE=cuda benchmarks/run_all.sh DATA_DIR gpu-bench   (epochs only)
set -euo pipefail
data=${1:?usage: benchmarks/run_all.sh DATA_DIR [OUT]}
out=${2:-dae-work/bench}
device=${DEVICE:-cpu}
py=.venv/bin/python
mkdir -p "$out"
{ date -u +%FT%TZ; uname -srm; lscpu 2>/dev/null | grep -E '^(Model name|CPU\(s\)|Flags)' | cut -c1-200
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || true
  $py -c 'import torch, prefect, mlflow, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "prefect", prefect.__version__, "mlflow", mlflow.__version__)'
} | tee "$out/machine.txt"

run() {  # run NAME COMMAND...: echo, tee into OUT/NAME.txt
  local name=$1; shift
  echo "== $name: $*"
  "$@" 2>&1 | grep -v -e '^USDT:' -e 'gpuGetDeviceCount' | tee "$out/$name.txt"
}

run epochs .venv/bin/dae bench --data-dir "$data" --epochs 3 --device "$device" --json "$out/epochs.json"
[ "$device" = cuda ] && exit 0
run profile $py benchmarks/profile_epoch.py --data-dir "$data"
run variants $py benchmarks/variants.py --data-dir "$data"
run teardown $py benchmarks/teardown.py --data-dir "$data"
run overhead $py benchmarks/overhead.py --data-dir "$data"
run waits $py benchmarks/waits.py --data-dir "$data" --json "$out/waits.json"
if command -v hey >/dev/null; then
  run serving $py benchmarks/serving.py --data-dir "$data" --json "$out/serving.json"
else
  echo "== serving: skipped (needs hey, the load generator: apt-get install hey)"
fi
