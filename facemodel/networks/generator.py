"""The MLP generator (paper §4.2, supplement Fig. 11a)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FaceModelError
from .config import GeneratorConfig

__all__ = ["Generator", "HiddenLayer", "OutputLayer", "first_layer_mask"]


class HiddenLayer(NamedTuple):
    """A hidden layer ``h = lrelu(weight @ z + bias)`` acting on the code directly (the paper's
    generator): what fitting's exact piecewise-linear Gauss-Newton path needs."""

    weight: torch.Tensor  # (H, D)
    bias: torch.Tensor  # (H,)
    negative_slope: float


class OutputLayer(NamedTuple):
    """The output layer as stored: displacements ``scale * (weight @ h + bias)`` in mm, for
    inference paths that evaluate it themselves (``FaceModel.decode``'s no-autograd path, its
    float16 copy). The tensors are the parameters themselves (no copy): do not write to them."""

    weight: torch.Tensor  # (3V, H), contiguous
    bias: torch.Tensor  # (3V,)
    scale: float  # mm per output unit


class Generator(nn.Module):
    """Codes ``z = [z_factors..., z_noise]`` to per-vertex displacements from the template.

    The model, fitting, the blendshape map and the evaluation use it only through its
    interface: :meth:`hidden` (the features the output layer reads), :meth:`hidden_jacobian`
    (with their Jacobian w.r.t. the code), :meth:`output_rows` (the output layer's rows of chosen
    vertices, in mm), :meth:`decode_vertices` (a vertex subset), :meth:`forward` (all vertices),
    :meth:`affine_hidden` (the one hidden layer's weights, when there is only one: fitting's
    exact fast path), :meth:`output_layer` (the output layer's weights as stored, for inference
    without autograd), :attr:`device` / :attr:`dtype`, and :meth:`weights_stamp` (changes when a
    weight is written; for caches). The output layer is affine in the hidden features for
    every architecture.

    Args:
        config: :class:`GeneratorConfig` (``hidden_layers`` hidden layers of ``hidden`` units).

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
        # deeper variants (config.hidden_layers > 1): further hidden -> hidden layers
        self.deep = (
            nn.ModuleList(nn.Linear(config.hidden, config.hidden) for _ in range(config.hidden_layers - 1))
            if config.hidden_layers > 1
            else None
        )
        self.act = nn.LeakyReLU(config.negative_slope)
        self.fc2 = nn.Linear(config.hidden, 3 * config.num_vertices)
        self.scale = config.displacement_scale_mm
        with torch.no_grad():  # start near the template: small output layer (stable early critic)
            self.fc2.weight.mul_(0.1)
            self.fc2.bias.zero_()
        # Factorised first layer (config.factor_hidden): the masked weights are zero and stay zero
        # (their gradient is masked, Adam then leaves them alone, the EMA averages zeros, loading
        # re-masks), so every reader of the first layer (fitting, protocol, blendshape map) sees
        # the structure.
        mask = first_layer_mask(config) if config.factor_hidden is not None else None
        self.register_buffer("fc1_mask", mask, persistent=False)
        if mask is not None:
            if not mask.is_meta:  # on the meta device (a size check before loading) there is nothing to scale,
                # and its reduction kernels would import torch._dynamo: ~1.4 s of a cold from_pretrained
                with torch.no_grad():  # same pre-activation scale as the dense layer's units
                    fan_in = mask.sum(1, keepdim=True)
                    self.fc1.weight.mul_(mask * (config.code_dim / fan_in).sqrt())
            self.fc1.weight.register_hook(self._mask_gradient)
            self.register_load_state_dict_post_hook(_remask_after_load)

    def _mask_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * self.fc1_mask

    def _check_codes(self, z: torch.Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.config.code_dim:
            raise FaceModelError(f"codes must have shape (B, {self.config.code_dim}), got {tuple(z.shape)}")

    # ---- the interface ---------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return self.fc1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (codes are computed in it)."""
        return self.fc1.weight.dtype

    @property
    def hidden_dim(self) -> int:
        """H: number of hidden features the output layer reads."""
        return self.config.hidden

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (B, D) -> displacements (B, V, 3), mm."""
        self._check_codes(z)
        h = self.hidden(z)
        return (self.fc2(h) * self.scale).view(z.shape[0], self.config.num_vertices, 3)

    def hidden(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (B, D) -> hidden features (B, H): the input of the output layer."""
        # functional calls: what fc1 and act compute, without two module calls (decode's latency)
        h = F.leaky_relu(F.linear(z, self.fc1.weight, self.fc1.bias), self.act.negative_slope)
        if self.deep is not None:
            for layer in self.deep:
                h = self.act(layer(h))
        return h

    def hidden_jacobian(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (B, D) -> hidden features (B, H) and their Jacobian d h / d z (B, H, D)
        (exact, layer by layer: ``diag(lrelu'(pre_L)) W_L ... diag(lrelu'(pre_1)) W_1``)."""
        slope = self.config.negative_slope
        pre = self.fc1(z)
        J = torch.where(pre > 0, 1.0, slope).to(pre.dtype)[:, :, None] * self.fc1.weight  # (B, H, D)
        h = self.act(pre)
        if self.deep is not None:
            for layer in self.deep:
                pre = layer(h)
                J = torch.where(pre > 0, 1.0, slope).to(pre.dtype)[:, :, None] * (layer.weight @ J)
                h = self.act(pre)
        return h, J

    def affine_hidden(self) -> HiddenLayer | None:
        """The hidden layer as ``(weight (H, D), bias (H,), negative_slope)`` when the features
        are one LeakyReLU of an affine map of the code (``hidden_layers == 1``), else ``None``."""
        if self.deep is not None:
            return None
        return HiddenLayer(self.fc1.weight, self.fc1.bias, float(self.act.negative_slope))

    def output_layer(self) -> OutputLayer:
        """The output layer as ``(weight (3V, H), bias (3V,), scale)``: ``forward(z)`` is
        ``(scale * (weight @ hidden(z) + bias)).view(B, V, 3)``, rounding included."""
        return OutputLayer(self.fc2.weight, self.fc2.bias, self.scale)

    def output_rows(self, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights (3K, H) and biases (3K,) of the output rows of K vertices (long (K,)), scaled
        to mm: ``displacement[k] = (W @ hidden(z) + b)[3k : 3k + 3]`` (for fast landmark fitting:
        only those rows need evaluating)."""
        rows = (vertices[:, None] * 3 + torch.arange(3, device=vertices.device)).reshape(-1)
        return self.fc2.weight[rows] * self.scale, self.fc2.bias[rows] * self.scale

    def decode_vertices(self, z: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
        """Codes (B, D) -> displacements (B, K, 3), mm, of K vertices (long (K,)) only."""
        self._check_codes(z)
        W, b = self.output_rows(vertices)
        return (self.hidden(z) @ W.T + b).view(len(z), len(vertices), 3)

    def weights_stamp(self) -> tuple:
        """A cheap key that changes whenever a weight is replaced or written in place."""
        return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters()) + (
            float(self.scale),
            float(self.act.negative_slope),
        )

    def fingerprint(self) -> str:
        """Sums of the weight matrices, output layer first (float64, ``%.9e``, ``|``-joined):
        identifies the weights across processes (cache files)."""
        layers = [self.fc2, *(self.deep or [])[::-1], self.fc1]
        return "|".join(f"{float(m.weight.detach().double().sum()):.9e}" for m in layers)


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
