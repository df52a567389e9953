"""Run by hand: `python benchmarks/bench_own_data.py`. The folder path of one's own data, timed and
measured: it writes two folder datasets to a temporary directory (Fashion-MNIST PNGs, 28×28 gray, 10
classes; RGB crops of scikit-image's photographs, 64×64, 6 classes, one per photograph), then runs
`demo --quick` on each (all their training images, `data.storage` memory and disk), `export` and
`detect`, each as its own process; and it decodes a larger 64×64 RGB folder (``--load`` images) with
each storage and reads one shuffled epoch of it. It prints each step's wall-clock and peak memory, sampled from
/proc every 50 ms: anonymous RSS (what the run needs) and file-backed RSS (mapped pages of the decoded
cache, which the OS drops under pressure).
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

FASHION = Path("/usr/share/datasets/fashion-mnist")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_fashion(root: Path, n_train: int, n_test: int) -> Path:
    for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x, y = read_idx(FASHION / f"{stem}-images-idx3-ubyte.gz"), read_idx(FASHION / f"{stem}-labels-idx1-ubyte.gz")
        for i in range(n):
            path = root / split / f"class{y[i]}" / f"{i:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(path)
    return root


def write_photo_crops(root: Path, n_train: int, n_test: int, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pictures = {name: Image.fromarray(getattr(skdata, name)()).convert("RGB") for name in PHOTOS}
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            name = PHOTOS[i % len(PHOTOS)]
            pic = pictures[name]
            side = int(min(pic.size) * rng.uniform(0.2, 0.6))
            left, top = rng.integers(0, pic.size[0] - side + 1), rng.integers(0, pic.size[1] - side + 1)
            crop = pic.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
            path = root / split / name / f"{i:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            crop.save(path)
    return root


def run_measured(cmd: list[str]) -> tuple[float, float, float]:
    """Wall-clock seconds, peak anonymous and peak file-backed RSS (MB) of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    anon = file = 0.0
    while proc.poll() is None:
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines())
            anon = max(anon, int(fields.get("RssAnon", "0 kB").split()[0]) / 1024)
            file = max(file, int(fields.get("RssFile", "0 kB").split()[0]) / 1024)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.read()[-2000:]}")
    return wall, anon, file


LOAD_AND_READ = """
import sys, torch
from unleash_ood.config import build_config
from unleash_ood.data.batches import TensorBatches
from unleash_ood.data.own import load_data
data = load_data(build_config(overrides=sys.argv[1:]).data)
for x, y in TensorBatches(*data.train, batch_size=128, shuffle=True):  # one epoch's reads
    pass
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--train", type=int, default=6000, help="training images per dataset")
    p.add_argument("--test", type=int, default=1000, help="test images per dataset")
    p.add_argument("--load", type=int, default=20000,
                   help="64x64 RGB training images for the load-and-read step (0: skip it)")
    args = p.parse_args()
    cli = [sys.executable, "-m", "unleash_ood"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        sets = {} if not args.train else {  # --train 0: only the load-and-read step
            "28x28 gray (Fashion-MNIST PNGs)": write_fashion(tmp / "fm", args.train, args.test),
            "64x64 RGB (photo crops)": write_photo_crops(tmp / "rgb", args.train, args.test)}
        print(f"wrote {2 * (args.train + args.test)} PNGs in {time.perf_counter() - t0:.1f} s")
        if args.load:  # decode a larger set and read one shuffled epoch: what each storage holds in memory
            root = write_photo_crops(tmp / "large", args.load, 60, seed=1)
            for storage in ("memory", "disk"):
                wall, anon, file = run_measured([sys.executable, "-c", LOAD_AND_READ, f"data.dataset=folder:{root}",
                                                 f"data.storage={storage}", f"data.cache_dir={tmp / 'cache'}"])
                print(f"{args.load} 64x64 RGB PNGs ({args.load * 3 * 64 * 64 * 4 / 1e9:.2f} GB decoded), "
                      f"storage={storage}, decode + one epoch read: {wall:.1f} s, peak RSS anon {anon:.0f} MB, "
                      f"file-backed {file:.0f} MB")
        for label, root in sets.items():
            for storage in ("memory", "disk"):
                run = tmp / f"run-{root.name}-{storage}"
                # --force: a 3-epoch model on a small set may trip UM's ζ guard; the cost is what is measured here
                demo = [*cli, "demo", "--quick", "--force", "--out", str(run), f"data.dataset=folder:{root}",
                        "data.train_size=null", "data.test_size=null", "data.val_size=0.1",
                        f"data.storage={storage}", f"data.cache_dir={tmp / 'cache'}"]
                steps = {"demo --quick": demo,
                         "export": [*cli, "export", "--run", str(run), "--model", "umap", "--score", "Energy",
                                    "--out", str(run / "bundle"), "--device", "cpu"],
                         "detect": [*cli, "detect", str(run / "bundle"), f"folder:{root / 'test'}",
                                    "--out", str(run / "p.csv")]}
                for step, cmd in steps.items():
                    wall, anon, file = run_measured(cmd)
                    print(f"{label}, storage={storage}, {step}: {wall:.1f} s, peak RSS anon {anon:.0f} MB, "
                          f"file-backed {file:.0f} MB")


if __name__ == "__main__":
    main()
