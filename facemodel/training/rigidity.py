"""Where expressions move the face: per-vertex weights for the rigidity term (our deviation).

Two meshes with the same identity differ only by their expressions; over the training data
some vertices (skull, upper forehead, nose bridge) barely move between them. The rigidity
term asks the generator for the same: when two samples share the identity code, their
difference is weighted per vertex by :func:`rigidity_weights`, about 1 where the data's
expressions leave the face still and about 0 where they move it by several millimetres.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import FaceDataset

__all__ = ["expression_motion_mm", "rigidity_weights", "rigidity_loss", "same_identity_pairs", "same_identity_differences",
           "same_identity_motion"]


def expression_motion_mm(dataset: FaceDataset, *, identities: int = 60, per_identity: int = 64, seed: int = 0) -> np.ndarray:
    """(V,) RMS distance of each vertex from its identity's mean position, mm.

    Averaged over ``identities`` random identity classes of ``dataset`` (up to
    ``per_identity`` meshes each, all kinds of expression), so it measures how much the
    data's expressions move each vertex.
    """
    rng = np.random.default_rng(seed)
    classes = dataset.identity_classes()
    chosen = rng.permutation(np.unique(classes))[:identities]
    acc = np.zeros(dataset.manifest.num_vertices, np.float64)
    for c in chosen:
        rows = np.flatnonzero(classes == c)
        rows = np.sort(rng.permutation(rows)[:per_identity])
        v = dataset.vertices(rows).astype(np.float64)  # (M, V, 3)
        acc += np.square(v - v.mean(0)).sum(-1).mean(0)
    return np.sqrt(acc / max(1, len(chosen))).astype(np.float32)


def rigidity_weights(motion_mm: np.ndarray, scale_mm: float = 0.5) -> np.ndarray:
    """(V,) weights ``1 / (1 + (motion / scale)^2)`` in (0, 1]: 1 = expressions never move it."""
    m = np.asarray(motion_mm, np.float64)
    return (1.0 / (1.0 + np.square(m / scale_mm))).astype(np.float32)


def rigidity_loss(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor, *, scale: float = 10.0) -> torch.Tensor:
    """Weighted squared difference of paired meshes.

    Args:
        a, b: (P, V, 3) displacements (or vertices) of P pairs, mm.
        weights: (V,) from :func:`rigidity_weights`.
        scale: differences are divided by this (mm) first, as in the Laplacian term.

    Returns:
        scalar: ``sum_v w_v |a_v - b_v|^2 / sum_v w_v``, averaged over pairs.
    """
    d = ((a - b) / scale).square().sum(-1)  # (P, V)
    return (d * weights).sum(1).mean() / weights.sum().clamp_min(1e-12)  # all-zero weights: 0, not NaN


def same_identity_pairs(dataset: FaceDataset, pairs: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(a, b)``, each (pairs,), of random training-mesh pairs of the same identity
    (``a`` sorted; ``b`` may equal ``a``)."""
    rng = np.random.default_rng(seed)
    classes = dataset.identity_classes()
    a = np.sort(rng.integers(0, len(dataset), pairs))
    by_class = {c: np.flatnonzero(classes == c) for c in np.unique(classes[a])}
    return a, np.array([rng.choice(by_class[classes[r]]) for r in a], dtype=np.int64)


def same_identity_differences(dataset: FaceDataset, pairs: int, *, face_vertices: int, vertex_stride: int,
                              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Differences of ``pairs`` random same-identity training-mesh pairs on every
    ``vertex_stride``-th of the first ``face_vertices`` vertices.

    Returns:
        ``(a, b, vid, diff)``: the rows of :func:`same_identity_pairs`, the vertex indices (R,)
        and the flattened differences ``x_a - x_b`` (pairs, 3R) float32, mm.
    """
    a, b = same_identity_pairs(dataset, pairs, seed=seed)
    vid = np.arange(0, min(face_vertices, dataset.manifest.num_vertices), vertex_stride)
    diff = (dataset.vertices(a)[:, vid] - dataset.vertices(b)[:, vid]).reshape(len(a), -1).astype(np.float32)
    return a, b, vid, diff


def same_identity_motion(dataset: FaceDataset, weights: np.ndarray, *, pairs: int = 2000, scale: float = 10.0, seed: int = 0) -> float:
    """How far two meshes of one person differ where expressions move the face, in the units
    of :func:`rigidity_loss` with weights ``1 - weights``: the target of the motion-spread term
    (pairs sharing only the identity code must move at least this much)."""
    a, b = same_identity_pairs(dataset, pairs, seed=seed)
    mobile = torch.from_numpy(1.0 - np.asarray(weights, np.float32))
    va, vb = torch.from_numpy(dataset.vertices(a)), torch.from_numpy(dataset.vertices(b))
    return float(rigidity_loss(va, vb, mobile, scale=scale))
