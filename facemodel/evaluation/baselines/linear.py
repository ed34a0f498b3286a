"""Linear additive identity + expression model (Amberg et al. 2008; paper ref. [1]).

``mesh = mean + sum_i z_id[i] * B_id[i] + sum_j z_exp[j] * B_exp[j]`` (mm) with

- ``B_id``: PCA of the per-identity neutral faces (one per training identity, see
  :func:`~._common.find_neutrals`), each component scaled by its standard deviation;
- ``B_exp``: PCA of the expression displacements ``mesh - neutral of its identity`` over the
  training meshes (neutral meshes included, displacement 0), scaled the same way;
- ``mean``: mean neutral + mean displacement.

So the codes of the training data are centred with unit variance per component (identity
codes over identities, expression codes over meshes) and the prior is N(0, I). The fit is
exact PCA (Gram matrix) for small data and a streamed randomized SVD otherwise (the full
ICT 4D training split never has to be in memory at once).

Fast landmark fitting (paper Eq. 13) is an exact batched ridge least-squares solve.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..protocol import Codes, EvaluationError
from ._common import BaselineModel, Timer, as_train_dataset, clip_dim, find_neutrals, pca, ridge_solve, subset_rows

__all__ = ["LinearModel", "IdentityPCA"]


class IdentityPCA:
    """PCA of per-identity neutral faces (shared by the linear and the autoencoder baseline).

    Attributes:
        mean: (V, 3) float32 mean neutral face, mm.
        basis: (D, V, 3) float32 components times their standard deviation (mm per unit code).
        neutrals: (I, V, 3) float32 the neutral faces used (not saved).
        neutral_info: the :class:`~._common.NeutralFaces` selection.
    """

    def __init__(self, ds, dim: int) -> None:
        self.neutral_info = find_neutrals(ds)
        rows = self.neutral_info.rows
        V = ds.manifest.num_vertices
        self.neutrals = ds.vertices(rows)  # (I, V, 3)
        I = len(rows)
        if I < 2:
            raise EvaluationError(f"the identity PCA needs at least 2 training identities, the data has {I}")
        flat = self.neutrals.reshape(I, -1)

        def chunks():
            yield np.arange(I), flat

        res = pca(chunks, I, 3 * V, min(max(int(dim), 1), I))
        self.dim = clip_dim(dim, res.rank, "identity_dim")
        self.mean = torch.from_numpy(res.mean.reshape(V, 3).astype(np.float32))
        basis = res.components[: self.dim] * res.std[: self.dim, None]
        self.basis = torch.from_numpy(basis.reshape(-1, V, 3).astype(np.float32))
        self.std = res.std[: self.dim]


class LinearModel(BaselineModel):
    """Additive linear model: identity PCA + expression-displacement PCA.

    Args:
        neutral_mean: (V, 3) mean neutral face, mm.
        identity_basis: (Di, V, 3) identity components scaled by their std (mm per unit code).
        expression_mean: (V, 3) mean expression displacement, mm.
        expression_basis: (De, V, 3) expression components scaled by their std.
        faces: (F, 3) int64 triangles of the template.
        info: fit information (saved with the model).

    Example:
        >>> m = LinearModel.fit("~/.cache/facemodel/ict4d")            # 65 + 20 dims
        >>> meshes = m.decode(m.sample_codes(4))                         # (4, V, 3) mm
        >>> codes = m.fit_landmarks_fast(points, landmark_idx, reg=0.01)
    """

    kind = "linear"
    name = "Linear"

    def __init__(
        self,
        neutral_mean: torch.Tensor,
        identity_basis: torch.Tensor,
        expression_mean: torch.Tensor,
        expression_basis: torch.Tensor,
        faces: np.ndarray,
        info: dict[str, Any] | None = None,
    ) -> None:
        V = int(neutral_mean.shape[0])
        super().__init__(faces, V, info)
        for name, t in (("identity_basis", identity_basis), ("expression_basis", expression_basis)):
            if t.dim() != 3 or t.shape[1:] != (V, 3):
                raise EvaluationError(f"{name} must have shape (D, {V}, 3), got {tuple(t.shape)}")
        self.neutral_mean = neutral_mean.float().contiguous()
        self.expression_mean = expression_mean.float().contiguous()
        self.mean = self.neutral_mean + self.expression_mean
        self.identity_basis = identity_basis.float().contiguous()
        self.expression_basis = expression_basis.float().contiguous()
        self.identity_dim = int(identity_basis.shape[0])
        self.expression_dim = int(expression_basis.shape[0])

    # ---- fitting ----
    @classmethod
    def fit(
        cls,
        data: Any,
        *,
        identity_dim: int = 65,
        expression_dim: int = 20,
        max_meshes: int | None = None,
        seed: int = 0,
        chunk: int = 1024,
    ) -> "LinearModel":
        """Fit on a dataset's training split.

        Args:
            data: dataset folder (its ``train`` split is used) or a ``FaceDataset``.
            identity_dim: identity components; clipped (with a warning) to the number of
                training identities - 1.
            expression_dim: expression components; clipped to the displacements' rank.
            max_meshes: use at most this many meshes for the expression PCA (a random
                subset drawn with ``seed`` that keeps every neutral); default all.
            chunk: meshes read at a time.

        Raises:
            EvaluationError: missing data, fewer than 2 identities, dims < 1.
        """
        timer = Timer()
        ds = as_train_dataset(data)
        ident = IdentityPCA(ds, identity_dim)
        nf = ident.neutral_info
        rows = subset_rows(len(ds), max_meshes, seed, nf.rows)
        V = ds.manifest.num_vertices
        neutrals = ident.neutrals.reshape(len(nf.rows), -1)
        who = nf.index[rows]

        def chunks():
            for s in range(0, len(rows), chunk):
                pos = np.arange(s, min(s + chunk, len(rows)))
                yield pos, ds.vertices(rows[pos]).reshape(len(pos), -1) - neutrals[who[pos]]

        res = pca(chunks, len(rows), 3 * V, max(int(expression_dim), 1), seed=seed)
        De = clip_dim(expression_dim, res.rank, "expression_dim")
        exp_basis = (res.components[:De] * res.std[:De, None]).reshape(De, V, 3)
        info = {
            "train_identities": int(len(nf.rows)),
            "train_meshes": int(len(rows)),
            "exact_neutrals": nf.num_exact,
            "max_neutral_activation": float(np.nanmax(nf.activation)) if np.isfinite(nf.activation).any() else None,
            # std of the data along each component: the L2 norm over all 3V coordinates, mm
            "identity_component_std_mm": [round(float(x), 4) for x in ident.std],
            "expression_component_std_mm": [round(float(x), 4) for x in res.std[:De]],
            "seed": seed,
            "fit_seconds": timer(),
        }
        return cls(ident.mean, ident.basis, torch.from_numpy(res.mean.reshape(V, 3).astype(np.float32)),
                   torch.from_numpy(exp_basis.astype(np.float32)), ds.template.faces, info)  # fmt: skip

    # ---- decoding ----
    def _parts(self, idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (3K,) and the stacked basis (Di + De, 3K) of the selected vertices."""
        mean, B = self.mean, torch.cat([self.identity_basis, self.expression_basis])
        if idx is not None:
            mean, B = mean[idx], B[:, idx]
        return mean.reshape(-1), B.reshape(B.shape[0], -1)

    def decode(self, codes: Codes, *, vertices: torch.Tensor | None = None) -> torch.Tensor:
        """(n, V, 3) or (n, K, 3) meshes (mm) of ``codes``; differentiable w.r.t. the codes."""
        n = self.check_codes(codes)
        idx = self.check_vertex_index(vertices)
        mean, B = self._parts(idx)
        z = torch.cat([codes.identity, codes.expression], 1).to(B.dtype)
        return (mean + z @ B).view(n, -1, 3)

    def fit_landmarks_fast(self, points: torch.Tensor, vertices: torch.Tensor, reg: float) -> Codes:
        """Exact minimiser of ``sum_k ||v_k(z) - p_k||^2 + reg ||z||^2`` (Eq. 13), batched.

        Args:
            points: (B, K, 3) targets in mm (model frame); vertices: (K,) vertex indices.
            reg: weight of ``||z||^2`` (z = identity and expression codes), >= 0.

        Returns:
            :class:`Codes` of the B fits.
        """
        if reg < 0:
            raise EvaluationError(f"reg must be >= 0, got {reg}")
        points, idx = self.check_points(points, vertices)
        mean, B = self._parts(idx)
        z = ridge_solve(B.T, points.reshape(len(points), -1) - mean, float(reg))
        return self._split(z)

    def project(self, vertices: Any, *, neutrals: Any = None, reg: float = 0.0) -> Codes:
        """Codes of full meshes.

        Args:
            vertices: (n, V, 3) meshes, mm.
            neutrals: optional (n, V, 3) neutral face of each mesh's identity. Given, the
                codes are the training-time ones: identity = PCA coordinates of the neutral,
                expression = PCA coordinates of ``vertices - neutrals``. Without, the codes
                are the joint least-squares fit of all vertices (ridge ``reg``).

        Returns:
            :class:`Codes` (n faces).
        """
        v = self.check_meshes(vertices)
        n = len(v)
        if neutrals is None:
            mean, B = self._parts(None)
            return self._split(ridge_solve(B.T, v.reshape(n, -1) - mean, float(reg)))
        nu = self.check_meshes(neutrals, "neutrals")
        if len(nu) != n:
            raise EvaluationError(f"neutrals must have one face per mesh ({n}), got {len(nu)}")
        Bi = self.identity_basis.reshape(self.identity_dim, -1)
        Be = self.expression_basis.reshape(self.expression_dim, -1)
        zi = ridge_solve(Bi.T, (nu - self.neutral_mean).reshape(n, -1), float(reg))
        ze = ridge_solve(Be.T, (v - nu - self.expression_mean).reshape(n, -1), float(reg))
        return Codes(zi, ze, torch.zeros(n, 0))

    def _split(self, z: torch.Tensor) -> Codes:
        Di = self.identity_dim
        return Codes(z[:, :Di].float(), z[:, Di:].float(), torch.zeros(len(z), 0))

    # ---- files ----
    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"neutral_mean": self.neutral_mean, "identity_basis": self.identity_basis,
                "expression_mean": self.expression_mean, "expression_basis": self.expression_basis}  # fmt: skip

    @classmethod
    def _from_files(cls, config: dict[str, Any], t: dict[str, torch.Tensor]) -> "LinearModel":
        m = cls(t["neutral_mean"], t["identity_basis"], t["expression_mean"], t["expression_basis"],
                t["faces"].numpy(), config.get("info"))  # fmt: skip
        if (m.identity_dim, m.expression_dim) != (config["identity_dim"], config["expression_dim"]):
            raise EvaluationError("tensor shapes disagree with config.json sizes")
        return m
