"""Figures of a facemodel dataset (ICT 4D or imported scans) for the documentation.

Writes four PNGs into ``--out`` (default ``dataset-figures/``, not tracked; ``--out docs/images``
re-renders the README's) and prints their paths:

- ``ict4d_expressions.png``: one identity in every expression label (a static-scan subject:
  its neutral and each emotion at the highest intensity; otherwise the apex frames of
  emotion sequences), front view.
- ``ict4d_identities.png``: one expression (happiness, apex) across 8 identities.
- ``ict4d_sequence.png``: one emotion sequence, every 3rd frame, front and side views, with
  the labelled frames marked.
- ``ict4d_geometry_image.png``: a mesh, its 64 x 64 geometry image (paper §4.1: x, y, z
  mapped to R, G, B) and the template's UV layout.

Usage::

    python examples/dataset_figures.py --data ~/.cache/facemodel/ict4d [--out docs/images]

Every figure function is importable (``expressions_figure(ds)`` etc. return a PIL image)
and raises :class:`facemodel.errors.DatasetFormatError` when the dataset lacks what it needs.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from facemodel.data.dataset import FaceDataset
from facemodel.errors import DatasetFormatError, FaceModelError
from facemodel.geometry.geometry_image import GeometryImage
from facemodel.geometry.render import fit_frame, fit_text, render_mesh, save_png
from facemodel.geometry.uv import boundary_loops

__all__ = [
    "FIGURES",
    "Selection",
    "load_dataset",
    "pick_expressions",
    "pick_identities",
    "pick_sequence",
    "expressions_figure",
    "identities_figure",
    "sequence_figure",
    "geometry_image_figure",
    "geometry_image_rgb",
    "uv_layout",
    "make_figures",
    "main",
]

FIGURES = (
    "ict4d_expressions.png",
    "ict4d_identities.png",
    "ict4d_sequence.png",
    "ict4d_geometry_image.png",
)

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MUTED = (90, 90, 90)
ACCENT = (190, 40, 40)  # labelled frames of a sequence
UNCOVERED = (128, 128, 128)  # geometry-image pixels outside the UV layout
SUPERSAMPLE = 2


@dataclass(frozen=True)
class Selection:
    """Rows of a dataset chosen for one figure, with a caption per row."""

    rows: np.ndarray  # (B,) int64 positions in the dataset
    captions: list[str]
    title: str
    highlight: tuple[bool, ...] = ()  # per row: draw it marked (labelled sequence frames)


# ---------------------------------------------------------------------------------------
# choosing meshes
# ---------------------------------------------------------------------------------------
def load_dataset(root: str | Path) -> FaceDataset:
    """All meshes of a dataset folder (every split)."""
    return FaceDataset(root, split=None)


def _label_id(ds: FaceDataset, name: str) -> int | None:
    labels = [x.casefold() for x in ds.expression_labels]
    return labels.index(name.casefold()) if name.casefold() in labels else None


def _kind_rows(ds: FaceDataset, kind: str) -> np.ndarray:
    """Boolean (M,) mask of rows of ``kind`` (all False if the dataset has no such kind)."""
    kinds = ds.manifest.kinds
    if kind not in kinds:
        return np.zeros(len(ds), bool)
    return ds.meta("kind") == kinds.index(kind)


def _sequence_bounds(ds: FaceDataset) -> dict[int, tuple[int, int]]:
    """{sequence id: (first frame, last frame)} over the rows that belong to a sequence."""
    seq, frame = ds.meta("sequence"), ds.meta("frame")
    out: dict[int, tuple[int, int]] = {}
    for q in np.unique(seq[seq >= 0]):
        f = frame[seq == q]
        out[int(q)] = (int(f.min()), int(f.max()))
    return out


def _apex_rows(ds: FaceDataset) -> np.ndarray:
    """Boolean (M,) mask of labelled rows that are the strongest available sample of their
    label: static scans (the highest intensity is chosen later) and labelled sequence
    frames other than a sequence's first and last (the apex); unlabelled rows are False."""
    expr, seq, frame = ds.meta("expression"), ds.meta("sequence"), ds.meta("frame")
    labelled = expr >= 0
    in_seq = seq >= 0
    inner = np.zeros(len(ds), bool)
    for q, (lo, hi) in _sequence_bounds(ds).items():
        m = seq == q
        inner[m] = (frame[m] != lo) & (frame[m] != hi)
    return labelled & (~in_seq | inner)


def pick_expressions(ds: FaceDataset, *, seed: int = 0) -> Selection:
    """One identity in every expression label it has.

    Prefers a static-scan subject (neutral + each emotion at its highest intensity, i.e.
    the last such row: the ICT 4D builder writes intensities in increasing order); otherwise
    the identity whose labelled apex frames cover the most labels.

    Raises:
        DatasetFormatError: no identity has at least two differently labelled meshes.
    """
    expr, ident = ds.meta("expression"), ds.meta("identity")
    names = ds.identity_table("names")
    labels = ds.expression_labels
    neutral = _label_id(ds, "neutral")
    rng = np.random.default_rng(seed)
    static = _kind_rows(ds, "static") & (expr >= 0)
    if static.any():
        candidates = np.unique(ident[static])
        subject = int(rng.choice(candidates))
        pool = static & (ident == subject)
        source = "static scans, highest intensity"
    else:
        pool_all = _apex_rows(ds)
        if neutral is not None:  # neutral frames sit at sequence ends: allow them too
            pool_all |= expr == neutral
        if not pool_all.any():
            raise DatasetFormatError(
                f"{ds.root}: no expression-labelled meshes; the expressions figure needs labelled data"
            )
        ids = np.unique(ident[pool_all])
        cover = np.array([len(np.unique(expr[pool_all & (ident == i)])) for i in ids])
        best = ids[cover == cover.max()]
        subject = int(rng.choice(best))
        pool = pool_all & (ident == subject)
        source = "apex frames of emotion sequences"
    rows, captions = [], []
    for k, label in enumerate(labels):
        r = np.flatnonzero(pool & (expr == k))
        if len(r):
            rows.append(int(r[0] if k == neutral else r[-1]))
            captions.append(label)
    if len(rows) < 2:
        raise DatasetFormatError(
            f"{ds.root}: no identity has meshes with two different expression labels; "
            "the expressions figure needs them"
        )
    return Selection(np.asarray(rows), captions, f"{names[subject]}: {source}")


def pick_identities(ds: FaceDataset, *, label: str = "happiness", count: int = 8, seed: int = 0) -> Selection:
    """``label`` at its apex (sequence apex or strongest static scan) on ``count`` identities.

    Raises:
        DatasetFormatError: the dataset has no such label or fewer than two identities with it.
    """
    k = _label_id(ds, label)
    if k is None:
        raise DatasetFormatError(f"{ds.root}: no expression label {label!r} (labels: {ds.expression_labels})")
    expr, ident = ds.meta("expression"), ds.meta("identity")
    pool = _apex_rows(ds) & (expr == k)
    ids = np.unique(ident[pool])
    if len(ids) < 2:
        raise DatasetFormatError(
            f"{ds.root}: {len(ids)} identit{'y has' if len(ids) == 1 else 'ies have'} a {label!r} mesh; "
            "the identities figure needs at least 2"
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(ids, size=min(count, len(ids)), replace=False))
    emotion = _kind_rows(ds, "emotion")
    rows = []
    for i in chosen:
        r = np.flatnonzero(pool & (ident == i))
        seq_apex = r[emotion[r]]  # prefer a sequence apex, else the strongest static scan
        rows.append(int(seq_apex[-1] if len(seq_apex) else r[-1]))
    names = ds.identity_table("names")
    title = f"{ds.expression_labels[k]} (apex), {len(chosen)} identities"
    return Selection(np.asarray(rows), [str(names[i]) for i in chosen], title)


def pick_sequence(ds: FaceDataset, *, step: int = 3, prefer: str = "surprise", seed: int = 0) -> Selection:
    """Every ``step``-th frame of one emotion sequence (plus every labelled frame).

    Prefers a sequence of kind ``emotion`` whose apex is labelled ``prefer``; otherwise any
    sequence with a labelled frame; otherwise the longest sequence.

    Raises:
        DatasetFormatError: the dataset has no sequence of at least 2 frames.
    """
    if step < 1:
        raise ValueError(f"step must be a positive number of frames, got {step}")
    seq, frame, expr = ds.meta("sequence"), ds.meta("frame"), ds.meta("expression")
    bounds = _sequence_bounds(ds)
    long = [q for q, (lo, hi) in bounds.items() if hi > lo]
    if not long:
        raise DatasetFormatError(
            f"{ds.root}: no motion sequences (sequence/frame columns); the sequence figure needs one"
        )
    apex = _apex_rows(ds)
    emotion = _kind_rows(ds, "emotion")
    k = _label_id(ds, prefer)
    tiers = [
        emotion & apex & (expr == k) if k is not None else np.zeros(len(ds), bool),
        emotion & apex,
        apex,
        expr >= 0,
    ]
    rng = np.random.default_rng(seed)
    candidates = []
    for mask in tiers:
        candidates = sorted(set(int(q) for q in seq[mask & (seq >= 0)]) & set(long))
        if candidates:
            break
    if not candidates:  # unlabelled sequences only: take the longest
        candidates = [max(long, key=lambda q: bounds[q][1] - bounds[q][0])]
    q = int(rng.choice(candidates))
    rows_q = np.flatnonzero(seq == q)
    rows_q = rows_q[np.argsort(frame[rows_q], kind="stable")]
    lo = bounds[q][0]
    keep = [r for r in rows_q if (frame[r] - lo) % step == 0 or expr[r] >= 0]
    captions, marked = [], []
    for r in keep:
        text = f"frame {frame[r]}"
        if expr[r] >= 0:
            text += f": {ds.expression_labels[expr[r]]}"
        captions.append(text)
        marked.append(bool(expr[r] >= 0))
    ident = int(ds.meta("identity")[rows_q[0]])
    name = ds.identity_table("names")[ident]
    n_frames = len(rows_q)
    title = f"{name}, sequence {q} ({n_frames} frames): every {step} frames"
    if any(marked):
        title += ", labelled frames in red"
    return Selection(np.asarray(keep), captions, title, tuple(marked))


# ---------------------------------------------------------------------------------------
# drawing helpers
# ---------------------------------------------------------------------------------------
def _font(px: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: bitmap font without sizes
        return ImageFont.load_default()


def _caption_px(size: int) -> int:
    return int(np.clip(round(size / 12), 11, 22))


def _face_frame(vertices: np.ndarray, landmarks: np.ndarray, view: str, size: int) -> tuple[float, np.ndarray]:
    """One framing of a batch (B, V, 3) that fits the head down to a little below the chin
    (the neck is cut off, so the face fills the tile); whole meshes without landmarks."""
    pts = vertices.reshape(-1, 3)
    if len(landmarks) >= 9:
        lm = vertices[:, landmarks]  # (B, L, 3)
        chin = float(lm[..., 1].min())
        height = float(lm[..., 1].max()) - chin
        keep = pts[:, 1] >= chin - 0.2 * height
        if keep.sum() >= 3:
            pts = pts[keep]
    return fit_frame(pts, (view,), size=size, margin=0.03)


def _render_tiles(
    vertices: np.ndarray, faces: np.ndarray, view: str, size: int, landmarks: np.ndarray | None = None
) -> list[Image.Image]:
    """Tiles of a batch in one view with one shared framing (so sizes compare)."""
    lm = np.zeros(0, np.int64) if landmarks is None else np.asarray(landmarks, np.int64)
    scale, center = _face_frame(vertices, lm, view, size)
    return [
        Image.fromarray(render_mesh(v, faces, view=view, size=size, scale=scale, center=center,
                                    supersample=SUPERSAMPLE))  # fmt: skip
        for v in vertices
    ]


def _compose(
    rows_of_tiles: Sequence[Sequence[Image.Image]],
    captions: Sequence[str],
    *,
    title: str | None,
    ncols: int,
    highlight: Sequence[bool] = (),
    row_names: Sequence[str] = (),
) -> Image.Image:
    """Lay out cells (each a vertical stack of equal tiles, e.g. front over side) in a grid,
    with a caption under each cell and an optional title line on top."""
    cells = list(zip(*rows_of_tiles)) if len(rows_of_tiles) > 1 else [(t,) for t in rows_of_tiles[0]]
    tw, th = cells[0][0].size
    n = len(cells)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    cap_font = _font(_caption_px(tw))
    title_font = _font(_caption_px(tw) + 2)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cap_h = int(cap_font.getbbox("Hg")[3]) + 8
    title_h = int(title_font.getbbox("Hg")[3]) + 12 if title else 0
    side_w = 0
    if row_names:
        side_w = int(max(probe.textlength(s, font=cap_font) for s in row_names)) + 12
    cell_h = len(cells[0]) * th + cap_h
    width, height = side_w + ncols * tw, title_h + nrows * cell_h
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((6, 6), fit_text(draw, title, title_font, width - 12), fill=TEXT, font=title_font)
    for i, cell in enumerate(cells):
        x0 = side_w + (i % ncols) * tw
        y0 = title_h + (i // ncols) * cell_h
        for j, tile in enumerate(cell):
            canvas.paste(tile, (x0, y0 + j * th))
        marked = bool(highlight[i]) if i < len(highlight) else False
        if marked:
            draw.rectangle([x0 + 1, y0 + 1, x0 + tw - 2, y0 + len(cell) * th - 2], outline=ACCENT, width=2)
        text = fit_text(draw, captions[i], cap_font, tw - 6)
        tx = x0 + (tw - draw.textlength(text, font=cap_font)) / 2
        draw.text((tx, y0 + len(cell) * th + 3), text, fill=ACCENT if marked else TEXT, font=cap_font)
    if row_names:
        for r in range(nrows):
            for j, name in enumerate(row_names):
                y = title_h + r * cell_h + j * th + th / 2 - cap_font.getbbox("Hg")[3] / 2
                draw.text((4, y), name, fill=MUTED, font=cap_font)
    return canvas


# ---------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------
def expressions_figure(ds: FaceDataset, *, size: int = 192, seed: int = 0) -> Image.Image:
    """One identity in every expression label (front view)."""
    sel = pick_expressions(ds, seed=seed)
    tiles = _render_tiles(ds.vertices(sel.rows), ds.template.faces, "front", size, ds.template.landmarks)
    return _compose([tiles], sel.captions, title=sel.title, ncols=len(tiles))


def identities_figure(ds: FaceDataset, *, size: int = 192, seed: int = 0, count: int = 8) -> Image.Image:
    """Happiness (apex) on ``count`` identities (front view)."""
    sel = pick_identities(ds, count=count, seed=seed)
    tiles = _render_tiles(ds.vertices(sel.rows), ds.template.faces, "front", size, ds.template.landmarks)
    return _compose([tiles], sel.captions, title=sel.title, ncols=4 if len(tiles) > 5 else len(tiles))


def sequence_figure(ds: FaceDataset, *, size: int = 192, seed: int = 0, step: int = 3) -> Image.Image:
    """Every ``step``-th frame of an emotion sequence, front over side view."""
    sel = pick_sequence(ds, step=step, seed=seed)
    v = ds.vertices(sel.rows)
    faces = ds.template.faces
    tile = max(64, int(size * 0.75))  # 9+ frames in one row: smaller tiles
    front = _render_tiles(v, faces, "front", tile, ds.template.landmarks)
    side = _render_tiles(v, faces, "side", tile, ds.template.landmarks)
    return _compose([front, side], sel.captions, title=sel.title, ncols=len(front), highlight=sel.highlight)


def geometry_image_rgb(image: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """(n, n, 3) uint8 RGB of one (3, n, n) geometry image: each of x, y, z normalised to
    [0, 1] over the covered pixels; uncovered pixels gray."""
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    m = m.astype(bool)
    if not m.any():
        raise DatasetFormatError("the geometry image covers no pixel: the template's UV map is empty")
    out = np.empty(img.shape[1:] + (3,), np.float64)
    for c in range(3):
        ch = img[c].astype(np.float64)
        lo, hi = ch[m].min(), ch[m].max()
        out[..., c] = (ch - lo) / (hi - lo) if hi > lo else 0.5
    rgb = np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
    rgb[~m] = UNCOVERED
    return rgb


def uv_layout(uv: np.ndarray, faces: np.ndarray, size: int, *, supersample: int = 3) -> Image.Image:
    """The UV triangles as a light wireframe on white (v up), boundaries darker."""
    s = size * supersample
    pad = 2 * supersample
    img = Image.new("RGB", (s, s), BACKGROUND)
    draw = ImageDraw.Draw(img)
    px = np.stack([pad + uv[:, 0] * (s - 1 - 2 * pad), pad + (1.0 - uv[:, 1]) * (s - 1 - 2 * pad)], 1)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    for a, b in edges:
        draw.line([tuple(px[a]), tuple(px[b])], fill=(175, 185, 205), width=1)
    for loop in boundary_loops(faces):
        pts = [tuple(p) for p in px[np.append(loop, loop[0])]]
        draw.line(pts, fill=(60, 70, 110), width=supersample)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def geometry_image_figure(ds: FaceDataset, row: int | None = None, *, size: int = 192, resolution: int = 64,
                          seed: int = 0) -> Image.Image:  # fmt: skip
    """Mesh render | its geometry image (``resolution``^2, x/y/z as RGB) | UV layout.

    ``row``: the mesh (position in ``ds``); default the apex of the sequence figure's
    sequence, or the first mesh.
    """
    if len(ds) == 0:
        raise DatasetFormatError(f"{ds.root}: the dataset holds no meshes")
    if row is None:
        try:
            sel = pick_sequence(ds, seed=seed)
            marked = [r for r, h, c in zip(sel.rows, sel.highlight, sel.captions) if h and "neutral" not in c]
            row = int(marked[0]) if marked else 0
        except DatasetFormatError:
            row = 0
    tpl = ds.template
    v = ds.vertices(np.asarray([row]))
    layer = GeometryImage(tpl.uv, tpl.faces, resolution=resolution)
    gi = layer(torch.from_numpy(v))[0]
    rgb = geometry_image_rgb(gi, layer.mask)
    panel_gi = Image.fromarray(rgb).resize((size, size), Image.Resampling.NEAREST)
    panel_mesh = _render_tiles(v, tpl.faces, "front", size, tpl.landmarks)[0]
    panel_uv = uv_layout(tpl.uv, tpl.faces, size)
    expr = int(ds.meta("expression")[row])
    label = ds.expression_labels[expr] if expr >= 0 else "unlabelled"
    name = ds.identity_table("names")[int(ds.meta("identity")[row])]
    captions = [
        f"mesh ({label})",
        f"geometry image {resolution}x{resolution}",
        "UV layout",
    ]
    title = f"{name}: x, y, z -> R, G, B over the UV square; gray = holes"
    return _compose([[panel_mesh, panel_gi, panel_uv]], captions, title=title, ncols=3)


# ---------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------
def make_figures(
    data: str | Path, out: str | Path = "dataset-figures", *, size: int = 192, seed: int = 0
) -> tuple[list[Path], dict[str, str]]:
    """Write every figure the dataset supports.

    Returns:
        the written paths, and {figure file name: reason} for the figures that were skipped
        because the dataset lacks what they need.

    Raises:
        DatasetFormatError: ``data`` is not a readable dataset.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    ds = load_dataset(data)
    out = Path(out).expanduser()
    makers = {
        FIGURES[0]: lambda: expressions_figure(ds, size=size, seed=seed),
        FIGURES[1]: lambda: identities_figure(ds, size=size, seed=seed),
        FIGURES[2]: lambda: sequence_figure(ds, size=size, seed=seed),
        FIGURES[3]: lambda: geometry_image_figure(ds, size=size, seed=seed),
    }
    written, skipped = [], {}
    for name, make in makers.items():
        try:
            image = make()
        except DatasetFormatError as exc:
            skipped[name] = str(exc)
            continue
        written.append(save_png(image, out / name))
    return written, skipped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--data", required=True, help="dataset folder (facemodel data build-ict / import)")
    parser.add_argument("--out", default="dataset-figures", help="output folder (default: dataset-figures, not tracked)")
    parser.add_argument("--size", type=int, default=192, help="tile size in pixels (default: 192)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the choice of subjects (default: 0)")
    args = parser.parse_args(argv)
    try:
        written, skipped = make_figures(args.data, args.out, size=args.size, seed=args.seed)
    except (FaceModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    for name, reason in skipped.items():
        print(f"error: skipped {name}: {reason}", file=sys.stderr)
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
