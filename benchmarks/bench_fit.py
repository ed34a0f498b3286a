"""Time sparse-landmark fitting (paper §5, Eq. 13) against the paper's Adam protocol.

    python benchmarks/bench_fit.py [--model DIR] [--faces 50] [--batch 1000] [--noise-mm 1.0]

Targets: faces decoded from the model at random codes z ~ N(0, I), their 68 iBUG landmarks
with Gaussian noise (``--noise-mm`` per coordinate, model space) under a random
similarity (scale 0.001: metres). Every solver fits the same points with lambda = ``--reg``
(paper: 0.01). Reported: median wall time of one fit (``fit_landmarks`` on a (68, 3)
array, decoding the mesh at the end, and without the decode), landmark RMSE (mm, model
space), RMSE of the whole fitted mesh against the ground-truth mesh (mm: the paper's
metric), and the throughput of one call on a batch. Single thread by default.

The model: ``--model DIR`` (a ``save_pretrained`` folder; default the repository's released
``weights/``), or ``--model random``: the ICT template with a randomly initialised generator at
the paper's sizes whose output layer is scaled x10 (codes move vertices by mm).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from _machine import DEFAULT_DATA, cpu_name, weights_version  # noqa: E402

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "weights"  # the released weights of this checkout


def _threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL),
                   help="FaceModel folder (default: this checkout's weights/), or 'random' (a random generator)")
    p.add_argument("--ict", default=None, help="ICT-FaceKit folder for the random model (default: FACEMODEL_ICT_DIR)")
    p.add_argument("--faces", type=int, default=50, help="single-face fits timed per solver (Adam: --adam-faces)")
    p.add_argument("--adam-faces", type=int, default=10)
    p.add_argument("--adam-iters", type=int, default=1000)
    p.add_argument("--adam-lr", type=float, default=0.01)
    p.add_argument("--paper-faces", type=int, default=2,
                   help="faces fitted with the literal paper protocol (full decode every Adam step)")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--noise-mm", type=float, default=1.0)
    p.add_argument("--targets", choices=("model", "dataset"), default="model",
                   help="model: meshes decoded at z ~ N(0, I); dataset: meshes of a dataset folder's test split")
    p.add_argument("--data", default=DEFAULT_DATA, help="dataset for --targets dataset")
    p.add_argument("--reg", type=float, default=None,
                   help="prior weight (default: the fit's default, the model prior; a value: the paper's lambda ||z||^2)")
    p.add_argument("--max-iters", type=int, nargs="*", default=[6, 10], help="Gauss-Newton settings to time")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    _threads(args.threads)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from facemodel.fitting import _so3_exp, fit_landmarks
    from facemodel.model import FaceModel

    model, source = _load_model(args, FaceModel)
    g = torch.Generator().manual_seed(args.seed)
    n_total = max(args.faces, args.adam_faces, args.batch)
    D = model.config.generator.code_dim
    if args.targets == "model":
        z_true = torch.randn(n_total, D, generator=g)
        with torch.no_grad():
            verts = torch.cat([model(z_true[i : i + 256]) for i in range(0, n_total, 256)])
        targets = "model faces at z ~ N(0, I)"
    else:
        from facemodel.data.dataset import FaceDataset

        ds = FaceDataset(args.data, split="test")
        rows = np.sort(np.random.default_rng(args.seed).choice(len(ds), min(n_total, len(ds)), replace=False))
        rows = np.resize(rows, n_total)  # repeat when the split is smaller than the batch
        verts = torch.from_numpy(np.asarray(ds.vertices(rows), dtype=np.float32))
        targets = f"test meshes of {args.data}"
    lm = verts[:, model.landmarks] + args.noise_mm * torch.randn(n_total, 68, 3, generator=g)
    R = _so3_exp(0.35 * torch.randn(n_total, 3, generator=g))
    pts = (0.001 * lm @ R.transpose(1, 2) + torch.randn(n_total, 1, 3, generator=g)).numpy()

    def time_single(n, **kw):
        """Median time of n one-face fits, mean iterations, landmark and mesh RMSE (mm)."""
        fit_landmarks(model, pts[0], **kw)  # warm the caches
        times, its, lmk, surf = [], [], [], []
        for i in range(n):
            t0 = time.perf_counter()
            res = fit_landmarks(model, pts[i], **kw)
            vertices = res.vertices  # decoded here, once (None with decode=False)
            times.append(time.perf_counter() - t0)
            its.append(int(res.iterations[0]))
            lmk.append(float(res.rmse[0] / res.scale[0]))  # input units -> model-space mm
            if vertices is not None:
                surf.append(float((vertices[0] - verts[i]).norm(dim=-1).pow(2).mean().sqrt()))
        return float(np.median(times)), float(np.mean(its)), float(np.mean(lmk)), float(np.mean(surf)) if surf else float("nan")

    rows = []
    for mi in args.max_iters:
        t_med, its, lmk, surf = time_single(args.faces, max_iters=mi, reg=args.reg)
        t_nodec = time_single(args.faces, max_iters=mi, reg=args.reg, decode=False)[0]
        rows.append((f"Gauss-Newton, max_iters={mi}", t_med, t_nodec, its, lmk, surf, args.faces))
    gn_ref = rows[0]
    # the one-fit path: the noise given, no posterior blend (the default until 0.5.0)
    one = {} if args.reg is not None else {"noise_mm": args.noise_mm, "posterior": False}
    if one:
        t_med, its, lmk, surf = time_single(args.faces, max_iters=args.max_iters[0], **one)
        t_nodec = time_single(args.faces, max_iters=args.max_iters[0], decode=False, **one)[0]
        rows.append((f"Gauss-Newton, noise_mm={args.noise_mm:g}, posterior=False (one MAP fit), max_iters="
                     f"{args.max_iters[0]}", t_med, t_nodec, its, lmk, surf, args.faces))  # fmt: skip
    t_med, its, lmk, surf = time_single(args.faces, max_iters=args.max_iters[0], reg=args.reg, init="mean")
    rows.append((f"Gauss-Newton, init=mean, max_iters={args.max_iters[0]}", t_med, float("nan"), its, lmk, surf, args.faces))
    t_med, its, lmk, surf = time_single(args.faces, solver="lbfgs", reg=args.reg)
    rows.append(("L-BFGS (20 runs x 20)", t_med, float("nan"), its, lmk, surf, args.faces))
    # the paper's protocol: Adam from a random code, one face at a time
    t_med, its, lmk, surf = time_single(args.adam_faces, solver="adam", reg=args.reg, max_iters=args.adam_iters,
                                        solver_options={"lr": args.adam_lr})  # fmt: skip
    adam = (f"Adam (paper protocol: random init, {args.adam_iters} steps, lr {args.adam_lr})", t_med, float("nan"),
            its, lmk, surf, args.adam_faces)  # fmt: skip
    rows.append(adam)
    if args.paper_faces:
        rows.append(_paper_protocol(model, lm, verts, args))
    # Gauss-Newton on the same faces as Adam, for a like-for-like RMSE
    gn_on_adam = time_single(args.adam_faces, reg=args.reg, max_iters=args.max_iters[0])

    batch = {}
    for mi in args.max_iters:
        for decode in (False, True):
            for kind, kw in (("default", {"reg": args.reg}),) + ((("one MAP fit", one),) if one else ()):
                fit_landmarks(model, pts[:8], max_iters=mi, decode=decode, **kw)
                t0 = time.perf_counter()
                res = fit_landmarks(model, pts[: args.batch], max_iters=mi, decode=decode, **kw)
                _ = res.vertices
                dt = time.perf_counter() - t0
                batch[(mi, decode, kind)] = (args.batch / dt, float(res.iterations.float().mean()),
                                             float(res.converged.float().mean()))  # fmt: skip

    print(_machine(args, source, torch, np))
    print()
    print(f"Targets: {targets}, 68 landmarks + {args.noise_mm} mm noise per coordinate, random "
          f"similarity (scale 0.001); reg = {'the default (model prior)' if args.reg is None else args.reg}.")  # fmt: skip
    print()
    print("| solver | median time / face (incl. mesh decode) | without mesh decode | iterations | landmark RMSE (mm) | mesh RMSE vs truth (mm) | faces |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, t, tn, its, lmk, surf, n in rows:
        tn_s = "" if tn != tn else f"{tn * 1e3:.2f} ms"
        print(f"| {name} | {t * 1e3:.2f} ms | {tn_s} | {its:.1f} | {lmk:.3f} | {surf:.3f} | {n} |")
    print()
    print(f"Gauss-Newton (max_iters={args.max_iters[0]}, without decode) vs Adam on the same {args.adam_faces} faces: "
          f"{adam[1] / gn_ref[2]:.0f}x faster; landmark RMSE {gn_on_adam[2]:.3f} vs {adam[4]:.3f} mm, "
          f"mesh RMSE {gn_on_adam[3]:.3f} vs {adam[5]:.3f} mm.")  # fmt: skip
    print()
    print(f"| batch of {args.batch} faces (one call) | fits/s | mean iterations | converged |")
    print("|---|---:|---:|---:|")
    for (mi, decode, kind), (fps, its, conv) in batch.items():
        print(f"| Gauss-Newton ({kind}), max_iters={mi}, {'with' if decode else 'without'} mesh decode | {fps:.0f} | "
              f"{its:.1f} | {conv:.0%} |")  # fmt: skip


def _paper_protocol(model, lm, verts, args):
    """Adam from a random code on Eq. 13 with the landmarks read from the full decoded mesh
    at every step, points already in model space (the paper's registered scans)."""
    import numpy as np
    import torch

    D = model.config.generator.code_dim
    params = list(model.parameters())
    flags = [q.requires_grad for q in params]
    for q in params:
        q.requires_grad_(False)
    times, lmk, surf = [], [], []
    try:
        for i in range(args.paper_faces):
            z = torch.randn(1, D, generator=torch.Generator().manual_seed(args.seed)).requires_grad_(True)
            opt = torch.optim.Adam([z], lr=args.adam_lr)
            t0 = time.perf_counter()
            for _ in range(args.adam_iters):
                opt.zero_grad(set_to_none=True)
                reg = 0.01 if args.reg is None else args.reg
                loss = (model(z)[0, model.landmarks] - lm[i]).pow(2).sum() + reg * z.pow(2).sum()
                loss.backward()
                opt.step()
            times.append(time.perf_counter() - t0)
            with torch.no_grad():
                v = model(z)[0]
            lmk.append(float((v[model.landmarks] - lm[i]).norm(dim=-1).pow(2).mean().sqrt()))
            surf.append(float((v - verts[i]).norm(dim=-1).pow(2).mean().sqrt()))
    finally:
        for q, f in zip(params, flags):
            q.requires_grad_(f)
    name = f"Adam, literal paper protocol (full mesh decode per step, pre-aligned points, {args.adam_iters} steps)"
    return (name, float(np.median(times)), float("nan"), float(args.adam_iters), float(np.mean(lmk)),
            float(np.mean(surf)), args.paper_faces)  # fmt: skip


def _load_model(args, FaceModel):
    import numpy as np
    import torch

    if args.model != "random":
        path = Path(args.model).expanduser()
        return FaceModel.from_pretrained(path).eval(), f"trained model {path}"
    from facemodel.data.ict import ICTSource
    from facemodel.model import FaceModelConfig
    from facemodel.networks import Factor, GeneratorConfig

    ict = args.ict
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "ict-facekit"
    if ict is None and "FACEMODEL_ICT_DIR" not in os.environ and shared.is_dir():
        ict = shared  # the checkout's shared data (as the tests use)
    t = ICTSource(ict).face_template()
    torch.manual_seed(args.seed)
    cfg = GeneratorConfig(num_vertices=t.num_vertices, factors=(Factor(name="identity", code_dim=65, num_labels=10),
                                                              Factor(name="expression", code_dim=15, num_labels=7)))  # fmt: skip
    m = FaceModel(FaceModelConfig(generator=cfg), template=t.vertices, faces=t.faces,
                  uv=np.zeros((t.num_vertices, 2), np.float32), landmarks=t.landmarks)  # fmt: skip
    with torch.no_grad():
        m.generator.fc2.weight.mul_(10.0)
    return m.eval(), "ICT template + random generator (fc2 x10), paper sizes 65/15/5, hidden 512"


def _machine(args, source, torch, np) -> str:
    cpu = cpu_name()
    return "\n".join([
        "| machine | |",
        "|---|---|",
        f"| CPU | {cpu} ({os.cpu_count()} logical cores), {args.threads} thread(s) |",
        f"| software | Python {sys.version.split()[0]}, torch {torch.__version__}, numpy {np.__version__} |",
        f"| model | {source}" + (f", weights {weights_version(args.model)}" if args.model != "random" else "") + " |",
        f"| date | {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} |",
        f"| command | python {' '.join(sys.argv)} |",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
