"""``facemodel evaluate`` (also ``python -m facemodel.evaluation``)."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys

__all__ = ["add_evaluate_parser", "run_evaluate", "main"]


def add_evaluate_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", default=None, help="model folder or Hub id (default: the released weights)")
    p.add_argument("--data", required=True, help="ICT 4D dataset folder the model was trained on")
    p.add_argument("--out", required=True, help="output folder for report.md, results.json and figures/")
    p.add_argument("--quick", action="store_true", help="reduced sizes (minutes; numbers indicative only)")
    p.add_argument("--ict", default=None, help="ICT-FaceKit folder (default FACEMODEL_ICT_DIR or ../shared/data/ict-facekit)")
    p.add_argument("--cache-dir", default=None, help="where fitted baselines and embedding nets are cached "
                   "(default $FACEMODEL_CACHE or ~/.cache/facemodel)")  # fmt: skip
    p.add_argument("--baselines", default=None, help="comma-separated subset of linear,multilinear,autoencoder ('' for none)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a protocol size, e.g. --set num_pairs=2000 --set adam_iterations=300 "
                        "(see facemodel.evaluation.suite.EvaluationSettings)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true")
    return p


def run_evaluate(args: argparse.Namespace) -> int:
    from .suite import EvaluationSettings, evaluate

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            from .protocol import EvaluationError

            raise EvaluationError(f"--set {item!r} must look like key=value (e.g. num_pairs=2000)")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    if args.baselines is not None:
        overrides["baselines"] = tuple(b for b in args.baselines.split(",") if b)
    from pydantic import ValidationError

    from .protocol import EvaluationError

    try:
        settings = EvaluationSettings.quick_settings(**overrides) if args.quick else EvaluationSettings.full(**overrides)
    except ValidationError as exc:
        raise EvaluationError(f"invalid --set value: {exc}") from exc
    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        logging.getLogger("facemodel").setLevel(logging.INFO)
    argv = sys.argv[1:]
    argv = argv[argv.index("evaluate") + 1:] if "evaluate" in argv else argv
    results = evaluate(args.model, args.data, args.out, settings=settings, ict_dir=args.ict, cache_dir=args.cache_dir,
                       overwrite=args.overwrite, progress=not args.quiet,
                       command="facemodel evaluate " + " ".join(shlex.quote(a) for a in argv))  # fmt: skip
    for name, row in results["table1"].items():
        print(f"{name}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if v is not None))
    print(f"wrote {args.out}/report.md")
    return 0


def main(argv=None) -> int:
    from ..errors import FaceModelError

    p = add_evaluate_parser(argparse.ArgumentParser(prog="python -m facemodel.evaluation", description=__doc__))
    args = p.parse_args(argv)
    try:
        return run_evaluate(args)
    except FaceModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
