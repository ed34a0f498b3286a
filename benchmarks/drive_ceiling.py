"""How well *can* a blendshape drive match the test split? Least-squares ceilings (issue #8).

    python benchmarks/drive_ceiling.py --model DIR [--data ~/.cache/facemodel/ict4d-id1000] [--ict ../shared/data/ict-facekit]
        [--test-meshes 300] [--identity-dims 8]

Every figure is the motion alone (the mesh minus its identity's exact neutral; face-area RMSE
in mm, mean over test meshes of unseen identities), so no encoding error enters. Rigs fitted by
least squares on *every* training mesh (the best any model of that form can do on this data):

- ``ICT generic deltas``: ``sum_j e_j * delta_j``, the baseline of issue #8;
- ``through the code``: ``S (to_code(e) - to_code(0))``, a linear rig that sees the weights only
  through the model's d_exp-dimensional map (the bound of a generator whose expression part is
  linear in its code), plus the map's fallback shapes' linear deltas when it has them;
- ``53-shape linear rig``: ``R e``, fitted from the data (identity-independent, as our
  additive generator's expression is);
- ``identity-conditioned rig``: ``R_0 e + sum_j z_j R_j e`` with the first ``--identity-dims``
  identity code entries of each identity's encoded neutral.

Rows are split into the training kinds (static, emotion, free) and the test-only ``novel``
combinations; the training split never exercises 15 of the 53 shapes (weights <= 0.03).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import DEFAULT_DATA, cpu_name  # noqa: E402


def rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).sum(-1).mean(-1).sqrt()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder with a blendshape map")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--ict", default=os.environ.get("FACEMODEL_ICT_DIR", str(Path(__file__).resolve().parents[2] / "shared/data/ict-facekit")))
    p.add_argument("--test-meshes", type=int, default=300)
    p.add_argument("--identity-dims", type=int, default=8)
    p.add_argument("--ridge", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    from facemodel.data.dataset import FaceDataset
    from facemodel.data.ict import ICTSource
    from facemodel.model import FaceModel

    t0 = time.perf_counter()
    src = ICTSource(a.ict)
    deltas = torch.from_numpy(src.expression_shapes_mm - src.neutral_mm[None]).float()
    model = FaceModel.from_pretrained(a.model)
    emap, isl, J = model.expression_map, model.code_slices["identity"], a.identity_dims

    def neutrals_and_codes(ds):
        ident = ds.meta("identity")
        ids = np.unique(ident)
        pca = ds.identity_table("pca_weights")
        neutral = torch.from_numpy(np.stack([src.identity_mm(pca[i]) for i in ids])).float()
        with torch.no_grad():
            z = torch.cat([model.encode(neutral[s : s + 64]).codes for s in range(0, len(ids), 64)])[:, isl]
        return neutral, z, torch.from_numpy(np.searchsorted(ids, ident))

    def code_features(w):
        with torch.no_grad():
            return emap.to_code(w) - emap.to_code(torch.zeros(1, w.shape[1]))

    def fallback(w):  # the map's fallback shapes (linear ICT deltas), zeros without
        return model.blendshape_displacement(w).float()

    def features(w, z):
        return torch.cat([w] + [w * z[:, j : j + 1] for j in range(J)], 1)

    train = FaceDataset(a.data, split="train")
    neutral, z_tr, nidx = neutrals_and_codes(train)
    W = torch.from_numpy(train.meta("blendshapes")).clamp(0, 1).float()
    n1, d = 53 * (J + 1), code_features(W[:1]).shape[1]
    G1, Y1 = torch.zeros(n1, n1, dtype=torch.float64), torch.zeros(n1, deltas[0].numel(), dtype=torch.float64)
    G2, Y2 = torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, deltas[0].numel(), dtype=torch.float64)
    for s in range(0, len(W), 2048):
        r = np.arange(s, min(s + 2048, len(W)))
        y = (torch.from_numpy(train.vertices(r)) - neutral[nidx[r]]).reshape(len(r), -1).double()
        f, c = features(W[r], z_tr[nidx[r]]).double(), code_features(W[r]).double()
        G1 += f.T @ f
        Y1 += f.T @ y
        G2 += c.T @ c
        Y2 += c.T @ (y - fallback(W[r]).reshape(len(r), -1).double())  # the code carries the rest

    def solve(G, Y):
        return torch.linalg.solve(G + a.ridge * torch.eye(len(G), dtype=G.dtype), Y).float()

    R53, RJ, S = solve(G1[:53, :53], Y1[:53]), solve(G1, Y1), solve(G2, Y2)

    test = FaceDataset(a.data, split="test")
    rows = np.sort(np.random.default_rng(a.seed).choice(len(test), min(a.test_meshes, len(test)), replace=False))
    t_neutral, z_te, t_idx = neutrals_and_codes(test)
    w = torch.from_numpy(test.meta("blendshapes")[rows]).clamp(0, 1).float()
    truth = torch.from_numpy(test.vertices(rows)) - t_neutral[t_idx[rows]]
    kinds = np.asarray(test.manifest.kinds)[test.meta("kind")[rows]]
    novel = torch.from_numpy(kinds == "novel")
    unexercised = int((train.meta("blendshapes").max(0) < 0.1).sum())
    print(f"# {cpu_name()}, torch {torch.__version__}; {len(rows)} test meshes ({int(novel.sum())} novel), "
          f"{len(W)} training meshes; {unexercised} of 53 shapes never above 0.1 in training; "
          f"model {a.model} (d_exp {d}); {time.perf_counter() - t0:.0f} s")  # fmt: skip
    print("| motion RMSE vs the truth (mm) | all | training kinds | novel |\n|---|---|---|---|")
    V = deltas.shape[1]
    for label, motion in (
        ("ICT generic deltas (issue #8's baseline)", torch.einsum("nk,kvc->nvc", w, deltas)),
        (f"through the code: best linear rig on to_code(e) ({d} dims)"
         + (f" + the map's {len(model.fallback_blendshapes)} fallback shapes" if model.fallback_blendshapes else ""),
         (code_features(w) @ S).reshape(-1, V, 3) + fallback(w)),
        ("53-shape linear rig, least squares (identity-independent)", (w @ R53).reshape(-1, V, 3)),
        (f"identity-conditioned rig ({J} identity dims)", (features(w, z_te[t_idx[rows]]) @ RJ).reshape(-1, V, 3)),
    ):
        e = rmse(motion, truth)
        print(f"| {label} | {e.mean():.3f} | {e[~novel].mean():.3f} | {e[novel].mean():.3f} |")


if __name__ == "__main__":
    main()
