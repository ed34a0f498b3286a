"""Render a trained model like the paper's Fig. 3, 8 and 9.

    python examples/model_figures.py [--model RUN/model] [--out model-figures] [--prefix released]

Without ``--model`` it draws the released weights installed with the package. The figures go
to ``model-figures/`` (not tracked); ``--out docs/images`` re-renders the README's. Writes ``<prefix>_samples.png`` (random samples), ``<prefix>_same_identity.png`` (each row
one identity code, random expression codes), ``<prefix>_same_expression.png`` (each row
one expression code, random identities) and ``<prefix>_expression_labels.png`` (the learned
label code of each expression on a few random identities: the label gallery), 512 px tiles.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from facemodel.geometry.render import render_grid, save_png
from facemodel.model import FaceModel


@torch.no_grad()
def figures(model: FaceModel, out: Path, prefix: str, *, rows: int = 2, cols: int = 4, size: int = 512, seed: int = 0,
            gallery_identities: int = 3) -> list[Path]:  # fmt: skip
    """Write the four figures (``rows`` x ``cols`` faces each; the label gallery: every label on
    ``gallery_identities`` random identities) as ``out/<prefix>_<name>.png``; returns the paths.

    Random codes come from ``model.sample``: its default expression prior (realistic blendshape
    weights through the map, for models that have one), N(0, I) identity and noise codes."""
    g = torch.Generator().manual_seed(seed)
    faces = model.faces.numpy()
    paths = []

    def save(name: str, v: torch.Tensor, ncols: int, labels=None) -> None:
        path = out / f"{prefix}_{name}.png"
        save_png(render_grid(v.numpy(), faces, size=size, ncols=ncols, labels=labels), path)
        paths.append(path)

    save("samples", model.sample(rows * cols, generator=g).vertices, cols)
    for factor, name in (("identity", "same_identity"), ("expression", "same_expression")):
        if factor not in model.code_slices:
            continue
        # each row: one random code of the factor (from the prior), the other factors random per face
        rows_v = [model.sample(cols, generator=g, **{factor: model.sample(1, generator=g).codes[0, model.code_slices[factor]]})
                  for _ in range(rows)]  # fmt: skip
        save(name, torch.cat([f.vertices for f in rows_v]), cols)
    if "expression" in model.config.label_names:
        names = list(model.config.label_names["expression"])
        v = torch.cat([model.sample(len(names), generator=g, expression=names,
                                    identity=model.sample(1, generator=g).identity[0]).vertices
                       for _ in range(gallery_identities)])  # fmt: skip
        save("expression_labels", v, len(names), labels=names * gallery_identities)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder or Hub repo id (default: the released weights)")
    p.add_argument("--out", default="model-figures", help="output folder (default: model-figures, not tracked)")
    p.add_argument("--prefix", default=None, help="file name prefix (default: released, or model with --model)")
    p.add_argument("--size", type=int, default=512, help="tile size in pixels (default 512)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    model = FaceModel.from_pretrained(a.model)
    prefix = a.prefix or ("released" if a.model is None else "model")
    for path in figures(model, Path(a.out), prefix, size=a.size, seed=a.seed):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
