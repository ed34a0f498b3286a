"""A frozen linear read-out of ICT blendshape weights from geometry (our deviation).

The critic's heads are trained on real meshes only, so a generator asked to make two samples
"look alike" to them can game them. :class:`BlendshapeMeter` is instead fitted once, before
training, by ridge regression on the training meshes (PCA of the face-area vertices, then a
ridge map to the 53 weights), and never changes. With the ``blendshape_consistency`` term on,
two generated meshes that share the expression code are asked to read the same weights, so
the expression code, and not the identity code, decides the expression.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.dataset import FaceDataset
from ..errors import DatasetFormatError

__all__ = ["BlendshapeMeter", "fit_blendshape_meter", "fit_linear_meter", "same_identity_spread"]


class BlendshapeMeter(nn.Module):
    """``weights = A @ (x[rows] - mean) + bias``: (B, V, 3) mm -> (B, T) blendshape weights.

    Args:
        rows: (R,) vertex indices read.
        mean: (R * 3,) mean of the read vertices, mm.
        matrix: (R * 3, T) linear map.
        bias: (T,) mean weights.
    """

    def __init__(self, rows: np.ndarray, mean: np.ndarray, matrix: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("rows", torch.as_tensor(rows, dtype=torch.long))
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("matrix", torch.as_tensor(matrix, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, vertices: torch.Tensor) -> torch.Tensor:
        x = vertices[:, self.rows].reshape(vertices.shape[0], self.mean.shape[0]) - self.mean
        return x @ self.matrix + self.bias


def fit_linear_meter(
    dataset: FaceDataset,
    targets: np.ndarray,
    *,
    meshes: int = 4000,
    vertex_stride: int = 5,
    face_vertices: int = 6706,
    components: int = 300,
    ridge: float = 1e-2,
    seed: int = 0,
) -> tuple[BlendshapeMeter, float]:
    """Fit a frozen linear read-out of per-mesh ``targets`` (N, T) on ``meshes`` random training
    meshes (narrow face area, every ``vertex_stride``-th vertex; ``components`` PCA modes; ridge
    ``ridge``).

    Returns:
        the meter and its mean absolute error on up to 500 other training meshes.

    Raises:
        DatasetFormatError: fewer than 3 meshes.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(dataset))
    n_fit = min(meshes, int(0.8 * len(dataset)))  # keep at least a fifth for validation
    if n_fit < 2:
        raise DatasetFormatError(f"a linear meter needs at least 3 training meshes, the dataset has {len(dataset)}")
    fit_rows, val_rows = np.sort(order[:n_fit]), np.sort(order[n_fit:n_fit + 500])
    vid = np.arange(0, min(face_vertices, dataset.manifest.num_vertices), vertex_stride)
    X = dataset.vertices(fit_rows)[:, vid].reshape(len(fit_rows), -1).astype(np.float64)
    Y = targets[fit_rows].astype(np.float64)
    mean, bias = X.mean(0), Y.mean(0)
    _, _, vt = np.linalg.svd(X - mean, full_matrices=False)
    P = vt[: min(components, len(vt))]
    Z = (X - mean) @ P.T
    W = np.linalg.solve(Z.T @ Z + ridge * np.eye(len(P)), Z.T @ (Y - bias))
    meter = BlendshapeMeter(vid, mean, P.T @ W, bias)
    with torch.no_grad():
        pred = meter(torch.from_numpy(dataset.vertices(val_rows))).numpy()
    return meter, float(np.abs(pred - targets[val_rows]).mean())


def fit_blendshape_meter(dataset: FaceDataset, **kwargs) -> tuple[BlendshapeMeter, float]:
    """:func:`fit_linear_meter` of the 53 ICT blendshape weights of each mesh.

    Returns:
        the meter and its validation mean absolute error (weights in [0, 1]; about 0.004 on the
        ICT 4D data, where weights deviate from their mean by 0.056 on average).

    Raises:
        DatasetFormatError: the dataset has no blendshape weights.
    """
    try:
        weights = dataset.meta("blendshapes")
    except KeyError as exc:
        raise DatasetFormatError("the blendshape meter needs an ICT 4D dataset (per-mesh blendshape weights); "
                                 "set blendshape_consistency.weight=0 and expression_spread.weight=0 for other data") from exc  # fmt: skip
    return fit_linear_meter(dataset, weights, **kwargs)


@torch.no_grad()
def same_identity_spread(dataset: FaceDataset, meter: BlendshapeMeter, *, pairs: int = 2000, seed: int = 0) -> float:
    """Mean squared read-out difference ``E ||meter(a) - meter(b)||^2`` over random pairs of
    training meshes of the same identity: how different two expressions of one person read
    in the data (the target of the ``expression_spread`` term)."""
    from .rigidity import same_identity_pairs

    a, b = same_identity_pairs(dataset, pairs, seed=seed)
    va = meter(torch.from_numpy(dataset.vertices(a)))
    vb = meter(torch.from_numpy(dataset.vertices(b)))
    return float((va - vb).square().sum(1).mean())
