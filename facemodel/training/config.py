"""Training configuration: a pydantic model read from YAML/JSON with ``key=value`` overrides."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError
from ..networks.config import check_factor_hidden

__all__ = ["FactorSpec", "TrainConfig", "load_config", "ConfigError"]


class FactorSpec(BaseModel):
    """A factor of the model and where its training labels come from."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    code_dim: int = Field(gt=0)
    labels: Literal["identity", "expression", "viseme", "expression_clusters"] = Field(
        description="label source: dataset identity classes, expression labels, visemes derived from ICT mouth "
        "shapes, or expression labels where the data has them and k-means clusters of the blendshape weights "
        "everywhere else (every mesh labelled)"
    )
    clusters: int = Field(32, ge=2, description="number of blendshape clusters (labels: expression_clusters)")


class TrainConfig(BaseModel):
    """Every knob of a training run (paper values as defaults, paper §5.1 and supplement)."""

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
    # losses (Eq. 6 and 8)
    lambda_c: float = 0.1  # critic classification weight
    lambda_gan: float = 1.0  # lambda_1
    lambda_cls: float = 1.0  # lambda_2
    lambda_feat: float = 0.5  # lambda_3
    lambda_reg: float = 100.0  # lambda_4
    gp_weight: float = 10.0  # Gulrajani et al.
    instance_noise: float = 0.1  # sigma on the critic input
    # deviations for dense decoupling (0 / false = the paper): the critic's factor branches also
    # regress the data's identity coefficients and blendshape weights (weight lambda_regress,
    # real meshes only), and a fraction of the labelled factor's codes are drawn from the prior
    # instead of the label codes, so the feature loss covers codes users actually sample.
    lambda_regress: float = Field(0.0, ge=0)
    # ...and the generator is asked that two meshes sharing a factor's code get the same
    # regressed targets (mean squared difference of the standardised predictions)
    lambda_consistency: float = Field(0.0, ge=0)
    # ...and two meshes sharing the identity code are asked not to differ where the data's
    # expressions do not move the face (per-vertex weights from the within-identity motion of
    # the training meshes, see facemodel.training.rigidity)
    lambda_rigidity: float = Field(0.0, ge=0)
    # ...and two meshes sharing the expression code are asked to read the same blendshape
    # weights through a frozen linear read-out fitted on the data (facemodel.training.expression_meter)
    lambda_blendshape_consistency: float = Field(0.0, ge=0)
    # PCA modes of the frozen blendshape read-out (fewer: a better-conditioned meter that
    # high-frequency displacements cannot steer; docs/training.md "Session 7")
    meter_components: int = Field(300, ge=1)
    # ...and two meshes sharing the identity code (not the expression code) are asked to read
    # the same identity PCA coefficients through a frozen linear read-out (the mirror image)
    lambda_identity_consistency: float = Field(0.0, ge=0)
    # ...and two meshes sharing the identity code (not the expression code) are asked to differ
    # only inside the data's expression-motion subspace (PCA of same-identity mesh differences,
    # `motion_subspace_components` modes; facemodel.training.subspace), in mm^2 per vertex
    lambda_motion_subspace: float = Field(0.0, ge=0)
    motion_subspace_components: int = Field(128, ge=1)
    # ...and expression anchoring (facemodel.training.anchoring): a fixed linear map A from the
    # data's blendshape weights to expression codes (whitened principal axes of the expression
    # displacements), and for `anchor_pairs` same-person training pairs a step,
    # G(z, A(w_i)) - G(z, A(w_j)) must equal x_i - x_j (mm^2 per face-area vertex)
    lambda_expression_anchor: float = Field(0.0, ge=0)
    anchor_pairs: int = Field(32, ge=1)
    # ...and identity anchoring: every training identity a fixed code (whitened principal
    # components of its most neutral mesh), and `anchor_pairs` training meshes a step reproduced
    # whole from [its identity's code, A(its weights), random noise] (mm^2 per vertex)
    lambda_identity_anchor: float = Field(0.0, ge=0)
    # ...and extrapolation anchoring: `anchor_pairs` pairs of sparse random weight vectors u, v a
    # step, G(z, A(u)) - G(z, A(v)) must equal the fitted linear displacement (u - v) D (mm^2 per
    # vertex of D's subset): weight combinations the data lack add up as in a blendshape rig
    lambda_expression_extrapolation: float = Field(0.0, ge=0)
    # ...and two meshes sharing the identity code (but not the expression code) are asked to
    # read weights at least as different as two random meshes of one identity in the data do
    # (a hinge), so the expression code has to carry the expressions
    lambda_expression_spread: float = Field(0.0, ge=0)
    # ...or, by geometry: pairs sharing only the identity code must differ where expressions
    # move the face at least as much as two meshes of one person do in the data (a hinge)
    lambda_motion_spread: float = Field(0.0, ge=0)
    # ...or adversarially: a pair critic per factor tells real pairs sharing it (same person;
    # another person with the nearest blendshape weights) from generated pairs sharing its code
    # (facemodel.training.pairs); lambda_pair weighs its Wasserstein term for both networks
    lambda_pair: float = Field(0.0, ge=0)
    # ...or by local geometry: an expression code must deform every face alike; the spread over
    # identities of per-triangle deformation gradients (facemodel.training.transfer) on a grid of
    # transfer_identities x (transfer_expressions + 1) prior codes, transfer_triangles of them a step
    lambda_transfer: float = Field(0.0, ge=0)
    # ...and, against the identity collapse transfer consistency causes in displacement space:
    # pairs sharing only the expression code must differ where expressions leave the face still
    # at least as much as two people do in the data (a hinge; the identity twin of motion spread)
    lambda_identity_spread: float = Field(0.0, ge=0)
    transfer_identities: int = Field(4, ge=2)
    transfer_expressions: int = Field(4, ge=1)
    transfer_triangles: int = Field(4096, ge=0)  # triangles sampled per step (0: all)
    transfer_space: Literal["gradient", "displacement"] = "gradient"
    transfer_delta: float | None = Field(None, gt=0)  # pseudo-Huber knee (default 0.02 / 0.5 mm)
    transfer_relative: bool = False  # spread / deformation: shrinking expressions does not pay
    rigidity_scale_mm: float = Field(0.5, gt=0)
    prior_pairs: float = Field(0.0, ge=0, le=1)
    # ablations (paper Table 1)
    use_reg: bool = True
    use_feature_loss: bool = True
    classify: Literal["all", "identity"] = "all"
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
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. lr=1e-4)")
        key, value = item.split("=", 1)
        raw[key.strip()] = _parse_value(value.strip())
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid training config: {exc}") from exc
