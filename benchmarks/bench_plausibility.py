"""Where do 2D landmark fits land on the plausibility scale (the code's Mahalanobis norm under
the model prior, ``FitResult.plausibility``)? A reference for the photo fits' figures.

    OMP_NUM_THREADS=1 python benchmarks/bench_plausibility.py [--model weights] [--faces 40]

Rows: the model's own random faces (``sample(n, seed=5)``: their true codes, then default 2D fits
of their 68 projected landmarks at yaw 0 and 0 / 1 / 2 px of noise), and unseen upstream ICT
faces (``bench_fit_unseen.ict_faces``, seed 2026: default 2D fits at 2 px, and the dense encode
of the whole mesh, ``model.encode``). Printed beside the prior's typical range (1st / 50th / 99th
percentile of random codes' norms, ``FitResult.typical_range``).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from _machine import cpu_name, weights_version  # noqa: E402
from bench_fit_unseen import ICT, ict_faces, project  # noqa: E402

import argparse
import datetime

REPO = _Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "weights"))
    ap.add_argument("--faces", type=int, default=40)
    ap.add_argument("--ict", default=str(ICT))
    args = ap.parse_args()

    import numpy as np
    import torch

    from facemodel.contour import contour_lines
    from facemodel.data.ict import ICTSource
    from facemodel.landmarks import landmark_positions
    from facemodel.model import FaceModel
    from facemodel.prior import code_prior

    torch.set_num_threads(1)
    model = FaceModel.from_pretrained(args.model).eval()
    print(f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {cpu_name()}, weights {weights_version(args.model)}")
    print("command: OMP_NUM_THREADS=1 python " + " ".join(_sys.argv))
    prior = code_prior(model)
    lines, normals = contour_lines(model)
    ibug = model.landmark_set("ibug68")

    def fit2d(v, lm, px):
        _, pts = project(v, lm, 0, np.random.default_rng(1), lines, normals, noise_px=px)
        return model.fit_landmarks_2d(torch.as_tensor(pts, dtype=torch.float32), decode=False)

    def row(what, p):
        p = np.asarray(p, np.float64)
        print(f"| {what} | {np.median(p):.2f} | {p.min():.2f}-{p.max():.2f} |")

    faces = model.sample(args.faces, seed=5)
    v = faces.vertices.double()
    lm = landmark_positions(v, ibug).numpy()
    v = v.numpy()
    first = fit2d(v, lm, 0.0)
    lo, mid, hi = first.typical_range
    print(f"\nthe prior's typical range (random codes, 1st / 50th / 99th percentile): {lo:.2f} / {mid:.2f} / {hi:.2f}\n")
    print("| codes | plausibility, median | range |\n|---|---:|---:|")
    row(f"{args.faces} random faces of the model: their true codes", prior.mahalanobis(faces.codes.double().numpy()))
    row("the same faces, 2D fit of their 68 landmarks, 0 px", first.plausibility)
    for px in (1.0, 2.0):
        row(f"the same faces, 2D fit, {px:g} px", fit2d(v, lm, px).plausibility)
    vi = ict_faces(ICTSource(args.ict), args.faces, 2026)
    lmi = landmark_positions(torch.as_tensor(vi), ibug).numpy()
    row(f"{args.faces} unseen ICT faces, 2D fit, 2 px", fit2d(vi, lmi, 2.0).plausibility)
    enc = model.encode(torch.as_tensor(vi, dtype=torch.float32), align="similarity")
    row("the same ICT faces, dense encode of the whole mesh", prior.mahalanobis(enc.codes.double().numpy()))


if __name__ == "__main__":
    main()
