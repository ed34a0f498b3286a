"""Training configuration: a pydantic model read from YAML/JSON with ``key=value`` overrides."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from ..errors import ConfigError
from ..networks.config import check_factor_hidden
from .terms import TERMS

__all__ = ["FactorSpec", "TrainConfig", "load_config", "ConfigError", "FLAT_KEYS"]


class FactorSpec(BaseModel):
    """A factor of the model and where its training labels come from."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    code_dim: int = Field(gt=0)
    labels: Literal["identity", "expression"] = Field(
        description="label source: dataset identity classes or expression labels; it is also the factor's role "
        "for the terms that need one (the first factor of each source)"
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_removed(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            if raw.get("labels") in REMOVED_LABELS:
                raise ValueError(f"label source {raw['labels']!r} was removed with its experiment (commit {REMOVED_AT}, "
                                 "docs/training.md); use labels: identity or expression")  # fmt: skip
            raw = {k: v for k, v in raw.items() if k != "clusters"}  # the k-means clusters' count (removed)
        return raw


#: old flat keys (configs of 0.3.x and before) -> (term, knob) paths they set
FLAT_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "lambda_gan": (("adversarial", "weight"),),
    "gp_weight": (("adversarial", "gradient_penalty"),),
    "lambda_cls": (("classification", "weight"),),
    "lambda_c": (("classification", "critic_weight"),),
    "classify": (("classification", "factors"),),
    "lambda_feat": (("feature", "weight"),),
    "lambda_reg": (("laplacian", "weight"),),
    "lambda_regress": (("regression", "weight"),),
    "lambda_consistency": (("consistency", "weight"),),
    "lambda_rigidity": (("rigidity", "weight"),),
    "rigidity_scale_mm": (("rigidity", "scale_mm"), ("motion_spread", "scale_mm")),
    "lambda_motion_spread": (("motion_spread", "weight"),),
    "lambda_blendshape_consistency": (("blendshape_consistency", "weight"),),
    "meter_components": (("blendshape_consistency", "components"), ("expression_spread", "components")),
    "lambda_expression_spread": (("expression_spread", "weight"),),
    "lambda_motion_subspace": (("motion_subspace", "weight"),),
    "motion_subspace_components": (("motion_subspace", "components"),),
    "lambda_expression_anchor": (("expression_anchor", "weight"),),
    "lambda_identity_anchor": (("identity_anchor", "weight"),),
    "anchor_pairs": (("expression_anchor", "pairs"), ("identity_anchor", "pairs")),
}
#: old ablation switches (paper Table 1): false sets the term's weight to 0
SWITCHES = {"use_reg": "laplacian", "use_feature_loss": "feature"}
#: the commit that last had the experiments removed since (docs/training.md keeps their record)
REMOVED_AT = "4031c19"
#: weights of removed terms: accepted at 0 (old run folders record them), refused otherwise
REMOVED_WEIGHTS = ("lambda_identity_consistency", "lambda_expression_extrapolation", "lambda_pair", "lambda_transfer",
                   "lambda_identity_spread")  # fmt: skip
#: knobs of removed terms, dropped
REMOVED_KNOBS = ("transfer_identities", "transfer_expressions", "transfer_triangles", "transfer_space", "transfer_delta",
                 "transfer_relative")  # fmt: skip
REMOVED_LABELS = ("viseme", "expression_clusters")


def migrate_flat_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """Map the old flat keys of ``raw`` onto the terms' nested knobs (other keys unchanged).

    Raises:
        ValueError: a removed term has a weight other than 0.
    """
    out = {k: v for k, v in raw.items() if k not in FLAT_KEYS and k not in SWITCHES and k not in REMOVED_KNOBS}
    for key in REMOVED_WEIGHTS:
        if out.pop(key, 0) not in (0, 0.0, None):
            raise ValueError(f"{key} was removed with its experiment (commit {REMOVED_AT}; docs/training.md has its "
                             "record); set it to 0 or drop it")  # fmt: skip
    for key, paths in FLAT_KEYS.items():
        if key in raw:
            for term, knob in paths:
                out[term] = {**dict(out.get(term) or {}), knob: raw[key]}
    for key, term in SWITCHES.items():
        if key in raw and not raw[key]:
            out[term] = {**dict(out.get(term) or {}), "weight": 0.0}
    return out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: one field per loss term of :data:`~facemodel.training.terms.TERMS` (its name: its config; weight 0 = off)
_TermFields = create_model("_TermFields", __base__=_Strict,
                           **{T.name: (T.Config, Field(default_factory=T.Config)) for T in TERMS})  # fmt: skip


class TrainConfig(_TermFields):
    """Every knob of a training run (paper values as defaults, paper §5.1 and supplement).

    Each loss term's knobs sit under the term's name (:mod:`facemodel.training.terms`: the
    paper's ``adversarial``, ``classification``, ``feature``, ``laplacian``; our deviations,
    all off by default, docs/training.md), e.g.
    ``rigidity: {weight: 100, scale_mm: 0.5}``; a term is on when its weight is > 0. The old
    flat keys (``lambda_rigidity``, ``rigidity_scale_mm``... of the 0.3.x configs) are still
    read (:data:`FLAT_KEYS`), and :meth:`legacy_flat` gives that view back.
    """

    model_config = ConfigDict(extra="forbid")

    # data
    data: str = Field(description="dataset folder (facemodel data build-ict / import)")
    seed: int = 0
    # model (supplement Fig. 11)
    factors: list[FactorSpec] = Field(
        default_factory=lambda: [
            FactorSpec(name="identity", code_dim=65, labels="identity"),
            FactorSpec(name="expression", code_dim=15, labels="expression"),
        ]
    )
    noise_dim: int = 5
    hidden: int = 512
    resolution: int = 64
    displacement_scale_mm: float = 10.0
    # factorised first layer (docs/training.md "Session 7"): one hidden width per
    # factor whose units see only that factor's code; the rest of `hidden` see the whole code.
    # None: the paper's dense layer.
    factor_hidden: list[int] | None = None
    # geometry image: edges among vertices with index >= uv_face_vertices (ICT: back of the head,
    # neck, ears) are made `uv_stiffness` times stiffer in the harmonic map, so the face proper
    # covers more of the critic's pixels (1 = the paper's plain harmonic map).
    uv_stiffness: float = Field(1.0, gt=0)
    uv_face_vertices: int = Field(6706, ge=1)
    instance_noise: float = 0.1  # sigma on the critic input
    # a fraction of each batch's pairs take the labelled factor's code from the prior instead of
    # the label codes (our deviation; 0 = the paper), so the pair terms cover the codes users sample
    prior_pairs: float = Field(0.0, ge=0, le=1)
    # optimisation
    critic_steps: int = 3
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: float = 200.0  # one epoch = the critic has seen every training mesh once
    max_steps: int | None = None  # generator steps; overrides epochs when set
    ema_decay: float = 0.999
    # infrastructure
    device: str = "auto"
    threads: int | None = None  # CPU threads for torch (None = torch's default, all cores)
    bf16: bool = False
    # keep the training split's stored offsets (float16: 1.3 GB for ICT 4D) in the training
    # device's memory and gather batches there: on a GPU this removes the per-step CPU gather
    # and host-to-device copy (~13 of 47 ms per step on an H200, docs/benchmarks.md)
    data_on_device: bool = False
    compile: bool = False
    checkpoint_every: int = 200  # generator steps
    log_every: int = 20
    sample_every: int = 1000
    eval_every: int = 1000
    snapshot_every: int = 0  # export the EMA generator to OUT/snapshots/stepNNNNNNN every N steps (0: off)
    eval_samples: int = 256

    @model_validator(mode="before")
    @classmethod
    def _flat_keys(cls, raw: Any) -> Any:
        return migrate_flat_keys(raw) if isinstance(raw, dict) else raw

    @model_validator(mode="after")
    def _check_factor_hidden(self) -> "TrainConfig":
        if self.factor_hidden is not None:
            check_factor_hidden(self.factor_hidden, len(self.factors), self.hidden)
        return self

    @classmethod
    def from_file(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> "TrainConfig":
        return load_config(path, overrides)

    def to_file(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.model_dump_json(indent=2))

    def role(self, role: str) -> str | None:
        """Name of the factor playing ``role`` (the first whose ``labels`` is ``role``), or None."""
        return next((f.name for f in self.factors if f.labels == role), None)

    def require_role(self, role: str, what: str) -> str:
        """:meth:`role`, or ConfigError naming ``what`` needs it."""
        name = self.role(role)
        if name is None:
            raise ConfigError(f"{what} needs a factor with `labels: {role}` in `factors`; add one or set the "
                              "term's weight to 0")  # fmt: skip
        return name

    def legacy_flat(self) -> dict[str, Any]:
        """The config as the 0.3.x flat keys (``lambda_rigidity``...), JSON values: the view the
        old configs' effective recipes are pinned in (tests/data/configs_before.json)."""
        flat = self.model_dump(mode="json", exclude={T.name for T in TERMS})
        for key, ((term, knob), *_) in FLAT_KEYS.items():
            flat[key] = getattr(getattr(self, term), knob)
        flat.update({key: getattr(self, term).weight > 0 for key, term in SWITCHES.items()})
        return flat


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string, e.g. data=/path


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML or JSON config and apply ``key=value`` overrides (values parsed as JSON).

    Raises:
        ConfigError: missing file, bad YAML/JSON, unknown key, invalid value.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist (see configs/ for examples)")
        text = p.read_text()
        try:
            if p.suffix in (".yaml", ".yml"):
                import yaml

                raw = yaml.safe_load(text) or {}
            else:
                raw = json.loads(text)
        except Exception as exc:
            raise ConfigError(f"cannot parse {str(p)!r}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{str(p)!r} must hold a mapping of config keys")
    try:
        raw = migrate_flat_keys(raw)
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key=value (e.g. lr=1e-4, rigidity.weight=100)")
            key, value = item.split("=", 1)
            *path, last = key.strip().split(".")  # term.knob sets one knob of a term
            layer = {last: _parse_value(value.strip())}
            for part in reversed(path):
                layer = {part: layer}
            _merge(raw, migrate_flat_keys(layer))
        return TrainConfig.model_validate(raw)
    except (ValidationError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"invalid training config: {exc}") from exc


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    """Merge ``new`` into ``into``, nested mappings key by key."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v
