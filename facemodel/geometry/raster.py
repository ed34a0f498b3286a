"""Vectorised scan conversion of 2D triangles onto a pixel grid.

Shared by the geometry-image layer (UV triangles, no depth) and the software renderer
(projected triangles with a z-buffer). Pixel ``(r, c)`` has its centre at
``(x, y) = (c + 0.5, r + 0.5)`` in pixel units; row 0 is the top of the image.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rasterize"]


def rasterize(
    points: np.ndarray,
    triangles: np.ndarray,
    height: int,
    width: int,
    *,
    depth: np.ndarray | None = None,
    chunk: int = 4_000_000,
    tol: float = 1e-9,
) -> tuple[np.ndarray, np.ndarray]:
    """Find, for every pixel centre, the triangle covering it and its barycentrics.

    Args:
        points: (P, 2) float array of 2D positions in pixel units (x right, y down).
        triangles: (T, 3) int array indexing ``points``.
        height, width: image size in pixels.
        depth: optional (P,) float array; where triangles overlap, the one with the
            smallest interpolated depth wins (a z-buffer). Without it the first
            triangle in order wins.
        chunk: upper bound on (triangle, pixel) candidate pairs processed at once (memory).
        tol: barycentric tolerance so that pixel centres on shared edges are covered.

    Returns:
        triangle_id: (height, width) int64, -1 where no triangle covers the pixel centre.
        bary: (height, width, 3) float64 barycentric weights of the triangle's corners
            (zeros where uncovered). ``sum(bary * points[triangles[triangle_id]])``
            reproduces the pixel centre.
    """
    pts = np.asarray(points, dtype=np.float64)
    tri = np.asarray(triangles, dtype=np.int64)
    tid = np.full(height * width, -1, dtype=np.int64)
    bary = np.zeros((height * width, 3), dtype=np.float64)
    zbuf = np.full(height * width, np.inf)
    if len(tri) == 0:
        return tid.reshape(height, width), bary.reshape(height, width, 3)
    a, b, c = pts[tri[:, 0]], pts[tri[:, 1]], pts[tri[:, 2]]  # (T, 2) each
    lo = np.minimum(np.minimum(a, b), c)
    hi = np.maximum(np.maximum(a, b), c)
    c0 = np.clip(np.ceil(lo[:, 0] - 0.5), 0, width).astype(np.int64)
    c1 = np.clip(np.floor(hi[:, 0] - 0.5), -1, width - 1).astype(np.int64)
    r0 = np.clip(np.ceil(lo[:, 1] - 0.5), 0, height).astype(np.int64)
    r1 = np.clip(np.floor(hi[:, 1] - 0.5), -1, height - 1).astype(np.int64)
    nc = np.maximum(c1 - c0 + 1, 0)
    nr = np.maximum(r1 - r0 + 1, 0)
    counts = nc * nr  # candidate pixels per triangle (T,)
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    valid = (counts > 0) & (np.abs(area2) > 1e-300)
    order = np.flatnonzero(valid)
    # process triangles in chunks so that the candidate list stays bounded
    csum = np.cumsum(counts[order])
    start = 0
    while start < len(order):
        base = csum[start - 1] if start > 0 else 0
        stop = int(np.searchsorted(csum, base + chunk, side="right"))
        stop = max(stop, start + 1)
        t = order[start:stop]
        k = counts[t]
        tt = np.repeat(t, k)  # (N,) triangle of each candidate
        local = np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)  # index within bbox
        rr = r0[tt] + local // nc[tt]
        cc = c0[tt] + local % nc[tt]
        px, py = cc + 0.5, rr + 0.5
        ax, ay = a[tt, 0], a[tt, 1]
        bx, by = b[tt, 0], b[tt, 1]
        cx, cy = c[tt, 0], c[tt, 1]
        ar = area2[tt]
        w0 = ((bx - px) * (cy - py) - (by - py) * (cx - px)) / ar
        w1 = ((cx - px) * (ay - py) - (cy - py) * (ax - px)) / ar
        w2 = 1.0 - w0 - w1
        inside = (w0 >= -tol) & (w1 >= -tol) & (w2 >= -tol)
        tt, rr, cc = tt[inside], rr[inside], cc[inside]
        w = np.stack([w0[inside], w1[inside], w2[inside]], 1)
        pix = rr * width + cc
        if depth is not None:
            d = depth[tri[tt]]  # (N, 3)
            z = (w * d).sum(1)
            sel = np.lexsort((z, pix))  # by pixel, then nearest first
            pix, tt, w, z = pix[sel], tt[sel], w[sel], z[sel]
            first = np.ones(len(pix), bool)
            first[1:] = pix[1:] != pix[:-1]
            pix, tt, w, z = pix[first], tt[first], w[first], z[first]
            better = z < zbuf[pix]
            pix, tt, w, z = pix[better], tt[better], w[better], z[better]
            zbuf[pix] = z
            tid[pix] = tt
            bary[pix] = w
        else:
            # first triangle (in index order) wins: write in reverse so earlier ones overwrite
            free = tid[pix] < 0
            pix, tt, w = pix[free][::-1], tt[free][::-1], w[free][::-1]
            tid[pix] = tt
            bary[pix] = w
        start = stop
    return tid.reshape(height, width), bary.reshape(height, width, 3)
