"""One fused CUDA kernel per EnSF step (Triton), with the noise drawn inside it.

The componentwise EnSF step (see :mod:`xensf.filters.ensf_componentwise`) reads the particles
``z`` and the standardised prior ``z0`` and writes ``z``: ``3 N d`` floats, plus a few
per-component vectors. A plain implementation makes a dozen passes over memory per
step; this kernel makes one:

* every program loads a tile ``(N, BLOCK_D)`` of ``z`` and ``z0``, computes the mixture
  mean ``μ = softmax(logits) z0`` for it (the ``N × N`` logits are tiny and each program
  recomputes the softmax), the likelihood terms, the exact Ornstein–Uhlenbeck update
  and the noise (Philox, keyed by the batch entry's seed and counted by step and
  element, so nothing is stored), and writes the new ``z``;
* in the same pass it accumulates ``z_new · z0ᵀ``, the logits of the *next* step, and
  writes its partial sums (``N × N`` per program); one small deterministic reduction
  (``torch.sum`` over the programs, a few MB) turns them into the next step's logits.
  No atomics, so a seed gives the same result bit for bit on a given GPU.

So a step costs one read of ``z`` and ``z0`` and one write of ``z``: the memory floor
``(3 N d + d) × 4`` bytes up to the per-component vectors. The kernel also runs under
Triton's CPU interpreter (``TRITON_INTERPRET=1``), which is how it is tested without
a GPU (see ``tests/test_ensf_fast.py``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch

from ..errors import warn_user
from .schedule import DiffusionSchedule

__all__ = ["KernelUnavailable", "kernel_applies", "run_fused_steps"]

#: Largest ensemble the kernel takes (members padded to a power of two ≥ 16).
MAX_MEMBERS = 64

try:  # Triton ships with CUDA builds of PyTorch; CPU builds usually lack it
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

_failed: str | None = None  # set when the kernel failed to compile or run once


class KernelUnavailable(RuntimeError):
    """The fused kernel cannot run here; the caller falls back to the torch step."""


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def kernel_applies(device: torch.device, dtype: torch.dtype, n_members: int) -> bool:
    """Whether the fused kernel runs for this device, dtype and ensemble size.

    CUDA, float32, at most :data:`MAX_MEMBERS` members and Triton importable. The
    environment variable ``XENSF_ENSF_KERNEL=0`` turns it off; ``=1`` together with
    ``TRITON_INTERPRET=1`` runs it on CPU tensors through Triton's interpreter (slow,
    for tests).
    """
    if triton is None or _failed is not None or dtype != torch.float32:
        return False
    if n_members > MAX_MEMBERS:
        return False
    switch = os.environ.get("XENSF_ENSF_KERNEL", "")
    if switch == "0":
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and switch == "1" and _interpreting()


if triton is not None:

    @triton.jit
    def _expm1(x):
        # Kahan's exp(x) − 1 that keeps relative accuracy for small |x| (Triton core
        # has no expm1, and libdevice does not run under the interpreter).
        u = tl.exp(x)
        um1 = u - 1.0
        safe_log = tl.where(u == 1.0, 1.0, tl.log(u))
        return tl.where(u == 1.0, x, tl.where(um1 == -1.0, -1.0, um1 * x / safe_log))

    @triton.jit
    def _atan(x):
        # Range reduction to |t| ≤ tan(π/12), then the odd Taylor series to t¹¹
        # (truncation error below 3e-9, under float32 rounding).
        a = tl.abs(x)
        big = a > 1.0
        t = tl.where(big, 1.0 / tl.where(big, a, 1.0), a)
        shift = t > 0.2679491924311227
        inv_sqrt3 = 0.5773502691896258
        t = tl.where(shift, (t - inv_sqrt3) / (1.0 + t * inv_sqrt3), t)
        t2 = t * t
        p = -1.0 / 11.0
        p = p * t2 + 1.0 / 9.0
        p = p * t2 - 1.0 / 7.0
        p = p * t2 + 1.0 / 5.0
        p = p * t2 - 1.0 / 3.0
        r = t + t * t2 * p
        r = tl.where(shift, r + 0.5235987755982988, r)
        r = tl.where(big, 1.5707963267948966 - r, r)
        return tl.where(x < 0.0, -r, r)

    # Runtime integers are not specialised (Triton would make a 1 a compile-time
    # constant and recompile), so one compilation serves all steps and sizes.
    @triton.jit(do_not_specialize=["noise_base", "n_members", "d", "n_blocks"])
    def _ensf_step_kernel(
        z_ptr,  # (B, N, d) particles, updated in place
        z0_ptr,  # (B, N, d) standardised prior
        v1_ptr,  # (B, d): linear: curvature c; atan: w·x̄
        v2_ptr,  # (B, d): linear: b = s w p (y − w x̄); atan: s·w
        v3_ptr,  # (B, d): atan: y (unused when linear)
        v4_ptr,  # (B, d): atan: precision p (unused when linear)
        logits_ptr,  # (B, NP, NP): z·z0ᵀ of the current particles
        partial_ptr,  # (B, n_prog, NP, NP): this step's per-program z_new·z0ᵀ
        z0sq_ptr,  # (B, NP) ‖z0_j‖² / 2
        seeds_ptr,  # (B,) int64
        noise_base,  # step · N · d: the Philox counter of this step's first element
        n_members,
        d,
        n_blocks,
        c_logit,  # α/β²
        c_sq,  # α²/β²
        lam_prior,
        g2h,  # g² h
        c_mu,  # g² α/β²
        g2,
        dt,
        NP: tl.constexpr,
        BLOCK_D: tl.constexpr,
        MIXTURE: tl.constexpr,
        LINEAR: tl.constexpr,
        NEXT_LOGITS: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid = tl.program_id(0)
        n_prog = tl.num_programs(0)
        b = tl.program_id(1).to(tl.int64)
        rows = tl.arange(0, NP)
        row_ok = rows < n_members
        square = rows[:, None] * NP + rows[None, :]
        if MIXTURE:
            dots = tl.load(logits_ptr + b * NP * NP + square)
            sq = tl.load(z0sq_ptr + b * NP + rows)
            logits = dots * c_logit - sq[None, :] * c_sq
            logits = tl.where(row_ok[None, :], logits, float("-inf"))
            top = tl.max(logits, axis=1)
            e = tl.exp(logits - top[:, None])
            weights = e / tl.sum(e, axis=1)[:, None]
        seed = tl.load(seeds_ptr + b)
        acc = tl.zeros((NP, NP), dtype=tl.float32)
        base = b * n_members * d
        for blk in range(pid, n_blocks, n_prog):
            cols = blk * BLOCK_D + tl.arange(0, BLOCK_D)
            col_ok = cols < d
            ok = row_ok[:, None] & col_ok[None, :]
            elem = rows[:, None].to(tl.int64) * d + cols[None, :]
            z = tl.load(z_ptr + base + elem, mask=ok, other=0.0)
            z0 = tl.load(z0_ptr + base + elem, mask=ok, other=0.0)
            if MIXTURE:
                mu = tl.dot(weights, z0, input_precision=PRECISION)
            else:
                mu = z0
            v1 = tl.load(v1_ptr + b * d + cols, mask=col_ok, other=0.0)[None, :]
            v2 = tl.load(v2_ptr + b * d + cols, mask=col_ok, other=0.0)[None, :]
            if LINEAR:
                lam = lam_prior + g2h * v1  # (1, BLOCK_D): shared by the members
                drive = c_mu * mu + g2h * v2
            else:
                y = tl.load(v3_ptr + b * d + cols, mask=col_ok, other=0.0)[None, :]
                p = tl.load(v4_ptr + b * d + cols, mask=col_ok, other=0.0)[None, :]
                u = v1 + v2 * z  # w x
                deriv = 1.0 / (1.0 + u * u)
                curv = v2 * v2 * p * deriv * deriv
                grad = v2 * p * deriv * (y - _atan(u))
                lam = lam_prior + g2h * curv
                drive = c_mu * mu + g2h * (grad + curv * z)
            e1 = _expm1(-lam * dt)
            phi = -e1 / lam
            noise_std = tl.sqrt(0.5 * g2 * phi * (e1 + 2.0))
            xi = tl.randn(seed, noise_base + elem)
            z_new = z + e1 * z + phi * drive + noise_std * xi
            tl.store(z_ptr + base + elem, z_new, mask=ok)
            if NEXT_LOGITS:
                z_new = tl.where(ok, z_new, 0.0)
                acc += tl.dot(z_new, tl.trans(z0), input_precision=PRECISION)
        if NEXT_LOGITS:
            tl.store(partial_ptr + (b * n_prog + pid) * NP * NP + square, acc)


def _dot_precision(device: torch.device) -> str:
    """``tf32x3`` (three TF32 products, float32 accuracy) on tensor-core GPUs, else ieee."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return "tf32x3"
    return "ieee"


def _programs_per_entry(device: torch.device, n_entries: int, n_blocks: int) -> int:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        target = 8 * sms
    else:
        target = 4
    return max(1, min(n_blocks, -(-target // n_entries)))


def run_fused_steps(
    z: torch.Tensor,
    z0: torch.Tensor,
    mean: torch.Tensor,
    scale: torch.Tensor,
    obs,
    schedule: DiffusionSchedule,
    h_of: Callable[[float], float],
    steps: int,
    mixture: bool,
    seeds: torch.Tensor,
) -> torch.Tensor:
    """Integrate the reverse SDE from ``z`` at τ = 1 to τ = 0 with one kernel per step.

    ``z``, ``z0``: ``(..., N, d)``; ``mean``, ``scale`` and the fields of ``obs``
    (:class:`~xensf.filters.ensf_componentwise.ComponentwiseObservations`) broadcast to
    ``(..., 1, d)``; ``seeds``: one int64 per batch entry. Returns the particles at
    τ = 0 in standardised units. Raises :class:`KernelUnavailable` if the kernel
    cannot be compiled here (the caller then runs the torch step).
    """
    global _failed
    batch = z.shape[:-2]
    n_members, d = z.shape[-2:]
    n_entries = math.prod(batch)
    device = z.device

    def per_component(t: torch.Tensor) -> torch.Tensor:
        return t.expand(*batch, 1, d).reshape(n_entries, d).contiguous()

    scale_w = scale * obs.weight
    if obs.transform is None:
        vecs = (
            per_component(scale_w * scale_w * obs.precision),
            per_component(scale_w * obs.precision * (obs.y - obs.weight * mean)),
        )
        vecs = (*vecs, vecs[0], vecs[0])
    else:
        vecs = tuple(per_component(v) for v in (obs.weight * mean, scale_w, obs.y, obs.precision))
    observed = bool((obs.precision > 0).any())

    # A copy, so that the caller's z is intact if the kernel fails and it falls back.
    zb = z.reshape(n_entries, n_members, d).clone(memory_format=torch.contiguous_format)
    z0b = z0.reshape(n_entries, n_members, d).contiguous()
    np_ = max(16, 1 << (n_members - 1).bit_length())
    block_d = 64 if np_ <= 32 else 32
    n_blocks = -(-d // block_d)
    grid = (_programs_per_entry(device, n_entries, n_blocks), n_entries)
    logits = torch.zeros(n_entries, np_, np_, dtype=torch.float32, device=device)
    partials = torch.zeros(n_entries, grid[0], np_, np_, dtype=torch.float32, device=device)
    z0sq = torch.zeros(n_entries, np_, dtype=torch.float32, device=device)
    if mixture:
        logits[:, :n_members, :n_members] = torch.matmul(zb, z0b.mT)
        z0sq[:, :n_members] = 0.5 * (z0b * z0b).sum(-1)
    precision = _dot_precision(device)
    dt = 1.0 / steps
    seeds = seeds.to(device=device, dtype=torch.int64).contiguous()
    try:
        for k in range(steps):
            tau = 1.0 - k * dt
            alpha, beta2, g2 = schedule.alpha(tau), schedule.beta2(tau), schedule.diffusion2(tau)
            h = float(h_of(tau)) if observed else 0.0
            _ensf_step_kernel[grid](
                zb, z0b, *vecs, logits, partials, z0sq, seeds,
                k * n_members * d, n_members, d, n_blocks,
                alpha / beta2, alpha * alpha / beta2,
                schedule.drift(tau) + g2 / beta2, g2 * h, g2 * alpha / beta2, g2, dt,
                NP=np_, BLOCK_D=block_d, MIXTURE=mixture, LINEAR=obs.transform is None,
                NEXT_LOGITS=mixture, PRECISION=precision,
            )  # fmt: skip
            if mixture and k + 1 < steps:
                torch.sum(partials, dim=1, out=logits)  # fixed order: deterministic
    except Exception as err:  # compile errors differ between Triton versions
        _failed = f"{type(err).__name__}: {err}"
        warn_user(
            f"the fused EnSF kernel failed ({_failed}); using the torch step from now on",
            RuntimeWarning,
        )
        raise KernelUnavailable(_failed) from err
    return zb.reshape(z.shape)
