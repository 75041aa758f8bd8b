"""The Ensemble Score Filter (EnSF) analysis on tensors ``(..., N, d)``.

EnSF (Bao, Zhang & Zhang 2023) samples the posterior by integrating a reverse-time
SDE in pseudo-time from τ = 1 (pure noise) to τ = 0, driven by the score of the
prior (estimated from the forecast ensemble) plus a damped likelihood score. See
:func:`ensf_analysis` for the method, its discretisation and its options.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..checks import is_integer
from ..errors import EnsembleError, ObservationMismatchError, OptionError
from .device import small_problem_turn
from .ensf_componentwise import componentwise_observations, integrate_componentwise
from .ensf_reference import integrate
from .noise import NoiseSource
from .operators import LinearObservationOperator, as_observation_operator
from .schedule import DiffusionSchedule, resolve_damping
from .tensors import (
    as_float_tensor,
    check_observed_values,
    compute_dtype,
    restore_array_type,
)

__all__ = ["IMPLEMENTATIONS", "LIKELIHOODS", "PRIOR_SCORES", "ensf_analysis"]

PRIOR_SCORES = ("mixture", "paired")
LIKELIHOODS = ("damped", "gaussian")
IMPLEMENTATIONS = ("auto", "reference", "fused")


def ensf_analysis(
    prior: Any,
    y: Any,
    obs_op: Any,
    obs_std: Any,
    *,
    steps: int = 100,
    eps_alpha: float = 0.05,
    eps_beta: float = 0.025,
    prior_score: str = "mixture",
    likelihood: str = "damped",
    scale: Any = None,
    damping: str | Callable[[float], float] | None = None,
    generator: torch.Generator | int | Sequence[int] | None = None,
    implementation: str = "auto",
) -> Any:
    """Ensemble Score Filter analysis of a batch of prior ensembles.

    The prior ensemble is standardised, ``z = (x − x̄) / scale`` with ``x̄`` the
    ensemble mean (per batch entry) and ``scale`` given by the caller. In ``z`` the
    reverse-time SDE of the diffusion ``z_τ | z_0 ~ N(α_τ z_0, β_τ² I)`` is integrated
    from τ = 1 (particle ``j`` drawn from ``N(α₁ z0_j, β₁² I)``, the forward process's
    marginal there, stratified over members) to τ = 0 with ``steps`` equal steps, using the score

    ``s(z, τ) = s_prior(z, τ) + h(τ) · scale ⊙ J_H(x)ᵀ Γ⁻¹ (y − H(x))``,
    ``x = x̄ + scale ⊙ z``,

    where ``Γ = diag(obs_std²)``, and the result is mapped back to physical units.
    The schedule (see :mod:`xensf.filters.schedule`) is ``α_τ = 1 − τ(1 − ε_α)``,
    ``β_τ² = ε_β + τ(1 − ε_β)``, drift ``f = d log α/dτ``, ``g² = dβ²/dτ − 2 f β²``.

    **Prior score.** ``"mixture"`` (the default) is the exact score of the noised
    empirical prior, ``Σ_j w_j (α z0_j − z)/β²`` with ``w = softmax_j(−‖z − α z0_j‖² /
    2β²)`` (a log-sum-exp softmax, so it cannot overflow): it uses the whole ensemble for
    every particle and, for many members, converges to the score of the prior density
    smoothed by a Gaussian kernel of variance ``ε_β`` (in standardised units).
    ``"paired"`` ties particle ``j`` to member ``j``, ``(α z0_j − z)/β²``: cheaper (O(N d)
    per step instead of O(N² d)) and it keeps member identities, but each particle then
    sees a prior of variance ``ε_β`` around its member, so it is only pulled towards the
    observations when their error is comparable to ``√ε_β · scale``; it is not a Bayesian
    update with the ensemble's covariance. The mixture is the default because it is the
    score the method is derived from; in high dimension with few members its weights
    become one-hot (each particle follows its nearest member), which is the paired
    behaviour with the nearest member chosen adaptively.

    **Stability.** The explicit Euler–Maruyama step of the reference implementation
    diverges once ``dτ g² h / σ²`` (σ in standardised units) exceeds about one, i.e.
    for accurate observations. Here each step linearises the reverse drift around the
    current particles, with ``μ = α Σ_j w_j z0_j`` (weights at the current ``z``), the
    likelihood gradient ``ℓ`` and ``c ⪰ diag(scale) Jᵀ Γ⁻¹ J diag(scale)`` a diagonal
    majorant of its curvature (exact for selection operators):

    ``−f z + g² s(z') ≈ a − λ z'``, ``a = g² (μ/β² + h (ℓ + c z))``,
    ``λ = f + g²/β² + g² h c``,

    and integrates that Ornstein–Uhlenbeck step exactly over ``dτ``:
    ``z ← z e^{−λ dτ} + a (1 − e^{−λ dτ})/λ + √(g² (1 − e^{−2λ dτ}) / 2λ) ξ``. ``λ > 0``
    always (``g²/β² ≥ −2f``), so the step is unconditionally stable, and, unlike a
    backward-Euler step, it keeps the right spread when a step is much longer than the
    relaxation time ``1/λ``: observation errors far below the ensemble spread (1e-3 of
    it is tested) give finite, correctly centred results without any rescaling of σ.
    ``ε_β > 0`` keeps ``1/β²`` bounded.

    **Likelihood.** ``likelihood="damped"`` (the default) is the published EnSF:
    the likelihood gradient at the current particle, weighted by ``h(τ)``. It works with
    any operator (arctan observations of Lorenz-96, the standard test, and learned
    latent operators rely on it), but it is a heuristic for the score of the noised
    likelihood, so even for a linear-Gaussian problem with infinitely many members it
    is not the Kalman posterior: with observation variance equal to the prior variance
    it gives mean 0.523 / variance 0.448 instead of 0.5 / 0.5, and for observation
    errors well below the prior spread a variance of about σ²/2 at observed
    components. This is a property of the method, not of the discretisation.

    ``likelihood="gaussian"`` is the exact score ``∇ log p(y | z_τ)`` of the likelihood
    of the *noised* state under a Gaussian approximation of the prior ensemble, with no
    damping (see :class:`~xensf.filters.gaussian_likelihood.GaussianLikelihood` for the derivation and the N×N / m×m algebra).
    With the mixture prior score, for a linear operator and a Gaussian prior ensemble,
    it samples the Kalman posterior of the smoothed prior, covariance ``P + ε_β
    diag(scale²)`` (the sample covariance, ``N − 1``), within Monte-Carlo error for
    observation errors comparable to the spread (tested). It needs a linear operator
    (an index tensor or a :class:`LinearObservationOperator` without transform).
    Known limits: for observation errors much smaller than the spread (σ ≲ 0.3 of it)
    the finite mixture prior is lumpy at the posterior's scale and 100 steps leave a
    discretisation bias near τ = 0 (σ = 1e-3 of the spread: stable, mean within ~1 %
    of the spread of ``y``, but a spread of ~6 % of the prior's instead of ~0.1 %);
    with ``prior_score="paired"`` it is not a Bayesian update (each particle's prior is
    its member's kernel, the likelihood the ensemble's). Choose ``"gaussian"`` for
    linear operators when calibrated spreads matter, ``"damped"`` for nonlinear ones.

    Parameters
    ----------
    prior : torch.Tensor or numpy.ndarray
        Forecast ensemble ``(..., N, d)``: leading batch dims (analysis times, ...),
        ``N ≥ 2`` members, ``d`` state components. float32 (default for other real
        dtypes) or float64; half precision is refused. All batch entries are analysed
        in one vectorised call on ``prior``'s device.
    y : torch.Tensor or numpy.ndarray
        Observations ``(..., m)``, broadcastable against the batch dims. NaN marks a
        missing observation (zero precision), which is how observation sets of
        different sizes are padded to a common ``m``.
    obs_op : tensor, LinearObservationOperator or callable
        Observation operator, anything :func:`~xensf.filters.operators.
        as_observation_operator` accepts: an integer index tensor ``(..., m)`` of
        observed components, a :class:`~xensf.filters.operators.
        LinearObservationOperator` (optionally with an elementwise ``transform``), or a
        callable ``(..., N, d) -> (..., N, m)`` differentiated by autograd (one that
        mixes components costs a power iteration a step to bound its curvature: see
        :class:`~xensf.filters.operators.CallableObservationOperator`). It is applied
        in physical units.
    obs_std : float or array
        Observation error standard deviation, in the units of ``y``, broadcastable to
        ``(..., m)``. Must be positive; ``inf`` marks a missing observation.
    steps : int, default 100
        Number of pseudo-time steps.
    eps_alpha : float, default 0.05
        ``α`` at τ = 1, in (0, 1).
    eps_beta : float, default 0.025
        ``β²`` at τ = 0, in (0, 1): the variance (in standardised units) of the kernel
        by which the reverse process smooths each prior member. 0.025 is the reference
        EnSF value: small enough to add only 2.5 % of the scale's variance, large enough
        to keep the step well conditioned and the mixture score smooth.
    prior_score : {"mixture", "paired"}, default "mixture"
        How the prior score is estimated from the ensemble (see above).
    scale : float or array, optional
        Standardisation scale, broadcastable to ``(..., d)``, positive and finite: the
        typical size of each component (ensemble spread or climatological standard
        deviation). The reverse SDE injects noise of unit size, so each variable must be
        measured in units of its own scale; this argument is how the caller does that.
        ``None`` means 1 (the state is already standardised).
    likelihood : {"damped", "gaussian"}, default "damped"
        How the likelihood enters the score (see above). ``"gaussian"`` needs a
        linear operator.
    damping : {"linear", "none"}, callable or None, default None
        Likelihood weight ``h(τ)`` of ``likelihood="damped"``: ``"linear"`` (what
        ``None`` means) is ``1 − τ`` (the reference EnSF), ``"none"`` is 1, or any
        function of the Python float τ. Must be ``None`` with ``"gaussian"``.
    generator : torch.Generator, int, sequence of int, NoiseSource or None
        Source of all noise (the initial draw and the SDE noise). An int is
        a seed; a :class:`~xensf.filters.noise.NoiseSource` (e.g. the tiled noise of
        spatial blocks) is used as it is. A sequence of ints (length = number of batch entries, in C order)
        gives every batch entry its own stream: entry ``b`` then gets the same noise,
        and so the same result up to rounding, whether it is analysed alone (with
        ``[seeds[b]]`` or ``seeds[b]``) or together with others (batched, torch's CPU
        matrix products may sum in another order for some shapes: for the same bits,
        analyse one entry per call, as the accessor does). ``None`` uses torch's
        global generator.
        Seeds on CPU and CUDA give different streams.
    implementation : {"auto", "reference", "fused"}, default "auto"
        How the steps are computed; all three integrate the same discretisation.
        ``"reference"`` is the general integrator (any operator, both likelihoods).
        ``"fused"`` (see :mod:`xensf.filters.ensf_componentwise`) needs the damped likelihood
        and a componentwise operator (each observation reads one state component,
        none read twice, no transform or ``arctan``, e.g. an index tensor): on CPU it
        runs the step in a few elementwise passes and draws the same noise as the
        reference (same result to rounding); on CUDA with Triton each step is one
        kernel that draws its noise from counter-based (Philox) streams keyed by the
        seeds, so results agree with the reference in distribution, not bit for bit,
        and a ``torch.Generator`` only provides the key. ``"auto"`` takes
        ``"fused"`` where it applies and ``"reference"`` elsewhere.

    An analysis of fewer than :data:`~xensf.filters.device.SMALL_PROBLEM` values (all
    of ``prior``'s) runs alone among the process's threads
    (:func:`~xensf.filters.device.small_problem_turn`): two such loops of small
    operations at once took twice as long as one after the other.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        Posterior ensemble of shape ``(..., N, d)`` (the batch dims broadcast over
        ``prior``, ``y``, ``obs_std``, ``scale`` and the operator), same array type,
        dtype and device as ``prior``.

    Raises
    ------
    EnsembleError
        ``prior`` has fewer than two members, is not ``(..., N, d)``, or holds NaN/inf.
    ObservationMismatchError
        ``y`` or ``obs_std`` of a shape that does not fit the operator's observations
        (as :func:`~xensf.filters.letkf.letkf_analysis` raises).
    OptionError
        Bad option values, half precision, other shapes that do not fit (the message
        names the argument), an index operator out of range, ``likelihood="gaussian"``
        with a nonlinear operator or with a damping.

    Examples
    --------
    Observe the first two of four components of a 500-member ensemble, for three
    analysis times at once, one seed per time:

    >>> import torch
    >>> from xensf.filters.ensf import ensf_analysis
    >>> prior = torch.randn(3, 500, 4)
    >>> y = torch.tensor([[0.5, -0.2], [1.0, 0.0], [0.3, float("nan")]])
    >>> post = ensf_analysis(prior, y, torch.tensor([0, 1]), 0.1, generator=[1, 2, 3])
    >>> post.shape
    torch.Size([3, 500, 4])
    """
    dtype = compute_dtype(prior, "prior")
    prior_t = as_float_tensor(prior, "prior", dtype=dtype)
    device = prior_t.device
    schedule = DiffusionSchedule(eps_alpha=eps_alpha, eps_beta=eps_beta)
    if likelihood not in LIKELIHOODS:
        raise OptionError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if likelihood == "gaussian" and damping is not None:
        raise OptionError(
            'damping applies to likelihood="damped" only; the "gaussian" likelihood score '
            "is exact at every pseudo-time and takes no damping: leave damping=None"
        )
    h_of = resolve_damping("linear" if damping is None else damping)
    if not is_integer(steps) or steps < 1:
        raise OptionError(f"steps must be a positive integer, got {steps!r}")
    if prior_score not in PRIOR_SCORES:
        raise OptionError(f"prior_score must be one of {PRIOR_SCORES}, got {prior_score!r}")

    if prior_t.ndim < 2:
        raise EnsembleError(
            f"prior must have shape (..., N, d) (members, then state), got {tuple(prior_t.shape)}"
        )
    n_members, d = prior_t.shape[-2:]
    if n_members < 2:
        raise EnsembleError(f"prior has {n_members} member(s) (dim -2); EnSF needs at least 2")
    if not bool(torch.isfinite(prior_t).all()):
        raise EnsembleError("prior contains NaN or inf values; fill or drop them first")

    op = _prepare_operator(obs_op, prior_t)
    if likelihood == "gaussian" and not (
        isinstance(op, LinearObservationOperator) and op.transform is None
    ):
        raise OptionError(
            'likelihood="gaussian" needs a linear observation operator (an index tensor or '
            "a LinearObservationOperator without transform), got "
            f'{_describe_operator(op)}; use the default likelihood="damped" for '
            "nonlinear operators"
        )
    y_t = as_float_tensor(y, "y", dtype=dtype, device=device)
    check_observed_values(y_t)
    std_t = as_float_tensor(obs_std, "obs_std", dtype=dtype, device=device)
    m = _operator_output_size(op, prior_t)
    if y_t.ndim < 1 or y_t.shape[-1] != m:
        raise ObservationMismatchError(
            f"y has shape {tuple(y_t.shape)} but the observation operator gives m={m} "
            "observations: y's last dim must be m"
        )
    if bool((std_t <= 0).any()) or bool(torch.isnan(std_t).any()):
        raise OptionError("obs_std must be positive (inf marks a missing observation)")
    try:
        obs_shape = torch.broadcast_shapes(y_t.shape, std_t.shape)
    except RuntimeError:
        raise ObservationMismatchError(
            f"obs_std of shape {tuple(std_t.shape)} does not broadcast against y of shape "
            f"{tuple(y_t.shape)}"
        ) from None
    if obs_shape[-1] != m:
        raise ObservationMismatchError(
            f"obs_std's last dim must be 1 or m={m}, got shape {tuple(std_t.shape)}"
        )

    if scale is None:
        scale_t = torch.ones((), dtype=dtype, device=device)
    else:
        scale_t = as_float_tensor(scale, "scale", dtype=dtype, device=device)
        if scale_t.ndim >= 1 and scale_t.shape[-1] not in (1, d):
            raise OptionError(f"scale's last dim must be 1 or d={d}, got {tuple(scale_t.shape)}")
        if not bool(((scale_t > 0) & torch.isfinite(scale_t)).all()):
            raise OptionError("scale must be positive and finite")

    batch = _batch_shape(prior_t, obs_shape, scale_t, op)
    prior_t = prior_t.expand(*batch, n_members, d)
    if scale_t.ndim:
        scale_t = scale_t.unsqueeze(-2)  # (..., 1, d): the same scale for every member

    missing = torch.isnan(y_t) | torch.isinf(std_t)
    precision = torch.where(missing, torch.zeros((), dtype=dtype, device=device), std_t**-2)
    y_filled = torch.where(torch.isnan(y_t), torch.zeros((), dtype=dtype, device=device), y_t)
    precision, y_filled = torch.broadcast_tensors(precision, y_filled)

    if implementation not in IMPLEMENTATIONS:
        raise OptionError(
            f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}"
        )
    cw = None
    if implementation != "reference" and likelihood == "damped":
        cw = componentwise_observations(op, y_filled, precision, d)
    if implementation == "fused" and cw is None:
        raise OptionError(
            'implementation="fused" needs likelihood="damped" and a componentwise '
            "observation operator (an index tensor, or a LinearObservationOperator with "
            "one component per observation, none observed twice, and no transform or "
            f'arctan); got {_describe_operator(op)}; use implementation="auto"'
        )
    if isinstance(generator, NoiseSource):
        noise = generator
        if noise.batch != tuple(batch) or noise.member_shape != (n_members, d):
            raise OptionError(
                f"the noise source draws {noise.batch + noise.member_shape}, the analysis "
                f"needs {(*batch, n_members, d)}"
            )
    else:
        noise = NoiseSource(generator, batch, (n_members, d), device, dtype)
    if cw is not None:
        from .ensf_kernel import kernel_applies

        kernel = noise.keyed and kernel_applies(device, dtype, n_members)
        with torch.no_grad(), small_problem_turn(prior_t.numel()):
            post = integrate_componentwise(
                prior_t,
                cw,
                scale_t,
                schedule,
                h_of,
                steps,
                prior_score == "mixture",
                noise,
                kernel=kernel,
                seeds=noise.keys() if kernel else None,
            )
        return restore_array_type(post, prior)
    with torch.no_grad(), small_problem_turn(prior_t.numel()):
        post = integrate(
            prior_t,
            y_filled,
            precision,
            op,
            scale_t,
            schedule,
            h_of,
            steps,
            prior_score == "mixture",
            likelihood == "gaussian",
            noise,
        )
    return restore_array_type(post, prior)


def _describe_operator(op) -> str:
    if isinstance(op, LinearObservationOperator):
        return f"a LinearObservationOperator with transform {op.transform!r}"
    return f"the callable {getattr(op, 'fn', op)!r}"


# -- helpers -------------------------------------------------------------------------


def _prepare_operator(obs_op, prior: torch.Tensor):
    if isinstance(obs_op, np.ndarray) and obs_op.dtype.kind == "f":
        raise OptionError(
            f"an index obs_op must hold integers, got a float array ({obs_op.dtype})"
        )
    op = as_observation_operator(obs_op, d=prior.shape[-1])
    return op.to(device=prior.device, dtype=prior.dtype)


def _operator_output_size(op, prior: torch.Tensor) -> int:
    if isinstance(op, LinearObservationOperator):
        return op.n_obs
    probe = prior[..., :1, :]
    try:
        with torch.no_grad():
            out = op(probe)
    except Exception as err:
        raise OptionError(
            f"obs_op failed on a state of shape {tuple(probe.shape)} (..., N, d): {err}"
        ) from err
    if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[-2] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise OptionError(
            f"obs_op must map (..., N, d) to (..., N, m); on {tuple(probe.shape)} it gave {shape}"
        )
    return out.shape[-1]


def _batch_shape(prior, obs_shape, scale, op) -> torch.Size:
    shapes = {
        "prior": prior.shape[:-2],
        "y/obs_std": obs_shape[:-1],
        "scale": scale.shape[:-1],
    }
    if isinstance(op, LinearObservationOperator):
        shapes["obs_op"] = op.indices.shape[:-2]
    try:
        return torch.broadcast_shapes(*shapes.values())
    except RuntimeError:
        listed = ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
        raise OptionError(f"batch dims do not broadcast: {listed}") from None
