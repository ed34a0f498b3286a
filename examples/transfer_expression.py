"""Expression transfer: give several faces the expression of one source face.

    python examples/transfer_expression.py [--model DIR|REPO] [--source MESH] [--targets MESH ...] [--out transfer-output]

Meshes must be in the template's topology (e.g. ICT 4D meshes or earlier outputs); they
are encoded first. Without meshes the example uses sampled faces and the "surprise" label.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from facemodel.geometry.render import render_grid, save_png
from facemodel.model import FaceModel


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--source", default=None, help="source mesh (its expression is transferred)")
    p.add_argument("--targets", nargs="*", default=None, help="target meshes (their identities are kept)")
    p.add_argument("--out", default="transfer-output")
    a = p.parse_args(argv)
    out = Path(a.out)
    model = FaceModel.from_pretrained(a.model)
    source = model.encode(a.source) if a.source else model.sample(1, seed=5, expression="surprise")
    targets = model.encode(a.targets) if a.targets else model.sample(3, seed=6, expression="neutral")
    result = model.transfer_expression(source, targets)
    result.export(out / "transferred.obj")
    n = len(targets)
    grid = torch.cat([targets.vertices, result.vertices, source.vertices])
    labels = [f"target {i}" for i in range(n)] + [f"target {i} + source expression" for i in range(n)] + ["source"]
    save_png(render_grid(grid.numpy(), model.faces.numpy(), ncols=n, labels=labels), out / "transfer.png")
    print(f"wrote {n} meshes to {out} and {out / 'transfer.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
