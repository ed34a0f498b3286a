"""Blendshape map acceptance figures (issue #8) and ``animate`` throughput.

    python benchmarks/bench_animate.py --models NAME=DIR [NAME=DIR ...] --data ~/.cache/facemodel/ict4d-id1000 \
        [--ict ../shared/data/ict-facekit] [--test-meshes 600] [--cache FILE.pt] [--skip-throughput]

On test-split meshes (identities never trained on), for each model with a blendshape map:

- ``ours``: RMSE (mm, every face-area vertex) of ``G(z_id, expression_from_blendshapes(e), z_noise)``
  (plus ``blendshape_displacement(e)``, the fallback shapes' linear deltas, in every row of ours)
  against the ground-truth mesh, ``z_id`` / ``z_noise`` from ``model.encode(mesh)``;
- ``ours, relative``: the identity's ground-truth neutral (ICT identity model) encoded, and the
  weights applied relative to that fit (``add_expressions(fit, weights)``, what
  ``facemodel animate --identity MESH`` does), the "animate a known face" case; and the same
  with the absolute code ``expression_from_blendshapes(e)`` (``transfer_expression``);
- ``floor``: RMSE of the encoding itself (the best any expression code can do there);
- ``additive ICT``: ``neutral(w_id) + sum_j e_j * generic_delta_j`` (ICT-FaceKit's own linear
  blendshapes on the identity's exact neutral), the baseline every ICT user has;
- ``motion alone`` (C): the expression's displacement without the identity, ours (B's mesh minus
  its rest pose) and ICT's generic deltas, against the true one (the mesh minus the identity's
  exact neutral): what separates B's two rows once the shared encoded neutral is taken out;
- ``additive ICT on our identity``: ``G(z_id, expression_from_blendshapes(0), z_noise) + sum_j e_j * generic_delta_j``;
- round trip ``blendshapes_from_expression(expression_from_blendshapes(e))`` MAE per weight on
  every test-split weight vector; read-from-encoded MAE on the encoded test meshes;
- identity spill: mean motion (mm) of the vertices that ICT's expression shapes barely move
  (every ICT vertex moves >= 0.36 mm under some shape, so "< 0.01 mm" selects nothing; we take
  those that move <= ``--static-mm`` (1.5 mm) under every shape at weight 1, as the evaluation
  suite's ``identity_only_vertices`` does, and report the front of the face (forehead, nose
  bridge: index < 6706) and all of them), when only the
  expression changes: random expression codes (N(0, I)) vs random test-split blendshape
  weights, on random identities; beside it, how far ICT's own additive shapes move those
  vertices for the same weight pairs;
- throughput: frames/s from weights to vertices (batched, in memory) and through
  ``facemodel animate`` to a GLB / PLY / OBJ sequence;
- the A / B / C rows by dataset kind (``novel``: combinations never trained on);
- the round trip on random sparse tracker-like vectors (1-8 of any of the 53 shapes, not drawn
  like the training data);
- each of the 53 shapes alone at weight 1 on ``--shape-identities`` test identities (motion alone,
  relative and absolute), beside ICT's generic deltas, and on how many shapes ours is below them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import DEFAULT_DATA, cpu_name  # noqa: E402


def rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).sum(-1).mean(-1).sqrt()


@torch.no_grad()
def decode_with(model, codes, z_exp, bs=256):
    sl = model.code_slices["expression"]
    out = []
    for a in range(0, len(codes), bs):
        z = codes[a : a + bs].clone()
        z[:, sl] = z_exp[a : a + bs]
        out.append(model(z))
    return torch.cat(out)


def encode_cached(model, verts, cache: Path | None, key: str, batch=64):
    blob = torch.load(cache, weights_only=False) if cache and cache.is_file() else {}
    if key in blob:
        return blob[key]
    t = time.perf_counter()
    codes = torch.cat([model.encode(verts[a : a + batch]).codes for a in range(0, len(verts), batch)])
    print(f"  encoded {len(verts)} meshes in {time.perf_counter() - t:.0f} s", flush=True)
    blob[key] = codes
    if cache:
        torch.save(blob, cache)
    return codes


def tracker_like_weights(n: int, seed: int) -> torch.Tensor:
    """(n, 53) random sparse weight vectors like a face tracker's frames
    (:func:`facemodel.data.expressions.sparse_weights`: 1-8 of all 53 shapes at uniform weights in
    [0, 1], constrained as the ICT 4D builder does), drawn from their own stream, not from the
    training data's (nor from the stream ``facemodel.training.blendshape_map`` validates on)."""
    from facemodel.data.expressions import sparse_weights

    return torch.from_numpy(sparse_weights(n, np.random.default_rng([seed, 2026]))).float()


@torch.no_grad()
def per_shape(model, src, id_weights: np.ndarray, id_codes: torch.Tensor, generic: torch.Tensor) -> None:
    """Each of the 53 shapes alone at weight 1 on test identities: the identity's true mesh is its
    exact ICT neutral plus the shape deformation-transferred onto it (the dataset's generator)."""
    from facemodel.data.builder import ICTFaceGenerator
    from facemodel.data.expressions import ICT_BLENDSHAPES, constrain

    gen = ICTFaceGenerator(src)
    sl = model.code_slices["expression"]
    # one shape at 1, constrained as the builder does (mouthClose opens the jaw as far: alone it is
    # the lips pressed through each other, a pose neither the data nor a tracker produces)
    eye = torch.from_numpy(constrain(np.eye(len(ICT_BLENDSHAPES)))).float()
    generic = torch.einsum("sk,kvc->svc", eye, generic)
    z_e = model.expression_from_blendshapes(eye)  # (53, d)
    z0 = model.expression_from_blendshapes(torch.zeros(1, len(ICT_BLENDSHAPES)))
    disp = model.blendshape_displacement(eye)
    err = {k: [] for k in ("C ours", "C ICT", "B ours", "B ICT", "B' ours", "B' ICT")}
    for w_id, code in zip(id_weights, id_codes):
        n, true = gen.expression_basis(w_id)
        n, true = torch.from_numpy(n).float(), torch.einsum("sk,kvc->svc", eye, torch.from_numpy(true).float())
        codes = code[None].expand(len(eye), -1)
        rest = model(code[None])  # the encoded neutral
        rel = decode_with(model, codes, code[sl][None] + z_e - z0) + disp  # add_expressions / animate
        absolute = decode_with(model, codes, z_e) + disp  # transfer_expression
        still = decode_with(model, codes, z0.expand(len(eye), -1))
        err["C ours"].append(rmse(rel - rest, true))
        err["C ICT"].append(rmse(generic, true))
        err["B ours"].append(rmse(rel, n + true))
        err["B ICT"].append(rmse(rest + generic, n + true))
        err["B' ours"].append(rmse(absolute, n + true))
        err["B' ICT"].append(rmse(still + generic, n + true))
    e = {k: torch.stack(v).mean(0) for k, v in err.items()}  # (53,) mean over identities
    print(f"\n| each shape alone at weight 1, {len(id_codes)} test identities, face-area RMSE (mm) | C. ours, motion "
          "| C. ICT deltas | B. ours, relative | B. additive ICT | B'. ours, absolute | B'. additive ICT |\n"
          "|---|---|---|---|---|---|---|")  # fmt: skip
    for j, name in enumerate(ICT_BLENDSHAPES):
        print(f"| {name} | " + " | ".join(f"{e[k][j]:.3f}" for k in err) + " |")
    print("| mean over the 53 | " + " | ".join(f"{e[k].mean():.3f}" for k in err) + " |")
    for kind in ("C", "B", "B'"):
        below = int((e[f"{kind} ours"] < e[f"{kind} ICT"]).sum())
        worst = int(torch.argmax(e[f"{kind} ours"] - e[f"{kind} ICT"]))
        print(f"# {kind}: ours below ICT's deltas on {below} of 53 shapes; worst margin "
              f"{ICT_BLENDSHAPES[worst]} {e[f'{kind} ours'][worst]:.3f} vs {e[f'{kind} ICT'][worst]:.3f} mm")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True, help="NAME=DIR of models with a blendshape map")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--ict", default=os.environ.get("FACEMODEL_ICT_DIR", str(Path(__file__).resolve().parents[2] / "shared/data/ict-facekit")))
    p.add_argument("--test-meshes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="encodings cache (.pt), shared by models with the same generator")
    p.add_argument("--frames", type=int, default=4096, help="frames of the throughput figure")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--shape-identities", type=int, default=20,
                   help="test identities of the per-shape table (each shape alone at weight 1; 0: skip it)")
    p.add_argument("--tracker-vectors", type=int, default=2000, help="random sparse tracker-like round-trip vectors")
    p.add_argument("--throughput-only", action="store_true")
    p.add_argument("--static-mm", type=float, default=1.5, help="identity-only vertices: max motion under any ICT shape "
                   "(the evaluation suite's default tolerance)")
    a = p.parse_args()

    from facemodel.data.dataset import FaceDataset
    from facemodel.data.ict import ICTSource
    from facemodel.model import FaceModel

    ds = FaceDataset(a.data, split="test")
    rows = np.sort(np.random.default_rng(a.seed).choice(len(ds), min(a.test_meshes, len(ds)), replace=False))
    verts = torch.from_numpy(ds.vertices(rows))
    weights = torch.from_numpy(ds.meta("blendshapes")[rows]).clamp(0, 1)
    all_w = torch.from_numpy(ds.meta("blendshapes")).clamp(0, 1)
    ident = ds.meta("identity")[rows]
    src = ICTSource(a.ict)
    pca = ds.identity_table("pca_weights")
    deltas = torch.from_numpy(src.expression_shapes_mm - src.neutral_mm[None])  # (53, V, 3) generic, additive
    ids = np.unique(ident)
    neutrals = torch.from_numpy(np.stack([src.identity_mm(pca[i]) for i in ids]))  # exact ICT neutrals
    nidx = torch.from_numpy(np.searchsorted(ids, ident))
    additive = neutrals[nidx] + torch.einsum("nk,kvc->nvc", weights, deltas)
    try:  # the evaluation suite's identity-only vertices (ICT shapes and their transfers to 8 identities)
        from facemodel.evaluation.spill import identity_only_vertices

        static = identity_only_vertices(src, tol_mm=a.static_mm)
        where = "the evaluation suite's identity_only_vertices"
    except ImportError:
        move = src.expression_shapes_mm - src.neutral_mm[None]
        static = np.flatnonzero((np.linalg.norm(move, axis=-1) <= a.static_mm).all(0))
        where = "generic ICT shapes only"
    front = static[static < 6706]
    print(f"# {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"# {len(rows)} test meshes of {len(ids)} unseen identities (seed {a.seed}); "
          f"{len(static)} identity-only vertices (no ICT shape moves them more than {a.static_mm} mm; {where}), "
          f"{len(front)} of them at the front (index < 6706)")  # fmt: skip
    print(f"additive ICT (exact neutral + generic deltas): RMSE mean {rmse(additive, verts).mean():.3f} mm, "
          f"median {rmse(additive, verts).median():.3f} mm; expression magnitude (GT vs neutral) "
          f"{rmse(verts, neutrals[nidx]).mean():.3f} mm")  # fmt: skip
    cache = Path(a.cache).expanduser() if a.cache else None
    for spec in [] if a.throughput_only else a.models:
        name, _, folder = spec.partition("=")
        model = FaceModel.from_pretrained(folder)
        sl = model.code_slices["expression"]
        key = f"{float(model.generator.fc2.weight.detach().sum()):.6f}-{a.seed}-{len(rows)}"
        codes = encode_cached(model, verts, cache, key)
        ncodes = encode_cached(model, neutrals, cache, key + "-neutral")
        cfg = model.config.expression_map
        print(f"\n## {name}: {folder} (to_code {cfg.to_code}, to_weights {cfg.to_weights}; "
              f"{len(cfg.fallback)} fallback shapes{': ' + ', '.join(cfg.fallback) if cfg.fallback else ''})")
        with torch.no_grad():
            z_e = model.expression_from_blendshapes(weights)
            disp = model.blendshape_displacement(weights)  # fallback shapes (linear deltas); zeros without
            z0 = model.expression_from_blendshapes(torch.zeros(1, 53)).expand(len(rows), -1)
            ours = rmse(decode_with(model, codes, z_e) + disp, verts)
            floor = rmse(decode_with(model, codes, codes[:, sl]), verts)
            ours_n = rmse(decode_with(model, ncodes[nidx], z_e) + disp, verts)
            z_rel = ncodes[nidx][:, sl] + z_e - z0  # relative: the encoded neutral is the rest pose
            ours_rel = rmse(decode_with(model, ncodes[nidx], z_rel) + disp, verts)
            fit_n = rmse(decode_with(model, ncodes[nidx], ncodes[nidx][:, sl]), verts)
            fit_n_add = rmse(decode_with(model, ncodes[nidx], ncodes[nidx][:, sl]) + torch.einsum(
                "nk,kvc->nvc", weights, deltas), verts)  # fmt: skip
            lin = torch.einsum("nk,kvc->nvc", weights, deltas)
            add_ours = rmse(decode_with(model, codes, z0) + lin, verts)
            rest_n = decode_with(model, ncodes[nidx], z0)
            still_n, add_n = rmse(rest_n, verts), rmse(rest_n + lin, verts)
            rest_code = ncodes[nidx].clone()
            rest_code[:, sl] = z0  # the map's rest pose on the encoded identity
            ours_rest = decode_with(model, ncodes[nidx], ncodes[nidx][:, sl]) + decode_with(model, rest_code, z_e) \
                - decode_with(model, rest_code, z0) + disp  # fmt: skip
            ours_rest = rmse(ours_rest, verts)
            gt_motion = verts - neutrals[nidx]  # the expression's own motion on this identity
            our_motion = decode_with(model, ncodes[nidx], z_rel) + disp - decode_with(model, ncodes[nidx], ncodes[nidx][:, sl])
            motion_err, lin_err = rmse(our_motion, gt_motion), rmse(lin, gt_motion)
            rt = model.blendshapes_from_expression(model.expression_from_blendshapes(all_w))
            rd = model.blendshapes_from_expression(codes)
        act = all_w > 0.05
        print("| face-area RMSE to the ground truth (mm) | mean | median |\n|---|---|---|")
        for label, x in (("A. ours: the mesh's encoded identity + map(true weights)", ours),
                         ("A. additive ICT on the same identity: G(id, map(0)) + generic deltas", add_ours),
                         ("A. floor: the encoding itself", floor),
                         ("B. ours, relative: the encoded neutral as rest pose + map(w) - map(0) (add_expressions, animate)", ours_rel),
                         ("B*. ours, motion at the map's rest code: G(neutral fit) + G(id, map(w)) - G(id, map(0))", ours_rest),
                         ("B. additive ICT on the same encoded neutral: G(neutral fit) + generic deltas", fit_n_add),
                         ("B. no expression: the encoded neutral itself", fit_n),
                         ("B'. ours, absolute: identity encoded from its neutral, expression code map(w)", ours_n),
                         ("B'. additive ICT on the same identity: G(id, map(0)) + generic deltas", add_n),
                         ("B'. no expression: G(id, map(0))", still_n),
                         ("additive ICT on the exact ICT neutral (not our model)", rmse(additive, verts)),
                         ("C. motion alone: ours (B's mesh - its rest pose) vs the true motion (mesh - exact neutral)", motion_err),
                         ("C. motion alone: ICT's generic deltas vs the true motion", lin_err)):  # fmt: skip
            print(f"| {label} | {x.mean():.3f} | {x.median():.3f} |")
        print(f"| round trip weights -> code -> weights, MAE per weight ({len(all_w)} test vectors) | "
              f"{(rt - all_w).abs().mean():.4f} | active weights (> 0.05): {(rt - all_w).abs()[act].mean():.4f} |")
        print(f"| weights read from encoded test meshes, MAE per weight | {(rd - weights).abs().mean():.4f} | "
              f"active weights: {(rd - weights).abs()[weights > 0.05].mean():.4f} |")  # fmt: skip

        kinds = ds.meta("kind")[rows]
        print("\n| by kind: face-area RMSE (mm), mean | meshes | A. ours | A. additive ICT | B. ours, relative "
              "| B. additive ICT | C. ours, motion | C. ICT deltas, motion |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
        for k in np.unique(kinds):
            m = torch.from_numpy(kinds == k)
            print(f"| {ds.manifest.kinds[k]} | {int(m.sum())} | {ours[m].mean():.3f} | {add_ours[m].mean():.3f} | "
                  f"{ours_rel[m].mean():.3f} | {fit_n_add[m].mean():.3f} | {motion_err[m].mean():.3f} | "
                  f"{lin_err[m].mean():.3f} |")  # fmt: skip
        tracker = tracker_like_weights(a.tracker_vectors, a.seed)
        with torch.no_grad():
            rt_tr = model.blendshapes_from_expression(model.expression_from_blendshapes(tracker))
        print(f"| round trip on {len(tracker)} random sparse tracker-like vectors (1-8 shapes, any of the 53), "
              f"MAE per weight | {(rt_tr - tracker).abs().mean():.4f} | active weights (> 0.05): "
              f"{(rt_tr - tracker).abs()[tracker > 0.05].mean():.4f} |")  # fmt: skip
        if a.shape_identities:
            per_shape(model, src, pca[ids[: a.shape_identities]], ncodes[: a.shape_identities], deltas)

        # identity spill: only the expression changes
        g = torch.Generator().manual_seed(a.seed)
        n, m = 100, 10  # the evaluation suite's identity-spill protocol: 100 faces x 10 expression variants
        base = torch.randn(n, model.config.generator.code_dim, generator=g)
        base = base.repeat_interleave(m, 0)
        pick = torch.randint(len(all_w), (2, n * m), generator=g)
        with torch.no_grad():
            def motion(e1, e2, regions, d1=0.0, d2=0.0):
                v1, v2 = decode_with(model, base, e1) + d1, decode_with(model, base, e2) + d2
                d = (v1 - v2).norm(dim=-1)
                return [float(d[:, r].mean()) for r in regions]

            d = sl.stop - sl.start
            regions = (torch.from_numpy(front), torch.from_numpy(static), torch.arange(model.num_vertices))
            rnd = motion(torch.randn(n * m, d, generator=g), torch.randn(n * m, d, generator=g), regions)
            w1, w2 = all_w[pick[0]], all_w[pick[1]]
            bsw = motion(model.expression_from_blendshapes(w1), model.expression_from_blendshapes(w2), regions,
                         model.blendshape_displacement(w1), model.blendshape_displacement(w2))  # fmt: skip
        dw = all_w[pick[0]] - all_w[pick[1]]
        gt = [float(torch.einsum("nk,kvc->nvc", dw[:, :], deltas[:, r]).norm(dim=-1).mean()) for r in regions]
        print(f"| ICT's own additive shapes, same weight pairs: front static / all static / all vertices, mm | "
              f"{gt[0]:.3f} / {gt[1]:.3f} / {gt[2]:.3f} | |")
        print(f"| identity spill, random expression codes: front static / all static / all vertices, mm | "
              f"{rnd[0]:.3f} / {rnd[1]:.3f} / {rnd[2]:.3f} | |")
        print(f"| identity spill, random test-split blendshape weights: front static / all static / all vertices, mm | "
              f"{bsw[0]:.3f} / {bsw[1]:.3f} / {bsw[2]:.3f} | |")  # fmt: skip

    if a.skip_throughput:
        return
    from facemodel.blendshapes import write_weights_csv
    from facemodel.cli import main as cli

    model = FaceModel.from_pretrained(a.models[-1].partition("=")[2])
    w = all_w[torch.arange(a.frames) % len(all_w)]
    ident_codes = model.sample(1, seed=0).codes
    sl = model.code_slices["expression"]

    def in_memory(batch=1024):
        for s in range(0, len(w), batch):
            z = ident_codes.expand(min(batch, len(w) - s), -1).clone()
            z[:, sl] = model.expression_from_blendshapes(w[s : s + batch])
            with torch.no_grad():
                model.expression_map.add_displacement_(model(z), w[s : s + batch])  # what animate does

    def bare(batch=1024):
        z = ident_codes.expand(batch, -1).contiguous()
        with torch.no_grad():
            for s in range(0, len(w), batch):
                model(z[: min(batch, len(w) - s)])

    in_memory()
    t = time.perf_counter()
    in_memory()
    dt = time.perf_counter() - t
    t = time.perf_counter()
    bare()
    dt_bare = time.perf_counter() - t
    print("\n| animate throughput | frames/s |\n|---|---|")
    print(f"| weights -> vertices, batches of 1024, in memory ({a.frames} frames) | {a.frames / dt:,.0f} |")
    print(f"| the bare generator on the same codes (reference, same moment) | {a.frames / dt_bare:,.0f} |")
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = write_weights_csv(Path(tmp) / "take.csv", w[:1000])
        for out, extra in (("take.glb", []), ("ply", ["--format", "ply"]), ("obj", [])):
            t = time.perf_counter()
            cli(["animate", "--model", a.models[-1].partition("=")[2], "--identity", "0", "--weights", str(csv_path),
                 "--out", str(Path(tmp) / out), "--quiet"] + extra)  # fmt: skip
            dt = time.perf_counter() - t
            print(f"| `facemodel animate` 1000 frames -> {out} (whole command in-process: load, read CSV, write) | {1000 / dt:,.0f} |")


if __name__ == "__main__":
    main()
