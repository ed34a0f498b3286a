"""A small headless software renderer: shaded meshes to PNG grids (numpy + pillow only).

Meshes are drawn with an orthographic camera, a z-buffer (:func:`~.raster.rasterize`) and
per-pixel Lambert + ambient shading of barycentrically interpolated vertex normals (Phong
interpolation). Shading is two-sided, so the inside of an open face mesh (seen through the
mouth or eye holes, or from the back) is lit like the outside instead of turning black.

Conventions:
    * Vertices are in millimetres, +y up, +z towards the viewer of the front view.
    * A view is an azimuth in degrees: the camera orbits about +y from the front (0) towards
      +x, the subject's left. ``"front"`` is 0, ``"three_quarter"`` is 45 and ``"side"`` is
      90 (the subject's left profile, nose pointing to the image's left).
    * The light direction is given in camera space (x right, y up, z towards the camera), so
      every view is lit the same way; the default comes from the front-upper-left.
    * Framing: ``scale`` is pixels per millimetre and ``center`` a 3D point (mm, mesh
      coordinates) that lands at the image centre. :func:`fit_frame` computes both for a
      batch so that several meshes share one framing.

Example:
    >>> img = render_grid(np.stack([tpl.vertices, smile]), tpl.faces, views=("front", "side"),
    ...                   labels=["neutral", "smile"])
    >>> save_png(img, "faces.png")
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .._fs import atomic_file
from ..errors import InvalidArgumentError, InvalidGeometryError
from .raster import rasterize

__all__ = [
    "fit_text",
    "vertex_normals",
    "render_mesh",
    "render_grid",
    "save_png",
    "heatmap_colors",
    "fit_frame",
    "view_azimuth",
    "VIEWS",
    "DEFAULT_LIGHT",
]

View = Union[str, float, int]

#: named views -> azimuth in degrees about +y (camera orbiting from the front towards +x)
VIEWS: dict[str, float] = {"front": 0.0, "three_quarter": 45.0, "side": 90.0}
#: default light direction in camera space (towards the light): front-upper-left
DEFAULT_LIGHT: tuple[float, float, float] = (-0.45, 0.5, 1.0)
DEFAULT_COLOR: tuple[float, float, float] = (0.75, 0.78, 0.85)
DEFAULT_SIZE = 512  # tile side in pixels: expressions can be judged at this size
DEFAULT_MARGIN = 0.05  # fraction of the image left free on each side by the default framing

# viridis sampled at 11 evenly spaced stops (matplotlib's table), linearly interpolated
_VIRIDIS = np.array(
    [
        [0.267004, 0.004874, 0.329415],
        [0.282623, 0.140926, 0.457517],
        [0.253935, 0.265254, 0.529983],
        [0.206756, 0.371758, 0.553117],
        [0.163625, 0.471133, 0.558148],
        [0.127568, 0.566949, 0.550556],
        [0.134692, 0.658636, 0.517649],
        [0.266941, 0.748751, 0.440573],
        [0.477504, 0.821444, 0.318195],
        [0.741388, 0.873449, 0.149561],
        [0.993248, 0.906157, 0.143936],
    ]
)
_NAN_COLOR = (0.6, 0.6, 0.6)


# ---------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------
def _as_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: accept it without importing torch here
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise InvalidGeometryError(f"{name} cannot be converted to an array: {exc}") from exc


def _check_vertices(vertices, *, batched: bool | None, name: str = "vertices") -> np.ndarray:
    """Return float64 vertices after checking shape (V,3) / (B,V,3) and finiteness."""
    v = _as_numpy(vertices, name)
    expected = {True: "(B, V, 3)", False: "(V, 3)", None: "(V, 3) or (B, V, 3)"}[batched]
    ok_ndim = {True: (3,), False: (2,), None: (2, 3)}[batched]
    if v.ndim not in ok_ndim or v.shape[-1] != 3 or v.shape[-2] == 0:
        raise InvalidGeometryError(f"{name} must have shape {expected} in millimetres, got {tuple(v.shape)}")
    if not np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.complexfloating):
        raise InvalidGeometryError(f"{name} must be a real numeric array {expected}, got dtype {v.dtype}")
    v = v.astype(np.float64, copy=False)
    if not np.isfinite(v).all():
        raise InvalidGeometryError(f"{name} contains NaN or infinite coordinates")
    return v


def _check_faces(faces, num_vertices: int) -> np.ndarray:
    f = _as_numpy(faces, "faces")
    if f.ndim != 2 or f.shape[1] != 3:
        raise InvalidGeometryError(f"faces must have shape (F, 3), got {tuple(f.shape)}")
    if f.size and not np.issubdtype(f.dtype, np.integer):
        if not np.issubdtype(f.dtype, np.floating) or not np.all(np.isfinite(f)) or np.any(f != np.round(f)):
            raise InvalidGeometryError(f"faces must hold integer vertex indices, got dtype {f.dtype}")
    f = f.astype(np.int64, copy=False)
    if f.size and (f.min() < 0 or f.max() >= num_vertices):
        raise InvalidGeometryError(
            f"faces index vertices outside 0..{num_vertices - 1} (min {f.min()}, max {f.max()})"
        )
    return f


def _check_colors(colors, shape: tuple[int, ...], name: str) -> np.ndarray:
    c = _as_numpy(colors, name).astype(np.float64, copy=False)
    want = "(" + ", ".join(str(s) for s in shape) + ")"
    if c.shape != shape:
        raise InvalidGeometryError(f"{name} must have shape {want} (RGB floats in [0, 1]), got {tuple(c.shape)}")
    if not np.isfinite(c).all():
        raise InvalidGeometryError(f"{name} contains NaN or infinite values")
    return np.clip(c, 0.0, 1.0)


def _rgb(value, name: str) -> np.ndarray:
    c = np.asarray(value, dtype=np.float64).reshape(-1)
    if c.shape != (3,) or not np.isfinite(c).all():
        raise InvalidArgumentError(f"{name} must be an RGB triple of floats in [0, 1], got {value!r}")
    return np.clip(c, 0.0, 1.0)


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise InvalidArgumentError(f"size must be a positive integer number of pixels, got {size!r}")
    return int(size)


def view_azimuth(view: View) -> float:
    """Azimuth in degrees of a view name (``"front"``, ``"side"``, ``"three_quarter"``) or angle."""
    if isinstance(view, str):
        try:
            return VIEWS[view]
        except KeyError:
            raise InvalidArgumentError(f"unknown view {view!r}; use one of {sorted(VIEWS)} or an azimuth in degrees") from None
    if isinstance(view, (bool, np.bool_)) or not isinstance(view, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"view must be a name ({sorted(VIEWS)}) or an azimuth in degrees, got {view!r}")
    if not math.isfinite(float(view)):
        raise InvalidArgumentError(f"view azimuth must be finite, got {view!r}")
    return float(view)


def _rotation(view: View) -> np.ndarray:
    """(3, 3) world -> camera rotation: the camera orbits by +azimuth about +y."""
    a = math.radians(view_azimuth(view))
    c, s = math.cos(a), math.sin(a)
    # rotate the points by -azimuth about +y
    return np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])


# ---------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------
def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals.

    Each face adds its normal scaled by its area to its three corners; the sums are then
    normalised. Counter-clockwise faces give outward normals.

    Args:
        vertices: (V, 3) or (B, V, 3) float positions (any unit).
        faces: (F, 3) int vertex indices.

    Returns:
        (V, 3) or (B, V, 3) float64 unit normals, matching ``vertices``; vertices used by no
        (non-degenerate) face get (0, 0, 0).

    Raises:
        InvalidGeometryError: bad shapes, NaN / inf coordinates, out-of-range indices.
    """
    v = _check_vertices(vertices, batched=None)
    f = _check_faces(faces, v.shape[-2])
    single = v.ndim == 2
    vb = v[None] if single else v
    B, V, _ = vb.shape
    if len(f) == 0:
        out = np.zeros_like(vb)
        return out[0] if single else out
    a, b, c = vb[:, f[:, 0]], vb[:, f[:, 1]], vb[:, f[:, 2]]
    fn = np.cross(b - a, c - a)  # (B, F, 3), length = 2 * area
    idx = (f.reshape(1, -1) + (np.arange(B) * V)[:, None]).reshape(-1)  # (B*F*3,)
    w = np.repeat(fn, 3, axis=1).reshape(-1, 3)  # each face normal once per corner
    acc = np.stack([np.bincount(idx, weights=w[:, k], minlength=B * V) for k in range(3)], axis=1)
    acc = acc.reshape(B, V, 3)
    norm = np.linalg.norm(acc, axis=-1, keepdims=True)
    out = np.divide(acc, norm, out=np.zeros_like(acc), where=norm > 1e-300)
    return out[0] if single else out


def fit_frame(
    vertices: np.ndarray,
    views: Sequence[View] = ("front",),
    *,
    size: int = 256,
    margin: float = DEFAULT_MARGIN,
) -> tuple[float, np.ndarray]:
    """One framing (scale, centre) that fits every mesh in every view.

    The centre is the centre of the 3D bounding box of all vertices; the scale is the
    largest one for which every projected vertex stays ``margin * size`` pixels inside the
    image in each of ``views``.

    Args:
        vertices: (V, 3) or (B, V, 3) positions in mm.
        views: view names or azimuths in degrees.
        size: image side in pixels.
        margin: fraction of the image kept free on each side, in [0, 0.5).

    Returns:
        scale: pixels per millimetre.
        center: (3,) float64 point in mm that maps to the image centre.
    """
    v = _check_vertices(vertices, batched=None).reshape(-1, 3)
    size = _check_size(size)
    if not 0.0 <= margin < 0.5:
        raise InvalidArgumentError(f"margin must lie in [0, 0.5), got {margin!r}")
    views = _check_views(views)
    center = 0.5 * (v.min(0) + v.max(0))
    half = 0.0
    for view in views:
        p = (v - center) @ _rotation(view)[:2].T  # (N, 2) camera x, y
        half = max(half, float(np.abs(p).max()))
    usable = size * (1.0 - 2.0 * margin)
    scale = usable / (2.0 * half) if half > 0 else 1.0
    return scale, center


def _check_views(views) -> tuple[View, ...]:
    if isinstance(views, (str, int, float)):
        views = (views,)
    views = tuple(views)
    if not views:
        raise InvalidArgumentError("views must name at least one view, e.g. ('front',) or ('front', 'side')")
    for view in views:
        view_azimuth(view)
    return views


# ---------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------
def _render(
    v: np.ndarray,
    f: np.ndarray,
    normals: np.ndarray,
    colors: np.ndarray | None,
    *,
    view: View,
    size: int,
    color: np.ndarray,
    background: np.ndarray,
    light: np.ndarray,
    ambient: float,
    scale: float,
    center: np.ndarray,
    supersample: int,
) -> np.ndarray:
    """Render validated inputs; returns (size, size, 3) uint8."""
    R = _rotation(view)
    cam = (v - center) @ R.T  # (V, 3) camera space, x right, y up, z towards the camera
    ncam = normals @ R.T
    n_px = size * supersample
    s = scale * supersample
    pts = np.empty((len(v), 2))
    pts[:, 0] = cam[:, 0] * s + 0.5 * n_px
    pts[:, 1] = 0.5 * n_px - cam[:, 1] * s
    tid, bary = rasterize(pts, f, n_px, n_px, depth=-cam[:, 2])
    img = np.empty((n_px, n_px, 3))
    img[:] = background
    cov = tid >= 0
    if cov.any():
        t = tid[cov]
        w = bary[cov]  # (N, 3)
        corners = f[t]  # (N, 3)
        n = np.einsum("nk,nkd->nd", w, ncam[corners])
        # two-sided: flip the normal on triangles seen from behind (geometric normal)
        a, b, c = cam[f[:, 0]], cam[f[:, 1]], cam[f[:, 2]]
        face_z = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        back = face_z[t] < 0
        n[back] *= -1.0
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        lambert = np.clip(n @ light, 0.0, None)
        shade = ambient + (1.0 - ambient) * lambert  # (N,)
        if colors is None:
            base = np.broadcast_to(color, (len(t), 3))
        else:
            base = np.einsum("nk,nkd->nd", w, colors[corners])
        img[cov] = base * shade[:, None]
    out = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if supersample > 1:
        out = np.asarray(Image.fromarray(out).resize((size, size), Image.Resampling.BOX))
    return out


def _check_light(light) -> np.ndarray:
    l_ = np.asarray(light, dtype=np.float64).reshape(-1)
    if l_.shape != (3,) or not np.isfinite(l_).all() or np.linalg.norm(l_) == 0:
        raise InvalidArgumentError(f"light must be a non-zero 3-vector (camera space, towards the light), got {light!r}")
    return l_ / np.linalg.norm(l_)


def _check_common(size, supersample, ambient) -> tuple[int, int, float]:
    size = _check_size(size)
    if isinstance(supersample, bool) or not isinstance(supersample, (int, np.integer)) or not 1 <= supersample <= 8:
        raise InvalidArgumentError(f"supersample must be an integer in 1..8, got {supersample!r}")
    if not 0.0 <= float(ambient) <= 1.0:
        raise InvalidArgumentError(f"ambient must lie in [0, 1], got {ambient!r}")
    return size, int(supersample), float(ambient)


def render_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    *,
    view: View = "front",
    size: int = DEFAULT_SIZE,
    color: Sequence[float] = DEFAULT_COLOR,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    light: Sequence[float] = DEFAULT_LIGHT,
    ambient: float = 0.25,
    scale: float | None = None,
    center: Sequence[float] | None = None,
    vertex_colors: np.ndarray | None = None,
    supersample: int = 1,
) -> np.ndarray:
    """Render one mesh, orthographically, with two-sided Lambert + ambient shading.

    Args:
        vertices: (V, 3) positions in millimetres (+y up, +z towards the front camera).
        faces: (F, 3) int triangles.
        view: ``"front"``, ``"side"`` (left profile), ``"three_quarter"`` or an azimuth in
            degrees about +y (see the module docstring).
        size: output side in pixels.
        color: RGB in [0, 1] of the surface (ignored where ``vertex_colors`` is given).
        background: RGB in [0, 1] of uncovered pixels.
        light: direction towards the light in camera space (x right, y up, z towards the
            camera); need not be normalised.
        ambient: fraction of light that reaches every pixel, in [0, 1]; 1 gives flat colours.
        scale: pixels per millimetre; default fits the mesh (see :func:`fit_frame`).
        center: (3,) point in mm mapped to the image centre; default: bounding-box centre.
        vertex_colors: optional (V, 3) RGB in [0, 1], interpolated across faces (e.g. from
            :func:`heatmap_colors`).
        supersample: render at this many times the resolution and box-filter down
            (anti-aliasing; 2 costs about 4x the time).

    Returns:
        (size, size, 3) uint8 RGB image, row 0 at the top.

    Raises:
        InvalidGeometryError: bad vertex / face / colour shapes, NaN coordinates.
        ValueError: bad options (unknown view, size, light, ...).
    """
    v = _check_vertices(vertices, batched=False)
    f = _check_faces(faces, len(v))
    size, supersample, ambient = _check_common(size, supersample, ambient)
    colors = None if vertex_colors is None else _check_colors(vertex_colors, (len(v), 3), "vertex_colors")
    view_azimuth(view)
    fit_scale, fit_center = fit_frame(v, (view,), size=size)
    if center is None:
        center_ = fit_center
    else:
        center_ = np.asarray(center, dtype=np.float64).reshape(-1)
        if center_.shape != (3,) or not np.isfinite(center_).all():
            raise InvalidArgumentError(f"center must be a finite (3,) point in mm, got {center!r}")
    if scale is None:
        scale_ = fit_scale
    else:
        scale_ = float(scale)
        if not math.isfinite(scale_) or scale_ <= 0:
            raise InvalidArgumentError(f"scale must be a positive number of pixels per mm, got {scale!r}")
    return _render(
        v,
        f,
        vertex_normals(v, f),
        colors,
        view=view,
        size=size,
        color=_rgb(color, "color"),
        background=_rgb(background, "background"),
        light=_check_light(light),
        ambient=ambient,
        scale=scale_,
        center=center_,
        supersample=supersample,
    )


def _label_font(size: int):
    try:
        return ImageFont.load_default(size=max(10, min(24, size // 16)))
    except TypeError:  # Pillow < 10.1: bitmap font without sizes
        return ImageFont.load_default()


def fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis so that it fits ``width`` pixels in ``font``."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render_grid(
    vertices: np.ndarray,
    faces: np.ndarray,
    *,
    views: Sequence[View] = ("front",),
    size: int = DEFAULT_SIZE,
    ncols: int | None = None,
    labels: Sequence[str] | None = None,
    common_scale: bool = True,
    vertex_colors: np.ndarray | None = None,
    color: Sequence[float] = DEFAULT_COLOR,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    light: Sequence[float] = DEFAULT_LIGHT,
    ambient: float = 0.25,
    supersample: int = 1,
) -> Image.Image:
    """Render a batch of meshes into one image: a grid of cells, one per mesh.

    Each cell holds one ``size`` x ``size`` tile per view, side by side, and, when
    ``labels`` is given, a text strip under the tiles. Cells fill rows left to right; unused
    cells stay background. The image is ``ncols * len(views) * size`` pixels wide and
    ``nrows * (size + label_height)`` tall, ``nrows = ceil(B / ncols)``.

    Args:
        vertices: (B, V, 3) positions in mm (a single (V, 3) mesh is accepted as B = 1).
        faces: (F, 3) int triangles shared by all meshes.
        views: view names / azimuths drawn for every mesh, e.g. ``("front", "side")``.
        size: tile side in pixels (default 512: large enough to judge an expression).
        ncols: cells per row; default ``ceil(sqrt(B / len(views)))``.
        labels: optional B strings drawn centred under each cell (PIL's default font).
        common_scale: one framing (scale and centre) for all meshes, so sizes compare;
            otherwise each mesh is fitted on its own (across its views).
        vertex_colors: optional (B, V, 3) or (V, 3) RGB in [0, 1] (e.g. error heatmaps).
        color, background, light, ambient, supersample: as in :func:`render_mesh`.

    Returns:
        An RGB ``PIL.Image.Image``.

    Raises:
        InvalidGeometryError: bad vertex / face / colour shapes, NaN coordinates.
        ValueError: bad options (labels count, views, ncols, ...).
    """
    v = _check_vertices(vertices, batched=None)
    if v.ndim == 2:
        v = v[None]
    B, V, _ = v.shape
    f = _check_faces(faces, V)
    size, supersample, ambient = _check_common(size, supersample, ambient)
    views = _check_views(views)
    if vertex_colors is not None:
        vc = _as_numpy(vertex_colors, "vertex_colors")
        if vc.ndim == 2:
            vc = np.broadcast_to(vc, (B,) + vc.shape)
        colors = _check_colors(vc, (B, V, 3), "vertex_colors")
    else:
        colors = None
    if labels is not None:
        if isinstance(labels, str):
            raise InvalidArgumentError("labels must be a list of B strings, not a single string")
        labels = [str(x) for x in labels]
        if len(labels) != B:
            raise InvalidArgumentError(f"labels has {len(labels)} entries but there are {B} meshes")
    if ncols is None:
        ncols = max(1, math.ceil(math.sqrt(B / len(views))))
    elif isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise InvalidArgumentError(f"ncols must be a positive integer, got {ncols!r}")
    ncols = int(min(ncols, B))
    nrows = math.ceil(B / ncols)
    bg = _rgb(background, "background")
    rgb = _rgb(color, "color")
    light_ = _check_light(light)

    font = _label_font(size) if labels is not None else None
    label_h = 0
    if font is not None:
        box = font.getbbox("Hg")
        label_h = int(box[3] - box[1]) + max(6, size // 32)
    cell_w, cell_h = len(views) * size, size + label_h
    bg8 = tuple(int(round(x * 255)) for x in bg)
    canvas = Image.new("RGB", (ncols * cell_w, nrows * cell_h), bg8)
    draw = ImageDraw.Draw(canvas) if font is not None else None
    normals = vertex_normals(v, f)  # (B, V, 3)
    if common_scale:
        frame = fit_frame(v, views, size=size)
    for i in range(B):
        scale, center = frame if common_scale else fit_frame(v[i], views, size=size)
        x0, y0 = (i % ncols) * cell_w, (i // ncols) * cell_h
        for j, view in enumerate(views):
            tile = _render(
                v[i],
                f,
                normals[i],
                None if colors is None else colors[i],
                view=view,
                size=size,
                color=rgb,
                background=bg,
                light=light_,
                ambient=ambient,
                scale=scale,
                center=center,
                supersample=supersample,
            )
            canvas.paste(Image.fromarray(tile), (x0 + j * size, y0))
        if draw is not None and labels[i]:
            text = fit_text(draw, labels[i], font, cell_w - 4)
            tw = draw.textlength(text, font=font)
            fill = (0, 0, 0) if sum(bg) > 1.5 else (255, 255, 255)
            ty = y0 + size + (label_h - (box[3] - box[1])) / 2 - box[1]
            draw.text((x0 + (cell_w - tw) / 2, ty), text, fill=fill, font=font)
    return canvas


# ---------------------------------------------------------------------------------------
# output helpers
# ---------------------------------------------------------------------------------------
def save_png(image: Image.Image | np.ndarray, path: str | os.PathLike) -> Path:
    """Write ``image`` (PIL image or (H, W, 3) / (H, W) uint8 array) as a PNG, atomically.

    Returns:
        The written path.

    Raises:
        OutputPathError: the folder cannot be written.
        ValueError: ``image`` is not an image or uint8 array.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise InvalidArgumentError(
                f"image array must be uint8 (H, W), (H, W, 3) or (H, W, 4), got {image.dtype} {image.shape}"
            )
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise InvalidArgumentError(f"image must be a PIL image or a uint8 numpy array, got {type(image).__name__}")
    with atomic_file(path, "wb") as fh:
        image.save(fh, format="PNG")
    return Path(path).expanduser()


def heatmap_colors(values: np.ndarray, vmin: float = 0.0, vmax: float | None = None) -> np.ndarray:
    """Map scalars (e.g. per-vertex errors in mm) to RGB with a viridis-like ramp.

    Args:
        values: (V,) or (B, V) (any shape) floats.
        vmin: value mapped to the dark (purple) end.
        vmax: value mapped to the bright (yellow) end; default the largest finite value.
            Values outside [vmin, vmax] are clipped.

    Returns:
        ``values.shape + (3,)`` float64 RGB in [0, 1]; NaN values become grey.
    """
    x = _as_numpy(values, "values").astype(np.float64)
    finite = np.isfinite(x)
    if vmax is None:
        vmax = float(x[finite].max()) if finite.any() else vmin + 1.0
    vmin, vmax = float(vmin), float(vmax)
    if not (math.isfinite(vmin) and math.isfinite(vmax)):
        raise InvalidArgumentError(f"vmin and vmax must be finite, got {vmin!r}, {vmax!r}")
    span = vmax - vmin
    xf = np.where(finite, x, vmin)
    if span > 0:
        t = np.clip((xf - vmin) / span, 0.0, 1.0)
    else:  # degenerate range: a step at vmin
        t = np.where(xf > vmin, 1.0, 0.0)
    pos = t * (len(_VIRIDIS) - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), len(_VIRIDIS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _VIRIDIS[lo] * (1.0 - frac) + _VIRIDIS[lo + 1] * frac
    rgb[~finite] = _NAN_COLOR
    return rgb
