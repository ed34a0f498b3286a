"""Do the expression labels look like their names? Motion strength and read-back per label.

    OMP_NUM_THREADS=1 python benchmarks/label_strength.py [--model DIR] [--data ~/.cache/facemodel/ict4d-id1000]
        [--faces 64] [--seed 0]

Data: the dataset's test split; each labelled mesh against a neutral-labelled mesh of the same
identity (identities with both), RMS over all 9,409 face-model vertices (mm), mean per label.
Model: ``--faces`` random faces (identity and noise from ``model.sample``'s prior, ``--seed``),
each decoded with the label's code and with the neutral label's code; the same RMS of the
difference, mean per label. Ratio model / data: issue 22 asks 0.8-1.25 for every label.
Read-back: ``model.blendshapes_from_expression`` of the label code (53 ICT weights) against the
label's definition in the builder (``facemodel.data.expressions.EMOTION_PROTOTYPES`` through
``au_to_weights`` at intensity 1): Pearson correlation (issue 22: >= 0.8), and the weights' sum
beside the definition's. Works for any model folder with a blendshape map (a release or a run's
``--export`` / snapshot with its map).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from _machine import DEFAULT_DATA, cpu_name  # noqa: E402

import argparse
import datetime

REPO = _Path(__file__).resolve().parents[1]


def data_motion(ds, labels):
    """{label: mean RMS (mm) of labelled test meshes against a neutral mesh of their identity}."""
    import numpy as np

    names = ds.expression_labels
    ids, exp = ds.meta("identity"), ds.meta("expression")
    neutral = names.index("neutral")
    out = {}
    for lab in labels:
        k = names.index(lab)
        rms = []
        for i in np.unique(ids[exp == k]):
            ref = np.flatnonzero((ids == i) & (exp == neutral))
            if ref.size == 0:
                continue
            rows = np.flatnonzero((ids == i) & (exp == k))
            v = ds.vertices(np.concatenate([ref[:1], rows])).astype(np.float64)
            rms.extend(np.sqrt(((v[1:] - v[:1]) ** 2).sum(-1).mean(-1)).tolist())
        out[lab] = (float(np.mean(rms)) if rms else float("nan"), len(rms))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "weights"))
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--faces", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numpy as np
    import torch

    from facemodel.data.dataset import FaceDataset
    from facemodel.data.expressions import EMOTION_PROTOTYPES, au_to_weights
    from facemodel.model import FaceModel

    torch.set_num_threads(1)
    model = FaceModel.from_pretrained(args.model).eval()
    ds = FaceDataset(args.data, split="test")
    labels = [n for n in model.config.label_names["expression"] if n != "neutral"]
    print(f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {cpu_name()}, model {args.model}, data {args.data}")
    print("command: python " + " ".join(_sys.argv))
    dm = data_motion(ds, labels)
    base = model.sample(args.faces, seed=args.seed)
    sl = model.code_slices["expression"]
    codes = model.label_codes("expression")
    neutral = codes[model.label_index("expression", "neutral")]

    def decode(code):
        z = base.codes.clone()
        z[:, sl] = code
        with torch.no_grad():
            return model(z).double()

    v0 = decode(neutral)
    print("\n| label | model motion (mm) | data motion (mm, meshes) | model / data | read-back r | read-back sum / definition sum |")
    print("|---|---:|---:|---:|---:|---:|")
    for lab in labels:
        k = model.label_index("expression", lab)
        mm = float(((decode(codes[k]) - v0) ** 2).sum(-1).mean(-1).sqrt().mean())
        d, nd = dm[lab]
        want = au_to_weights(EMOTION_PROTOTYPES[lab])
        try:
            got = model.blendshapes_from_expression(codes[k][None])[0].double().numpy()
            r = float(np.corrcoef(got, want)[0, 1])
            rb = f"{r:.2f} | {got.sum():.2f} / {want.sum():.2f}"
        except Exception as exc:  # a model without a blendshape map
            rb = f"- | - ({type(exc).__name__})"
        print(f"| {lab} | {mm:.2f} | {d:.2f} ({nd}) | {mm / d:.2f} | {rb} |")


if __name__ == "__main__":
    main()
