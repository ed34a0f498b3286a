"""Random faces under each expression prior of ``FaceModel.sample``: Table 1's figures for each.

    OMP_NUM_THREADS=1 python benchmarks/bench_expression_prior.py [--model DIR]
        [--data ~/.cache/facemodel/ict4d-id1000] [--ict ../shared/data/ict-facekit] [--quick]

``sample()`` draws random expressions from realistic blendshape weights through the blendshape
map (``expression_prior="blendshapes"``, the default for models with a map) or N(0, I) codes
(``"gaussian"``, the GAN's training prior and the evaluation report's protocol). For each, the
evaluation suite's metrics of the model's random faces, with the report's settings (seed 0):
decoupling on the evaluation's embedding networks (n = m = 100), diversity (10,000 pairs: global,
same identity code, same expression code), specificity (1,000 samples against the training
meshes), roughness (256 samples), beside the training data's diversity and roughness.
The embedding networks come from the evaluation's cache (``facemodel evaluate`` trains them
once per dataset build). ``--quick``: n = m = 30, 2,000 pairs, 200 samples (a smoke run).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from _machine import DEFAULT_DATA, cpu_name, weights_version  # noqa: E402

import argparse
import datetime
import time

REPO = _Path(__file__).resolve().parents[1]


def prior_rows(model, train, nets, *, n: int, pairs: int, samples: int, rough: int, seed: int = 0) -> dict:
    """{prior: Table 1 figures of the model's random faces} for the two expression priors."""
    import torch

    from facemodel.evaluation.decoupling import decoupling_scores
    from facemodel.evaluation.metrics import model_diversity, model_specificity, roughness, roughness_reference
    from facemodel.evaluation.protocol import FaceModelAdapter

    _, rest, lap = roughness_reference(train, rough, seed=seed)
    rows = {}
    for prior in ("gaussian", "blendshapes"):
        ad = FaceModelAdapter(model, expression_prior=prior)
        t0 = time.perf_counter()
        d = decoupling_scores(ad, nets, n=n, m=n, generator=torch.Generator().manual_seed(seed))
        div = model_diversity(ad, pairs, generator=torch.Generator().manual_seed(seed))
        sp = model_specificity(ad, train, samples, generator=torch.Generator().manual_seed(seed))
        v = ad.sample(rough, generator=torch.Generator().manual_seed(seed))
        rows[prior] = {"dec_id": d["identity"], "dec_exp": d["expression"], "div": div["global"],
                       "div_id": div["identity"], "div_exp": div["expression"], "spec": sp["mean"],
                       "rough": float(roughness(v, rest, lap).mean()), "seconds": time.perf_counter() - t0}  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "weights"))
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--ict", default=str(REPO.parent / "shared" / "data" / "ict-facekit"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()

    import torch

    from facemodel import FaceModel
    from facemodel.data.dataset import FaceDataset
    from facemodel.data.ict import ICTSource
    from facemodel.evaluation.embedding import load_or_train_decoupling_nets
    from facemodel.evaluation.metrics import data_diversity, roughness_reference

    t_start = time.perf_counter()
    model = FaceModel.from_pretrained(args.model).eval()
    train = FaceDataset(args.data, split="train")
    nets = load_or_train_decoupling_nets(args.data, ICTSource(args.ict))
    n, pairs, samples, rough = (30, 2000, 200, 64) if args.quick else (100, 10_000, 1000, 256)
    data_div = data_diversity(train, pairs, generator=torch.Generator().manual_seed(0))
    data_rough = roughness_reference(train, rough, seed=0)[0]
    rows = prior_rows(model, train, nets, n=n, pairs=pairs, samples=samples, rough=rough)

    print(f"# expression priors of sample(): {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{cpu_name()}, {torch.get_num_threads()} thread(s), weights {weights_version(args.model)}, data {args.data}")  # fmt: skip
    print(f"# n = m = {n}, {pairs} pairs, {samples} specificity samples, {rough} roughness samples, seed 0; "
          f"{time.perf_counter() - t_start:.0f} s\n")
    print("| expression prior | Dec-Id (%) | Dec-Exp (%) | Div (mm) | Div-Id (mm) | Div-Exp (mm) | Sp. (mm) | Rough. (mm²) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| training data | | | {data_div['global']:.2f} | {data_div['identity']:.2f} | {data_div['expression']:.2f} | | "
          f"{data_rough:.3f} |")  # fmt: skip
    for prior, r in rows.items():
        print(f"| {prior} | {r['dec_id']:.1f} | {r['dec_exp']:.1f} | {r['div']:.2f} | {r['div_id']:.2f} | "
              f"{r['div_exp']:.2f} | {r['spec']:.2f} | {r['rough']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
