#!/usr/bin/env bash
# The CUDA check, for a machine with an NVIDIA GPU (about 5-8 minutes):
#   the CUDA tests (gradients and training on CUDA against the CPU), the default digits
#   training on CUDA, and the quick benchmark suite on CUDA.
# Run from the repository root: `bash benchmarks/device_check.sh [OUTDIR]` (without an
# installed package: the source tree is put on PYTHONPATH). Writes tests.log,
# digits_cuda_metrics.json, bench_results.json and bench_results.md to OUTDIR.
set -u
OUT=${1:-${OUT:-device-check}}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi -L
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
echo "== CUDA tests"
timeout 200 $PY -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_network.py \
    -k cuda 2>&1 | tee "$OUT/tests.log" | tail -15
echo "== default digits training on CUDA"
rm -rf /tmp/pdenets_digits_cuda
timeout 120 $PY -m pdenets train --set device=cuda --out /tmp/pdenets_digits_cuda --no-plots \
    --quiet 2>&1 | tail -3
cp /tmp/pdenets_digits_cuda/metrics.json "$OUT/digits_cuda_metrics.json" 2>/dev/null
echo "== quick benchmark suite on CUDA"
rm -rf /tmp/pdenets_bench
timeout 270 $PY -m benchmarks --quick --device cuda --out /tmp/pdenets_bench 2>&1 | tail -40
cp /tmp/pdenets_bench/results.json "$OUT/bench_results.json" 2>/dev/null
cp /tmp/pdenets_bench/results.md "$OUT/bench_results.md" 2>/dev/null
echo "== done"
echo "== HJB grid solver: CUDA vs CPU speed-up (issue 16)"
timeout 240 $PY benchmarks/bench_hjb.py --gpu-speedup 2>&1 | tee "$OUT/hjb_gpu_speedup.txt" | tail -6
echo "== issue 13: compiled / graph-captured digits training on CUDA, forward efficiency"
# (a) the hot-path tests on CUDA (no sync under set_sync_debug_mode, graph step == eager step)
timeout 240 $PY -m pytest -q -p no:cacheprovider -rs tests/test_hotpath.py -k "cuda or compiled" \
    2>&1 | tee "$OUT/hotpath_tests.log" | tail -6
# (b) default digits training: eager, compiled, CUDA graphs, both (time incl. compile; accuracy)
for mode in "compile=off cuda_graphs=false" "compile=on cuda_graphs=false" \
            "compile=off cuda_graphs=true" "compile=on cuda_graphs=true"; do
    set -- $mode
    d=/tmp/pdenets_digits_${1#compile=}_${2#cuda_graphs=}
    rm -rf "$d"
    start=$(date +%s.%N)
    timeout 300 $PY -m pdenets train --set device=cuda --set "train.$1" --set "train.$2" \
        --out "$d" --no-plots --quiet 2>&1 | tail -2
    echo "$mode: $($PY -c "import time; print(round(time.time() - $start, 1))") s wall (process, incl. compile)"
    $PY -c "import json,sys; m=json.load(open('$d/metrics.json')); print('$mode', \
'test_accuracy', m['test_accuracy'], 'train_seconds', round(m['train_seconds'], 2))" \
        2>/dev/null | tee -a "$OUT/digits_cuda_modes.txt"
done
# (c) forward efficiency at B=4096, N=1024, S=64, float32 (Euler = the ResNet; RK4)
timeout 180 $PY - <<'PYEOF' 2>&1 | tee "$OUT/forward_efficiency_cuda.txt"
import torch
from benchmarks.bench_forward import forward_ratio
for solver in ("euler", "rk4"):
    r = forward_ratio(batch=4096, width=1024, steps=64, dtype=torch.float32, solver=solver,
                      repeats=5, device="cuda")
    print(solver, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
PYEOF
echo "== issue 13 done"
