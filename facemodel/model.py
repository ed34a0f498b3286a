"""``FaceModel``: the trained generator with its template and label codes, saved as
``config.json`` + ``model.safetensors`` (no pickle)."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save
from torch import nn

from ._fs import atomic_file, check_writable_parent
from ._validate import all_finite, as_number_tensor, check_batch, check_finite, check_float, check_int, face_bytes
from .errors import ArgumentTypeError, FaceModelError, InvalidArgumentError, UnknownLabelError, WeightsFormatError, WeightsNotFoundError
from .expression_map import LEARN_COMMAND, ExpressionMap, ExpressionMapConfig, NoExpressionMapError
from .hub import CONFIG_NAME, WEIGHTS_NAME
from .networks.config import GeneratorConfig
from .networks.generator import Generator
from .outputs import Faces

__all__ = ["FaceModel", "FaceModelConfig", "WeightsNotFoundError", "WeightsFormatError", "UnknownLabelError", "CodeSpec",
           "NoExpressionMapError"]  # fmt: skip

FORMAT_VERSION = 1

#: Output-layer dtypes :meth:`FaceModel.set_inference_dtype` accepts besides ``None`` (float32).
#: bfloat16 is refused: its weights alone move vertices by up to 0.033 mm on N(0, I) codes, over
#: the 0.01 mm budget (float16: 0.004 mm; docs/benchmarks.md "Decode vs bare matvec").
INFERENCE_DTYPES = (torch.float16,)


#: A factor code given as a tensor ((d,) or (n, d)), a label name, a label index, or a list of those;
#: for the expression also a dict of blendshape weights (``{"jawOpen": 0.8}``, needs a blendshape map).
CodeSpec = Union[torch.Tensor, np.ndarray, str, int, Sequence[Union[str, int]], Mapping[str, object], None]


#: values of ``FaceModel.sample(expression_prior=...)``
EXPRESSION_PRIORS = ("auto", "blendshapes", "gaussian")


class FaceModelConfig(BaseModel):
    """``config.json`` of a saved model."""

    format: str = "facemodel"
    format_version: int = FORMAT_VERSION
    generator: GeneratorConfig
    label_names: dict[str, list[str]] = Field(default_factory=dict, description="factor -> names of its label codes")
    template_name: str = "ict-face"
    units: str = "mm"
    training: dict = Field(default_factory=dict, description="provenance: config, steps, dataset checksum")
    expression_map: ExpressionMapConfig | None = Field(
        None, description="blendshape weights <-> expression codes (absent in exports made before one was learned)"
    )


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
        # decode's low-precision output layer (set_inference_dtype): the dtype, and the prepacked
        # copy keyed by the weights' and template's storage and versions (rebuilt when they change)
        self._inference_dtype: torch.dtype | None = None
        self._half_cache: tuple | None = None
        self.expression_map: ExpressionMap | None = None
        if config.expression_map is not None:
            self.expression_map = ExpressionMap(self._check_map_config(config.expression_map))

    @property
    def num_vertices(self) -> int:
        return self.config.generator.num_vertices

    def label_codes(self, factor: str) -> torch.Tensor:
        """(num_labels, code_dim) fixed codes of a factor's training labels."""
        return getattr(self, f"codes_{factor}")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (B, D) -> vertices (B, V, 3) in mm.

        Always float32 (the model's dtype), never :attr:`inference_dtype`. Without autograd
        (``torch.no_grad()``, :meth:`decode`) it runs the output layer in place on its own
        output, the same values to the bit as ``template + generator(z)``, which it runs
        when gradients are recorded.
        """
        if torch.is_grad_enabled():
            return self.template + self.generator(z)
        return self._vertices(z)

    def _vertices(self, z: torch.Tensor, *, half: bool = False) -> torch.Tensor:
        """``template + generator(z)`` without autograd and without temporaries: (B, D) -> (B, V, 3) mm.

        ``half``: through the float16 output layer (:meth:`set_inference_dtype`) when it applies.
        """
        g = self.generator
        layer = getattr(g, "output_layer", None)
        if layer is None:  # a generator without the accessor: its own forward
            return self.template + g(z)
        D = self.config.generator.code_dim
        if z.ndim != 2 or z.shape[1] != D:
            raise FaceModelError(f"codes must have shape (B, {D}), got {tuple(z.shape)}")
        h = g.hidden(z)
        if half:
            packed = self._half_output_layer()
            if packed is not None:  # template and scale are folded into its float32 bias
                return torch.ops.quantized.linear_dynamic_fp16(h.contiguous(), packed).view(z.shape[0], -1, 3)
        W, b, scale = layer()
        y = F.linear(h, W, b)  # what the generator's forward computes, then its "* scale" and "template +"
        y.mul_(scale)
        return y.view(z.shape[0], -1, 3).add_(self.template)

    # ---- inference precision ----------------------------------------------------------
    @property
    def inference_dtype(self) -> torch.dtype | None:
        """dtype of the output layer's copy :meth:`decode` uses (``torch.float16``), or ``None``:
        the model's own weights (float32). Set with :meth:`set_inference_dtype`."""
        return getattr(self, "_inference_dtype", None)

    def set_inference_dtype(self, dtype: torch.dtype | None) -> "FaceModel":
        """Decode through a lower-precision copy of the output layer (inference only).

        The output layer (512 -> 3 x 9409, 58 MB in float32) is all of a decode's time: its
        weights are read once per code. With ``torch.float16`` :meth:`decode` (and so
        :meth:`sample`, :meth:`transfer_expression`, :meth:`add_expressions`, :meth:`encode`'s
        meshes) reads a float16 copy (29 MB more memory), with float32 codes, hidden
        features, accumulation, bias and template, through PyTorch's FBGEMM kernel: about
        2x faster on one CPU thread. Vertices move by at most 0.004 mm (RMS 0.0005 mm) from
        the float32 decode on N(0, I) codes (docs/benchmarks.md "Decode vs bare matvec";
        the tests hold it to 0.01 mm).
        ``model(z)``, fitting, training, gradients and :meth:`save_pretrained` keep the float32
        weights; the copy is rebuilt when the weights or the template change. It applies while
        the model is float32 on the CPU: moved to CUDA or cast to float64, decode runs in the
        model's own precision.

        Args:
            dtype: ``torch.float16``, or ``None`` / ``torch.float32`` for the float32 weights
                (the default).

        Returns:
            the model (changed in place).

        Raises:
            ArgumentTypeError: ``dtype`` is not a ``torch.dtype``.
            InvalidArgumentError: another dtype (``torch.bfloat16`` errs by up to 0.033 mm),
                or the model is not float32 on the CPU, or this PyTorch build lacks the FBGEMM
                float16 kernels (non-x86 CPUs).

        Example:
            >>> model = FaceModel.from_pretrained(inference_dtype=torch.float16)
            >>> model.set_inference_dtype(None)    # back to float32 decoding
        """
        dtype = _check_inference_dtype(dtype)
        if dtype is not None:
            device, model_dtype = self._device_dtype()
            if device.type != "cpu" or model_dtype != torch.float32:
                raise InvalidArgumentError(f"a float16 output layer needs a float32 model on the CPU; this one is "
                                           f"{model_dtype} on {device}: keep inference_dtype=None")  # fmt: skip
        self._inference_dtype, self._half_cache = dtype, None
        if dtype is None:
            return self
        try:
            self._half_output_layer()
        except RuntimeError as exc:  # no FBGEMM (e.g. an ARM build of PyTorch)
            self._inference_dtype, self._half_cache = None, None
            raise InvalidArgumentError(f"this PyTorch build has no FBGEMM float16 linear kernel ({exc}); "
                                       "keep inference_dtype=None") from None  # fmt: skip
        return self

    def _half_output_layer(self):
        """The prepacked float16 output layer (float32 bias ``scale * bias + template``), built on
        first use and when the weights or template change; ``None`` when it does not apply."""
        if getattr(self, "_inference_dtype", None) is None:
            return None
        W, b, scale = self.generator.output_layer()
        t = self.template
        if W.device.type != "cpu" or W.dtype != torch.float32 or t.dtype != torch.float32:
            return None
        key = (W.data_ptr(), W._version, b.data_ptr(), b._version, t.data_ptr(), t._version, float(scale))
        cache = self._half_cache
        if cache is not None and cache[0] == key:
            return cache[1]
        with torch.no_grad():
            weight, bias = (W * scale).contiguous(), (b * scale + t.reshape(-1)).contiguous()
            packed = torch.ops.quantized.linear_prepack_fp16(weight, bias)
        self._half_cache = (key, packed)
        return packed

    # ---- codes ------------------------------------------------------------------------
    @property
    def code_slices(self) -> dict[str, slice]:
        """Factor name (and ``"noise"``) -> slice of the full code."""
        return self.config.generator.code_slices()

    @property
    def label_names(self) -> dict[str, list[str]]:
        """Factor -> names of its label codes (e.g. ``{"expression": ["neutral", ...]}``)."""
        return self.config.label_names

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        return self.generator.device, self.generator.dtype

    def label_index(self, factor: str, label: str | int) -> int:
        """Index of a label (name or index) of a factor.

        Raises:
            UnknownLabelError: unknown name (close matches are listed) or index out of range.
        """
        names = self.config.label_names.get(factor, [])
        n = self.label_codes(factor).shape[0]
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            if not 0 <= int(label) < n:
                raise UnknownLabelError(f"{factor} label index {label} out of range 0..{n - 1}")
            return int(label)
        if isinstance(label, str):
            lowered = {x.lower(): i for i, x in enumerate(names)}
            if label.lower() in lowered:
                return lowered[label.lower()]
            close = difflib.get_close_matches(label.lower(), list(lowered), n=3, cutoff=0.4)
            close += [x for x in lowered if x.startswith(label.lower()[:3]) and x not in close]
            hint = f" (did you mean {', '.join(repr(names[lowered[c]]) for c in close[:3])}?)" if close else ""
            shown = names if len(names) <= 12 else names[:12] + ["..."]
            raise UnknownLabelError(f"unknown {factor} label {label!r}{hint}. Known labels: {shown}")
        raise UnknownLabelError(f"{factor} label must be a name or an index, got {type(label).__name__}")

    def factor_codes(self, factor: str, spec: CodeSpec, n: int, *, generator: torch.Generator | None = None,
                     truncation: float | None = None) -> torch.Tensor:  # fmt: skip
        """(n, d) codes of one factor (or ``"noise"``) from a :data:`CodeSpec`.

        ``None`` draws N(0, I) codes (times ``truncation`` when given) with ``generator``
        on the CPU, so a seed gives the same faces on every device. A blendshape dict gives
        codes only: the :attr:`fallback_blendshapes` act on vertices, not codes (see
        :meth:`blendshape_displacement`).
        """
        device, dtype = self._device_dtype()
        if factor not in self.code_slices:
            raise InvalidArgumentError(f"no factor {factor!r}; this model has {sorted(self.code_slices)}")
        sl = self.code_slices[factor]
        d = sl.stop - sl.start
        if spec is None:
            z = torch.randn(n, d, generator=generator)
            if truncation is not None:
                z = z * check_float("truncation", truncation, 0.0, 1.0)
            return z.to(device=device, dtype=dtype)
        if isinstance(spec, Mapping):
            if factor != "expression":
                raise InvalidArgumentError(f"a dict of blendshape weights drives the expression, not {factor!r}")
            return self._blendshape_codes(spec, n).to(device=device, dtype=dtype)
        if isinstance(spec, (str, int, np.integer)) and not isinstance(spec, bool):
            spec = [spec] * n
        if isinstance(spec, (list, tuple)) and spec and all(isinstance(x, (str, int, np.integer)) for x in spec):
            if factor == "noise":
                raise InvalidArgumentError("noise has no labels; pass a (d,) or (n, d) tensor")
            idx = torch.tensor([self.label_index(factor, x) for x in spec])
            z = self.label_codes(factor)[idx.to(self.label_codes(factor).device)]
        else:
            z = as_number_tensor(factor, spec, expected=f"({d},) or (n, {d}) codes, a label or a list of labels")
        z = z.to(device=device, dtype=dtype)
        if z.ndim == 1:
            z = z[None].expand(n, -1)
        if z.ndim != 2 or z.shape[1] != d:
            raise InvalidArgumentError(f"{factor} codes must have shape ({d},) or (n, {d}), got {tuple(z.shape)}")
        if z.shape[0] != n:
            raise InvalidArgumentError(f"{factor} codes hold {z.shape[0]} rows but {n} faces were asked for")
        if not torch.isfinite(z).all():
            raise InvalidArgumentError(f"{factor} codes contain NaN or inf")
        return z

    # ---- blendshape weights --------------------------------------------------------------
    def _check_map_config(self, cfg: ExpressionMapConfig) -> ExpressionMapConfig:
        if "expression" not in self.code_slices:
            raise WeightsFormatError("a blendshape map needs an 'expression' factor; this model has "
                                     f"{sorted(self.code_slices)}")  # fmt: skip
        d = self.config.generator.factor("expression").code_dim
        if cfg.code_dim != d:
            raise WeightsFormatError(f"the blendshape map gives {cfg.code_dim}-d codes but the expression code has {d}")
        if cfg.fallback and cfg.num_vertices != self.num_vertices:
            raise WeightsFormatError(f"the blendshape map's fallback deltas have {cfg.num_vertices} vertices but the "
                                     f"template has {self.num_vertices}")  # fmt: skip
        return cfg

    def set_expression_map(self, expression_map: ExpressionMap | None) -> "FaceModel":
        """Attach (or with ``None`` remove) a blendshape map; saved by :meth:`save_pretrained`.

        Maps are learned by :func:`facemodel.training.blendshape_map.learn_blendshape_map`.
        """
        if expression_map is None:
            self.expression_map = None
            self.config = self.config.model_copy(update={"expression_map": None})
            return self
        self._check_map_config(expression_map.config)
        device, dtype = self._device_dtype()
        self.expression_map = expression_map.to(device=device, dtype=dtype)
        self.config = self.config.model_copy(update={"expression_map": expression_map.config})
        return self

    def _map(self) -> ExpressionMap:
        if self.expression_map is None:
            raise NoExpressionMapError(
                "this model has no blendshape map (weights <-> expression codes); learn one from a dataset with "
                f"`{LEARN_COMMAND}` and load NEW_MODEL_DIR"
            )
        return self.expression_map

    @torch.no_grad()
    def expression_from_blendshapes(self, weights, *, clip_tolerance: float = 0.05) -> torch.Tensor:
        """Expression codes of blendshape weights (ARKit, MediaPipe, Live Link Face or ICT names).

        Drive faces with ``model.sample(expression=weights)`` or
        ``model.transfer_expression(weights, face)`` (these codes replace the expression
        code), or ``model.add_expressions(face, weights)`` (the weights applied relative to
        the face's own expression code: the way to animate an encoded scan). The codes go
        through the generator, so the deformation depends on the identity and is not a sum
        of fixed shapes. ``expression_from_blendshapes(0)`` is the map's rest pose.

        Args:
            weights: a dict name -> float or (B,) tensor / array (missing names are 0; see
                :mod:`facemodel.blendshapes` for the three spellings), or a (53,) / (B, 53)
                tensor or array in ICT order (``facemodel.blendshapes.ICT_NAMES``).
            clip_tolerance: values within this of [0, 1] are clipped; further out raise.

        Returns:
            (B, d_exp) expression codes.

        Raises:
            BlendshapeError: unknown names (close matches are listed), NaN, values outside
                [0, 1] beyond the tolerance, ragged lengths.
            NoExpressionMapError: the model has no blendshape map.

        Example:
            >>> z = model.expression_from_blendshapes({"jawOpen": 0.8, "mouthSmileLeft": 0.4})
        """
        return self._drive(weights, clip_tolerance=clip_tolerance)[0]

    @property
    def fallback_blendshapes(self) -> list[str]:
        """ICT names of the shapes the blendshape map applies as fixed linear deltas (shapes the
        training data never exercised, so the generator cannot make them; see
        :meth:`blendshape_displacement`). Empty without a map or without such shapes."""
        return [] if self.expression_map is None else list(self.expression_map.config.fallback)

    @torch.no_grad()
    def blendshape_displacement(self, weights, *, clip_tolerance: float = 0.05) -> torch.Tensor:
        """(B, V, 3) mm that :attr:`fallback_blendshapes` add to a face driven by ``weights``.

        :meth:`sample`, :meth:`transfer_expression`, :meth:`add_expressions` and
        ``facemodel animate`` add it for you; add it yourself when you decode codes from
        :meth:`expression_from_blendshapes` directly (``model(z) + model.blendshape_displacement(w)``).
        All zeros when the map has no fallback shapes. ``weights`` as for
        :meth:`expression_from_blendshapes`.
        """
        m, w = self._map(), self._ict_weights(weights, clip_tolerance)
        disp = m.displacement(w)
        return disp if disp is not None else self.template.new_zeros(w.shape[0], self.num_vertices, 3)

    def _ict_weights(self, weights, clip_tolerance: float) -> torch.Tensor:
        """(B, 53) validated weights in ICT order on the model's device."""
        from .blendshapes import to_ict_weights

        device, dtype = self._device_dtype()
        return to_ict_weights(weights, clip_tolerance=clip_tolerance).to(device=device, dtype=dtype)

    def _drive(self, weights, *, clip_tolerance: float = 0.05) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Expression codes (B, d_exp) of blendshape weights, and the validated (B, 53) weights
        when the map has fallback shapes (``None`` otherwise), for :meth:`_displaced`."""
        m, w = self._map(), self._ict_weights(weights, clip_tolerance)
        with torch.no_grad():
            return m.to_code(w), (w if m.fallback_deltas is not None else None)

    @torch.no_grad()
    def blendshapes_from_expression(self, codes, *, spelling: str | None = None):
        """Blendshape weights in [0, 1] read from expression codes (for retargeting to a rig).

        Args:
            codes: :class:`Faces` (sampled, encoded or fitted), full codes (B, D), or
                expression codes (B, d_exp) / (d_exp,).
            spelling: ``None`` for a (B, 53) tensor in ICT order; ``"ict"``, ``"arkit"``
                (also MediaPipe's) or ``"livelink"`` for a dict name -> (B,) tensor.

        Returns:
            (B, 53) tensor, or a dict when ``spelling`` is given.

        Example:
            >>> faces = model.encode("scan.obj")
            >>> model.blendshapes_from_expression(faces, spelling="arkit")["jawOpen"]
        """
        from .blendshapes import ICT_NAMES, BlendshapeError, ict_to_arkit

        if not (spelling is None or isinstance(spelling, str)) or spelling not in (None, "ict", "arkit", "livelink"):
            raise BlendshapeError(f"spelling must be None, 'ict', 'arkit' or 'livelink', got {spelling!r}")
        m = self._map()
        device, dtype = self._device_dtype()
        sl = self.code_slices["expression"]
        d, D = sl.stop - sl.start, self.config.generator.code_dim
        if isinstance(codes, Faces):
            z = codes.codes[:, sl]
        else:
            z = as_number_tensor("codes", codes, expected=f"(B, {d}) expression codes, (B, {D}) codes or Faces")
            if z.ndim == 1:
                z = z[None]
            if z.ndim != 2 or z.shape[1] not in (d, D):
                raise InvalidArgumentError(f"expression codes must have shape (B, {d}) (or full codes (B, {D}), or Faces), "
                                     f"got {tuple(z.shape)}")  # fmt: skip
            if z.shape[1] == D and D != d:
                z = z[:, sl]
        z = z.to(device=device, dtype=dtype)
        if not torch.isfinite(z).all():
            raise InvalidArgumentError("expression codes contain NaN or inf")
        w = m.to_weights(z)
        if spelling is None:
            return w
        if spelling == "ict":
            return {n: w[:, i] for i, n in enumerate(ICT_NAMES)}
        return ict_to_arkit(w, spelling=spelling)

    def _blendshape_codes(self, spec: Mapping, n: int | None = None) -> torch.Tensor:
        """(B, d_exp) codes of a blendshape dict (without the fallback displacement); B == 1
        broadcasts to ``n``."""
        z = self.expression_from_blendshapes(spec)
        if n is not None and z.shape[0] != n:
            if z.shape[0] != 1:
                raise InvalidArgumentError(f"the blendshape weights hold {z.shape[0]} frames but {n} faces were asked for")
            z = z.expand(n, -1)
        return z

    def _displaced(self, faces: Faces, weights: torch.Tensor | None) -> Faces:
        """``faces`` (freshly decoded: changed in place) plus the fallback shapes' displacement
        of ``weights`` (1 or len(faces) rows of validated ICT weights; ``None``: nothing)."""
        if weights is None:
            return faces
        if weights.shape[0] not in (1, len(faces)):
            raise InvalidArgumentError(f"the blendshape weights hold {weights.shape[0]} frames for {len(faces)} faces; "
                                 "use one frame or one per face")  # fmt: skip
        self._map().add_displacement_(faces.vertices, weights)
        return faces

    # ---- operations -------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> Faces:
        """Faces of full codes.

        Args:
            codes: (n, D) or (D,) codes ``[z_identity, z_expression, ..., z_noise]`` (tensor,
                array or nested list), moved to the model's device and dtype.

        Returns:
            :class:`Faces` with vertices (n, V, 3) in mm: ``model(codes)`` to the bit, or, with
            :meth:`set_inference_dtype` ``(torch.float16)``, within 0.005 mm of it.

        The cost is the output layer's matrix-vector product: within 1.2x of a bare
        ``torch.addmv`` over it for one code (docs/benchmarks.md "Decode vs bare matvec").
        """
        # few Python steps: for one code they are most of what decode adds to its matrix-vector product
        device, dtype = self._device_dtype()
        D = self.config.generator.code_dim
        if not (type(codes) is torch.Tensor and codes.dtype == dtype and codes.device == device):
            codes = as_number_tensor("codes", codes, expected=f"(n, {D}) codes").to(device=device, dtype=dtype)
        if codes.ndim == 1:
            codes = codes[None]
        if codes.ndim != 2 or codes.shape[1] != D:
            raise InvalidArgumentError(f"codes must have shape (n, {D}), got {tuple(codes.shape)}")
        if codes.shape[0] == 0:
            raise InvalidArgumentError("empty batch: pass at least one code")
        if codes.shape[0] > 1:  # one face always fits
            check_batch("codes", codes.shape[0], face_bytes(self.num_vertices, self.config.generator.hidden))
        check_finite("codes", codes, fix="pass finite codes (sampled codes are N(0, I))")
        vertices = self._vertices(codes, half=self.inference_dtype is not None)
        if not all_finite(vertices):
            raise InvalidArgumentError(f"codes up to |z| = {float(codes.abs().max()):.3g} overflow the generator (the "
                                       "vertices are not finite); pass codes of the prior's scale (N(0, I))")  # fmt: skip
        return Faces(vertices, codes, self.faces, self.code_slices)

    def _expression_prior(self, prior: str) -> str:
        """``"blendshapes"`` or ``"gaussian"`` for an ``expression_prior`` argument."""
        if prior == "auto":
            return "blendshapes" if self.expression_map is not None else "gaussian"
        if prior == "blendshapes":
            self._map()  # NoExpressionMapError naming the fix
        return prior

    def random_blendshapes(self, n: int = 1, *, seed: int | None = None,
                           generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
        """(n, 53) random blendshape weights of realistic expressions (ICT order).

        Drawn like the training data's expressions, without reading any data
        (:func:`facemodel.data.random_expressions.random_expressions`: static emotions, frames of
        emotion, speech, blink and tracker-like sequences over all 53 shapes, in the release
        build's proportions; a quarter of the rows near rest). They are what
        ``sample(expression_prior="blendshapes")`` puts through the blendshape map.

        Args:
            n: number of rows (1 to ``facemodel._validate.MAX_BATCH``).
            seed: seed of the draw (or pass a ``torch.Generator``, which wins over ``seed``, as in
                :meth:`sample`).

        Returns:
            (n, 53) float32 weights in [0, 1] on the CPU, names ``facemodel.blendshapes.ICT_NAMES``.
        """
        from ._validate import MAX_BATCH
        from .data.random_expressions import random_expressions

        n = check_int("n", n, 1, MAX_BATCH)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ArgumentTypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if generator is None and seed is not None:  # as in sample(): a generator, when given, wins
            generator = torch.Generator().manual_seed(check_int("seed", seed, -(2**63), 2**64 - 1))
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return torch.as_tensor(random_expressions(n, rng), dtype=torch.float32)

    @torch.no_grad()
    def sample(
        self,
        n: int = 1,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        identity: CodeSpec = None,
        expression: CodeSpec = None,
        noise: CodeSpec = None,
        truncation: float | None = None,
        expression_prior: str = "auto",
        **factors: CodeSpec,
    ) -> Faces:
        """Generate ``n`` faces.

        Args:
            n: number of faces: at most ``facemodel._validate.MAX_BATCH`` (65,536) and what fits
                the memory budget (8 GiB of outputs by default, ~37,000 faces of the released
                model; env ``FACEMODEL_MEMORY_BUDGET``); more raises ``BatchTooLargeError``.
            seed: seed of the random codes (or pass a ``torch.Generator``); the same seed
                gives the same faces on CPU and CUDA.
            identity, expression, noise: codes per factor: ``None`` (random), a tensor
                ``(d,)`` / ``(n, d)``, a label name (``"happiness"``), a label index, or a
                list of names/indices (one per face). Other factors by keyword. The
                expression may also be a dict of blendshape weights
                (``{"jawOpen": 0.8, "mouthSmile_L": 0.4}``, floats or (B,) arrays; see
                :meth:`expression_from_blendshapes`); with B frames and ``n == 1``, B faces
                are made.
            truncation: scale random codes by this factor in [0, 1] (less variety, more
                typical faces); random blendshape weights (``expression_prior``) are scaled
                by it too (weaker expressions).
            expression_prior: where random expressions (``expression=None``) come from:
                ``"blendshapes"``: realistic blendshape weights drawn like the training
                data's (:meth:`random_blendshapes`: speech, blinks, emotions, tracker-like
                motion of all 53 shapes) through the blendshape map; ``"gaussian"``:
                N(0, I) codes, the GAN's training prior (dense mixtures of every shape,
                which no face tracker produces; what ``sample`` drew in 0.7.0); ``"auto"``
                (default): ``"blendshapes"`` when the model has a blendshape map, else
                ``"gaussian"``.

        Returns:
            :class:`Faces` with vertices (n, V, 3) in mm.

        Raises:
            NoExpressionMapError: ``expression_prior="blendshapes"`` on a model without a
                blendshape map.

        Example:
            >>> faces = model.sample(4, seed=0, expression="happiness")
            >>> faces.export("happy.obj")
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InvalidArgumentError(f"n must be a positive integer, got {n!r}")
        check_batch("n", n, face_bytes(self.num_vertices, self.config.generator.hidden))
        if seed is not None:
            seed = check_int("seed", seed, -(2**63), 2**64 - 1)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ArgumentTypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if truncation is not None:
            truncation = check_float("truncation", truncation, 0.0, 1.0)
        if expression_prior not in EXPRESSION_PRIORS:
            raise InvalidArgumentError(f"expression_prior must be one of {EXPRESSION_PRIORS}, got {expression_prior!r}")
        fb = None
        if generator is None:
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
        realistic = expression is None and self._expression_prior(expression_prior) == "blendshapes"
        if isinstance(expression, Mapping):
            expression, fb = self._drive(expression)
            if n == 1:
                n = expression.shape[0]
            elif expression.shape[0] == 1:
                expression = expression[0]
            elif expression.shape[0] != n:
                raise InvalidArgumentError(f"the blendshape weights hold {expression.shape[0]} frames but {n} faces were "
                                     "asked for; pass n=1 (one face per frame) or one value per name")  # fmt: skip
        specs = {"identity": identity, "expression": expression, **factors}
        unknown = set(specs) - set(self.code_slices)
        unknown = {k for k in unknown if specs[k] is not None}
        if unknown:
            raise InvalidArgumentError(f"unknown factors {sorted(unknown)}; this model has {sorted(self.code_slices)}")
        parts = [self.factor_codes(f.name, specs.get(f.name), n, generator=generator, truncation=truncation)
                 for f in self.config.generator.factors]  # fmt: skip
        parts.append(self.factor_codes("noise", noise, n, generator=generator, truncation=truncation))
        if realistic:  # drawn last: identity and noise codes are those of expression_prior="gaussian"
            w = self.random_blendshapes(n, generator=generator)
            codes, fb = self._drive(w if truncation is None else w * truncation)
            k = [f.name for f in self.config.generator.factors].index("expression")
            parts[k] = codes.to(parts[k])
        return self._displaced(self.decode(torch.cat(parts, 1)), fb)

    def _as_vertices(self, mesh, *, name: str = "mesh") -> torch.Tensor:
        """(n, V, 3) vertices (mm) from arrays, tensors, trimesh objects, paths or lists of them."""
        from .geometry.mesh_io import load_mesh
        from .geometry.template import check_vertices

        if isinstance(mesh, (list, tuple)) and mesh and not isinstance(mesh[0], (float, int)):
            return torch.cat([self._as_vertices(m, name=name) for m in mesh])
        if isinstance(mesh, (str, os.PathLike)):
            mesh = load_mesh(mesh).vertices
        elif hasattr(mesh, "vertices") and hasattr(mesh, "faces") and not isinstance(mesh, Faces):
            mesh = np.asarray(mesh.vertices)
        elif isinstance(mesh, Faces):
            mesh = mesh.vertices
        v = as_number_tensor(name, mesh, expected=f"(V, 3) / (n, V, 3) vertices (V = {self.num_vertices}), a mesh or a path")
        if v.ndim == 2:
            v = v[None]
        check_vertices(v, self.num_vertices, name=name)
        if v.ndim != 3:
            raise InvalidArgumentError(f"{name} must have shape (V, 3) or (n, V, 3), got {tuple(v.shape)}")
        if v.shape[0] == 0:
            raise InvalidArgumentError(f"{name}: empty batch")
        device, dtype = self._device_dtype()
        v = v.to(device=device, dtype=dtype)
        check_vertices(v, self.num_vertices, name=f"{name} (in the model's {dtype})")  # 1e300 overflows float32
        return v

    def _as_codes(self, x, *, name: str) -> torch.Tensor:
        """Full codes (n, D) of Faces, codes, or meshes (encoded)."""
        D = self.config.generator.code_dim
        if isinstance(x, Faces):
            return check_finite(f"{name} codes", x.codes.to(self.generator.device, self.generator.dtype))
        if isinstance(x, torch.Tensor) and x.ndim in (1, 2) and x.shape[-1] == D and not x.is_complex():
            z = x.reshape(-1, D).to(self.generator.device, self.generator.dtype)
            if z.shape[0] == 0:
                raise InvalidArgumentError(f"{name}: empty batch of codes")
            return check_finite(f"{name} codes", z, fix="pass finite codes (sampled codes are N(0, I))")
        return self.encode(x).codes

    def _with_factor(self, target: torch.Tensor, factor: str, codes: torch.Tensor) -> Faces:
        sl = self.code_slices[factor]
        if codes.shape[0] not in (1, target.shape[0]) and target.shape[0] != 1:
            raise InvalidArgumentError(f"cannot pair {codes.shape[0]} sources with {target.shape[0]} targets; use 1 or equal counts")
        n = max(codes.shape[0], target.shape[0])
        out = target.expand(n, -1).clone()
        out[:, sl] = codes.expand(n, -1)
        return self.decode(out)

    def transfer_expression(self, source, target) -> Faces:
        """``target``'s identity and noise with ``source``'s expression (the paper's code swap).

        Args:
            source, target: :class:`Faces`, full codes (n, D), or meshes in the template's
                topology (arrays (V, 3) / (n, V, 3) in mm, trimesh objects, file paths),
                which are encoded first. 1-to-n and n-to-1 pairings broadcast. ``source``
                may also be a dict of blendshape weights (one value or one (n,) array per
                name): the target's expression code is replaced by
                :meth:`expression_from_blendshapes` of them (absolute codes, as for
                :meth:`sample`); to apply weights relative to an encoded face's own
                expression use :meth:`add_expressions`.

        Example:
            >>> frames = model.transfer_expression({"jawOpen": np.linspace(0, 1, 30)}, model.sample(seed=3))
        """
        t = self._as_codes(target, name="target")
        if isinstance(source, Mapping):
            z, fb = self._drive(source)
            return self._displaced(self._with_factor(t, "expression", z.to(t)), fb)
        s = self._as_codes(source, name="source")
        return self._with_factor(t, "expression", s[:, self.code_slices["expression"]])

    def add_expressions(self, target, *expressions, weights: Sequence[float] | None = None) -> Faces:
        """Add expression codes to ``target``'s (supplement, "added" codes).

        Args:
            target: Faces, codes or meshes.
            expressions: each a Faces / codes / mesh (its expression code is used), a label
                name, a label index, or a dict of blendshape weights, which adds
                ``expression_from_blendshapes(w) - expression_from_blendshapes(0)``: the
                code offset of those weights from the map's rest pose (an all-zero dict
                adds nothing). This applies weights *relative* to the target's own
                expression code, taking the target as the rest pose: the way to animate an
                encoded scan (its expression code also holds part of its fit) and what
                ``facemodel animate --identity MESH`` does.
            weights: one weight per expression (default 1).
        """
        if not expressions:
            raise InvalidArgumentError("add_expressions needs at least one expression to add")
        if weights is not None:
            try:
                assert not isinstance(weights, (str, bytes, Mapping))
                weights = list(weights)
            except (AssertionError, TypeError):
                raise ArgumentTypeError(f"weights must be a sequence of numbers, one per expression, got "
                                        f"{type(weights).__name__}") from None  # fmt: skip
        weights = [1.0] * len(expressions) if weights is None else [check_float("weights[i]", w) for w in weights]
        if len(weights) != len(expressions):
            raise InvalidArgumentError(f"got {len(weights)} weights for {len(expressions)} expressions")
        t = self._as_codes(target, name="target")
        sl = self.code_slices["expression"]
        total, extra = t[:, sl].clone(), None
        for w, e in zip(weights, expressions):
            if isinstance(e, (str, int, np.integer)) and not isinstance(e, bool):
                code = self.label_codes("expression")[self.label_index("expression", e)][None]
            elif isinstance(e, torch.Tensor) and e.ndim == 0:
                raise ArgumentTypeError("an expression must be a label (name or int index), codes, Faces, a mesh or a "
                                        f"blendshape dict, got a 0-d tensor {e!r}: pass int(tensor) for a label index")
            elif isinstance(e, Mapping):
                code, fb = self._drive(e)
                code = code - self.expression_from_blendshapes(torch.zeros(1, self._map().config.num_weights))
                if fb is not None:  # the fallback shapes are linear: their rest (weights 0) adds nothing
                    if extra is not None and 1 not in (extra.shape[0], fb.shape[0]) and extra.shape[0] != fb.shape[0]:
                        raise InvalidArgumentError(f"blendshape dicts of {extra.shape[0]} and {fb.shape[0]} frames cannot be added")
                    extra = w * fb if extra is None else extra + w * fb  # weights add: the deltas are linear
            else:
                code = self._as_codes(e, name="expression")[:, sl]
            if code.shape[0] not in (1, total.shape[0]) and total.shape[0] != 1:
                raise InvalidArgumentError(f"cannot add {code.shape[0]} expressions to {total.shape[0]} faces; use 1 or equal counts")
            total = total + w * code.to(total)
        return self._displaced(self._with_factor(t, "expression", total), extra)

    # ---- fitting ----------------------------------------------------------------------
    def fit_landmarks(self, points, **kwargs):
        """Fit codes (and a similarity) to 3D landmarks; see :func:`facemodel.fitting.fit_landmarks`.

        Example:
            >>> fit = model.fit_landmarks(points)        # (68, 3) iBUG-68, any scale and pose
            >>> fit.vertices, fit.rmse, fit.transform
        """
        from .fitting import fit_landmarks

        return fit_landmarks(self, points, **kwargs)

    def fit_landmarks_2d(self, points2d, **kwargs):
        """Fit codes and a camera (scaled-orthographic, or ``camera="pinhole"`` with
        ``focal_length`` / ``principal_point``) to 2D landmarks; see
        :func:`facemodel.fitting.fit_landmarks_2d`."""
        from .fitting import fit_landmarks_2d

        return fit_landmarks_2d(self, points2d, **kwargs)

    def landmark_set(self, spec="ibug68"):
        """A :class:`facemodel.landmarks.LandmarkSet` of this model ("ibug68", indices, ...)."""
        from .landmarks import landmark_set

        return landmark_set(self, spec)

    def encode(self, mesh, *, reg: float = 1e-3, align: str = "none", max_iters: int | None = None) -> Faces:
        """Codes of registered meshes in the template's topology (a dense fit of every vertex).

        Args:
            mesh: (V, 3) / (n, V, 3) array or tensor in mm, a trimesh object, a file path
                (OBJ/PLY...), or a list of those.
            reg: weight of ``||z||^2`` (paper Eq. 13) against the squared vertex error (mm^2).
            align: ``"none"`` (the mesh is in the model's frame, as training data is),
                ``"rigid"`` or ``"similarity"``.

        Returns:
            :class:`Faces` of the fitted codes (``.codes``) and their meshes, in the model frame.
        """
        from .fitting import fit_landmarks

        v = self._as_vertices(mesh, name="mesh")
        everything = torch.arange(self.num_vertices)
        # init="mean": the linear initialiser is built per landmark set and costs minutes for all V vertices
        fit = fit_landmarks(self, v, landmarks=everything, reg=reg, align=align, init="mean", max_iters=max_iters)
        return self.decode(fit.codes)

    def neutralize(self, faces) -> Faces:
        """The same faces (identity and noise) with the neutral expression's label code."""
        t = self._as_codes(faces, name="faces")
        code = self.label_codes("expression")[self.label_index("expression", "neutral")][None]
        return self._with_factor(t, "expression", code.to(t))

    # ---- serialisation ---------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, *, storage_dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (atomically each).

        Unwraps ``torch.compile`` / DDP prefixes; tensors are stored contiguous float32/int64.

        Args:
            directory: the model folder (created if needed).
            storage_dtype: e.g. ``torch.float16`` to halve the file: applied to the network
                weights only (``generator.*``, ``expression_map.*``); the template, UV map and
                label codes stay float32 (float16 would round template vertices to 0.125 mm).
                Loading casts back to the model's dtype.
        """
        if storage_dtype is not None and not storage_dtype.is_floating_point:
            raise InvalidArgumentError(f"storage_dtype must be a floating dtype such as torch.float16, got {storage_dtype}")
        directory = Path(directory)
        check_writable_parent(directory / CONFIG_NAME)
        state = {k.replace("_orig_mod.", "").replace("module.", ""): v.detach().cpu().contiguous()
                 for k, v in self.state_dict().items()}  # fmt: skip
        if storage_dtype is not None:
            state = {k: v.to(storage_dtype) if k.startswith(("generator.", "expression_map.")) and v.is_floating_point()
                     else v for k, v in state.items()}  # fmt: skip
        with atomic_file(directory / WEIGHTS_NAME, "wb") as f:
            f.write(save(state, metadata={"format": "pt", "facemodel_format_version": str(FORMAT_VERSION)}))
        with atomic_file(directory / CONFIG_NAME, "w") as f:
            f.write(json.dumps(self.config.model_dump(mode="json"), indent=2, sort_keys=True))
        return directory

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        inference_dtype: torch.dtype | None = None,
    ) -> "FaceModel":
        """Load a model: the released weights, a local folder, or a Hugging Face Hub repo.

        Args:
            name_or_path: ``None`` for the weights installed with the package (no network),
                a folder written by :meth:`save_pretrained`, or a Hub repo id ``"org/name"``.
            revision, cache_dir, local_files_only, token: passed to ``huggingface_hub``
                for repo ids (ignored for local folders).
            device, dtype: where to put the model (default CPU, float32).
            inference_dtype: ``torch.float16`` to decode through a float16 copy of the output
                layer (about 2x faster on a CPU, vertices within 0.005 mm); see
                :meth:`set_inference_dtype`. Default ``None``: float32.

        Loading is strict (every tensor must match the config) and safetensors only.

        Raises:
            WeightsNotFoundError: nothing to load there (with the fix in the message).
            WeightsFormatError: invalid config, or tensors missing / unexpected / misshaped.

        Example:
            >>> model = FaceModel.from_pretrained()                 # released weights, offline
            >>> model = FaceModel.from_pretrained("runs/x/model")   # a training export
        """
        from .hub import resolve_pretrained

        device, dtype = _check_device_dtype(device, dtype)
        inference_dtype = _check_inference_dtype(inference_dtype)
        path = resolve_pretrained(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
        )
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
        try:
            state = load_file(str(w_path))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise WeightsFormatError(
                f"{str(w_path)!r} is not a readable safetensors file ({exc}); re-download or re-export the model"
            ) from exc
        kw = {"num_faces": state["faces"].shape[0] if "faces" in state else 0,
              "num_landmarks": state["landmarks"].shape[0] if "landmarks" in state else 0}  # fmt: skip
        _check_config_size(cls, config, kw, state, w_path)
        model = cls(config, **kw)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsFormatError(f"{str(w_path)!r} does not match its config: {exc}") from exc
        model.eval()
        if device is not None or dtype is not None:
            try:
                model.to(device=device, dtype=dtype)
            except (RuntimeError, AssertionError) as exc:  # e.g. CUDA not available
                raise InvalidArgumentError(f"cannot move the model to device={str(device)!r}: {exc}") from None
        if inference_dtype is not None:
            model.set_inference_dtype(inference_dtype)
        return model

    def push_to_hub(
        self,
        repo_id: str,
        *,
        token: str | bool | None = None,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str = "Upload facemodel",
        create_repo: bool = True,
        model_card: str | None = None,
    ) -> str:
        """Upload ``config.json`` + ``model.safetensors`` (+ ``model_card`` as README.md).

        Returns:
            the commit URL.
        """
        import tempfile

        from .hub import README_NAME, push_to_hub

        with tempfile.TemporaryDirectory(prefix="facemodel-push-") as tmp:
            self.save_pretrained(tmp)
            if model_card is not None:
                (Path(tmp) / README_NAME).write_text(model_card, encoding="utf-8")
            return push_to_hub(tmp, repo_id, token=token, private=private, revision=revision,
                               commit_message=commit_message, create_repo=create_repo)  # fmt: skip


def _check_device_dtype(device, dtype) -> tuple[torch.device | None, torch.dtype | None]:
    """``from_pretrained``'s device (a name or torch.device, not ``meta``) and floating dtype."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise InvalidArgumentError(f"dtype must be a floating torch.dtype (torch.float32, torch.float64...), got {dtype!r}")
    if device is not None:
        if not isinstance(device, (str, torch.device)):
            raise ArgumentTypeError(f"device must be a str such as 'cpu' or 'cuda:0', or a torch.device, got "
                                    f"{type(device).__name__}")  # fmt: skip
        try:
            device = torch.device(device)
        except (RuntimeError, ValueError) as exc:
            raise InvalidArgumentError(f"device {device!r} is not a device name ('cpu', 'cuda', 'cuda:0'...): {exc}") from None
        if device.type == "meta":
            raise InvalidArgumentError("device='meta' holds no weights; use 'cpu' or 'cuda'")
    return device, dtype


def _check_inference_dtype(dtype) -> torch.dtype | None:
    """``set_inference_dtype``'s argument: ``None`` (float32 weights) or one of :data:`INFERENCE_DTYPES`."""
    if dtype is None or dtype == torch.float32:
        return None
    if not isinstance(dtype, torch.dtype):
        raise ArgumentTypeError(f"inference_dtype must be a torch.dtype (torch.float16) or None, got {type(dtype).__name__} "
                                f"{dtype!r}")  # fmt: skip
    if dtype == torch.bfloat16:
        raise InvalidArgumentError("inference_dtype=torch.bfloat16 is not offered: bfloat16 output weights move vertices by "
                                   "up to 0.033 mm (budget 0.01 mm); use torch.float16 (<= 0.005 mm) or None")  # fmt: skip
    if dtype not in INFERENCE_DTYPES:
        raise InvalidArgumentError(f"inference_dtype must be None (float32) or one of {list(INFERENCE_DTYPES)}, got {dtype}")
    return dtype


def _check_config_size(cls, config: FaceModelConfig, kw: dict, state: dict, w_path: Path) -> None:
    """Refuse a config whose model cannot be built or would not match the tensors on disk
    (checked on the meta device, before anything is allocated)."""
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in cls(config, **kw).state_dict().items()}
    except Exception as exc:  # torch / the config's own checks refuse impossible sizes in many ways
        raise WeightsFormatError(f"{str(w_path)!r}: its config describes no buildable model ({exc})") from None
    for k, shape in shapes.items():
        if k in state and tuple(state[k].shape) != shape:
            raise WeightsFormatError(f"{str(w_path)!r} does not match its config: {k} has shape "
                                     f"{tuple(state[k].shape)} on disk but the config gives {shape}")  # fmt: skip

