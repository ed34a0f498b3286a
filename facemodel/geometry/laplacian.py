"""Cotangent discretisation of the Laplace-Beltrami operator (paper Eq. 12)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["cotangent_weights", "cotangent_laplacian", "scipy_to_torch_sparse"]


def cotangent_weights(vertices: np.ndarray, faces: np.ndarray, *, eps: float = 1e-12) -> sp.csr_matrix:
    """Symmetric matrix of edge weights ``w_ij = (cot a_ij + cot b_ij) / 2``.

    ``a_ij`` and ``b_ij`` are the angles opposite edge (i, j) in its one or two triangles.

    Args:
        vertices: (V, 3) float array, any length unit (cotangents are unit-free).
        faces: (F, 3) int array of 0-based vertex indices.
        eps: lower bound on twice the triangle area, so that degenerate (zero-area)
            triangles give large but finite cotangents instead of inf/NaN.

    Returns:
        (V, V) scipy CSR matrix, float64, zero diagonal. Weights can be negative for
        obtuse angles.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    n = len(v)
    weights = []
    rows = []
    cols = []
    for k in range(3):  # angle at corner k is opposite the edge (i, j)
        i, j, o = f[:, (k + 1) % 3], f[:, (k + 2) % 3], f[:, k]
        a = v[i] - v[o]  # (F, 3)
        b = v[j] - v[o]  # (F, 3)
        dot = (a * b).sum(1)
        cross = np.linalg.norm(np.cross(a, b), axis=1).clip(min=eps)  # guard degenerate faces
        w = 0.5 * dot / cross
        rows += [i, j]
        cols += [j, i]
        weights += [w, w]
    W = sp.coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return W.tocsr()  # duplicates (edges shared by two faces) are summed


def cotangent_laplacian(vertices: np.ndarray, faces: np.ndarray, *, eps: float = 1e-12) -> sp.csr_matrix:
    """Cotangent Laplacian ``L = W - diag(W 1)`` (the FEM stiffness matrix, sign: NSD).

    ``L`` is symmetric, negative semi-definite, and ``L @ 1 = 0``. For a displacement
    field ``d`` (V, 3), ``||L d||^2`` is the smoothness term of paper Eq. 12.

    Args:
        vertices: (V, 3) float array of the rest shape (any unit).
        faces: (F, 3) int array of 0-based indices.
        eps: see :func:`cotangent_weights`.

    Returns:
        (V, V) scipy CSR matrix, float64.
    """
    W = cotangent_weights(vertices, faces, eps=eps)
    return (W - sp.diags(np.asarray(W.sum(axis=1)).ravel())).tocsr()


def scipy_to_torch_sparse(matrix: sp.spmatrix, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Convert a scipy sparse matrix to a coalesced ``torch.sparse_coo_tensor`` of the same shape."""
    coo = matrix.tocoo()
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    values = torch.from_numpy(coo.data).to(dtype)
    return torch.sparse_coo_tensor(indices, values, coo.shape, check_invariants=True).coalesce()
