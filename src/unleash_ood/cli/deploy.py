"""``unleash-ood export`` and ``detect``: a finished run → a bundle → a CSV of verdicts.

Light at import: the deploy modules (torch, data, onnx) are imported inside the commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError


def _model_and_score(args: argparse.Namespace) -> tuple[str, str, dict | None]:
    """``--model``/``--score``, or with ``--recommended`` the run's recommendation (model, detector, params)."""
    if args.recommended:
        from ..run.recommend import read_pick

        if args.model or args.score:
            raise UserError("--recommended exports the run's recommendation: give it without --model/--score")
        pick = read_pick(args.run)
        return pick["model"], pick["detector"], pick["params"]
    if not (args.model and args.score):
        raise UserError("give --model and --score, or --recommended (the pick of `unleash-ood recommend`)")
    return args.model, args.score, None


def cmd_export(args: argparse.Namespace) -> None:
    from ..deploy.export import ExportRequest, export_run

    model, score, params = _model_and_score(args)
    spec = export_run(ExportRequest(run=Path(args.run), model=model, score=score, out=Path(args.out),
                                    tpr=args.tpr, format=args.format, device=args.device, params=params))
    c = spec.calibration
    shown = ", ".join(f"{k}={v}" for k, v in spec.score.params.items())
    print(f"{args.out}: {spec.model.kind} {spec.model.arch} + {spec.score.name}{f' ({shown})' if shown else ''} "
          f"({spec.format}); threshold "
          f"{c.threshold:.6g} accepts {100 * (1 - c.flag_rate):.1f}% of {c.size} held-out ID validation images")


def cmd_detect(args: argparse.Namespace) -> None:
    from ..deploy.inputs import detect

    pred = detect(args.bundle, args.inputs, args.out, device=args.device, batch_size=args.batch_size)
    print(f"{args.out}: {len(pred)} images, {int(pred.is_ood.sum())} flagged OOD "
          f"({100 * pred.is_ood.mean():.1f}%)")


def add_deploy_parsers(sub) -> None:
    """Register ``export`` and ``detect`` on the main parser's subcommands."""
    x = sub.add_parser("export", help="turn a finished run into a deployable OOD detector (a bundle directory)")
    x.add_argument("--run", required=True, help="run directory (from demo/train/um/umap)")
    x.add_argument("--model",
                   help="a model the run holds: base, um, ce_finetune, umap, oe, oe_umap, … (the run lists them)")
    x.add_argument("--score", help="a registered score, e.g. Energy, MSP, Mahalanobis")
    x.add_argument("--recommended", action="store_true",
                   help="export the run's recommendation (model, score and its params; `unleash-ood recommend`) "
                        "instead of --model/--score")
    x.add_argument("--out", required=True, help="bundle directory to write")
    x.add_argument("--tpr", type=float, default=0.95,
                   help="fraction of held-out ID validation images the threshold accepts (default 0.95)")
    x.add_argument("--format", choices=["torch", "onnx"], default="torch",
                   help="torch: safetensors weights; onnx: one graph with the mask baked in")
    x.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to fit the score and calibrate (default auto)")
    x.set_defaults(func=cmd_export)

    d = sub.add_parser("detect", help="class, score and in/out verdict per image, as CSV")
    d.add_argument("bundle", help="bundle directory (from export)")
    d.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, npz:PATH or folder:PATH")
    d.add_argument("--out", required=True, help="CSV to write (source, pred, prob, score, is_ood)")
    d.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    d.add_argument("--batch-size", type=int, default=512)
    d.set_defaults(func=cmd_detect)
