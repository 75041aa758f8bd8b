#!/usr/bin/env bash
# The device checks in one go (for a machine with a CUDA GPU and PyTorch, without
# necessarily the rest of xensf's dependencies): the filters' statistical tests on
# CPU and CUDA, then the EnSF and Lorenz-96 benchmarks on CUDA. Writes logs to $OUT
# (or ./gpu-out). Usage: bash benchmarks/run_gpu_checks.sh
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$out/device.txt"
python3 -m pytest -p no:cacheprovider -q -rs \
    tests/test_ensf.py tests/test_letkf.py tests/test_lorenz96.py tests/test_bundle.py tests/test_latent.py \
    2>&1 | tee "$out/tests.log"
python3 benchmarks/bench_ensf.py --device cuda 2>&1 | tee "$out/bench_ensf_cuda.txt"
python3 benchmarks/bench_lorenz96.py --quick --device cuda 2>&1 | tee "$out/bench_l96_cuda.txt"
