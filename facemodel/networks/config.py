"""Configuration of the generator: latent factors and sizes (pydantic, JSON round trip)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

__all__ = ["Factor", "GeneratorConfig", "check_factor_hidden"]


def check_factor_hidden(widths: tuple[int, ...] | list[int], num_factors: int, hidden: int) -> None:
    """Raise ``ValueError`` naming the fix unless ``widths`` gives one width >= 1 per factor
    and leaves at most ``hidden`` units in all."""
    if len(widths) != num_factors:
        raise ValueError(f"factor_hidden needs one width per factor ({num_factors}), got {list(widths)}")
    if min(widths) < 1:
        raise ValueError(f"factor_hidden widths must be >= 1, got {list(widths)} (use None for the dense layer)")
    if sum(widths) > hidden:
        raise ValueError(
            f"factor_hidden {list(widths)} sums to {sum(widths)} > hidden {hidden}: lower the widths or raise hidden"
        )


class Factor(BaseModel):
    """One controllable factor of variation (identity, expression, viseme, ...).

    Attributes:
        name: factor name, also the key of its critic classifier branch.
        code_dim: size of its latent code (paper: identity 65, expression 15).
        num_labels: number of classes of its auxiliary classifier (training labels).
    """

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    code_dim: int = Field(gt=0)
    num_labels: int = Field(gt=0)


class GeneratorConfig(BaseModel):
    """Generator architecture (supplement Fig. 11a): ``z -> Linear(hidden) -> LReLU -> Linear(3V)``
    (``hidden_layers`` > 1: more ``Linear(hidden) -> LReLU`` layers before the output layer).

    Attributes:
        num_vertices: V, vertices of the template.
        factors: the labelled factors, in code order (default identity then expression).
        noise_dim: size of the unlabelled noise code (paper: 5).
        hidden: width of the hidden layer (paper: 512).
        hidden_layers: number of hidden layers (paper: 1). Deeper generators work with every
            consumer of the :class:`~facemodel.networks.Generator` interface; only the paper's
            one layer has fitting's exact piecewise-linear line search. Not written to
            ``config.json`` at its default, so the paper's configs stay as they were.
        negative_slope: LeakyReLU slope (paper: 0.2).
        displacement_scale_mm: the raw network output is multiplied by this to give
            displacements in mm; keeps the network's numbers near unit scale.
        factor_hidden: ``None`` (the paper): every hidden unit sees the whole code. Otherwise one
            width per factor, in factor order: that many hidden units see only their factor's
            code (the first factor's units also see the noise code), and the remaining
            ``hidden - sum(factor_hidden)`` units see the whole code and carry the interaction
            (identity-dependent expression). With no interaction units the output is a sum of
            one function per factor, so an expression code moves every identity alike.
    """

    model_config = ConfigDict(frozen=True)

    num_vertices: int = Field(gt=0)
    factors: tuple[Factor, ...] = Field(min_length=1)
    noise_dim: int = Field(5, ge=0)
    hidden: int = Field(512, gt=0)
    hidden_layers: int = Field(1, ge=1)
    negative_slope: float = 0.2
    displacement_scale_mm: float = Field(10.0, gt=0)
    factor_hidden: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> "GeneratorConfig":
        names = [f.name for f in self.factors]
        if len(set(names)) != len(names):
            raise ValueError(f"factor names must be unique, got {names}")
        if self.factor_hidden is not None:
            check_factor_hidden(self.factor_hidden, len(self.factors), self.hidden)
        return self

    @model_serializer(mode="wrap")
    def _drop_default_depth(self, handler):
        data = handler(self)
        if self.hidden_layers == 1:  # the paper's architecture: configs stay byte-identical
            data.pop("hidden_layers", None)
        return data

    @property
    def interaction_hidden(self) -> int:
        """Hidden units that see the whole code (all of them for the paper's dense layer)."""
        return self.hidden - sum(self.factor_hidden or ())

    @property
    def code_dim(self) -> int:
        """Total size of ``z = [z_factor_1, ..., z_factor_k, z_noise]``."""
        return sum(f.code_dim for f in self.factors) + self.noise_dim

    def factor(self, name: str) -> Factor:
        for f in self.factors:
            if f.name == name:
                return f
        raise KeyError(f"no factor {name!r}; factors are {[f.name for f in self.factors]}")

    def code_slices(self) -> dict[str, slice]:
        """Slices of each factor (and ``"noise"``) inside ``z``."""
        out, start = {}, 0
        for f in self.factors:
            out[f.name] = slice(start, start + f.code_dim)
            start += f.code_dim
        out["noise"] = slice(start, start + self.noise_dim)
        return out
