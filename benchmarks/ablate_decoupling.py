"""Short warm-started ablations of the decoupling deviations (docs/training.md).

    OMP_NUM_THREADS=1 python benchmarks/ablate_decoupling.py --checkpoint RUN/checkpoint.pt \\
        --out ~/.cache/facemodel/ablations/NAME --steps 800 [key=value ...]
    OMP_NUM_THREADS=1 python benchmarks/ablate_decoupling.py --probe MODEL_DIR [MODEL_DIR ...]

The first form continues a run's checkpoint for ``--steps`` generator steps with the run's own
config plus the overrides (``facemodel train --init-from``), exports the raw and the EMA
generator, then probes both. The second form only probes exported models. The probe is a
reduced Table 1: decoupling with the cached full embedding nets (n = m = 40 instead of 100,
seeded) and identity spill (40 faces x 5 expression codes) with the overall motion of the same
pairs; plus a label-free check of who controls the expression: a ridge read-out of the 53
blendshape weights fitted on the training meshes (the training module's ``BlendshapeMeter``),
its mean absolute difference between samples that share only the expression code, only the
identity code, or nothing. A decoupled model reads alike when the expression code is shared.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def probe(path: Path, nets, spill_vertices, meter, *, n: int = 40) -> dict:
    from facemodel.evaluation.decoupling import decoupling_scores
    from facemodel.evaluation.metrics import model_diversity
    from facemodel.evaluation.protocol import FaceModelAdapter
    from facemodel.evaluation.spill import identity_spill
    from facemodel.model import FaceModel

    model = FaceModel.from_pretrained(path)
    m = FaceModelAdapter(model)
    t0 = time.perf_counter()
    d = decoupling_scores(m, nets, n=n, m=n, generator=torch.Generator().manual_seed(0))
    s = identity_spill(m, spill_vertices, num_faces=n, variants=5, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    cfg = model.generator.config
    i0 = 0
    spans = {}
    for f in cfg.factors:
        spans[f.name] = (i0, i0 + f.code_dim)
        i0 += f.code_dim
    z = torch.randn(200, cfg.code_dim, generator=g)
    read = {}
    with torch.no_grad():
        base = meter(model.template + model.generator(z))
        for name, (a, b) in spans.items():
            other = torch.randn(200, cfg.code_dim, generator=g)
            other[:, a:b] = z[:, a:b]
            read[f"share_{name}"] = float((meter(model.template + model.generator(other)) - base).abs().mean())
        read["share_nothing"] = float((base - base.roll(1, 0)).abs().mean())
    div = model_diversity(m, 10_000, generator=torch.Generator().manual_seed(0))
    return {"model": str(path), "dec_identity": d["identity"], "dec_expression": d["expression"],
            "spill_mm": s["mean_mm"], "motion_mm": s["motion_mm"], "blendshape_readout_mad": read,
            "diversity_mm": {k: round(float(v), 3) for k, v in div.items()},
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--probe", type=Path, nargs="*", default=[])
    p.add_argument("--data", type=Path, default=Path("~/.cache/facemodel/ict4d").expanduser())
    p.add_argument("--ict", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ict-facekit")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    models = list(args.probe)
    if args.checkpoint is not None:
        from facemodel.training.config import load_config
        from facemodel.training.loop import Trainer

        if args.out is None:
            p.error("--checkpoint needs --out")
        run_config = args.checkpoint.parent / "config.json"
        config = load_config(run_config, args.overrides + ["eval_every=0", "sample_every=0", "checkpoint_every=400"])
        trainer = Trainer(config, args.out, progress=False)
        fresh = trainer.warm_start(args.checkpoint)
        print(f"warm start at step {trainer.step}; new critic parameters: {fresh}", flush=True)
        trainer.train(max_steps=args.steps)
        models += [trainer.export(args.out / "model"), trainer.export(args.out / "model-raw", ema=False)]
    if not models:
        p.error("nothing to do: give --checkpoint/--out or --probe")
    from facemodel.data.dataset import FaceDataset
    from facemodel.data.ict import ICTSource
    from facemodel.evaluation.embedding import load_or_train_decoupling_nets
    from facemodel.evaluation.spill import identity_only_vertices
    from facemodel.training.expression_meter import fit_blendshape_meter

    source = ICTSource(args.ict)
    nets = load_or_train_decoupling_nets(args.data, source)
    verts = identity_only_vertices(source)
    meter, mae = fit_blendshape_meter(FaceDataset(args.data, split="train"))
    print(f"blendshape read-out: validation MAE {mae:.4f}", flush=True)
    for path in models:
        r = probe(Path(path), nets, verts, meter, n=args.n)
        print(json.dumps(r), flush=True)
        if args.out is not None:
            with open(args.out / "probe.jsonl", "a") as f:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
