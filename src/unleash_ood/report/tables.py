"""Result tables: metric records as CSV and Markdown (per group, per set, mean), labels and the order of
models and scores."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from ..config import GROUPS, MODEL_ORDER
from ..metrics import AGGREGATES, mean_sets

METRIC_KEYS = ("fpr95", "fpr95_ood_positive", "auroc", "aupr_in", "aupr_out", "id_acc")


RECORD_KEYS = ("model", "score", "ood", "group", *METRIC_KEYS)




MODEL_LABELS = {"base": "", "um": "+UM", "umap": "+UMAP", "ce_finetune": "+CE-FT (control)"}


CONVENTION = ("ID is the positive class except where a column says OOD+. FPR95 = % of OOD samples accepted at "
              "the threshold that accepts 95% of ID test samples (the paper's; `fpr95`). FPR95 (OOD+) = % of ID "
              "test samples flagged as OOD at the threshold that catches 95% of OOD samples (OpenOOD v1.5's and "
              "pytorch-ood's; `fpr95_ood_positive`). Both lower is better; AUROC and AUPR (= AUPR-In) higher is "
              "better; ×100. near / far / synthetic: unweighted mean over the group's OOD sets; mean: over the near "
              "and far sets (the synthetic noise sets are sanity checks, reported apart, as in OpenOOD v1.5).")


def records_csv(records: Sequence[dict]) -> str:
    """Metric records as CSV; ``setting``, ``aux``, ``n_seeds`` and ``<metric>_std`` columns when present."""
    def present(*keys: str) -> tuple[str, ...]:
        return tuple(k for k in keys if any(k in r for r in records))
    return dicts_csv(records, present("setting") + RECORD_KEYS + present("aux", "n_seeds")
                     + present(*(f"{k}_std" for k in METRIC_KEYS)))


def dicts_csv(records: Sequence[dict], keys: Sequence[str]) -> str:
    """Rows of dicts as CSV with the given columns; floats with 4 decimals, missing cells empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: (f"{r[k]:.4f}" if isinstance(r.get(k), float) else r.get(k, "")) for k in keys})
    return buf.getvalue()


OUTLIER_LABELS = {"oe": "OE", "energy": "Energy (w. D_aux)", "poem": "POEM"}


def row_label(model: str, score: str) -> str:
    """Table row name: ``Energy+UM`` for the post-hoc family, ``OE+UMAP (MSP)`` for outlier fine-tuning."""
    method, _, variant = model.partition("_")
    if method in OUTLIER_LABELS and variant in ("", "um", "umap"):
        return f"{OUTLIER_LABELS[method]}{MODEL_LABELS[variant or 'base']} ({score})"
    return score + MODEL_LABELS.get(model, f"+{model}")


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def cell(rec: dict | None, key: str) -> str:
    """``12.34``, or ``12.34 ± 0.56`` when the record holds ``<key>_std`` (a mean over seeds); "" if absent."""
    if rec is None or rec.get(key) is None:
        return ""
    std = rec.get(f"{key}_std")
    return f"{rec[key]:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def _ordered(values: Iterable) -> list:
    return list(dict.fromkeys(values))


def sort_records(records: Sequence[dict]) -> list[dict]:
    """Scores grouped, base model first within a score (the paper's row order: Energy, Energy+UM, …)."""
    scores = _ordered(r["score"] for r in records)
    models = _ordered(r["model"] for r in records)
    rank = {m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER) + models.index(m)) for m in models}
    return sorted(records, key=lambda r: (scores.index(r["score"]), rank[r["model"]]))


def ood_sets(records: Sequence[dict]) -> list[tuple[str, str]]:
    """The per-set ``(name, group)`` pairs, near sets first, then far, then synthetic (old records
    without a group: far)."""
    sets = _ordered((r["ood"], r.get("group") or "far") for r in records if r["ood"] not in AGGREGATES)
    return sorted(sets, key=lambda s: GROUPS.index(s[1]) if s[1] in GROUPS else len(GROUPS))


def _rows(records: Sequence[dict]) -> tuple[list[tuple[str, str]], dict[tuple[str, str, str], dict]]:
    """Row keys ``(model, score)`` with a ``mean`` record, in record order; records by (model, score, ood)."""
    by = {(r["model"], r["score"], r["ood"]): r for r in records}
    keys = _ordered((r["model"], r["score"]) for r in records if r["ood"] == "mean")
    return keys, by


def _extra(records: Sequence[dict]) -> tuple[list[str], list]:
    """Optional columns: w. D_aux (outlier runs), seeds (means over seeds)."""
    header, getters = [], []
    if any("aux" in r for r in records):
        header.append("w. D_aux")
        getters.append(lambda r: "✓" if r.get("aux") else "")
    if any("n_seeds" in r for r in records):
        header.append("seeds")
        getters.append(lambda r: str(r.get("n_seeds", "")))
    return header, getters


def group_table(records: Sequence[dict]) -> str:
    """OpenOOD v1.5's shape: one row per score (+ method); AUROC and FPR95 of near, far and synthetic
    (each when present) side by side."""
    keys, by = _rows(records)
    groups = [g for g in GROUPS if any(r["ood"] == g for r in records)]
    extra_h, extra = _extra(records)
    rows = []
    for m, s in keys:
        mean = by[(m, s, "mean")]
        row = [row_label(m, s), *(f(mean) for f in extra)]
        for g in groups:
            row += [cell(by.get((m, s, g)), "auroc"), cell(by.get((m, s, g)), "fpr95")]
        rows.append(row + [cell(mean, "id_acc")])
    header = ["Method", *extra_h, *(f"{g} {k}" for g in groups for k in ("AUROC ↑", "FPR95 ↓")), "ID-ACC ↑"]
    return md_table(header, rows)


def mean_table(records: Sequence[dict]) -> str:
    """Paper-shaped table (Table 1): one row per score (+ method), metrics averaged over all OOD sets."""
    keys, by = _rows(records)
    extra_h, extra = _extra(records)
    rows = [[row_label(m, s), *(f(by[(m, s, "mean")]) for f in extra),
             *(cell(by[(m, s, "mean")], k) for k in ("auroc", "aupr_in", "fpr95", "fpr95_ood_positive", "id_acc"))]
            for m, s in keys]
    header = ["Method", *extra_h, "AUROC ↑", "AUPR ↑", "FPR95 ↓", "FPR95 (OOD+) ↓", "ID-ACC ↑"]
    return md_table(header, rows)


def per_set_table(records: Sequence[dict], metric: str = "fpr95") -> str:
    """One row per (score, method), one column per OOD set (Table 2's shape), then near, far, synthetic
    and mean."""
    keys, by = _rows(records)
    sets = ood_sets(records)
    aggs = [a for a in AGGREGATES if any(r["ood"] == a for r in records)]
    cols = [name for name, _ in sets] + aggs
    rows = [[row_label(m, s)] + [cell(by.get((m, s, o)), metric) for o in cols] for m, s in keys]
    return md_table(["Method", *(f"{name} ({g})" for name, g in sets), *aggs], rows)


PER_SET_METRICS = (("fpr95", "FPR95 ↓"), ("fpr95_ood_positive", "FPR95 (OOD+) ↓"), ("auroc", "AUROC ↑"))


def markdown_sections(records: Sequence[dict], level: int = 2) -> list[str]:
    """The tables as Markdown sections: near vs far (and synthetic), the mean over the near and far
    sets, then per OOD set."""
    h = "#" * level
    sets = ood_sets(records)
    members = "; ".join(f"{g}: " + ", ".join(n for n, gg in sets if gg == g) for g in GROUPS
                        if any(gg == g for _, gg in sets))
    parts = [f"{h} Near and far OOD", "", f"Groups ({members}).", "", group_table(records), "",
             f"{h} Mean over {mean_count(sets)}", "", mean_table(records), ""]
    for metric, name in PER_SET_METRICS:
        parts += [f"{h} {name} per OOD set", "", per_set_table(records, metric), ""]
    return parts


def mean_count(sets: Sequence[tuple[str, str]]) -> str:
    """``5 OOD sets (near and far)``: how many of the ``(name, group)`` sets the ``mean`` rows average
    over (:func:`unleash_ood.metrics.mean_sets`)."""
    averaged = mean_sets(dict(sets))
    return f"{len(averaged)} OOD sets" + (" (near and far)" if len(averaged) < len(sets) else "")


def markdown_report(records: Sequence[dict], title: str = "OOD detection results", notes: str = "") -> str:
    parts = [f"# {title}", "", CONVENTION, "", *markdown_sections(records)]
    if notes:
        parts += [notes, ""]
    return "\n".join(parts)
