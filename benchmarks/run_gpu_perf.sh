#!/usr/bin/env bash
# The performance issue's GPU tables in one run, on one lent GPU (about 7 minutes on an
# H100/H200; every step has its own time limit so that the whole stays under 10).
#
#   1. the filters' statistical tests on CUDA, with the fast paths on (the fused EnSF
#      kernel's moment test among them), and the CPU-interpreter kernel test skipped;
#   2. benchmarks/bench_perf.py --device cuda: EnSF at d = 10⁶ (500 steps) against the
#      plain eager loop, its compiled step and the bandwidth floor; latent-size EnSF
#      batched over 1 / 64 / 1024 times; localised LETKF at large d; shallow water
#      150² with N = 20 / 200 and the Lorenz-96 step at 10⁶ × 20, eager and compiled;
#   3. benchmarks/bench_training_throughput.py --device cuda: latent-model training
#      states per second at 40² and 150², float32 and bfloat16 (docs/performance.md §6);
#   4. where dask.distributed is installed: benchmarks/bench_spatial_letkf.py --quick
#      --device cuda, LETKF on spatial blocks with each block on the GPU (through
#      dask-cuda's LocalCUDACluster where that is installed too).
#
# Logs go to $OUT (or ./gpu-out). Needs PyTorch with CUDA (Triton comes with it), numpy,
# scipy and pytest; xarray/dask for the accessor test. Usage:
#   bash benchmarks/run_gpu_perf.sh            # on the GPU machine
#   QUICK=1 bash benchmarks/run_gpu_perf.sh    # small sizes (how it is tested on CPU)
# Each step's time limit in seconds can be set (TESTS_S=150 FILTERS_S=210 MODELS_S=100
# TRAINING_S=40 SPATIAL_S=90, the defaults); TESTS_S=0 skips the tests (when
# benchmarks/run_gpu_full_demo.sh runs them in the same lease).
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
device=cuda
quick=()
training=()
if [[ -n "${QUICK:-}" ]]; then
    quick=(--quick)
    training=(--states 64 --epochs 1 --precision float32)
fi
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device: running the CPU versions at --quick sizes"
    device=cpu
    quick=(--quick)
    training=(--states 64 --epochs 1 --precision float32)
fi
python3 - <<'EOF' 2>&1 | tee "$out/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton: not installed (the fused EnSF kernel is off)")
EOF
start=$SECONDS
if [[ "${TESTS_S:-150}" != 0 ]]; then
    timeout "${TESTS_S:-150}" python3 -m pytest -p no:cacheprovider -q -rs -x \
        tests/test_ensf.py tests/test_ensf_fast.py tests/test_letkf.py \
        2>&1 | tee "$out/tests.log"
    echo "tests: $((SECONDS - start)) s" | tee -a "$out/tests.log"
fi
start=$SECONDS
timeout "${FILTERS_S:-210}" python3 benchmarks/bench_perf.py --device "$device" "${quick[@]}" ensf latent letkf \
    2>&1 | tee "$out/perf_filters.txt"
echo "filters: $((SECONDS - start)) s" | tee -a "$out/perf_filters.txt"
start=$SECONDS
timeout "${MODELS_S:-100}" python3 benchmarks/bench_perf.py --device "$device" "${quick[@]}" models \
    2>&1 | tee "$out/perf_models.txt"
echo "models: $((SECONDS - start)) s" | tee -a "$out/perf_models.txt"
start=$SECONDS
timeout "${TRAINING_S:-40}" python3 benchmarks/bench_training_throughput.py --device "$device" "${training[@]}" \
    2>&1 | tee "$out/perf_training.txt"
echo "training: $((SECONDS - start)) s" | tee -a "$out/perf_training.txt"
if python3 -c "import dask.distributed, zarr" 2>/dev/null; then
    start=$SECONDS
    timeout "${SPATIAL_S:-90}" python3 benchmarks/bench_spatial_letkf.py --quick --device "$device" \
        2>&1 | tee "$out/perf_spatial.txt"
    echo "spatial blocks: $((SECONDS - start)) s" | tee -a "$out/perf_spatial.txt"
else
    echo "dask.distributed or zarr not installed: no spatial-block table" | tee "$out/perf_spatial.txt"
fi
