"""``FaceModel``: the trained generator with its template and label codes, saved as
``config.json`` + ``model.safetensors`` (no pickle)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save
from torch import nn

from ._fs import atomic_file, check_writable_parent
from .errors import FaceModelError
from .networks.config import GeneratorConfig
from .networks.generator import Generator

__all__ = ["FaceModel", "FaceModelConfig", "WeightsNotFoundError", "WeightsFormatError"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


class WeightsNotFoundError(FaceModelError, FileNotFoundError):
    """No ``config.json`` / ``model.safetensors`` where weights were expected."""


class WeightsFormatError(FaceModelError, ValueError):
    """Weights or config do not match the model (missing/unexpected tensors, bad config)."""


class FaceModelConfig(BaseModel):
    """``config.json`` of a saved model."""

    format: str = "facemodel"
    format_version: int = FORMAT_VERSION
    generator: GeneratorConfig
    label_names: dict[str, list[str]] = Field(default_factory=dict, description="factor -> names of its label codes")
    template_name: str = "ict-face"
    units: str = "mm"
    training: dict = Field(default_factory=dict, description="provenance: config, steps, dataset checksum")


class FaceModel(nn.Module):
    """Generator + template: codes -> face meshes in millimetres.

    Buffers: ``template`` (V, 3) float mm, ``faces`` (F, 3) long, ``uv`` (V, 2),
    ``landmarks`` (L,) long vertex indices, ``codes_<factor>`` (num_labels, code_dim).

    Args:
        config: :class:`FaceModelConfig`.
        template, faces, uv, landmarks: template arrays (zeros when loading weights).
        label_codes: {factor: (num_labels, code_dim)} fixed label codes.
    """

    def __init__(
        self,
        config: FaceModelConfig,
        template: np.ndarray | torch.Tensor | None = None,
        faces: np.ndarray | torch.Tensor | None = None,
        uv: np.ndarray | torch.Tensor | None = None,
        landmarks: np.ndarray | torch.Tensor | None = None,
        label_codes: dict[str, torch.Tensor] | None = None,
        *,
        num_faces: int | None = None,
        num_landmarks: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        g = config.generator
        V = g.num_vertices
        self.generator = Generator(g)

        def buf(x, shape, dtype):
            t = torch.zeros(shape, dtype=dtype) if x is None else torch.as_tensor(np.asarray(x)).to(dtype)
            if tuple(t.shape) != tuple(shape):
                raise WeightsFormatError(f"expected shape {tuple(shape)}, got {tuple(t.shape)}")
            return t

        nf = len(faces) if faces is not None else (num_faces or 0)
        nl = len(landmarks) if landmarks is not None else (num_landmarks or 0)
        self.register_buffer("template", buf(template, (V, 3), torch.float32))
        self.register_buffer("faces", buf(faces, (nf, 3), torch.long))
        self.register_buffer("uv", buf(uv, (V, 2), torch.float32))
        self.register_buffer("landmarks", buf(landmarks, (nl,), torch.long))
        for f in g.factors:
            codes = None if label_codes is None else label_codes[f.name]
            self.register_buffer(f"codes_{f.name}", buf(codes, (f.num_labels, f.code_dim), torch.float32))

    @property
    def num_vertices(self) -> int:
        return self.config.generator.num_vertices

    def label_codes(self, factor: str) -> torch.Tensor:
        """(num_labels, code_dim) fixed codes of a factor's training labels."""
        return getattr(self, f"codes_{factor}")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (B, D) -> vertices (B, V, 3) in mm."""
        return self.template + self.generator(z)

    # ---- serialisation ---------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (atomically each).

        Unwraps ``torch.compile`` / DDP prefixes; tensors are stored contiguous float32/int64.
        """
        directory = Path(directory)
        check_writable_parent(directory / CONFIG_NAME)
        state = {k.replace("_orig_mod.", "").replace("module.", ""): v.detach().cpu().contiguous()
                 for k, v in self.state_dict().items()}  # fmt: skip
        with atomic_file(directory / WEIGHTS_NAME, "wb") as f:
            f.write(save(state, metadata={"format": "pt", "facemodel_format_version": str(FORMAT_VERSION)}))
        with atomic_file(directory / CONFIG_NAME, "w") as f:
            f.write(json.dumps(self.config.model_dump(mode="json"), indent=2, sort_keys=True))
        return directory

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> "FaceModel":
        """Load a model saved by :meth:`save_pretrained` from a local folder (strict).

        Raises:
            WeightsNotFoundError: the folder lacks config.json or model.safetensors.
            WeightsFormatError: invalid config, or tensors missing / unexpected / misshaped.
        """
        path = Path(path).expanduser()
        cfg_path, w_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not cfg_path.is_file() or not w_path.is_file():
            raise WeightsNotFoundError(
                f"{str(path)!r} does not hold a facemodel ({CONFIG_NAME} + {WEIGHTS_NAME}); "
                "pass a folder written by save_pretrained"
            )
        try:
            config = FaceModelConfig.model_validate_json(cfg_path.read_text())
        except Exception as exc:
            raise WeightsFormatError(f"{str(cfg_path)!r} is not a valid facemodel config: {exc}") from exc
        if config.format_version > FORMAT_VERSION:
            raise WeightsFormatError(f"weights format {config.format_version} is newer than this facemodel; upgrade it")
        state = load_file(str(w_path))
        model = cls(
            config,
            num_faces=state["faces"].shape[0] if "faces" in state else 0,
            num_landmarks=state["landmarks"].shape[0] if "landmarks" in state else 0,
        )
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsFormatError(f"{str(w_path)!r} does not match its config: {exc}") from exc
        model.eval()
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model

