"""Fine-tuning with auxiliary outliers: paired batches, the one-pass step loss, OE/Energy/POEM × {none, UM, UMAP}."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from unleash_ood.config import OptimConfig
from unleash_ood.data.batches import TensorBatches
from unleash_ood.errors import UserError
from unleash_ood.eval.forward import collect_outputs
from unleash_ood.methods.outlier_training import (
    METHODS,
    WITHS,
    FinetuneSettings,
    PairedBatches,
    finetune_with_outliers,
    outlier_step,
    run_name,
)
from unleash_ood.methods.outliers import energy_loss, oe_loss, oe_regularizer
from unleash_ood.methods.train import train
from unleash_ood.methods.um import flooding_loss
from unleash_ood.models.cnn import SmallCNN

SHAPE = (1, 16, 16)
NUM_CLASSES = 4


def id_data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable ID task: class k is a bright 4×8 bar in quadrant-row k, on faint noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % NUM_CLASSES
    x = 0.1 * torch.rand(n, *SHAPE, generator=g)
    for k in range(NUM_CLASSES):
        x[y == k, :, 4 * k:4 * k + 4, 4:12] += 0.8
    return x.clamp(0, 1), y


def aux_pool(n: int = 256, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SmallCNN(NUM_CLASSES, width=8, mean=(0.5,), std=(0.5,))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- PairedBatches --------------------------------------------------------------------------------

def test_paired_batches_shapes_lengths_and_aux_batch_size():
    x, y = id_data(100)
    aux = aux_pool(50)
    paired = PairedBatches(TensorBatches(x, y, batch_size=32, shuffle=True), aux, aux_batch_size=20, seed=3)
    assert len(paired) == 4 and paired.aux_per_epoch == 80
    batches = list(paired)
    assert len(batches) == 4
    assert [len(b[0][0]) for b in batches] == [32, 32, 32, 4]
    for (x_in, y_in), x_out in batches:
        assert x_in.shape[1:] == SHAPE and len(y_in) == len(x_in)
        assert x_out.shape == (20, *SHAPE)
    # Default aux batch = the ID batch size.
    default = PairedBatches(TensorBatches(x, y, batch_size=32), aux)
    assert default.aux_batch_size == 32
    assert all(x_out.shape == (32, *SHAPE) for _, x_out in default)


def _rows(aux: torch.Tensor, x_out: torch.Tensor) -> list[int]:
    """Pool indices of the rows of ``x_out`` (the pool's rows are distinct)."""
    return [int((aux == row).flatten(1).all(1).nonzero()) for row in x_out]


def test_paired_batches_cycle_through_permutations_and_reshuffle_each_epoch():
    x, y = id_data(100)
    aux = aux_pool(50)
    paired = PairedBatches(TensorBatches(x, y, batch_size=32), aux, aux_batch_size=20, seed=0)
    epoch1 = [i for _, x_out in paired for i in _rows(aux, x_out)]
    assert len(epoch1) == 80
    assert sorted(epoch1[:50]) == list(range(50))  # first pass: a permutation of the whole pool
    assert len(set(epoch1[50:])) == 30  # then a fresh permutation, no repeats within it
    epoch2 = [i for _, x_out in paired for i in _rows(aux, x_out)]
    assert epoch2 != epoch1  # re-iterable, reshuffled


def test_paired_batches_subset_and_swap():
    x, y = id_data(64)
    aux = aux_pool(40)
    subset = torch.tensor([3, 7, 11, 19, 23])
    paired = PairedBatches(TensorBatches(x, y, batch_size=16), aux, aux_batch_size=8, indices=subset)
    used = {i for _, x_out in paired for i in _rows(aux, x_out)}
    assert used == set(subset.tolist())
    paired.set_indices(torch.tensor([0, 1]))
    assert {i for _, x_out in paired for i in _rows(aux, x_out)} == {0, 1}
    with pytest.raises(UserError):
        paired.set_indices(torch.tensor([40]))
    with pytest.raises(UserError):
        PairedBatches(TensorBatches(x, y, batch_size=16), aux, aux_batch_size=0)


# --- the step loss --------------------------------------------------------------------------------

def _mlp_with_batchnorm() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.BatchNorm1d(5)).train()


def _hand_batch():
    g = torch.Generator().manual_seed(0)
    x_in, y_in = torch.randn(6, 1, 4, 4, generator=g), torch.tensor([0, 1, 2, 3, 4, 0])
    x_out = 3 * torch.randn(10, 1, 4, 4, generator=g)
    return (x_in, y_in), x_out


@pytest.mark.parametrize("zeta", [None, 5.0, 0.01])
@pytest.mark.parametrize("method", METHODS)
def test_outlier_step_equals_manual_concatenated_forward(method, zeta):
    model = _mlp_with_batchnorm()
    batch = _hand_batch()
    (x_in, y_in), x_out = batch
    logits = model(torch.cat([x_in, x_out]))  # one pass: BatchNorm normalizes over ID and outliers
    logits_in, logits_out = logits[:6], logits[6:]
    ce = torch.nn.functional.cross_entropy(logits_in, y_in)
    id_loss = None if zeta is None else flooding_loss(ce, zeta)
    if method == "oe":
        expected = oe_loss(logits_in, y_in, logits_out, lam=0.5, id_loss=id_loss)
    else:
        expected = energy_loss(logits_in, y_in, logits_out, weight=0.1, m_in=-25.0, m_out=-7.0, id_loss=id_loss)
    objective, got_ce = outlier_step(method, zeta)(model, batch)
    assert objective.item() == pytest.approx(expected.item(), rel=1e-6)
    assert got_ce.item() == pytest.approx(ce.item(), rel=1e-6) and not got_ce.requires_grad
    # Separate ID / outlier passes would give other logits under BatchNorm in train mode.
    assert not torch.allclose(model(x_in), logits_in)


def test_outlier_step_flooding_reverses_the_id_gradient_below_zeta():
    model = _mlp_with_batchnorm()
    batch = _hand_batch()
    grads = {}
    for zeta in (None, 100.0):  # ζ far above the CE: the ID term is ascended
        model.zero_grad()
        objective, ce = outlier_step("oe", zeta, lam=0.0)(model, batch)
        objective.backward()
        grads[zeta] = model[1].weight.grad.clone()
        if zeta is not None:
            assert objective.item() == pytest.approx(2 * zeta - ce.item(), rel=1e-6)
    assert torch.allclose(grads[100.0], -grads[None], atol=1e-7)


def test_outlier_step_hyperparameters_are_used():
    model = _mlp_with_batchnorm()
    batch = _hand_batch()
    base = outlier_step("oe", lam=0.0)(model, batch)[0]
    assert outlier_step("oe", lam=2.0)(model, batch)[0] > base
    plain = outlier_step("energy", energy_weight=0.0)(model, batch)[0]
    assert plain.item() == pytest.approx(base.item(), rel=1e-6)
    with pytest.raises(UserError):
        outlier_step("atom")


# --- fine-tuning ----------------------------------------------------------------------------------

FAST = OptimConfig(epochs=1, lr=0.01, batch_size=64)


@pytest.mark.parametrize("with_", WITHS)
@pytest.mark.parametrize("method", METHODS)
def test_finetune_with_outliers_runs_every_method_and_variant(method, with_):
    x, y = id_data(256)
    aux = aux_pool(256)
    model = tiny_cnn()
    before = state(model)
    zeta = None if with_ == "none" else 0.5
    result = finetune_with_outliers(model, TensorBatches(x, y, batch_size=64, shuffle=True), aux, method, with_,
                                    zeta, FinetuneSettings(FAST, keep_ratio=0.8, aux_batch_size=32, seed=0))
    assert len(result["history"]) == 1 and result["method"] == method and result["with"] == with_
    after = state(model)
    if with_ == "umap":
        assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN buffers bit-identical
        assert all(p.requires_grad for p in model.parameters())
        assert result["masks"] and all(m.dtype == torch.bool for m in result["masks"].values())
        fractions = [m.float().mean().item() for m in result["masks"].values()]
        assert all(f == pytest.approx(0.8, abs=0.02) for f in fractions)
    else:
        assert result["masks"] is None
        assert any(not torch.equal(before[k], after[k]) for k in before)
    aux_info = result["aux"]
    assert aux_info["seed"] == 0 and aux_info["pool_size"] == 256 and aux_info["aux_batch_size"] == 32
    if method == "poem":
        assert len(result["selected"]) == 1
        # One epoch uses 4 × 32 = 128 outliers; the pool of 256 caps the selection at 256 // 4 = 64.
        assert aux_info["num_select"] == 64 and aux_info["num_candidates"] == 256
        assert torch.equal(aux_info["indices"], torch.unique(result["selected"][0]))
    else:
        assert result["selected"] is None
        assert torch.equal(aux_info["indices"], torch.arange(256))
    assert run_name(method, with_) == (method if with_ == "none" else f"{method}_{with_}")


def test_finetune_checks_zeta_and_names():
    x, y = id_data(64)
    batches = TensorBatches(x, y, batch_size=32)
    with pytest.raises(UserError, match="zeta"):
        finetune_with_outliers(tiny_cnn(), batches, aux_pool(64), "oe", "um", None, FinetuneSettings(FAST))
    with pytest.raises(UserError, match="zeta"):
        finetune_with_outliers(tiny_cnn(), batches, aux_pool(64), "oe", "none", 0.3, FinetuneSettings(FAST))
    with pytest.raises(UserError):
        finetune_with_outliers(tiny_cnn(), batches, aux_pool(64), "oe", "both", 0.3, FinetuneSettings(FAST))
    with pytest.raises(UserError, match="POEM"):
        finetune_with_outliers(tiny_cnn(), batches, aux_pool(64), "poem",
                               settings=FinetuneSettings(FAST, poem={"k": 3}))


def test_poem_reselects_every_epoch():
    x, y = id_data(256)
    aux = aux_pool(512)
    model = tiny_cnn()
    seen_subsets = []
    result = finetune_with_outliers(model, TensorBatches(x, y, batch_size=64, shuffle=True), aux, "poem",
                                    settings=FinetuneSettings(OptimConfig(epochs=3, lr=0.01), aux_batch_size=16,
                                                              seed=1, poem={"candidate_factor": 4}),
                                    on_epoch_end=lambda e, r: seen_subsets.append(e))
    selected = result["selected"]
    assert seen_subsets == [1, 2, 3] and len(selected) == 3
    for idx in selected:
        assert len(idx) == 64 and len(torch.unique(idx)) == 64  # one epoch uses 4 × 16 = 64 outliers
        assert int(idx.min()) >= 0 and int(idx.max()) < 512
    assert not torch.equal(selected[0], selected[1]) and not torch.equal(selected[1], selected[2])
    assert torch.equal(result["aux"]["indices"], torch.unique(torch.cat(selected)))


def test_poem_selection_is_reproducible():
    x, y = id_data(128)
    aux = aux_pool(256)
    runs = [finetune_with_outliers(tiny_cnn(), TensorBatches(x, y, batch_size=64, shuffle=True), aux, "poem",
                                   settings=FinetuneSettings(OptimConfig(epochs=2, lr=0.01), aux_batch_size=16,
                                                             seed=5))["selected"]
            for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_oe_finetune_lowers_the_oe_regularizer_on_the_aux_pool():
    x, y = id_data(256)
    aux = aux_pool(256)
    base = tiny_cnn()
    train(base, TensorBatches(x, y, batch_size=32, shuffle=True), OptimConfig(epochs=6, lr=0.05), desc="pretrain")

    def reg(model: nn.Module) -> float:
        return oe_regularizer(collect_outputs(model, TensorBatches(aux, batch_size=256)).logits).item()

    def acc(model: nn.Module) -> float:
        out = collect_outputs(model, TensorBatches(x, y, batch_size=256))
        return (out.logits.argmax(1) == out.labels).float().mean().item()

    assert acc(base) > 0.9
    tuned = copy.deepcopy(base)
    finetune_with_outliers(tuned, TensorBatches(x, y, batch_size=32, shuffle=True), aux, "oe",
                           settings=FinetuneSettings(OptimConfig(epochs=3, lr=0.01), seed=0))
    assert reg(tuned) < reg(base) - 0.05
    assert acc(tuned) > 0.9


def test_umap_restores_the_model_when_training_fails():
    x, y = id_data(64)
    aux = aux_pool(64)
    aux[:] = float("nan")  # NaN outliers: the objective is NaN at the first step
    model = tiny_cnn()
    before = state(model)
    with pytest.raises(UserError, match="loss became"):
        finetune_with_outliers(model, TensorBatches(x, y, batch_size=32), aux, "oe", "umap", 0.5,
                               FinetuneSettings(FAST))
    after = state(model)
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())


# --- the run directory ----------------------------------------------------------------------------

def test_run_outlier_methods_writes_a_run(tmp_path, fmnist_full):
    from unleash_ood.config import DemoConfig
    from unleash_ood.models.checkpoint import load_masks, load_tensors, save_model
    from unleash_ood.run.outliers import run_outlier_methods

    cfg = DemoConfig.model_validate({
        "data": {"train_size": 256, "val_size": 64, "test_size": 128, "ood": ["gaussian", "photos"],
                 "ood_size": 64, "val_ood_size": 64},
        "model": {"arch": "small_cnn", "kwargs": {"width": 8}}, "scores": ["MSP", "Energy"],
        "um": {"zeta_draws": 1},
        "outliers": {"methods": ["oe", "poem"], "withs": ["none", "umap"], "aux_size": 256, "aux_batch_size": 64,
                     "epochs": 1}})
    torch.manual_seed(0)
    base = SmallCNN(10, width=8)
    ckpt = save_model(tmp_path / "base.safetensors", base,
                      {"arch": "small_cnn", "model_kwargs": {"width": 8}, "num_classes": 10})
    out = tmp_path / "run"
    records = run_outlier_methods(cfg, out, ckpt).records
    names = ["base", "oe", "oe_umap", "poem", "poem_umap"]
    assert list(dict.fromkeys(r["model"] for r in records)) == names
    assert all(r["aux"] == (r["model"] != "base") for r in records)
    for f in ("results.md", "results.json", "results.csv", "summary.json", "outlier_log.json", "zeta.json",
              "checkpoints/base.safetensors", "checkpoints/oe.safetensors", "checkpoints/poem.safetensors",
              "checkpoints/oe_umap_mask.safetensors", "checkpoints/poem_umap_mask.safetensors"):
        assert (out / f).is_file(), f
    masks, meta = load_masks(out / "checkpoints" / "oe_umap_mask.safetensors")
    assert meta["kind"] == "oe_umap_mask" and meta["with"] == "umap" and masks
    selected, _ = load_tensors(out / "checkpoints" / "poem_selected.safetensors")
    assert list(selected) == ["epoch001"]


# --- BatchNorm share of auxiliary images ----------------------------------------------------------

def _bn_batch_sizes(settings: FinetuneSettings | None, id_batch: int) -> list[int]:
    """Batch sizes the first BatchNorm layer sees during one fine-tuning step (one ID batch)."""
    x, y = id_data(id_batch)
    model = tiny_cnn()
    bn = next(m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    seen: list[int] = []
    bn.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    finetune_with_outliers(model, TensorBatches(x, y, batch_size=id_batch), aux_pool(256), "oe", settings=settings)
    return seen


def test_default_aux_batch_gives_batchnorm_half_id_half_auxiliary():
    # one epoch of one ID batch: the step's forward, then nothing else through BN in train mode
    seen = _bn_batch_sizes(FinetuneSettings(OptimConfig(epochs=1, lr=0.01)), id_batch=64)
    assert seen == [128]  # 64 ID + 64 auxiliary: a 50% auxiliary share
    assert _bn_batch_sizes(None, id_batch=32)[:1] == [64]  # the library default (10 epochs), first step
    # a larger ratio stays available, and BatchNorm is then dominated by auxiliary images
    big = _bn_batch_sizes(FinetuneSettings(OptimConfig(epochs=1, lr=0.01), aux_batch_size=192), id_batch=64)
    assert big == [256] and 192 / big[0] == 0.75


def test_outlier_recipes_default_to_the_id_batch_size():
    from unleash_ood.config import DemoConfig, build_config
    from unleash_ood.run.outliers import finetune_settings

    for name in ("cifar10_densenet100_outliers", "cifar100_densenet100_outliers"):
        cfg = build_config(name)
        assert cfg.outliers.aux_batch_size is None, name
        assert finetune_settings(cfg, "none").aux_batch_size is None  # PairedBatches: the ID batch size
    assert DemoConfig().outliers.aux_batch_size is None
