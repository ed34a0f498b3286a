"""Command line of training: ``python -m facemodel.training`` and ``facemodel train``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from ..errors import FaceModelError

__all__ = ["add_arguments", "run", "main"]


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", help="YAML/JSON config (see configs/); with --resume, the run's own config is used")
    p.add_argument("--out", required=True, help="run folder, e.g. ~/.cache/facemodel/runs/NAME (keep it out of git)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="warm start: weights, data order and step of another run's checkpoint.pt, this run's recipe")
    p.add_argument("--reanchor", action="store_true",
                   help="with --init-from: the checkpoint was trained on another build of the data (e.g. fewer identities); "
                        "re-express its codes in this dataset's anchors and carry on (its dataset must still be on disk)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many more generator steps")
    p.add_argument("--time-limit", type=float, default=None, help="stop (with a checkpoint) after this many minutes")
    p.add_argument("--export", default=None, help="model folder to export the EMA generator to (default OUT/model)")
    p.add_argument("--export-only", action="store_true", help="export the last checkpoint's EMA generator and exit")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (JSON values), e.g. lr=1e-4 max_steps=500")
    return p


def run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .loop import Trainer

    if getattr(args, "reanchor", False) and not getattr(args, "init_from", None):
        raise FaceModelError("--reanchor carries an --init-from checkpoint onto this dataset; add --init-from CHECKPOINT")
    if getattr(args, "init_from", None) and (args.resume or args.export_only):
        raise FaceModelError("--init-from starts a new run from another run's checkpoint; it cannot be combined with "
                             "--resume or --export-only (drop --init-from to continue OUT itself)")  # fmt: skip
    out = Path(args.out).expanduser()
    config_path = args.config
    if args.export_only:
        args.resume = True
    if args.resume and config_path is None:
        config_path = out / "config.json"
    config = load_config(config_path, args.overrides)
    if args.dry_run:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return 0
    trainer = Trainer(config, out, resume=args.resume, progress=not args.quiet)
    if args.init_from:
        fresh = trainer.warm_start(Path(args.init_from).expanduser(), reanchor=getattr(args, "reanchor", False))
        print(f"warm start from step {trainer.step}" + (f"; new critic parameters: {', '.join(fresh)}" if fresh else ""))
    if args.export_only:
        path = trainer.export(args.export)
        print(f"exported step {trainer.step} to {path}")
        return 0
    if args.resume and trainer.is_main:
        config.to_file(out / "config.json")  # record overrides given on resume
    step = trainer.train(max_steps=args.max_steps, time_limit_s=None if args.time_limit is None else 60 * args.time_limit)
    if trainer.is_main:
        path = trainer.export(args.export)
        print(f"step {step}/{trainer.total_steps}: checkpoint {out / 'checkpoint.pt'}, model {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m facemodel.training", description="Train the decoupled GAN."))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run(args)
    except FaceModelError as exc:
        print(f"facemodel train: error: {exc}", file=sys.stderr)
        return 2
