"""The data's expression-motion subspace (our deviation, docs/training.md "Session 7").

Two meshes of one person differ by an expression change. In the ICT 4D data every such change
is a combination of 53 blendshapes deformation-transferred onto that person, so the changes
of all training identities span a low-dimensional subspace of displacement space.
:func:`fit_motion_subspace` finds it once, before training (PCA of same-identity mesh
differences); with the ``motion_subspace`` term on, two generated meshes that share the identity
code (but not the expression code) are asked to differ only inside it, so the expression code
makes expressions the data has, not shapes an expression judge has never seen.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.dataset import FaceDataset
from ..errors import DatasetFormatError
from .rigidity import same_identity_differences

__all__ = ["MotionSubspace", "fit_motion_subspace"]


class MotionSubspace(nn.Module):
    """Orthonormal basis ``U`` (K, 3R) of motion on R vertices; residual of a pair difference.

    Args:
        rows: (R,) vertex indices.
        basis: (K, 3R) orthonormal rows.
    """

    def __init__(self, rows: np.ndarray, basis: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("rows", torch.as_tensor(rows, dtype=torch.long))
        self.register_buffer("basis", torch.as_tensor(basis, dtype=torch.float32))

    def residual(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(P,) mean squared distance per vertex (mm^2) of ``a - b`` from the subspace.

        Args:
            a, b: (P, V, 3) meshes or displacements in mm.
        """
        diff = (a - b)[:, self.rows].reshape(a.shape[0], -1)
        r = diff - (diff @ self.basis.T) @ self.basis
        return r.square().sum(1) / len(self.rows)


def fit_motion_subspace(
    dataset: FaceDataset,
    *,
    pairs: int = 2000,
    components: int = 128,
    face_vertices: int = 9409,
    vertex_stride: int = 2,
    seed: int = 0,
) -> tuple[MotionSubspace, dict[str, float]]:
    """PCA of ``pairs`` same-identity training-mesh differences (every ``vertex_stride``-th of the
    first ``face_vertices`` vertices), ``components`` modes kept.

    Returns:
        the subspace and validation figures on 500 other pairs: ``motion_mm`` (RMS per-vertex
        difference) and ``residual_mm`` (RMS per-vertex distance from the subspace).

    Raises:
        DatasetFormatError: fewer pairs of distinct meshes than ``components``.
    """
    _, _, vid, diff = same_identity_differences(dataset, pairs + 500, face_vertices=face_vertices,
                                                vertex_stride=vertex_stride, seed=seed)  # fmt: skip
    fit, val = diff[:pairs], diff[pairs:]
    distinct = int((np.abs(fit).max(1) > 0).sum())
    if distinct <= components:
        raise DatasetFormatError(f"the motion subspace needs more than {components} same-identity pairs of distinct "
                                 f"meshes; the dataset gives {distinct}: "
                                 "lower components (motion_subspace.components) or set motion_subspace.weight=0")  # fmt: skip
    _, _, vt = np.linalg.svd(fit, full_matrices=False)  # no centring: a zero difference is a valid motion
    U = vt[:components]
    sub = MotionSubspace(vid, U)
    res = val - (val @ U.T) @ U
    stats = {"motion_mm": float(np.sqrt((val**2).sum(1).mean() / len(vid))),
             "residual_mm": float(np.sqrt((res**2).sum(1).mean() / len(vid)))}  # fmt: skip
    return sub, stats
