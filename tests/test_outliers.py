"""Tests for the OE-family losses and POEM's outlier selection (Unleashing Mask, Appendix A)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unleash_ood.methods.outliers import (
    PoemSelector,
    boundary_targets,
    energy_loss,
    energy_regularizer,
    free_energy,
    oe_loss,
    oe_regularizer,
)

E = math.e
LOGITS_IN = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
TARGETS = torch.tensor([0, 2])
# CE by hand: row 1 target 0 -> log(e^2 + 2) - 2; row 2 target 2 -> log(e + 2) - 0.
CE_IN = ((math.log(E**2 + 2) - 2) + math.log(E + 2)) / 2


# --- OE ---------------------------------------------------------------------------------------

def test_oe_regularizer_by_hand():
    expected = ((math.log(E**2 + 2) - 2 / 3) + (math.log(E + 2) - 1 / 3)) / 2
    assert oe_regularizer(LOGITS_IN).item() == pytest.approx(expected, rel=1e-6)


def test_oe_regularizer_is_log_c_for_uniform_and_larger_otherwise():
    # Eq. (9) is the CE to the uniform distribution, log C at uniform logits (any constant c:
    # logsumexp = c + log C, mean = c); the KL to uniform, CE - log C, is then exactly 0.
    uniform = torch.tensor([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0], [-3.0, -3.0, -3.0]])
    assert oe_regularizer(uniform).item() == pytest.approx(math.log(3), abs=1e-6)
    assert oe_regularizer(uniform).item() - math.log(3) == pytest.approx(0.0, abs=1e-6)
    assert oe_regularizer(LOGITS_IN).item() - math.log(3) > 0.1


def test_oe_regularizer_minimal_exactly_at_uniform():
    # d/dz of (logsumexp(z) - mean(z)) = softmax(z) - 1/C, zero exactly at uniform logits.
    z = torch.zeros(4, 5, requires_grad=True)
    oe_regularizer(z).backward()
    assert torch.allclose(z.grad, torch.zeros_like(z), atol=1e-7)
    torch.manual_seed(0)
    for _ in range(5):
        assert oe_regularizer(torch.randn(4, 5) * 3) > math.log(5)


def test_oe_loss_terms_averaged_over_own_batch():
    logits_out = torch.tensor([[1.0, 1.0, 1.0], [3.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    reg_rows = [math.log(3), math.log(E**3 + 2) - 1.0, math.log(2 + math.exp(-1)) + 1 / 3]
    expected = CE_IN + 0.5 * sum(reg_rows) / 3
    got = oe_loss(LOGITS_IN, TARGETS, logits_out, lam=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # The mixed-batch average (pytorch-ood style) would be a different number.
    mixed = (2 * CE_IN + 0.5 * sum(reg_rows)) / 5
    assert abs(got.item() - mixed) > 0.1


def test_oe_loss_lambda_and_id_loss_replacement():
    logits_out = torch.tensor([[3.0, 0.0, 0.0]])
    reg = math.log(E**3 + 2) - 1.0
    assert oe_loss(LOGITS_IN, TARGETS, logits_out, lam=2.0).item() == pytest.approx(CE_IN + 2 * reg, rel=1e-6)
    flood = torch.tensor(0.7)
    got = oe_loss(LOGITS_IN, TARGETS, logits_out, lam=0.5, id_loss=flood)
    assert got.item() == pytest.approx(0.7 + 0.5 * reg, rel=1e-6)


def test_oe_loss_gradient_flows_through_id_loss():
    w = torch.tensor(1.0, requires_grad=True)
    oe_loss(LOGITS_IN, TARGETS, torch.zeros(2, 3), id_loss=3 * w).backward()
    assert w.grad.item() == pytest.approx(3.0)


# --- Energy -----------------------------------------------------------------------------------

def test_free_energy_by_hand_with_temperature():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert free_energy(logits).tolist() == pytest.approx([-math.log(E**2 + 2), -math.log(3)], rel=1e-6)
    # T = 2: -2 * log(e^{2/2} + e^0 + e^0)
    got = free_energy(logits, T=2.0).tolist()
    assert got == pytest.approx([-2 * math.log(E + 2), -2 * math.log(3)], rel=1e-6)
    assert free_energy(logits).shape == (2,)


def test_energy_hinge_zero_inside_margins():
    # One-logit rows make E = -z exactly: ID energies -26, -40 (<= m_in = -25),
    # outlier energies 0, -6 (>= m_out = -7).
    logits_in = torch.tensor([[26.0], [40.0]])
    logits_out = torch.tensor([[0.0], [6.0]])
    assert energy_regularizer(logits_in, logits_out).item() == 0.0
    # At the margins exactly the hinge is still zero.
    assert energy_regularizer(torch.tensor([[25.0]]), torch.tensor([[7.0]])).item() == 0.0


def test_energy_hinge_squared_gap_outside_margins():
    logits_in = torch.tensor([[30.0], [20.0]])   # E_in = -30 (inside), -20 (gap 5 above m_in = -25)
    logits_out = torch.tensor([[5.0], [10.0]])   # E_out = -5 (inside), -10 (gap 3 below m_out = -7)
    expected = (0 + 5**2) / 2 + (0 + 3**2) / 2
    assert energy_regularizer(logits_in, logits_out).item() == pytest.approx(expected)


def test_energy_regularizer_multiclass_custom_margins():
    logits_in = torch.tensor([[0.0, 0.0, 0.0]])   # E = -log 3
    logits_out = torch.tensor([[2.0, 0.0, 0.0]])  # E = -log(e^2 + 2)
    m_in, m_out = -2.0, 0.0
    expected = (-math.log(3) - m_in) ** 2 + (m_out + math.log(E**2 + 2)) ** 2
    got = energy_regularizer(logits_in, logits_out, m_in=m_in, m_out=m_out)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_energy_loss_weight_and_id_loss_replacement():
    logits_in = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    logits_out = torch.tensor([[2.0, 0.0, 0.0]])
    # Default margins: E_in = -log(e^2+2), -log(e+2) are far above m_in = -25.
    e_in = [-math.log(E**2 + 2), -math.log(E + 2)]
    e_out = -math.log(E**2 + 2)
    reg = sum((e + 25) ** 2 for e in e_in) / 2 + max(0.0, -7 - e_out) ** 2
    got = energy_loss(logits_in, TARGETS, logits_out)
    assert got.item() == pytest.approx(CE_IN + 0.1 * reg, rel=1e-6)
    got = energy_loss(logits_in, TARGETS, logits_out, weight=0.5, id_loss=torch.tensor(1.5))
    assert got.item() == pytest.approx(1.5 + 0.5 * reg, rel=1e-6)


# --- POEM -------------------------------------------------------------------------------------

def _two_d_problem(seed: int):
    g = torch.Generator().manual_seed(seed)
    id_feats = torch.randn(200, 2, generator=g) * 0.5 + torch.tensor([3.0, 0.0])
    # Outliers seen so far sit far left; the pool spreads along x from -6 to +3.
    seen_out = torch.stack([torch.rand(40, generator=g) * 2 - 6, torch.randn(40, generator=g)], dim=1)
    pool = torch.stack([torch.rand(600, generator=g) * 9 - 6, torch.randn(600, generator=g)], dim=1)
    return id_feats, seen_out, pool


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_poem_selects_near_boundary(seed):
    id_feats, seen_out, pool = _two_d_problem(seed)
    sel = PoemSelector(feature_dim=2, seed=seed)
    sel.update(torch.cat([id_feats, seen_out]), boundary_targets(len(id_feats), len(seen_out)))
    w = sel.posterior_mean
    assert w[0] > 0  # ID to the right scores positive
    boundary_x = float(-w[2] / w[0])  # where w^T [x, y, 1] = 0 (w_y ~ 0)
    assert -5.0 < boundary_x < 2.5
    k = 30
    idx = sel.select(pool, k)
    assert idx.dtype == torch.long and idx.shape == (k,) and len(set(idx.tolist())) == k
    picked = (pool[idx, 0] - boundary_x).abs().mean()
    g = torch.Generator().manual_seed(100 + seed)
    random_picks = torch.stack([
        (pool[torch.randperm(len(pool), generator=g)[:k], 0] - boundary_x).abs().mean() for _ in range(20)
    ]).mean()
    assert picked < 0.25 * random_picks


def test_poem_select_known_noise_mode_and_bad_args():
    id_feats, seen_out, pool = _two_d_problem(0)
    sel = PoemSelector(feature_dim=2, a0=None, b0=None, seed=0)
    sel.update(torch.cat([id_feats, seen_out]), boundary_targets(len(id_feats), len(seen_out)))
    assert sel.noise_posterior is None
    assert sel.select(pool, 5).shape == (5,)
    with pytest.raises(ValueError):
        sel.select(pool, len(pool) + 1)
    with pytest.raises(ValueError):
        sel.select(pool[:, :1], 3)
    with pytest.raises(ValueError):
        PoemSelector(feature_dim=2, a0=6.0, b0=None)


def _small_data():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64)
    y = torch.randn(12, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("a0,b0", [(6.0, 6.0), (None, None)])
def test_poem_posterior_mean_is_ridge_solution(a0, b0):
    x, y = _small_data()
    sigma, sigma_n = 0.5, 1.0  # ridge = sigma_n^2 / sigma^2 = 4, large enough to matter
    sel = PoemSelector(feature_dim=3, a0=a0, b0=b0, sigma=sigma, sigma_n=sigma_n)
    sel.update(x.float(), y.float())
    xa = np.hstack([x.numpy(), np.ones((12, 1))])
    xa = xa.astype(np.float32).astype(np.float64)  # same inputs the selector saw
    ya = y.numpy().astype(np.float32).astype(np.float64)
    ridge = np.linalg.inv(xa.T @ xa + (sigma_n**2 / sigma**2) * np.eye(4)) @ xa.T @ ya
    np.testing.assert_allclose(sel.posterior_mean.numpy(), ridge, rtol=1e-10, atol=1e-12)
    ols = np.linalg.lstsq(xa, ya, rcond=None)[0]
    assert np.abs(ridge - ols).max() > 1e-3  # the prior really shrinks


def test_poem_noise_posterior_by_hand():
    x, y = _small_data()
    sel = PoemSelector(feature_dim=3, a0=6.0, b0=6.0, sigma=2.0, sigma_n=1.0)
    sel.update(x, y)
    xa = np.hstack([x.numpy(), np.ones((12, 1))])
    lam = xa.T @ xa + 0.25 * np.eye(4)
    mu = np.linalg.solve(lam, xa.T @ y.numpy())
    a_n, b_n = sel.noise_posterior
    assert a_n == pytest.approx(6.0 + 12 / 2)
    assert b_n == pytest.approx(6.0 + 0.5 * (y.numpy() @ y.numpy() - mu @ lam @ mu), rel=1e-10)


def test_poem_samples_vary_with_seed_and_average_to_mean():
    x, y = _small_data()
    def fitted(seed):
        s = PoemSelector(feature_dim=3, sigma=1.0, sigma_n=1.0, seed=seed)
        s.update(x, y)
        return s
    a, b, a_again = fitted(0), fitted(1), fitted(0)
    w_a = a.sample_weights()
    assert w_a.shape == (4,) and w_a.dtype == torch.float64
    assert not torch.allclose(w_a, b.sample_weights())
    assert torch.equal(w_a, a_again.sample_weights())
    assert not torch.allclose(w_a, a.sample_weights())  # fresh draw each call
    samples = torch.stack([a.sample_weights() for _ in range(4000)])
    err = (samples.mean(0) - a.posterior_mean).abs()
    se = samples.std(0) / math.sqrt(len(samples))
    assert torch.all(err < 5 * se)
    assert torch.all(samples.std(0) > 0.01)


def test_poem_known_noise_covariance_matches_closed_form():
    x, y = _small_data()
    sigma, sigma_n = 1.5, 0.8
    sel = PoemSelector(feature_dim=3, a0=None, b0=None, sigma=sigma, sigma_n=sigma_n, seed=3)
    sel.update(x, y)
    samples = torch.stack([sel.sample_weights() for _ in range(20000)]).numpy()
    xa = np.hstack([x.numpy(), np.ones((12, 1))])
    cov = np.linalg.inv(xa.T @ xa / sigma_n**2 + np.eye(4) / sigma**2)
    np.testing.assert_allclose(np.cov(samples.T), cov, rtol=0.1, atol=0.1 * np.abs(cov).max())


def test_poem_prior_before_update_and_boundary_targets():
    sel = PoemSelector(feature_dim=4, seed=0)
    assert torch.equal(sel.posterior_mean, torch.zeros(5, dtype=torch.float64))
    assert sel.select(torch.randn(10, 4), 3).shape == (3,)
    assert boundary_targets(2, 3).tolist() == [1.0, 1.0, -1.0, -1.0, -1.0]
