"""Harmonic UV parameterisation onto the unit square (paper §5.1, Eck et al. 1995).

The outer boundary loop is pinned to the boundary of ``[0, 1]^2``; inner boundary loops
(eyes, mouth) stay free. To keep the map bijective with free holes, every hole is filled
*virtually* by a fan around an extra centre vertex while solving, and the cotangent
weights are clamped to a small positive value: with positive weights and a convex
boundary, Tutte/Floater's theorem guarantees an embedding without flipped triangles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..errors import InvalidGeometryError
from .laplacian import cotangent_weights

__all__ = ["boundary_loops", "harmonic_uv", "UVMap", "signed_areas_2d"]


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """Boundary loops of a manifold triangle mesh, longest first.

    Args:
        faces: (F, 3) int array, consistently oriented.

    Returns:
        list of (L_k,) int64 arrays of vertex indices, each ordered along the loop in the
        direction induced by the face orientation.
    """
    f = np.asarray(faces, dtype=np.int64)
    half = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])  # directed edges (3F, 2)
    key = half[:, 0] * (f.max() + 1) + half[:, 1]
    rev = half[:, 1] * (f.max() + 1) + half[:, 0]
    boundary = half[~np.isin(key, rev)]  # directed edges without a twin
    nxt = {}
    for a, b in boundary:
        if a in nxt:
            raise InvalidGeometryError(f"vertex {a} has two outgoing boundary edges (non-manifold)")
        nxt[int(a)] = int(b)
    loops = []
    seen: set[int] = set()
    for start in list(nxt):
        if start in seen:
            continue
        loop = [start]
        seen.add(start)
        cur = nxt[start]
        while cur != start:
            loop.append(cur)
            seen.add(cur)
            cur = nxt[cur]
        loops.append(np.asarray(loop, dtype=np.int64))
    return sorted(loops, key=len, reverse=True)


def signed_areas_2d(uv: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Signed areas (F,) of triangles in 2D; positive = counter-clockwise."""
    a, b, c = uv[faces[:, 0]], uv[faces[:, 1]], uv[faces[:, 2]]
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


@dataclass(frozen=True)
class UVMap:
    """Result of :func:`harmonic_uv`.

    Attributes:
        uv: (V, 2) float64 in [0, 1]^2; u grows with +x (subject's left on screen right),
            v grows with +y (up).
        outer_boundary: (L,) int64 vertex indices of the outer loop pinned to the square.
        flipped: number of triangles whose UV orientation differs from the mesh's (want 0).
        clamped_weights: number of (negative/tiny) cotangent edge weights clamped positive.
    """

    uv: np.ndarray
    outer_boundary: np.ndarray
    flipped: int
    clamped_weights: int


def _square_boundary(xy: np.ndarray, loop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pin a closed loop to the unit square: corners at the loop vertices nearest to the
    diagonal directions, arc length in between. Returns the (possibly re-oriented) loop
    and its (L, 2) positions, counter-clockwise."""
    p = xy[loop]
    area = 0.5 * np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1])
    if area < 0:  # make the loop counter-clockwise in the xy plane
        loop = loop[::-1]
        p = p[::-1]
    centre = p.mean(0)
    ang = np.arctan2(p[:, 1] - centre[1], p[:, 0] - centre[0])
    targets = np.deg2rad([-135.0, -45.0, 45.0, 135.0])  # BL, BR, TR, TL (CCW)
    corner_pos = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    corners = [int(np.argmin(np.abs(np.angle(np.exp(1j * (ang - t)))))) for t in targets]
    # start the loop at the bottom-left corner
    shift = corners[0]
    loop = np.roll(loop, -shift)
    p = np.roll(p, -shift, axis=0)
    corners = [(c - shift) % len(loop) for c in corners] + [len(loop)]
    if not all(corners[i] < corners[i + 1] for i in range(4)):
        raise InvalidGeometryError("outer boundary is not star-shaped enough to pick 4 ordered corners")
    seg = np.linalg.norm(np.diff(np.vstack([p, p[:1]]), axis=0), axis=1)  # (L,) edge lengths
    out = np.zeros((len(loop), 2))
    for s in range(4):
        i0, i1 = corners[s], corners[s + 1]
        lengths = np.concatenate([[0.0], np.cumsum(seg[i0:i1])])  # i1 - i0 + 1 values
        t = lengths[:-1] / lengths[-1]
        a = np.asarray(corner_pos[s])
        b = np.asarray(corner_pos[(s + 1) % 4])
        out[i0:i1] = a + t[:, None] * (b - a)
    return loop, out


def harmonic_uv(
    vertices: np.ndarray,
    faces: np.ndarray,
    *,
    min_weight: float = 1e-4,
    stiff_vertices: np.ndarray | None = None,
    stiffness: float = 1.0,
) -> UVMap:
    """Harmonic map of a disk-with-holes mesh onto the unit square.

    Args:
        vertices: (V, 3) float array (any unit); the mesh is assumed to face +z with +y up
            (the square's orientation follows x and y).
        faces: (F, 3) int array, counter-clockwise seen from +z.
        min_weight: positive lower bound for cotangent weights, relative to their mean
            magnitude; guarantees a bijective map (see module docstring).
        stiff_vertices: optional vertex indices whose edges (both ends in the set) get their
            weights multiplied by ``stiffness``. Stiffer edges come out shorter in the map,
            leaving more of the square to the rest: e.g. the scalp and neck of a head-shaped
            rim, so that the face itself gets more geometry-image pixels. Weights stay
            positive, so the map stays bijective. Default: none (the plain harmonic map).
        stiffness: the multiplier (> 0; 1 = plain harmonic map).

    Returns:
        :class:`UVMap`.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    loops = boundary_loops(f)
    if not loops:
        raise InvalidGeometryError("the mesh has no boundary; a disk-like mesh is needed for UV mapping")
    outer, holes = loops[0], loops[1:]
    # fill holes virtually: one centre vertex per hole, fan triangles around it
    verts = [v]
    fill = []
    n = len(v)
    for k, loop in enumerate(holes):
        centre = n + k
        verts.append(v[loop].mean(0, keepdims=True))
        # boundary loop direction follows the faces' orientation; the fan goes the other way
        fill.append(np.stack([loop[::-1], np.roll(loop[::-1], -1), np.full(len(loop), centre)], 1))
    vv = np.vstack(verts)
    ff = np.vstack([f] + fill) if fill else f
    W = cotangent_weights(vv, ff).tocoo()
    floor = min_weight * np.abs(W.data).mean()
    clamped = int((W.data < floor).sum() // 2)
    data = np.maximum(W.data, floor)
    if stiff_vertices is not None and stiffness != 1.0:
        if stiffness <= 0:
            raise InvalidGeometryError(f"stiffness must be positive, got {stiffness}")
        stiff = np.zeros(len(vv), bool)
        stiff[np.asarray(stiff_vertices, dtype=np.int64)] = True
        data = np.where(stiff[W.row] & stiff[W.col], data * stiffness, data)
    W = sp.csr_matrix((data, (W.row, W.col)), shape=W.shape)
    L = (sp.diags(np.asarray(W.sum(1)).ravel()) - W).tocsr()  # positive semi-definite
    loop, pinned = _square_boundary(v[:, :2], outer)
    N = len(vv)
    is_b = np.zeros(N, bool)
    is_b[loop] = True
    free = np.flatnonzero(~is_b)
    uv = np.zeros((N, 2))
    uv[loop] = pinned
    A = L[free][:, free].tocsc()
    rhs = -L[free][:, loop] @ pinned
    solve = spla.factorized(A)
    uv[free, 0] = solve(rhs[:, 0])
    uv[free, 1] = solve(rhs[:, 1])
    uv = uv[:n]
    flipped = int((signed_areas_2d(uv, f) <= 0).sum())
    return UVMap(uv=uv, outer_boundary=loop, flipped=flipped, clamped_weights=clamped)
