"""The exact noised likelihood score for a linear operator and a Gaussian prior.

Used by the EnSF's ``likelihood="gaussian"`` option (see
:func:`xensf.filters.ensf.ensf_analysis`): the score of ``p(y | z_τ)`` at every
pseudo-time, and the bound on its stiffness that the integrator uses to choose between
an explicit and an implicit step.
"""

from __future__ import annotations

import math

import torch

from .operators import LinearObservationOperator

__all__ = ["GaussianLikelihood"]


class GaussianLikelihood:
    """Exact score of ``p(y | z_τ)`` for a linear operator and a Gaussian prior.

    The prior the reverse SDE samples is the ensemble smoothed by the kernel of variance
    ``ε_β`` (what the mixture score converges to), so the clean variable is
    ``z̃ = z0 + √ε_β ξ`` with covariance ``C = U Uᵀ + ε_β I`` (``U = Z/√(N−1)``, ``Z`` the
    standardised deviations, mean 0), and ``z_τ = α z̃ + γ ε`` with ``γ² = β² − α² ε_β``
    (then ``z_τ = α z0 + β ε``, the forward process). With ``Σ = Cov z_τ = α² U Uᵀ +
    β² I`` and ``K = (α² UᵀU + β² I_N)⁻¹`` (push-through identity):

    * ``M = C Σ⁻¹ = (γ²/β²) U K Uᵀ + (ε_β/β²) I``, ``E[z̃ | z_τ] = α M z_τ``,
      ``Cov[z̃ | z_τ] = γ² M``;
    * ``p(y | z_τ) = N(y; H(x̄ + s∘α M z_τ), S)`` with ``G = H diag(s)``, ``B = G U``,
      ``S = Γ + (γ⁴/β²) B K Bᵀ + (γ² ε_β/β²) G Gᵀ``;
    * score ``α M Gᵀ S⁻¹ (y − H(x̄ + s∘α M z))``.

    ``S⁻¹`` is applied in whichever of two forms is smaller (``a = γ⁴/β²``,
    ``b = γ²ε_β/β²``, ``Π`` the observation precision, 0 for a missing observation):

    * more observations than members, and no two observations reading the same state
      component (so ``G Gᵀ = diag(D)``): Woodbury in precision form, ``Π' = Π / (1 +
      b Π D)``, ``S⁻¹ = Π' − a Π' B (K⁻¹ + a Bᵀ Π' B)⁻¹ Bᵀ Π'``, an r×r Cholesky per step
    * otherwise: ``S⁻¹ = Π^½ (I + Π^½ (b GGᵀ + a BKBᵀ) Π^½)⁻¹ Π^½``, an m×m Cholesky per
      step (``G Gᵀ`` is built once from the sparse rows).

    Both factorise in float64 (the matrices are small) and are well conditioned: the
    added identity, resp. ``K⁻¹ ⪰ β² I``. Everything is computed in the eigenbasis of
    ``UᵀU``, where ``K`` is diagonal.

    The score's Jacobian is ``−L``, ``L = α² M Gᵀ S⁻¹ G M``. Since ``S ⪰ G (γ² M) Gᵀ``,
    ``L ⪯ α² M (γ² M)⁻¹ M = α² M / γ² ⪯ I / γ²`` (the eigenvalues of ``α² M`` are
    ``α²(λ + ε_β)/(α² λ + β²) ≤ 1``), whatever σ: the noised likelihood is never
    stiffer than ``1/γ²``, which the integrator uses to choose its step.
    """

    def __init__(self, z0, mean, scale, op, y, precision, eps_beta):
        n_members, d = z0.shape[-2:]
        u = z0 / math.sqrt(n_members - 1)  # rows: the columns of U
        # U = W diag(√λ) Qᵀ. Only its r = min(N − 1, d) singular directions matter (the
        # others have λ = 0), so keep the rows √λ_i w_iᵀ of the rotated ensemble, from the
        # smaller of the two Gram matrices.
        rank = min(n_members - 1, d)
        # In float64 (the Gram matrix is small): for members equal but for their mean's
        # rounding (deviations ~1e-7, the same in every member) the float32 eigh of the
        # Gram matrix returned NaN (tests/test_ensf.py).
        wide = u.double()
        if n_members <= d:
            lam, rot = torch.linalg.eigh(wide @ wide.mT)
            rows = rot.mT @ wide
        else:
            lam, rot = torch.linalg.eigh(wide.mT @ wide)
            rows = (rot * lam.clamp_min(0.0).sqrt().unsqueeze(-2)).mT
        self.lam = lam[..., -rank:].clamp_min(0.0).unsqueeze(-2).to(u.dtype)  # (..., 1, r)
        self.u = rows[..., -rank:, :].to(u.dtype)  # (..., r, d): orthogonal, norms² λ
        self.op = op
        self.scale = scale
        self.d = d
        self.eps_beta = eps_beta
        self.bt = op.linear(scale * self.u)  # (..., r, m): Bᵀ in the rotated basis
        self.innovation = y - op.linear(mean)  # (..., 1, m)
        self.precision = precision.unsqueeze(-2)  # (..., 1, m)
        s2 = torch.ones_like(mean) * scale * scale  # (..., 1, d)
        if op.n_obs > rank and _rows_disjoint(op, d):
            squared = LinearObservationOperator(op.indices, op.weights * op.weights)
            self.smoothing = squared.linear(s2)  # diag(G Gᵀ): (..., 1, m)
            self.dense = None
        else:  # fewer observations than members, or G Gᵀ not diagonal: solve in m×m
            self.smoothing = None
            self.dense = _gram(op, s2.sqrt()).double()  # G Gᵀ: (..., m, m)

    def score(self, z: torch.Tensor, alpha: float, beta2: float) -> tuple[torch.Tensor, float]:
        eps = self.eps_beta
        gamma2 = beta2 - alpha * alpha * eps
        p, q = gamma2 / beta2, eps / beta2
        a, b = gamma2 * p, gamma2 * q
        kdiag = 1.0 / (self.lam * (alpha * alpha) + beta2)  # K in the rotated basis
        zhat = torch.matmul(torch.matmul(z, self.u.mT).mul_(kdiag), self.u)
        zhat = zhat.mul_(alpha * p).add_(z, alpha=alpha * q)  # E[z̃ | z_τ] = α M z
        residual = self.innovation - self.op.linear(self.scale * zhat)
        v = self._solve(residual, a, b, kdiag)  # S⁻¹ residual
        grad = self.scale * self.op.linear_adjoint(v, self.d)  # Gᵀ v
        proj = torch.matmul(v, self.bt.mT).mul_(kdiag)  # K Bᵀ v
        out = torch.matmul(proj, self.u).mul_(alpha * p).add_(grad, alpha=alpha * q)
        return out, 1.0 / gamma2

    def _solve(self, r, a, b, kdiag):
        bt = self.bt.double()
        if self.dense is None:
            pp = self.precision / (1.0 + b * self.precision * self.smoothing)
            pp = pp.double()
            inner = torch.matmul(bt * pp, bt.mT).mul_(a)
            inner.diagonal(dim1=-2, dim2=-1).add_(1.0 / kdiag.double().squeeze(-2))
            chol = torch.linalg.cholesky(inner)
            rp = r.double() * pp
            t = torch.cholesky_solve(torch.matmul(rp, bt.mT).mT, chol).mT
            return (rp - torch.matmul(t, bt).mul_(a) * pp).to(r.dtype)
        sp = self.precision.double().sqrt()  # (..., 1, m)
        cov = torch.matmul(bt.mT * kdiag.double(), bt).mul_(a).add_(self.dense, alpha=b)
        mat = cov * sp * sp.mT
        mat.diagonal(dim1=-2, dim2=-1).add_(1.0)
        chol = torch.linalg.cholesky(mat)
        v = torch.cholesky_solve((r.double() * sp).mT, chol).mT * sp
        return v.to(r.dtype)


def _rows_disjoint(op: LinearObservationOperator, d: int) -> bool:
    """Whether no state component is read by two observations (or twice by one)."""
    m, k = op.indices.shape[-2:]
    used = (op.weights != 0).to(torch.float32).reshape(*op.indices.shape[:-2], m * k)
    counts = torch.zeros(*op.indices.shape[:-2], d, device=used.device)
    counts.scatter_add_(-1, op.indices.reshape(*op.indices.shape[:-2], m * k), used)
    return bool((counts <= 1).all())


def _gram(op: LinearObservationOperator, s: torch.Tensor) -> torch.Tensor:
    """``G Gᵀ`` with ``G = W diag(s)``, from the sparse rows (m² k² work and memory)."""
    idx, w = op.indices, op.weights
    m, k = idx.shape[-2:]
    batch = torch.broadcast_shapes(idx.shape[:-2], s.shape[:-2])
    flat = idx.expand(*batch, m, k).reshape(*batch, m * k)
    s_at = torch.gather(s.expand(*batch, 1, s.shape[-1]).squeeze(-2), -1, flat)
    ws = w.to(s.dtype).expand(*batch, m, k) * s_at.reshape(*batch, m, k)
    same = (idx[..., :, None, :, None] == idx[..., None, :, None, :]).to(s.dtype)
    return torch.einsum("...ik,...jl,...ijkl->...ij", ws, ws, same)
