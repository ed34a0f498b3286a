"""Property-based bad-input tests of the public API and the CLI's file readers (issue 23).

Whatever the arguments, a call either returns finite meshes / codes / weights or raises a
``FaceModelError`` that also subclasses a builtin (ValueError, TypeError, OSError...).
Deterministic (``derandomize``) and small budgets keep the module under a minute; the long
run is ``benchmarks/fuzz.py --calls 10000``.
"""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")  # in the ``test`` extra
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from facemodel import FaceModel, FaceModelError, Faces, load_mesh  # noqa: E402
from facemodel.blendshapes import read_weights  # noqa: E402
from facemodel.fitting import FitResult  # noqa: E402
from facemodel.io_points import load_points  # noqa: E402

BUILTINS = (ValueError, TypeError, OSError, MemoryError, KeyError, ArithmeticError, IndexError)
FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])  # fmt: skip
SLOW = settings(FAST, max_examples=15)
_counter = itertools.count()


@pytest.fixture(scope="module")
def model():
    return FaceModel.from_pretrained()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _finite(x) -> None:
    if isinstance(x, torch.Tensor):
        assert not x.is_floating_point() or bool(torch.isfinite(x).all()), "non-finite tensor returned"
    elif isinstance(x, np.ndarray):
        assert x.dtype.kind != "f" or bool(np.isfinite(x).all()), "non-finite array returned"
    elif isinstance(x, Faces):
        _finite(x.vertices), _finite(x.codes)
    elif isinstance(x, FitResult):
        for k in ("codes", "scale", "rotation", "translation", "rmse", "landmarks", "vertices"):
            _finite(getattr(x, k))
    elif isinstance(x, dict):
        for v in x.values():
            _finite(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            _finite(v)
    elif hasattr(x, "vertices"):
        _finite(np.asarray(x.vertices))


def check(call):
    """Run ``call``: a finite result, or a FaceModelError that subclasses a builtin."""
    try:
        out = call()
    except FaceModelError as exc:
        assert isinstance(exc, BUILTINS), f"{type(exc).__name__} subclasses no builtin: {exc}"
        assert str(exc), "an error without a message"
        return None
    _finite(out)
    return out


# ---- strategies -------------------------------------------------------------------------------
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
junk = st.one_of(st.none(), st.text(max_size=6), st.binary(max_size=6), floats, st.integers(-(2**70), 2**70),
                 st.booleans(), st.lists(floats, max_size=4), st.lists(st.lists(floats, max_size=3), max_size=3),
                 st.dictionaries(st.text(max_size=4), floats, max_size=3), st.just(object()))  # fmt: skip


def _cast(pair):
    a, dtype = pair
    with np.errstate(all="ignore"):
        return np.nan_to_num(a, posinf=2**62, neginf=-(2**62)).clip(-(2**62), 2**62).astype(dtype) if dtype == "int64" \
            else a.astype(dtype)  # fmt: skip


def arrays(shape, *, p_special: bool = True):
    """Arrays of ``shape`` (or a perturbed shape) with NaN / inf / huge values, as arrays,
    tensors or lists."""
    elems = floats if p_special else st.floats(-1e3, 1e3, width=32)
    shapes = st.one_of(st.just(tuple(shape)), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    base = st.tuples(shapes.flatmap(lambda s: hnp.arrays(np.float64, s, elements=elems)),
                     st.sampled_from(["float32", "float64", "float16", "int64"])).map(_cast)
    return st.one_of(base, base.map(lambda a: torch.as_tensor(a.astype(np.float32) if a.dtype == np.float16 else a)),
                     base.map(lambda a: a.tolist()))  # fmt: skip


def near(shape, scale=1.0):
    """Mostly valid arrays: N(0, 1) * scale of ``shape`` with some special entries."""
    return hnp.arrays(np.float64, tuple(shape), elements=st.one_of(
        st.floats(-3, 3).map(lambda v: v * scale), st.sampled_from([np.nan, np.inf, 1e30, 1e-30, 0.0])))  # fmt: skip


blend_names = st.sampled_from(["jawOpen", "JawOpen", "mouthSmileLeft", "eyeBlink_L", "Timecode", "tongueOut", "nope"])
blend_dicts = st.dictionaries(blend_names, st.one_of(floats, st.lists(floats, max_size=3), junk), max_size=3)
labels = st.sampled_from(["neutral", "happiness", "joy", 0, 3, -1, 99, "ict4d-0001"])


# ---- the API ----------------------------------------------------------------------------------
@FAST
@given(n=st.one_of(st.integers(-3, 4), st.sampled_from([2**40, 10**7]), junk),
       seed=st.one_of(st.none(), st.integers(-(2**65), 2**65), junk),
       truncation=st.one_of(st.none(), floats, junk),
       expression=st.one_of(st.none(), labels, blend_dicts, arrays((15,))),
       identity=st.one_of(st.none(), labels, arrays((65,))))  # fmt: skip
def test_sample(model, n, seed, truncation, expression, identity):
    check(lambda: model.sample(n, seed=seed, truncation=truncation, expression=expression, identity=identity))


@FAST
@given(codes=st.one_of(arrays((2, 85)), near((2, 85), 1.0), near((1, 85), 1e20), junk))
def test_decode(model, codes):
    check(lambda: model.decode(codes))


@FAST
@given(source=st.one_of(blend_dicts, arrays((85,)), near((85,)), labels, junk),
       target=st.one_of(arrays((1, 85)), near((2, 85)), junk),
       weights=st.one_of(st.none(), st.lists(floats, max_size=2), junk))  # fmt: skip
def test_transfer_and_add_expressions(model, source, target, weights):
    check(lambda: model.transfer_expression(source, target))
    check(lambda: model.add_expressions(target, source, weights=weights))


@SLOW
@given(scale=st.sampled_from([1.0, 1e-3, 1e3, 1e14, 1e-14]), noise=near((68, 3)),
       reg=st.one_of(st.sampled_from([0.0, 0.01, 10.0]), floats, junk),
       align=st.sampled_from(["similarity", "rigid", "none", "affine"]),
       solver=st.sampled_from(["gauss-newton", "gauss-newton", "lbfgs", "bfgs"]),
       weights=st.one_of(st.none(), near((68,)), junk))  # fmt: skip
def test_fit_landmarks(model, scale, noise, reg, align, solver, weights):
    lmk = model.template[model.landmarks].numpy().astype(np.float64)
    pts = (lmk + noise) * scale
    kw = {"reg": reg, "solver": solver, "weights": weights, "max_iters": 2 if solver == "lbfgs" else None}
    check(lambda: model.fit_landmarks(pts, align=align, **kw))
    check(lambda: model.fit_landmarks_2d(pts[:, :2], **kw))


@FAST
@given(points=st.one_of(arrays((68, 3)), arrays((68, 2)), junk))
def test_fit_landmarks_bad_arrays(model, points):
    check(lambda: model.fit_landmarks(points))
    check(lambda: model.fit_landmarks_2d(points))


@FAST
@given(weights=st.one_of(blend_dicts, arrays((53,)), arrays((2, 53)), junk),
       tol=st.one_of(st.just(0.05), floats, junk), codes=st.one_of(arrays((1, 15)), near((2, 15), 1e10), junk),
       spelling=st.one_of(st.sampled_from([None, "ict", "arkit", "livelink", "x"]), junk))  # fmt: skip
def test_blendshapes_both_ways(model, weights, tol, codes, spelling):
    check(lambda: model.expression_from_blendshapes(weights, clip_tolerance=tol))
    check(lambda: model.blendshapes_from_expression(codes, spelling=spelling))


@SLOW
@given(mesh=st.one_of(st.tuples(st.floats(0, 1), st.lists(st.tuples(st.integers(0, 9408), st.sampled_from(
           [np.nan, np.inf, 1e30, 1e300, -1e39])), max_size=2), st.sampled_from(["float32", "float64", "tensor"])),
           arrays((3, 3)), junk),
       reg=st.one_of(st.just(1e-3), floats), align=st.sampled_from(["none", "rigid", "similarity", "x"]))  # fmt: skip
def test_encode(model, mesh, reg, align):
    if isinstance(mesh, tuple) and len(mesh) == 3 and isinstance(mesh[2], str):  # the template, moved, with bad entries
        noise, bad, kind = mesh
        v = model.template.numpy().astype(np.float64) + noise
        for i, value in bad:
            v[i, i % 3] = value
        mesh = torch.as_tensor(v, dtype=torch.float32) if kind == "tensor" else v.astype(kind)
    check(lambda: model.encode(mesh, reg=reg, align=align, max_iters=1))


@FAST
@given(path=st.one_of(st.sampled_from(["/proc/x.obj", "/proc/self/x/y.ply", "/dev/null/x.obj", "", "\x00.obj",
                                       "a" * 300 + ".obj", "x.fbx", "{i}.ply", "nofmt"]), st.text(max_size=8), junk),
       fmt=st.one_of(st.none(), st.sampled_from(["obj", "ply", "glb", "fbx"]), junk))  # fmt: skip
def test_export(model, scratch, path, fmt):
    faces = model.sample(2, seed=0)
    where = path if not isinstance(path, str) or path.startswith(("/", "\x00")) or not path else str(scratch / path)
    out = check(lambda: faces.export(where, format=fmt))
    for p in out or []:
        assert os.path.isfile(p)
    assert not list(scratch.rglob("*.part")), "a half-written file was left"


# ---- the CLI's file readers -------------------------------------------------------------------
def _file(scratch, suffix: str, data) -> str:
    p = scratch / f"f{next(_counter)}{suffix}"
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return str(p)


def obj_text(rows):
    return "\n".join(rows)


obj_lines = st.lists(st.one_of(
    st.tuples(floats, floats, floats).map(lambda v: "v %r %r %r" % v),
    st.tuples(st.integers(-3, 6), st.integers(-3, 6), st.integers(-3, 6)).map(lambda f: "f %d %d %d" % f),
    st.sampled_from(["v 1 2", "f 1", "v a b c", "vt 0 0", "f 1/1 2/2 3/3", "# c", "v 1 2 3 0.5 0.5 0.5"])),
    max_size=8)  # fmt: skip


@FAST
@given(lines=obj_lines, suffix=st.sampled_from([".obj", ".ply", ".off", ".stl", ".glb", ".txt", ""]),
       raw=st.one_of(st.none(), st.binary(max_size=64)))  # fmt: skip
def test_load_mesh(scratch, lines, suffix, raw):
    path = _file(scratch, suffix, raw if raw is not None else obj_text(lines))
    check(lambda: load_mesh(path))


@FAST
@given(text=st.one_of(
    st.lists(st.lists(st.one_of(st.floats(width=32).map(repr), st.sampled_from(["", "x", "nan", "inf"])),
                      min_size=1, max_size=4), max_size=4).map(lambda rows: "\n".join(",".join(r) for r in rows)),
    st.text(max_size=30)),
    suffix=st.sampled_from([".csv", ".json", ".pts", ".npy", ".txt"]), raw=st.one_of(st.none(), st.binary(max_size=40)))  # fmt: skip
def test_load_points(scratch, text, suffix, raw):
    path = _file(scratch, suffix, raw if raw is not None else text)
    # NaN marks a missing point (documented); inf is refused
    check(lambda: np.nan_to_num(load_points(path), nan=0.0, posinf=np.inf, neginf=-np.inf))


@FAST
@given(header=st.lists(blend_names, min_size=0, max_size=3),
       rows=st.lists(st.lists(st.sampled_from(["0.1", "0.9", "nan", "inf", "45", "", "x", "-0.02"]), max_size=4),
                     max_size=3),
       obj=st.one_of(st.dictionaries(blend_names, st.one_of(floats, st.lists(floats, max_size=2), st.text(max_size=2)),
                                     max_size=3),
                     st.lists(st.dictionaries(blend_names, floats, max_size=2), max_size=2), junk),
       raw=st.one_of(st.none(), st.binary(max_size=20)))  # fmt: skip
def test_read_weights(scratch, header, rows, obj, raw):
    csv = "\n".join([",".join(header)] + [",".join(r) for r in rows])
    check(lambda: read_weights(_file(scratch, ".csv", raw if raw is not None else csv)))
    try:
        text = json.dumps(obj, allow_nan=True)
    except (TypeError, ValueError):
        text = "{"
    check(lambda: read_weights(_file(scratch, ".json", text)))


@SLOW
@given(cut=st.floats(0, 1), mutate=st.sampled_from(["config", "weights", "version", "vertices", "missing"]),
       value=st.one_of(st.integers(-5, 10**12), junk))  # fmt: skip
def test_from_pretrained_bad_folders(scratch, cut, mutate, value):
    from facemodel.hub import packaged_weights_dir

    src = packaged_weights_dir()
    d = scratch / f"w{next(_counter)}"
    d.mkdir()
    cfg, data = (src / "config.json").read_text(), (src / "model.safetensors").read_bytes()
    obj = json.loads(cfg)
    if mutate == "config":
        cfg = cfg[: int(cut * len(cfg))]
    elif mutate == "version":
        obj["format_version"] = value
        cfg = json.dumps(obj, default=str)
    elif mutate == "vertices":
        obj["generator"]["num_vertices"] = value
        cfg = json.dumps(obj, default=str)
    (d / "config.json").write_text(cfg)
    if mutate != "missing":
        (d / "model.safetensors").write_bytes(data[: int(cut * len(data))] if mutate == "weights" else data)
    check(lambda: FaceModel.from_pretrained(d))
    check(lambda: FaceModel.from_pretrained(d, device=value, dtype=value))
