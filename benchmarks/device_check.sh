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
