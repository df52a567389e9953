"""The gallery page: ``reproduce all --seeds …`` writes ``OUT/gallery.md`` from the analyses' summaries
(with ``--docs DIR``, also ``DIR.md`` beside the folder of copied PNGs, whose links it uses; a file
``DIR_small_model.md`` there, the previous small-model gallery, is appended as its last section).

Every verdict names its evidence. Analyses run over seeds are judged on paired differences (same
seed; :func:`.seeds.verdict`). A one-seed difference is judged against the seed-to-seed spread of the
same score and group, measured on the seeded base models (score-hist's final epoch): beyond twice that
standard deviation it "held" / "did not hold", inside it is "within noise".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..report.tables import md_table
from ..run.layout import RunLayout
from ..utils.files import write_text
from .claims import KEYS, claims, find
from .presets import ANALYSES

PAPER = {
    "once-covered": "an intermediate epoch detects OOD better than the final one, while ID loss and accuracy "
                    "keep improving (Fig. 1a, 2, 4a,b, 5–7).",
    "score-hist": "the final model's ID and OOD scores overlap more than an intermediate epoch's; UM and UMAP "
                  "separate them again (Fig. 1b,c).",
    "mask-loss": "a random mask raises the training loss steeply as the keep ratio falls, and the samples it "
                 "turns into errors are atypical, high-loss ones (Fig. 3b, 3c, 4c, 12).",
    "keep-ratio": "UM improves OOD detection for keep ratios close to 1 and degrades as the mask removes "
                  "more (Fig. 4d, 10).",
    "prune-rate": "UMAP (pruning with the flooded loss) detects OOD better than plain pruning at the same "
                  "prune rate (Fig. 4e, 8).",
    "finetune-epochs": "a short fine-tuning recovers about as much OOD detection as a long one (Tables 14–15).",
    "typical-atypical": "fine-tuning on atypical samples (memorizing them) hurts OOD detection more than on "
                        "typical ones (Tables 9–13).",
    "overfitting": "conventional remedies against overfitting (early stopping, weight decay, dropout) do not "
                   "recover OOD detection as UM/UMAP do (Tables 4–7).",
    "weights": "UMAP keeps different weights than plain pruning at the same rate (Fig. 11).",
}
METRICS = {  # analysis → the measurement columns of its table in the gallery (key columns: seeds.KEYS)
    "once-covered": ("epoch", "near_FPR95", "far_FPR95", "ID-ACC", "train_CE"),
    "keep-ratio": ("zeta", "near_FPR95", "far_FPR95", "ID-ACC"),
    "finetune-epochs": ("near_FPR95", "far_FPR95", "ID-ACC"),
    "prune-rate": ("near_FPR95", "far_FPR95", "masked_ID-ACC", "final_train_CE"),
    "typical-atypical": ("subset_ACC", "near_FPR95", "far_FPR95", "ID-ACC"),
    "overfitting": ("near_FPR95", "far_FPR95", "ID-ACC"),
    "weights": ("kept", "of", "mean_abs_kept", "mean_abs_all", "share_kept_by_both"),
}


def _pm(row: dict, col: str, digits: int = 1) -> str:
    v = row.get(col)
    if v is None:
        return "–"
    sd = row.get(f"{col}_std")
    return f"{v:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd and row.get("n_seeds", 1) > 1 else "")


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [md_table(head, rows), ""]


def _images(pngs: list[str], name: str, img_dir: str) -> list[str]:
    return [f"![{p}]({img_dir}/{name}_{p})" for p in pngs] + [""]


def metric_table(name: str, rows: list[dict]) -> list[str]:
    """The analysis's metric rows (mean ± sd over seeds where there are several)."""
    if name == "score-hist":  # one line per score, the four models side by side
        models = list(dict.fromkeys(r["model"] for r in rows))
        head = ["score", *(f"{m} {g}" for m in models for g in ("near", "far"))]
        out = []
        for sc in dict.fromkeys(r["score"] for r in rows):
            by = {r["model"]: r for r in rows if r["score"] == sc}
            out.append([sc, *(_pm(by[m], f"{g}_FPR95") for m in models for g in ("near", "far"))])
        return ["FPR95 (%) ↓ by model, near and far OOD:", "", *_table(head, out)]
    if name == "mask-loss":
        return []
    keys = KEYS[name]
    metrics = [m for m in METRICS[name] if any(r.get(m) is not None for r in rows)]
    digits = {"zeta": 4, "train_CE": 4, "final_train_CE": 4, "mean_abs_kept": 4, "mean_abs_all": 4,
              "share_kept_by_both": 3, "epoch": 1, "kept": 0, "of": 0}
    return _table([*keys, *metrics], [[str(r.get(k, "")) for k in keys] + [_pm(r, m, digits.get(m, 1)) for m in metrics]
                                      for r in rows])


def mask_loss_lines(s: dict) -> list[str]:
    """mask-loss: masked training CE per keep ratio, and the samples each mask kind flips."""
    lines = _table(["keep ratio", "masked train CE (mean ± sd over draws)"],
                   [[str(r["keep_ratio"]), f"{r['train_CE_mean']:.4f} ± {r['train_CE_sd']:.4f}"] for r in s["loss_vs_keep"]])
    lines += _table(["mask (keep as in the grid)", "flipped samples", "median original-loss percentile of the flipped",
                     "masked train acc"],
                    [[r["mask"], str(r["n_flipped"]), "–" if r["median_original_loss_percentile_of_flipped"] is None
                      else f"{r['median_original_loss_percentile_of_flipped']:.0f}", f"{r['masked_train_acc']:.1f}"]
                     for r in s["grid"]])
    b = s["batch"]
    lines += [f"One batch, keep {b['keep_ratio']}: mean CE {b['mean_CE_original']:.4f} → {b['mean_CE_masked']:.4f}; "
              f"the 10% highest-loss samples carry {100 * b['share_of_increase_from_top10pct_original_loss']:.0f}% of the "
              f"increase (log-loss correlation {b['log_corr']:.2f}). Training accuracy {s['train_acc']:.2f}%.", ""]
    return lines


def claims_table(claims: list[dict]) -> list[str]:
    """One line per claim: near and far Δ FPR95 (mean ± sd over seeds and the 95% half-interval, or the
    one-seed noise yardstick 2σ), and the verdict."""
    by: dict[str, dict[str, dict]] = {}
    for c in claims:
        by.setdefault(c["claim"], {})[c["metric"]] = c
    rows = []
    for label, m in by.items():
        cells = []
        for metric in ("near_FPR95", "far_FPR95"):
            c = m.get(metric)
            if c is None:
                cells.append("–")
            elif c["n_seeds"] > 1:
                lower = sum(d < 0 for d in c["per_seed"])
                cells.append(f"{c['delta_mean']:+.1f} ± {c['delta_std']:.1f} [±{c['ci95_half']:.1f}] "
                             f"({lower}/{c['n_seeds']} lower) **{c['verdict']}**")
            else:
                noise = f" (2σ = {c['noise_2sd']:.1f})" if c.get("noise_2sd") else ""
                cells.append(f"{c['delta_mean']:+.1f}{noise} **{c['verdict']}**")
        rows.append([label, *cells, ", ".join(map(str, next(iter(m.values()))["seeds"]))])
    return _table(["claim (A vs B)", "near Δ FPR95", "far Δ FPR95", "seeds"], rows)


def claim_kind(label: str) -> str:
    """The claim without its score (and schedule) prefix: ``"Energy: UM vs final epoch"`` → ``"UM vs final epoch"``."""
    return label.split(": ", 1)[-1]


def verdict_lines(claims: list[dict]) -> list[str]:
    """Per kind of claim: how many scores held / were within noise / did not hold, near and far."""
    kinds = list(dict.fromkeys(claim_kind(c["claim"]) for c in claims))
    return [f"- *{k}*: {verdict_counts([c for c in claims if claim_kind(c['claim']) == k])}" for k in kinds] + [""]


def verdict_counts(claims: list[dict]) -> str:
    """``near: held 3, within noise 11 (of 14); far: …`` over ``claims``."""
    parts = []
    for g in ("near", "far"):
        vs = [c["verdict"] for c in claims if c["metric"] == f"{g}_FPR95"]
        counts = {v: vs.count(v) for v in ("held", "within noise", "did not hold", "one seed") if vs.count(v)}
        parts.append(f"{g}: " + ", ".join(f"{v} {n}" for v, n in counts.items()) + f" (of {len(vs)})")
    return "; ".join(parts)


def noise_yardstick(score_hist: dict | None) -> dict[tuple[str, str], float]:
    """``(score, group) → sd over seeds`` of the base model's final-epoch FPR95 (score-hist)."""
    if not score_hist or "claims" not in score_hist:
        return {}
    return {(r["score"], g): r.get(f"{g}_FPR95_std", 0.0) for r in score_hist["rows"] if r["model"] == "final epoch"
            for g in ("near", "far")}


def one_seed_verdict(delta: float | None, sd: float | None) -> str:
    """A one-seed difference (A − B; negative = the paper's direction) against twice the seed sd."""
    if delta is None or sd is None or not np.isfinite(sd) or sd == 0:
        return "one seed"
    return "held" if delta < -2 * sd else "did not hold" if delta > 2 * sd else "within noise"


def one_seed_claims(name: str, s: dict, noise: dict) -> list[dict]:
    """The one-seed analyses' paired differences, each judged against the seed noise of its score and group."""
    out, rows = [], s.get("rows", [])
    for claim in claims(name, rows):
        label, a, b = claim.label, find(rows, claim.better), find(rows, claim.than)
        for g in ("near", "far"):
            col = f"{g}_FPR95"
            if a.get(col) is None or b.get(col) is None:
                continue
            d, sd = a[col] - b[col], noise.get((label.split(":")[0], g))
            out.append({"claim": label, "metric": col, "delta_mean": d, "delta_std": 0.0, "n_seeds": 1,
                        "seeds": [s.get("seed", 0)], "noise_2sd": 2 * sd if sd else None,
                        "verdict": one_seed_verdict(d, sd)})
    return out


def _median_sd(n: int) -> float:
    """The sd, in percentile points, of the median of ``n`` uniform percentiles (≈ 50 / √n)."""
    return 50 / np.sqrt(max(n, 1))


def descriptive_claims(name: str, s: dict) -> list[list[str]]:
    """The one-seed claims that are not near/far differences: ``[claim, evidence, verdict]`` rows."""
    rows = []
    if name == "mask-loss":
        sw = sorted(s["loss_vs_keep"], key=lambda r: -r["keep_ratio"])
        drops = [b for a, b in zip(sw, sw[1:]) if b["train_CE_mean"] + b["train_CE_sd"] < a["train_CE_mean"] - a["train_CE_sd"]]
        rows.append(["masked training CE rises as the keep ratio falls",
                     " → ".join(f"{r['keep_ratio']}: {r['train_CE_mean']:.3g}" for r in sw),
                     "held" if not drops else f"did not hold (falls at keep {drops[0]['keep_ratio']})"])
        for g in s["grid"]:
            p, n = g["median_original_loss_percentile_of_flipped"], g["n_flipped"]
            if p is None:
                rows.append([f"{g['mask']}: the samples it flips are high-loss", "no sample flipped", "one seed"])
                continue
            band = 2 * _median_sd(n)
            v = "held" if p > 50 + band else "did not hold" if p < 50 - band else "within noise"
            rows.append([f"{g['mask']}: the samples it flips are high-loss",
                         f"{n} flipped; median original-loss percentile {p:.0f} (chance 50 ± {band:.0f})", v])
    elif name == "weights":
        shares = {r["layer"]: r["share_kept_by_both"] for r in s["rows"]}
        k = sum(v < 0.95 for v in shares.values())  # more than 5% of the kept weights differ
        rows.append(["UMAP keeps other weights than plain pruning (> 5% of the kept weights differ)",
                     "; ".join(f"{n}: {100 * v:.0f}% of UMAP's kept weights also kept by pruning" for n, v in shares.items()),
                     "held" if k == len(shares) else "did not hold" if k == 0 else f"held in {k} of {len(shares)} layers"])
    elif name == "prune-rate":
        for k in dict.fromkeys(r["keep_ratio"] for r in s["rows"]):
            u = [r for r in s["rows"] if r["keep_ratio"] == k and r["method"] == "UMAP"]
            p = [r for r in s["rows"] if r["keep_ratio"] == k and r["method"] != "UMAP"]
            same = all(a["FPR95"] == b["FPR95"] and a["masked_ID-ACC"] == b["masked_ID-ACC"] for a, b in zip(u, p))
            u = u[0]
            if same and u["final_train_CE"] > u["zeta"]:
                rows.append([f"keep {k}: UMAP differs from plain pruning",
                             f"the masked training CE ends at {u['final_train_CE']:.3g} > ζ = {u['zeta']:.3g}: the flooded "
                             "loss equals CE there, so UMAP is plain pruning (same seed, same masks)", "did not hold"])
    return _table(["claim", "evidence (one seed)", "verdict"], rows) if rows else []


def section(name: str, s: dict, noise: dict, img_dir: str, wall_s: float | None = None) -> list[str]:
    """One analysis: figures, the paper's claim, the tables and the verdicts with their evidence.
    ``wall_s``: its time in the gallery's first (uncached) run."""
    seeds = s.get("seeds") or [s.get("seed", 0)]
    lines = [f"## {name}", "", *_images(s.get("pngs", []), name, img_dir), f"**Paper:** {PAPER[name]}", ""]
    lines.append(f"**Here:** {'seeds ' + ', '.join(map(str, seeds)) if len(seeds) > 1 else f'one seed ({seeds[0]})'}; "
                 f"wall-clock {(wall_s if wall_s is not None else s['wall_s']) / 60:.1f} min in the first run "
                 "(after the analyses above; their cached sub-runs reused). "
                 f"Tables: `{name}/` in the run folder (`*_seeds.*`, `*_claims.*`, per seed `seed<N>/`).")
    lines.append("")
    lines += mask_loss_lines(s) if name == "mask-loss" else metric_table(name, s["rows"])
    claims = s["claims"] if "claims" in s else one_seed_claims(name, s, noise)
    lines += descriptive_claims(name, s)
    if claims:
        lines += ["**Verdicts** (counted over scores; evidence in the table below):", *verdict_lines(claims)]
        lines += claims_table(claims)
    return lines


def setting_lines(root: Path, summaries: dict[str, dict]) -> list[str]:
    """The setting, read from the first analysis's effective config, and how far the base models memorize."""
    runs = [RunLayout(d) for d in [*sorted(root.glob("*/seed*")), *sorted(root.glob("*"))]]
    cfg_path = next((r.config for r in runs if r.config.is_file()), None)
    if cfg_path is None:
        return []
    c = json.loads(cfg_path.read_text())["config"]
    d, m, um, umap = c["data"], c["model"], c["um"], c["umap"]
    s = next(iter(summaries.values()))
    groups = s.get("groups") or {}
    near = [k for k, g in groups.items() if g == "near"]
    far = [k for k, g in groups.items() if g != "near"]
    lines = [f"**Setting**: ID {d['dataset']}, {d['train_size']} training / {d['val_size']} "
             f"validation images, test split {d['test_size'] or 'full'}; `{m['arch']}` {m['kwargs']}; base training "
             f"{c['base']['epochs']} epochs ({c['base']['schedule']}, lr {c['base']['lr']}, wd {c['base']['weight_decay']}), "
             f"tracked every {c['eval_every']} epochs; UM keep {um['keep_ratio']}, ζ = {um['zeta_estimator']} of "
             f"{um['zeta_draws']} draws, {um['optim']['epochs']} epochs; UMAP keep {umap['keep_ratio']}, "
             f"{umap['optim']['epochs']} epochs. OOD test sets (up to {d['ood_size']} images each): near "
             f"{', '.join(near) or '–'}; far {', '.join(far) or '–'}. Selections (epochs) use the validation OOD set "
             "(patch-shuffled held-out ID images), never a test set. FPR95 with ID as the positive class.", ""]
    oc = summaries.get("once-covered")
    if oc:
        fin = [r for r in oc["rows"] if r["epoch_kind"] == "final" and r["score"] == oc["rows"][0]["score"]]
        lines += ["**Regime.** Final training CE of the base models: " + "; ".join(
            f"{r['schedule']} {_pm(r, 'train_CE', 4)} ({'near zero: memorizing' if r['train_CE'] < 0.02 else 'not near zero'})"
            for r in fin) + ". The paper studies the memorizing regime; the width-8 model at the end of this page stays "
            "at 0.08–0.21.", ""]
    return lines


def glance(summaries: dict[str, dict], noise: dict, walls: dict[str, float]) -> list[str]:
    """Verdicts at a glance: per analysis and kind of claim, the verdict counts over scores, and each
    analysis's time in the first run."""
    rows = []
    for name, s in summaries.items():
        claims = s["claims"] if "claims" in s else one_seed_claims(name, s, noise)
        seeds = ", ".join(map(str, s.get("seeds") or [s.get("seed", 0)]))
        wall = f"{walls[name] / 60:.1f}" if name in walls else "–"
        kinds = list(dict.fromkeys(claim_kind(c["claim"]) for c in claims))
        for i, k in enumerate(kinds):
            near, far = verdict_counts([c for c in claims if claim_kind(c["claim"]) == k]).split("; ")
            rows.append([name if i == 0 else "", wall if i == 0 else "", k, seeds, near.removeprefix("near: "),
                         far.removeprefix("far: ")])
        if not kinds:
            rows.append([name, wall, "(see its section)", seeds, "–", "–"])
    return ["## Verdicts at a glance", "", "Counted over the scores each analysis evaluates (details in its section); "
            "minutes: the analysis in the first run, after the analyses above it.", "",
            *_table(["analysis", "min", "claim (A vs B)", "seeds", "near OOD", "far OOD"], rows)]


def write_gallery(root: Path, docs: Path | None = None, appendix: Path | None = None) -> Path:
    """Assemble the gallery Markdown from ``root/<analysis>/summary.json`` and ``root/timing.json``;
    ``appendix`` (a Markdown file) is appended with its headings one level down."""
    summaries = {n: json.loads((root / n / "summary.json").read_text()) for n in ANALYSES
                 if (root / n / "summary.json").is_file()}
    timing = json.loads((root / "timing.json").read_text()) if (root / "timing.json").is_file() else {}
    noise = noise_yardstick(summaries.get("score-hist"))
    img_dir = docs.name if docs else "."
    lines = ["# Gallery: the paper's analyses at the demo's scale", ""]
    runs = timing.get("runs", [timing] if timing else [])
    cold_walls = runs[0].get("analyses", {}) if runs else {}
    if runs:
        cold, last = runs[0], runs[-1]
        again = (f" The latest regeneration took {last['wall_s']:.0f} s, reusing {last['subruns']['reused']} cached "
                 f"sub-runs and computing {last['subruns']['computed']}." if len(runs) > 1 and "subruns" in last else "")
        lines += [f"Generated by `unleash-ood reproduce all --seeds {' '.join(map(str, cold['seeds']))} "
                  f"--docs docs/gallery`. The first run, which computed every sub-run, took "
                  f"**{cold['wall_s'] / 60:.0f} min** on this 2-core machine with nothing else running.{again}", ""]
    lines += [
        "**Verdicts.** Analyses run over seeds are judged on paired differences A − B (same seed, FPR95 points, "
        "negative = A better): **held** when the 95% t-interval of the mean difference lies entirely on the "
        "paper's side, **did not hold** when it lies entirely on the other side, **within noise** when it "
        "contains 0. Cells read `Δ mean ± sd [± 95% half-interval] (seeds with A lower) verdict`. With three "
        "seeds the interval is wide (t = 4.30): a difference must be about 2.5 sd from 0 to count. One-seed analyses compare one "
        "difference with twice the seed-to-seed sd of the base model's FPR95 for the same score and group "
        "(score-hist), and say so.", ""]
    lines += setting_lines(root, summaries) + glance(summaries, noise, cold_walls)
    for name, s in summaries.items():
        lines += section(name, s, noise, img_dir, cold_walls.get(name))
    if appendix is not None and appendix.is_file():
        lines += ["#" + ln if ln.startswith("#") else ln for ln in appendix.read_text().splitlines()]
    text = "\n".join(lines) + "\n"
    path = root / "gallery.md"
    write_text(path, text)
    if docs is not None:
        write_text(docs.with_suffix(".md"), text)
    return path
