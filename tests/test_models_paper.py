"""Paper architectures (DenseNet-BC-100, WRN-40-{2,4}) and the torchvision wrapper: sizes, heads, one SGD step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unleash_ood.errors import UserError
from unleash_ood.models.densenet import DenseNetBC, densenet100
from unleash_ood.models.tv import TorchvisionClassifier, torchvision_model
from unleash_ood.models.wrn import WideResNet, wrn40_2, wrn40_4

FACTORIES = {"densenet100": densenet100, "wrn40_4": wrn40_4, "wrn40_2": wrn40_2}
PARAM_RANGES = {"densenet100": (0.75e6, 0.82e6), "wrn40_4": (8.8e6, 9.0e6), "wrn40_2": (2.2e6, 2.3e6)}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _last_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _penultimate(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the input of the last nn.Linear, captured the way the toolkit does (forward pre-hook)."""
    captured: list[torch.Tensor] = []
    handle = _last_linear(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, captured[0]


@pytest.fixture(scope="module")
def paper_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: factory(num_classes=10) for name, factory in FACTORIES.items()}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_param_counts(paper_models: dict[str, nn.Module], name: str) -> None:
    lo, hi = PARAM_RANGES[name]
    assert lo <= _n_params(paper_models[name]) <= hi


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_shape_and_penultimate_hook(paper_models: dict[str, nn.Module], name: str) -> None:
    model = paper_models[name].eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits, feats = _penultimate(model, x)
        direct = model.forward_features(x)
    assert logits.shape == (2, 10)
    assert _last_linear(model) is model.fc
    assert feats.shape == (2, model.fc.in_features) == (2, model.num_features)
    torch.testing.assert_close(feats, direct)


def test_num_classes_and_constructor_args() -> None:
    model = densenet100(num_classes=100)
    assert isinstance(model, DenseNetBC) and model.fc.out_features == 100
    assert isinstance(wrn40_2(num_classes=100, dropout=0.0), WideResNet)
    with pytest.raises(ValueError):
        DenseNetBC(depth=99)
    with pytest.raises(ValueError):
        WideResNet(depth=41)


def test_wrn_state_dict_layout_matches_reference_structure() -> None:
    """Only renames separate wrn40_2 from the OOD-literature WRN: one projecting shortcut per stage, same names."""
    keys = wrn40_2(num_classes=10).state_dict().keys()
    assert {k for k in keys if "shortcut" in k} == {f"block{i}.0.shortcut.weight" for i in (1, 2, 3)}
    assert {"conv1.weight", "bn1.weight", "fc.weight", "fc.bias", "block3.5.conv2.weight"} <= set(keys)
    assert not any("normalize" in k for k in keys)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_torchvision_resnet18_small_input(shape: tuple[int, int, int]) -> None:
    model = torchvision_model("resnet18", num_classes=10, small_input=True, in_channels=shape[0]).eval()
    assert isinstance(model, TorchvisionClassifier)
    with torch.no_grad():
        logits, feats = _penultimate(model, torch.rand(2, *shape))
    assert logits.shape == (2, 10)
    assert _last_linear(model) is model.net.fc is model.classifier
    assert feats.shape == (2, model.classifier.in_features) == (2, 512)
    assert model.net.conv1.stride == (1, 1) and model.net.conv1.in_channels == shape[0]


def test_torchvision_in_channels_without_small_input() -> None:
    model = torchvision_model("resnet18", num_classes=5, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 64, 64)).shape == (2, 5)


def test_torchvision_errors() -> None:
    with pytest.raises(UserError, match="list_models"):
        torchvision_model("no_such_net", num_classes=10)
    with pytest.raises(UserError):
        torchvision_model("squeezenet1_0", num_classes=10)  # convolutional head, no nn.Linear classifier
    with pytest.raises(UserError):
        torchvision_model("mobilenet_v2", num_classes=10, small_input=True)
    with pytest.raises(UserError):
        torchvision_model("resnet18", num_classes=10, in_channels=1, mean=(0.1, 0.2, 0.3))


@pytest.mark.parametrize("builder", [
    lambda: densenet100(num_classes=10, dropout=0.2),
    lambda: wrn40_2(num_classes=10),
    lambda: torchvision_model("resnet18", num_classes=10, small_input=True),
], ids=["densenet100", "wrn40_2", "tv_resnet18"])
def test_one_sgd_step(builder) -> None:
    torch.manual_seed(0)
    model = builder().train()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = nn.functional.cross_entropy(model(x), y)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.grad is not None and torch.isfinite(c.weight.grad).all() for c in convs)
    assert all(c.weight.grad.abs().sum() > 0 for c in convs)
    opt.step()
    after = nn.functional.cross_entropy(model(x), y)
    assert torch.isfinite(after)
