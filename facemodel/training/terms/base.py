"""What a loss term is: a pydantic config, a setup from the data, a value from a step context.

A term is on when its weight is > 0 (:attr:`TermConfig.weight`; a term with a critic part may
add a second weight). The training loop builds the terms that are on, in the order of
:data:`facemodel.training.terms.TERMS`, and sums what their :meth:`Term.critic` and
:meth:`Term.generator` return; the log names are the keys of the dictionaries they return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # annotations only: the config imports the terms
    from ...data.dataset import FaceDataset
    from ...geometry.template import Template
    from ...networks.config import GeneratorConfig
    from ..codes import CodeBatch
    from ..config import TrainConfig
    from ..discriminator import Critic, CriticOutput

__all__ = ["TermConfig", "Term", "Setup", "CriticContext", "GeneratorContext", "Contribution"]

#: (weighted loss or None, {log name: value}) of one term at one step
Contribution = tuple["torch.Tensor | None", dict[str, float]]


class TermConfig(BaseModel):
    """Knobs of one loss term; ``weight`` 0 switches it off."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(0.0, ge=0, description="the term's weight in the generator loss (0: off)")


@dataclass
class Setup:
    """What a term may read when it is set up (before the networks are built).

    Fits that several terms share (a blendshape read-out, the expression anchor) go through
    :meth:`shared`, so they run once.
    """

    config: TrainConfig
    data: FaceDataset
    gen_config: GeneratorConfig
    template: Template
    device: torch.device
    labels: dict[str, torch.Tensor]  # {factor: (N,) long} training-mesh labels, CPU
    classified: tuple[str, ...]
    _cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.config.seed

    def shared(self, key: Any, fit: Callable[[], Any]) -> Any:
        """``fit()``, run once per ``key`` and setup."""
        if key not in self._cache:
            self._cache[key] = fit()
        return self._cache[key]


@dataclass
class CriticContext:
    """One critic step: a real batch and a generated one, both (B, V, 3) mm displacements."""

    real: torch.Tensor
    fake: torch.Tensor
    out_real: CriticOutput  # critic outputs with instance noise
    out_fake: CriticOutput
    rows: np.ndarray  # (B,) training rows of ``real``
    labels: dict[str, torch.Tensor]  # {classified factor: (B,) long} labels of ``real``
    critic: Critic
    device: torch.device


@dataclass
class GeneratorContext:
    """One generator step: the batch's codes, its displacements and the critic's view of them.

    Terms ask for factors by role (:meth:`factor`, :meth:`shares`), never by position.
    """

    batch: CodeBatch
    d: torch.Tensor  # (B, V, 3) generated displacements, mm, float32
    out: CriticOutput
    config: TrainConfig
    data: FaceDataset
    template: torch.Tensor  # (V, 3) template vertices, mm, on the training device
    device: torch.device
    generate: Callable[[torch.Tensor], torch.Tensor]  # (M, D) codes -> (M, V, 3) mm, float32
    rng: Callable[[int], np.random.Generator]  # numpy generator of this step and a term's tag
    code_dim: int

    @property
    def a(self) -> torch.Tensor:
        """(P,) first rows of the batch's pairs (they share every unlabelled factor's code)."""
        return self.batch.pairs[:, 0]

    @property
    def b(self) -> torch.Tensor:
        """(P,) second rows of the pairs."""
        return self.batch.pairs[:, 1]

    def factor(self, role: str) -> str | None:
        """Name of the factor playing ``role`` ("identity", "expression"), or None."""
        return self.config.role(role)

    def shares(self, role: str) -> bool:
        """Whether this step's pairs share the code of the factor playing ``role``."""
        return self.batch.labelled != self.factor(role)

    def zero(self) -> torch.Tensor:
        """A differentiable 0 on the generated batch (a term that does not apply this step)."""
        return self.d.sum() * 0


class Term:
    """A loss term. Subclasses set :attr:`name` (its config key), :attr:`Config` and :attr:`logs`."""

    name: ClassVar[str]
    Config: ClassVar[type[TermConfig]]
    logs: ClassVar[tuple[str, ...]] = ()  # the names :meth:`generator` / :meth:`critic` log
    #: the paper's terms keep their log columns (at 0) when an ablation switches them off
    always_logged: ClassVar[bool] = False

    def __init__(self, config: TermConfig) -> None:
        self.config = config
        #: {factor: number of regressed targets}: critic heads this term needs
        self.critic_targets: dict[str, int] = {}

    @property
    def on(self) -> bool:
        return self.config.weight > 0

    def setup(self, s: Setup) -> None:
        """Fit what the term needs from the training data (default: nothing)."""

    def critic(self, ctx: CriticContext) -> Contribution:
        """Weighted contribution to the critic loss (default: none)."""
        return None, {}

    def generator(self, ctx: GeneratorContext) -> Contribution:
        """Weighted contribution to the generator loss (default: none)."""
        return None, {}
