"""The blendshape map of a :class:`~facemodel.model.FaceModel`: ICT blendshape weights <->
expression codes.

Two small learned functions, stored with the model (``expression_map.*`` tensors in
``model.safetensors``, :class:`ExpressionMapConfig` under ``expression_map`` in
``config.json``):

- ``to_code``: weights ``(B, 53)`` in ICT order -> expression codes ``(B, d_exp)``. Either a
  linear map ``W e + b`` or the same linear map plus a small residual MLP.
- ``to_weights``: expression codes -> weights in [0, 1]: a linear map clamped to [0, 1], or
  an MLP with a sigmoid output.

The generator stays what it is: a face driven by weights is ``G(z_id, to_code(e), z_noise)``,
so the expression deformation keeps the model's identity dependence and non-additivity.
Maps are learned from a dataset by :func:`facemodel.training.blendshape_map.learn_blendshape_map`
(``python -m facemodel.training.blendshape_map``); this module only runs them.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .blendshapes import ICT_NAMES
from .errors import FaceModelError

__all__ = ["ExpressionMapConfig", "ExpressionMap", "NoExpressionMapError", "LEARN_COMMAND"]

#: The command that adds a blendshape map to a model folder (quoted in error messages).
LEARN_COMMAND = "python -m facemodel.training.blendshape_map --model MODEL_DIR --data DATASET_DIR --out NEW_MODEL_DIR"


class NoExpressionMapError(FaceModelError, RuntimeError):
    """The model has no blendshape map (an export made before one was learned)."""


class ExpressionMapConfig(BaseModel):
    """``expression_map`` entry of a model's ``config.json``.

    Attributes:
        to_code: ``"linear"`` or ``"mlp"`` (linear plus a residual MLP).
        to_weights: ``"linear"`` (clamped to [0, 1]) or ``"mlp"`` (sigmoid output).
        hidden: width of the MLPs' hidden layer.
        num_weights: number of blendshape weights (53, ICT order).
        code_dim: size of the expression code.
        names: the weight names, ICT order.
        metrics: provenance: validation figures of the candidates, data, timings.
    """

    model_config = ConfigDict(frozen=True)

    to_code: Literal["linear", "mlp"] = "linear"
    to_weights: Literal["linear", "mlp"] = "linear"
    hidden: int = Field(64, gt=0)
    num_weights: int = Field(len(ICT_NAMES), gt=0)
    code_dim: int = Field(gt=0)
    names: list[str] = Field(default_factory=lambda: list(ICT_NAMES))
    metrics: dict = Field(default_factory=dict)


class _Mlp(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


class ExpressionMap(nn.Module):
    """ICT weights <-> expression codes (see the module docstring).

    Args:
        config: :class:`ExpressionMapConfig`.

    Shape:
        - ``to_code``: (B, 53) -> (B, d_exp)
        - ``to_weights``: (B, d_exp) -> (B, 53), in [0, 1]
    """

    def __init__(self, config: ExpressionMapConfig) -> None:
        super().__init__()
        self.config = config
        n, d, h = config.num_weights, config.code_dim, config.hidden
        self.code_linear = nn.Linear(n, d)
        self.code_mlp = _Mlp(n, h, d) if config.to_code == "mlp" else None
        if config.to_weights == "mlp":
            self.weights_mlp = _Mlp(d, h, n)
            self.weights_linear = None
        else:
            self.weights_linear = nn.Linear(d, n)
            self.weights_mlp = None

    def to_code(self, weights: torch.Tensor) -> torch.Tensor:
        """Expression codes (B, d_exp) of ICT weights (B, 53) (already validated, in [0, 1])."""
        z = self.code_linear(weights)
        if self.code_mlp is not None:
            z = z + self.code_mlp(weights)
        return z

    def weights_logits(self, codes: torch.Tensor) -> torch.Tensor:
        """Unbounded output of ``to_weights`` (training uses it; MLP: logits, linear: values)."""
        if self.weights_mlp is not None:
            return self.weights_mlp(codes)
        return self.weights_linear(codes)

    def to_weights(self, codes: torch.Tensor) -> torch.Tensor:
        """ICT weights (B, 53) in [0, 1] read from expression codes (B, d_exp)."""
        out = self.weights_logits(codes)
        return torch.sigmoid(out) if self.weights_mlp is not None else out.clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        c = self.config
        return f"to_code={c.to_code}, to_weights={c.to_weights}, hidden={c.hidden}, code_dim={c.code_dim}"
