"""Expression anchoring (our deviation, docs/training.md "Session 8"): tie the expression code
to the data's blendshape weights.

The adversarial terms make generated expressions *look* like the data's, but nothing asks the
generator to be able to make *a given* expression: after training, the best expression code
for a test mesh's expression still misses it by 0.8 mm RMS (of 1.66 mm of motion), so driving
the model with blendshape weights (issue #8) cannot beat ICT's own additive shapes.

:func:`fit_expression_anchor` fits, once before training, a fixed linear map ``A`` from the
53 blendshape weights to the expression code: the whitened principal components of the
expression *displacements* the weights make (estimated from same-identity mesh differences,
so no blendshape basis is needed), so that the training weights' codes have zero mean and
identity covariance, like the prior the generator samples. With the ``expression_anchor``
term on, every generator step takes pairs ``(i, j)`` of training meshes of one person and asks

    G(z_id, A(w_i), z_n) - G(z_id, A(w_j), z_n)  ~  x_i - x_j

(mean squared distance per face-area vertex, mm^2, on random prior identity and noise codes):
the expression code of a weight vector makes that weight vector's expression, on every face.

Identity anchoring (term ``identity_anchor``, session 9) ties the identity code too:
:func:`fit_identity_anchor` gives every training identity a fixed code, the whitened principal
components of its most neutral mesh, and every generator step asks ``identity_anchor.pairs`` training
meshes to be reproduced whole,

    G(B(identity_i), A(w_i), z_n)  ~  x_i

(mean squared distance per vertex, mm^2, random prior noise code). The adversarial terms still
shape the rest of the code space; the anchored codes are where the generator must be the data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.dataset import FaceDataset
from ..errors import DatasetFormatError
from .rigidity import same_identity_differences

__all__ = ["FACE_VERTICES", "ExpressionAnchor", "anchor_loss", "fit_expression_anchor", "fit_identity_anchor", "identity_anchor_basis"]

#: ICT's face area (vertices 0-9408): where the anchoring term compares displacements
FACE_VERTICES = 9409


class ExpressionAnchor(nn.Module):
    """Fixed map from blendshape weights to expression codes, ``z = (w - mean) @ A``.

    Args:
        mean: (K,) mean training weight vector.
        matrix: (K, E) whitened principal directions (E = the expression code size).
    """

    def __init__(self, mean: np.ndarray, matrix: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("matrix", torch.as_tensor(matrix, dtype=torch.float32))

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        """(P, K) weights in [0, 1] -> (P, E) expression codes."""
        return (weights - self.mean) @ self.matrix


def fit_expression_anchor(
    dataset: FaceDataset,
    code_dim: int,
    *,
    pairs: int = 4000,
    face_vertices: int = FACE_VERTICES,
    vertex_stride: int = 4,
    ridge: float = 1e-3,
    seed: int = 0,
) -> tuple[ExpressionAnchor, dict[str, float]]:
    """Fit the weights -> code map of the anchoring term.

    1. Displacement per weight: ridge regression of ``pairs`` same-identity mesh differences
       (every ``vertex_stride``-th of the first ``face_vertices`` vertices) on their weight
       differences, ``x_i - x_j ~ (w_i - w_j) D``, D (K, 3R) in mm.
    2. The expression displacements of the training weights, ``(w - mean) D``, have their
       principal axes in weight space: the SVD of ``(W - mean) K^(1/2)`` with ``K = D D^T / R``;
       the first ``code_dim`` axes, scaled to unit variance, are ``A``.

    Returns:
        the map and figures: ``motion_mm`` (RMS per-vertex displacement of the weights from
        their mean), ``kept`` (fraction of its variance the ``code_dim`` axes hold),
        ``fit_residual_mm`` (RMS per-vertex error of the linear displacement model on 500
        other pairs: ICT 4D's expressions are deformation-transferred, not exactly additive).

    Raises:
        DatasetFormatError: the dataset has no blendshape weights, or fewer weight dimensions
            than ``code_dim``.
    """
    try:
        weights = np.asarray(dataset.meta("blendshapes"), dtype=np.float64)
    except (KeyError, DatasetFormatError) as exc:
        raise DatasetFormatError("expression anchoring needs each mesh's blendshape weights (meshes.npz "
                                 "'blendshapes'); build the dataset with `facemodel data build-ict`, or set "
                                 "lambda_expression_anchor=0 and lambda_identity_anchor=0 (identity anchoring "
                                 "uses the same map)") from exc  # fmt: skip
    K = weights.shape[1]
    if K < code_dim:
        raise DatasetFormatError(f"expression anchoring maps {K} blendshape weights to {code_dim} code dimensions; "
                                 "it needs at least as many weights as dimensions (lower the expression code_dim, or "
                                 "set lambda_expression_anchor=0 and lambda_identity_anchor=0)")  # fmt: skip
    a, b, vid, diff = same_identity_differences(dataset, pairs + 500, face_vertices=face_vertices,
                                                vertex_stride=vertex_stride, seed=seed)  # fmt: skip
    diff = diff.astype(np.float64)
    dw = weights[a] - weights[b]
    fit = slice(0, pairs)
    gram = dw[fit].T @ dw[fit]
    D = np.linalg.solve(gram + ridge * np.trace(gram) / K * np.eye(K), dw[fit].T @ diff[fit])  # (K, 3R)
    res = diff[pairs:] - dw[pairs:] @ D
    R = len(vid)
    gram_d = D @ D.T / R  # (K, K): mean squared displacement per vertex of a weight vector is w K w^T
    evals, evecs = np.linalg.eigh(gram_d)
    root = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T  # K^(1/2)
    mean = weights.mean(0)
    centred = weights - mean
    _, s, vt = np.linalg.svd(centred @ root, full_matrices=False)
    n = len(weights)
    matrix = root @ vt[:code_dim].T * (np.sqrt(n) / np.maximum(s[:code_dim], 1e-12))  # (K, E): unit variance
    stats = {
        "motion_mm": float(np.sqrt((s**2).sum() / n)),
        "kept": float((s[:code_dim] ** 2).sum() / max((s**2).sum(), 1e-12)),
        "fit_residual_mm": float(np.sqrt((res**2).sum(1).mean() / R)),
    }
    return ExpressionAnchor(mean, matrix), stats


def _identity_anchor(dataset: FaceDataset, code_dim: int):
    """:func:`identity_anchor_basis` and the identities' shapes (C, 3V) float64, read once."""
    labels = dataset.identity_classes()
    classes = np.unique(labels)
    try:
        strength = np.asarray(dataset.meta("blendshapes"), dtype=np.float64).sum(1)
    except (KeyError, DatasetFormatError):
        strength = np.zeros(len(labels))
    rows = np.array([np.flatnonzero(labels == k)[np.argmin(strength[labels == k])] for k in classes], dtype=np.int64)
    shapes = dataset.offsets(rows).reshape(len(rows), -1).astype(np.float64)
    mean = shapes.mean(0)
    _, s, vt = np.linalg.svd(shapes - mean, full_matrices=False)
    r = min(code_dim, len(rows) - 1)
    proj = np.zeros((shapes.shape[1], code_dim))
    proj[:, :r] = vt[:r].T * (np.sqrt(len(rows)) / np.maximum(s[:r], 1e-12))  # unit variance per dimension
    V = shapes.shape[1] // 3
    stats = {"identities": float(len(rows)), "shape_mm": float(np.sqrt((s**2).sum() / len(rows) / V)),
             "kept": float((s[:r] ** 2).sum() / max((s**2).sum(), 1e-12)), "whitened": float(r)}  # fmt: skip
    return classes, rows, shapes, mean, proj, stats


def identity_anchor_basis(dataset: FaceDataset, code_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """The affine map behind :func:`fit_identity_anchor`: ``code = (shape - mean) @ proj``.

    Args:
        dataset: the training split (identity labels needed; blendshape weights used if present).
        code_dim: the identity code size.

    Returns:
        ``classes`` (C,) identity labels, ``rows`` (C,) each identity's most neutral mesh (rows
        of ``dataset``), ``mean`` (3V,) their mean shape (offsets from the template, mm),
        ``proj`` (3V, code_dim) float64 (columns past the ``C - 1`` components that exist are
        0), and the figures of :func:`fit_identity_anchor`.
    """
    classes, rows, _, mean, proj, stats = _identity_anchor(dataset, code_dim)
    return classes, rows, mean, proj, stats


def fit_identity_anchor(dataset: FaceDataset, code_dim: int) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Fixed identity codes of the training identities for identity anchoring.

    Each identity's most neutral mesh (smallest sum of blendshape weights; the identity's first
    mesh where the dataset has no weights) is its shape; the whitened first ``code_dim``
    principal components of those shapes (zero mean, unit variance over the identities, like
    the prior) are the codes (:func:`identity_anchor_basis` gives the map itself).

    Args:
        dataset: the training split (identity labels needed; blendshape weights used if present).
        code_dim: the identity code size.

    Returns:
        ``classes`` (C,) identity labels, ``codes`` (C, code_dim) float32 and figures:
        ``identities``, ``shape_mm`` (RMS per-vertex distance of the shapes from their mean) and
        ``kept`` (fraction of its variance the components hold), ``whitened`` (their number).

    With C identities at most C - 1 components exist: the code dimensions past them are 0 for
    every identity (left to the prior and the adversarial terms). With few identities for the
    code size the whitening is a noisy estimate: 240 identities drawn on ICT's 100 modes give
    an unseen identity a code of mean squared norm ~172 where the prior expects 100 (800
    identities: ~115; docs/training.md, session 23).
    """
    classes, _, shapes, mean, proj, stats = _identity_anchor(dataset, code_dim)
    return classes, ((shapes - mean) @ proj).astype(np.float32), stats


def anchor_loss(generated: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """Mean squared distance per vertex (mm^2) between generated and data pair differences.

    Args:
        generated, data: (P, R, 3) differences ``x_i - x_j`` in mm.
    """
    return (generated - data).square().sum(-1).mean()
