"""The generator contract: what the model, fitting, the blendshape map and the evaluation may
ask of a generator (:class:`~facemodel.networks.Generator` implements it).

A generator maps codes ``z`` (B, D) to per-vertex displacements (B, V, 3) in mm through hidden
features ``h(z)`` (B, H) and an output layer affine in them: ``G(z) = W h(z) + b`` (3V rows).
Consumers that need only a few vertices (landmark fitting, the blendshape map's training, the
evaluation's vertex subsets) read those vertices' output rows once and evaluate ``h`` only.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .config import GeneratorConfig

__all__ = ["GeneratorInterface"]


@runtime_checkable
class GeneratorInterface(Protocol):
    """Codes -> displacements, seen by its consumers (no layer names).

    Attributes:
        config: the :class:`GeneratorConfig` (code layout, sizes).
        device, dtype: where and in what the weights are (codes are computed there).
        hidden_dim: H, the number of hidden features.
    """

    config: GeneratorConfig

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def hidden_dim(self) -> int: ...

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D) codes -> (B, V, 3) displacements, mm."""
        ...

    def hidden(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D) codes -> (B, H) hidden features (the output layer's input)."""
        ...

    def hidden_jacobian(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) codes -> features (B, H) and their Jacobian d h / d z (B, H, D)."""
        ...

    def affine_hidden(self):
        """``HiddenLayer(weight (H, D), bias (H,), negative_slope)`` when ``h = lrelu(W z + b)``
        (one hidden layer: fitting's exact fast path), else ``None``."""
        ...

    def output_layer(self):
        """``OutputLayer(weight (3V, H), bias (3V,), scale)`` with ``G(z) = scale * (weight @ h(z) + bias)``
        (the parameters themselves: inference paths without autograd evaluate it directly)."""
        ...

    def output_rows(self, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K vertex ids -> the output layer's rows: weights (3K, H), biases (3K,), in mm."""
        ...

    def decode_vertices(self, z: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
        """(B, D) codes, K vertex ids -> (B, K, 3) displacements of those vertices, mm."""
        ...

    def weights_stamp(self) -> tuple:
        """A key that changes whenever a weight is replaced or written in place (caches)."""
        ...

    def fingerprint(self) -> str:
        """A string identifying the weights' values across processes (cache files)."""
        ...
