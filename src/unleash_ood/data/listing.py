"""``unleash-ood data list --id fashion_mnist``: the named OOD sets with their group, whether they load
here, how many distinct source images each is cut from, and the SHA-256 a run with these data settings
records for it in ``summary.json`` (``--save-hashes``: the layout of ``docs/set_hashes.json``)."""

from __future__ import annotations

from ..config import DataConfig
from ..errors import UserError
from .builtin import OFFLINE_SETS, fashion_status
from .fingerprint import GLYPH_VAL_PROXY, builtin_records, proxy_records
from .glyphs import load_glyphs
from .own import load_data
from .prepared import validation_ood, validation_record

FASHION_SHAPE: tuple[int, int, int] = (1, 28, 28)  # Fashion-MNIST's images, the format every set takes


def benchmark_records(cfg: DataConfig) -> tuple[dict[str, dict], str]:
    """The records of every offline built-in set, loaded as a run with ``cfg`` loads it, of the near
    validation proxy ``val_near`` (the held-out glyph fonts) and of ``val_ood`` when the ID data is
    there; plus why ``val_ood`` is missing ("" when it is not)."""
    try:
        data = load_data(cfg)
    except UserError as e:
        data, why = None, str(e)
    shape = data.image_shape if data is not None else FASHION_SHAPE
    records = builtin_records(OFFLINE_SETS, shape, cfg.seed, cfg.ood_size)
    records.update(proxy_records({"val_near": load_glyphs(cfg.val_ood_size, cfg.seed, shape, split="val")},
                                 {"val_near": {"source": GLYPH_VAL_PROXY}}))
    if data is None:
        return records, why
    records["val_ood"] = validation_record(validation_ood(data, cfg))
    return records, ""


def fashion_listing(cfg: DataConfig) -> tuple[list[dict], dict[str, dict]]:
    """``data list`` rows (the schema of ``data.suite.data_status``, the group as the role), each with
    its record's keys where the set loads, plus the validation proxies' rows; and the records themselves."""
    records, why = benchmark_records(cfg)
    rows = fashion_status(cfg.data_root)
    rows.append({"name": "val_near", "title": "letters of the glyph fonts held out of the test set (validation "
                 "OOD proxy)", "role": "validation", "expected": "built in", "present": True, "found": None,
                 "how": ""})
    rows.append({"name": "val_ood", "title": "patch-shuffled ID validation images (validation OOD proxy)",
                 "role": "validation", "expected": "from the ID data's validation split", "present": not why,
                 "found": None, "how": why})
    for row in rows:
        row.update(records.get(row["name"], {}))
    return rows, records


def format_listing(rows: list[dict], cfg: DataConfig) -> str:
    """The rows as text: name, group, status, distinct sources, location; then each set's SHA-256."""
    w = max(len(r["name"]) for r in rows)
    lines = [f"{'name':<{w}}  {'group':<10}  {'status':<7}  {'sources':>7}  location / how to get it"]
    for r in rows:
        status = "present" if r["present"] else "MISSING"
        count = str(r["distinct_sources"]) if "distinct_sources" in r else "-"
        lines.append(f"{r['name']:<{w}}  {r['role']:<10}  {status:<7}  {count:>7}  {r['found'] or r['expected']}")
        if not r["present"] and r["how"]:
            lines.append(f"{'':<{w}}  {'':<10}  {'':<7}  {'':>7}  get it: {r['how']}")
    lines += ["", (f"SHA-256 of each set as a run records it (data.seed={cfg.seed}, data.ood_size={cfg.ood_size}, "
                   f"data.val_size={cfg.val_size}, data.val_ood_size={cfg.val_ood_size}; uint8 images and shape):")]
    lines += [f"{r['name']:<{w}}  {r['sha256']}  ({r['n']} images)" for r in rows if "sha256" in r]
    return "\n".join(lines)
