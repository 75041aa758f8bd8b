"""The performance benchmark scripts run end to end at their small sizes.

They are what docs/performance.md's tables come from and what a lent GPU runs
(``benchmarks/run_gpu_perf.sh`` calls ``bench_perf.py``); running them at ``--quick``
sizes here keeps them from rotting between measurements. Timings are not asserted (they
belong to the scripts' tables, not to tests); that every table is printed with finite
numbers is.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: int = 300, command=(sys.executable,), **env: str) -> str:
    """Run ``command args`` from the repository root with one thread (``env`` added to
    the environment; this interpreter's folder first on PATH, for shell scripts)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": path, **env}
    proc = subprocess.run(
        [*command, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def _rows(text: str, title: str) -> list[list[str]]:
    """The data rows of the markdown table printed after ``title``."""
    section = text.split(title, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        if line.startswith("| ") and not line.startswith("| case") and "---" not in line:
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def _number(cell: str) -> float:
    return float(re.sub(r"[^0-9.e+-]", "", cell))


def test_bench_perf_quick_prints_every_table():
    out = _run(
        "benchmarks/bench_perf.py", "--quick", "--threads", "1", "ensf", "latent",
        "latent-model", "models",
    )  # fmt: skip
    for title, n_rows in [
        ("## EnSF, full space", 2),  # auto and reference at one size
        ("## EnSF at latent size", 4),  # T = 1 and 8, auto and reference
        ("## Latent-EnSF with the demo model", 1),  # T = 1
        ("## Models", 2),  # shallow water and Lorenz-96
    ]:
        rows = _rows(out, title)
        assert len(rows) == n_rows, (title, rows)
        for row in rows:
            ours = _number(row[1])
            assert math.isfinite(ours) and ours > 0, row
    assert "componentwise torch step" in out  # what "auto" ran on CPU is reported


def test_bench_throughput_quick_times_all_three_schedulers(tmp_path):
    out = _run("benchmarks/bench_throughput.py", "--quick", "--dir", str(tmp_path))
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    names = [r.split("|")[1].strip() for r in rows[1:]]
    assert len(names) == 3 and names[0].startswith("threaded scheduler"), names
    assert names[1].startswith("LocalCluster, 1 worker") and names[2].startswith("LocalCluster, 2")
    for row in rows[1:]:
        seconds = float(row.split("|")[2])
        assert math.isfinite(seconds) and seconds > 0
    assert not any(tmp_path.iterdir())  # the stores it wrote are removed


# every step: little inflation needed; every 4 steps: much (best fixed 1.07-1.1), which
# the field, started at no inflation, takes about 100 cycles to reach
ADAPTIVE_RUNS = {
    "every-step": ["--quick"],
    "every-4": ["--config", "3", "--seeds", "1", "--cycles", "400", "--spin-up", "150"],
}


@pytest.mark.parametrize("case", ADAPTIVE_RUNS)
def test_bench_adaptive_inflation_quick_compares_with_the_fixed_factors(case):
    """Exit status 0: the adaptive RMSE within 10 % of the best fixed factor's, on
    Lorenz-96."""
    out = _run("benchmarks/bench_adaptive_inflation.py", *ADAPTIVE_RUNS[case])
    rows = _rows(out, "adaptive: ")
    assert len(rows) == 2 and rows[0][0] == "configuration", rows  # header and one config
    best, fixed_rmse, adaptive_rmse, ratio, factor = map(_number, rows[1][1:6])
    assert best >= 1 and factor >= 1
    assert all(math.isfinite(v) and v > 0 for v in (fixed_rmse, adaptive_rmse, ratio))
    assert "worst ratio" in out


def test_bench_weight_interpolation_quick_times_every_stride():
    out = _run("benchmarks/bench_weight_interpolation.py", "--quick")
    rows = _rows(out, "best of 1")
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"], rows
    for row in rows[1:]:
        seconds, difference = _number(row[2]), _number(row[4])
        assert math.isfinite(seconds) and seconds > 0 and math.isfinite(difference)
    assert _number(rows[1][4]) == 0.0  # stride 1 is the full analysis


def test_bench_soak_traces_what_late_legs_keep():
    """A short soak: one row per leg, and with ``--trace`` the list of what was
    allocated from that leg on and is still alive (the search that found the interned
    string table's doubling), with no verdict on numbers that hold tracemalloc's own."""
    out = _run("benchmarks/bench_soak.py", "--cycles", "12", "--legs", "3", "--trace", "3")
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+\d", line)]
    assert [int(r[0]) for r in rows] == [4, 8, 12], out
    assert all(math.isfinite(float(r[2])) and float(r[2]) > 0 for r in rows)  # RSS
    kept = re.search(r"allocated from leg 3 on and alive at the end: ([\d.]+) MB", out)
    assert kept and float(kept.group(1)) > 0, out
    assert "allocated at" in out and "verdict: none while tracing" in out


def test_bench_soak_in_one_leg_prints_its_rss_samples():
    # (--trace: no verdict, so no exit status 1 for a run too short to be flat)
    args = ["--cycles", "8", "--legs", "1", "--samples", "3", "--every", "0.2", "--trace", "1"]
    out = _run("benchmarks/bench_soak.py", *args)
    series = out.split("cycles (at the mean pace)", 1)[1].strip().splitlines()
    series = [r.split() for r in series if re.match(r"\s*\d+\s+\d", r)]
    assert 1 <= len(series) <= 3, out
    assert all(float(r[2]) > 0 for r in series) and float(series[-1][1]) <= 8
    assert "verdict: none while tracing" in out


def test_bench_resume_prints_a_row_per_store_size():
    out = _run("benchmarks/bench_resume.py", "--cycles", "3", "6", "--repeat", "1")
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+\d", line)]
    assert [int(r[0]) for r in rows] == [3, 6], out
    assert all(math.isfinite(float(v)) and float(v) > 0 for r in rows for v in r[1:])


def test_bench_training_throughput_prints_both_grids():
    # the GPU script's training step at its CPU size (benchmarks/run_gpu_perf.sh)
    out = _run(
        "benchmarks/bench_training_throughput.py", "--device", "cpu", "--threads", "1",
        "--states", "64", "--epochs", "1", "--precision", "float32",
    )  # fmt: skip
    rows = [
        line.split() for line in out.splitlines() if line.strip().endswith(tuple("0123456789"))
    ]
    grids = [(r[0], r[2]) for r in rows]
    assert grids == [("40", "40"), ("150", "150")], out
    for row in rows:
        rate = float(row[-1])
        assert math.isfinite(rate) and rate > 0, row


def test_bench_obs_layout_shows_the_encoder_lost_off_its_layout():
    out = _run("benchmarks/bench_obs_layout.py", "--runs", "1")
    errors = {
        line[:44].strip(): float(line.split()[-1])
        for line in out.splitlines()
        if line[:44].strip().startswith(("its layout", "every"))
    }
    assert len(errors) == 5
    layout = errors["its layout (every 4th point)"]
    assert layout < 0.15
    assert errors["its layout shifted by two cells"] > 5 * layout


def test_gpu_full_demo_script_runs_its_methods_apart_and_merges_them(tmp_path):
    """``benchmarks/run_gpu_full_demo.sh`` at its CPU size (the reduced setup and the
    shipped model, two methods): each method runs as its own process, and the merged
    closing summary has both halves of each, and names no missing run."""
    out = _run(
        "benchmarks/run_gpu_full_demo.sh", command=("bash",), timeout=600, QUICK="1",
        METHODS="letkf latent-letkf", NOISES="10", OUT=str(tmp_path / "out"),
        WORK=str(tmp_path / "work"),
    )  # fmt: skip
    assert "runs without a summary (timed out or failed): none" in out, out
    summary = (tmp_path / "out" / "full-demo.txt").read_text()
    for method in ("free run", "letkf", "latent-letkf"):
        # the first / second half row (the spread / skill table names it again)
        (row,) = [ln for ln in summary.splitlines() if ln.startswith(f"{method}  ") and "/" in ln]
        first, second = (float(v) for v in row[len(method) :].split("/"))
        assert math.isfinite(first) and math.isfinite(second), row
    assert "latent model floor" in summary
    merged = json.loads((tmp_path / "out" / "full-demo.json").read_text())
    assert set(merged["relative_rmse_second_half"]) == {"free run", "letkf", "latent-letkf"}
