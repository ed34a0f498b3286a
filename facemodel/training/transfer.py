"""Transfer consistency: one expression code, the same local deformation on every face.

A deviation from the paper aimed at expression decoupling (``lambda_transfer``). Decoupled
expression codes mean that an expression code does the same thing to every identity. The
classical way to say "the same thing" on meshes of one topology is the per-triangle
deformation gradient of Sumner & Popovic (2004), which is also how expressions are carried
from one face to another in deformation transfer (and how the ICT 4D dataset moves ICT's
blendshapes onto each identity, :mod:`facemodel.data.builder`).

Each generator step draws ``I`` identity codes and ``E + 1`` expression codes from the prior,
decodes the ``I x (E + 1)`` grid (noise shared along each identity's row) and, for every
identity, takes the deformation gradients ``Q[i, e]`` from its face under expression 0 to its
face under expression ``e``. The loss is the distance of ``Q[i, e]`` from its mean over
identities (pseudo-Huber: smooth at zero, linear for the few thin triangles whose gradients
are large): zero when every face deforms alike, while the identity stays free to change *where*
a deformation lands. ``space="displacement"`` measures per-vertex displacements instead (what
an additive model holds equal).

Measured with ``benchmarks/transfer_spread.py`` (``docs/training.md``): relative to the
deformation, release 0.1.0's generator spreads 2.5-3x the ICT 4D data's in gradients and ~5x in
displacements.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["triangle_frames", "deformation_gradients", "transfer_triangles", "transfer_codes", "transfer_consistency"]


def triangle_frames(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Per-triangle frames ``[e1 e2 n]`` with the scaled normal ``n = e1 x e2 / sqrt|e1 x e2|``.

    Args:
        vertices: (..., V, 3) float, mm.
        faces: (T, 3) long vertex indices.

    Returns:
        (..., T, 3, 3) float; columns e1, e2 and n (mm).
    """
    a, b, c = (vertices[..., faces[:, k], :] for k in range(3))
    e1, e2 = b - a, c - a
    n = torch.linalg.cross(e1, e2, dim=-1)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12).sqrt()
    return torch.stack([e1, e2, n], dim=-1)


def deformation_gradients(rest: torch.Tensor, deformed: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Deformation gradients ``Q`` with ``Q [e1 e2 n]_rest = [e1 e2 n]_deformed`` (differentiable).

    The torch twin of :func:`facemodel.geometry.deformation_transfer.deformation_gradients`.

    Args:
        rest: (..., V, 3) float, mm; broadcasts against ``deformed``.
        deformed: (..., V, 3) float, mm, same topology.
        faces: (T, 3) long.

    Returns:
        (..., T, 3, 3) float, unitless.
    """
    r = triangle_frames(rest, faces)
    d = triangle_frames(deformed, faces)
    # Q R = D  <=>  R^T Q^T = D^T
    return torch.linalg.solve(r.transpose(-1, -2), d.transpose(-1, -2)).transpose(-1, -2)


def transfer_triangles(vertices: np.ndarray, faces: np.ndarray, *, min_area_ratio: float = 0.1) -> np.ndarray:
    """Indices of the template triangles the loss uses: all but slivers.

    Args:
        vertices: (V, 3) template vertices, mm.
        faces: (T, 3) triangles.
        min_area_ratio: triangles with an area under this fraction of the median are left out
            (their frames are ill-conditioned).

    Returns:
        (T',) int64 triangle indices, T' <= T.
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    return np.flatnonzero(area >= min_area_ratio * np.median(area)).astype(np.int64)


def transfer_codes(slices: dict[str, slice], code_dim: int, identities: int, expressions: int, *,
                   identity: str = "identity", expression: str = "expression",
                   device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Codes of the ``identities x (expressions + 1)`` grid, row-major, all from N(0, I).

    Row ``i`` shares identity code ``i`` and one noise code; column ``e`` shares expression
    code ``e`` (column 0 is the reference expression). Other factors, if any, are shared by
    the whole grid.

    Returns:
        (identities * (expressions + 1), code_dim) float codes.
    """
    I, E = identities, expressions + 1

    def draw(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    z = draw(1, 1, code_dim).expand(I, E, code_dim).clone()
    z[..., slices[identity]] = draw(I, 1, slices[identity].stop - slices[identity].start)
    z[..., slices[expression]] = draw(1, E, slices[expression].stop - slices[expression].start)
    if "noise" in slices and slices["noise"].stop > slices["noise"].start:
        z[..., slices["noise"]] = draw(I, 1, slices["noise"].stop - slices["noise"].start)
    return z.reshape(I * E, code_dim)


def _pseudo_huber(r: torch.Tensor, delta: float) -> torch.Tensor:
    """``delta * (sqrt(1 + (r / delta)^2) - 1)``: ``r^2 / (2 delta)`` near 0, ``~ r`` beyond ``delta``."""
    return delta * (torch.sqrt(1 + (r / delta).square()) - 1)


def transfer_consistency(meshes: torch.Tensor, faces: torch.Tensor, *, space: str = "gradient",
                         delta: float | None = None, relative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Spread over identities of what each expression does to the face.

    Args:
        meshes: (I, E + 1, V, 3) vertices in mm; ``meshes[i, e]`` is identity ``i`` under
            expression ``e``; expression 0 is the reference. I >= 2.
        faces: (T, 3) long triangles to measure (``space="gradient"``).
        space: ``"gradient"``: per-triangle deformation gradients ``Q[i, e]`` from expression 0
            to ``e`` (local, rotation-aware: deformation transfer's notion of "the same
            expression"); ``"displacement"``: per-vertex displacements from expression 0 to
            ``e`` in mm (an additive model's notion; cheaper, smoother).
        delta: the pseudo-Huber knee: quadratic below it (a smooth minimum), linear above it
            (a few thin triangles or lip vertices do not dominate). Default 0.02 (gradients,
            unitless) or 0.5 mm (displacements).
        relative: return the mean spread divided by the mean deformation (no pseudo-Huber; both
            differentiable): scale-free, so shrinking every expression does not lower it.

    Returns:
        ``(loss, magnitude)``: the mean over identities, expressions and triangles (vertices)
        of the pseudo-Huber of ``|| X[i, e] - mean_i X[i, e] ||`` (Frobenius / Euclidean), and
        (detached) the mean ``|| Q[i, e] - Id ||_F`` or ``|| displacement ||`` (mm) -- how much
        the expressions deform at all, the scale to read the loss against.
    """
    if meshes.ndim != 4 or meshes.shape[0] < 2 or meshes.shape[1] < 2:
        raise ValueError(f"meshes must be (I>=2, E+1>=2, V, 3), got {tuple(meshes.shape)}")
    if space == "gradient":
        x = deformation_gradients(meshes[:, :1], meshes[:, 1:], faces)  # (I, E, T, 3, 3)
        x = x.flatten(-2)
        rest = torch.eye(3, dtype=x.dtype, device=x.device).flatten()
        delta = 0.02 if delta is None else delta
    elif space == "displacement":
        x = meshes[:, 1:] - meshes[:, :1]  # (I, E, V, 3) mm
        rest = torch.zeros(3, dtype=x.dtype, device=x.device)
        delta = 0.5 if delta is None else delta
    else:
        raise ValueError(f"space must be 'gradient' or 'displacement', got {space!r}")
    spread = (x - x.mean(0, keepdim=True)).norm(dim=-1)
    magnitude = (x - rest).norm(dim=-1).mean()
    if relative:
        return spread.mean() / magnitude.clamp_min(1e-6), magnitude.detach()
    return _pseudo_huber(spread, delta).mean(), magnitude.detach()
