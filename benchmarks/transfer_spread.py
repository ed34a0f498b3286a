"""How differently one expression deforms different faces: the transfer-consistency probe.

    python benchmarks/transfer_spread.py --ict ../shared/data/ict-facekit --data ~/.cache/facemodel/ict4d \\
        [--models MODEL_DIR ...] [--trials 2]

For the ICT 4D ground truth (4 random identities x 5 blendshape-weight rows of the dataset) and
for each model (4 prior identity codes x 5 prior expression codes, noise shared per identity),
prints ``facemodel.training.transfer.transfer_consistency`` in both spaces: the spread over
identities of what each expression does (per-triangle deformation gradients, unitless; per-vertex
displacements, pseudo-Huber, mm) and the deformation itself. Seeded (docs/training.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from facemodel.data.builder import ICTFaceGenerator
from facemodel.data.dataset import FaceDataset
from facemodel.data.ict import ICTSource
from facemodel.model import FaceModel
from facemodel.training.transfer import transfer_codes, transfer_consistency, transfer_triangles


def _row(name: str, meshes: torch.Tensor, faces: torch.Tensor) -> str:
    cells = []
    for space in ("gradient", "displacement"):
        loss, size = transfer_consistency(meshes, faces, space=space)
        cells += [f"{float(loss):.4f}", f"{float(size):.3f}"]
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ict", type=Path, required=True)
    p.add_argument("--data", type=Path, default=Path("~/.cache/facemodel/ict4d").expanduser())
    p.add_argument("--models", type=Path, nargs="*", default=[])
    p.add_argument("--trials", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(1)
    source = ICTSource(a.ict)
    gen, tpl = ICTFaceGenerator(source), source.face_template()
    faces = torch.from_numpy(np.asarray(tpl.faces, np.int64)[transfer_triangles(tpl.vertices, tpl.faces)])
    weights = np.asarray(FaceDataset(a.data, split="train").meta("blendshapes"))
    rng = np.random.default_rng(0)
    print("| source | gradient spread | deformation |Q - I| | displacement spread (mm) | displacement (mm) |")
    print("|---|---|---|---|---|")
    for t in range(a.trials):
        w = weights[rng.choice(len(weights), 5, replace=False)]
        m = np.stack([gen.meshes(rng.standard_normal(100).astype(np.float32), w) for _ in range(4)])
        print(_row(f"ICT 4D ground truth, trial {t}", torch.from_numpy(m), faces))
    for path in a.models:
        model = FaceModel.from_pretrained(path).eval()
        dim = max(s.stop for s in model.code_slices.values())
        for t in range(a.trials):
            z = transfer_codes(model.code_slices, dim, 4, 4, generator=torch.Generator().manual_seed(t))
            with torch.no_grad():
                v = model(z).view(4, 5, -1, 3)
            print(_row(f"{path}, trial {t}", v, faces))


if __name__ == "__main__":
    main()
