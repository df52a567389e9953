"""Outlier-exposure losses (OE, Energy w. D_aux) and POEM's outlier selection.

The baselines "with outliers" of Unleashing Mask (Zhu et al., ICML 2023), Appendix A, Eq. (9)-(10):
OE (Hendrycks et al., 2019), energy-bounded learning (Liu et al., 2020) and POEM (Ming et al., 2022).
For "+UM" the ID cross-entropy is replaced by the flooding loss via ``id_loss``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Outlier exposure (Hendrycks et al., 2019; Unleashing Mask Eq. 9)
# ---------------------------------------------------------------------------------------------


def uniform_cross_entropy(logits: Tensor) -> Tensor:
    """Per-sample CE from softmax(z) to the uniform distribution: logsumexp(z) - mean(z)."""
    return torch.logsumexp(logits, dim=1) - logits.mean(dim=1)


def oe_regularizer(logits_out: Tensor) -> Tensor:
    """OE term of Unleashing Mask Eq. (9): the uniform CE averaged over the outlier batch."""
    return uniform_cross_entropy(logits_out).mean()


def oe_loss(logits_in: Tensor, targets: Tensor, logits_out: Tensor, lam: float = 0.5,
            id_loss: Tensor | None = None) -> Tensor:
    """OE objective (Hendrycks et al., 2019): CE(ID) + lam * oe_regularizer(outliers).

    Each term is averaged over its own batch (not over the mixed ID+outlier batch).
    ``id_loss``, when given, replaces CE(ID), e.g. by the flooding loss for OE+UM.
    """
    if id_loss is None:
        id_loss = F.cross_entropy(logits_in, targets)
    return id_loss + lam * oe_regularizer(logits_out)


# ---------------------------------------------------------------------------------------------
# Energy-bounded learning (Liu et al., 2020; Unleashing Mask Eq. 8 and 10)
# ---------------------------------------------------------------------------------------------


def free_energy(logits: Tensor, T: float = 1.0) -> Tensor:
    """Free energy per sample, E(x) = -T * logsumexp(z / T) (Unleashing Mask Eq. 8); lower = more ID."""
    return -T * torch.logsumexp(logits / T, dim=1)


def energy_hinge_in(energy_in: Tensor, m_in: float = -25.0) -> Tensor:
    """ID half of Eq. (10): mean of max(0, E_in - m_in)^2 (penalizes ID energy above m_in)."""
    return F.relu(energy_in - m_in).pow(2).mean()


def energy_hinge_out(energy_out: Tensor, m_out: float = -7.0) -> Tensor:
    """Outlier half of Eq. (10): mean of max(0, m_out - E_out)^2 (penalizes outlier energy below m_out)."""
    return F.relu(m_out - energy_out).pow(2).mean()


def energy_regularizer(logits_in: Tensor, logits_out: Tensor, m_in: float = -25.0,
                       m_out: float = -7.0) -> Tensor:
    """Squared-hinge energy regularizer of Liu et al. (2020), Unleashing Mask Eq. (10), with T = 1."""
    return energy_hinge_in(free_energy(logits_in), m_in) + energy_hinge_out(free_energy(logits_out), m_out)


def energy_loss(logits_in: Tensor, targets: Tensor, logits_out: Tensor, weight: float = 0.1,
                m_in: float = -25.0, m_out: float = -7.0, id_loss: Tensor | None = None) -> Tensor:
    """Energy (w. D_aux) objective (Liu et al., 2020): CE(ID) + weight * energy_regularizer.

    ``id_loss``, when given, replaces CE(ID) (flooding loss for Energy+UM / POEM+UM); the
    energy hinge on ID samples still uses ``logits_in``.
    """
    if id_loss is None:
        id_loss = F.cross_entropy(logits_in, targets)
    return id_loss + weight * energy_regularizer(logits_in, logits_out, m_in, m_out)


# ---------------------------------------------------------------------------------------------
# POEM (Ming, Fan & Li, ICML 2022): Bayesian linear regression + Thompson sampling
# ---------------------------------------------------------------------------------------------


def augment_bias(features: Tensor) -> Tensor:
    """Append a constant-1 column, so the linear boundary w^T [phi, 1] need not pass the origin."""
    return torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1)


def boundary_targets(num_id: int, num_out: int, conf: float = 1.0) -> Tensor:
    """Regression targets for POEM's linear head: +conf for ID samples, -conf for outliers (ID first)."""
    return torch.cat([torch.full((num_id,), conf), torch.full((num_out,), -conf)]).double()


def posterior_precision(x: Tensor, ridge: float) -> Tensor:
    """Scaled posterior precision Lambda_n = X^T X + ridge * I (ridge = sigma_n^2 / sigma^2)."""
    return x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)


def posterior_mean(x: Tensor, y: Tensor, precision_chol: Tensor) -> Tensor:
    """Posterior mean mu_n = Lambda_n^{-1} X^T y (the ridge solution), via the Cholesky factor."""
    return torch.cholesky_solve((x.T @ y).unsqueeze(1), precision_chol).squeeze(1)


def noise_posterior(a0: float, b0: float, x: Tensor, y: Tensor, mean: Tensor,
                    ridge: float) -> tuple[float, float]:
    """Inverse-gamma posterior of the noise variance under the NIG prior.

    a_n = a0 + n/2 and b_n = b0 + (y^T y - mu^T Lambda_n mu)/2, written as the equal, non-negative
    (||y - X mu||^2 + ridge * ||mu||^2)/2 to avoid cancellation.
    """
    residual = y - x @ mean
    return a0 + 0.5 * x.shape[0], b0 + 0.5 * float(residual @ residual + ridge * (mean @ mean))


def gaussian_sample(mean: Tensor, precision_chol: Tensor, variance: float, z: Tensor) -> Tensor:
    """w = mu + sqrt(variance) * L^{-T} z, so that Cov(w) = variance * Lambda^{-1} with Lambda = L L^T."""
    step = torch.linalg.solve_triangular(precision_chol.T, z.unsqueeze(1), upper=True).squeeze(1)
    return mean + variance ** 0.5 * step


def boundary_score(pool_features: Tensor, weights: Tensor) -> Tensor:
    """POEM's boundary score G(x) = -|w^T [phi(x), 1]|; higher = closer to the ID/outlier boundary."""
    w = weights.to(device=pool_features.device, dtype=pool_features.dtype)
    return -(pool_features @ w[:-1] + w[-1]).abs()


class PoemSelector:
    """POEM (Ming et al., ICML 2022): Thompson sampling of a Bayesian linear boundary on penultimate features;
    picks the outliers closest to the sampled ID/OOD boundary.

    Model: y = w^T [phi, 1] + eps with eps ~ N(0, s^2) and prior w ~ N(0, sigma^2 I) at s = sigma_n.
    ``sigma`` and ``sigma_n`` are standard deviations. With ``a0``/``b0`` given, the noise variance
    is unknown with prior s^2 ~ InvGamma(a0, b0) and w | s^2 ~ N(0, s^2 (sigma/sigma_n)^2 I)
    (Normal-Inverse-Gamma, as in the NeuralLinear/BDQN posterior POEM builds on); with
    ``a0 = b0 = None`` the noise is known (s = sigma_n). Both give the same posterior mean, the
    ridge solution (X^T X + sigma_n^2/sigma^2 I)^{-1} X^T y. The posterior is kept in float64 on CPU.
    """

    def __init__(self, feature_dim: int, a0: float | None = 6.0, b0: float | None = 6.0,
                 sigma: float = 20.0, sigma_n: float = 0.5, seed: int = 0) -> None:
        if (a0 is None) != (b0 is None):
            raise ValueError("give both a0 and b0 (Normal-Inverse-Gamma) or neither (known noise)")
        if sigma <= 0 or sigma_n <= 0:
            raise ValueError(f"sigma and sigma_n must be positive, got {sigma} and {sigma_n}")
        self.feature_dim = feature_dim
        self.a0, self.b0 = a0, b0
        self.sigma, self.sigma_n = sigma, sigma_n
        self.ridge = (sigma_n / sigma) ** 2
        self._rng = np.random.default_rng(seed)
        dim = feature_dim + 1
        self._mean = torch.zeros(dim, dtype=torch.float64)
        self._precision = self.ridge * torch.eye(dim, dtype=torch.float64)
        self._chol = torch.linalg.cholesky(self._precision)
        self._a, self._b = a0, b0

    @property
    def posterior_mean(self) -> Tensor:
        """Posterior mean of the weights, shape (feature_dim + 1,); the last entry is the bias."""
        return self._mean.clone()

    @property
    def posterior_precision(self) -> Tensor:
        """Lambda_n = X^T X + sigma_n^2/sigma^2 I; Cov(w | s^2) = s^2 * Lambda_n^{-1}."""
        return self._precision.clone()

    @property
    def noise_posterior(self) -> tuple[float, float] | None:
        """(a_n, b_n) of the inverse-gamma noise-variance posterior; None with known noise."""
        return None if self._a is None else (self._a, self._b)

    def update(self, features: Tensor, targets: Tensor) -> None:
        """Bayesian linear regression posterior from the prior on (features, targets).

        Targets: +1 for ID and -1 for outliers (``boundary_targets``), the symmetric version of
        POEM's code (ID -conf, outliers +conf, conf = 3); any real targets work, and sign or
        scale do not change which samples are nearest the boundary w^T phi = 0. Like POEM, which
        re-extracts features of its recent-data buffer every epoch, each call recomputes the
        posterior from the prior rather than accumulating (old features are stale).
        """
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must be (n, {self.feature_dim}), got {tuple(features.shape)}")
        if targets.shape != (features.shape[0],):
            raise ValueError(f"targets must be ({features.shape[0]},), got {tuple(targets.shape)}")
        x = augment_bias(features.detach().to("cpu", torch.float64))
        y = targets.detach().to("cpu", torch.float64)
        self._precision = posterior_precision(x, self.ridge)
        self._chol = torch.linalg.cholesky(self._precision)
        self._mean = posterior_mean(x, y, self._chol)
        if self.a0 is not None and self.b0 is not None:
            self._a, self._b = noise_posterior(self.a0, self.b0, x, y, self._mean, self.ridge)

    def sample_weights(self) -> Tensor:
        """One Thompson sample w ~ p(w | data), shape (feature_dim + 1,), float64 (last entry: bias)."""
        if self._a is None or self._b is None:
            variance = self.sigma_n ** 2
        else:  # s^2 ~ InvGamma(a_n, b_n), i.e. 1 / Gamma(shape a_n, rate b_n)
            variance = 1.0 / self._rng.gamma(self._a, 1.0 / self._b)
        z = torch.from_numpy(self._rng.standard_normal(self._mean.shape[0]))
        return gaussian_sample(self._mean, self._chol, variance, z)

    def select(self, pool_features: Tensor, k: int) -> Tensor:
        """Indices of the k pool samples with the smallest |w^T [phi, 1]| under a fresh posterior sample."""
        if pool_features.ndim != 2 or pool_features.shape[1] != self.feature_dim:
            raise ValueError(f"pool_features must be (n, {self.feature_dim}), "
                             f"got {tuple(pool_features.shape)}")
        if not 0 <= k <= pool_features.shape[0]:
            raise ValueError(f"k must be in [0, {pool_features.shape[0]}], got {k}")
        scores = boundary_score(pool_features.detach(), self.sample_weights())
        return torch.topk(scores, k, largest=True).indices.long()
