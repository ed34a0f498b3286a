"""The ``facemodel`` command line.

    facemodel data build-ict --source PATH | --download --out DIR [--seed N] [--size N]
    facemodel data import --template MESH --meshes DIR --labels CSV --out DIR
    facemodel data info DIR [--json]
    facemodel train --config configs/paper.yaml --out RUN [--resume] [key=value ...]
    facemodel info | sample | transfer | add | encode | fit | render  [--model DIR|REPO] ...
    facemodel evaluate --model DIR --data DIR --out DIR [--quick]
    facemodel animate --identity SEED|MESH --weights FILE.csv|.json --out DIR|FILE.glb [--model DIR|REPO]
    facemodel demo [--model DIR|REPO] [--host 127.0.0.1] [--port 7860]     (pip install "facemodel[demo]")
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from . import __version__
from .errors import FaceModelError

__all__ = ["main", "build_parser"]


def _cmd_build_ict(args: argparse.Namespace) -> int:
    from .data.builder import ICTDatasetConfig, build_ict_dataset
    from .data.ict import ICTSource

    if args.download:
        from .data.download import download_ict

        source = ICTSource(download_ict(args.cache_dir, url=args.url, progress=not args.quiet))
    else:
        source = ICTSource(args.source)
    config = ICTDatasetConfig(
        seed=args.seed, size=args.size, identities=args.identities, offsets_dtype=args.dtype,
        tracker_fraction=args.tracker_fraction, split_base=args.split_base, static_fraction=args.static_fraction,
    )
    manifest = build_ict_dataset(source, args.out, config, overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {manifest.num_meshes} meshes of {manifest.num_identities} identities to {args.out}")
    print(f"checksum {manifest.checksum}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from .data.generic import import_scans

    manifest = import_scans(
        args.template,
        args.meshes,
        args.labels,
        args.out,
        units=args.units,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"wrote {manifest.num_meshes} meshes of {manifest.num_identities} identities to {args.out}")
    return 0


def _cmd_data_info(args: argparse.Namespace) -> int:
    from .data.store import read_manifest

    m = read_manifest(args.dir)
    if args.json:
        print(m.model_dump_json(indent=2))
        return 0
    c = m.counts
    print(f"{args.dir}: {m.name} (format v{m.format_version}, seed {m.seed}, units {m.units})")
    print(f"  meshes       {m.num_meshes}  ({m.num_vertices} vertices each, offsets {m.offsets_dtype})")
    print(f"  identities   {m.num_identities}")
    if "expression_labelled" in c:
        print(f"  expression   {c['expression_labelled']} labelled ({100 * c['expression_labelled'] / m.num_meshes:.1f}%)")
    for key in ("per_label", "per_kind"):
        if key in c:
            print(f"  {key[4:]:<12} " + ", ".join(f"{k} {v}" for k, v in c[key].items()))
    for split, s in c.get("per_split", {}).items():
        print(f"  {split:<12} " + ", ".join(f"{k} {v}" for k, v in s.items()))
    if m.source:
        print("  source       " + ", ".join(f"{k}: {v}" for k, v in m.source.items()))
    print(f"  checksum     {m.checksum}")
    return 0


# ---- model commands ------------------------------------------------------------------
def _load_model(args: argparse.Namespace):
    from .model import FaceModel

    return FaceModel.from_pretrained(args.model, device=args.device)


def _refuse_existing(paths, args: argparse.Namespace) -> None:
    """:func:`facemodel._fs.refuse_existing` with the command's ``--overwrite``."""
    from ._fs import refuse_existing

    refuse_existing(paths, getattr(args, "overwrite", False))


def _write_outputs(faces, args: argparse.Namespace) -> None:
    from .geometry.render import render_grid, save_png

    _refuse_existing((faces.export_paths(args.out) if args.out else []) + [args.png], args)
    if args.out:
        for path in faces.export(args.out):
            print(path)
    if args.png:
        views = ("front", "side") if args.side else ("front",)
        save_png(render_grid(faces.numpy(), faces.faces.cpu().numpy(), views=views, size=args.size), args.png)
        print(args.png)
    if not args.out and not args.png:
        print(f"{len(faces)} faces generated; pass --out FILE.obj|.ply|.glb and/or --png FILE.png to save them")


def _cmd_info(args: argparse.Namespace) -> int:
    model = _load_model(args)
    cfg = model.config
    g = cfg.generator
    print(f"facemodel weights (format v{cfg.format_version}), template {cfg.template_name!r}, units {cfg.units}")
    print(f"  vertices {g.num_vertices}, triangles {model.faces.shape[0]}, landmarks {model.landmarks.shape[0]}")
    for f in g.factors:
        names = cfg.label_names.get(f.name, [])
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        print(f"  {f.name:<11} code {f.code_dim:>3}, {f.num_labels} labels: {shown}")
    print(f"  noise       code {g.noise_dim:>3}")
    if cfg.training:
        print(f"  trained     step {cfg.training.get('step')}, epoch {cfg.training.get('epoch')}, ema {cfg.training.get('ema')}")
    return 0


def _label(value: str | None):
    """A label argument: ``"4"`` is the index 4, anything else a name (``None``: random)."""
    return int(value) if value is not None and value.strip().isdigit() else value


def _cmd_sample(args: argparse.Namespace) -> int:
    model = _load_model(args)
    faces = model.sample(args.n, seed=args.seed, identity=_label(args.identity), expression=_label(args.expression),
                         truncation=args.truncation, expression_prior=args.expression_prior)  # fmt: skip
    _write_outputs(faces, args)
    return 0


_MESH_SUFFIXES = (".obj", ".ply", ".glb", ".off", ".stl")


def _source(model, value: str, *, label: bool = False):
    """A mesh path, or ``seed:N`` for a random face; with ``label``, also an expression label
    name or index (a face with that label code)."""
    from pathlib import Path

    if value.startswith("seed:"):
        return model.sample(1, seed=int(value[5:]))
    if label and not Path(value).exists() and not value.lower().endswith(_MESH_SUFFIXES):
        from .model import UnknownLabelError

        try:
            return model.sample(1, seed=0, expression=_label(value))
        except UnknownLabelError as exc:
            raise UnknownLabelError(f"{value!r} is neither a mesh file nor an expression label: {exc}") from None
    return model.encode(value)


def _cmd_transfer(args: argparse.Namespace) -> int:
    model = _load_model(args)
    targets = _cat([_source(model, t) for t in args.target])
    faces = model.transfer_expression(_source(model, args.source, label=True), targets)
    _write_outputs(faces, args)
    return 0


def _cat(faces_list):
    import torch

    from .outputs import Faces

    first = faces_list[0]
    return Faces(torch.cat([f.vertices for f in faces_list]), torch.cat([f.codes for f in faces_list]), first.faces, first.code_slices)


def _cmd_add(args: argparse.Namespace) -> int:
    model = _load_model(args)
    expressions = [_source(model, e) if e.startswith("seed:") or "." in e else _label(e) for e in args.expression]
    faces = model.add_expressions(_source(model, args.target), *expressions, weights=args.weights)
    _write_outputs(faces, args)
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from ._fs import atomic_file

    _refuse_existing([args.codes], args)
    model = _load_model(args)
    faces = model.encode(args.mesh)
    if args.codes:
        with atomic_file(args.codes, "wb") as f:
            np.save(f, faces.codes.cpu().numpy())
        print(args.codes)
    _write_outputs(faces, args)
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from .io_points import load_points
    from .outputs import export_paths
    from .photo import is_image

    if is_image(args.points):
        from .photo import cmd_fit_photo

        if args.noise_mm is not None:
            raise FaceModelError("--noise-mm sets the prior weight of 3D fits; a photo gives 2D points (use --reg)")

        return cmd_fit_photo(_load_model(args), args)
    points = load_points(args.points)
    _refuse_existing((export_paths(args.out, 1) if args.out else []) + [args.png], args)  # before the fit
    model = _load_model(args)
    kwargs = {"reg": args.reg}
    if points.shape[1] == 2:
        if args.noise_mm is not None:
            raise FaceModelError("--noise-mm sets the prior weight of 3D fits; for 2D points use --reg")
        result = model.fit_landmarks_2d(points, **kwargs, **_camera_kwargs(args), **_noise_px_kwargs(args))
    else:
        if args.noise_px is not None:
            raise FaceModelError("--noise-px is for 2D points and photos; for 3D points use --noise-mm")
        if args.camera != "scaled_orthographic" or args.focal_length is not None:
            raise FaceModelError("--camera / --focal-length are for 2D landmarks or photos; these points are 3D")
        result = model.fit_landmarks(points, align=args.align, noise_mm=args.noise_mm, **kwargs)
    lo, _, hi = result.typical_range
    print(f"rmse {float(result.rmse.mean()):.3f} (input units), converged {bool(result.converged.all())}, "
          f"iterations {int(result.iterations.max())}, plausibility {float(result.plausibility.max()):.2f} "
          f"(prior's 1-99 %: {lo:.1f}-{hi:.1f}; {_prior_weight_text(result, args.noise_px)})")  # fmt: skip
    from .outputs import Faces

    _write_outputs(Faces(result.vertices, result.codes, model.faces, model.code_slices), args)
    return 0


def _prior_weight_text(result, noise_px=None) -> str:
    """'prior weight W[, landmark noise N mm / image noise N px [(estimated)]]' of a fit (the
    largest over its faces); ``noise_px``: what a 2D fit was given (``"auto"``: estimated)."""
    per_face = hasattr(result.reg, "max")  # a (B,) tensor: the weight followed each face's noise
    text = f"prior weight {float(result.reg.max() if per_face else result.reg):.2f}"
    if result.noise_mm is None:
        return text
    if result.align in ("scaled_orthographic", "pinhole"):  # 2D: the noise in pixels, given or estimated
        if noise_px != "auto":  # as given (noise_mm is it over the first fit's camera scale)
            return text + f", image noise {float(noise_px):.2f} px"
        return text + f", image noise {float((result.noise_mm * result.scale).max()):.2f} px (estimated)"
    return text + f", landmark noise {float(result.noise_mm.max()):.2f} mm" + (" (estimated)" if per_face else "")


def _noise_arg(unit: str):
    """The argparse type of ``--noise-mm`` / ``--noise-px``: a number (of ``unit``), or ``auto``."""

    def parse(text: str) -> float | str:
        if text.strip().lower() == "auto":
            return "auto"
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of {unit} or 'auto', got {text!r}") from None

    return parse


def _noise_px_kwargs(args: argparse.Namespace) -> dict:
    """fit_landmarks_2d's ``noise_px`` of ``fit --noise-px PX|auto`` (none when not given)."""
    return {} if getattr(args, "noise_px", None) is None else {"noise_px": args.noise_px}


def _camera_kwargs(args: argparse.Namespace) -> dict:
    """fit_landmarks_2d's camera arguments of ``fit --camera ... --focal-length PX``."""
    if args.camera == "pinhole":
        return {"camera": "pinhole", "focal_length": args.focal_length}
    if args.focal_length is not None:
        raise FaceModelError("--focal-length needs --camera pinhole (the scaled-orthographic camera has no focal length)")
    return {}


def _cmd_render(args: argparse.Namespace) -> int:
    import numpy as np

    from .geometry.mesh_io import load_mesh
    from .geometry.render import render_grid, save_png

    _refuse_existing([args.png], args)
    meshes = [load_mesh(p) for p in args.meshes]
    if len({m.vertices.shape[0] for m in meshes}) != 1:
        from .errors import TopologyMismatchError

        raise TopologyMismatchError("render draws meshes of one topology per grid; the inputs differ in vertex count")
    views = ("front", "side") if args.side else ("front",)
    image = render_grid(np.stack([m.vertices for m in meshes]), meshes[0].faces, views=views, size=args.size,
                        labels=[__import__("os").path.basename(p) for p in args.meshes] if args.labels else None)  # fmt: skip
    save_png(image, args.png)
    print(args.png)
    return 0


# ---- animate: blendshape weights (ARKit / Live Link Face / MediaPipe / ICT) -> frames -----
def save_animation_glb(path, vertices, faces, base=None, *, fps: float = 60.0, names=None):
    """Write frames as one GLB: a mesh whose morph targets are the frames, animated one after
    the other (linear cross-fade between consecutive frames, exact at each frame's time).

    Args:
        path: output .glb (written atomically).
        vertices: (N, V, 3) frames, mm.
        faces: (F, 3) triangles.
        base: (V, 3) rest shape of the mesh (default the first frame); each morph target
            holds ``frame - base``.
        fps: frame rate of the animation.
        names: N morph target names (default ``frame_00000``, ...).

    The glTF holds N morph targets and an N x N weight track, so it suits clips of up to a
    few thousand frames; longer takes are better written as an OBJ/PLY sequence.
    """
    import struct

    import numpy as np

    from ._fs import atomic_file

    v = np.ascontiguousarray(np.asarray(vertices, np.float32))
    f = np.ascontiguousarray(np.asarray(faces, np.uint32))
    N, V = v.shape[:2]
    base = v[0] if base is None else np.asarray(base, np.float32)
    names = names or [f"frame_{i:05d}" for i in range(N)]
    blobs: list[bytes] = []
    views: list[dict] = []
    accessors: list[dict] = []
    offset = 0

    def add(array: np.ndarray, gl_type: str, component: int, target: int | None = None, minmax: bool = False) -> int:
        nonlocal offset
        data = array.tobytes()
        view = {"buffer": 0, "byteOffset": offset, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        views.append(view)
        pad = (-len(data)) % 4
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
        acc = {"bufferView": len(views) - 1, "componentType": component, "count": int(array.shape[0]), "type": gl_type}
        if minmax:
            flat = array.reshape(array.shape[0], -1)
            acc["min"] = [float(x) for x in flat.min(0)]
            acc["max"] = [float(x) for x in flat.max(0)]
        accessors.append(acc)
        return len(accessors) - 1

    FLOAT, UINT = 5126, 5125
    pos = add(base, "VEC3", FLOAT, 34962, minmax=True)
    idx = add(f.reshape(-1), "SCALAR", UINT, 34963)
    targets = [{"POSITION": add(np.ascontiguousarray(v[i] - base), "VEC3", FLOAT, 34962, minmax=True)} for i in range(N)]
    times = add(np.arange(N, dtype=np.float32) / np.float32(fps), "SCALAR", FLOAT, minmax=True)
    track = add(np.eye(N, dtype=np.float32).reshape(-1), "SCALAR", FLOAT)
    gltf = {
        "asset": {"version": "2.0", "generator": "facemodel animate"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "face"}],
        "meshes": [{"name": "face", "primitives": [{"attributes": {"POSITION": pos}, "indices": idx, "mode": 4,
                                                     "targets": targets}],
                    "weights": [0.0] * N, "extras": {"targetNames": list(names)}}],
        "animations": [{"name": "blendshapes", "samplers": [{"input": times, "output": track, "interpolation": "LINEAR"}],
                        "channels": [{"sampler": 0, "target": {"node": 0, "path": "weights"}}]}],
        "buffers": [{"byteLength": offset}],
        "bufferViews": views,
        "accessors": accessors,
        "extras": {"units": "mm", "fps": fps},
    }  # fmt: skip
    js = json.dumps(gltf, separators=(",", ":")).encode()
    js += b" " * ((-len(js)) % 4)
    binary = b"".join(blobs)
    total = 12 + 8 + len(js) + 8 + len(binary)
    with atomic_file(path, "wb") as fh:
        fh.write(struct.pack("<III", 0x46546C67, 2, total))
        fh.write(struct.pack("<II", len(js), 0x4E4F534A) + js)
        fh.write(struct.pack("<II", len(binary), 0x004E4942) + binary)
    return path


class _FrameWriter:
    """Fast OBJ / binary PLY frames of one topology (the faces are formatted once). Writes plain
    files: callers write into an :func:`~facemodel._fs.atomic_dir` folder."""

    def __init__(self, faces, fmt: str) -> None:
        import numpy as np

        f = np.asarray(faces, np.int64)
        self.fmt, self.num_faces = fmt, len(f)
        if fmt == "obj":
            self.tail = ("\n".join("f %d %d %d" % tuple(r) for r in f + 1) + "\n").encode()
        else:
            rec = np.empty(len(f), dtype=[("n", "u1"), ("i", "<i4", (3,))])
            rec["n"], rec["i"] = 3, f
            self.tail = rec.tobytes()

    def write(self, path, vertices) -> None:
        import numpy as np

        v = np.asarray(vertices, np.float64 if self.fmt == "obj" else "<f4")
        if self.fmt == "obj":
            head = (("v %.6f %.6f %.6f\n" * len(v)) % tuple(v.ravel())).encode()
        else:
            head = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(v)}\nproperty float x\n"
                    f"property float y\nproperty float z\nelement face {self.num_faces}\n"
                    "property list uchar int vertex_indices\nend_header\n").encode() + v.tobytes()  # fmt: skip
        with open(path, "wb") as fh:
            fh.write(head)
            fh.write(self.tail)


def _animate_identity(model, value: str):
    """Full code (1, D) of ``--identity`` at rest: a seed (``7`` or ``seed:7``; its expression
    code is the map's rest code, weights 0) or a mesh file (encoded; its own expression code
    is the rest pose, so the face keeps everything its fit holds)."""
    text = value[5:] if value.startswith("seed:") else value
    try:
        seed = int(text)
    except ValueError:
        return model.encode(value).codes
    z = model.sample(1, seed=seed).codes.clone()
    z[:, model.code_slices["expression"]] = model.expression_from_blendshapes({"jawOpen": 0.0})
    return z


def _cmd_animate(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    import torch
    from tqdm.auto import tqdm

    from ._fs import atomic_dir
    from .blendshapes import read_weights

    if args.batch_size < 1:
        raise FaceModelError(f"--batch-size must be positive, got {args.batch_size}")
    out = Path(args.out)
    glb = out.suffix.lower() == ".glb"
    if not glb and out.suffix:
        from .errors import OutputPathError

        raise OutputPathError(f"--out {args.out}: animate writes one .glb file (animated morph targets) or a folder of "
                              f"OBJ/PLY frames named without an extension (e.g. --out {out.stem}/); "
                              f"{out.suffix} output is not supported")  # fmt: skip
    if glb:
        _refuse_existing([out], args)  # a folder is checked by atomic_dir, with the same rule
    weights = read_weights(args.weights)  # checked in full before anything is written
    model = _load_model(args)
    identity = _animate_identity(model, args.identity)
    n = weights.shape[0]
    show = not args.quiet and n >= 200
    t0 = time.perf_counter()
    sl = model.code_slices["expression"]
    # relative to the rest pose, as add_expressions: rest + to_code(w) - to_code(0)
    codes = identity[:, sl] + model.expression_from_blendshapes(weights) - model.expression_from_blendshapes(
        torch.zeros(1, weights.shape[1]))  # fmt: skip
    faces = model.faces.cpu().numpy()
    fallback = bool(model.fallback_blendshapes)

    def frames():
        for a in range(0, n, args.batch_size):
            z = identity.expand(min(args.batch_size, n - a), -1).clone()
            z[:, sl] = codes[a : a + args.batch_size]
            with torch.no_grad():
                v = model(z)
                if fallback:  # shapes without training data: fixed linear deltas (model.fallback_blendshapes)
                    model.expression_map.add_displacement_(v, weights[a : a + args.batch_size].to(v))
                yield a, v.cpu().float().numpy()

    bar = tqdm(total=n, desc="frames", unit="frame", disable=not show)
    if glb:
        chunks = []
        for _, v in frames():
            chunks.append(v)
            bar.update(len(v))
        import numpy as np

        with torch.no_grad():
            base = model(identity)[0].cpu().numpy()
        save_animation_glb(out, np.concatenate(chunks), faces, base, fps=args.fps)
        written = str(out)
    else:
        writer = _FrameWriter(faces, args.format)
        with atomic_dir(out, overwrite=args.overwrite) as tmp:
            for a, v in frames():
                for i, x in enumerate(v):
                    writer.write(tmp / f"frame_{a + i:05d}.{args.format}", x)
                bar.update(len(v))
        written = f"{out}/frame_00000.{args.format} .. frame_{n - 1:05d}.{args.format}"
    bar.close()
    total = time.perf_counter() - t0
    print(f"{n} frames -> {written} ({total:.1f} s)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args=args)


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facemodel", description="A decoupled 3D face model.")
    parser.add_argument("--version", action="version", version=f"facemodel {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build and inspect datasets").add_subparsers(dest="data_command", required=True)

    b = data.add_parser("build-ict", help="build the ICT 4D dataset from ICT-FaceKit")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", help="packed ICT-FaceKit folder (e.g. ../shared/data/ict-facekit)")
    src.add_argument("--download", action="store_true", help="download ICT-FaceKit at the pinned commit")
    b.add_argument("--cache-dir", default=None, help="download cache (default ~/.cache/facemodel)")
    b.add_argument("--url", default=None, help="archive URL of a mirror (default: GitHub, pinned commit)")
    b.add_argument("--out", required=True, help="output dataset folder")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--size", type=int, default=30_000, help="number of meshes (default 30000)")
    b.add_argument("--identities", type=int, default=None, help="number of identities (default size/100)")
    b.add_argument("--tracker-fraction", type=float, default=0.0,
                   help="fraction of meshes that are tracker-like motion over all 53 shapes (default 0: the 0.3.x build)")
    b.add_argument("--split-base", type=int, default=None, metavar="N",
                   help="grow an N-identity build (same seed): its identities keep their train/val/test split, so a run "
                        "on it can continue here without having trained on this build's val/test identities")
    b.add_argument("--static-fraction", type=float, default=0.08, metavar="F",
                   help="fraction of identities with static scans (default 0.08); the labelled meshes they do not "
                        "fill (7 %% of the build) come as emotion sequences, 25 frames each: 0.024 keeps a 1,000-identity "
                        "build's emotion share at the 300-identity build's (docs/training.md, session 25)")
    b.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="storage of vertex offsets")
    b.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_cmd_build_ict)

    im = data.add_parser("import", help="import registered scans: template + meshes + labels CSV")
    im.add_argument("--template", required=True, help="template mesh (OBJ/PLY)")
    im.add_argument("--meshes", required=True, help="folder of meshes in the template's topology")
    im.add_argument("--labels", required=True, help="CSV: file,identity,expression[,split,sequence,frame]")
    im.add_argument("--out", required=True)
    im.add_argument("--units", choices=("mm", "cm", "m"), default="mm", help="units of the input meshes")
    im.add_argument("--seed", type=int, default=0, help="seed of the automatic identity split")
    im.add_argument("--overwrite", action="store_true")
    im.add_argument("--quiet", action="store_true")
    im.set_defaults(func=_cmd_import)

    from .training.cli import add_arguments as add_train_arguments  # argparse only, no torch work

    train = sub.add_parser("train", help="train the decoupled GAN (same as python -m facemodel.training)")
    add_train_arguments(train).set_defaults(func=_cmd_train)
    from .evaluation.cli import add_evaluate_parser, run_evaluate

    ev = sub.add_parser("evaluate", help="the paper's Tables 1 and 2 for a model and the baselines (report.md)")
    add_evaluate_parser(ev).set_defaults(func=run_evaluate)

    def model_args(p: argparse.ArgumentParser, outputs: bool = True) -> argparse.ArgumentParser:
        p.add_argument("--model", default=None, help="model folder or Hub repo id (default: the released weights)")
        p.add_argument("--device", default=None, help="cpu, cuda, ... (default cpu)")
        if outputs:
            p.add_argument("--out", default=None, help="mesh output: .obj, .ply or .glb (several faces: name_000.obj, ...)")
            p.add_argument("--png", default=None, help="render the result to this PNG")
            p.add_argument("--side", action="store_true", help="add a side view to the PNG")
            p.add_argument("--size", type=int, default=512, help="PNG tile size in pixels (default 512)")
            p.add_argument("--overwrite", action="store_true", help="replace existing output files")
        return p

    p = model_args(sub.add_parser("info", help="describe a model (factors, labels, provenance)"), outputs=False)
    p.set_defaults(func=_cmd_info)
    p = model_args(sub.add_parser("sample", help="generate random faces"))
    p.add_argument("-n", type=int, default=1, help="number of faces")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--expression", default=None, help="expression label name or index (default random)")
    p.add_argument("--identity", default=None, help="identity label name or index (default random)")
    p.add_argument("--truncation", type=float, default=None, help="scale random codes by this (0..1)")
    p.add_argument("--expression-prior", choices=("auto", "blendshapes", "gaussian"), default="auto",
                   help="random expressions: realistic blendshape weights through the model's map (blendshapes), "
                        "N(0, I) codes (gaussian), or blendshapes when the model has a map (auto, the default)")  # fmt: skip
    p.set_defaults(func=_cmd_sample)
    p = model_args(sub.add_parser("transfer", help="give target faces the source's expression"))
    p.add_argument("--source", required=True, help="mesh file (template topology), seed:N, or an expression label "
                   "name or index (e.g. happiness)")
    p.add_argument("--target", required=True, nargs="+", help="mesh files or seed:N")
    p.set_defaults(func=_cmd_transfer)
    p = model_args(sub.add_parser("add", help="add expressions (labels or meshes) to a face"))
    p.add_argument("--target", required=True, help="mesh file or seed:N")
    p.add_argument("--expression", required=True, nargs="+", help="label names, mesh files or seed:N")
    p.add_argument("--weights", type=float, nargs="+", default=None)
    p.set_defaults(func=_cmd_add)
    p = model_args(sub.add_parser("encode", help="codes of a registered mesh (dense fit)"))
    p.add_argument("mesh", help="mesh in the template's topology (mm)")
    p.add_argument("--codes", default=None, help="write the codes (1, D) to this .npy")
    p.set_defaults(func=_cmd_encode)
    p = model_args(sub.add_parser("fit", help="fit the model to 3D or 2D landmarks (iBUG-68) or to a photo"))
    p.add_argument("points", help="landmarks: .npy, .csv, .json or .pts; K x 3 (3D) or K x 2 (2D); or a photo "
                   "(.jpg, .png, ...: needs the photo extra)")  # fmt: skip
    p.add_argument("--reg", type=float, default=None, help="weight of the code prior (default: the model prior at its "
                   "validated weight; an explicit value alone uses the paper's lambda ||z||^2)")  # fmt: skip
    p.add_argument("--noise-mm", type=_noise_arg("mm"), default=None, metavar="MM|auto",
                   help="3D points: their expected noise per coordinate in mm of the face, or 'auto' (sets the "
                   "prior weight; default: estimated per face for the 68 iBUG points, else 1)")  # fmt: skip
    p.add_argument("--noise-px", type=_noise_arg("pixels"), default=None, metavar="PX|auto",
                   help="2D points and photos: their expected noise per coordinate in pixels, or 'auto' (sets the "
                   "prior weight per face; default: the fixed weight chosen for ~2 px)")  # fmt: skip
    p.add_argument("--face", type=int, default=0, help="photos: which detected face (0: the largest)")
    p.add_argument("--codes", default=None, help="photos: write codes, camera, landmarks (and blendshape weights) to "
                   "this .json or .npz (default: next to --out)")  # fmt: skip
    p.add_argument("--align", choices=("similarity", "rigid", "none"), default="similarity")
    p.add_argument("--camera", choices=("scaled_orthographic", "pinhole"), default="scaled_orthographic",
                   help="2D landmarks and photos: the camera (pinhole: perspective, for faces within ~1 m; the "
                   "principal point is a photo's centre, the landmarks' bounding-box centre for point files)")  # fmt: skip
    p.add_argument("--focal-length", type=float, default=None, metavar="PX", help="with --camera pinhole: the focal "
                   "length in pixels (default: fitted)")  # fmt: skip
    p.set_defaults(func=_cmd_fit)
    p = sub.add_parser("animate", help="animate a face from blendshape weights (Live Link Face / ARKit / "
                       "MediaPipe / ICT CSV or JSON)")  # fmt: skip
    p.add_argument("--model", default=None, help="model folder or Hub repo id, with a blendshape map (default: the released weights)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default cpu)")
    p.add_argument("--identity", required=True, help="a seed (7 or seed:7) or a mesh file in the template's topology "
                   "(encoded; the weights are applied relative to it, as its rest pose)")
    p.add_argument("--weights", required=True, help="Live Link Face CSV, CSV with a header of blendshape names, or JSON")
    p.add_argument("--out", required=True, help="a folder (frame_00000.obj, ...) or one .glb (frames as animated morph targets)")
    p.add_argument("--format", choices=("obj", "ply"), default="obj", help="frame format of a folder output")
    p.add_argument("--fps", type=float, default=60.0, help="frame rate of the GLB animation (Live Link Face: 60)")
    p.add_argument("--batch-size", type=int, default=1024, help="frames generated at once")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder or .glb")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_animate)
    p = sub.add_parser("render", help="render meshes of one topology to a PNG grid")
    p.add_argument("meshes", nargs="+")
    p.add_argument("--png", required=True)
    p.add_argument("--side", action="store_true")
    p.add_argument("--labels", action="store_true", help="label tiles with file names")
    p.add_argument("--size", type=int, default=512, help="tile size in pixels (default 512)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing PNG")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("demo", help='a local web page to try the model (pip install "facemodel[demo]")')
    p.add_argument("--model", default=None, help="model folder or Hub repo id (default: the released weights)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.set_defaults(func=_cmd_demo)

    info = data.add_parser("info", help="summarise a dataset folder")
    info.add_argument("dir")
    info.add_argument("--json", action="store_true", help="print the whole manifest")
    info.set_defaults(func=_cmd_data_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``facemodel`` command; returns the exit status."""
    parser = build_parser()
    _one_line_usage_errors(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version exit 0; usage errors were printed on one line
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except FaceModelError as exc:
        print(f"facemodel: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facemodel: interrupted", file=sys.stderr)
        return 130
    except (OSError, MemoryError, ValueError) as exc:  # the system refused (disk full, out of memory), or a value
        # the command parses itself (seed:N) was not one: not a traceback either
        print(f"facemodel: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.verbose:
            raise
        print(f"facemodel: internal error: {type(exc).__name__}: {_one_line(exc)} (a bug: rerun with -v for the "
              "traceback and report it)", file=sys.stderr)  # fmt: skip
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _one_line_usage_errors(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` and its subcommands report usage errors as one stderr line naming the
    fix (``facemodel sample: error: argument -n: invalid int value: 'x'; usage: facemodel sample
    [-h] ... (see facemodel sample --help)``) and exit 2, instead of argparse's two-part message."""

    def error(p, message):
        usage = _one_line(p.format_usage()).removeprefix("usage: ")
        print(f"{p.prog}: error: {_one_line(message)}; usage: {usage} (see {p.prog} --help)", file=sys.stderr)
        raise SystemExit(2)

    todo = [parser]
    while todo:
        p = todo.pop()
        p.error = error.__get__(p)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
