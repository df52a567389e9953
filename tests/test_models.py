"""Model registry: unknown constructor arguments are a user's mistake (one line), not a TypeError."""

from __future__ import annotations

import pytest
from conftest import small_cnn

from unleash_ood.errors import UserError
from unleash_ood.models import build_model
from unleash_ood.models.checkpoint import save_model


@pytest.mark.parametrize("arch, kwargs, bad, accepted", [
    ("small_cnn", {"width": 8, "foo": 1}, "foo", "width"),
    ("densenet100", {"depth": 40}, "depth", "dropout"),
    ("wrn40_2", {"widen": 3, "dropout": 0.0}, "widen", "mean"),
    ("torchvision:resnet18", {"pretrained": True}, "pretrained", "small_input"),
])
def test_unknown_model_kwargs_name_the_bad_and_the_accepted_keys(arch, kwargs, bad, accepted) -> None:
    with pytest.raises(UserError, match=rf"does not take {bad}\b.*accepts: .*\b{accepted}\b"):
        build_model(arch, 10, **kwargs)


def test_known_kwargs_still_build() -> None:
    assert build_model("small_cnn", 10, width=4, in_channels=1).fc.out_features == 10


def test_checkpoint_metadata_with_unknown_kwargs_is_a_user_error(tmp_path) -> None:
    from unleash_ood.models.loading import load_checkpoint

    path = save_model(tmp_path / "m.safetensors", small_cnn(),
                      {"arch": "small_cnn", "model_kwargs": {"width": 8, "depthh": 3}, "num_classes": 10})
    with pytest.raises(UserError, match="depthh"):
        load_checkpoint(path, 10)
