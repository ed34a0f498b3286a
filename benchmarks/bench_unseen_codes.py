"""Does the code space reach faces the model never saw? Encode, neutral identity, transfer.

    OMP_NUM_THREADS=1 python benchmarks/bench_unseen_codes.py [--model weights] [--faces 20] [--seed 2026]

Faces: the upstream ICT-FaceKit linear model (``bench_fit_unseen.ict_faces_with_weights``: identity weights
N(0, 1) on all 100 modes, 2-6 of the 53 blendshapes at U(0.3, 1.0)), and each face's neutral
(the same identity, no blendshape). Figures (mean over faces, mm, RMS over the 9,409 vertices
after a similarity Procrustes onto the truth):

- dense encode: ``model.encode(face, align="similarity")`` against the face;
- neutral identity: ``model.encode`` of the face's neutral against that neutral;
- expression transfer: ``model.transfer_expression(encoded face i, encoded face i+1)`` against
  the truth, face i+1's identity with face i's blendshape weights (ICT's linear deltas);
- ICT's own transfer (the additive deltas added to the encoded target) as a reference.

Issue 22 asks <= 0.8 / 0.3 / 1.2 mm.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from _machine import cpu_name  # noqa: E402
from bench_fit_unseen import ICT, ict_faces_with_weights, procrustes_rmse  # noqa: E402

import argparse
import datetime

REPO = _Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "weights"))
    ap.add_argument("--faces", type=int, default=20)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--ict", default=str(ICT))
    args = ap.parse_args()

    import numpy as np
    import torch

    from facemodel.data.ict import ICTSource
    from facemodel.model import FaceModel

    torch.set_num_threads(1)
    model = FaceModel.from_pretrained(args.model).eval()
    ict = ICTSource(args.ict)
    neutral, w, deltas = ict_faces_with_weights(ict, args.faces, args.seed)
    motion = np.einsum("nk,kvc->nvc", w, deltas)  # each face's blendshape motion (ICT's linear deltas)
    v = neutral + motion
    print(f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {cpu_name()}, model {args.model}")
    print("command: python " + " ".join(_sys.argv))
    f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    enc = model.encode(f32(v), align="similarity")
    enc_n = model.encode(f32(neutral), align="similarity")
    with torch.no_grad():
        dense = procrustes_rmse(enc.vertices.double().numpy(), v)
        neut = procrustes_rmse(enc_n.vertices.double().numpy(), neutral)
        tgt = np.roll(np.arange(args.faces), -1)  # face i's expression onto face i+1's identity
        moved = model.transfer_expression(enc.codes, enc.codes[tgt]).vertices.double().numpy()
    truth = neutral[tgt] + motion
    trans = procrustes_rmse(moved, truth)
    # ICT's additive deltas on the encoded target's neutral (what a linear rig would do)
    with torch.no_grad():
        tn = model.neutralize(enc.codes[tgt]).vertices.double().numpy()
    additive = procrustes_rmse(tn + motion, truth)
    print(f"\n{args.faces} upstream ICT faces, seed {args.seed}; mm, mean (median)")
    print("| figure | model | issue 22 |\n|---|---:|---:|")
    print(f"| dense encode | {dense.mean():.3f} ({np.median(dense):.3f}) | <= 0.8 |")
    print(f"| neutral identity encode | {neut.mean():.3f} ({np.median(neut):.3f}) | <= 0.3 |")
    print(f"| expression transfer i -> i+1 | {trans.mean():.3f} ({np.median(trans):.3f}) | <= 1.2 |")
    print(f"| ICT's deltas on the encoded target's neutral (reference) | {additive.mean():.3f} | |")


if __name__ == "__main__":
    main()
