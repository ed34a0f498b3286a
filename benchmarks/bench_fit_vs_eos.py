"""Our 2D fits beside eos-py's on the same points: unseen ICT faces at yaw 0/30/45/60, and photos.

    OMP_NUM_THREADS=1 python benchmarks/bench_fit_vs_eos.py [--model DIR] [--faces 30] [--photos]

Needs eos-py and the Surrey Face Model files (see benchmarks/bench_eos.py, whose EosFitter is
used: SFM shape model, 6 expression blendshapes, contour landmarks and occluding edges, 5
iterations). For ``--photos``, the ``photo`` extra and scikit-image (``astronaut``,
``camera``): dlib's 68 points of the largest face go to both fitters.

Landmark error, normalised by the outer-eye-corner distance (iBUG 37-46) of the given
points, over the 66 points eos maps (the inner mouth corners 61 / 65 left out): eos's 50
fixed points at their vertices and its 16 jaw points at the nearest reprojected vertex of
its model contour (lenient: any contour vertex); ours at our fitted landmarks (the jaw at
the one silhouette vertex the fit chose). Synthetic faces: the error is measured against
the noise-free points, the fit sees 1 px noise; the dense 3D RMSE (Procrustes) is ours only
(the SFM has another topology). Plausibility: ours the Mahalanobis norm against our code
prior (its samples' 1st-99th percentile, ``code_prior(model).typical_range``:
7.6-10.9 for 0.3.1, 10.9-14.2 for 0.4.0); eos the norm of its 63 shape coefficients (standard normal under
the SFM's prior: typical ~ sqrt(63) = 7.9). Time: median wall time per face, one face per
call, the fitters interleaved.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))

import argparse
import datetime
import time

import bench_eos
from _machine import DEFAULT_DATA, cpu_name
from bench_fit_unseen import ICT, ict_faces, procrustes_rmse, project

KEEP = [k for k in range(68) if k not in (60, 64)]


def eos_error(fitter, result, points):
    import numpy as np

    fixed, jaw = fitter.reprojection(result, points)
    e = {**{k - 1: v for k, v in fixed.items()}, **{k - 1: v for k, v in jaw.items()}}
    return np.asarray([e[k] for k in KEEP if k in e])


def ours_error(res, points):
    import numpy as np

    proj = res.transform_points(res.landmarks)[0].double().numpy()
    return np.linalg.norm(proj - points, axis=1)[KEEP]


def run_pair(model, fitter, pts_fit, pts_true, w, h):
    """One face through both fitters: (ours result, ours s, ours errors, eos result, eos s, eos errors)."""
    import numpy as np

    from facemodel.fitting import fit_landmarks_2d

    bench_eos.IMAGE_W, bench_eos.IMAGE_H = int(w), int(h)
    t0 = time.perf_counter()
    res = fit_landmarks_2d(model, pts_fit.astype(np.float32), decode=False)
    t1 = time.perf_counter()
    er = fitter.fit(fitter.landmarks(pts_fit), contours=True)
    t2 = time.perf_counter()
    return res, t1 - t0, ours_error(res, pts_true), er, t2 - t1, eos_error(fitter, er, pts_true)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(_Path(__file__).resolve().parents[1] / "weights"))
    ap.add_argument("--sfm", default=str(bench_eos.DEFAULT_SFM))
    ap.add_argument("--faces", type=int, default=30)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--yaws", type=float, nargs="*", default=[0, 30, 45, 60])
    ap.add_argument("--pitch", type=float, default=0.0,
                    help="camera pitch of the synthetic views, degrees (issue 21: up to +-30; bench_fit_unseen.project's sign)")
    ap.add_argument("--photos", action="store_true")
    ap.add_argument("--overlays", default=None, help="write the photo overlays into this folder")
    ap.add_argument("--data", default=DEFAULT_DATA,
                    help="ICT 4D dataset: its training split's roughness is the reference of the fits' roughness")
    args = ap.parse_args()

    import numpy as np
    import torch

    from facemodel.contour import contour_lines
    from facemodel.data.ict import ICTSource
    from facemodel.landmarks import landmark_positions
    from facemodel.model import FaceModel

    torch.set_num_threads(1)
    model = FaceModel.from_pretrained(args.model).eval()
    fitter = bench_eos.EosFitter(_Path(args.sfm))
    print(f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {cpu_name()}, 1 thread, model {args.model}, "
          f"eos-py {bench_eos._eos_version()}")  # fmt: skip
    print("command: OMP_NUM_THREADS=1 python " + " ".join(_sys.argv))
    lines, normals = contour_lines(model)
    from facemodel.data.dataset import FaceDataset
    from facemodel.evaluation.metrics import roughness, roughness_reference

    rough_ref, rest, lap = roughness_reference(FaceDataset(args.data, split="train"), 256)
    print(f"training data roughness (256 meshes of {args.data}): {rough_ref:.3f} mm^2; fits are reported as "
          "max roughness / this")  # fmt: skip

    def rough(verts):
        return float(roughness(torch.as_tensor(np.asarray(verts), dtype=torch.float32), rest, lap).max()) / rough_ref

    # warm up both
    x0 = np.random.default_rng(0).normal(size=(68, 2))
    ict = ICTSource(ICT)
    v = ict_faces(ict, args.faces, args.seed)
    lm = landmark_positions(torch.as_tensor(v), model.landmark_set("ibug68")).numpy()
    rng = np.random.default_rng(args.seed)
    _, x0 = project(v[:1], lm[:1], 0, rng, lines, normals)
    run_pair(model, fitter, x0[0], x0[0], 640, 480)
    if args.yaws:
        print(f"\n2D, {args.faces} unseen ICT faces (seed {args.seed}), 1.5 px/mm, 1 px noise, 640 x 480, "
              f"pitch {args.pitch:g} deg")  # fmt: skip
        print("| yaw | ours: NLE | eos: NLE | ours: dense RMSE (mm) | ours: max roughness / data | "
              "ours: plausibility (median) | eos: plausibility (median) | ours: ms / face | eos: ms / face |")  # fmt: skip
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for yaw in args.yaws:
            lt, ln = project(v, lm, yaw, rng, lines, normals, pitch_deg=args.pitch)
            no, ne, to, te, po, pe, verts = [], [], [], [], [], [], []
            for i in range(len(v)):
                iod = np.linalg.norm(lt[i, 36] - lt[i, 45])
                res, a, eo, er, b, ee = run_pair(model, fitter, ln[i], lt[i], 640, 480)
                no.append(eo.mean() / iod), ne.append(ee.mean() / iod), to.append(a), te.append(b)
                po.append(float(res.plausibility[0])), pe.append(float(np.linalg.norm(er[2])))
                with torch.no_grad():
                    verts.append(model(res.codes)[0].double().numpy())
            rm = procrustes_rmse(np.stack(verts), v).mean()
            print(f"| {yaw:.0f} | {np.mean(no):.4f} | {np.mean(ne):.4f} | {rm:.2f} | {rough(np.stack(verts)):.2f} | "
                  f"{np.median(po):.2f} | "
                  f"{np.median(pe):.2f} | {1e3 * np.median(to):.1f} | {1e3 * np.median(te):.1f} |")  # fmt: skip
    if args.photos:
        import skimage.data

        from facemodel.photo import detect_landmarks, fit_photo

        print("\nReal photos (dlib's 68 points of the largest face; error against those points)")
        from facemodel.prior import code_prior

        lo, _, hi = code_prior(model).typical_range
        print(f"| photo | ours: NLE | eos: NLE | ours: plausibility (typical {lo:.1f}-{hi:.1f}) | eos: shape-coefficient norm "
              "(typical ~7.9) | ours: roughness / data | ours: ms | eos: ms | dlib detection: s |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in ("astronaut", "camera"):
            img = getattr(skimage.data, name)()
            t0 = time.perf_counter()
            pts = detect_landmarks(img)[0]
            td = time.perf_counter() - t0
            h, w = img.shape[:2]
            iod = np.linalg.norm(pts[36] - pts[45])
            ts_o, ts_e = [], []
            for _ in range(5):
                res, a, eo, er, b, ee = run_pair(model, fitter, pts, pts, w, h)
                ts_o.append(a), ts_e.append(b)
            with torch.no_grad():
                rr = rough(model(res.codes))
            print(f"| {name} | {eo.mean() / iod:.4f} | {ee.mean() / iod:.4f} | {float(res.plausibility[0]):.2f} | "
                  f"{np.linalg.norm(er[2]):.2f} | {rr:.2f} | {1e3 * np.median(ts_o):.1f} | {1e3 * np.median(ts_e):.1f} | {td:.2f} |")  # fmt: skip
            if args.overlays:
                from PIL import Image

                pf = fit_photo(model, img)
                out = _Path(args.overlays) / f"fit_{name}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pf.overlay()).save(out)
                print(f"overlay: {out}")


if __name__ == "__main__":
    main()
