"""Bad-input fuzzing of the public API on the released weights (issue 23).

    OMP_NUM_THREADS=1 python benchmarks/fuzz.py --calls 10000 [--seed S] [--timeout 60] [--model DIR]

Each call picks a public entry point (``FaceModel.sample``, ``decode``,
``transfer_expression``, ``add_expressions``, ``fit_landmarks``, ``fit_landmarks_2d``,
``expression_from_blendshapes``, ``blendshapes_from_expression``, ``encode``,
``Faces.export``, ``load_mesh``, ``from_pretrained``, and the CLI's file readers
``read_weights`` / ``load_points``) and arguments drawn from a mix of valid values and
malformed ones (wrong types, shapes and dtypes, NaN / inf / 1e30, empty and huge sizes,
ragged lists, corrupt files, unwritable paths). It counts:

- **foreign**: an exception that is not a ``FaceModelError``;
- **bare**: a ``FaceModelError`` that subclasses no builtin (reported, not a failure);
- **non-finite**: a returned mesh, code or weight holding NaN or inf;
- **hang**: a call running past ``--timeout`` seconds (the calls run in a worker process,
  which is restarted after a hang).

Failures are grouped by place (entry point, exception type, innermost facemodel frame).
Calls are reproducible: call ``i`` of seed ``S`` draws from ``numpy.random.default_rng([S, i])``.
Exit status 1 when anything other than a FaceModelError escaped, a result was non-finite or
a call hung.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # repo-id-like strings must not reach the network

import numpy as np
import torch

from facemodel import Faces, FaceModel, FaceModelError, load_mesh
from facemodel.blendshapes import ICT_NAMES, read_weights
from facemodel.io_points import load_points

ENTRY_POINTS = ("sample", "decode", "transfer_expression", "add_expressions", "fit_landmarks", "fit_landmarks_2d",
                "expression_from_blendshapes", "blendshapes_from_expression", "encode", "export", "load_mesh",
                "from_pretrained", "read_weights", "load_points")  # fmt: skip
SPECIAL = (np.nan, np.inf, -np.inf, 1e30, -1e30, 1e300, 1e-30, 0.0, 3.4e38, 65504.0)


class Ctx:
    """The model and a few valid inputs, built once per worker."""

    def __init__(self, model: FaceModel, tmp: Path) -> None:
        self.model, self.tmp = model, tmp
        self.D = model.config.generator.code_dim
        self.V = model.num_vertices
        self.d_exp = model.code_slices["expression"].stop - model.code_slices["expression"].start
        self.faces = model.sample(2, seed=0)
        self.verts = self.faces.vertices[0].numpy()
        self.lmk3 = self.verts[model.landmarks.numpy()]
        self.F = model.faces.numpy()


# ---- value generators --------------------------------------------------------------------
def junk(r: np.random.Generator):
    """A value of the wrong kind for almost any argument."""
    pool = [None, "abc", "", b"bytes", 1.5, -1, 0, 2**40, -(2**63), True, [], [[1, 2], [3]], {}, {"a": 1}, object(),
            np.nan, float("inf"), "neutral", "jawOpen", np.array("x"), np.array([None, 1]), 1 + 2j,
            np.zeros((0,)), np.zeros((2, 0, 3)), torch.tensor([1 + 1j]), torch.zeros(3, dtype=torch.bool),
            [None, None], ["a", 1], (1, "b"), np.datetime64("2020-01-01"), slice(1, 2), Ellipsis]  # fmt: skip
    return pool[r.integers(len(pool))]


def array(r: np.random.Generator, shape, *, special: float = 0.3):
    """A float array of ``shape`` (sometimes mutated: dtype, NaN/inf/huge values, shape, container)."""
    shape = tuple(int(s) for s in shape)
    k = r.integers(12)
    if k == 0:  # wrong shape
        shape = tuple(int(x) for x in r.integers(0, 4, r.integers(0, 4))) if r.random() < 0.5 else shape + (1,)
    a = r.normal(size=shape) * float(r.choice([1.0, 10.0, 1e3]))
    if r.random() < special and a.size:
        flat = a.reshape(-1)
        idx = r.integers(a.size, size=max(1, int(a.size * r.random() * 0.1)))
        flat[idx] = r.choice(SPECIAL)
    kind = r.integers(10)
    if kind == 0:
        return a.astype(np.float16)
    if kind == 1:
        return a.astype(np.float32)
    if kind == 2:
        with np.errstate(all="ignore"):
            return np.nan_to_num(a).astype(np.int64)
    if kind == 3:
        return torch.as_tensor(a.astype(np.float32))
    if kind == 4:
        return torch.as_tensor(a)
    if kind == 5:
        return a.tolist()
    if kind == 6 and a.ndim:
        return [list(x) if hasattr(x, "__len__") else x for x in a.tolist()][: max(1, len(a) - 1)] + [[1.0]]  # ragged
    return a


def maybe(r, valid, p_junk: float = 0.2):
    return junk(r) if r.random() < p_junk else valid


def codes(r, ctx: Ctx, n=None):
    n = int(r.integers(1, 4)) if n is None else n
    return array(r, (n, ctx.D) if r.random() < 0.8 else (ctx.D,))


def face_like(r, ctx: Ctx):
    k = r.integers(6)
    if k == 0:
        return ctx.faces
    if k == 1:
        return codes(r, ctx)
    if k == 2:
        return array(r, ctx.verts.shape, special=0.2) if r.random() < 0.5 else ctx.verts + 0.0
    if k == 3:
        return str(write_mesh(r, ctx))
    if k == 4:
        return [ctx.verts, ctx.verts] if r.random() < 0.5 else [ctx.verts, junk(r)]
    return junk(r)


def blend_weights(r, ctx: Ctx):
    k = r.integers(6)
    names = list(ICT_NAMES) + ["jawOpen", "mouthSmileLeft", "JawOpen", "Timecode", "tongueOut", "notAShape"]
    if k <= 2:
        d = {}
        for _ in range(r.integers(0, 5)):
            name = names[r.integers(len(names))]
            v = r.choice([r.random(), r.random() * 2 - 0.5, np.nan, np.inf, -1.0, 1e30])
            if r.random() < 0.3:
                v = array(r, (r.integers(0, 4),), special=0.2)
            if r.random() < 0.1:
                v = junk(r)
            d[name] = v
        if r.random() < 0.1:
            key = junk(r) if r.random() < 0.5 else 3
            d[key if getattr(type(key), "__hash__", None) else repr(key)] = 0.5
        return d
    if k == 3:
        return np.clip(r.random((int(r.integers(1, 3)), 53)), 0, 1) if r.random() < 0.5 else array(r, (53,))
    if k == 4:
        return torch.rand(int(r.integers(1, 3)), 53)
    return junk(r)


def bad_path(r, ctx: Ctx, suffix: str = ".obj"):
    pool = ["/proc/x" + suffix, "/proc/self/x/y" + suffix, "/dev/null/x" + suffix, "/nonexistent_root_dir/x" + suffix,
            str(ctx.tmp / "sub" / ("a" * 300 + suffix)), str(ctx.tmp / ("out" + suffix)), str(ctx.tmp),
            str(ctx.tmp / "ro" / ("x" + suffix)), str(ctx.tmp / "f{i}" / "x.obj"), "", "\x00" + suffix,
            str(ctx.tmp / ("x" + suffix + "/")), str(ctx.tmp / "nofmt"), str(ctx.tmp / "a.{i}.ply")]  # fmt: skip
    return pool[r.integers(len(pool))] if r.random() < 0.9 else junk(r)


def write_mesh(r, ctx: Ctx) -> Path:
    """A file that may or may not be a mesh in the template's topology."""
    suffix = str(r.choice([".obj", ".ply", ".off", ".stl", ".glb", ".txt", ""]))
    p = ctx.tmp / f"m{r.integers(1 << 30)}{suffix}"
    k = r.integers(8)
    v = ctx.verts if r.random() < 0.6 else r.normal(size=(int(r.integers(0, 20)), 3))
    if r.random() < 0.3 and len(v):
        v = v.copy()
        v[r.integers(len(v))] = r.choice(SPECIAL)
    f = ctx.F if r.random() < 0.7 else r.integers(-2, 30, size=(int(r.integers(0, 10)), 3))
    if k <= 3 and suffix in (".obj", ".txt", ""):
        lines = [f"v {a} {b} {c}" for a, b, c in v] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in f]
        if k == 1 and lines:
            lines[r.integers(len(lines))] = str(r.choice(["v 1 2", "f 1", "v a b c", "f 0 0 0", "vt 1", "f 1/2/3 4 5"]))
        if k == 2:
            lines = lines[: r.integers(len(lines) + 1)]
        p.write_text("\n".join(lines))
    elif k <= 5:
        import trimesh

        try:
            data = trimesh.Trimesh(np.nan_to_num(v), np.clip(f, 0, None), process=False).export(
                file_type=suffix.lstrip(".") if suffix in (".obj", ".ply", ".off", ".stl", ".glb") else "ply")
        except Exception:  # the fuzzer's own writer may refuse odd meshes: write garbage instead
            data = b"\x00garbage"
        data = data.encode() if isinstance(data, str) else data
        if k == 5:
            data = data[: r.integers(len(data) + 1)]
        p.write_bytes(data)
    elif k == 6:
        p.write_bytes(r.bytes(int(r.integers(0, 512))))
    else:
        p.mkdir()
    return p


def write_weights(r, ctx: Ctx) -> Path:
    suffix = str(r.choice([".csv", ".json", ".txt"]))
    p = ctx.tmp / f"w{r.integers(1 << 30)}{suffix}"
    names = ["jawOpen", "JawOpen", "eyeBlink_L", "Timecode", "notAShape", "", "mouthSmileLeft"]
    k = r.integers(6)
    if suffix == ".json":
        if k == 0:
            obj = {n: r.random(int(r.integers(0, 4))).tolist() for n in r.choice(names, 2)}
        elif k == 1:
            obj = [{"jawOpen": float(r.choice([0.1, np.nan, 2.0]))}] * int(r.integers(0, 3))
        elif k == 2:
            obj = [[{"categoryName": "jawOpen", "score": 0.3}, {"x": 1}]]
        elif k == 3:
            obj = {"frames": junk(r) if r.random() < 0.5 else []}
        else:
            obj = {"jawOpen": [0.1, "x", None]}
        try:
            text = json.dumps(obj, default=str)
        except (TypeError, ValueError):
            text = "{"
        p.write_text(text[: r.integers(len(text) + 1)] if k == 5 else text)
    else:
        cols = list(r.choice(names, int(r.integers(1, 4))))
        rows = [",".join(cols)]
        for _ in range(int(r.integers(0, 4))):
            vals = [str(r.choice(["0.1", "0.9", "nan", "inf", "1e30", "", "x", "-0.5", "0.5;1"])) for _ in cols]
            if r.random() < 0.2:
                vals = vals[:-1]
            rows.append(",".join(vals))
        p.write_text("\n".join(rows) if k else "")
    if r.random() < 0.05:
        p.write_bytes(b"\xff\xfe\x00bad")
    return p


def write_points(r, ctx: Ctx) -> Path:
    suffix = str(r.choice([".npy", ".csv", ".json", ".pts", ".txt"]))
    p = ctx.tmp / f"p{r.integers(1 << 30)}{suffix}"
    pts = array(r, (68, int(r.choice([2, 3, 4]))), special=0.2)
    if isinstance(pts, torch.Tensor):
        pts = pts.numpy()
    elif not isinstance(pts, np.ndarray):
        pts = np.array(pts, dtype=object) if r.random() < 0.5 else np.zeros((0, 3))
        if pts.ndim != 2:
            pts = np.array([[1, 2, 3], [4, 5, "x"]], dtype=object)
    k = r.integers(4)
    try:
        if suffix == ".npy":
            np.save(p, pts if k else np.array(["a", "b"]), allow_pickle=False)
        elif suffix == ".json":
            p.write_text(json.dumps({"points": pts.tolist()} if k else [None, [1, "x"]], default=str))
        elif suffix == ".pts":
            body = "\n".join(" ".join(str(x) for x in row) for row in np.atleast_2d(pts).tolist())
            p.write_text(f"version: 1\nn_points: 68\n{{\n{body}\n}}" if k else "version: 1\n{ 1 2")
        else:
            p.write_text("\n".join(",".join(str(x) for x in row) for row in np.atleast_2d(pts).tolist()))
    except (TypeError, ValueError):
        p.write_text("garbage,1\n2")
    if k == 3 and r.random() < 0.3:
        p.write_bytes(r.bytes(int(r.integers(0, 256))))
    return p


def weights_folder(r, ctx: Ctx):
    src = Path(__file__).resolve().parents[1] / "weights"
    d = ctx.tmp / f"wf{r.integers(1 << 30)}"
    d.mkdir()
    k = r.integers(7)
    cfg = (src / "config.json").read_text()
    if k == 0:
        (d / "config.json").write_text(cfg)
    elif k == 1:
        (d / "config.json").write_text(cfg[: r.integers(len(cfg))])
        (d / "model.safetensors").write_bytes(b"")
    elif k == 2:
        obj = json.loads(cfg)
        obj["generator"]["num_vertices"] = int(r.choice([0, -1, 5, 10**12]))
        (d / "config.json").write_text(json.dumps(obj))
        (d / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes()[:4096])
    elif k == 3:
        (d / "config.json").write_text(cfg)
        data = (src / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[: r.integers(len(data))])
    elif k == 4:
        obj = json.loads(cfg)
        obj["format_version"] = int(r.choice([2, -1, 10**20]))
        (d / "config.json").write_text(json.dumps(obj))
        (d / "model.safetensors").write_bytes(r.bytes(64))
    elif k == 5:
        return junk(r) if r.random() < 0.5 else str(r.choice(["org/does-not-exist", "a/b/c", "~nouser/x", "."]))
    elif k == 6:
        return str(src) if r.random() < 0.7 else None  # the released weights
    return str(d)


# ---- calls -----------------------------------------------------------------------------------
def make_call(r: np.random.Generator, ctx: Ctx):
    """(entry point, zero-argument callable) for one random call."""
    m = ctx.model
    name = ENTRY_POINTS[r.integers(len(ENTRY_POINTS))]
    labels = ["neutral", "happiness", "Happy", 3, -1, 99, "ict4d-0001", 0]
    if name == "sample":
        kw = {}
        if r.random() < 0.8:
            kw["n"] = maybe(r, int(r.choice([1, 1, 2, 3, 0, -5, 2**40, 10**6])), 0.15)
        if r.random() < 0.5:
            kw["seed"] = maybe(r, int(r.integers(-(2**63), 2**63 - 1, dtype=np.int64)) if r.random() < 0.5 else 1)
        if r.random() < 0.3:
            kw["truncation"] = maybe(r, float(r.choice([0.5, 1.0, -0.1, 2.0, np.nan])), 0.4)
        for f, d in (("identity", 65), ("expression", 15), ("noise", 5)):
            if r.random() < 0.4:
                kw[f] = labels[r.integers(len(labels))] if r.random() < 0.4 and f != "noise" else array(r, (d,))
        if r.random() < 0.2:
            kw["expression"] = blend_weights(r, ctx)
        if r.random() < 0.1:
            kw[str(r.choice(["age", "mood"]))] = junk(r)
        if r.random() < 0.1:
            kw["generator"] = junk(r)
        return name, lambda: m.sample(**kw)
    if name == "decode":
        c = maybe(r, codes(r, ctx), 0.2)
        return name, lambda: m.decode(c)
    if name == "transfer_expression":
        s = blend_weights(r, ctx) if r.random() < 0.3 else face_like(r, ctx)
        t = face_like(r, ctx)
        return name, lambda: m.transfer_expression(s, t)
    if name == "add_expressions":
        t = face_like(r, ctx)
        ex = [labels[r.integers(len(labels))] if r.random() < 0.4 else blend_weights(r, ctx) if r.random() < 0.4
              else face_like(r, ctx) for _ in range(r.integers(0, 3))]  # fmt: skip
        kw = {}
        if r.random() < 0.5:
            kw["weights"] = maybe(r, [float(r.choice([1.0, 0.5, np.nan, np.inf, 1e30])) for _ in ex], 0.3)
        return name, lambda: m.add_expressions(t, *ex, **kw)
    if name in ("fit_landmarks", "fit_landmarks_2d", "encode"):
        kw = {}
        if r.random() < 0.3:
            kw["reg"] = maybe(r, float(r.choice([0.0, 0.01, 10.0, -1.0, np.nan, 1e30])))
        if name == "encode":
            if r.random() < 0.3:
                kw["align"] = maybe(r, str(r.choice(["none", "rigid", "similarity", "affine"])))
            kw["max_iters"] = maybe(r, int(r.choice([1, 2, 0, -1])), 0.1)
            mesh = face_like(r, ctx) if r.random() < 0.7 else array(r, ctx.verts.shape, special=0.5)
            return name, lambda: m.encode(mesh, **kw)
        dim = 3 if name == "fit_landmarks" else 2
        base = ctx.lmk3[:, :dim] * float(r.choice([1.0, 1e-3, 1e3, 1e15, 1e-15]))
        if r.random() < 0.2:
            base = base * 0 + base[0]  # coinciding points
        pts = array(r, base.shape, special=0.3) if r.random() < 0.6 else base
        if isinstance(pts, np.ndarray) and pts.shape == base.shape and r.random() < 0.7:
            pts = pts * 0.01 + base
        if r.random() < 0.2:
            pts = np.stack([base] * int(r.integers(1, 3))) if r.random() < 0.8 else np.zeros((0,) + base.shape)
        solver = str(r.choice(["gauss-newton", "gauss-newton", "lbfgs", "adam", "newton"]))
        kw["solver"] = maybe(r, solver, 0.05)
        kw["max_iters"] = maybe(r, int(r.choice([1, 2, 3, 0])), 0.1) if solver != "gauss-newton" or r.random() < 0.5 \
            else None  # fmt: skip
        if r.random() < 0.2:
            kw["weights"] = array(r, (68,), special=0.3)
        if r.random() < 0.2:
            kw["landmarks"] = maybe(r, str(r.choice(["ibug68", "ibug51", "nope"])) if r.random() < 0.5 else
                                    r.integers(-5, ctx.V + 5, size=68))  # fmt: skip
        if r.random() < 0.2:
            kw["init"] = maybe(r, str(r.choice(["linear", "mean", "random", "x"])) if r.random() < 0.5 else codes(r, ctx, 1))
        if r.random() < 0.1:
            kw["tol"] = maybe(r, float(r.choice([0.0, 1e-3, -1.0, np.nan])))
        if dim == 3 and r.random() < 0.2:
            kw["align"] = maybe(r, str(r.choice(["none", "rigid", "similarity"])))
        if dim == 3 and r.random() < 0.15:
            kw["noise_mm"] = maybe(r, float(r.choice([0.0, 0.5, 3.0, -1.0, np.nan, np.inf, 1e30])))
        if dim == 2 and r.random() < 0.25:
            kw["camera"] = maybe(r, str(r.choice(["pinhole", "pinhole", "scaled_orthographic", "fisheye"])))
            if r.random() < 0.6:
                kw["focal_length"] = maybe(r, float(r.choice([1000.0, 1.0, 0.0, -5.0, np.nan, np.inf, 1e30])))
            if r.random() < 0.3:
                kw["principal_point"] = array(r, (2,), special=0.3) if r.random() < 0.7 else array(r, (3,))
        fn = m.fit_landmarks if dim == 3 else m.fit_landmarks_2d
        return name, lambda: fn(pts, **kw)
    if name == "expression_from_blendshapes":
        w = blend_weights(r, ctx)
        kw = {"clip_tolerance": maybe(r, float(r.choice([0.05, 0.0, -1.0, np.inf, np.nan])))} if r.random() < 0.3 else {}
        return name, lambda: m.expression_from_blendshapes(w, **kw)
    if name == "blendshapes_from_expression":
        c = ctx.faces if r.random() < 0.2 else array(r, (int(r.integers(1, 3)), ctx.d_exp if r.random() < 0.5 else ctx.D))
        kw = {"spelling": maybe(r, str(r.choice(["ict", "arkit", "livelink", "x"])))} if r.random() < 0.3 else {}
        return name, lambda: m.blendshapes_from_expression(c, **kw)
    if name == "export":
        faces = ctx.faces if r.random() < 0.5 else ctx.faces[0]
        path = bad_path(r, ctx, str(r.choice([".obj", ".ply", ".glb", ".stl", ""])))
        kw = {"format": maybe(r, str(r.choice(["obj", "ply", "glb", "fbx"])))} if r.random() < 0.3 else {}
        return name, lambda: faces.export(path, **kw)
    if name == "load_mesh":
        p = write_mesh(r, ctx) if r.random() < 0.85 else bad_path(r, ctx)
        return name, lambda: load_mesh(p)
    if name == "from_pretrained":
        p = weights_folder(r, ctx)
        kw = {}
        if r.random() < 0.2:
            kw["device"] = maybe(r, str(r.choice(["cpu", "cuda:7", "tpu", "meta"])))
        if r.random() < 0.2:
            kw["dtype"] = junk(r) if r.random() < 0.5 else r.choice([torch.float64, torch.int64, torch.bool])
        return name, lambda: FaceModel.from_pretrained(p, **kw)
    if name == "read_weights":
        p = write_weights(r, ctx) if r.random() < 0.9 else bad_path(r, ctx, ".csv")
        return name, lambda: read_weights(p)
    p = write_points(r, ctx) if r.random() < 0.9 else bad_path(r, ctx, ".npy")
    return "load_points", lambda: load_points(p)


def non_finite(x, depth: int = 0) -> bool:
    """True when a returned tensor / array (in Faces, FitResult, dicts, lists) holds NaN or inf."""
    if depth > 4:
        return False
    if isinstance(x, torch.Tensor):
        return x.is_floating_point() and not bool(torch.isfinite(x).all())
    if isinstance(x, np.ndarray):
        return x.dtype.kind == "f" and not bool(np.isfinite(x).all())
    if isinstance(x, Faces):
        return non_finite(x.vertices) or non_finite(x.codes)
    if isinstance(x, dict):
        return any(non_finite(v, depth + 1) for v in x.values())
    if isinstance(x, (list, tuple)):
        return any(non_finite(v, depth + 1) for v in x)
    if type(x).__name__ == "FitResult":
        return any(non_finite(getattr(x, k)) for k in ("codes", "scale", "rotation", "translation", "rmse",
                                                         "landmarks", "vertices"))  # fmt: skip
    if hasattr(x, "vertices"):  # a mesh
        return non_finite(np.asarray(x.vertices))
    return False


def place_of(exc: BaseException) -> str:
    """``file:line`` of the innermost facemodel frame of a traceback."""
    where = "?"
    for fr in traceback.extract_tb(exc.__traceback__):
        if "facemodel" in fr.filename.replace("\\", "/").split("/")[-2:][0] or "/facemodel/" in fr.filename:
            where = f"{Path(fr.filename).name}:{fr.lineno}"
    return where


def run_one(ctx: Ctx, seed: int, i: int) -> tuple[str, str, str]:
    """(entry point, outcome, detail) of call ``i``; outcome one of ok, refused, bare, foreign, non-finite."""
    r = np.random.default_rng([seed, i])
    try:
        name, call = make_call(r, ctx)
    except Exception as exc:  # the generator's own bug: report it, do not count it against the package
        return "generator", "fuzzer-bug", f"{type(exc).__name__}: {exc}"
    try:
        out = call()
    except FaceModelError as exc:
        builtin = any(b in type(exc).__mro__ for b in (ValueError, TypeError, OSError, MemoryError, KeyError,
                                                       ArithmeticError, IndexError, RuntimeError))  # fmt: skip
        return name, "refused" if builtin else "bare", f"{type(exc).__name__} at {place_of(exc)}"
    except Exception as exc:
        return name, "foreign", f"{type(exc).__name__} at {place_of(exc)}: {str(exc)[:160]}"
    if name == "load_points" and isinstance(out, np.ndarray):
        out = np.nan_to_num(out, nan=0.0, posinf=np.inf, neginf=-np.inf)  # NaN is the documented "missing"
    if non_finite(out):
        return name, "non-finite", type(out).__name__
    return name, "ok", ""


def _worker(conn, model_dir, seed):
    torch.set_num_threads(1)
    import warnings

    warnings.simplefilter("ignore")
    model = FaceModel.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory(prefix="facemodel-fuzz-") as tmp:
        tmp = Path(tmp)
        (tmp / "ro").mkdir()
        os.chmod(tmp / "ro", 0o555)
        ctx = Ctx(model, tmp)
        os.chdir(tmp)  # relative paths among the junk values are written here, not into the caller's folder
        conn.send("ready")
        while True:
            i = conn.recv()
            if i is None:
                break
            conn.send(run_one(ctx, seed, i))
            for p in tmp.iterdir():  # keep the folder small: only the fixtures survive a call
                if p.name not in ("ro",):
                    if p.is_dir():
                        import shutil

                        os.chmod(p, 0o755)
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per call before it counts as a hang")
    p.add_argument("--model", default=None, help="weights folder (default: the released weights)")
    p.add_argument("--show", type=int, default=3, help="examples shown per failing place")
    p.add_argument("--progress", type=int, default=1000, help="a progress line on stderr every N calls (0: none)")
    a = p.parse_args(argv)
    ctxm = mp.get_context("fork")

    def start():
        parent, child = ctxm.Pipe()
        proc = ctxm.Process(target=_worker, args=(child, a.model, a.seed), daemon=True)
        proc.start()
        if not parent.poll(300) or parent.recv() != "ready":
            raise SystemExit("fuzz worker did not start")
        return proc, parent

    t0 = time.perf_counter()
    proc, conn = start()
    per_entry = collections.defaultdict(collections.Counter)
    places = collections.defaultdict(list)
    slowest = (0.0, -1, "")
    for i in range(a.calls):
        t = time.perf_counter()
        conn.send(i)
        if conn.poll(a.timeout):
            name, outcome, detail = conn.recv()
        else:
            proc.kill()
            proc.join()
            name, outcome, detail = "?", "hang", f"call {i} ran past {a.timeout:g} s"
            proc, conn = start()
        dt = time.perf_counter() - t
        if dt > slowest[0]:
            slowest = (dt, i, name)
        per_entry[name][outcome] += 1
        if a.progress and (i + 1) % a.progress == 0:
            bad_so_far = sum(c[k] for c in per_entry.values() for k in ("foreign", "non-finite", "hang"))
            print(f"# {i + 1} calls, {time.perf_counter() - t0:.0f} s, {bad_so_far} failures so far", file=sys.stderr,
                  flush=True)  # fmt: skip
        if outcome in ("foreign", "non-finite", "hang", "bare", "fuzzer-bug"):
            key = (outcome, name, detail.split(":")[0] if outcome == "foreign" else detail)
            places[key].append((i, detail))
    conn.send(None)
    proc.join(10)
    wall = time.perf_counter() - t0
    tot = collections.Counter()
    for c in per_entry.values():
        tot.update(c)
    print(f"# facemodel fuzz: {a.calls} calls, seed {a.seed}, timeout {a.timeout:g} s, {wall:.0f} s wall, "
          f"slowest call {slowest[1]} ({slowest[2]}) {slowest[0]:.1f} s")  # fmt: skip
    print("| entry point | calls | ok | FaceModelError | foreign | non-finite | hang | bare FaceModelError |")
    print("|---|---|---|---|---|---|---|---|")
    for name in list(ENTRY_POINTS) + ["?", "generator"]:
        c = per_entry.get(name)
        if c:
            print(f"| {name} | {sum(c.values())} | {c['ok']} | {c['refused'] + c['bare']} | {c['foreign']} | "
                  f"{c['non-finite']} | {c['hang']} | {c['bare']} |")  # fmt: skip
    print(f"| **total** | {sum(tot.values())} | {tot['ok']} | {tot['refused'] + tot['bare']} | {tot['foreign']} | "
          f"{tot['non-finite']} | {tot['hang']} | {tot['bare']} |")  # fmt: skip
    bad = sorted(places.items(), key=lambda kv: -len(kv[1]))
    fails = [kv for kv in bad if kv[0][0] in ("foreign", "non-finite", "hang")]
    print(f"\n{len(fails)} failing places")
    for (outcome, name, where), hits in bad:
        print(f"- {outcome} in {name}: {where} ({len(hits)} calls)")
        for i, detail in hits[: a.show]:
            print(f"    call {i}: {detail}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
