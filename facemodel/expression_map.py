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

Shapes the training data never exercised (``fallback``; in our ICT build the 15 gaze, jaw
sideways/forward, mouth sideways and cheek-puff shapes, whose training weights never pass
0.03) cannot be learned: ``to_code`` ignores them and :meth:`ExpressionMap.displacement`
adds their fixed linear deltas (ICT-FaceKit's generic shapes, ``fallback_deltas``, mm) to
the generated vertices instead, so a tracker's gaze or cheek puff still moves the face.
Maps are learned from a dataset by :func:`facemodel.training.blendshape_map.learn_blendshape_map`
(``python -m facemodel.training.blendshape_map``); this module only runs them.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from .blendshapes import ICT_NAMES
from .errors import FaceModelError, NoExpressionMapError
from .networks.mlp import TanhMLP

__all__ = ["ExpressionMapConfig", "ExpressionMap", "NoExpressionMapError", "LEARN_COMMAND"]

#: The command that adds a blendshape map to a model folder (quoted in error messages).
LEARN_COMMAND = "python -m facemodel.training.blendshape_map --model MODEL_DIR --data DATASET_DIR --out NEW_MODEL_DIR"


class ExpressionMapConfig(BaseModel):
    """``expression_map`` entry of a model's ``config.json``.

    Attributes:
        to_code: ``"linear"`` or ``"mlp"`` (linear plus a residual MLP).
        to_weights: ``"linear"`` (clamped to [0, 1]) or ``"mlp"`` (sigmoid output).
        hidden: width of the MLPs' hidden layer.
        num_weights: number of blendshape weights (53, ICT order).
        code_dim: size of the expression code.
        names: the weight names, ICT order.
        fallback: names (ICT spelling) applied as fixed linear deltas, not through the code
            (shapes without training data); ``to_code`` ignores their weights.
        num_vertices: V of ``fallback_deltas`` (needed when ``fallback`` is not empty).
        metrics: provenance: validation figures of the candidates, data, timings.
    """

    model_config = ConfigDict(frozen=True)

    to_code: Literal["linear", "mlp"] = "linear"
    to_weights: Literal["linear", "mlp"] = "linear"
    hidden: int = Field(64, gt=0)
    num_weights: int = Field(len(ICT_NAMES), gt=0)
    code_dim: int = Field(gt=0)
    names: list[str] = Field(default_factory=lambda: list(ICT_NAMES))
    fallback: list[str] = Field(default_factory=list)
    num_vertices: int | None = Field(None, gt=0)
    metrics: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_fallback(self) -> "ExpressionMapConfig":
        unknown = [n for n in self.fallback if n not in self.names]
        if unknown:
            raise ValueError(f"fallback names {unknown} are not blendshape names of this map ({len(self.names)} ICT names)")
        if len(set(self.fallback)) != len(self.fallback):
            raise ValueError(f"fallback names repeat: {self.fallback}")
        if self.fallback and self.num_vertices is None:
            raise ValueError("a map with fallback shapes needs num_vertices (the size of their deltas)")
        return self


class ExpressionMap(nn.Module):
    """ICT weights <-> expression codes (see the module docstring).

    Args:
        config: :class:`ExpressionMapConfig`.

    Shape:
        - ``to_code``: (B, 53) -> (B, d_exp)
        - ``to_weights``: (B, d_exp) -> (B, 53), in [0, 1]
        - ``displacement``: (B, 53) -> (B, V, 3) mm, or ``None`` without fallback shapes
    """

    def __init__(self, config: ExpressionMapConfig) -> None:
        super().__init__()
        self.config = config
        n, d, h = config.num_weights, config.code_dim, config.hidden
        self.code_linear = nn.Linear(n, d)
        self.code_mlp = TanhMLP(n, h, d) if config.to_code == "mlp" else None
        if config.to_weights == "mlp":
            self.weights_mlp = TanhMLP(d, h, n)
            self.weights_linear = None
        else:
            self.weights_linear = nn.Linear(d, n)
            self.weights_mlp = None
        index = [config.names.index(name) for name in config.fallback]
        learned = torch.ones(n)
        learned[index] = 0
        self.register_buffer("learned_mask", learned, persistent=False)
        self.register_buffer("fallback_index", torch.tensor(index, dtype=torch.long), persistent=False)
        if index:  # saved with the map: (K, V, 3) mm
            self.register_buffer("fallback_deltas", torch.zeros(len(index), config.num_vertices, 3))
        else:
            self.fallback_deltas = None

    def to_code(self, weights: torch.Tensor) -> torch.Tensor:
        """Expression codes (B, d_exp) of ICT weights (B, 53) (already validated, in [0, 1]);
        the fallback shapes' weights are ignored (see :meth:`displacement`)."""
        if self.fallback_deltas is not None:
            weights = weights * self.learned_mask
        z = self.code_linear(weights)
        if self.code_mlp is not None:
            z = z + self.code_mlp(weights)
        return z

    def displacement(self, weights: torch.Tensor) -> torch.Tensor | None:
        """(B, V, 3) mm: the fallback shapes' linear deltas weighted by ``weights`` (B, 53),
        to add to the generated vertices; ``None`` when the map has no fallback shapes."""
        if self.fallback_deltas is None:
            return None
        k, v = self.fallback_deltas.shape[:2]
        return (weights[:, self.fallback_index] @ self.fallback_deltas.reshape(k, 3 * v)).view(-1, v, 3)

    def add_displacement_(self, vertices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Add :meth:`displacement` of ``weights`` (B or 1, 53) to ``vertices`` (B, V, 3) in place
        (no (B, V, 3) temporary: the fast path of ``facemodel animate``); returns ``vertices``."""
        if self.fallback_deltas is None:
            return vertices
        b, k = vertices.shape[0], self.fallback_deltas.shape[0]
        w = weights[:, self.fallback_index].to(vertices)
        if w.shape[0] != b:
            if w.shape[0] != 1:
                raise FaceModelError(f"{w.shape[0]} weight vectors for {b} faces: use one or one per face")
            w = w.expand(b, -1)
        vertices.view(b, -1).addmm_(w, self.fallback_deltas.reshape(k, -1).to(vertices))
        return vertices

    def with_fallback(self, deltas: dict[str, torch.Tensor]) -> "ExpressionMap":
        """A copy of this map whose shapes ``deltas`` (name -> (V, 3) mm) are applied as fixed
        linear deltas instead of through the code."""
        names = [n for n in self.config.names if n in deltas]
        if len(names) != len(deltas):
            raise FaceModelError(f"unknown blendshape names {sorted(set(deltas) - set(names))}")
        stack = torch.stack([torch.as_tensor(deltas[n], dtype=torch.float32) for n in names]) if names else None
        if stack is not None and (stack.ndim != 3 or stack.shape[2] != 3):
            raise FaceModelError(f"fallback deltas must each be (V, 3), got {tuple(stack.shape[1:])}")
        cfg = self.config.model_copy(update={"fallback": names, "num_vertices": None if stack is None else stack.shape[1]})
        out = ExpressionMap(cfg)
        state = {k: v for k, v in self.state_dict().items() if k != "fallback_deltas"}
        if stack is not None:
            state["fallback_deltas"] = stack
        out.load_state_dict(state)
        return out.to(self.code_linear.weight)

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
        return (f"to_code={c.to_code}, to_weights={c.to_weights}, hidden={c.hidden}, code_dim={c.code_dim}, "
                f"fallback={len(c.fallback)}")
