#!/usr/bin/env bash
# The short CUDA check that fits one lease of a lent GPU (about 6-8 minutes): CUDA tests of every
# layer (gradients, hot path, HJB grids, PDEBlock), digits training on CUDA eager and with CUDA
# graphs, the forward efficiency at B=4096, N=1024, S=64 (float32), the HJB grid speed-up.
# `bash benchmarks/device_quick.sh OUTDIR`; the long version is benchmarks/device_check.sh.
set -u
OUT=${1:-${OUT:-device-check}}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi -L
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
echo "== CUDA tests"
timeout 170 $PY -m pytest -q -p no:cacheprovider -rs -k "cuda and not compiled" \
    tests/test_cuda.py tests/test_network.py tests/test_hjb_high_order.py tests/test_block.py \
    tests/test_hotpath.py 2>&1 | tee "$OUT/tests.log" | tail -12
echo "== digits on CUDA: eager, and CUDA graphs (compile off)"
for g in false true; do
    d=/tmp/pdenets_digits_graphs_$g; rm -rf "$d"; start=$(date +%s.%N)
    timeout 100 $PY -m pdenets train --set device=cuda --set train.compile=off \
        --set train.cuda_graphs=$g --out "$d" --no-plots --quiet 2>&1 | tail -1
    echo "cuda_graphs=$g: $($PY -c "import time; print(round(time.time() - $start, 1))") s wall"
    cp "$d/metrics.json" "$OUT/digits_cuda_graphs_$g.json" 2>/dev/null
done
echo "== forward efficiency, B=4096 N=1024 S=64 float32"
timeout 90 $PY - <<'PYEOF' 2>&1 | tee "$OUT/forward_efficiency_cuda.txt"
import torch
from benchmarks.bench_forward import forward_ratio
for solver in ("euler", "rk4"):
    r = forward_ratio(batch=4096, width=1024, steps=64, dtype=torch.float32, solver=solver,
                      repeats=5, device="cuda")
    print(solver, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
PYEOF
echo "== HJB grid solver: CUDA vs CPU"
timeout 100 $PY benchmarks/bench_hjb.py --gpu-speedup 2>&1 | tee "$OUT/hjb_gpu_speedup.txt" | tail -6
echo "== done"
