"""Evidence over seeds for one protocol: ``unleash-ood evidence D`` reads the finished seed runs
``D/seed<N>/`` of ``demo --seeds`` (files only, no network pass) and writes ``D/evidence/``:

- ``groups``: every (model, detector) per test group (near, far, synthetic, mean) and per test set, FPR95
  and AUROC as mean ± sd over seeds;
- ``paired``: each variant (UM, the CE control, UMAP) − the base model, same seed and detector, per group
  and per set, with the 95% t-interval of the mean and the verdict of :func:`.claims.verdict`;
- ``recommendation``: per seed, the test FPR95 of the validation-chosen pick against the base model's
  validation-best detector at default parameters and with tuned rows allowed;
- ``proxies``: per seed and test group, each validation proxy's regret and Spearman ρ
  (:mod:`unleash_ood.run.proxies`), and their mean over seeds;
- ``flooding``: per epoch, the fraction of fine-tuning steps with CE below ζ (UM and UMAP);
- ``seeds``: each seed's machine, start time and wall-clock per stage.

Everything chosen is chosen on validation; the test numbers are only reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..run.aggregate import mean_std
from ..run.layout import RunLayout
from ..run.proxies import proxy_table
from ..run.recommend import rank
from ..utils.files import read_json, write_text
from .claims import verdict
from .common import write_table

GROUPS = ("near", "far", "synthetic", "mean")  # test aggregates, in table order
VARIANTS = ("um", "ce_finetune", "umap")
LABELS = {"base": "base", "um": "UM", "ce_finetune": "CE control", "umap": "UMAP"}
OVERHEAD = ("validate", "tune")  # the stages scores.tune and the recommendation add (recommend itself: files only)


@dataclass(frozen=True)
class SeedRun:
    """The files of one finished seed that the evidence reads."""

    seed: int
    records: list[dict]
    validation: dict
    summary: dict
    finetune_log: dict


def load_seeds(root: str | Path) -> list[SeedRun]:
    """The finished ``seed<N>/`` runs under ``root``, by seed (a UserError when there are none)."""
    root = Path(root)
    dirs = sorted((p for p in root.glob("seed*") if p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))
    out = []
    for d in dirs:
        run = RunLayout(d)
        if not run.finished:
            continue
        if not run.validation().is_file():
            raise UserError(f"{d} has no {run.validation().name}: evidence needs runs with an ID validation split")
        log = run.finetune_log
        out.append(SeedRun(int(d.name[4:]), run.read_results(), read_json(run.validation(), "validation results"),
                           read_json(run.summary, "run summary") if run.summary.is_file() else {},
                           read_json(log, "fine-tuning log") if log.is_file() else {}))
    if not out:
        raise UserError(f"{root} holds no finished seed runs (seed<N>/results.json); run `demo --seeds … --out {root}`")
    return out


def _by_key(records: list[dict]) -> dict[tuple[str, str, str], dict]:
    return {(r["model"], r["score"], r["ood"]): r for r in records}


def _test_sets(seeds: list[SeedRun]) -> list[tuple[str, str]]:
    """(ood, group) of the first seed: the aggregates first, then the sets."""
    seen = dict.fromkeys((r["ood"], r["group"]) for r in seeds[0].records)
    aggs = [(o, g) for o, g in seen if o in GROUPS]
    return sorted(aggs, key=lambda x: GROUPS.index(x[0])) + [(o, g) for o, g in seen if o not in GROUPS]


def group_rows(seeds: list[SeedRun]) -> list[dict]:
    """Every (model, score, test set or group): FPR95 and AUROC mean ± sd over the seeds that have it."""
    keyed = [_by_key(s.records) for s in seeds]
    pairs = list(dict.fromkeys((r["model"], r["score"]) for r in seeds[0].records))
    rows = []
    for ood, group in _test_sets(seeds):
        for model, score in pairs:
            recs = [k[(model, score, ood)] for k in keyed if (model, score, ood) in k]
            if not recs:
                continue
            row = {"ood": ood, "group": group, "model": model, "score": score}
            for m in ("fpr95", "auroc"):
                row[m], row[f"{m}_std"] = mean_std([r[m] for r in recs])
            rows.append({**row, "n_seeds": len(recs)})
    return rows


def paired_rows(seeds: list[SeedRun], variants: tuple[str, ...] = VARIANTS) -> list[dict]:
    """Variant − base (same seed, same detector) per test group and set: FPR95 and AUROC differences,
    the FPR95 difference's 95% t-interval half-width and the verdict (lower FPR95 is the claim)."""
    keyed = [_by_key(s.records) for s in seeds]
    scores = list(dict.fromkeys(r["score"] for r in seeds[0].records if r["model"] == "base"))
    rows = []
    for ood, group in _test_sets(seeds):
        for v in variants:
            for score in scores:
                used = [(s.seed, k[(v, score, ood)], k[("base", score, ood)]) for s, k in zip(seeds, keyed)
                        if (v, score, ood) in k and ("base", score, ood) in k]
                if not used:
                    continue
                d_fpr = [a["fpr95"] - b["fpr95"] for _, a, b in used]
                d_auc = [a["auroc"] - b["auroc"] for _, a, b in used]
                verdict_, half = verdict(d_fpr)
                (m, sd), (ma, _) = mean_std(d_fpr), mean_std(d_auc)
                rows.append({"ood": ood, "group": group, "variant": v, "score": score, "delta_fpr95": m,
                             "delta_fpr95_std": sd, "ci95_half": half, "delta_auroc": ma, "n_seeds": len(used),
                             "better_in": sum(x < 0 for x in d_fpr), "per_seed": [round(x, 2) for x in d_fpr],
                             "verdict": verdict_})
    return rows


def _label(c: dict) -> str:
    return f"{c['model']} + {c['score']}"


def recommendation_rows(seeds: list[SeedRun]) -> list[dict]:
    """Per seed: the test FPR95 per group of the pick (the run's rule on its validation.json), of the base
    model's validation-best detector at default parameters, and of its best with tuned rows allowed."""
    rows = []
    for s in seeds:
        w = {g: x for g, x in s.validation["weights"].items() if f"{g}_fpr95" in s.validation["candidates"][0]}
        ranked = rank(s.validation["candidates"], w)
        base = [c for c in ranked if c["model"] == "base"]
        picks = {"pick": ranked[0], "base_default": next((c for c in base if "(tuned)" not in c["score"]), None),
                 "base_tuned": base[0] if base else None}
        keyed = _by_key(s.records)
        row: dict = {"seed": s.seed}
        for name, c in picks.items():
            row[name] = _label(c) if c else None
            for g in GROUPS:
                r = keyed.get((c["model"], c["score"], g)) if c else None
                row[f"{name}_{g}_fpr95"] = r["fpr95"] if r else None
        for g in GROUPS:
            for ref in ("base_default", "base_tuned"):
                a, b = row[f"pick_{g}_fpr95"], row[f"{ref}_{g}_fpr95"]
                row[f"pick_minus_{ref}_{g}"] = a - b if a is not None and b is not None else None
        rows.append(row)
    return rows


def recommendation_summary(rows: list[dict]) -> list[dict]:
    """Over seeds, per group and reference: the pick − reference FPR95 (mean, sd, 95% interval, verdict)
    and in how many seeds the pick was better."""
    out = []
    for ref in ("base_default", "base_tuned"):
        for g in GROUPS:
            d = [r[f"pick_minus_{ref}_{g}"] for r in rows if r.get(f"pick_minus_{ref}_{g}") is not None]
            if not d:
                continue
            (m, sd), (v, half) = mean_std(d), verdict(d)
            out.append({"reference": ref, "group": g, "delta_fpr95": m, "delta_fpr95_std": sd, "ci95_half": half,
                        "better_in": sum(x < 0 for x in d), "worse_in": sum(x > 0 for x in d), "n_seeds": len(d),
                        "verdict": v})
    return out


def proxy_rows(seeds: list[SeedRun]) -> list[dict]:
    """Per seed and test group (and set), for each validation proxy (near, far, the weighted rule): the pick,
    its regret and Spearman's ρ over every (model, detector) pair the validation ranks."""
    rows = []
    for s in seeds:
        w = {g: x for g, x in s.validation["weights"].items() if f"{g}_fpr95" in s.validation["candidates"][0]}
        cands = rank(s.validation["candidates"], w)  # tuned rows that kept the default are dropped
        val = {f"{g} proxy ({_proxy_source(s.validation, g)})": {(c["model"], c["score"]): c[f"{g}_fpr95"]
                                                                for c in cands} for g in w}
        val["rule (" + ", ".join(f"{g} {x:g}" for g, x in w.items()) + ")"] = {
            (c["model"], c["score"]): c["val_fpr95"] for c in cands}
        probes = [n for n, d in s.validation["sets"].items() if d["group"] == "synthetic"]
        if probes and all("sets_fpr95" in c for c in cands):  # probes: scored, never chosen on
            for n in probes:
                val[f"probe {n.removeprefix('probe_')}"] = {(c["model"], c["score"]): c["sets_fpr95"][n] for c in cands}
            every = [n for n in s.validation["sets"]]
            val["every proxy and probe, equal weights"] = {
                (c["model"], c["score"]): float(np.mean([c["sets_fpr95"][n] for n in every])) for c in cands}
        test: dict[str, dict] = {}
        for r in s.records:
            test.setdefault(r["ood"], {})[(r["model"], r["score"])] = r["fpr95"]
        group_of = dict(_test_sets([s]))
        for row in proxy_table(val, test, seed=s.seed):
            row["group"], row["test"] = group_of[row["group"]], row["group"]
            rows.append(row)
    return rows


def _proxy_source(validation: dict, group: str) -> str:
    return ", ".join(d["source"] for d in validation["sets"].values() if d["group"] == group)


def proxy_summary(rows: list[dict]) -> list[dict]:
    """Mean ± sd over seeds of each (proxy, test) regret and ρ."""
    keys = list(dict.fromkeys((r["proxy"], r["test"], r["group"]) for r in rows))
    out = []
    for proxy, test, group in keys:
        rs = [r for r in rows if r["proxy"] == proxy and r["test"] == test]
        rho = [r["spearman"] for r in rs if r["spearman"] == r["spearman"]]
        (reg, reg_sd), (sp, sp_sd) = mean_std([r["regret"] for r in rs]), mean_std(rho) if rho else (float("nan"), 0.0)
        out.append({"proxy": proxy, "test": test, "group": group, "regret": reg, "regret_std": reg_sd,
                    "regret_max": max(r["regret"] for r in rs), "spearman": sp, "spearman_std": sp_sd,
                    "n_seeds": len(rs), "picks": "; ".join(dict.fromkeys(r["pick"] for r in rs))})
    return out


def flooding_rows(seeds: list[SeedRun]) -> list[dict]:
    """Per model (UM, UMAP) and epoch: the fraction of steps with CE below ζ, mean ± sd over seeds, and ζ."""
    rows = []
    for model in ("um", "umap"):
        logs = [s.finetune_log.get(model) or [] for s in seeds]
        for e in range(max((len(x) for x in logs), default=0)):
            vals = [x[e]["ce_below_zeta"] for x in logs if len(x) > e and "ce_below_zeta" in x[e]]
            ces = [x[e]["train_ce"] for x in logs if len(x) > e]
            if vals:
                (m, sd), (ce, _) = mean_std(vals), mean_std(ces)
                rows.append({"model": model, "epoch": e + 1, "ce_below_zeta": m, "ce_below_zeta_std": sd,
                             "train_ce": ce, "n_seeds": len(vals)})
    zetas = [(s.summary.get("zeta") or {}).get("value") for s in seeds]
    for r in rows:
        r["zeta_mean"] = float(np.mean([z for z in zetas if z is not None])) if any(z is not None for z in zetas) else None
    return rows


def seed_rows(seeds: list[SeedRun]) -> list[dict]:
    """Each seed's machine, start, wall-clock per stage and the share of validation + tuning."""
    rows = []
    for s in seeds:
        m, t = s.summary.get("machine") or {}, s.summary.get("timings_s") or {}
        total = t.get("total")
        extra = sum(t.get(k, 0.0) for k in OVERHEAD)
        rows.append({"seed": s.seed, "host": m.get("host"), "cpu": m.get("cpu"), "cores": m.get("cores"),
                     "torch_threads": m.get("torch_threads"), "started_utc": m.get("started_utc"),
                     **{f"{k}_s": v for k, v in t.items()},
                     "validate_tune_share": extra / total if total else None})
    return rows


def _fmt(m: float | None, sd: float | None = None, d: int = 1) -> str:
    if m is None or m != m:
        return "—"
    return f"{m:.{d}f}" + (f" ± {sd:.{d}f}" if sd is not None else "")


def headline_md(groups: list[dict], models: list[str]) -> str:
    """Per group (near, far, synthetic, mean): one row per detector, FPR95 mean ± sd per model."""
    out = []
    for g in GROUPS:
        rows = [r for r in groups if r["ood"] == g]
        if not rows:
            continue
        scores = list(dict.fromkeys(r["score"] for r in rows))
        cell = {(r["model"], r["score"]): r for r in rows}
        out += [f"### {g}", "", "| detector | " + " | ".join(LABELS.get(m, m) for m in models) + " |",
                "|---|" + "---:|" * len(models)]
        for sc in scores:
            cells = [_fmt(cell[(m, sc)]["fpr95"], cell[(m, sc)]["fpr95_std"]) if (m, sc) in cell else "—"
                     for m in models]
            out.append(f"| {sc} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def verdict_counts(paired: list[dict]) -> list[dict]:
    """Per variant and group: how many detectors held / did not hold / were within noise."""
    out = []
    for v in dict.fromkeys(r["variant"] for r in paired):
        for g in GROUPS:
            rs = [r for r in paired if r["variant"] == v and r["ood"] == g]
            if rs:
                out.append({"variant": v, "group": g, **{k: sum(r["verdict"] == k for r in rs)
                                                          for k in ("held", "did not hold", "within noise", "one seed")}})
    return out


def evidence(root: str | Path, out: str | Path | None = None, title: str | None = None) -> dict:
    """Every evidence table of the seeds under ``root`` into ``out`` (default ``root/evidence``), plus
    ``evidence.md``, the page a reader starts from."""
    seeds = load_seeds(root)
    out = Path(out) if out is not None else Path(root) / "evidence"
    models = list(dict.fromkeys(r["model"] for r in seeds[0].records))
    tables = {"groups": group_rows(seeds), "paired": paired_rows(seeds, tuple(m for m in models if m != "base")),
              "recommendation": recommendation_rows(seeds), "proxies": proxy_rows(seeds), "flooding": flooding_rows(seeds),
              "seeds": seed_rows(seeds)}
    tables.update(recommendation_summary=recommendation_summary(tables["recommendation"]),
                  proxies_summary=proxy_summary(tables["proxies"]), verdicts=verdict_counts(tables["paired"]))
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        write_table(out, name, rows, f"{name} over seeds {', '.join(str(s.seed) for s in seeds)}")
    sets = {k: v.get("sha256") for k, v in (seeds[0].summary.get("sets") or {}).items() if isinstance(v, dict)}
    write_text(out / "evidence.md", _page(title or str(root), seeds, models, tables, sets))
    return tables


def _page(title: str, seeds: list[SeedRun], models: list[str], t: dict, sets: dict) -> str:
    ids = ", ".join(str(s.seed) for s in seeds)
    lines = [f"# Evidence: {title}", "", f"Seeds {ids} ({len(seeds)}); FPR95 in % (ID positive, lower is better), "
             "mean ± sd over seeds. Chosen on validation only; test numbers are reported, never chosen on.", "",
             "## Per group (headline)", "", headline_md(t["groups"], models),
             "## Paired differences (variant − base, same seed and detector): verdict counts over detectors", "",
             "Verdict: the 95% t-interval of the mean FPR95 difference lies below 0 → held; above 0 → did not hold; "
             "contains 0 → within noise.", "",
             "| variant | group | held | did not hold | within noise | one seed (no interval) |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {LABELS.get(r['variant'], r['variant'])} | {r['group']} | {r['held']} | {r['did not hold']} | "
              f"{r['within noise']} | {r['one seed']} |" for r in t["verdicts"]]
    lines += ["", "Every pair, per group and per set: `paired.md`.", "",
              "## The recommendation against the base model's best detector (test FPR95, per seed)", "",
              "| seed | pick | base best (default params) | base best (tuned allowed) | "
              + " | ".join(f"{g}: pick / base default / base tuned" for g in GROUPS) + " |",
              "|---|---|---|---|" + "---|" * len(GROUPS)]
    for r in t["recommendation"]:
        cells = [f"{_fmt(r[f'pick_{g}_fpr95'])} / {_fmt(r[f'base_default_{g}_fpr95'])} / "
                 f"{_fmt(r[f'base_tuned_{g}_fpr95'])}" for g in GROUPS]
        lines.append(f"| {r['seed']} | {r['pick']} | {r['base_default']} | {r['base_tuned']} | " + " | ".join(cells) + " |")
    lines += ["", "| pick − | group | mean ± sd | 95% CI half | better in | worse in | verdict |",
              "|---|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r['reference']} | {r['group']} | {_fmt(r['delta_fpr95'], r['delta_fpr95_std'], 2)} | "
              f"{_fmt(r['ci95_half'], d=2)} | {r['better_in']}/{r['n_seeds']} | {r['worse_in']}/{r['n_seeds']} | "
              f"{r['verdict']} |" for r in t["recommendation_summary"]]
    lines += ["", "## What each validation proxy is worth (regret = test FPR95 of its pick − best test FPR95)", "",
              "| proxy | test | regret mean ± sd | max | Spearman ρ mean ± sd | picks |", "|---|---|---:|---:|---:|---|"]
    lines += [f"| {r['proxy']} | {r['test']} | {_fmt(r['regret'], r['regret_std'])} | {_fmt(r['regret_max'])} | "
              f"{_fmt(r['spearman'], r['spearman_std'], 2)} | {r['picks']} |" for r in t["proxies_summary"]]
    lines += ["", "Per seed: `proxies.md`.", "", "## Flooding: fraction of fine-tuning steps with CE below ζ", "",
              "| model | epoch | CE < ζ | train CE | ζ (mean) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {LABELS[r['model']]} | {r['epoch']} | {_fmt(r['ce_below_zeta'], r['ce_below_zeta_std'], 3)} | "
              f"{_fmt(r['train_ce'], d=4)} | {_fmt(r['zeta_mean'], d=4)} |" for r in t["flooding"]]
    lines += ["", "## Seeds: machine and wall-clock", "", "| seed | host | CPU | cores | started (UTC) | total s | "
              "validate + tune s | share |", "|---|---|---|---:|---|---:|---:|---:|"]
    for r in t["seeds"]:
        extra = sum(r.get(f"{k}_s") or 0.0 for k in OVERHEAD)
        lines.append(f"| {r['seed']} | {r['host']} | {r['cpu']} | {r['cores']} | {r['started_utc']} | "
                     f"{_fmt(r.get('total_s'), d=0)} | {extra:.0f} | {_fmt(100 * (r['validate_tune_share'] or 0), d=1)}% |")
    if sets:
        lines += ["", "## Set hashes (seed " + str(seeds[0].seed) + ")", "", "| set | sha256 |", "|---|---|"]
        lines += [f"| {k} | `{v}` |" for k, v in sets.items() if v]
    return "\n".join(lines) + "\n"
