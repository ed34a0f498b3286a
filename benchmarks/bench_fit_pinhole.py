"""The pinhole camera of 2D fits at close range: known and fitted focal length against the
scaled-orthographic default, on the model's own faces.

    OMP_NUM_THREADS=1 python benchmarks/bench_fit_pinhole.py [--model weights] [--faces 30] [--seed 3]

Faces: ``model.sample(n, seed, truncation=0.8)``, posed by random cameras 350-450 mm from a
1000 px pinhole camera (principal point (320, 240); pitch ±14°, yaw ±29°, roll ±6°; shifts ±30
mm), their 68 iBUG landmarks projected exactly (and with 0.5 px Gaussian noise for the fitted
focal length). Contours off (the jaw points are the model's fixed jaw vertices), L2 loss, so
the figures are about the camera alone. Printed per setting: dense RMSE of the fitted mesh
against the true one (mm, 9,409 vertices, no alignment: the mesh in model space), landmark
RMSE (px), and for the fitted focal length its relative error. Settings:

- weak prior (``reg=1e-3, prior="model"``, 40 iterations): what the camera model recovers;
- the default prior weight;
- the focal length fitted (default prior, 0.5 px noise; and weak prior, exact points).

The README's pinhole paragraph quotes this table.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from _machine import cpu_name, weights_version  # noqa: E402

import argparse
import datetime

import numpy as np

REPO = _Path(__file__).resolve().parents[1]
F, C = 1000.0, np.array([320.0, 240.0])  # focal length and principal point (px)
FLIP = np.diag([1.0, -1.0, -1.0])  # template (x right, y up, z to the viewer) -> camera (x right, y down, z ahead)


def cameras(n: int, seed: int, yaw: float = 0.5):
    """(n, 3, 3) rotations (template -> camera: x right, y down, z ahead) and (n, 3) translations (mm)."""
    from facemodel.fitting import _so3_exp

    g = np.random.default_rng(seed)
    w = np.stack([g.uniform(-0.25, 0.25, n), g.uniform(-yaw, yaw, n), g.uniform(-0.1, 0.1, n)], 1)
    t = np.stack([g.uniform(-30, 30, n), g.uniform(-30, 30, n), g.uniform(350, 450, n)], 1)
    return _so3_exp(w) @ FLIP, t


def project(v, R, t):
    """(n, K, 3) mm -> (n, K, 2) px through the pinhole camera (F, C)."""
    q = v @ R.transpose(0, 2, 1) + t[:, None]
    return F * q[..., :2] / q[..., 2:3] + C


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "weights"))
    ap.add_argument("--faces", type=int, default=30)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()

    import torch

    from facemodel.fitting import fit_landmarks_2d
    from facemodel.landmarks import landmark_positions
    from facemodel.model import FaceModel

    torch.set_num_threads(1)
    model = FaceModel.from_pretrained(args.model).eval()
    print(f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {cpu_name()}, weights {weights_version(args.model)}")
    print("command: python " + " ".join(_sys.argv))
    faces = model.sample(args.faces, seed=args.seed, truncation=0.8)
    v = faces.vertices.double()
    lmk = model.landmark_set("ibug68")
    lm = torch.stack([landmark_positions(vb, lmk) for vb in v]).numpy()
    R, t = cameras(args.faces, args.seed + 1)
    x = project(lm, R, t).astype(np.float32)
    noisy = x + 0.5 * np.random.default_rng(args.seed + 2).standard_normal(x.shape).astype(np.float32)
    v = v.numpy()

    def dense(res):
        return np.sqrt(((res.vertices.double().numpy() - v) ** 2).sum(-1).mean(1))

    base = dict(contour=False, loss="l2")
    weak = dict(base, reg=1e-3, prior="model", max_iters=40)
    pin = dict(camera="pinhole", principal_point=C)
    rows = [
        ("weak prior, exact points", "pinhole, f known", x, dict(weak, focal_length=F, **pin)),
        ("weak prior, exact points", "orthographic", x, weak),
        ("default prior, exact points", "pinhole, f known", x, dict(base, focal_length=F, **pin)),
        ("default prior, exact points", "orthographic", x, base),
        ("default prior, 0.5 px noise", "pinhole, f fitted", noisy, dict(base, **pin)),
        ("weak prior, exact points", "pinhole, f fitted", x, dict(weak, **pin)),
    ]
    print(f"\n{args.faces} faces, 1000 px camera 350-450 mm away\n")
    print("| prior, points | camera | dense RMSE mean (max), mm | landmark RMSE mean, px | focal length error: median (range) |")
    print("|---|---|---:|---:|---|")
    for what, cam, pts, kw in rows:
        res = fit_landmarks_2d(model, pts, **kw)
        d = dense(res)
        f_err = "-"
        if cam.endswith("fitted"):
            e = 100 * np.abs(res.focal_length.double().numpy() / F - 1)
            f_err = f"{np.median(e):.1f} % ({e.min():.1f}-{e.max():.1f} %)"
        print(f"| {what} | {cam} | {d.mean():.2f} ({d.max():.2f}) | {res.rmse.double().mean():.3f} | {f_err} |")


if __name__ == "__main__":
    main()
