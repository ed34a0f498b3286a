"""Carry a checkpoint onto another build of the data (``facemodel train --init-from CKPT --reanchor``).

A generator trained with identity and expression anchoring reads its codes in the anchors'
coordinates: the identity code is the whitened PCA of the training identities' neutral shapes
(:func:`~facemodel.training.anchoring.identity_anchor_basis`), the expression code a whitened
map of the blendshape weights (:func:`~facemodel.training.anchoring.fit_expression_anchor`).
Another build (more identities, say) has other anchors: the same face gets another code. Both
anchors are affine in what they encode, so the old codes are an affine function of the new ones,

    z_old = z_new @ R + c        (per factor),

exact where both anchors span the same space (ICT's 100 identity modes with a 100-d code, the
53 weights with a 53-d code), a least-squares fit otherwise. Re-expressing the generator's first
layer in the new coordinates (``W[:, f] <- W[:, f] R^T``, ``b <- b + W[:, f] c``) leaves what it
computes unchanged: ``G_new(z_new) == G_old(z_old)``. Training then continues on the new data
with the new anchors from the same function, instead of from codes that mean other faces.

Used by :meth:`facemodel.training.loop.Trainer.warm_start`; docs/training.md (session 23) has the
run it was made for (240 -> 800 training identities).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..data.dataset import FaceDataset
from .anchoring import ExpressionAnchor, _identity_anchor, identity_anchor_basis

__all__ = ["CodeMap", "identity_map", "expression_map", "reanchor_first_layer"]


@dataclass(frozen=True)
class CodeMap:
    """``z_old = z_new @ matrix + offset`` for one factor's code (float64).

    Attributes:
        matrix: (E, E); offset: (E,).
        residual: RMS of the fit over the samples it was fitted on, in code units (0: exact).
    """

    matrix: np.ndarray
    offset: np.ndarray
    residual: float


def _affine_fit(new: np.ndarray, old: np.ndarray) -> CodeMap:
    """Least-squares ``old ~ new @ R + c`` over samples (N, E) -> :class:`CodeMap`."""
    X = np.concatenate([np.ones((len(new), 1)), new], 1)
    coef, *_ = np.linalg.lstsq(X, old, rcond=None)
    res = old - X @ coef
    return CodeMap(coef[1:], coef[0], float(np.sqrt((res**2).mean())))


def identity_map(old: FaceDataset, new: FaceDataset, code_dim: int) -> CodeMap:
    """The old identity anchor's codes of the new training identities, as an affine function of
    their new anchor codes.

    Args:
        old, new: the training splits the two anchors are fitted on (same template).
        code_dim: the identity code size.
    """
    _, _, mean_o, proj_o, _ = identity_anchor_basis(old, code_dim)
    _, _, shapes, mean_n, proj_n, _ = _identity_anchor(new, code_dim)
    return _affine_fit((shapes - mean_n) @ proj_n, (shapes - mean_o) @ proj_o)


def expression_map(old: ExpressionAnchor, new: ExpressionAnchor) -> CodeMap:
    """The old expression anchor's code of a weight vector from its new anchor code: with
    ``z = (w - mean) @ A``, ``z_old = z_new @ pinv(A_new) @ A_old + (mean_new - mean_old) @ A_old``
    (exact when ``A_new`` is square and invertible, as with 53 weights and a 53-d code)."""
    A_o, A_n = old.matrix.double().cpu().numpy(), new.matrix.double().cpu().numpy()
    m_o, m_n = old.mean.double().cpu().numpy(), new.mean.double().cpu().numpy()
    R = np.linalg.pinv(A_n) @ A_o
    # residual over the weight directions the new code does not hold (0 for a square A_new)
    w = np.random.default_rng(0).uniform(0, 1, (512, len(m_n)))
    res = ((w - m_o) @ A_o) - (((w - m_n) @ A_n) @ R + (m_n - m_o) @ A_o)
    return CodeMap(R, (m_n - m_o) @ A_o, float(np.sqrt((res**2).mean())))


@torch.no_grad()
def reanchor_first_layer(state: dict[str, torch.Tensor], maps: Sequence[tuple[slice, CodeMap]], prefix: str = "fc1.") -> dict[str, torch.Tensor]:
    """A generator state dict whose first layer reads new codes as the old one read old codes.

    Args:
        state: the generator's ``state_dict()`` (``fc1.weight`` (H, D), ``fc1.bias`` (H,)).
        maps: ``(code columns, CodeMap)`` of each re-expressed factor.

    Returns:
        a new state dict (the input is not modified): ``fc1.weight[:, f] @ R^T`` and
        ``fc1.bias + fc1.weight[:, f] @ c`` for each factor ``f``, computed in float64.
    """
    out = dict(state)
    W = state[prefix + "weight"].double()
    b = state[prefix + "bias"].double().clone()
    W_new = W.clone()
    for cols, m in maps:
        block = W[:, cols]
        W_new[:, cols] = block @ torch.from_numpy(m.matrix).T
        b += block @ torch.from_numpy(m.offset)
    dtype = state[prefix + "weight"].dtype
    out[prefix + "weight"], out[prefix + "bias"] = W_new.to(dtype), b.to(dtype)
    return out
