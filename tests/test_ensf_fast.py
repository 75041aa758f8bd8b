"""The fast EnSF paths agree with the reference integrator, and are the ones used.

* On CPU the componentwise path (``implementation="fused"``, what ``"auto"`` picks for
  index and arctan operators) draws the same noise as the reference and must agree
  with it to rounding.
* The fused CUDA kernel draws its own (Philox) noise, so it is compared in
  distribution: the moments of many analyses against those of the reference. It runs
  on CUDA where there is one, and on CPU under Triton's interpreter where Triton is
  installed (a subprocess, small sizes); otherwise those tests are skipped.
* The latent accessor analyses a dask chunk of T times in one model call.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import xensf.filters.ensf_componentwise as ensf_componentwise
import xensf.filters.ensf_kernel as ensf_kernel
from xensf.errors import OptionError
from xensf.filters.ensf import ensf_analysis
from xensf.filters.operators import LinearObservationOperator

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def problem():
    """Three analysis times, 24 members, 30 components, every other one observed."""
    gen = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.5, 3.0, 30)
    prior = torch.randn(3, 24, 30, generator=gen) * scale + 2.0
    idx = torch.arange(0, 30, 2)
    y = torch.randn(3, 15, generator=gen) + 2.0
    y[1, 4] = float("nan")  # a missing observation
    return prior, y, idx


def _arctan(idx, weight=0.7):
    return LinearObservationOperator(
        idx[:, None], torch.full((idx.numel(), 1), weight), torch.atan
    )


@pytest.mark.parametrize("prior_score", ["mixture", "paired"])
@pytest.mark.parametrize("kind", ["index", "arctan"])
def test_fused_cpu_equals_reference(problem, prior_score, kind):
    prior, y, idx = problem
    op = idx if kind == "index" else _arctan(idx)
    kw = dict(generator=[1, 2, 3], prior_score=prior_score, scale=prior.std(-2), steps=40)
    ref = ensf_analysis(prior, y, op, 0.3, implementation="reference", **kw)
    fast = ensf_analysis(prior, y, op, 0.3, implementation="fused", **kw)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("table", [30, 3 * 30 * 3 + 1])
def test_linear_steps_in_blocks_equal_one_block(problem, monkeypatch, table):
    """The per-step coefficient tables, computed one step or a few steps at a time
    (how a large state is integrated), give the same analysis as one table."""
    prior, y, idx = problem
    kw = dict(generator=[1, 2, 3], scale=prior.std(-2), steps=20)
    whole = ensf_analysis(prior, y, idx, 0.3, implementation="fused", **kw)
    monkeypatch.setattr(ensf_componentwise, "_TABLE_ELEMENTS", table)  # 1 step, then 3 per block
    blocks = ensf_analysis(prior, y, idx, 0.3, implementation="fused", **kw)
    torch.testing.assert_close(blocks, whole, rtol=1e-6, atol=1e-6)
    ref = ensf_analysis(prior, y, idx, 0.3, implementation="reference", **kw)
    torch.testing.assert_close(blocks, ref, rtol=1e-4, atol=1e-4)


def test_fused_cpu_equals_reference_float64_and_weights(problem):
    prior, y, idx = problem
    op = LinearObservationOperator(idx[:, None], torch.linspace(0.5, 2.0, 15)[:, None])
    kw = dict(generator=7, steps=30)
    ref = ensf_analysis(prior.double(), y, op, 0.2, implementation="reference", **kw)
    fast = ensf_analysis(prior.double(), y, op, 0.2, **kw)
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-9)


def test_auto_takes_the_fused_path_where_it_applies(problem, monkeypatch):
    prior, y, idx = problem
    calls = []
    original = ensf_componentwise.integrate_componentwise

    def spy(*args, **kwargs):
        calls.append(kwargs["kernel"])
        return original(*args, **kwargs)

    monkeypatch.setattr("xensf.filters.ensf.integrate_componentwise", spy)
    ensf_analysis(prior, y, idx, 0.3, steps=5, generator=1)
    ensf_analysis(prior, torch.atan(y), _arctan(idx, 1.0), 0.3, steps=5, generator=1)
    assert calls == [False, False]  # the torch path on CPU
    # not componentwise: two observations of one component, a callable, the exact likelihood
    twice = torch.tensor([0, 0, 2])
    ensf_analysis(prior, y[:, :3], twice, 0.3, steps=5, generator=1)
    ensf_analysis(prior, torch.atan(y), lambda x: torch.atan(x[..., idx]), 0.3, steps=5)
    ensf_analysis(prior, y, idx, 0.3, steps=5, likelihood="gaussian", generator=1)
    assert len(calls) == 2
    with pytest.raises(OptionError, match="componentwise"):
        ensf_analysis(prior, y[:, :3], twice, 0.3, steps=5, implementation="fused")
    with pytest.raises(OptionError, match="implementation"):
        ensf_analysis(prior, y, idx, 0.3, steps=5, implementation="fast")


def test_kernel_failure_falls_back_to_the_torch_step(problem, monkeypatch):
    prior, y, idx = problem

    def broken(*args, **kwargs):
        raise ensf_kernel.KernelUnavailable("no GPU compiler here")

    monkeypatch.setattr(ensf_kernel, "run_fused_steps", broken)
    kw = dict(generator=[1, 2, 3], steps=20)
    ref = ensf_analysis(prior, y, idx, 0.3, implementation="reference", **kw)
    noise = _noise_for(prior, [1, 2, 3])
    out = ensf_componentwise.integrate_componentwise(
        *_componentwise_args(prior, y, idx, 0.3), 20, True, noise, kernel=True
    )
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def _noise_for(prior, seeds):
    from xensf.filters.noise import NoiseSource

    return NoiseSource(seeds, prior.shape[:-2], prior.shape[-2:], prior.device, prior.dtype)


def _componentwise_args(prior, y, idx, std):
    from xensf.filters.operators import as_observation_operator
    from xensf.filters.schedule import DiffusionSchedule, linear_damping

    precision = torch.where(torch.isnan(y), 0.0, torch.full_like(y, std**-2))
    y_filled = torch.nan_to_num(y, nan=0.0)
    op = as_observation_operator(idx).to(dtype=prior.dtype)
    obs = ensf_componentwise.componentwise_observations(op, y_filled, precision, prior.shape[-1])
    return prior, obs, torch.ones(()), DiffusionSchedule(), linear_damping


# -- the fused kernel, compared in distribution -------------------------------------

_MOMENTS = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from xensf.filters.ensf import ensf_analysis
    from xensf.filters.operators import LinearObservationOperator
    device, reps, n, d, steps = sys.argv[1], int(sys.argv[2]), 16, int(sys.argv[3]), 10
    gen = torch.Generator().manual_seed(0)
    prior = torch.randn(n, d, generator=gen) * torch.linspace(0.5, 2.0, d) + 1.0
    idx = torch.arange(0, d, 2)
    y = torch.randn(idx.numel(), generator=gen) + 1.0
    ops = {"index": idx, "arctan": LinearObservationOperator(
        idx[:, None], torch.full((idx.numel(), 1), 0.7), torch.atan)}
    out = {}
    for name, op in ops.items():
        for impl in ("auto", "reference"):
            post = ensf_analysis(
                prior.expand(reps, n, d).to(device), y.to(device), op, 0.3, steps=steps,
                scale=prior.std(-2).to(device), generator=list(range(reps)),
                implementation=impl,
            ).cpu()
            out[name + "/" + impl] = [post.mean(1).tolist(), post.std(1).tolist()]
    from xensf.filters import ensf_kernel
    out["kernel_failed"] = ensf_kernel._failed
    print(json.dumps(out))
    """
)


def _compare_moments(result, reps):
    assert result["kernel_failed"] is None, result["kernel_failed"]
    for name in ("index", "arctan"):
        (m_a, s_a), (m_r, s_r) = (
            map(np.asarray, result[f"{name}/{impl}"]) for impl in ("auto", "reference")
        )
        # ensemble means of independent analyses: z-scores of the mean difference
        se = np.sqrt((m_a.var(0, ddof=1) + m_r.var(0, ddof=1)) / reps)
        z = (m_a.mean(0) - m_r.mean(0)) / se
        assert np.sqrt(np.mean(z**2)) < 2.0, (name, z)
        assert np.abs(z).max() < 5.0, (name, z)
        # ensemble spreads: within a few per cent on average, no component far off
        ratio = s_a.mean(0) / s_r.mean(0)
        assert abs(ratio.mean() - 1.0) < 0.05, (name, ratio)
        assert np.all(np.abs(ratio - 1.0) < 0.25), (name, ratio)


def _run_moments(device, reps, d, env):
    proc = subprocess.run(
        [sys.executable, "-c", _MOMENTS, device, str(reps), str(d)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # about 30 s: the interpreter runs every program of every step in numpy
@pytest.mark.skipif(ensf_kernel.triton is None, reason="needs Triton (its CPU interpreter)")
def test_kernel_under_the_interpreter_matches_reference_in_distribution():
    env = {**os.environ, "TRITON_INTERPRET": "1", "XENSF_ENSF_KERNEL": "1"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    reps = 24
    _compare_moments(_run_moments("cpu", reps, 16, env), reps)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kernel_on_cuda_matches_reference_in_distribution():
    if not ensf_kernel.kernel_applies(torch.device("cuda"), torch.float32, 16):
        pytest.skip("the fused kernel does not apply here (no Triton)")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    reps = 400
    _compare_moments(_run_moments("cuda", reps, 200, env), reps)


# -- the latent accessor: one device call per dask chunk ----------------------------


@pytest.mark.filterwarnings("ignore::xensf.ModelQualityWarning")  # untrained on purpose
def test_latent_accessor_analyses_a_chunk_in_one_model_call_and_a_time_per_filter_call(
    monkeypatch,
):
    xr = pytest.importorskip("xarray")
    from xensf.bridge.dims import find_dims
    from xensf.bridge.layout import StateLayout
    from xensf.bridge.signature import data_signature
    from xensf.latent import LatentModel
    from xensf.latent import model as latent_model
    from xensf.latent.model import build_networks

    grid, n_times, n_members = 8, 6, 5
    config = {
        "architecture": dict(
            channels=1, grid_shape=[grid, grid], latent_channels=1, patch=4, downsample=0,
            width=4, blocks=1, periodic_lon=False,
        ),
        "obs_layout": {"kind": "gridded"},
        "variables": ["h"],
        "units": ["m"],
    }  # fmt: skip
    torch.manual_seed(0)
    vae, obs_encoder = build_networks(config)
    assert vae.latent_dim == 4  # 1 x 2 x 2
    model = LatentModel(vae, obs_encoder, torch.zeros(1), torch.ones(1), torch.ones(4), config)
    rng = np.random.default_rng(0)
    coords = {
        "time": np.datetime64("2020-01-01", "ns") + np.arange(n_times) * np.timedelta64(1, "h"),
        "y": ("y", np.arange(grid) * 10.0, {"units": "km"}),
        "x": ("x", np.arange(grid) * 10.0, {"units": "km"}),
    }
    prior = xr.Dataset(
        {
            "h": (
                ("time", "member", "y", "x"),
                rng.standard_normal((n_times, n_members, grid, grid)).astype(np.float32),
                {"units": "m"},
            )
        },
        coords,
    )
    obs = prior.h.isel(member=0).where(prior.y % 20 == 0).to_dataset()
    layout = StateLayout(("h",), ((),), ((),), (grid, grid))
    model.config["data"] = data_signature(prior, find_dims(prior), layout)

    calls = {"analyse": [], "ensf": []}
    analyse, filt = LatentModel.analyse, latent_model.ensf_analysis

    def count_analyse(self, prior, *args, **kwargs):
        calls["analyse"].append(np.shape(prior)[0])
        return analyse(self, prior, *args, **kwargs)

    @functools.wraps(filt)  # the spy keeps the filter's signature, which analyse reads
    def count_ensf(prior, *args, **kwargs):
        calls["ensf"].append(tuple(prior.shape))
        return filt(prior, *args, **kwargs)

    monkeypatch.setattr(LatentModel, "analyse", count_analyse)
    monkeypatch.setattr("xensf.latent.model.ensf_analysis", count_ensf)
    lazy = prior.chunk(time=3).ensf.assimilate(obs, model=model, seed=0)
    assert calls["analyse"] == []  # nothing computed while the graph is built
    lazy.compute(scheduler="synchronous")
    assert sorted(calls["analyse"]) == [3, 3]  # one call per chunk of 3 times
    # and in it one filter call per time: batched, the products may sum in another
    # order (tests/test_latent_accessor.py), and no time may depend on the chunking
    assert calls["ensf"] == [(1, n_members, 4)] * n_times
