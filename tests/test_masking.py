"""Layer-wise masks: exact keep counts, exact removal, popup (edge-popup) masks with straight-through grads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_state_equal, assert_within, f32_tol, small_cnn, state_copy
from torch import nn
from torch.nn.utils import parametrize

from unleash_ood.errors import UserError
from unleash_ood.masking import (
    add_popup_masks,
    apply_masks,
    check_keep_ratio,
    kept_fraction,
    maskable_layers,
    masked,
    popup_binary_masks,
    random_layer_masks,
    remove_masks,
    stream_generator,
)
from unleash_ood.models import build_model


def expected_kept(keep_ratio: float, n: int) -> int:
    # round(keep_ratio * n), with at least one weight kept per layer (a layer is never emptied)
    return max(1, round(keep_ratio * n))


def no_parametrizations(model: nn.Module) -> bool:
    return not any(parametrize.is_parametrized(m) for m in model.modules())


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return build_model("torchvision:resnet18", 10, small_input=True, in_channels=1).eval()


# ------------------------------------------------------------------------- random masks

@pytest.mark.parametrize("keep_ratio", [1.0, 0.975, 0.8, 0.5, 0.1, 0.02])
def test_random_masks_keep_exact_count_per_layer(keep_ratio: float) -> None:
    model = small_cnn()
    layers = maskable_layers(model)
    # every conv and the classifier, nothing else
    assert len(layers) == 7
    assert all(isinstance(m, (nn.Conv2d, nn.Linear)) for m in layers.values())
    masks = random_layer_masks(model, keep_ratio, seed=3)
    assert set(masks) == set(layers)
    for name, mask in masks.items():
        weight = layers[name].weight
        assert mask.dtype == torch.bool and mask.shape == weight.shape
        n = weight.numel()
        assert int(mask.sum()) == round(keep_ratio * n), (name, n)


def test_tiny_ratio_keeps_at_least_one_weight() -> None:
    model = small_cnn()
    masks = random_layer_masks(model, 1e-4, seed=0)
    for name, mask in masks.items():
        assert int(mask.sum()) == expected_kept(1e-4, mask.numel()) == 1, name


def test_random_masks_seeded() -> None:
    model = small_cnn()
    a, b, c = (random_layer_masks(model, 0.5, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # different seeds: each sizable layer differs
    for k in a:
        if a[k].numel() > 50:
            assert not torch.equal(a[k], c[k]), k


def test_zeta_masks_and_umap_init_use_independent_streams() -> None:
    """Same run seed: the ζ mask and UMAP's initial scores come from unrelated generators (they once
    shared ``Generator().manual_seed(seed)``, which made the kept sets strongly correlated)."""
    seed = 3
    seeds = {stream_generator(seed, "zeta", d).initial_seed() for d in range(3)}
    seeds.add(stream_generator(seed, "umap-init").initial_seed())
    assert len(seeds) == 4 and seed not in seeds
    layer = nn.Linear(250, 200, bias=False)
    zeta_mask = random_layer_masks(layer, 0.5, seed=seed)[""].float().flatten()
    add_popup_masks(layer, 0.5, seed=seed)
    init = layer.parametrizations.weight[0].scores.detach().flatten()
    corr = torch.corrcoef(torch.stack([zeta_mask, init]))[0, 1].item()
    assert abs(corr) < 0.03  # shared seed: −0.42; independent: sd ≈ 1/sqrt(50000) ≈ 0.0045
    # draw 1 of seed 0 is no longer draw 0 of seed 1
    assert not torch.equal(random_layer_masks(layer, 0.5, seed=0, draw=1)[""],
                           random_layer_masks(layer, 0.5, seed=1)[""])


@pytest.mark.parametrize("keep_ratio", [1.0, 0.9, 0.3])
def test_apply_masks_then_kept_fraction(keep_ratio: float) -> None:
    torch.manual_seed(0)
    model = small_cnn()
    masks = random_layer_masks(model, keep_ratio, seed=1)
    apply_masks(model, masks)
    try:
        fractions = kept_fraction(model)
        for name, mask in masks.items():
            assert fractions[name] == pytest.approx(float(mask.float().mean()), abs=1e-9)
            assert fractions[name] == pytest.approx(keep_ratio, abs=1.0 / mask.numel())
            # the effective weight is exactly W ⊙ m
            layer = maskable_layers(model)[name]
            original = layer.parametrizations.weight.original
            assert torch.equal(layer.weight, original * mask)
    finally:
        remove_masks(model)


def test_remove_masks_restores_state_bit_identically(fmnist_small) -> None:
    model = small_cnn()
    x = fmnist_small[2][:16]
    model.eval()
    before_state = state_copy(model)
    with torch.no_grad():
        before_out = model(x)
    params_before = [id(p) for p in model.parameters()]
    apply_masks(model, random_layer_masks(model, 0.5, seed=0))
    with torch.no_grad():
        assert not torch.equal(model(x), before_out)
    remove_masks(model)
    assert no_parametrizations(model)
    assert_state_equal(model, before_state)
    # same Parameter objects again (optimizers holding them stay valid); the order may differ
    # (a restored weight is re-registered after its bias)
    assert sorted(id(p) for p in model.parameters()) == sorted(params_before)
    with torch.no_grad():
        assert torch.equal(model(x), before_out)


def test_masked_context_removes_masks_after_error() -> None:
    model = small_cnn()
    reference = state_copy(model)
    masks = random_layer_masks(model, 0.5, seed=0)
    with pytest.raises(RuntimeError, match="boom"):
        with masked(model, masks):
            assert all(parametrize.is_parametrized(m, "weight") for m in maskable_layers(model).values())
            raise RuntimeError("boom")
    assert no_parametrizations(model)
    assert_state_equal(model, reference)


def test_masked_context_normal_exit() -> None:
    model = small_cnn()
    reference = state_copy(model)
    with masked(model, random_layer_masks(model, 0.25, seed=0)) as m:
        assert m is model
        assert all(v == pytest.approx(0.25, abs=0.02) for v in kept_fraction(model).values())
    assert no_parametrizations(model)
    assert_state_equal(model, reference)


def test_apply_masks_wrong_name_or_shape() -> None:
    model = small_cnn()
    masks = random_layer_masks(model, 0.5)
    with pytest.raises(UserError, match="does not have"):
        apply_masks(model, {"no.such.layer": masks["fc"]})
    bad = dict(masks)
    bad["fc"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(UserError, match="shape"):
        apply_masks(model, {"fc": bad["fc"]})
    assert no_parametrizations(model)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan")])
def test_check_keep_ratio_rejects(bad: float) -> None:
    with pytest.raises(UserError):
        check_keep_ratio(bad)
    with pytest.raises(UserError):
        random_layer_masks(small_cnn(), bad)


def test_check_keep_ratio_accepts() -> None:
    assert check_keep_ratio(1.0) == 1.0
    assert check_keep_ratio(1) == 1.0
    assert check_keep_ratio(0.975) == 0.975


# ------------------------------------------------------------------------- popup masks

@pytest.mark.parametrize("init", ["kaiming", "magnitude"])
@pytest.mark.parametrize("keep_ratio", [0.8, 0.3])
def test_popup_masks_keep_exact_fraction(init: str, keep_ratio: float) -> None:
    model = small_cnn()
    reference = state_copy(model)
    scores = add_popup_masks(model, keep_ratio, init=init, seed=0)
    layers = maskable_layers(model)
    assert len(scores) == len(layers)
    binary = popup_binary_masks(model)
    assert set(binary) == set(layers)
    for name, mask in binary.items():
        assert mask.dtype == torch.bool
        assert int(mask.sum()) == round(keep_ratio * mask.numel()), name
        layer = layers[name]
        # effective weight = W ⊙ top-k(|s|)
        assert torch.equal(layer.weight, layer.parametrizations.weight.original * mask)
        if init == "magnitude":  # starts at magnitude pruning: kept weights are the largest |W|
            w = layer.parametrizations.weight.original.detach().abs()
            assert w[mask].min() >= w[~mask].max()
    remove_masks(model)
    assert no_parametrizations(model)
    assert_state_equal(model, reference)


def test_popup_unknown_init() -> None:
    with pytest.raises(UserError, match="init"):
        add_popup_masks(small_cnn(), 0.5, init="nope")


def test_popup_straight_through_gradients_reach_scores_not_weights(fmnist_small) -> None:
    model = small_cnn().eval()
    x, y = fmnist_small[0][:32], fmnist_small[1][:32]
    for p in model.parameters():
        p.requires_grad_(False)
    scores = add_popup_masks(model, 0.5, seed=0)
    F.cross_entropy(model(x), y).backward()
    for name, s in zip(maskable_layers(model), scores):
        assert s.grad is not None, name
        assert torch.isfinite(s.grad).all()
        # straight-through: also the scores of pruned weights get a gradient
        mask = popup_binary_masks(model)[name]
        assert (s.grad[~mask] != 0).any(), name
        assert (s.grad[mask] != 0).any(), name
    for p in model.parameters():
        if not any(p is s for s in scores):
            assert p.grad is None
    # the straight-through gradient of s is dL/d(W_eff) ⊙ W ⊙ sign(s): check it on the classifier
    fc = model.fc
    w = fc.parametrizations.weight.original
    s = fc.parametrizations.weight[0].scores
    with torch.no_grad():
        feats = model.features(model.normalize(x))
        prob = (feats @ fc.weight.T + fc.bias).softmax(1)
        prob[torch.arange(len(y)), y] -= 1  # dCE/dlogits
        grad_weff = prob.T @ feats / len(y)
        # autograd sums the batch in its own order: a sum of N terms (their softmax rounded C + 2 times),
        # whose signs cancel, so relative to Σ|terms|; then × w and × sign
        magnitude = prob.abs().T @ feats.abs() / len(y)
    tol = f32_tol(magnitude.numpy(), len(y) + prob.shape[1] + 4) * w.detach().abs().numpy()
    assert_within(s.grad.numpy(), (grad_weff * w * s.sign()).detach().numpy(), tol)


def test_popup_learning_step_changes_mask(fmnist_small) -> None:
    model = small_cnn().eval()
    x, y = fmnist_small[0][:64], fmnist_small[1][:64]
    for p in model.parameters():
        p.requires_grad_(False)
    scores = add_popup_masks(model, 0.5, seed=0)
    before = popup_binary_masks(model)
    opt = torch.optim.SGD(scores, lr=5.0)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    after = popup_binary_masks(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for k, m in after.items():
        assert int(m.sum()) == round(0.5 * m.numel())
    remove_masks(model)


# ------------------------------------------------------------------------- torchvision resnet18

def test_masks_on_torchvision_resnet18(resnet18: nn.Module) -> None:
    model = resnet18
    x = torch.rand(2, 1, 14, 14, generator=torch.Generator().manual_seed(0))
    layers = maskable_layers(model)
    assert len(layers) == 21  # 20 convs (incl. 3 downsample 1x1) + fc
    reference = state_copy(model)
    with torch.no_grad():
        before = model(x)
    masks = random_layer_masks(model, 0.9, seed=0)
    for name, mask in masks.items():
        assert int(mask.sum()) == round(0.9 * mask.numel()), name
    with masked(model, masks):
        for name, frac in kept_fraction(model).items():
            assert frac == pytest.approx(float(masks[name].float().mean()), abs=1e-9)
        with torch.no_grad():
            assert not torch.allclose(model(x), before)
    assert no_parametrizations(model)
    assert_state_equal(model, reference)

    scores = add_popup_masks(model, 0.7, seed=0)
    try:
        assert len(scores) == 21
        for name, m in popup_binary_masks(model).items():
            assert int(m.sum()) == round(0.7 * m.numel()), name
    finally:
        remove_masks(model)
    assert no_parametrizations(model)
    assert_state_equal(model, reference)
    with torch.no_grad():
        assert torch.equal(model(x), before)
