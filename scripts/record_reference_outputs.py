"""Record the released weights' outputs for the behaviour-pinning test (tests/test_reference_outputs.py).

Run once before a refactor that must keep behaviour unchanged:

    python scripts/record_reference_outputs.py --out tests/data/reference_outputs.npz
    python scripts/record_reference_outputs.py --out tests/data/reference_outputs.npz --only fit   # a deliberate change

Each output is stored subsampled (every 61st vertex, float64 copy of the float32 values) beside
the SHA-256 of its full float32 bytes, so the file stays small (~100 kB) while the test can check
both the values and, on the recording machine, bit-identity.
"""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np
import torch

STEP = 61


def cases(model):
    """name -> tensor of each public call pinned by the test (deterministic, CPU)."""
    torch.manual_seed(0)
    out = {}
    # N(0, I) expression codes: the default before expression_prior (0.8), recorded then
    a = model.sample(3, seed=11, expression_prior="gaussian")
    out["sample"] = a.vertices
    out["sample_codes"] = a.codes
    out["sample_label"] = model.sample(2, seed=12, expression="happiness", truncation=0.7).vertices
    b = model.sample(2, seed=13, expression="surprise")
    out["transfer"] = model.transfer_expression(b, a.codes[:1]).vertices
    out["add_expressions"] = model.add_expressions(a, "happiness", {"jawOpen": 0.5}, weights=[0.5, 1.0]).vertices
    drive = {"jawOpen": np.linspace(0, 1, 3), "mouthSmile_L": np.array([0.2, 0.4, 0.9]), "jawLeft": np.array([0.0, 0.5, 1.0])}
    d = model.sample(expression=drive, seed=14)
    out["drive"] = d.vertices
    out["drive_codes"] = d.codes
    out["readback"] = model.blendshapes_from_expression(d.codes[:, model.code_slices["expression"]])
    lmk = model.landmark_set("ibug68")
    g = torch.Generator().manual_seed(5)
    pts = (a.vertices[:, lmk.vertex_indices] * lmk.barycentrics[..., None]).sum(2)
    R = torch.tensor([[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 1.0]])
    p3 = 1.3 * pts @ R.T + torch.tensor([5.0, -3.0, 40.0]) + 0.5 * torch.randn(pts.shape, generator=g)
    # run to convergence (tol 1e-6): a fit stopped early by the default tolerance (1e-2) ends where
    # rounding (other BLAS kernels, thread counts) puts the stop, tenths of a mm apart
    f3 = model.fit_landmarks(p3, tol=1e-6)
    out["fit3d_codes"], out["fit3d_vertices"], out["fit3d_rmse"] = f3.codes, f3.vertices, f3.rmse
    p2 = 2.0 * pts[..., :2] @ R[:2, :2].T + 100.0 + 0.5 * torch.randn(pts[..., :2].shape, generator=g)
    f2 = model.fit_landmarks_2d(p2, tol=1e-6)
    out["fit2d_codes"], out["fit2d_vertices"], out["fit2d_rmse"] = f2.codes, f2.vertices, f2.rmse
    e = model.encode(b.vertices[:1] + 0.2 * torch.randn(b.vertices[:1].shape, generator=g), max_iters=3)
    out["encode_codes"], out["encode_vertices"] = e.codes, e.vertices
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the reference file here")
    ap.add_argument("--check", help="compare the full outputs' SHA-256 with this reference file (bit-identity)")
    ap.add_argument("--only", nargs="+", default=None, metavar="PREFIX",
                    help="with --out: re-record only the outputs whose names start so (a deliberate change of "
                         "those calls, e.g. fit defaults), keeping the others as recorded in --out")  # fmt: skip
    args = ap.parse_args()
    if not (args.out or args.check):
        ap.error("give --out or --check")
    from facemodel import FaceModel

    torch.set_num_threads(1)
    model = FaceModel.from_pretrained().eval()
    with torch.no_grad():
        outs = cases(model)
    arrays, hashes = {}, {}
    for k, v in outs.items():
        v = v.detach().float().contiguous()
        hashes[k] = hashlib.sha256(v.numpy().tobytes()).hexdigest()
        flat = v.reshape(v.shape[0], -1, 3)[:, ::STEP] if v.ndim == 3 else v
        arrays[k] = flat.numpy().astype(np.float32)
    if args.check:
        want = json.loads(np.load(args.check)["_hashes"].tobytes().decode())
        diff = sorted(k for k in want if want[k] != hashes.get(k))
        print("bit-identical: all" if not diff else f"differ: {diff}")
        raise SystemExit(1 if diff else 0)
    if args.only:
        old = np.load(args.out)
        old_hashes = json.loads(old["_hashes"].tobytes().decode())
        keep = [k for k in old.files if not k.startswith("_") and not k.startswith(tuple(args.only))]
        arrays.update({k: old[k] for k in keep})
        hashes.update({k: old_hashes[k] for k in keep})
    arrays["_hashes"] = np.frombuffer(json.dumps(hashes).encode(), dtype=np.uint8)
    np.savez_compressed(args.out, **arrays)
    print(json.dumps(hashes, indent=1))


if __name__ == "__main__":
    main()
