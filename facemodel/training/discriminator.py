"""The critic with auxiliary classifiers (paper §4.2, supplement Fig. 11b).

Geometry-mapping layer -> shared trunk (conv 3x3 stride 2: 3->16->32) -> one branch per head
(conv 3x3 stride 2: 32->64->128, flatten 2048 at n = 64, linear). Heads: ``"real"`` (the
Wasserstein critic score) and one classifier per factor; optionally (our deviation, see
term ``regression`` of the training config) a linear regressor per factor on the same branch
features. Leaky ReLU 0.2, no normalisation
layers (they would break the per-sample gradient penalty).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..geometry.geometry_image import GeometryImage
from ..geometry.template import Template
from ..errors import ConfigError

__all__ = ["Critic", "CriticOutput", "critic_uv"]


@dataclass
class CriticOutput:
    """Critic outputs for a batch of B meshes.

    Attributes:
        score: (B,) Wasserstein critic value (higher = more real).
        logits: {factor: (B, num_labels)} classifier logits.
        features: {factor: (B, F)} classifier features before the last linear layer
            (F = 2048 at resolution 64), used by the feature loss (Eq. 10-11).
        regression: {factor: (B, T)} regressed targets for the factors built with
            ``targets`` (empty otherwise).
    """

    score: torch.Tensor
    logits: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]
    regression: dict[str, torch.Tensor] = field(default_factory=dict)


def critic_uv(template: Template, *, stiffness: float = 1.0, face_vertices: int = 6706) -> np.ndarray:
    """(V, 2) UV coordinates of the critic's geometry image: the template's harmonic map with the
    edges among vertices ``>= face_vertices`` (ICT: back of the head, neck, ears) ``stiffness``
    times stiffer, so the face proper covers more pixels (1: the plain map; ``TrainConfig.uv_stiffness``).

    Raises:
        ConfigError: ``face_vertices`` is not below the vertex count.
    """
    if stiffness == 1.0:
        return template.uv
    from ..geometry.uv import harmonic_uv

    V = template.num_vertices
    if face_vertices >= V:
        raise ConfigError(f"uv_face_vertices={face_vertices} but the template has {V} vertices; "
                          "set it below the vertex count (or uv_stiffness=1 for the plain harmonic map)")  # fmt: skip
    stiff = np.arange(face_vertices, V)
    return harmonic_uv(template.vertices, template.faces, stiff_vertices=stiff, stiffness=stiffness).uv


def _branch(c_in: int, widths: tuple[int, ...], slope: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_out in widths:
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.LeakyReLU(slope)]
        c_in = c_out
    layers.append(nn.Flatten())
    return nn.Sequential(*layers)


class Critic(nn.Module):
    """Critic ``D`` and classifiers ``C_factor`` on geometry images of generated meshes.

    Args:
        uv: (V, 2) template UV map; faces: (F, 3) template triangles.
        classes: {factor name: number of labels}, e.g. ``{"identity": 240, "expression": 7}``.
        resolution: geometry image side n (paper: 64; must be a multiple of 16).
        displacement_scale_mm: displacements are divided by this before the mapping layer,
            so the CNN sees numbers near unit scale (instance noise is in these units).
        trunk_widths, branch_widths: channel widths (paper: (16, 32) and (64, 128)).
        negative_slope: Leaky ReLU slope.
        targets: {factor name: T}: add a linear regressor of T numbers on that factor's
            branch features (e.g. 53 blendshape weights for ``"expression"``). None = the paper.

    Shape:
        - input: (B, V, 3) displacements from the template, mm.
        - output: :class:`CriticOutput`.
    """

    def __init__(
        self,
        uv: np.ndarray,
        faces: np.ndarray,
        classes: dict[str, int],
        *,
        resolution: int = 64,
        displacement_scale_mm: float = 10.0,
        trunk_widths: tuple[int, ...] = (16, 32),
        branch_widths: tuple[int, ...] = (64, 128),
        negative_slope: float = 0.2,
        targets: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        down = 2 ** (len(trunk_widths) + len(branch_widths))
        if resolution % down:
            raise ValueError(f"resolution must be a multiple of {down}, got {resolution}")
        self.mapping = GeometryImage(uv, faces, resolution)
        self.scale = float(displacement_scale_mm)
        layers: list[nn.Module] = []
        c = 3
        for w in trunk_widths:
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.LeakyReLU(negative_slope)]
            c = w
        self.trunk = nn.Sequential(*layers)
        side = resolution // down
        self.feature_dim = branch_widths[-1] * side * side
        self.branches = nn.ModuleDict({"real": _branch(c, branch_widths, negative_slope)})
        self.heads = nn.ModuleDict({"real": nn.Linear(self.feature_dim, 1)})
        for name, n in classes.items():
            self.branches[name] = _branch(c, branch_widths, negative_slope)
            self.heads[name] = nn.Linear(self.feature_dim, n)
        self.factor_names = tuple(classes)
        if targets:
            unknown = sorted(set(targets) - set(classes))
            if unknown:
                raise ValueError(f"regression targets for unknown factors {unknown}; factors: {sorted(classes)}")
            self.regressors = nn.ModuleDict({name: nn.Linear(self.feature_dim, t) for name, t in targets.items()})
        else:
            self.regressors = None

    def image(self, displacements: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) mm -> (B, 3, n, n) scaled geometry image."""
        return self.mapping(displacements / self.scale)

    def from_image(self, image: torch.Tensor) -> CriticOutput:
        h = self.trunk(image)
        feats = {name: self.branches[name](h) for name in self.branches}
        score = self.heads["real"](feats["real"]).squeeze(1)
        logits = {name: self.heads[name](feats[name]) for name in self.factor_names}
        reg = {name: head(feats[name]) for name, head in self.regressors.items()} if self.regressors is not None else {}
        return CriticOutput(score=score, logits=logits, features={n: feats[n] for n in self.factor_names}, regression=reg)

    def forward(self, displacements: torch.Tensor, *, noise_std: float = 0.0) -> CriticOutput:
        img = self.image(displacements)
        if noise_std > 0:  # instance noise (Sonderby et al.), paper sigma = 0.1
            img = img + noise_std * torch.randn_like(img)
        return self.from_image(img)
