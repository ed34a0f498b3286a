"""Blendshape names: ICT-FaceKit's 53 shapes and the ARKit / MediaPipe / Live Link Face spellings.

Face trackers report expressions as named weights in [0, 1]. Three spellings are common:

- **ICT** (``ICT_NAMES``, the order of every ``(B, 53)`` weight tensor in this package):
  ``eyeBlink_L``, ``jawOpen``, ``mouthSmile_R`` ...
- **ARKit / MediaPipe** (lowerCamel, ``ARKIT_NAMES``): ``eyeBlinkLeft``, ``jawOpen`` ...
  MediaPipe's face landmarker adds ``_neutral`` (ignored).
- **Live Link Face** (UpperCamel CSV headers): ``EyeBlinkLeft``, ``JawOpen`` ... plus
  ``Timecode``, ``BlendShapeCount`` and head / eye rotation columns (ignored).

Correspondence: every ARKit name except ``tongueOut`` has an ICT shape. ARKit's
``browInnerUp`` and ``cheekPuff`` are single shapes that ICT splits into ``_L``/``_R``: an
ARKit weight drives both halves, and reading ARKit weights back averages them. ICT has no
shape without an ARKit name. :func:`to_ict_weights` turns any mix of spellings into ICT
order; :func:`ict_to_arkit` goes back.
"""

from __future__ import annotations

import difflib
import re
import warnings
from typing import Mapping

import numpy as np
import torch

from .errors import FaceModelError

__all__ = [
    "ICT_NAMES", "ARKIT_NAMES", "ARKIT_ONLY", "IGNORED_COLUMNS", "BlendshapeError",
    "canonical_name", "to_ict_weights", "ict_to_arkit", "livelink_name",
]  # fmt: skip


class BlendshapeError(FaceModelError, ValueError):
    """Blendshape weights or names that cannot be used (unknown name, NaN, out of range...)."""


ICT_NAMES: tuple[str, ...] = (
    "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R",
    "cheekPuff_L", "cheekPuff_R", "cheekSquint_L", "cheekSquint_R", "eyeBlink_L", "eyeBlink_R",
    "eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L", "eyeLookOut_R",
    "eyeLookUp_L", "eyeLookUp_R", "eyeSquint_L", "eyeSquint_R", "eyeWide_L", "eyeWide_R",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimple_L", "mouthDimple_R",
    "mouthFrown_L", "mouthFrown_R", "mouthFunnel", "mouthLeft", "mouthLowerDown_L", "mouthLowerDown_R",
    "mouthPress_L", "mouthPress_R", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthSmile_L", "mouthSmile_R", "mouthStretch_L",
    "mouthStretch_R", "mouthUpperUp_L", "mouthUpperUp_R", "noseSneer_L", "noseSneer_R",
)  # fmt: skip


def _ict_to_arkit_name(name: str) -> str:
    if name.endswith("_L"):
        return name[:-2] + "Left"
    if name.endswith("_R"):
        return name[:-2] + "Right"
    return name


_MERGED = {"browInnerUp": ("browInnerUp_L", "browInnerUp_R"), "cheekPuff": ("cheekPuff_L", "cheekPuff_R")}
ARKIT_ONLY: tuple[str, ...] = ("tongueOut",)
ARKIT_NAMES: tuple[str, ...] = tuple(sorted(
    {_ict_to_arkit_name(n) for n in ICT_NAMES if not n.startswith(("browInnerUp", "cheekPuff"))}
    | set(_MERGED) | set(ARKIT_ONLY)
))  # fmt: skip
IGNORED_COLUMNS: tuple[str, ...] = (
    "Timecode", "BlendShapeCount", "HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch",
    "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll", "_neutral", "frame", "time",
)  # fmt: skip

# canonical key: lower case, no separators, "l"/"r" suffix -> left/right
_ICT_INDEX = {n: i for i, n in enumerate(ICT_NAMES)}


def _key(name: str) -> str:
    k = re.sub(r"[^0-9a-z]", "", name.lower().replace("_l", "left").replace("_r", "right"))
    return k


_TARGETS: dict[str, tuple[int, ...]] = {}
for _n, _i in _ICT_INDEX.items():
    _TARGETS[_key(_n)] = (_i,)
for _n, (_a, _b) in _MERGED.items():
    _TARGETS[_key(_n)] = (_ICT_INDEX[_a], _ICT_INDEX[_b])
_IGNORED = {_key(n) for n in IGNORED_COLUMNS} | {_key(n) for n in ARKIT_ONLY}
_DISPLAY = {_key(n): n for n in list(ICT_NAMES) + list(ARKIT_NAMES)}


def livelink_name(arkit_name: str) -> str:
    """Live Link Face's UpperCamel spelling of an ARKit name (``jawOpen`` -> ``JawOpen``)."""
    return arkit_name[:1].upper() + arkit_name[1:]


def canonical_name(name: str) -> str | None:
    """The ICT or ARKit name a spelling refers to, ``None`` for a column that is ignored
    (``Timecode``, head rotation, ``tongueOut``...).

    Raises:
        BlendshapeError: an unknown name (the message lists close matches).
    """
    k = _key(name)
    if k in _IGNORED:
        return None
    if k in _TARGETS:
        return _DISPLAY[k]
    close = difflib.get_close_matches(k, list(_TARGETS), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(_DISPLAY[c]) for c in close)}?" if close else ""
    raise BlendshapeError(
        f"unknown blendshape name {name!r}{hint} Names may be spelled as ICT (eyeBlink_L), ARKit / "
        "MediaPipe (eyeBlinkLeft) or Live Link Face (EyeBlinkLeft); see facemodel.blendshapes.ICT_NAMES"
    )


def to_ict_weights(weights, *, clip_tolerance: float = 0.05, batch: int | None = None) -> torch.Tensor:
    """ICT-ordered weights ``(B, 53)`` from a name -> weight mapping or a tensor.

    Args:
        weights: a dict of names (any of the three spellings, mixed allowed) to floats or
            ``(B,)`` tensors / arrays; or a ``(53,)`` / ``(B, 53)`` tensor or array in ICT order.
            Names not given are 0. Ignored columns (``Timecode``, ``HeadYaw``, ``tongueOut``...)
            are skipped.
        clip_tolerance: weights in ``[-tol, 1 + tol]`` are clipped to [0, 1] silently; values
            further outside raise (trackers overshoot slightly; large values are a unit error).
        batch: B to broadcast scalar-only dicts to (default 1).

    Returns:
        (B, 53) float32 tensor in [0, 1].

    Raises:
        BlendshapeError: unknown names, NaN / inf, values outside the tolerance, ragged
            lengths, a tensor of the wrong width, or a dict with no known name.
    """
    if isinstance(weights, Mapping):
        if not weights:
            raise BlendshapeError("empty blendshape dict: pass at least one name -> weight (e.g. {'jawOpen': 0.5})")
        cols: dict[int, torch.Tensor] = {}
        length = None
        known = 0
        for name, value in weights.items():
            if not isinstance(name, str):
                raise BlendshapeError(f"blendshape names must be strings, got {name!r}")
            canon = canonical_name(name)
            if canon is None:
                continue
            known += 1
            v = torch.as_tensor(np.asarray(value, dtype=np.float32)).reshape(-1)
            if v.numel() != 1:
                if length is not None and v.numel() != length:
                    raise BlendshapeError(f"weight {name!r} has {v.numel()} values but another name has {length}; "
                                          "every name needs one value per frame")  # fmt: skip
                length = v.numel()
            for i in _TARGETS[_key(canon)]:
                if i in cols:
                    raise BlendshapeError(f"blendshape {ICT_NAMES[i]!r} is given twice (as {name!r} and earlier); "
                                          "pass each shape once")  # fmt: skip
                cols[i] = v
        if not known:
            raise BlendshapeError(f"none of the names {sorted(weights)[:6]} is a blendshape; expected ICT, ARKit or "
                                  "Live Link Face names such as 'jawOpen'")  # fmt: skip
        B = length or batch or 1
        out = torch.zeros(B, len(ICT_NAMES))
        for i, v in cols.items():
            out[:, i] = v.expand(B) if v.numel() == 1 else v
    else:
        out = torch.as_tensor(np.asarray(weights.detach().cpu() if isinstance(weights, torch.Tensor) else weights,
                                         dtype=np.float32))  # fmt: skip
        if out.ndim == 1:
            out = out[None]
        if out.ndim != 2 or out.shape[1] != len(ICT_NAMES):
            raise BlendshapeError(f"blendshape weights must have shape (53,) or (B, 53) in ICT order, got "
                                  f"{tuple(out.shape)}; or pass a dict of names")  # fmt: skip
        if out.shape[0] == 0:
            raise BlendshapeError("empty batch of blendshape weights")
    if not torch.isfinite(out).all():
        raise BlendshapeError("blendshape weights contain NaN or inf")
    lo, hi = float(out.min()), float(out.max())
    if lo < -clip_tolerance or hi > 1 + clip_tolerance:
        raise BlendshapeError(f"blendshape weights must lie in [0, 1] (found {lo:.3g} .. {hi:.3g}); values within "
                              f"{clip_tolerance} of the range are clipped. Percentages? Divide by 100.")  # fmt: skip
    return out.clamp(0.0, 1.0)


def ict_to_arkit(weights: torch.Tensor | np.ndarray, *, spelling: str = "arkit") -> dict[str, torch.Tensor]:
    """ARKit-named weights from ICT-ordered ``(B, 53)`` weights.

    Args:
        weights: (B, 53) or (53,) in ICT order.
        spelling: ``"arkit"`` (lowerCamel, also MediaPipe's) or ``"livelink"`` (UpperCamel).

    Returns:
        name -> (B,) tensor for the 51 ARKit names ICT covers (``browInnerUp`` and
        ``cheekPuff`` average ICT's halves; ``tongueOut`` is absent).
    """
    if spelling not in ("arkit", "livelink"):
        raise BlendshapeError(f"spelling must be 'arkit' or 'livelink', got {spelling!r}")
    w = to_ict_weights(weights, clip_tolerance=float("inf"))
    out: dict[str, torch.Tensor] = {}
    for name in ARKIT_NAMES:
        if name in ARKIT_ONLY:
            continue
        idx = _TARGETS[_key(name)]
        value = w[:, list(idx)].mean(1)
        out[livelink_name(name) if spelling == "livelink" else name] = value
    return out


def warn_ignored(names) -> list[str]:
    """Names among ``names`` that are skipped (ignored columns), warning once about them."""
    skipped = [n for n in names if canonical_name(n) is None]
    if skipped:
        warnings.warn(f"ignoring columns without an ICT shape: {skipped[:8]}", stacklevel=2)
    return skipped
