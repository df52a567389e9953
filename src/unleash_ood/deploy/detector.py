"""``OODDetector``: a loaded bundle that answers, per image, class, probability, score and in/out.

>>> det = OODDetector.load("bundle")            # or unleash_ood.OODDetector.load("bundle", score="Energy")
>>> p = det.predict(images)                     # float N×C×H×W in [0, 1] (or uint8 N×H×W[×C] arrays)
>>> p.labels, p.probs, p.scores, p.is_ood
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.images import to_image_format
from ..detectors.base import build_detector
from ..errors import UserError
from ..models import build_model
from ..models.checkpoint import load_into, load_masks, load_tensors
from .bundle import MASK_FILE, ONNX_FILE, STATS_FILE, WEIGHTS_FILE, BundleSpec, read_spec
from .net import ScoringNet, materialize_masks

BATCH = 512


class Engine(Protocol):
    """What runs the network: eager PyTorch (:class:`~.net.ScoringNet`) or onnxruntime."""

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def to(self, device: torch.device | str): ...


@dataclass
class Predictions:
    """Per image: predicted class, its softmax probability, the OOD score (higher = ID) and the verdict."""

    labels: np.ndarray  # int64
    probs: np.ndarray  # float64
    scores: np.ndarray  # float64
    is_ood: np.ndarray  # bool: score < threshold

    def __len__(self) -> int:
        return len(self.labels)


class OODDetector:
    """A deployed classifier + OOD score + threshold (see :mod:`unleash_ood.deploy`)."""

    def __init__(self, spec: BundleSpec, engine: Engine) -> None:
        self.spec, self.engine = spec, engine

    @classmethod
    def load(cls, path: str | Path, score: str | None = None) -> OODDetector:
        """Load a bundle written by ``unleash-ood export`` (either format); never executes code from it.

        With ``score`` (e.g. ``"Energy"``), a bundle holding another detector is refused."""
        root = Path(path)
        spec = read_spec(root)
        if score is not None and spec.score.name != score:
            raise UserError(f"bundle {path} holds a {spec.score.name} detector, not {score}")
        engine = OnnxEngine(root / ONNX_FILE, spec) if spec.format == "onnx" else load_torch_engine(root, spec)
        det = cls(spec, engine)
        det.check_runs(root)
        return det

    @property
    def threshold(self) -> float:
        return self.spec.calibration.threshold

    @property
    def classes(self) -> list[str]:
        return self.spec.classes

    def to(self, device: torch.device | str) -> OODDetector:
        self.engine.to(device)
        return self

    def check_runs(self, root: Path) -> None:
        """One tiny batch through the network: input spec, weights and class count must agree."""
        try:
            logits, scores = self.engine.outputs(torch.zeros(2, *self.spec.input.shape))
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"bundle {root} does not run on its own input spec: {first}") from None
        if tuple(logits.shape) != (2, self.spec.model.num_classes) or tuple(scores.shape) != (2,):
            raise UserError(f"bundle {root}: the network gives logits {tuple(logits.shape)} and scores "
                            f"{tuple(scores.shape)} for 2 images, not (2, {self.spec.model.num_classes}) and (2,)")

    def prepare(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Images as float32 N×C×H×W in [0, 1] of the bundle's input spec (converted like OOD sets if not)."""
        shape = self.spec.input.shape
        if isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.dim() == 4 and tuple(x.shape[1:]) == shape:
            if len(x) and not (torch.isfinite(x).all() and x.min() >= -1e-3 and x.max() <= 1 + 1e-3):
                raise UserError("input images must be finite and lie in [0, 1]")
            return x.detach().cpu()

        return to_image_format(x, shape, source="input")

    def outputs(self, x: torch.Tensor | np.ndarray, batch_size: int = BATCH,
                progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N × classes) and scores (N) of the images, in batches."""
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        x = self.prepare(x)
        logits, scores = [], []
        for start in tqdm(range(0, len(x), batch_size), desc="detect", unit="batch", disable=not progress,
                          leave=False):
            lo, sc = self.engine.outputs(x[start:start + batch_size])
            logits.append(lo.numpy())
            scores.append(sc.numpy().astype(np.float64))
        if not logits:
            raise UserError("no input images")
        return np.concatenate(logits), np.concatenate(scores)

    def score(self, x: torch.Tensor | np.ndarray, batch_size: int = BATCH) -> np.ndarray:
        """OOD scores (higher = more in-distribution)."""
        return self.outputs(x, batch_size)[1]

    def predict(self, x: torch.Tensor | np.ndarray, batch_size: int = BATCH, progress: bool = False) -> Predictions:
        """Class, its probability, score and verdict (``score < threshold`` → OOD) per image."""
        logits, scores = self.outputs(x, batch_size, progress)
        probs = torch.softmax(torch.from_numpy(logits).double(), dim=1)
        top, labels = probs.max(1)
        return Predictions(labels.numpy(), top.numpy(), scores, scores < self.threshold)

    def __repr__(self) -> str:
        s = self.spec
        return (f"OODDetector({s.model.arch} {s.model.kind}, {s.score.name}, threshold={self.threshold:.6g} "
                f"at TPR {s.calibration.tpr}, format={s.format})")


def load_torch_engine(root: Path, spec: BundleSpec):
    """Rebuild the PyTorch network from a torch bundle: weights, mask (UMAP) and detector statistics."""
    m = spec.model
    model = build_model(m.arch, m.num_classes, **m.kwargs).to(memory_format=torch.channels_last)
    try:
        load_into(root / WEIGHTS_FILE, model)
    except UserError as e:
        raise UserError(f"bundle {root}: detector.json does not match its weights: {e}") from None
    scorer = materialize_masks(model, load_masks(root / MASK_FILE)[0]) if m.masked_score else model
    detector = build_detector(spec.score.name, spec.score.params)
    stats, _ = load_tensors(root / STATS_FILE)
    shapes = {k: list(v.shape) for k, v in stats.items()}
    if shapes != spec.score.stats_shapes:
        raise UserError(f"bundle {root}: {STATS_FILE} holds {shapes}, {spec.score.name} expects "
                        f"{spec.score.stats_shapes} (detector.json does not match its statistics)")
    detector.load_state_dict(stats)
    return ScoringNet(model, scorer, detector)


class OnnxEngine:
    """An ONNX bundle on onnxruntime (CPU): ``images → (logits, score)``."""

    def __init__(self, path: Path, spec: BundleSpec) -> None:
        self.session = onnx_session(path)
        inputs = self.session.get_inputs()
        shape = list(inputs[0].shape[1:]) if len(inputs) == 1 else None
        if shape != list(spec.input.shape):
            raise UserError(f"{path}: the graph takes {[i.shape for i in inputs]}, detector.json says "
                            f"N×{'×'.join(map(str, spec.input.shape))}")
        self.input_name = inputs[0].name

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, score = self.session.run(["logits", "score"], {self.input_name: x.numpy()})
        return torch.from_numpy(logits), torch.from_numpy(score).double()

    def to(self, device: torch.device | str) -> OnnxEngine:
        if torch.device(device).type != "cpu":
            raise UserError("ONNX bundles run on the CPU with onnxruntime; export --format torch for a GPU")
        return self


def onnx_session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session (``threads``: intra-op threads, default onnxruntime's); a UserError if
    onnxruntime is missing or the file is not a valid graph."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX bundles need onnxruntime: pip install 'unleash-ood[deploy]'") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings on stderr per session
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own (pybind) exception types for a corrupt graph
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load ONNX graph {path}: {first[:200]}") from None
