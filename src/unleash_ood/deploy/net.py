"""The deployed network: classifier logits and the OOD score of one input batch, as one ``nn.Module``.

For UMAP the class comes from the unmasked classifier and the score from the masked network (the mask
covers every conv and linear layer, so the two share no layer: two forward passes). The mask is
materialized into a copy of the weights (``W ⊙ m``, computed by the evaluation's own parametrization,
:class:`~unleash_ood.masking.FixedMask`, so even its memory layout is the one the evaluation convolves with),
so there are no mask ops at inference and the ONNX graph is plain.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..detectors.base import Detector
from ..errors import UserError
from ..eval.forward import classifier_layer, to_model_input
from ..masking import FixedMask, maskable_layers


def materialize_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` whose masked layers hold ``W ⊙ m`` as plain weights.

    The product is :class:`FixedMask`'s output itself, strides included: writing it into the weight in
    place would keep the weight's layout, and a layer with one input channel (ambiguous under channels_last)
    would then run another convolution kernel than the parametrized evaluation — a different summation
    order, float32 features ~1 ulp apart, which the Mahalanobis quadratic form amplifies.
    """
    out = copy.deepcopy(model)
    layers = maskable_layers(out)
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        raise UserError(f"mask names layers the model does not have: {', '.join(unknown[:5])}")
    with torch.no_grad():
        for name, mask in masks.items():
            weight = layers[name].weight
            if tuple(mask.shape) != tuple(weight.shape):
                raise UserError(f"mask for layer {name!r} has shape {tuple(mask.shape)}, "
                                f"weight has {tuple(weight.shape)}")
            product = FixedMask(mask.to(weight.device))(weight)  # what apply_masks computes per forward
            layers[name].weight = nn.Parameter(product, requires_grad=weight.requires_grad)
    return out


def normalization_of(model: nn.Module) -> dict:
    """What the model does to its [0, 1] input: the first submodule with ``mean``/``std`` buffers."""
    for name, module in model.named_modules():
        mean, std = getattr(module, "mean", None), getattr(module, "std", None)
        if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor):
            return {"inside_model": True, "module": name, "op": "(x - mean) / std",
                    "mean": mean.flatten().tolist(), "std": std.flatten().tolist()}
    return {"inside_model": False, "op": "none found: the model takes [0, 1] inputs as they are"}


class ScoringNet(nn.Module):
    """``x → (logits, score)``: logits of ``classifier``, score of ``detector`` on ``scorer``'s pass.

    ``scorer`` is ``classifier`` itself (one pass) unless a mask was applied (UMAP: two passes).
    Detectors with their own input pass (ODIN) are scored by :meth:`outputs`, not by ``forward``.
    """

    def __init__(self, classifier: nn.Module, scorer: nn.Module, detector: Detector) -> None:
        super().__init__()
        self.classifier, self.scorer, self.detector = classifier.eval(), scorer.eval(), detector
        self.head = classifier_layer(scorer)

    @property
    def two_passes(self) -> bool:
        return self.scorer is not self.classifier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats: list[torch.Tensor] = []
        handle = self.head.register_forward_pre_hook(lambda _m, inputs: feats.append(inputs[0]))
        try:
            scorer_logits = self.scorer(x)
        finally:
            handle.remove()
        logits = self.classifier(x) if self.two_passes else scorer_logits
        score = self.detector.score(scorer_logits.float(), feats[0].flatten(1).float())
        return logits.float(), score

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and scores of a [0, 1] batch on the CPU (float64 scores), in eval mode."""
        x = to_model_input(x, self.classifier)
        if self.detector.needs_inputs:
            with torch.no_grad():
                logits = self.classifier(x).float()
            score = self.detector.score_inputs(self.scorer, x)
        else:
            with torch.no_grad():
                logits, score = self(x)
        return logits.cpu(), score.detach().double().cpu()

    def to(self, *args, **kwargs) -> ScoringNet:  # type: ignore[override]
        """Move both networks and the detector's statistics (score functions follow their inputs' device)."""
        super().to(*args, **kwargs)
        device = next(self.classifier.parameters()).device
        self.detector.stats = {k: v.to(device) for k, v in self.detector.stats.items()}
        return self
