"""A small two-layer tanh MLP (the blendshape map's residual and read-back networks)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TanhMLP"]


class TanhMLP(nn.Module):
    """``x -> Linear(hidden) -> tanh -> Linear(n_out)``.

    Shape:
        - input: (B, n_in)
        - output: (B, n_out)
    """

    def __init__(self, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)  # state_dict keys fc1.* / fc2.* (saved models)
        self.fc2 = nn.Linear(hidden, n_out)

    @property
    def input_layer(self) -> nn.Linear:
        """The first (n_in -> hidden) layer (e.g. to fold an input standardisation into it)."""
        return self.fc1

    @property
    def output_layer(self) -> nn.Linear:
        """The last (hidden -> n_out) layer (e.g. to start it at zero or at a bias)."""
        return self.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))
