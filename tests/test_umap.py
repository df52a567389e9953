"""UMAP: learning a popup mask with the flooding objective leaves the model untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_state_equal, state_copy
from torch import nn
from torch.nn.utils import parametrize

from unleash_ood.config import OptimConfig
from unleash_ood.data.batches import TensorBatches
from unleash_ood.errors import UserError
from unleash_ood.masking import apply_masks, maskable_layers, masked, remove_masks, topk_mask
from unleash_ood.methods.um import mean_cross_entropy
from unleash_ood.methods.umap import learn_umap_mask
from unleash_ood.models import build_model


def no_parametrizations(model: nn.Module) -> bool:
    return not any(parametrize.is_parametrized(m) for m in model.modules())


def magnitude_masks(model: nn.Module, keep_ratio: float) -> dict[str, torch.Tensor]:
    return {name: topk_mask(m.weight.detach().abs(), keep_ratio).bool() for name, m in maskable_layers(model).items()}


@pytest.fixture
def batches(fmnist_small) -> TensorBatches:
    return TensorBatches(fmnist_small[0], fmnist_small[1], batch_size=64, shuffle=True, seed=0)


def test_umap_leaves_model_untouched(trained_cnn, batches, fmnist_small) -> None:
    model = trained_cnn
    model.train()  # a model handed over in train mode: BN would update its statistics if not frozen
    # mixed requires_grad flags must come back exactly
    model.features[0][1].weight.requires_grad_(False)
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    reference = state_copy(model)
    param_ids = sorted(id(p) for p in model.parameters())
    epochs_seen = []
    masks, history = learn_umap_mask(model, batches, zeta=1.0, keep_ratio=0.8,
                                     cfg=OptimConfig(epochs=2, lr=0.1, batch_size=64),
                                     on_epoch_end=lambda e, r: epochs_seen.append(e))
    assert epochs_seen == [1, 2] and len(history) == 2
    assert_state_equal(model, reference)  # incl. BatchNorm running_mean/var and num_batches_tracked
    assert any("running_mean" in k for k in reference)
    assert no_parametrizations(model)
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert sorted(id(p) for p in model.parameters()) == param_ids
    # exact keep fraction per layer, every maskable layer
    layers = maskable_layers(model)
    assert set(masks) == set(layers)
    for name, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == layers[name].weight.shape
        assert int(mask.sum()) == round(0.8 * mask.numel()), name

    # apply: outputs change; remove: outputs come back exactly
    model.eval()
    x = fmnist_small[2][:64]
    with torch.no_grad():
        plain = model(x)
        apply_masks(model, masks)
        with_mask = model(x)
        remove_masks(model)
        again = model(x)
    assert not torch.allclose(plain, with_mask)
    assert torch.equal(plain, again)
    assert_state_equal(model, reference)


def test_umap_restores_model_when_training_fails(trained_cnn, batches) -> None:
    reference = state_copy(trained_cnn)

    def fail(epoch, record):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        learn_umap_mask(trained_cnn, batches, zeta=0.5, keep_ratio=0.9, cfg=OptimConfig(epochs=1, lr=0.1),
                        on_epoch_end=fail)
    assert no_parametrizations(trained_cnn)
    assert all(p.requires_grad for p in trained_cnn.parameters())
    assert_state_equal(trained_cnn, reference)


def test_umap_flooding_moves_masked_ce_toward_zeta(trained_cnn, batches, fmnist_small) -> None:
    x, y = fmnist_small[0], fmnist_small[1]
    eval_batches = TensorBatches(x, y, batch_size=256)
    keep = 0.8
    with masked(trained_cnn, magnitude_masks(trained_cnn, keep)):
        initial = mean_cross_entropy(trained_cnn, eval_batches)
    cfg = OptimConfig(epochs=2, lr=0.2, batch_size=64, weight_decay=0.0)

    up_masks, up_hist = learn_umap_mask(trained_cnn, batches, zeta=initial + 2.0, keep_ratio=keep, cfg=cfg,
                                        init="magnitude")
    with masked(trained_cnn, up_masks):
        up = mean_cross_entropy(trained_cnn, eval_batches)

    down_masks, down_hist = learn_umap_mask(trained_cnn, batches, zeta=0.0, keep_ratio=keep, cfg=cfg,
                                            init="magnitude")
    with masked(trained_cnn, down_masks):
        down = mean_cross_entropy(trained_cnn, eval_batches)

    assert up > initial + 0.2, (initial, up)
    assert down < initial, (initial, down)
    assert up_hist[-1]["train_ce"] > up_hist[0]["train_ce"]
    # flooding engaged: the masked CE started below ζ = initial + 2, so steps ascended; never at ζ = 0
    assert up_hist[0]["ce_below_zeta"] > 0.5 and all(0 <= h["ce_below_zeta"] <= 1 for h in up_hist)
    assert [h["ce_below_zeta"] for h in down_hist] == [0.0, 0.0]
    # the magnitude-initialised mask at step 0 is the magnitude mask, and learning moved it
    init_masks = magnitude_masks(trained_cnn, keep)
    assert any(not torch.equal(up_masks[k], init_masks[k]) for k in init_masks)


def test_umap_invalid_arguments(trained_cnn, batches) -> None:
    reference = state_copy(trained_cnn)
    for kwargs in ({"zeta": -1.0, "keep_ratio": 0.8}, {"zeta": float("nan"), "keep_ratio": 0.8},
                   {"zeta": 0.5, "keep_ratio": 0.0}, {"zeta": 0.5, "keep_ratio": 1.2}):
        with pytest.raises(UserError):
            learn_umap_mask(trained_cnn, batches, cfg=OptimConfig(epochs=1), **kwargs)
    assert no_parametrizations(trained_cnn)
    assert all(p.requires_grad for p in trained_cnn.parameters())
    assert_state_equal(trained_cnn, reference)


def test_umap_bad_init_restores_requires_grad(trained_cnn, batches) -> None:
    """An invalid score init is a UserError, and the model must come back trainable."""
    reference = state_copy(trained_cnn)
    with pytest.raises(UserError, match="init"):
        learn_umap_mask(trained_cnn, batches, zeta=0.5, keep_ratio=0.8, cfg=OptimConfig(epochs=1), init="bad")
    assert no_parametrizations(trained_cnn)
    assert all(p.requires_grad for p in trained_cnn.parameters())
    assert_state_equal(trained_cnn, reference)


def test_umap_on_torchvision_resnet18(fmnist_small) -> None:
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", 10, small_input=True, in_channels=1)
    # 128 images, downsampled to 14×14 to keep a resnet18 epoch at ~1 s on CPU
    x = F.avg_pool2d(fmnist_small[0][:128], 2)
    y = fmnist_small[1][:128]
    model.train()
    with torch.no_grad():  # give BN non-default running statistics
        model(x)
    model.eval()
    reference = state_copy(model)
    masks, history = learn_umap_mask(model, TensorBatches(x, y, batch_size=64), zeta=0.5, keep_ratio=0.9,
                                     cfg=OptimConfig(epochs=1, lr=0.1, batch_size=64))
    assert len(history) == 1
    assert len(masks) == 21
    for name, mask in masks.items():
        assert int(mask.sum()) == round(0.9 * mask.numel()), name
    assert no_parametrizations(model)
    assert_state_equal(model, reference)
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        plain = model(x[:8])
        with masked(model, masks):
            assert not torch.allclose(model(x[:8]), plain)
        assert torch.equal(model(x[:8]), plain)
