#!/usr/bin/env bash
# Everything a lent GPU should be asked, in one run of under 8 minutes (issue 14); every figure
# goes under $OUT. Usage, on the GPU machine from the repository root:
#   OUT=gpu-check DATA_DIR=../shared/data bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-gpu-check}
DATA=${DATA_DIR:-../shared/data}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
step() { echo "== $1"; shift; timeout "$@"; echo "exit $?"; }
{
  nvidia-smi
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} > "$OUT/versions.txt" 2>&1
step "training tests on cuda" 120 $PY -m pytest -q -m cuda tests/test_cuda.py > "$OUT/tests_cuda.txt" 2>&1
step "throughput (a/c)" 120 $PY benchmarks/throughput.py --data-dir "$DATA" --device cuda --repeats 2 > "$OUT/throughput.txt" 2>&1
step "packing 1/2/4/8" 150 $PY benchmarks/packing.py --data-dir "$DATA" --epochs 2 --examples 20000 > "$OUT/packing.txt" 2>&1
step "stacked seeds" 90 $PY benchmarks/stacked_seeds.py --data-dir "$DATA" --device cuda --stacks 8 32 --repeats 1 > "$OUT/stacked.txt" 2>&1
step "torch.compile" 90 $PY benchmarks/compile.py --data-dir "$DATA" --device cuda --modes reduce-overhead --repeats 2 > "$OUT/compile.txt" 2>&1
step "precision: fp32 -> bf16" 90 $PY benchmarks/datasets.py --data-dir "$DATA" --device cuda --precision fp32 bf16 \
    > "$OUT/precision_bf16.txt" 2>&1
step "precision: fp32 -> tf32" 90 $PY benchmarks/datasets.py --data-dir "$DATA" --device cuda --precision fp32 tf32 \
    > "$OUT/precision_tf32.txt" 2>&1
step "smoke study, 4 trials per GPU" 120 $PY studies/ablation.py --smoke --space search_spaces/table1.yaml \
    --data-dir "$DATA" --gpus-per-trial 0.25 --storage "$OUT/results" --tracking-uri "sqlite:///$PWD/$OUT/mlflow.db" \
    > "$OUT/smoke_study.txt" 2>&1
tail -n 3 "$OUT"/*.txt
