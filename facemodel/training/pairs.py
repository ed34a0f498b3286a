"""Real mesh pairs that share one factor, for the pair critic (``lambda_pair``).

The pair critic (an adversarial pair discriminator in the spirit of Mathieu et al. 2016,
"Disentangling factors of variation in deep representations using adversarial training")
sees two meshes side by side and learns to tell *real* pairs that share a factor from
*generated* pairs whose codes share that factor. The generator then has to make two faces
with one expression code look like two people making the same expression, and two faces with
one identity code look like one person with two expressions — a condition an inert code or a
code that leaks into the other factor cannot meet.

Real pairs:

- identity: another training mesh of the same identity, drawn at random each time;
- expression: the training mesh of *another* identity whose 53 ICT blendshape weights are
  closest (L2) to the mesh's own (precomputed once; on the ICT 4D dataset the median distance is
  about 5 % of that between random meshes).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import FaceDataset
from .config import ConfigError

__all__ = ["PairSampler", "expression_partners"]


def expression_partners(weights: np.ndarray, identities: np.ndarray, *, chunk: int = 1024) -> np.ndarray:
    """For every mesh, the mesh of another identity with the nearest blendshape weights.

    Args:
        weights: (M, 53) blendshape weights in [0, 1].
        identities: (M,) identity of each mesh.
        chunk: rows per distance block.

    Returns:
        (M,) int64 row indices into the same arrays.

    Raises:
        ConfigError: fewer than two identities.
    """
    w = np.asarray(weights, np.float32)
    ids = np.asarray(identities)
    if len(np.unique(ids)) < 2:
        raise ConfigError("expression pairs need meshes of at least two identities")
    sq = (w * w).sum(1)
    out = np.empty(len(w), np.int64)
    for s in range(0, len(w), chunk):
        d = sq[s : s + chunk, None] + sq[None] - 2.0 * (w[s : s + chunk] @ w.T)
        d[ids[s : s + chunk, None] == ids[None]] = np.inf
        out[s : s + chunk] = d.argmin(1)
    return out


class PairSampler:
    """Partners of real training meshes for each factor (``identity``, ``expression``).

    Args:
        data: the training :class:`FaceDataset` (rows are its positions).
        factors: factor names to serve; the first is the identity factor, the second (if
            any) the expression factor, as in the training config.
        seed: seed of the random same-identity partners.

    Raises:
        ConfigError: the expression factor is asked for on a dataset without blendshape weights.
    """

    def __init__(self, data: FaceDataset, factors: tuple[str, ...], *, seed: int = 0) -> None:
        self.data = data
        self.identity = np.asarray(data.identity_classes())
        self.rng = np.random.default_rng(seed)
        order = np.argsort(self.identity, kind="stable")
        bounds = np.searchsorted(self.identity[order], np.unique(self.identity))
        self._groups = np.split(order, bounds[1:])
        self._group_of = np.empty(len(self.identity), np.int64)
        for g, rows in enumerate(self._groups):
            self._group_of[rows] = g
        self.kinds = {factors[0]: "identity"}
        self._expression: np.ndarray | None = None
        if len(factors) > 1:
            try:
                weights = data.meta("blendshapes")
            except KeyError as exc:
                raise ConfigError(
                    "lambda_pair on the expression factor needs per-mesh blendshape weights (an ICT 4D "
                    "dataset from `facemodel data build-ict`); set lambda_pair=0 for this dataset"
                ) from exc
            self._expression = expression_partners(weights, self.identity)
            self.kinds[factors[1]] = "expression"

    def partners(self, rows: np.ndarray, factor: str) -> np.ndarray:
        """(n,) partner rows of ``rows`` sharing ``factor`` (a mesh may be its own partner
        only when its identity has a single mesh)."""
        kind = self.kinds.get(factor)
        if kind is None:
            raise ConfigError(f"no real pairs for factor {factor!r}; pairs exist for {sorted(self.kinds)}")
        rows = np.asarray(rows)
        if kind == "expression":
            return self._expression[rows]
        out = np.empty(len(rows), np.int64)
        for i, r in enumerate(rows):
            group = self._groups[self._group_of[r]]
            if len(group) == 1:
                out[i] = r
                continue
            j = group[self.rng.integers(len(group) - 1)]
            out[i] = j if j != r else group[-1]
        return out

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def pair_images(images: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """(B, C, n, n) geometry images, (P, 2) rows -> (P, 2C, n, n) side-by-side channels."""
    return torch.cat([images[pairs[:, 0]], images[pairs[:, 1]]], 1)
