#!/usr/bin/env bash
# The paper-size shallow-water twin (`xensf demo --full`) on one lent GPU, fitted to a
# short lease: the latent model is trained once (TRAIN_MINUTES, default 4), then every
# method at every noise level runs as its own `xensf demo --full --model ...` process,
# all at once on the one GPU (their "seconds" therefore overlap: not a speed
# measurement), each under RUN_SECONDS (default 200). The CUDA statistical tests of
# the filters run beside the training (correctness only, no timings).
#
# Writes to $OUT (or ./gpu-out) seven files: device.txt, tests.log, train.log, runs.log
# (every run's output, one after another), full-demo.txt (bench_swe_twin.py's closing
# summary of the runs: both halves, spread / skill, the model's floor), full-demo.json
# (the runs' summaries merged) and swe-full.tar (the trained bundle). The zarr stores
# stay in $WORK (default /tmp/xensf-full).
#
#   bash benchmarks/run_gpu_full_demo.sh                     # on the GPU machine
#   QUICK=1 bash benchmarks/run_gpu_full_demo.sh             # the reduced setup on CPU
#                                                            # (how the script is tested)
set -uo pipefail
out=${OUT:-gpu-out}
work=${WORK:-/tmp/xensf-full}
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
minutes=${TRAIN_MINUTES:-4}
run_seconds=${RUN_SECONDS:-200}
noises=(${NOISES:-0 10 20})
methods=(${METHODS:-latent-ensf latent-ensf-letkf ensf letkf latent-letkf})
if [[ -n "${QUICK:-}" ]]; then
    device=cpu
    kind=(--model xensf/data/swe-demo.xensf)   # the reduced setup's shipped model
else
    device=cuda
    kind=(--full --model "$work/swe-full.xensf")
fi
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" \
    | tee "$out/device.txt"

start=$SECONDS
if [[ -z "${QUICK:-}" ]]; then
    (timeout 150 python3 -m pytest -p no:cacheprovider -q -rs \
        tests/test_ensf.py tests/test_ensf_fast.py tests/test_letkf.py > "$out/tests.log" 2>&1
     echo "tests: rc $? after $((SECONDS - start)) s" >> "$out/tests.log") &
    tests=$!
    python3 - "$work/swe-full.xensf" "$minutes" <<'EOF' 2>&1 | tee "$out/train.log"
import sys, time
from pathlib import Path
from xensf.experiments.demo_swe import FULL_SETUP, full_model
t0 = time.perf_counter()
full_model(FULL_SETUP, Path(sys.argv[1]), device="cuda", train_budget=float(sys.argv[2]) * 60)
print(f"training (data included): {time.perf_counter() - t0:.1f} s")
EOF
    wait "$tests"
    tar -cf "$out/swe-full.tar" -C "$work" swe-full.xensf
fi
echo "model ready after $((SECONDS - start)) s" | tee -a "$out/device.txt"

start=$SECONDS
pids=()
for p in "${noises[@]}"; do
    for m in "${methods[@]}"; do
        timeout "$run_seconds" python3 -m xensf demo "${kind[@]}" --methods "$m" --noise "$p" \
            --device "$device" --output "$work/$m-$p" --no-plot > "$work/$m-$p.log" 2>&1 &
        pids+=($!)
    done
done
for pid in "${pids[@]}"; do wait "$pid"; done
echo "runs: $((SECONDS - start)) s (all at once)" | tee -a "$out/device.txt"
for p in "${noises[@]}"; do
    for m in "${methods[@]}"; do
        echo "===== $m, noise $p %"
        # tqdm's carriage-return updates: keep the last state of each bar
        sed 's/.*\r//' "$work/$m-$p.log"
    done
done > "$out/runs.log"
# one folder as bench_swe_twin.py writes it (links to each run's stores, the summaries
# merged), then its closing summary: both halves, spread / skill, the model's floor
python3 - "$work" "${kind[-1]}" <<'PY' 2>&1 | tee "$out/full-demo.txt"
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from bench_swe_twin import summarise
work, model = Path(sys.argv[1]), sys.argv[2]
merged = work / "merged" / "hard"
merged.mkdir(parents=True, exist_ok=True)
summary = None
for f in sorted(work.glob("*/summary.json")):
    s = json.loads(f.read_text())
    for store in f.parent.glob("*.zarr"):
        link = merged / store.name
        if not link.is_symlink():
            link.symlink_to(store.resolve())
    if summary is None:
        summary = {**s, "noise_percent": [], "relative_rmse_second_half": {}, "seconds": {}}
    summary["noise_percent"] = sorted(set(summary["noise_percent"]) | set(s["noise_percent"]))
    for method, row in s["relative_rmse_second_half"].items():
        summary["relative_rmse_second_half"].setdefault(method, {}).update(row)
    summary["seconds"].update(s["seconds"])
missing = sorted(d.name for d in work.iterdir() if d.is_dir() and d.name != "merged"
                 and d.suffix != ".xensf" and not (d / "summary.json").exists())
print("runs without a summary (timed out or failed):", ", ".join(missing) or "none")
if summary is not None:
    summary["missing"] = missing
    (merged / "summary.json").write_text(json.dumps(summary, indent=2))
    complete = {m: r for m, r in summary["relative_rmse_second_half"].items()
                if len(r) == len(summary["noise_percent"])}
    summary["relative_rmse_second_half"] = complete
    summarise(work / "merged", {"hard": summary}, model)
PY
cp "$work/merged/hard/summary.json" "$out/full-demo.json" 2>/dev/null
