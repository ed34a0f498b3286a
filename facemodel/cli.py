"""The ``facemodel`` command line.

    facemodel data build-ict --source PATH | --download --out DIR [--seed N] [--size N]
    facemodel data import --template MESH --meshes DIR --labels CSV --out DIR
    facemodel data info DIR [--json]
    facemodel train --config configs/paper.yaml --out RUN [--resume] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from . import __version__
from .errors import FaceModelError

__all__ = ["main", "build_parser"]


def _cmd_build_ict(args: argparse.Namespace) -> int:
    from .data.builder import ICTDatasetConfig, build_ict_dataset
    from .data.ict import ICTSource

    if args.download:
        from .data.download import download_ict

        source = ICTSource(download_ict(args.cache_dir, url=args.url, progress=not args.quiet))
    else:
        source = ICTSource(args.source)
    config = ICTDatasetConfig(
        seed=args.seed, size=args.size, identities=args.identities, offsets_dtype=args.dtype
    )
    manifest = build_ict_dataset(source, args.out, config, overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {manifest.num_meshes} meshes of {manifest.num_identities} identities to {args.out}")
    print(f"checksum {manifest.checksum}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from .data.generic import import_scans

    manifest = import_scans(
        args.template,
        args.meshes,
        args.labels,
        args.out,
        units=args.units,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"wrote {manifest.num_meshes} meshes of {manifest.num_identities} identities to {args.out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .data.store import read_manifest

    m = read_manifest(args.dir)
    if args.json:
        print(m.model_dump_json(indent=2))
        return 0
    c = m.counts
    print(f"{args.dir}: {m.name} (format v{m.format_version}, seed {m.seed}, units {m.units})")
    print(f"  meshes       {m.num_meshes}  ({m.num_vertices} vertices each, offsets {m.offsets_dtype})")
    print(f"  identities   {m.num_identities}")
    if "expression_labelled" in c:
        print(f"  expression   {c['expression_labelled']} labelled ({100 * c['expression_labelled'] / m.num_meshes:.1f}%)")
    for key in ("per_label", "per_kind"):
        if key in c:
            print(f"  {key[4:]:<12} " + ", ".join(f"{k} {v}" for k, v in c[key].items()))
    for split, s in c.get("per_split", {}).items():
        print(f"  {split:<12} " + ", ".join(f"{k} {v}" for k, v in s.items()))
    if m.source:
        print("  source       " + ", ".join(f"{k}: {v}" for k, v in m.source.items()))
    print(f"  checksum     {m.checksum}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facemodel", description="A decoupled 3D face model.")
    parser.add_argument("--version", action="version", version=f"facemodel {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build and inspect datasets").add_subparsers(dest="data_command", required=True)

    b = data.add_parser("build-ict", help="build the ICT 4D dataset from ICT-FaceKit")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", help="packed ICT-FaceKit folder (e.g. ../shared/data/ict-facekit)")
    src.add_argument("--download", action="store_true", help="download ICT-FaceKit at the pinned commit")
    b.add_argument("--cache-dir", default=None, help="download cache (default ~/.cache/facemodel)")
    b.add_argument("--url", default=None, help="archive URL of a mirror (default: GitHub, pinned commit)")
    b.add_argument("--out", required=True, help="output dataset folder")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--size", type=int, default=30_000, help="number of meshes (default 30000)")
    b.add_argument("--identities", type=int, default=None, help="number of identities (default size/100)")
    b.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="storage of vertex offsets")
    b.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_cmd_build_ict)

    im = data.add_parser("import", help="import registered scans: template + meshes + labels CSV")
    im.add_argument("--template", required=True, help="template mesh (OBJ/PLY)")
    im.add_argument("--meshes", required=True, help="folder of meshes in the template's topology")
    im.add_argument("--labels", required=True, help="CSV: file,identity,expression[,split,sequence,frame]")
    im.add_argument("--out", required=True)
    im.add_argument("--units", choices=("mm", "cm", "m"), default="mm", help="units of the input meshes")
    im.add_argument("--seed", type=int, default=0, help="seed of the automatic identity split")
    im.add_argument("--overwrite", action="store_true")
    im.add_argument("--quiet", action="store_true")
    im.set_defaults(func=_cmd_import)

    from .training.cli import add_arguments as add_train_arguments  # argparse only, no torch work

    train = sub.add_parser("train", help="train the decoupled GAN (same as python -m facemodel.training)")
    add_train_arguments(train).set_defaults(func=_cmd_train)

    info = data.add_parser("info", help="summarise a dataset folder")
    info.add_argument("dir")
    info.add_argument("--json", action="store_true", help="print the whole manifest")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``facemodel`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except FaceModelError as exc:
        print(f"facemodel: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facemodel: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
