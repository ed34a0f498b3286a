"""Contour-aware jaw landmarks for 2D fits: the 17 iBUG jaw points slide to the silhouette.

A face detector's jaw points (iBUG 1-17) mark the face's outline in the image, not fixed
surface points: when the head turns, the outline moves back towards the ear on the side
turned away and forward on the other. As in eos (Huber et al. 2016), each jaw landmark owns a
*contour line* of model vertices, and at each round of the fit the jaw landmark is moved to
the vertex of its line that projects outermost under the current camera.

The lines are built once per template (cached): for jaw point ``k`` at template position
``p_k`` with outward normal ``n_k`` of the frontal jaw curve (in the x-y plane; the template is
x right, y up, z forward, mm), the vertices within 3 mm of the vertical plane through ``p_k``
spanned by ``n_k`` and the depth axis, between 45 mm inside and 8 mm outside the frontal
outline along ``n_k`` and no more than 50 mm behind ``p_k``; one vertex per 3 mm of depth (the
one nearest the plane), at most ``MAX_CANDIDATES``. "Outermost" is along ``R[:2] n_k``, the
image direction of the outward normal: the extreme of a cross-section, i.e. the silhouette.
Under a pinhole camera (fits with ``camera="pinhole"``) the candidates are projected through
the camera centre, ``(R v + t)_xy / (R v + t)_z``, and the normal's image direction is taken
at the line's mean projection: the outermost candidate is then the one whose view ray from the
camera centre grazes the cross-section (to the resolution of the line's vertices).
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from .landmarks import LandmarkSet, landmark_positions, landmark_set

__all__ = ["JAW", "contour_lines", "contour_candidates", "choose_contour", "contour_specs", "contour_landmarks",
           "CONTOUR_ROUNDS", "CONTOUR_SET_NAME"]

JAW = tuple(range(17))  # 0-based iBUG jaw points
CONTOUR_ROUNDS = 3  # fits of a 2D contour-aware fit: fixed jaw first, then two re-assignments
CONTOUR_SET_NAME = "ibug68-contour"  # the landmark set of a contour round's fit (its jaw points on the silhouette)
MAX_CANDIDATES = 40
_PLANE_MM, _INSIDE_MM, _OUTSIDE_MM, _BEHIND_MM, _BIN_MM = 3.0, 45.0, 8.0, 50.0, 3.0

_LINES: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _build_lines(template: np.ndarray, jaw: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Contour lines (17 arrays of vertex indices) and outward normals (17, 3)."""
    centre = np.array([0.0, jaw[:, 1].mean(), 0.0])
    normals = np.zeros((17, 3))
    for k in range(17):
        a, b = jaw[max(k - 1, 0)], jaw[min(k + 1, 16)]
        t = (b - a)[:2]
        n = np.array([t[1], -t[0], 0.0])
        n /= max(np.linalg.norm(n), 1e-12)
        if n[:2] @ (jaw[k, :2] - centre[:2]) < 0:
            n = -n
        normals[k] = n
    lines = []
    for k in range(17):
        n = normals[k]
        tangent = np.cross(n, [0.0, 0.0, 1.0])  # normal of the cutting plane
        d = template - jaw[k]
        sel = (np.abs(d @ tangent) < _PLANE_MM) & (d @ n > -_INSIDE_MM) & (d @ n < _OUTSIDE_MM) & (d[:, 2] > -_BEHIND_MM)
        idx = np.flatnonzero(sel)
        if idx.size == 0:
            lines.append(np.zeros(0, np.int64))
            continue
        # one vertex per depth bin along the line, the nearest to the plane
        key = np.floor(d[idx, 2] / _BIN_MM).astype(np.int64)  # depth bins
        best: dict[int, int] = {}
        for i, kk in zip(idx, key):
            j = best.get(int(kk))
            if j is None or abs(d[i] @ tangent) < abs(d[j] @ tangent):
                best[int(kk)] = int(i)
        pick = np.asarray(sorted(best.values(), key=lambda i: -d[i, 2]), np.int64)
        lines.append(pick[:MAX_CANDIDATES])
    return lines, normals


def contour_lines(model: torch.nn.Module) -> tuple[list[np.ndarray], np.ndarray]:
    """The model's 17 jaw contour lines (vertex indices, front to back) and outward normals
    (17, 3), from its template and iBUG-68 landmarks (cached per model)."""
    tmpl = model.template
    key = (tmpl.data_ptr(), tmpl._version, model.landmarks.data_ptr())
    hit = _LINES.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    lmk = landmark_set(model, "ibug68")
    t = tmpl.detach().double().cpu()
    jaw = landmark_positions(t, lmk).numpy()[:17]
    out = _build_lines(t.numpy(), jaw)
    _LINES[model] = (key, out)
    return out


def contour_candidates(model: torch.nn.Module) -> np.ndarray:
    """(C,) int64: the vertices of all 17 contour lines, concatenated in line order (the order
    :func:`choose_contour` indexes)."""
    lines, _ = contour_lines(model)
    return np.concatenate([ln for ln in lines if ln.size])


def choose_contour(model: torch.nn.Module, cand: np.ndarray, rotation: np.ndarray,
                   translation: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """(B, 17) int64: per face and jaw point, the position in :func:`contour_candidates` of the
    candidate that projects outermost, or -1 to keep the point (its normal faces the camera or
    its line is empty).

    Args:
        cand: (B, C, 3) model-space positions (mm) of the candidates.
        rotation: (B, 3, 3) the fit's camera rotations.
        translation: (B, 3) mm for a pinhole camera (candidates projected through its centre);
            None for the scaled-orthographic camera.
    """
    lines, normals = contour_lines(model)
    R = np.asarray(rotation, np.float64)
    R2 = R[:, :2]  # (B, 2, 3)
    idx, valid, used = _padded_lines(lines)  # (L, W) candidate positions of each non-empty line
    B = len(cand)
    if translation is not None:  # camera-frame positions; the image positions are q_xy / q_z (up to f > 0 and c)
        q = np.einsum("bcj,bij->bci", cand, R) + np.asarray(translation, np.float64)[:, None]
        proj = q[..., :2] / np.maximum(q[..., 2:3], 1e-9)
    else:
        proj = np.einsum("bcj,bij->bci", cand, R2)  # (B, C, 2)
    n = normals[used]  # (L, 3)
    d = np.einsum("bij,lj->bli", R2, n)  # (B, L, 2): each line's outward direction in the image
    P = proj[:, idx]  # (B, L, W, 2)
    if translation is not None:  # the image direction of the normal at the line (d (q_xy / q_z) along n, times q_z)
        mean = (P * valid[..., None]).sum(2) / valid.sum(1)[:, None]
        d = d - mean * np.einsum("bj,lj->bl", R[:, 2], n)[..., None]
    score = np.where(valid, np.einsum("blwi,bli->blw", P, d), -np.inf)
    best = idx[np.arange(len(idx))[None], score.argmax(-1)]  # (B, L): the first of equal maxima, as argmax
    best = np.where(np.linalg.norm(d, axis=-1) < 1e-6, -1, best)  # the normal points at the camera: keep the point
    out = np.full((B, 17), -1, np.int64)
    out[:, used] = best
    return out


def _padded_lines(lines: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The contour lines as a padded index matrix (cached per line list): (L, W) positions in
    :func:`contour_candidates` of the L non-empty lines' vertices, (L, W) bool real entries, (L,)
    which of the 17 jaw points each line belongs to."""
    key = id(lines)
    hit = _PADDED.get(key)
    if hit is not None and hit[0] is lines:
        return hit[1]
    used = np.asarray([k for k, ln in enumerate(lines) if ln.size], np.int64)
    sizes = np.asarray([lines[k].size for k in used], np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    W = int(sizes.max()) if sizes.size else 1
    col = np.arange(W)[None]
    valid = col < sizes[:, None]
    idx = np.where(valid, starts[:, None] + col, starts[:, None])
    _PADDED.clear()
    _PADDED[key] = (lines, (idx, valid, used))
    return idx, valid, used


_PADDED: dict = {}


def contour_specs(model: torch.nn.Module, choice: np.ndarray, base: LandmarkSet | None = None) -> list[tuple]:
    """The ``(triangles (68, 3), barycentrics (68, 3))`` landmark spec of each face's
    :func:`choose_contour` choice (B, 17)."""
    base = landmark_set(model, "ibug68") if base is None else base
    flat = contour_candidates(model)
    tri0 = base.vertex_indices.numpy().astype(np.int64)
    bar0 = base.barycentrics.numpy().astype(np.float64)
    out = []
    for row in choice:
        tri, bar = tri0.copy(), bar0.copy()
        for k, j in enumerate(row):
            if j >= 0:
                tri[k], bar[k] = flat[j], (1.0, 0.0, 0.0)
        out.append((tri, bar))
    return out


def contour_landmarks(model: torch.nn.Module, fit, base: LandmarkSet | None = None) -> list[tuple]:
    """Per face, the iBUG-68 landmark spec ``(triangles (68, 3), barycentrics (68, 3))`` whose
    jaw points sit on the silhouette of a 2D fit's mesh under its camera.

    Args:
        model: the fitted :class:`~facemodel.model.FaceModel`.
        fit: a :class:`~facemodel.fitting.FitResult` of a 2D fit (codes, rotation).
        base: the landmark set of the other 51 points (default: the model's ``ibug68``).

    Returns:
        One ``(triangles, barycentrics)`` pair per face (int64 / float64 NumPy).
    """
    flat = contour_candidates(model)
    with torch.no_grad():
        g = model.generator
        codes = fit.codes.to(g.device, g.dtype)
        # only the candidate vertices are decoded
        cand = g.decode_vertices(codes, torch.as_tensor(flat, device=g.device)) + model.template[torch.as_tensor(flat)]
    pinhole = getattr(fit, "focal_length", None) is not None
    tr = fit.translation.double().cpu().numpy() if pinhole else None
    choice = choose_contour(model, cand.double().cpu().numpy(), fit.rotation.double().cpu().numpy(), tr)
    return contour_specs(model, choice, base)
