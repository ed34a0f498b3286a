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

import csv
import difflib
import io
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ._ict_names import ICT_BLENDSHAPES
from .errors import BlendshapeError

__all__ = [
    "ICT_NAMES", "ARKIT_NAMES", "ARKIT_ONLY", "IGNORED_COLUMNS", "BlendshapeError",
    "canonical_name", "to_ict_weights", "ict_to_arkit", "livelink_name", "read_weights", "parse_weights_csv",
    "parse_weights_json", "write_weights_csv",
]  # fmt: skip


ICT_NAMES: tuple[str, ...] = ICT_BLENDSHAPES  # ICT order, e.g. "eyeBlink_L", "jawOpen"


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
    if isinstance(clip_tolerance, bool) or not isinstance(clip_tolerance, (int, float)) or not clip_tolerance >= 0:
        raise BlendshapeError(f"clip_tolerance must be a number >= 0 (e.g. 0.05), got {clip_tolerance!r}")
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
            v = _weight_values(value, name)
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
        out = _weight_values(weights, "weights", flat=False)
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


def _weight_values(value, name: str, *, flat: bool = True) -> torch.Tensor:
    """float32 values of one weight (a number or (B,) values), or of a (B, 53) table."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.is_complex():
            raise BlendshapeError(f"weight {name!r} must hold real numbers, got a tensor of dtype {value.dtype}")
        value = value.numpy()
    if value is None or isinstance(value, (str, bytes, Mapping)):
        raise BlendshapeError(f"weight {name!r} must be a number in [0, 1] or one number per frame, got "
                              f"{type(value).__name__} {str(value)[:40]!r}")  # fmt: skip
    try:
        with np.errstate(all="ignore"):  # 1e300 -> inf in float32: refused below as inf
            arr = np.asarray(value)
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"dtype {arr.dtype}")
            arr = arr.astype(np.float32)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BlendshapeError(f"weight {name!r} must be a number in [0, 1] or one number per frame, got "
                              f"{type(value).__name__} ({exc})") from None  # fmt: skip
    out = torch.as_tensor(arr)
    if flat:
        out = out.reshape(-1)
        if out.numel() == 0:
            raise BlendshapeError(f"weight {name!r} is empty; give a number in [0, 1] or one number per frame")
    return out


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


# ---- files: Live Link Face CSV, plain CSV, JSON ------------------------------------------
def _check_value(value: float, where: str, clip_tolerance: float) -> float:
    if not math.isfinite(value):
        raise BlendshapeError(f"{where}: weight is {value} (NaN or inf); every weight must be a number in [0, 1]")
    if value < -clip_tolerance or value > 1 + clip_tolerance:
        raise BlendshapeError(f"{where}: weight {value:g} is outside [0, 1] (values within {clip_tolerance} of the "
                              "range are clipped; percentages? divide by 100)")  # fmt: skip
    return value


def parse_weights_csv(text: str, *, source: str = "CSV", clip_tolerance: float = 0.05) -> torch.Tensor:
    """ICT-ordered weights ``(frames, 53)`` from CSV text, one frame per row.

    The header names the columns in any of the three spellings (a Live Link Face export
    works as is); ``Timecode``, ``BlendShapeCount``, head / eye rotations, ``frame``,
    ``time`` and ``tongueOut`` columns are ignored. The delimiter may be ``,``, ``;`` or tab.

    Raises:
        BlendshapeError: no header or no frames, an unknown column (close matches listed), no
            blendshape column at all, a row with more or fewer fields than the header
            (ragged), a value that is not a number, NaN, or out of [0, 1] beyond the tolerance
            (the message names the line and column).
    """
    lines = text.lstrip("\ufeff").splitlines()
    first = next((ln for ln in lines if ln.strip()), None)
    if first is None:
        raise BlendshapeError(f"{source}: empty file; expected a header of blendshape names and one row per frame")
    delimiter = max(",;\t", key=first.count)
    rows = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)
    header: list[str] | None = None
    columns: list[tuple[int, str]] = []
    values: dict[str, list[float]] = {}
    for lineno, row in enumerate(rows, start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if header is None:
            header = [c.strip() for c in row]
            seen: dict[str, str] = {}
            for i, name in enumerate(header):
                if not name:
                    continue
                try:
                    canon = canonical_name(name)
                except BlendshapeError as exc:
                    raise BlendshapeError(f"{source}: column {i + 1}: {exc}") from None
                if canon is None:
                    continue
                if canon in seen:
                    raise BlendshapeError(f"{source}: columns {seen[canon]!r} and {name!r} name the same shape")
                seen[canon] = name
                columns.append((i, name))
                values[name] = []
            if not columns:
                raise BlendshapeError(f"{source}: no column names a blendshape (header: {header[:6]}...); expected "
                                      "ICT, ARKit / MediaPipe or Live Link Face names such as jawOpen or JawOpen")  # fmt: skip
            continue
        if len(row) != len(header):
            raise BlendshapeError(f"{source}: line {lineno} has {len(row)} fields but the header has {len(header)} "
                                  "(ragged CSV); every row must have one value per column")  # fmt: skip
        for i, name in columns:
            cell = row[i].strip()
            try:
                v = float(cell)
            except ValueError:
                raise BlendshapeError(f"{source}: line {lineno}, column {name!r}: {cell!r} is not a number") from None
            values[name].append(_check_value(v, f"{source}: line {lineno}, column {name!r}", clip_tolerance))
    if header is None:
        raise BlendshapeError(f"{source}: empty file; expected a header of blendshape names and one row per frame")
    if not values[columns[0][1]]:
        raise BlendshapeError(f"{source}: a header but no frames")
    return to_ict_weights({n: np.asarray(v, np.float32) for n, v in values.items()}, clip_tolerance=clip_tolerance)


def _frame_dict(frame, where: str) -> dict:
    if isinstance(frame, Mapping):
        return dict(frame)
    if isinstance(frame, list) and all(isinstance(c, Mapping) for c in frame):  # MediaPipe categories
        out = {}
        for c in frame:
            name = c.get("categoryName", c.get("category_name"))
            if name is None or "score" not in c:
                raise BlendshapeError(f"{where}: a category without 'categoryName' and 'score': {c}")
            out[name] = c["score"]
        return out
    raise BlendshapeError(f"{where}: a frame must be an object of name -> weight (or MediaPipe categories), "
                          f"got {type(frame).__name__}")  # fmt: skip


def parse_weights_json(obj, *, source: str = "JSON", clip_tolerance: float = 0.05) -> torch.Tensor:
    """ICT-ordered weights ``(frames, 53)`` from parsed JSON.

    Accepted layouts: ``{"jawOpen": [0.1, 0.2, ...], ...}`` (one list per name, or one number
    for a single frame); a list of frames ``[{"jawOpen": 0.1, ...}, ...]`` (names missing from
    a frame are 0); ``{"frames": [...]}``; MediaPipe's blendshape categories per frame
    ``[[{"categoryName": "jawOpen", "score": 0.1}, ...], ...]``.
    """
    if isinstance(obj, Mapping) and set(obj) == {"frames"}:
        obj = obj["frames"]
    if isinstance(obj, Mapping):
        cols = {}
        for name, v in obj.items():
            if canonical_name(str(name)) is None:
                continue
            arr = np.asarray(v, dtype=object).reshape(-1)
            cols[name] = [_check_value(_number(x, f"{source}: {name!r}[{j}]"), f"{source}: {name!r}[{j}]", clip_tolerance)
                          for j, x in enumerate(arr)]  # fmt: skip
        if not cols:
            raise BlendshapeError(f"{source}: no key names a blendshape (keys: {sorted(map(str, obj))[:6]})")
        lengths = {n: len(obj[n]) for n in cols if isinstance(obj[n], (list, tuple))}
        if len(set(lengths.values())) > 1:
            raise BlendshapeError(f"{source}: lists of different lengths {lengths} (ragged); every name needs one "
                                  "value per frame")  # fmt: skip
        return to_ict_weights({n: np.asarray(v, np.float32) for n, v in cols.items()}, clip_tolerance=clip_tolerance)
    if isinstance(obj, list):
        if not obj:
            raise BlendshapeError(f"{source}: an empty list of frames")
        frames = [_frame_dict(f, f"{source}: frame {i}") for i, f in enumerate(obj)]
        cols: dict[str, np.ndarray] = {}  # canonical name -> values
        keys: set[str] = set()
        for i, f in enumerate(frames):
            seen: dict[str, str] = {}
            for name, value in f.items():
                keys.add(str(name))
                canon = canonical_name(str(name))
                if canon is None:
                    continue
                where = f"{source}: frame {i}, {name!r}"
                if canon in seen:
                    raise BlendshapeError(f"{where}: the shape is also given as {seen[canon]!r} in this frame")
                seen[canon] = name
                cols.setdefault(canon, np.zeros(len(frames), np.float32))[i] = _check_value(
                    _number(value, where), where, clip_tolerance)  # fmt: skip
        if not cols:
            raise BlendshapeError(f"{source}: no key names a blendshape (keys: {sorted(keys)[:6]})")
        return to_ict_weights(cols, clip_tolerance=clip_tolerance)
    raise BlendshapeError(f"{source}: expected an object of name -> weights or a list of frames, got {type(obj).__name__}")


def _number(x, where: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise BlendshapeError(f"{where}: {x!r} is not a number")
    return float(x)


def read_weights(path: str | os.PathLike, *, clip_tolerance: float = 0.05, as_dict: bool = False):
    """ICT-ordered weights ``(frames, 53)`` from a file: a Live Link Face CSV, a plain CSV with
    a header of names in any spelling, or JSON (see :func:`parse_weights_json`).

    The whole file is read and checked before anything is returned. With ``as_dict`` the
    result is ``{ict_name: (frames,) tensor}``, the form ``FaceModel.sample`` /
    ``transfer_expression`` / ``add_expressions`` take.

    Raises:
        BlendshapeError: a file that cannot be used (see :func:`parse_weights_csv`).
        FileNotFoundError: no such file.

    Example:
        >>> w = read_weights("MySlate_3_iPhone.csv", as_dict=True)     # Live Link Face export
        >>> frames = model.transfer_expression(w, model.sample(seed=0))
    """
    w = _read_weights(path, clip_tolerance)
    return {n: w[:, i] for i, n in enumerate(ICT_NAMES)} if as_dict else w


def _read_weights(path, clip_tolerance: float) -> torch.Tensor:
    from ._validate import check_path

    path = _expand(Path(check_path("path", path)))
    if not path.is_file():
        raise BlendshapeError(f"no weights file at {str(path)!r}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BlendshapeError(f"{path.name}: not a UTF-8 text file ({exc}); export the weights as CSV or JSON") from None
    except OSError as exc:
        raise BlendshapeError(f"cannot read the weights file {str(path)!r}: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BlendshapeError(f"{path.name}: not valid JSON ({exc})") from None
        return parse_weights_json(obj, source=path.name, clip_tolerance=clip_tolerance)
    return parse_weights_csv(text, source=path.name, clip_tolerance=clip_tolerance)


def _expand(path: Path) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:  # "~nosuchuser/..."
        raise BlendshapeError(f"cannot expand the home folder in {str(path)!r}; give an absolute path") from None


def write_weights_csv(path: str | os.PathLike, weights, *, spelling: str = "livelink", fps: float = 60.0) -> Path:
    """Write weights ``(frames, 53)`` (ICT order, or a name dict) as CSV, atomically.

    ``spelling="livelink"`` writes a Live Link Face-style file (``Timecode``,
    ``BlendShapeCount``, 51 ARKit columns); ``"arkit"`` ARKit names; ``"ict"`` the 53 ICT
    names. Reads back with :func:`read_weights`.
    """
    from ._fs import atomic_file

    w = to_ict_weights(weights, clip_tolerance=float("inf"))
    if spelling == "ict":
        cols = {n: w[:, i] for i, n in enumerate(ICT_NAMES)}
    else:
        cols = ict_to_arkit(w, spelling=spelling)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    extra = ["Timecode", "BlendShapeCount"] if spelling == "livelink" else []
    writer.writerow(extra + list(cols))
    table = torch.stack(list(cols.values()), 1).numpy()
    for i, row in enumerate(table):
        t = i / fps
        lead = [f"00:00:{int(t):02d}:{int(round((t % 1) * fps)):02d}.000", len(cols)] if extra else []
        writer.writerow(lead + [f"{v:.6g}" for v in row])
    with atomic_file(path, "w") as f:
        f.write(out.getvalue())
    return Path(path)
