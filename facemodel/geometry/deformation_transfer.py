"""Deformation transfer (Sumner & Popovic 2004) between meshes of one topology.

Each source triangle's deformation gradient ``Q_t = [e1' e2' n'] [e1 e2 n]^-1`` (with the
scaled normal ``n = e1 x e2 / sqrt(|e1 x e2|)`` as fourth vertex) is applied to the
*target's* edges, and the target's deformed vertices are the least-squares fit of those
edges:

    min_x  sum_t  a_t * || [x_b - x_a, x_c - x_a] - Q_t [E_t] ||^2

(the edge-based form of the method, as in Botsch et al. 2006, with source rest areas
``a_t`` as weights). Because meshes share their topology no correspondence step is needed,
and the normal matrix depends only on the topology and the source, so it is factorised
once and reused for every target and every blendshape. Translation, which the edges do
not fix, is chosen so that the mean displacement over ``anchors`` matches the source's.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..errors import InvalidGeometryError

__all__ = ["DeformationTransfer", "deformation_gradients"]


def _frames(v: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(..., T, 3, 3) matrices whose columns are e1, e2 and the scaled normal."""
    a, b, c = v[..., faces[:, 0], :], v[..., faces[:, 1], :], v[..., faces[:, 2], :]
    e1, e2 = b - a, c - a
    n = np.cross(e1, e2)
    n = n / np.sqrt(np.linalg.norm(n, axis=-1, keepdims=True)).clip(min=1e-12)
    return np.stack([e1, e2, n], axis=-1)


def deformation_gradients(rest: np.ndarray, deformed: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per-triangle deformation gradients from ``rest`` to ``deformed``.

    Args:
        rest: (V, 3) float array.
        deformed: (..., V, 3) float array, same topology.
        faces: (T, 3) int array.

    Returns:
        (..., T, 3, 3) float64 matrices ``Q`` with ``Q @ [e1 e2 n]_rest = [e1 e2 n]_deformed``.
    """
    rest_f = _frames(np.asarray(rest, np.float64), faces)  # (T, 3, 3)
    def_f = _frames(np.asarray(deformed, np.float64), faces)  # (..., T, 3, 3)
    return def_f @ np.linalg.inv(rest_f)


class DeformationTransfer:
    """Transfer deformations of a source mesh onto targets with the same topology.

    Args:
        source_rest: (V, 3) float array, the undeformed source (e.g. ICT's generic neutral).
        faces: (T, 3) int array.
        anchors: optional int array of vertices whose mean displacement is copied from
            the source (fixes the free translation); default: all vertices.

    Example:
        >>> dt = DeformationTransfer(generic_neutral, faces)
        >>> q = dt.gradients(blendshapes)            # (K, T, 3, 3), once
        >>> shapes = dt.transfer(identity_neutral, q, source_displacement_means)  # (K, V, 3)
    """

    def __init__(self, source_rest: np.ndarray, faces: np.ndarray, *, anchors: np.ndarray | None = None) -> None:
        self.rest = np.asarray(source_rest, dtype=np.float64)
        self.faces = np.asarray(faces, dtype=np.int64)
        V, T = len(self.rest), len(self.faces)
        if self.rest.shape != (V, 3):
            raise InvalidGeometryError(f"source_rest must be (V, 3), got {self.rest.shape}")
        self.anchors = np.arange(V) if anchors is None else np.asarray(anchors, dtype=np.int64)
        e1 = self.rest[self.faces[:, 1]] - self.rest[self.faces[:, 0]]
        e2 = self.rest[self.faces[:, 2]] - self.rest[self.faces[:, 0]]
        area = 0.5 * np.linalg.norm(np.cross(e1, e2), axis=1)
        w = area / area.mean()
        # edge operator D: rows 2t (b - a) and 2t+1 (c - a), weighted by sqrt(area)
        rows = np.repeat(np.arange(2 * T), 2)
        cols = np.stack(
            [self.faces[:, 0], self.faces[:, 1], self.faces[:, 0], self.faces[:, 2]], 1
        ).reshape(-1)
        sw = np.sqrt(np.repeat(w, 2))
        vals = (np.tile([-1.0, 1.0], 2 * T)) * np.repeat(sw, 2)
        self._D = sp.csr_matrix((vals, (rows, cols)), shape=(2 * T, V))
        self._sw = sw  # (2T,)
        N = (self._D.T @ self._D).tocsc()  # graph Laplacian, singular along constants
        self._pin = 0
        keep = np.arange(1, V)
        self._keep = keep
        self._solve = spla.splu(N[keep][:, keep].tocsc())
        self._DT = self._D.T.tocsr()

    def gradients(self, source_deformed: np.ndarray) -> np.ndarray:
        """(K, T, 3, 3) deformation gradients of ``source_deformed`` (K, V, 3) w.r.t. the rest."""
        return deformation_gradients(self.rest, source_deformed, self.faces)

    def transfer(
        self,
        target_rest: np.ndarray,
        gradients: np.ndarray,
        source_anchor_shift: np.ndarray | None = None,
    ) -> np.ndarray:
        """Apply source deformation gradients to a target.

        Args:
            target_rest: (V, 3) float array, the target's undeformed shape.
            gradients: (K, T, 3, 3) from :meth:`gradients`.
            source_anchor_shift: (K, 3) mean source displacement over ``anchors``
                (see :meth:`anchor_shift`); default zeros.

        Returns:
            (K, V, 3) float64 deformed targets.
        """
        x0 = np.asarray(target_rest, dtype=np.float64)
        f = self.faces
        E = np.stack([x0[f[:, 1]] - x0[f[:, 0]], x0[f[:, 2]] - x0[f[:, 0]]], axis=-1)  # (T, 3, 2)
        # desired displacement of each edge: (Q - I) E, solved for vertex displacements
        dE = np.einsum("ktij,tjl->ktil", gradients, E) - E  # (K, T, 3, 2)
        K = len(gradients)
        b = dE.transpose(1, 3, 0, 2).reshape(2 * len(f), K * 3) * self._sw[:, None]  # (2T, K*3)
        rhs = (self._DT @ b)[self._keep]  # (V-1, K*3)
        d = np.zeros((len(x0), K * 3))
        d[self._keep] = self._solve.solve(np.ascontiguousarray(rhs))
        d = d.reshape(len(x0), K, 3).transpose(1, 0, 2)  # (K, V, 3)
        shift = np.zeros((K, 3)) if source_anchor_shift is None else np.asarray(source_anchor_shift, np.float64)
        d += (shift - d[:, self.anchors].mean(1))[:, None, :]
        return x0[None] + d

    def anchor_shift(self, source_deformed: np.ndarray) -> np.ndarray:
        """(K, 3) mean displacement of the source over the anchor vertices."""
        return (np.asarray(source_deformed, np.float64)[:, self.anchors] - self.rest[self.anchors]).mean(1)
