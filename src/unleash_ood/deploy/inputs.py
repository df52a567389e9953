"""``detect``'s inputs and output: ``npz:PATH``, ``folder:PATH`` or image files in, one CSV row per image out.

Files are decoded by the one decoder (:func:`unleash_ood.data.images.read_image`, as in training and
evaluation) and converted like OOD sets (:func:`unleash_ood.data.images.to_image_format`: uint8 or [0, 1]
floats, channels matched by luminance / replication, shorter side resized and center-cropped to the bundle's
input size).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.images import IMAGE_EXTENSIONS, image_files, load_image
from ..data.specs import load_ood
from ..errors import UserError
from ..utils.files import write_text
from ..utils.runtime import select_device
from .detector import OODDetector, Predictions

COLUMNS = ("source", "pred", "prob", "score", "is_ood")


def read_files(files: list[Path], shape: tuple[int, int, int], desc: str) -> torch.Tensor:
    out = torch.empty((len(files), *shape), dtype=torch.float32)
    for i, path in enumerate(tqdm(files, desc=desc, unit="img", disable=len(files) < 100, leave=False)):
        out[i] = load_image(path, shape)
    return out


def load_inputs(specs: list[str], shape: tuple[int, int, int]) -> tuple[list[str], torch.Tensor]:
    """Every input image in order, with its ``source`` (a path, or ``file.npz[i]``)."""
    sources: list[str] = []
    images: list[torch.Tensor] = []
    for spec in specs:
        if spec.startswith("npz:") or (not spec.startswith("folder:") and spec.lower().endswith(".npz")):
            path = Path(spec.removeprefix("npz:")).expanduser()
            x = load_ood(f"npz:{path}", shape)
            sources += [f"{path}[{i}]" for i in range(len(x))]
        elif spec.startswith("folder:"):
            folder = Path(spec.removeprefix("folder:")).expanduser()
            if not folder.is_dir():
                raise UserError(f"input folder {folder} does not exist or is not a folder")
            files = image_files(folder)
            if not files:
                raise UserError(f"input folder {folder} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
            x = read_files(files, shape, desc=f"reading {folder.name or folder}")
            sources += [str(p) for p in files]
        else:
            path = Path(spec).expanduser()
            if not path.is_file():
                raise UserError(f"input {spec!r} is not a file; use an image file, npz:PATH or folder:PATH")
            x = read_files([path], shape, desc=path.name)
            sources.append(str(path))
        images.append(x)
    if not images:
        raise UserError("no inputs given")
    return sources, torch.cat(images)


def predictions_csv(sources: list[str], pred: Predictions) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in zip(sources, pred.labels, pred.probs, pred.scores, pred.is_ood):
        src, label, prob, score, ood = row
        writer.writerow([src, int(label), f"{prob:.9g}", f"{score:.12g}", int(ood)])
    return buf.getvalue()


def detect(bundle: str | Path, specs: list[str], out: str | Path, device: str = "cpu",
           batch_size: int = 512) -> Predictions:
    """Load ``bundle``, score every input image, write the CSV atomically (nothing on any error)."""
    det = OODDetector.load(bundle).to(select_device(device))  # a clear error for cuda without a GPU
    sources, images = load_inputs(specs, det.spec.input.shape)
    pred = det.predict(images, batch_size=batch_size, progress=True)
    write_text(out, predictions_csv(sources, pred))
    return pred
