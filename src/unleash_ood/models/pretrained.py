"""Start from public pretrained weights: ``pytorch-ood:NAME`` and any user state_dict.

``resolve_init("pytorch-ood:wrn-40-2/cifar10/oe")`` finds the original ``.pt`` file in the cache
(``~/.cache/unleash-ood/pretrained/``, or torch.hub's checkpoint folder where pytorch-ood itself caches it),
checks its SHA-256 against the value pytorch-ood 0.4.0's model registry publishes, downloads it when allowed,
and converts it once into our safetensors format: keys renamed onto ``wrn40_2`` (``blockK.layer.I.`` →
``blockK.I.``, ``convShortcut`` → ``shortcut``; every key and shape checked), with metadata
``arch``/``num_classes``/``model_kwargs`` (the mean/std those weights were trained with, so the model's own
``normalize`` layer reproduces pytorch-ood's input transform on our [0, 1] loaders), ``source`` and ``sha256``.

``import_state_dict`` does the same for any user ``.pt``/``.pth`` state_dict and a registered architecture.
Loading is always ``torch.load(weights_only=True)``: no pickled code runs. pytorch-ood itself is not needed.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from . import build_model
from .checkpoint import fit_state_dict, load_tensors, save_model

PREFIX = "pytorch-ood:"


DEFAULT_CACHE = Path.home() / ".cache" / "unleash-ood" / "pretrained"


OFFLINE_ENV = "UNLEASH_OOD_OFFLINE"  # "1": never download, use the cache only


@dataclass(frozen=True)
class Pretrained:
    """One pytorch-ood registry entry (WRN-40-2, depth 40, widen factor 2, dropout 0.3)."""

    key: str
    num_classes: int
    url: str
    sha256: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def file_name(self) -> str:
        """pytorch-ood's own cache file name (so its torch.hub cache can be reused)."""
        return f"{self.key.replace('/', '-')}-{self.sha256[:16]}.pt"


def _entry(key: str, num_classes: int, url: str, sha256: str, norm: tuple) -> Pretrained:
    return Pretrained(key, num_classes, url, sha256, *norm)


# Input normalization of each entry (pytorch-ood's ``ImagePreprocessing``, pixel values in [0, 1]).
_HENDRYCKS = (tuple(x / 255 for x in (125.3, 123.0, 113.9)), tuple(x / 255 for x in (63.0, 62.1, 66.7)))


_CIFAR10 = ((0.4913, 0.4823, 0.4467), (0.247, 0.2435, 0.2616))


_CIFAR100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


# Every WRN-40-2 entry of pytorch-ood 0.4.0's registry (pytorch_ood/model/registry.py): key, classes, URL,
# SHA-256 of the file, normalization. Keys read ``wrn-40-2/<dataset>/<loss>[/<seed>]``.
_HF = "https://huggingface.co/kkirchheim/pytorch-ood-models/resolve/main/"


_GH = "https://github.com/"


_ENTRIES: tuple[Pretrained, ...] = (
    _entry("wrn-40-2/cifar10/crossentropy", 10,
           _GH + "wetliu/energy_ood/raw/master/CIFAR/snapshots/pretrained/cifar10_wrn_pretrained_epoch_99.pt",
           "0b59e178577382a0cf5d1e079d1d019f6a33b0801b7d123a59e51b4b32972637", _HENDRYCKS),
    _entry("wrn-40-2/cifar100/crossentropy", 100,
           _GH + "wetliu/energy_ood/raw/master/CIFAR/snapshots/pretrained/cifar100_wrn_pretrained_epoch_99.pt",
           "3751f516b81ef9d27290f08a3de78d65a3771f477bd6a6caefa81b330dc34baf", _HENDRYCKS),
    _entry("wrn-40-2/cifar10/oe", 10,
           _GH + "hendrycks/outlier-exposure/raw/master/CIFAR/snapshots/oe_tune/cifar10_wrn_oe_tune_epoch_9.pt",
           "b473f1c463c9fe16057647746907b68b6ade615f93ac4bdf005263ed69d542d0", _HENDRYCKS),
    _entry("wrn-40-2/cifar100/oe", 100,
           _GH + "hendrycks/outlier-exposure/raw/master/CIFAR/snapshots/oe_tune/cifar100_wrn_oe_tune_epoch_9.pt",
           "1d4dd53f7605d66f64bcdf146ed9327ecbebbd5da42a9f7d70b9d6a28ee9bb51", _HENDRYCKS),
    _entry("wrn-40-2/cifar10/energy/s1", 10,
           _GH + "wetliu/energy_ood/raw/master/CIFAR/snapshots/energy_ft/cifar10_wrn_s1_energy_ft_epoch_9.pt",
           "78a288517f9e9f3501c1e881aee8daa1d9c64a23805023fc013a28946274c54b", _HENDRYCKS),
    _entry("wrn-40-2/cifar100/energy/s1", 100,
           _GH + "wetliu/energy_ood/raw/master/CIFAR/snapshots/energy_ft/cifar100_wrn_s1_energy_ft_epoch_9.pt",
           "4899110e41b8c96a01ec52e779e3336436da69db201f6162b2dce9a207f0f51f", _HENDRYCKS),
    _entry("wrn-40-2/imagenet32/crossentropy", 1000,
           _GH + "hendrycks/pre-training/raw/master/downsampled_train/snapshots/40_2/imagenet_wrn_baseline_epoch_99.pt",
           "4a722ecf93e43a040b6b82c7c1e305fbf1c455a54c16e66fd77301291157bd5c", _HALF),
    _entry("wrn-40-2/imagenet32-nocifar/crossentropy", 1000,
           _GH + "hendrycks/pre-training/raw/master/uncertainty/CIFAR/snapshots/imagenet/cifar10_excluded/imagenet_wrn_baseline_epoch_99.pt",
           "6f0f46d44ddfc96f85b97ef04ca9d61e78279d27c80015dcc92aabd52b1773c6", _HALF),
    _entry("wrn-40-2/cifar10/logitnorm/s0", 10, _HF + "wrn-40-2/cifar10/logitnorm/s0/model-bcd6754f4a4cfbd8.pt",
           "bcd6754f4a4cfbd8b0cc28d432ef3fe63b715ab8bf2776dec42059ae445b7419", _CIFAR10),
    _entry("wrn-40-2/cifar100/crossentropy/s0", 100,
           _HF + "wrn-40-2/cifar100/crossentropy/s0/model-4b5b3ed2f448b40c.pt",
           "4b5b3ed2f448b40cc48abe05221b4af39e351b04ce215edf2c0ea7a113593d2f", _CIFAR100),
    _entry("wrn-40-2/cifar100/crossentropy/s1", 100,
           _HF + "wrn-40-2/cifar100/crossentropy/s1/model-1b8e15072dc0d887.pt",
           "1b8e15072dc0d88776dc59c23192628354b958fa22bdc21073664d60d862d685", _CIFAR100),
    _entry("wrn-40-2/cifar100/crossentropy/s2", 100,
           _HF + "wrn-40-2/cifar100/crossentropy/s2/model-f1a77c51f747d58e.pt",
           "f1a77c51f747d58e16bc4a7a04d8a6b7f65d3a7c694e63e5b6480fd08a8f423e", _CIFAR100),
    _entry("wrn-40-2/cifar100/entropic/s0", 100, _HF + "wrn-40-2/cifar100/entropic/s0/model-cbabacfd3c396d11.pt",
           "cbabacfd3c396d11d115afcdbd242dd863fb5de863907a3cf5d15e6630a6eeb6", _CIFAR100),
    _entry("wrn-40-2/cifar100/entropic/s1", 100, _HF + "wrn-40-2/cifar100/entropic/s1/model-bd96368e7713e60b.pt",
           "bd96368e7713e60b9f312767e9a883e097cc9e17ce3564ff7c8a5c23afd6a99b", _CIFAR100),
    _entry("wrn-40-2/cifar100/entropic/s2", 100, _HF + "wrn-40-2/cifar100/entropic/s2/model-f572bdb2685bcede.pt",
           "f572bdb2685bcede584ad3ad110ab77310983c4b99252f2bd457df5e1ff86593", _CIFAR100),
    _entry("wrn-40-2/cifar100/logitnorm/s0", 100, _HF + "wrn-40-2/cifar100/logitnorm/s0/model-cfd67c89d658c2c9.pt",
           "cfd67c89d658c2c9b04b26b8ec82a1154ebb7e765fb0c4ba42c73b95c56416e6", _CIFAR100),
    _entry("wrn-40-2/cifar100/logitnorm/s1", 100, _HF + "wrn-40-2/cifar100/logitnorm/s1/model-34c3830934542889.pt",
           "34c383093454288984d09ba998852f394eb3eb511727679a7e1a05bc65184e65", _CIFAR100),
    _entry("wrn-40-2/cifar100/logitnorm/s2", 100, _HF + "wrn-40-2/cifar100/logitnorm/s2/model-663f69475582ae9f.pt",
           "663f69475582ae9f034755aa123e995cbd9b82f29a74fe2e4a5f62276ac60182", _CIFAR100),
    _entry("wrn-40-2/cifar10/crossentropy/s1", 10, _HF + "wrn-40-2/cifar10/crossentropy/s1/model-b1b7465567ee2494.pt",
           "b1b7465567ee249481b8ff631f9d96fcc80d4c27783dc117aa2020888607cdf7", _CIFAR10),
    _entry("wrn-40-2/cifar10/crossentropy/s2", 10, _HF + "wrn-40-2/cifar10/crossentropy/s2/model-9c18ac23901a26b7.pt",
           "9c18ac23901a26b7787de79042051ec90a75e8036e5b2c7858c2db8ab437816b", _CIFAR10),
    _entry("wrn-40-2/cifar10/entropic/s0", 10, _HF + "wrn-40-2/cifar10/entropic/s0/model-481c83f11ccb4b2a.pt",
           "481c83f11ccb4b2ae1b99e7480c62582c93d08fc15c368f8708379b6a60f08da", _CIFAR10),
    _entry("wrn-40-2/cifar10/entropic/s1", 10, _HF + "wrn-40-2/cifar10/entropic/s1/model-653ef4ffd71c6804.pt",
           "653ef4ffd71c68048527f1d7bcd8272c3c66a8c298acfa3ebe9997c388d4946a", _CIFAR10),
    _entry("wrn-40-2/cifar10/entropic/s2", 10, _HF + "wrn-40-2/cifar10/entropic/s2/model-cb8865fedf8ed74e.pt",
           "cb8865fedf8ed74eff2fbbb72c07d9e03e6c57c1cdba68bb4b3f788ee4b49b00", _CIFAR10),
    _entry("wrn-40-2/cifar10/logitnorm/s1", 10, _HF + "wrn-40-2/cifar10/logitnorm/s1/model-7d932b6fe7a6bb43.pt",
           "7d932b6fe7a6bb435d50345b88234286ab5d859e02cb2451146f3e4d2f9605ba", _CIFAR10),
    _entry("wrn-40-2/cifar10/logitnorm/s2", 10, _HF + "wrn-40-2/cifar10/logitnorm/s2/model-7de464bd4ce3c4bf.pt",
           "7de464bd4ce3c4bf6efaa1dddddb23e38bed99653036a38ef02bcb50cff214f6", _CIFAR10),
    _entry("wrn-40-2/cifar10/oe/s0", 10, _HF + "wrn-40-2/cifar10/oe/s0/model-4b018f801843365c.pt",
           "4b018f801843365c8ba578d20caa97be2f995eb7eb93c5909f1c0273bc7b6022", _CIFAR10),
    _entry("wrn-40-2/cifar10/oe/s1", 10, _HF + "wrn-40-2/cifar10/oe/s1/model-71896c06742c88c7.pt",
           "71896c06742c88c7135d2869682ee1fe190d3b5e1f63129c65f1fdd338908e2a", _CIFAR10),
    _entry("wrn-40-2/cifar10/oe/s2", 10, _HF + "wrn-40-2/cifar10/oe/s2/model-0e08d73c2cc42595.pt",
           "0e08d73c2cc4259562f5bcd09abfb33c6b53c10e3010b807434d68da98165bb5", _CIFAR10),
    _entry("wrn-40-2/cifar100/oe/s0", 100, _HF + "wrn-40-2/cifar100/oe/s0/model-f713cea10b512718.pt",
           "f713cea10b512718f1dc8772f54b3220a827a23114713bcc9f50d95d1460d920", _CIFAR100),
    _entry("wrn-40-2/cifar100/oe/s1", 100, _HF + "wrn-40-2/cifar100/oe/s1/model-4d9c5eaac646477b.pt",
           "4d9c5eaac646477b706f006337b4a0f7c49a2be4bc064f230dd7766229851e89", _CIFAR100),
    _entry("wrn-40-2/cifar100/oe/s2", 100, _HF + "wrn-40-2/cifar100/oe/s2/model-51ec426d53fe2a27.pt",
           "51ec426d53fe2a2747bfa03301b905029166eaa09d38061158905265cf5fe05a", _CIFAR100),
    _entry("wrn-40-2/cifar10/energy/s0", 10, _HF + "wrn-40-2/cifar10/energy/s0/model-d798f066e7912d4a.pt",
           "d798f066e7912d4a267c387121f2dcaa4b59611a2559269462972cb9eda4e812", _CIFAR10),
    _entry("wrn-40-2/cifar10/energy/s2", 10, _HF + "wrn-40-2/cifar10/energy/s2/model-92f4f18cb4dfad21.pt",
           "92f4f18cb4dfad21e22a4bf43d1674b952ffe60885fe3a0a7782929007001559", _CIFAR10),
    _entry("wrn-40-2/cifar100/energy/s0", 100, _HF + "wrn-40-2/cifar100/energy/s0/model-ebd0fcc793f5a22f.pt",
           "ebd0fcc793f5a22fbf20f1d29638138b36c69eebcf64f9cf96aa2c945259e420", _CIFAR100),
    _entry("wrn-40-2/cifar100/energy/s2", 100, _HF + "wrn-40-2/cifar100/energy/s2/model-50d7d6802391a24f.pt",
           "50d7d6802391a24f2f2aa32603f07d97a9761b6aadeb21e74f50857a5873ccbb", _CIFAR100),
    _entry("wrn-40-2/cifar10/vos/s0", 10, _HF + "wrn-40-2/cifar10/vos/s0/model-8a70f61ad4ce2c6f.pt",
           "8a70f61ad4ce2c6fdebf15ce5408a28d2880dfb890ed45614e906cc6a97e18f4", _CIFAR10),
    _entry("wrn-40-2/cifar10/vos/s1", 10, _HF + "wrn-40-2/cifar10/vos/s1/model-3bc58d14199aabd8.pt",
           "3bc58d14199aabd838484318a36c58e0d0b2cf1e3e7556a3ce20dd538b4d0b41", _CIFAR10),
    _entry("wrn-40-2/cifar10/vos/s2", 10, _HF + "wrn-40-2/cifar10/vos/s2/model-cda47e9257f78549.pt",
           "cda47e9257f785499473ebc9ff7a6b238bedc6d7c425a207408b21aaf2c1ec6b", _CIFAR10),
    _entry("wrn-40-2/cifar100/vos/s0", 100, _HF + "wrn-40-2/cifar100/vos/s0/model-49e6b2e898c7a486.pt",
           "49e6b2e898c7a486300273ee6bea7209ccfc11b6642de130319c60d9e6f3ff81", _CIFAR100),
    _entry("wrn-40-2/cifar100/vos/s1", 100, _HF + "wrn-40-2/cifar100/vos/s1/model-7c9fd1931e5b1b62.pt",
           "7c9fd1931e5b1b62ba098fcafab550b93ff189ceae3f37f5bccbd27b95c445f7", _CIFAR100),
    _entry("wrn-40-2/cifar100/vos/s2", 100, _HF + "wrn-40-2/cifar100/vos/s2/model-4eaffc7283aa6993.pt",
           "4eaffc7283aa6993cd86e378fbf877d14c1c1f07e8b8782bfe94eb0acbb44aca", _CIFAR100),
)


REGISTRY: dict[str, Pretrained] = {e.key: e for e in _ENTRIES}


# Short names for the classic checkpoints of the OOD literature (Hendrycks et al.; Liu et al.).
ALIASES: dict[str, str] = {
    "cifar10-pt": "wrn-40-2/cifar10/crossentropy",
    "cifar100-pt": "wrn-40-2/cifar100/crossentropy",
    "cifar10-oe-tune": "wrn-40-2/cifar10/oe",
    "cifar100-oe-tune": "wrn-40-2/cifar100/oe",
    "cifar10-energy-tune": "wrn-40-2/cifar10/energy/s1",
    "cifar100-energy-tune": "wrn-40-2/cifar100/energy/s1",
}


def is_pretrained_spec(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def lookup(name: str) -> Pretrained:
    """An entry by exact key, alias, or unique prefix (``wrn-40-2/cifar10/logitnorm`` → ``…/s0`` only if unique)."""
    name = ALIASES.get(name, name)
    if name in REGISTRY:
        return REGISTRY[name]
    hits = [k for k in REGISTRY if k.startswith(name.rstrip("/") + "/")]
    if len(hits) == 1:
        return REGISTRY[hits[0]]
    if hits:
        raise UserError(f"pytorch-ood:{name} is ambiguous; pick one of: {', '.join(sorted(hits))}")
    raise UserError(f"unknown pretrained model pytorch-ood:{name}; known: {', '.join(sorted(ALIASES))} or "
                    f"{', '.join(sorted(REGISTRY))}")


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pytorch_ood_to_wrn(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename pytorch-ood / Hendrycks WRN keys onto our WideResNet: ``blockK.layer.I.`` → ``blockK.I.``,
    ``convShortcut`` → ``shortcut``."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"^(block\d+)\.layer\.(\d+)\.", r"\1.\2.", k)
        out[k.replace(".convShortcut.", ".shortcut.")] = v
    return out


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if prefix and state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``; unwraps ``{"state_dict": …}``-style containers."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, non-weights objects, truncated files
        raise UserError(f"cannot read {path} as a weights-only PyTorch state_dict ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    for wrapper in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state_dict (a dict of parameter name → tensor)")
    return dict(obj)


def _convert(state: dict[str, torch.Tensor], arch: str, num_classes: int, model_kwargs: dict, out: Path,
             what: str, extra_meta: dict) -> Path:
    try:
        model = build_model(arch, num_classes=num_classes, **model_kwargs)
    except TypeError as e:
        raise UserError(f"cannot build {arch} with {model_kwargs}: {e}") from None
    model.load_state_dict(fit_state_dict(state, model, what, classes_from="--num-classes is",
                                         hint=" — check --arch / --num-classes (and model kwargs such as widen_factor)"))
    meta = {"arch": arch, "num_classes": num_classes, "model_kwargs": model_kwargs, "kind": "base", **extra_meta}
    return save_model(out, model, meta)


def import_state_dict(path: str | Path, arch: str, num_classes: int, model_kwargs: dict | None = None,
                      out: str | Path | None = None, strip_prefix: str = "module.") -> Path:
    """Convert a user ``.pt``/``.pth`` state_dict into our safetensors checkpoint (default: ``path`` with
    suffix ``.safetensors``). A ``module.`` prefix (DataParallel / DDP) is stripped; for ``wrn*`` archs,
    pytorch-ood / Hendrycks WRN key names are renamed. Keys and shapes are checked strictly."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    out = Path(out) if out else path.with_suffix(".safetensors")
    if out.resolve() == path.resolve():
        raise UserError(f"--out {out} would overwrite the source file")
    state = _strip(read_state_dict(path), strip_prefix)
    if arch.startswith("wrn"):
        state = pytorch_ood_to_wrn(state)
    return _convert(state, arch, num_classes, dict(model_kwargs or {}), out, str(path),
                    {"source": str(path), "sha256": sha256_of(path)})


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes")


def _download(url: str, dest: Path, sha256: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 (fixed https URLs)
            while chunk := r.read(1 << 20):
                f.write(chunk)
        got = sha256_of(tmp)
        if got != sha256:
            raise UserError(f"download of {url} has SHA-256 {got}, expected {sha256}; not used")
        os.replace(tmp, dest)
    except OSError as e:
        raise UserError(f"could not download {url} ({e}); download it by hand to {dest}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def resolve_init(spec: str, cache_dir: str | Path | None = None, download: bool | None = None) -> Path:
    """``pytorch-ood:NAME`` → path of our converted safetensors checkpoint (converted once, then cached).

    The original file is looked up in ``cache_dir`` (default ``~/.cache/unleash-ood/pretrained``) and in
    torch.hub's checkpoint folder, verified by SHA-256, and downloaded into ``cache_dir`` when ``download``
    is true (default: unless ``UNLEASH_OOD_OFFLINE=1``). Anything else is returned as a path unchanged.
    """
    if not is_pretrained_spec(spec):
        return Path(spec)
    entry = lookup(spec[len(PREFIX):])
    cache = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE
    download = (not _offline()) if download is None else download
    raw = cache / entry.file_name
    converted = cache / f"{Path(entry.file_name).stem}.safetensors"
    if converted.is_file():  # written only from a verified original

        if load_tensors(converted)[1].get("sha256") == entry.sha256:
            return converted
    candidates = [raw, Path(f"{torch.hub.get_dir()}/checkpoints/{entry.file_name}")]  # torch.hub's own cache
    found = next((p for p in candidates if p.is_file()), None)
    if found is not None:
        got = sha256_of(found)
        if got != entry.sha256:
            raise UserError(f"{found} has SHA-256 {got}, but pytorch-ood:{entry.key} is {entry.sha256}: "
                            f"a corrupt or different file; delete it and get it again from {entry.url}")
    elif download:
        _download(entry.url, raw, entry.sha256)
        found = raw
    else:
        raise UserError(f"pytorch-ood:{entry.key} is not cached and downloading is off; download {entry.url} "
                        f"by hand and put it at {raw} (SHA-256 {entry.sha256})")
    state = _strip(read_state_dict(found), "module.")
    kwargs = {"mean": list(entry.mean), "std": list(entry.std)}
    return _convert(pytorch_ood_to_wrn(state), "wrn40_2", entry.num_classes, kwargs, converted,
                    f"pytorch-ood:{entry.key} ({found})",
                    {"source": f"{PREFIX}{entry.key}", "sha256": entry.sha256, "url": entry.url})


def resolve_checkpoint(spec: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A checkpoint argument (``--checkpoint``, ``--init``, ``init_checkpoint``) → a file path."""
    return resolve_init(str(spec), cache_dir) if is_pretrained_spec(str(spec)) else Path(spec)
