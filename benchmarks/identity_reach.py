"""How far an identity code of k dimensions, learned from N identities, reaches unseen ICT faces.

    OMP_NUM_THREADS=1 python benchmarks/identity_reach.py [--train 240 800 2000] [--dims 50 65 80 90 100]

The ICT 4D builder draws identities as upstream ICT-FaceKit identity weights N(0, 1) on all 100
modes (``facemodel.data.ict.ICTSource.identity_mm``); the generator's identity anchor is the
whitened PCA of the training identities' neutral meshes. This measures the linear floor of that
design: the PCA of N such neutral faces, truncated to k components, and the RMSE (mm, all 9,409
vertices, no alignment needed: same frame) of 100 unseen identities (seed ``--seed`` + 1)
projected onto it. Model 0.4's identity code size is chosen from this table (docs/training.md).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from _machine import cpu_name  # noqa: E402

import argparse
import datetime

REPO = _Path(__file__).resolve().parents[1]
ICT = REPO.parent / "shared" / "data" / "ict-facekit"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ict", default=str(ICT))
    ap.add_argument("--train", type=int, nargs="*", default=[240, 800, 2000])
    ap.add_argument("--dims", type=int, nargs="*", default=[50, 65, 80, 90, 100])
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()

    import numpy as np

    from facemodel.data.ict import ICTSource

    ict = ICTSource(args.ict)
    print(f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {cpu_name()}")
    print("command: python " + " ".join(_sys.argv))
    test = ict.identity_mm(np.random.default_rng(args.seed + 1).standard_normal((args.test, 100)))
    test = test.astype(np.float64).reshape(args.test, -1)
    print("\n| training identities |" + "".join(f" k = {k} |" for k in args.dims))
    print("|---:" * (len(args.dims) + 1) + "|")
    for n in args.train:
        train = ict.identity_mm(np.random.default_rng(args.seed).standard_normal((n, 100)))
        train = train.astype(np.float64).reshape(n, -1)
        mean = train.mean(0)
        _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
        row = f"| {n} |"
        for k in args.dims:
            c = test - mean
            r = c - (c @ vt[:k].T) @ vt[:k]
            row += f" {np.sqrt((r.reshape(args.test, -1, 3) ** 2).sum(-1).mean()):.3f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
