#!/usr/bin/env bash
# Orchestration overhead and the in-process scaling of `dae compare` (docs/benchmarks.md).
# Usage: benchmarks/overhead.sh DATA_DIR   (run from the repo root, with .venv installed)
set -euo pipefail
data=${1:?data dir holding MNIST/raw}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cd "$scratch"
export PREFECT_HOME="$scratch/prefect"
dae=$OLDPWD/.venv/bin/dae
small=(--set pretrain.epochs=3 --set classifier.epochs=2)

echo "== dae run, fresh PREFECT_HOME and MLflow store (first run on a machine)"
/usr/bin/time -f "wall %e s, peak RSS %M KiB" "$dae" run --data-dir "$data" --no-download "${small[@]}" \
  --summary-json first.json > /dev/null
python3 -c "import json; t=json.load(open('first.json'))['timing']; print('training', round(t['pretrain_s']+t['classifier_s'],1), 's')"
echo "== dae run again (warm PREFECT_HOME and store)"
/usr/bin/time -f "wall %e s, peak RSS %M KiB" "$dae" run --data-dir "$data" --no-download "${small[@]}" \
  --summary-json second.json > /dev/null
python3 -c "import json; t=json.load(open('second.json'))['timing']; print('training', round(t['pretrain_s']+t['classifier_s'],1), 's')"
for k in 1 2; do
  echo "== dae compare, 2 cells x 2 seeds, --parallel $k"
  /usr/bin/time -f "wall %e s" "$dae" compare --data-dir "$data" --no-download "${small[@]}" --seeds 2 \
    --cells adam-noise sgd-noise --parallel "$k" > /dev/null
done
