"""Landmark fits of faces the model never saw: upstream ICT faces, 3D points and 2D projections.

    OMP_NUM_THREADS=1 python benchmarks/bench_fit_unseen.py --model /work/main/weights \
        [--faces 100] [--seed 2026] [--select] [--linear] [--test-split 100] [--data ~/.cache/facemodel/ict4d-id1000]

Faces: the upstream ICT-FaceKit linear model (``../shared/data/ict-facekit``): identity
weights N(0, 1) on all 100 identity modes, 2-6 of the 53 blendshapes at U(0.3, 1.0) each,
drawn with ``--seed`` (validation: ``--seed`` + 1). The 68 iBUG landmarks (the model's
landmark set on the true mesh) get Gaussian noise of 0 / 1 / 2 mm per coordinate and a random
similarity (scale 0.001: metres, rotation ~0.35 rad per axis, translation ~1 m).

Metric: dense face-area RMSE (all 9,409 vertices, mm) after a similarity Procrustes of the
fitted mesh onto the true one. Baselines: the mean face (the ICT generic neutral, Procrustes
on all vertices: a generous baseline), optionally (``--linear``) the linear identity +
expression PCA of our training data (``facemodel.evaluation.baselines.linear``, 100 + 53 and
65 + 20 components) fitted to the same landmarks (ridge, pose alternated, its lambda chosen on
the validation faces), and the model's dense-encode floor (``model.encode`` of the true mesh).

``--select`` instead sweeps the prior weight on the validation faces (3D at 0-3 mm noise:
the table behind ``facemodel.fitting_prior.reg_for_noise``; 2D with 2 px detector noise at
random yaw in +-60 deg: ``DEFAULT_REG["2d"]``).

``--test-split N``: the 3D table again on N meshes of the ICT 4D dataset's test split
(``--data``; its test identities are never trained on: 100 in the 1,000-identity build
of 0.7.0), beside the same baselines.

2D: ``--yaws 0 30 45 60``: the same faces under a scaled-orthographic camera (1.5 px / mm,
640 x 480, y down) at that yaw (pitch 0), 2D landmarks with 1 px noise; reported: the dense
RMSE of the fitted mesh (Procrustes) and the landmark error normalised by the inter-ocular
distance (outer eye corners 37 / 46), against the true 2D points.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from _machine import DEFAULT_DATA, cpu_name, weights_version  # noqa: E402

import argparse
import datetime
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ICT = REPO.parent / "shared" / "data" / "ict-facekit"


def ict_faces_with_weights(ict, n: int, seed: int):
    """Upstream ICT identities (100 modes) with 2-6 blendshapes, in parts: (neutrals (n, V, 3),
    blendshape weights (n, 53), ICT's deltas (53, V, 3)), float64 mm."""
    import numpy as np

    rng = np.random.default_rng(seed)
    wid = rng.standard_normal((n, 100))
    neutral = ict.identity_mm(wid).astype(np.float64)
    w = np.zeros((n, 53))
    for i in range(n):
        k = int(rng.integers(2, 7))
        for j in rng.choice(53, k, replace=False):
            w[i, j] = rng.uniform(0.3, 1.0)
    deltas = ict.expression_shapes_mm[:53].astype(np.float64) - ict.neutral_mm.astype(np.float64)
    return neutral, w, deltas


def ict_faces(ict, n: int, seed: int):
    """(n, 9409, 3) float64 mm: upstream ICT identities (100 modes) with 2-6 blendshapes."""
    import numpy as np

    neutral, w, deltas = ict_faces_with_weights(ict, n, seed)
    return neutral + np.einsum("nk,kvc->nvc", w, deltas)


def procrustes_rmse(a, b):
    """(n, V, 3) fitted, (n, V, 3) true -> (n,) RMSE (mm) after the similarity taking a onto b."""
    import numpy as np

    out = [np.sqrt(((_umeyama(x, y) - y) ** 2).sum(1).mean())
           for x, y in zip(np.asarray(a, np.float64), np.asarray(b, np.float64))]  # fmt: skip
    return np.asarray(out)


def random_similarity(n, rng):
    import torch

    from facemodel.fitting import _so3_exp

    R = _so3_exp(torch.as_tensor(0.35 * rng.standard_normal((n, 3)))).numpy()
    t = rng.standard_normal((n, 1, 3))
    return R, t


def posed_points(lm, noise, rng):
    import numpy as np

    R, t = random_similarity(len(lm), rng)
    noisy = lm + noise * rng.standard_normal(lm.shape)
    return 0.001 * np.einsum("nkj,nij->nki", noisy, R) + t


def project(v, lm, yaw_deg, rng, lines, normals, noise_px=1.0, pitch_deg=0.0):
    """2D iBUG points of meshes v (n, V, 3) with landmarks lm (n, 68, 3) under a
    scaled-orthographic camera (1.5 px/mm, y down, 640 x 480) at a yaw / pitch; the 17 jaw
    points are the silhouette (the outermost projected vertex of each contour line of the
    true mesh, see facemodel.contour). Returns (true points, noisy points), (n, 68, 2) px."""
    import numpy as np

    a, p = np.radians(yaw_deg), np.radians(pitch_deg)
    Ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    Rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    M = np.diag([1.5, -1.5]) @ (Rx @ Ry)[:2]  # (2, 3) model mm -> px
    x = lm @ M.T + np.array([320.0, 240.0])
    for k, ln in enumerate(lines):
        c = v[:, ln] @ M.T + np.array([320.0, 240.0])  # (n, L, 2)
        j = np.argmax(c @ (M @ normals[k]), axis=1)
        x[:, k] = c[np.arange(len(v)), j]
    return x, x + noise_px * rng.standard_normal(x.shape)


def linear_fit(lin, pts, idx, reg, rounds=6):
    """Linear baseline fitted to posed 3D landmarks: ridge codes alternated with Umeyama."""
    import numpy as np
    import torch

    mean, B = lin._parts(torch.as_tensor(idx))
    mean, B = mean.double().numpy(), B.double().numpy()  # (3K,), (D, 3K)
    n, K = pts.shape[:2]
    m = np.repeat(mean.reshape(1, K, 3), n, 0)
    G = B @ B.T + reg * np.eye(len(B))
    for _ in range(rounds):
        q = np.stack([_umeyama(p, mm) for p, mm in zip(pts, m)])
        z = np.linalg.solve(G, B @ (q.reshape(n, -1) - mean).T).T
        m = (mean + z @ B).reshape(n, K, 3)
    full_mean, full_B = lin._parts(None)
    return (full_mean.double().numpy() + z @ full_B.double().numpy()).reshape(n, -1, 3)


def _umeyama(p, m):
    """Points p mapped by the similarity taking them onto m."""
    import numpy as np

    mp, mm = p.mean(0), m.mean(0)
    pc, mc = p - mp, m - mm
    U, S, Vt = np.linalg.svd(mc.T @ pc)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.diag([1, 1, d])
    R = U @ D @ Vt
    s = (S * np.diag(D)).sum() / (pc**2).sum()
    return s * pc @ R.T + mm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "weights"))
    ap.add_argument("--faces", type=int, default=100)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--noise", type=float, nargs="*", default=[0.0, 1.0, 2.0])
    ap.add_argument("--yaws", type=float, nargs="*", default=[0, 30, 45, 60])
    ap.add_argument("--pitch", type=float, default=0.0, help="camera pitch of the 2D rows, degrees")
    ap.add_argument("--select", action="store_true")
    ap.add_argument("--regs", type=float, nargs="*", default=[0.1, 0.3, 1, 3, 10, 30])
    ap.add_argument("--linear", action="store_true", help="also fit the linear baselines (needs the ICT 4D dataset)")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--encode-faces", type=int, default=20)
    ap.add_argument("--test-split", type=int, default=100, metavar="N",
                    help="also fit N meshes of the ICT 4D dataset's test split (--data; identities never trained "
                         "on; 0: skip)")  # fmt: skip
    ap.add_argument("--tols", type=float, nargs="*", default=[1e-5, 1e-2, 3e-2, 1e-1],
                    help="--select: stopping tolerances compared at the default weight")  # fmt: skip
    ap.add_argument("--calibrate-noise", type=float, nargs="*", default=None, metavar="MM",
                    help="instead: the residual levels behind noise_mm='auto' (facemodel.fitting_prior."
                         "NOISE_CALIBRATION) at these noise levels, on the validation faces")  # fmt: skip
    ap.add_argument("--select-blend", action="store_true",
                    help="instead: candidate rules of the posterior mean's share by noise (facemodel.fitting_posterior."
                         "blend_weight) on the validation faces, at --select-noise")  # fmt: skip
    ap.add_argument("--select-noise", type=float, nargs="*", default=[0.0, 0.5, 1.0, 2.0, 3.0],
                    help="--select: noise levels (mm) of the 3D weight sweep behind reg_for_noise")  # fmt: skip
    ap.add_argument("--select-2d", action="store_true",
                    help="instead: the 2D weight rule behind fit_landmarks_2d(noise_px=...) (facemodel.fitting_prior."
                         "reg_for_noise_2d, NOISE_CALIBRATION_2D): a weight sweep on the validation faces at 46 views "
                         "and noise levels, the rule with the noise given and estimated, then the real fits on the "
                         "test faces (--seed)")  # fmt: skip
    args = ap.parse_args()

    import numpy as np
    import torch

    from facemodel.data.ict import ICTSource
    from facemodel.fitting import fit_landmarks, fit_landmarks_2d
    from facemodel.contour import contour_lines
    from facemodel.landmarks import landmark_positions
    from facemodel.model import FaceModel

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = FaceModel.from_pretrained(args.model).eval()
    ict = ICTSource(ICT)
    lmk = model.landmark_set("ibug68")
    lines, normals = contour_lines(model)
    print(f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {cpu_name()}, {torch.get_num_threads()} thread(s), "
          f"model {args.model}, weights {weights_version(args.model)}")  # fmt: skip
    print("command: python " + " ".join(_sys.argv))

    def faces(seed):
        v = ict_faces(ict, args.faces, seed)
        return v, landmark_positions(torch.as_tensor(v), lmk).numpy()

    def ours3d(pts, **kw):
        t0 = time.perf_counter()
        r = fit_landmarks(model, pts.astype(np.float32), **kw)
        dt = time.perf_counter() - t0
        return r.vertices.double().numpy(), r, dt

    def ours2d(x2, **kw):
        r = fit_landmarks_2d(model, x2.astype(np.float32), **kw)
        return r.vertices.double().numpy(), r

    def nle(r, x_true):
        """Landmark error of the fitted 2D landmarks, normalised by the outer-eye-corner distance."""
        proj = r.transform_points(r.landmarks).double().numpy()
        iod = np.linalg.norm(x_true[:, 36] - x_true[:, 45], axis=1)
        return np.linalg.norm(proj - x_true, axis=-1).mean(1) / iod

    if args.calibrate_noise:
        # the table behind facemodel.fitting_prior.NOISE_CALIBRATION: the residual level of the first
        # (1 mm) fit of noise_mm="auto" per true noise level, on validation faces
        from facemodel.fitting_prior import residual_level

        v, lm = faces(args.seed + 1)
        rng = np.random.default_rng(args.seed + 1)
        levels, sds = [], []
        for noise in args.calibrate_noise:
            # the first fit of noise_mm="auto" is one MAP fit: no posterior blend (on by default for a given noise)
            r = fit_landmarks(model, posed_points(lm, noise, rng).astype(np.float32), noise_mm=1.0, posterior=False,
                              decode=False)
            d = (r.residuals / r.scale[:, None]).double().numpy()  # model-space mm
            lev = residual_level(d, np.isfinite(d))
            levels.append(lev.mean())
            sds.append(lev.std())
        print(f"\nnoise calibration ({len(v)} validation faces, seed {args.seed + 1}): residual level of the 1 mm fit")
        print("| noise (mm) |" + "".join(f" {x:g} |" for x in args.calibrate_noise))
        print("|---" * (len(args.calibrate_noise) + 1) + "|")
        print("| mean level (mm) |" + "".join(f" {x:.4f} |" for x in levels))
        print("| its std. dev. |" + "".join(f" {x:.4f} |" for x in sds))
        print(f"NOISE_CALIBRATION = (\n    {tuple(float(x) for x in args.calibrate_noise)},\n"
              f"    {tuple(round(float(x), 4) for x in levels)},\n)")
        return

    if args.select_blend:
        # the rule behind facemodel.fitting_posterior.blend_weight: candidate shares of the posterior
        # mean by noise, on the validation faces (the default fit otherwise)
        import facemodel.fitting as fitting_module

        rules = {"1 - 1/(1 + 4 s^2)": lambda s: 1 - 1 / (1 + 4 * s * s),
                 "clip(s, 0, 1)": lambda s: np.clip(s, 0.0, 1.0),
                 "1 - 1/(1 + 2 s^2) (the default)": lambda s: 1 - 1 / (1 + 2 * s * s),
                 "1 - 1/(1 + 8 s^2)": lambda s: 1 - 1 / (1 + 8 * s * s),
                 "1 (the posterior mean alone)": lambda s: np.where(np.asarray(s) > 0.17, 1.0, 0.0)}  # fmt: skip
        v, lm = faces(args.seed + 1)
        rng = np.random.default_rng(args.seed + 1)
        pts_by_noise = {noise: posed_points(lm, noise, rng) for noise in args.select_noise}
        print(f"\nposterior blend rules ({len(v)} validation faces, seed {args.seed + 1}): mean dense RMSE (mm); "
              "share of the posterior mean by the estimated noise s")  # fmt: skip
        print("| rule |" + "".join(f" {n:g} mm |" for n in args.select_noise))
        print("|---|" + "---:|" * len(args.select_noise))
        print("| MAP only (posterior=False) |" + "".join(
            f" {procrustes_rmse(ours3d(p, posterior=False)[0], v).mean():.3f} |" for p in pts_by_noise.values()))
        original = fitting_module.blend_weight
        try:
            for name, rule in rules.items():
                fitting_module.blend_weight = rule
                print(f"| {name} |" + "".join(f" {procrustes_rmse(ours3d(p)[0], v).mean():.3f} |"
                                              for p in pts_by_noise.values()), flush=True)  # fmt: skip
        finally:
            fitting_module.blend_weight = original
        return

    if args.select_2d:
        select_2d(args, model, faces, lines, normals, nle)
        return

    if args.select:
        from facemodel.fitting_prior import reg_for_noise

        v, lm = faces(args.seed + 1)
        rng = np.random.default_rng(args.seed + 1)
        print("\n3D, validation faces: model-prior weight -> mean dense RMSE (mm) per landmark noise (mm per "
              "coordinate); last columns: the best weight and reg_for_noise")  # fmt: skip
        print("| noise |" + "".join(f" {r:g} |" for r in args.regs) + " best | reg_for_noise (its RMSE) |")
        print("|---:" * (len(args.regs) + 3) + "|")
        for noise in args.select_noise:
            pts = posed_points(lm, noise, rng)
            es = [procrustes_rmse(ours3d(pts, reg=reg, prior="model")[0], v).mean() for reg in args.regs]
            rf = reg_for_noise(noise)
            ef = procrustes_rmse(ours3d(pts, noise_mm=noise)[0], v).mean()
            print(f"| {noise:g} |" + "".join(f" {e:.3f} |" for e in es)
                  + f" {args.regs[int(np.argmin(es))]:g} | {rf:.2f} ({ef:.3f}) |")  # fmt: skip
        print("\nStopping tolerance (defaults otherwise): mean dense RMSE (mm) (mean iterations)")
        print("| fit |" + "".join(f" tol {t:g} |" for t in args.tols))
        print("|---|" + "---:|" * len(args.tols))
        for noise in (0.0, 1.0, 2.0):
            pts = posed_points(lm, noise, rng)
            cells = []
            for t in args.tols:
                fv, r, _ = ours3d(pts, tol=t)
                cells.append(f" {procrustes_rmse(fv, v).mean():.3f} ({r.iterations.float().mean():.1f}) |")
            print(f"| 3D, {noise:g} mm |" + "".join(cells), flush=True)
        for yaw in (0, 30, 60):
            lt, ln = project(v, lm, yaw, rng, lines, normals)
            cells = []
            for t in args.tols:
                fv, r = ours2d(ln, tol=t)
                cells.append(f" {procrustes_rmse(fv, v).mean():.3f} ({r.iterations.float().mean():.1f}) |")
            print(f"| 2D, yaw {yaw}, 1 px |" + "".join(cells), flush=True)
        pts = posed_points(lm, 1.0, rng)
        print("\n3D, validation faces, 1 mm noise: the paper's l2 prior for comparison")
        print("| prior | reg | mean RMSE | median | plausibility (median) |")
        print("|---|---:|---:|---:|---:|")
        for reg in (0.01, 0.1, 1.0):
            fv, r, _ = ours3d(pts, reg=reg, prior="l2")
            e = procrustes_rmse(fv, v)
            print(f"| l2 | {reg} | {e.mean():.3f} | {np.median(e):.3f} | {np.median(r.plausibility.numpy()):.2f} |")
        yaws = rng.uniform(-60, 60, len(v))
        pairs = [project(v[i : i + 1], lm[i : i + 1], yaws[i], rng, lines, normals, noise_px=2.0) for i in range(len(v))]
        lm2 = np.concatenate([q[0] for q in pairs])
        lm2n = np.concatenate([q[1] for q in pairs])
        print("\n2D, validation faces, yaw U(-60, 60), 2 px noise: prior weight -> dense RMSE, NLE")
        print("| prior | reg | mean RMSE (mm) | NLE vs true points | plausibility (median) |")
        print("|---|---:|---:|---:|---:|")
        for prior, regs in (("l2", [0.01]), ("model", args.regs)):
            for reg in regs:
                fv, r = ours2d(lm2n, reg=reg, prior=prior)
                e = procrustes_rmse(fv, v)
                print(f"| {prior} | {reg} | {e.mean():.3f} | {nle(r, lm2).mean():.4f} | "
                      f"{np.median(r.plausibility.numpy()):.2f} |")  # fmt: skip
        return

    v, lm = faces(args.seed)
    rng = np.random.default_rng(args.seed)
    mean_face = np.repeat(ict.neutral_mm[None].astype(np.float64), len(v), 0)
    base = {"mean face (ICT neutral, dense Procrustes)": procrustes_rmse(mean_face, v).mean()}
    lins = {}
    if args.linear:
        from facemodel.evaluation.baselines.linear import LinearModel

        for di, de in ((100, 53), (65, 20)):
            t0 = time.perf_counter()
            lins[(di, de)] = LinearModel.fit(args.data, identity_dim=di, expression_dim=de, max_meshes=6000)
            print(f"linear {di}+{de} fitted in {time.perf_counter() - t0:.0f} s")
        # the baselines' lambda on validation faces at 1 mm
        vv, lmv = faces(args.seed + 1)
        ptsv = posed_points(lmv, 1.0, np.random.default_rng(args.seed + 1))
        idx = model.landmarks.numpy() if lmk.is_vertex_set else lmk.vertex_indices[:, 0].numpy()
        lin_reg = {}
        for key, lin in lins.items():
            scores = {reg: procrustes_rmse(linear_fit(lin, ptsv, idx, reg), vv).mean() for reg in (0.1, 1, 10, 100)}
            lin_reg[key] = min(scores, key=scores.get)
            print(f"linear {key}: validation RMSE per lambda {({k: round(s, 3) for k, s in scores.items()})}")
    def table3d(title, v, lm, rng, mean_rmse):
        print(f"\n3D, {title}: dense face-area RMSE after Procrustes (mm)")
        head = ("| noise (mm) | ours (defaults: noise estimated, posterior blended) | its estimate (mean) | "
                "ours, noise_mm = noise | ours, MAP only (posterior=False) | ours, MAP at noise_mm = 1 (the default until "
                "0.5.0) | ours, old default (l2, 0.01) |")  # fmt: skip
        head += "".join(f" linear {di}+{de} |" for di, de in lins) + " mean face | ours: median plausibility | ms / face |"
        print(head)
        print("|---" * (head.count("|") - 1) + "|")
        for noise in args.noise:
            pts = posed_points(lm, noise, rng)
            fv, r, dt = ours3d(pts)
            fn, _, _ = ours3d(pts, noise_mm=noise)
            fm, _, _ = ours3d(pts, posterior=False)
            f1, _, _ = ours3d(pts, noise_mm=1.0, posterior=False)
            fo, _, _ = ours3d(pts, reg=0.01)
            row = (f"| {noise} | {procrustes_rmse(fv, v).mean():.3f} | {r.noise_mm.mean():.2f} | "
                   f"{procrustes_rmse(fn, v).mean():.3f} | {procrustes_rmse(fm, v).mean():.3f} | "
                   f"{procrustes_rmse(f1, v).mean():.3f} | {procrustes_rmse(fo, v).mean():.3f} |")  # fmt: skip
            for key, lin in lins.items():
                idx = model.landmarks.numpy() if lmk.is_vertex_set else lmk.vertex_indices[:, 0].numpy()
                row += f" {procrustes_rmse(linear_fit(lin, pts, idx, lin_reg[key]), v).mean():.3f} |"
            row += f" {mean_rmse:.3f} | {np.median(r.plausibility.numpy()):.2f} | {dt / len(v) * 1e3:.1f} |"
            print(row)

    table3d(f"{len(v)} unseen upstream ICT faces (seed {args.seed})", v, lm, rng,
            base["mean face (ICT neutral, dense Procrustes)"])  # fmt: skip
    if args.test_split:
        from facemodel.data.dataset import FaceDataset

        ds = FaceDataset(args.data, split="test")
        rows = np.sort(np.random.default_rng(args.seed).choice(len(ds), min(args.test_split, len(ds)), replace=False))
        vt = ds.vertices(rows).astype(np.float64)
        lmt = landmark_positions(torch.as_tensor(vt), lmk).numpy()
        mt = procrustes_rmse(np.repeat(ict.neutral_mm[None].astype(np.float64), len(vt), 0), vt).mean()
        table3d(f"{len(vt)} meshes of the ICT 4D test split ({args.data}, rows drawn with seed {args.seed})", vt, lmt,
                np.random.default_rng(args.seed), mt)  # fmt: skip
    if args.encode_faces:
        n = min(args.encode_faces, len(v))
        t0 = time.perf_counter()
        enc = model.encode(torch.as_tensor(v[:n], dtype=torch.float32), align="similarity")
        print(f"\nmodel's dense-encode floor (model.encode, first {n} faces, {time.perf_counter() - t0:.0f} s): "
              f"{procrustes_rmse(enc.vertices.double().numpy(), v[:n]).mean():.3f} mm")  # fmt: skip
    if args.yaws:
        print(f"\n2D, same faces, scaled orthographic 1.5 px/mm, pitch {args.pitch:g} deg, 1 px noise: dense RMSE (mm) / NLE (IOD)")
        print("| yaw | ours (defaults) | ours, old default (l2 0.01, fixed jaw) | median plausibility |")
        print("|---:|---:|---:|---:|")
        for yaw in args.yaws:
            lt, ln = project(v, lm, yaw, rng, lines, normals, pitch_deg=args.pitch)
            fv, r = ours2d(ln)
            fo, ro = ours2d(ln, reg=0.01, loss="l2", contour=False)
            print(f"| {yaw:.0f} | {procrustes_rmse(fv, v).mean():.2f} / {nle(r, lt).mean():.4f} | "
                  f"{procrustes_rmse(fo, v).mean():.2f} / {nle(ro, lt).mean():.4f} | {np.median(r.plausibility.numpy()):.2f} |")  # fmt: skip



def select_2d(args, model, faces, lines, normals, nle) -> None:
    """``--select-2d``: the evidence behind ``reg_for_noise_2d`` / ``NOISE_CALIBRATION_2D``."""
    import numpy as np

    from facemodel.fitting import fit_landmarks_2d
    from facemodel.fitting_prior import (NOISE_CALIBRATION_2D, noise_from_level_2d, off_frontal_deg, reg_for_noise_2d,
                                        residual_level)

    regs = np.array([0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64])
    views = [(y, 0, px) for y in (0, 30, 45, 60) for px in (0, 0.5, 1, 2, 3, 4, 6)]
    views += [(y, 0, px) for y in (5, 10, 20) for px in (0, 0.5, 1, 2)]
    views += [(0, p, px) for p in (-15, 15) for px in (0, 1)] + [(20, 15, 0), (20, 15, 1)]
    v, lm = faces(args.seed + 1)
    rng = np.random.default_rng(args.seed + 1)
    w0 = np.ones(68)
    w0[:17] = 0.0
    rows = []
    for yaw, pitch, px in views:
        x = project(v, lm, yaw, rng, lines, normals, noise_px=px, pitch_deg=pitch)[1].astype(np.float32)
        first = fit_landmarks_2d(model, x, reg=8.0, prior="model", contour=False, weights=w0, decode=False)
        d = (first.residuals / first.scale[:, None]).double().numpy()
        ok = np.isfinite(d) & (w0 > 0)
        level = residual_level(np.where(ok, d, 0.0), ok)
        angle = off_frontal_deg(first.rotation.double().numpy())
        E = np.stack([procrustes_rmse(fit_landmarks_2d(model, x, reg=float(r), prior="model").vertices.double().numpy(), v)
                      for r in regs])  # fmt: skip
        rows.append((yaw, pitch, px, level, angle, E, first.scale.double().numpy()))
        print(f"  yaw {yaw} pitch {pitch} {px} px: level {level.mean():.3f}, weights " +
              " ".join(f"{e:.3f}" for e in E.mean(1)), flush=True)  # fmt: skip

    def at(E, reg):  # each face's error at its weight, interpolated in log weight over the sweep
        x = np.clip(np.log(reg), np.log(regs[0]), np.log(regs[-1]))
        return np.mean([np.interp(x[f], np.log(regs), E[:, f]) for f in range(E.shape[1])])

    print(f"\n2D weight rule ({len(v)} validation faces, seed {args.seed + 1}, 1.5 px/mm, contour-aware fits): "
          "mean dense RMSE (mm)")
    print("| yaw | pitch | noise (px) | mean level (mm) | fixed 8 (default) | best weight of the sweep | "
          "rule, noise given | rule, noise estimated |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    tot = np.zeros(4)
    for yaw, pitch, px, level, angle, E, scale in rows:
        fixed = at(E, np.full(E.shape[1], 8.0))
        best = E.mean(1).min()
        given = at(E, reg_for_noise_2d(px / scale, angle))
        est = at(E, reg_for_noise_2d(noise_from_level_2d(level), angle))
        tot += (fixed, best, given, est)
        print(f"| {yaw} | {pitch} | {px:g} | {level.mean():.3f} | {fixed:.3f} | {best:.3f} ({regs[E.mean(1).argmin()]:g}) "
              f"| {given:.3f} | {est:.3f} |")  # fmt: skip
    tot /= len(rows)
    print(f"| mean of the {len(rows)} views | | | | {tot[0]:.3f} | {tot[1]:.3f} | {tot[2]:.3f} | {tot[3]:.3f} |")
    print("NOISE_CALIBRATION_2D in use:", NOISE_CALIBRATION_2D, "; measured mean levels at yaw 0-60, pitch 0:",
          {px: round(float(np.mean([r[3].mean() for r in rows if r[2] == px and r[1] == 0 and r[0] in (0, 30, 45, 60)])), 3)
           for px in (0, 0.5, 1, 2, 3, 4, 6)})  # fmt: skip

    v, lm = faces(args.seed)
    rng = np.random.default_rng(args.seed)
    print(f"\nThe real fits on the test faces ({len(v)}, seed {args.seed}): mean dense RMSE (mm) / NLE against the "
          "noise-free points / mean estimated noise (px)")
    print("| yaw | noise (px) | default (fixed 8) | noise_px given | noise_px='auto' | estimated (px) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for yaw in (0, 30, 60):
        for px in (0, 1, 2, 3):
            xt, xn = project(v, lm, yaw, rng, lines, normals, noise_px=px)
            cells = []
            for kw in ({}, {"noise_px": float(px)}, {"noise_px": "auto"}):
                r = fit_landmarks_2d(model, xn.astype(np.float32), **kw)
                cells.append(f"{procrustes_rmse(r.vertices.double().numpy(), v).mean():.3f} / {nle(r, xt).mean():.4f}")
            print(f"| {yaw} | {px} | " + " | ".join(cells) + f" | {float((r.noise_mm * r.scale).mean()):.2f} |", flush=True)


if __name__ == "__main__":
    main()
