"""Fit the model to iBUG-68 landmarks: 3D (any scale and pose) and 2D (a detector's output).

    python examples/fit_landmarks.py [--model DIR|REPO] [--points FILE] [--out fit-output]

Without ``--points`` the example makes its own target: a face of the test split of the ICT
4D dataset if ``--data`` is given, else a face sampled from the model, seen by a camera.
Points files: .npy / .csv / .json / .pts with 68 rows of x y [z].
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from facemodel.geometry.render import render_grid, save_png
from facemodel.io_points import load_points
from facemodel.model import FaceModel


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--points", default=None, help="68 landmarks (3D or 2D); default: a synthetic target")
    p.add_argument("--reg", type=float, default=0.01)
    p.add_argument("--out", default="fit-output")
    a = p.parse_args(argv)
    out = Path(a.out)
    model = FaceModel.from_pretrained(a.model)
    truth = None
    if a.points:
        points = torch.from_numpy(load_points(a.points)).float()
    else:
        truth = model.sample(1, seed=123, expression="happiness").vertices[0]
        points = truth[model.landmarks]  # (68, 3) mm
    if points.shape[1] == 3:
        fit = model.fit_landmarks(points, reg=a.reg)
        print(f"3D fit: landmark rmse {float(fit.rmse[0]):.3f} mm, {int(fit.iterations[0])} iterations")
    else:
        fit = model.fit_landmarks_2d(points, reg=a.reg)
        print(f"2D fit: landmark rmse {float(fit.rmse[0]):.3f} px")
    shown = [fit.vertices[0]]
    labels = ["fit (model frame)"]
    if truth is not None:
        # 2D: project the same face with a scaled-orthographic camera and fit that too
        rot = torch.tensor([[0.96, 0.0, 0.28], [0.0, 1.0, 0.0], [-0.28, 0.0, 0.96]])
        pts2d = (2.0 * truth[model.landmarks] @ rot.T)[:, :2] * torch.tensor([1.0, -1.0]) + 320  # pixels, y down
        fit2d = model.fit_landmarks_2d(pts2d, reg=a.reg)
        print(f"2D fit: landmark rmse {float(fit2d.rmse[0]):.3f} px, "
              f"mesh error {float((fit2d.vertices[0] - truth).norm(dim=-1).mean()):.2f} mm before alignment")  # fmt: skip
        err3d = float((fit.vertices[0] - truth).norm(dim=-1).mean())
        print(f"3D fit: mean vertex error to the target {err3d:.2f} mm")
        shown = [truth, fit.vertices[0], fit2d.vertices[0]]
        labels = ["target", "fit to 3D landmarks", "fit to 2D landmarks"]
    model.decode(fit.codes).export(out / "fit.obj")
    np.save(out / "codes.npy", fit.codes.cpu().numpy())
    save_png(render_grid(torch.stack(shown).numpy(), model.faces.numpy(), size=192, labels=labels, ncols=len(shown)),
             out / "fit.png")  # fmt: skip
    print(f"wrote {out / 'fit.obj'}, {out / 'codes.npy'} and {out / 'fit.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
