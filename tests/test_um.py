"""UM: flooding loss, the loss level ζ of a randomly masked model, fine-tuning, and NaN handling."""

from __future__ import annotations

import copy
import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_state_equal, sgd_tol, state_copy

from unleash_ood.config import OptimConfig
from unleash_ood.data.batches import TensorBatches, split_batch
from unleash_ood.errors import UserError
from unleash_ood.masking import maskable_layers, random_layer_masks
from unleash_ood.methods.train import NonFiniteLossError, ce_step, train
from unleash_ood.methods.um import (
    ZetaEstimate,
    chance_ce,
    estimate_zeta,
    flooding_loss,
    flooding_step,
    mean_cross_entropy,
    robust_zeta,
    toward_chance,
    unleash,
)

# ------------------------------------------------------------------------------------ flooding

@pytest.mark.parametrize("ce_value, zeta, expected_loss, expected_grad", [
    (0.9, 0.3, 0.9, 1.0),    # above ζ: the loss is the CE itself, gradient descent
    (0.1, 0.3, 0.5, -1.0),   # below ζ: 2ζ − CE, gradient ascent
    (2.0, 1.2, 2.0, 1.0),
    (0.05, 1.2, 2.35, -1.0),
    (0.7, 0.0, 0.7, 1.0),    # ζ = 0: plain CE
])
def test_flooding_loss_value_and_gradient(ce_value, zeta, expected_loss, expected_grad) -> None:
    ce = torch.tensor(ce_value, dtype=torch.float64, requires_grad=True)
    loss = flooding_loss(ce, zeta)
    assert loss.item() == pytest.approx(expected_loss, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, ce)
    assert grad.item() == expected_grad


def test_flooding_loss_never_below_zeta() -> None:
    ce = torch.linspace(0, 3, 31)
    assert (flooding_loss(ce, 1.0) >= 1.0).all()


def test_flooding_loss_with_global_ce_takes_the_global_sign() -> None:
    local = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)  # below ζ on this rank's slice
    loss = flooding_loss(local, 0.5, global_ce=torch.tensor(0.9, dtype=torch.float64))  # batch above ζ
    assert loss.item() == pytest.approx(0.9)  # |0.9 − 0.5| + 0.5
    (grad,) = torch.autograd.grad(loss, local)
    assert grad.item() == 1.0  # descent, as the whole batch asks


def test_flooding_step_on_batch(trained_cnn, fmnist_small) -> None:
    x, y = fmnist_small[0][:64], fmnist_small[1][:64]
    trained_cnn.eval()
    with torch.no_grad():
        ce = F.cross_entropy(trained_cnn(x), y).item()
    loss, logged = flooding_step(ce + 0.5)(trained_cnn, (x, y))
    assert logged.item() == pytest.approx(ce, rel=1e-5)
    assert loss.item() == pytest.approx(ce + 1.0, rel=1e-5)
    assert loss.requires_grad and not logged.requires_grad


# ------------------------------------------------------------------------------------ ζ

def _hand_masked_ce(model, x, y, keep_ratio: float, seed: int, batch_size: int, draw: int = 0) -> float:
    """Mean CE of W ⊙ m over all samples, the masked weights written into a deep copy, eval mode."""
    masks = random_layer_masks(model, keep_ratio, seed, draw)
    clone = copy.deepcopy(model).eval()
    layers = maskable_layers(clone)
    with torch.no_grad():
        for name, mask in masks.items():
            layers[name].weight.mul_(mask)
        total = 0.0
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            total += F.cross_entropy(clone(xb), yb, reduction="sum").item()
    return total / len(x)


def test_estimate_zeta_one_draw_by_hand(trained_cnn, fmnist_small) -> None:
    x, y = fmnist_small[0][:256], fmnist_small[1][:256]
    batches = TensorBatches(x, y, batch_size=100)  # 100 + 100 + 56: uneven batches
    reference = state_copy(trained_cnn)
    trained_cnn.train()  # ζ is computed in eval mode regardless; the mode comes back
    est = estimate_zeta(trained_cnn, batches, keep_ratio=0.9, draws=1, seed=7)
    assert trained_cnn.training
    trained_cnn.eval()
    expected = _hand_masked_ce(trained_cnn, x, y, 0.9, 7, 100)
    assert est.values == [pytest.approx(expected, rel=1e-6)]
    assert est.mean == pytest.approx(expected, rel=1e-6) and est.sd == 0.0
    assert est.keep_ratio == 0.9
    # sample weighting matters here: the mean of the three batch means is a different number
    with torch.no_grad():
        clone = copy.deepcopy(trained_cnn)
        for name, mask in random_layer_masks(trained_cnn, 0.9, 7).items():
            maskable_layers(clone)[name].weight.mul_(mask)
        batch_means = [F.cross_entropy(clone(xb), yb).item() for xb, yb in batches]
    assert abs(sum(batch_means) / 3 - expected) > 1e-4
    # masking hurts: ζ is above the unmasked CE
    assert expected > mean_cross_entropy(trained_cnn, batches)
    # the model is unchanged
    assert_state_equal(trained_cnn, reference)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in trained_cnn.modules())


def test_estimate_zeta_three_draws(trained_cnn, fmnist_small) -> None:
    x, y = fmnist_small[0][:200], fmnist_small[1][:200]
    reference = state_copy(trained_cnn)
    est = estimate_zeta(trained_cnn, TensorBatches(x, y, batch_size=64), keep_ratio=0.8, draws=3, seed=2)
    expected = [_hand_masked_ce(trained_cnn, x, y, 0.8, 2, 64, draw) for draw in range(3)]
    assert est.values == pytest.approx(expected, rel=1e-6)
    assert len(set(est.values)) == 3
    assert est.mean == pytest.approx(statistics.mean(expected), rel=1e-6)
    assert est.sd == pytest.approx(statistics.stdev(expected), rel=1e-4)
    # the default estimator is the median of the draws
    assert est.estimator == "median" and est.value == est.median == pytest.approx(statistics.median(expected))
    d = est.as_dict()
    assert d["values"] == est.values and d["mean"] == est.mean and d["sd"] == est.sd
    assert d["estimator"] == "median" and d["value"] == est.value and d["median"] == est.median
    assert_state_equal(trained_cnn, reference)
    # the same draws under another estimator: only the chosen value changes
    again = estimate_zeta(trained_cnn, TensorBatches(x, y, batch_size=64), 0.8, draws=3, seed=2, estimator="mean")
    assert again.values == est.values and again.value == pytest.approx(statistics.mean(expected))


def test_robust_zeta_ignores_one_destructive_draw() -> None:
    # issue 8's seed 1: three draws 0.38, 1.29, 0.16 -> mean 0.61, dominated by the 1.29 draw
    seed1 = [0.38, 1.29, 0.16]
    assert robust_zeta(seed1, "mean") == pytest.approx(0.61)
    assert robust_zeta(seed1, "median") == pytest.approx(0.38)
    assert robust_zeta(seed1, "trimmed_mean") == pytest.approx(0.38)  # 3 draws: drop 0.16 and 1.29
    calm = [0.21, 0.19, 0.20, 0.22]
    for estimator in ("median", "trimmed_mean"):
        with_outlier = robust_zeta([*calm, 2.5], estimator)  # one destructive draw among five
        assert with_outlier == pytest.approx(0.21)
        assert robust_zeta([*calm, 250.0], estimator) == with_outlier  # however destructive
    assert robust_zeta([*calm, 2.5], "mean") == pytest.approx(0.664)
    assert robust_zeta(calm, "median") == pytest.approx(0.205)  # even count: mean of the middle two
    assert robust_zeta(calm, "trimmed_mean") == pytest.approx(0.205)  # drop 0.19 and 0.22
    assert robust_zeta([0.3, 0.5], "trimmed_mean") == pytest.approx(0.4)  # two draws: nothing to trim
    assert robust_zeta([0.3], "median") == 0.3
    with pytest.raises(UserError, match="unknown zeta estimator"):
        robust_zeta(calm, "mode")
    est = ZetaEstimate(keep_ratio=0.9, values=[*calm, 2.5], estimator="median")
    assert est.value == pytest.approx(0.21) and est.mean == pytest.approx(0.664) and est.sd > 1


def test_zeta_estimator_config() -> None:
    from unleash_ood.config import DemoConfig, UMConfig, validate

    assert (UMConfig().zeta_estimator, UMConfig().zeta_draws) == ("median", 5)
    cfg = validate(DemoConfig, {"um": {"zeta_estimator": "trimmed_mean"}})
    assert cfg.um.zeta_estimator == "trimmed_mean"
    with pytest.raises(UserError, match="um.zeta_estimator"):
        validate(DemoConfig, {"um": {"zeta_estimator": "mode"}})
    with pytest.raises(UserError, match="um.zeta_draws"):
        validate(DemoConfig, {"um": {"zeta_draws": 0}})


def test_estimate_zeta_full_keep_is_plain_ce(trained_cnn, fmnist_small) -> None:
    batches = TensorBatches(fmnist_small[0][:128], fmnist_small[1][:128], batch_size=50)
    est = estimate_zeta(trained_cnn, batches, keep_ratio=1.0, draws=1)
    assert est.values[0] == pytest.approx(mean_cross_entropy(trained_cnn, batches), rel=1e-6)


@pytest.mark.parametrize("keep_ratio", [0.0, -0.5, 1.01])
def test_estimate_zeta_invalid_keep_ratio(trained_cnn, fmnist_small, keep_ratio) -> None:
    batches = TensorBatches(fmnist_small[0][:32], fmnist_small[1][:32])
    with pytest.raises(UserError):
        estimate_zeta(trained_cnn, batches, keep_ratio)


def test_estimate_zeta_invalid_draws_and_empty(trained_cnn, fmnist_small) -> None:
    batches = TensorBatches(fmnist_small[0][:32], fmnist_small[1][:32])
    with pytest.raises(UserError, match="draws"):
        estimate_zeta(trained_cnn, batches, 0.9, draws=0)
    with pytest.raises(UserError, match="unknown zeta estimator"):
        estimate_zeta(trained_cnn, batches, 0.9, estimator="mode")
    with pytest.raises(UserError, match="empty"):
        estimate_zeta(trained_cnn, [], 0.9, draws=1)
    # the failed estimate left no mask behind
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in trained_cnn.modules())


# ------------------------------------------------------------------------------------ UM fine-tuning

def test_unleash_zeta_above_loss_ascends_zero_descends(trained_cnn, fmnist_small) -> None:
    x, y = fmnist_small[0], fmnist_small[1]
    batches = TensorBatches(x, y, batch_size=32, shuffle=True, seed=0)
    eval_batches = TensorBatches(x, y, batch_size=256)
    cfg = OptimConfig(epochs=2, lr=0.05, batch_size=32, weight_decay=0.0)
    start = mean_cross_entropy(trained_cnn, eval_batches)

    ascend = copy.deepcopy(trained_cnn)
    hist_up = unleash(ascend, batches, zeta=start + 1.5, cfg=cfg)
    up = mean_cross_entropy(ascend, eval_batches)

    descend = copy.deepcopy(trained_cnn)
    hist_down = unleash(descend, TensorBatches(x, y, batch_size=32, shuffle=True, seed=0), zeta=0.0, cfg=cfg)
    down = mean_cross_entropy(descend, eval_batches)

    assert up > start + 0.1, (start, up)
    assert down < start - 0.05, (start, down)
    assert len(hist_up) == len(hist_down) == 2
    # the logged train CE follows the same directions; the objective is never below ζ
    assert hist_up[-1]["train_ce"] > hist_up[0]["train_ce"]
    assert hist_down[-1]["train_ce"] < hist_down[0]["train_ce"]
    assert all(h["loss"] >= start + 1.5 - 1e-6 for h in hist_up)
    # ζ = 0 is plain CE: loss == train_ce
    assert all(h["loss"] == pytest.approx(h["train_ce"], rel=1e-6) for h in hist_down)
    # no CE is below 0: the control never ascends; ζ far above the training CE: most first-epoch steps do
    assert [h["ce_below_zeta"] for h in hist_down] == [0.0, 0.0]
    assert hist_up[0]["ce_below_zeta"] > 0.5  # it ascends until the CE overshoots ζ


def test_ce_below_zeta_counts_the_steps_that_ascend(trained_cnn, fmnist_small) -> None:
    """``ce_below_zeta`` is the fraction of an epoch's steps whose batch CE was below ζ, counted from the
    steps' own CE (no extra pass): checked against a step loss that records every CE."""
    x, y = fmnist_small[0], fmnist_small[1]
    cfg = OptimConfig(epochs=2, lr=0.05, batch_size=32, weight_decay=0.0)
    zeta = mean_cross_entropy(trained_cnn, TensorBatches(x, y, batch_size=256)) + 0.1  # above the training CE
    seen: list[float] = []

    def recording(model, batch):
        loss, ce = flooding_step(zeta)(model, batch)
        seen.append(ce.item())
        return loss, ce

    hist = train(copy.deepcopy(trained_cnn), TensorBatches(x, y, batch_size=32, shuffle=True, seed=0), cfg,
                 recording, flood_level=zeta)
    steps = len(seen) // 2
    by_hand = [sum(c < zeta for c in seen[i * steps:(i + 1) * steps]) / steps for i in range(2)]
    assert [h["ce_below_zeta"] for h in hist] == by_hand
    assert 0 < by_hand[0] < 1, by_hand  # the batch CEs straddle ζ
    # unleash records the same (same model, batches and schedule)
    again = unleash(copy.deepcopy(trained_cnn), TensorBatches(x, y, batch_size=32, shuffle=True, seed=0), zeta, cfg)
    assert [h["ce_below_zeta"] for h in again] == by_hand
    # a plain training records nothing of the kind
    assert "ce_below_zeta" not in train(copy.deepcopy(trained_cnn), TensorBatches(x[:64], y[:64]),
                                        OptimConfig(epochs=1, lr=0.01))[0]


def test_guard_rule_half_of_chance_level() -> None:
    """UM refuses ζ ≥ ½·ln C; the paper's own levels (CIFAR-10 0.10, CIFAR-100 1.20) pass."""
    assert not toward_chance(0.10, 10) and not toward_chance(1.20, 100)
    assert toward_chance(0.5 * math.log(10), 10) and toward_chance(2.2, 10)
    assert not toward_chance(0.5 * math.log(10) - 1e-9, 10)
    assert chance_ce(10) == pytest.approx(2.302585, abs=1e-6)


@pytest.mark.parametrize("zeta", [-0.1, float("nan"), float("inf")])
def test_unleash_invalid_zeta(trained_cnn, fmnist_small, zeta) -> None:
    reference = state_copy(trained_cnn)
    with pytest.raises(UserError, match="zeta"):
        unleash(trained_cnn, TensorBatches(fmnist_small[0][:64], fmnist_small[1][:64]), zeta,
                OptimConfig(epochs=1, lr=0.05))
    assert_state_equal(trained_cnn, reference)


# ------------------------------------------------------------------------------------ NaN guard

class _Stop(Exception):
    pass


def _step_until(n_ok: int, then):
    """A step loss: plain CE for ``n_ok`` steps, then ``then(model, batch)``."""
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        if calls["n"] > n_ok:
            return then(model, batch)
        return ce_step(model, batch)

    return step


def _nan_loss(model, batch):
    x, _ = split_batch(batch)
    out = model(x).sum() * float("nan")
    return out, out.detach()


def _params(model):
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def test_train_raises_on_nan_loss_before_updating(trained_cnn, fmnist_small) -> None:
    batches = TensorBatches(fmnist_small[0][:256], fmnist_small[1][:256], batch_size=64)
    cfg = OptimConfig(epochs=1, lr=0.1)
    before = _params(trained_cnn)
    with pytest.raises(NonFiniteLossError, match="nan") as info:
        train(trained_cnn, batches, cfg, step_loss=_step_until(0, _nan_loss))
    assert isinstance(info.value, UserError)
    after = _params(trained_cnn)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_train_nan_mid_epoch_is_not_applied(trained_cnn, fmnist_small) -> None:
    """NaN at step 3: the parameters equal those after exactly the first two (good) steps."""
    batches = TensorBatches(fmnist_small[0][:256], fmnist_small[1][:256], batch_size=64)
    cfg = OptimConfig(epochs=1, lr=0.1)
    a, b = copy.deepcopy(trained_cnn), copy.deepcopy(trained_cnn)
    with pytest.raises(NonFiniteLossError, match="step 2"):
        train(a, batches, cfg, step_loss=_step_until(2, _nan_loss))

    def stop(model, batch):
        raise _Stop

    with pytest.raises(_Stop):
        train(b, batches, cfg, step_loss=_step_until(2, stop))
    pa, pb, p0 = _params(a), _params(b), _params(trained_cnn)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert any(not torch.equal(pa[k], p0[k]) for k in pa)  # the two good steps did train


def test_train_raises_on_infinite_loss(trained_cnn, fmnist_small) -> None:
    def inf_loss(model, batch):
        x, _ = split_batch(batch)
        out = model(x).sum() * 0 + float("inf")
        return out, out.detach()

    with pytest.raises(NonFiniteLossError, match="inf"):
        train(trained_cnn, TensorBatches(fmnist_small[0][:64], fmnist_small[1][:64]), OptimConfig(epochs=1),
              step_loss=inf_loss)


def test_lr_schedules_follow_appendix_e() -> None:
    from unleash_ood.methods.train import lr_factor

    assert lr_factor("cosine", 0.0) == 1.0 and abs(lr_factor("cosine", 0.5) - 0.5) < 1e-12
    assert lr_factor("linear", 0.2) == 1.0
    assert abs(lr_factor("linear", 2 / 3 - 1e-9) - 0.1) < 1e-6 and abs(lr_factor("linear", 1 - 1e-9) - 0.01) < 1e-6
    assert abs(lr_factor("multi_decay", 0.15) - 0.9) < 1e-12 and abs(lr_factor("multi_decay", 0.95) - 0.1) < 1e-12
    assert lr_factor("multi_step", 0.29) == 1.0 and abs(lr_factor("multi_step", 0.65) - 0.01) < 1e-12


# ------------------------------------------------------------------------------------ DDP flooding

def _tiny_model() -> torch.nn.Module:
    """No BatchNorm: DDP without SyncBatchNorm then computes exactly the one-process gradient."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(16, 3))


def _ddp_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)


DDP_CFG = OptimConfig(epochs=2, lr=0.5, batch_size=16, weight_decay=0.0)


def _flood_ddp_worker(rank: int, world: int, port: int, zeta: float, out: str) -> None:
    import json
    import os

    from unleash_ood.utils import runtime

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    model = runtime.place(_tiny_model(), runtime.setup("cpu", "off"))
    x, y = _ddp_data()
    hist = unleash(model, TensorBatches(x, y, DDP_CFG.batch_size, shuffle=True, seed=0), zeta, DDP_CFG)
    if runtime.is_primary():
        torch.save({"state": model.state_dict(), "hist": json.dumps(hist)}, out)
    torch.distributed.destroy_process_group()


def test_flooding_under_ddp_equals_one_process(tmp_path) -> None:
    """Two gloo ranks whose slices lie on either side of ζ train exactly like one process."""
    import json
    import socket

    import torch.multiprocessing as mp

    from unleash_ood.utils import runtime

    x, y = _ddp_data()
    first_x, first_y = next(iter(TensorBatches(x, y, DDP_CFG.batch_size, shuffle=True, seed=0)))
    with torch.no_grad():
        halves = sorted(F.cross_entropy(_tiny_model()(hx), hy).item()
                        for hx, hy in zip(first_x.tensor_split(2), first_y.tensor_split(2)))
    zeta = halves[0] + 0.25 * (halves[1] - halves[0])  # straddled by the slices, below the batch CE
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    mp.start_processes(_flood_ddp_worker, args=(2, port, zeta, str(out)), nprocs=2, join=True,
                       start_method="spawn")
    got = torch.load(out, weights_only=True)
    runtime.setup("cpu", "off")
    single = _tiny_model()
    hist = unleash(single, TensorBatches(x, y, DDP_CFG.batch_size, shuffle=True, seed=0), zeta, DDP_CFG)
    # float32 drift of the all-reduced gradient sums (conftest.sgd_tol; as test_runtime's DDP test)
    drift = sgd_tol(len(hist) * len(x) // DDP_CFG.batch_size, DDP_CFG.lr, DDP_CFG.momentum,
                    DDP_CFG.batch_size * 8 * 8)
    for k, v in single.state_dict().items():
        torch.testing.assert_close(got["state"][k], v, atol=drift, rtol=0, msg=k)
    n_params = sum(p.numel() for p in single.parameters())
    for a, b in zip(json.loads(got["hist"]), hist):
        assert a["loss"] == pytest.approx(b["loss"], rel=0, abs=n_params * drift)
        assert a["ce_below_zeta"] == b["ce_below_zeta"]  # counted on the global batch's CE, as its sign is
