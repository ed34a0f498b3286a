"""The MLP generator (paper §4.2, supplement Fig. 11a)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FaceModelError
from .config import GeneratorConfig

__all__ = ["Generator", "first_layer_mask"]


class Generator(nn.Module):
    """Codes ``z = [z_factors..., z_noise]`` to per-vertex displacements from the template.

    Args:
        config: :class:`GeneratorConfig`.

    Shape:
        - input: (B, D) codes, ``D = config.code_dim``
        - output: (B, V, 3) displacements in mm (add the template to get vertices).

    Example:
        >>> g = Generator(GeneratorConfig(num_vertices=9409, factors=(Factor(name="identity",
        ...     code_dim=65, num_labels=240), Factor(name="expression", code_dim=15, num_labels=7))))
        >>> g(torch.randn(4, g.config.code_dim)).shape
        torch.Size([4, 9409, 3])
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.fc1 = nn.Linear(config.code_dim, config.hidden)
        self.act = nn.LeakyReLU(config.negative_slope)
        self.fc2 = nn.Linear(config.hidden, 3 * config.num_vertices)
        self.scale = config.displacement_scale_mm
        with torch.no_grad():  # start near the template: small output layer (stable early critic)
            self.fc2.weight.mul_(0.1)
            self.fc2.bias.zero_()
        # Factorised first layer (config.factor_hidden): the masked weights are zero and stay zero
        # (their gradient is masked, Adam then leaves them alone, the EMA averages zeros, loading
        # re-masks), so every reader of fc1 (fitting, protocol, blendshape map) sees the structure.
        mask = first_layer_mask(config) if config.factor_hidden is not None else None
        self.register_buffer("fc1_mask", mask, persistent=False)
        if mask is not None:
            with torch.no_grad():  # same pre-activation scale as the dense layer's units
                fan_in = mask.sum(1, keepdim=True)
                self.fc1.weight.mul_(mask * (config.code_dim / fan_in).sqrt())
            self.fc1.weight.register_hook(self._mask_gradient)
            self.register_load_state_dict_post_hook(_remask_after_load)

    def _mask_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * self.fc1_mask

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.config.code_dim:
            raise FaceModelError(f"codes must have shape (B, {self.config.code_dim}), got {tuple(z.shape)}")
        h = self.act(self.fc1(z))
        return (self.fc2(h) * self.scale).view(z.shape[0], self.config.num_vertices, 3)

    def last_layer_rows(self, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights (3K, hidden) and biases (3K,) of the output rows of K vertices (for fast
        landmark fitting: only those rows need evaluating)."""
        rows = (vertices[:, None] * 3 + torch.arange(3, device=vertices.device)).reshape(-1)
        return self.fc2.weight[rows] * self.scale, self.fc2.bias[rows] * self.scale


def first_layer_mask(config: GeneratorConfig) -> torch.Tensor:
    """(hidden, code_dim) 0/1 mask of a factorised first layer (see ``GeneratorConfig.factor_hidden``):
    each factor's block of hidden units sees its own code (the first factor's also the noise),
    the last ``config.interaction_hidden`` units see everything."""
    if config.factor_hidden is None:
        return torch.ones(config.hidden, config.code_dim)
    mask = torch.zeros(config.hidden, config.code_dim)
    slices, row = config.code_slices(), 0
    for k, (factor, width) in enumerate(zip(config.factors, config.factor_hidden)):
        mask[row : row + width, slices[factor.name]] = 1
        if k == 0:
            mask[row : row + width, slices["noise"]] = 1
        row += width
    mask[row:] = 1
    return mask


def _remask_after_load(module: Generator, incompatible_keys) -> None:
    with torch.no_grad():
        module.fc1.weight.mul_(module.fc1_mask)
