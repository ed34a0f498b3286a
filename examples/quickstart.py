"""Quickstart: sample faces, transfer an expression, add expressions, fit landmarks.

    python examples/quickstart.py [--model DIR|REPO] [--out quickstart-output]

Without ``--model`` it uses the released weights installed with the package. Writes OBJ
files and one PNG that shows every step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from facemodel.geometry.render import render_grid, save_png
from facemodel.model import FaceModel


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder or Hub repo id (default: released weights)")
    p.add_argument("--out", default="quickstart-output")
    a = p.parse_args(argv)
    out = Path(a.out)
    model = FaceModel.from_pretrained(a.model)

    # 1. four random faces, reproducible from a seed
    faces = model.sample(4, seed=0)
    faces.export(out / "sample.obj")  # sample_000.obj ... sample_003.obj

    # 2. a labelled expression, and the paper's expression transfer (code swap)
    surprised = model.sample(1, seed=1, expression="surprise")
    transferred = model.transfer_expression(surprised, faces)

    # 3. add expressions to a face ("added" codes in the paper's supplement)
    combined = model.add_expressions(faces[0], "happiness", "surprise", weights=[0.7, 0.5])

    # 4. fit the model to 68 landmarks of a face it has never seen (here: a random face,
    #    moved into another pose and scale, as a detector's 3D output would be)
    target = model.sample(1, seed=42)
    landmarks = target.vertices[0, model.landmarks]  # (68, 3) mm
    angle = torch.tensor(0.3)
    rot = torch.tensor([[angle.cos(), 0, angle.sin()], [0, 1, 0], [-angle.sin(), 0, angle.cos()]])
    points = 0.001 * landmarks @ rot.T + torch.tensor([0.1, 0.2, 1.5])  # metres, rotated, moved
    fit = model.fit_landmarks(points)
    print(f"landmark fit: rmse {float(fit.rmse[0]):.2e} (metres), scale {float(fit.transform.scale[0]):.4f}")
    model.decode(fit.codes).export(out / "fit.obj")

    rows = torch.cat([faces.vertices, transferred.vertices, combined.vertices.expand(4, -1, -1)[:1],
                      surprised.vertices, target.vertices, model.decode(fit.codes).vertices])  # fmt: skip
    labels = [f"sample {i}" for i in range(4)] + [f"sample {i} + surprise" for i in range(4)]
    labels += ["0 + happy + surprise", "surprise source", "fit target", "fit result"]
    save_png(render_grid(rows.numpy(), model.faces.numpy(), ncols=4, labels=labels), out / "quickstart.png")
    print(f"wrote {out / 'quickstart.png'} and OBJ files in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
