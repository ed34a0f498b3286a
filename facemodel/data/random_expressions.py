"""Random realistic blendshape weights: single frames of the ICT 4D builder's motion, in batches.

:func:`random_expressions` draws what a random mesh of the training data shows, without reading
any data and without generating whole sequences: each row is one frame of one kind of motion
the builder makes (:mod:`facemodel.data.builder`, :class:`~facemodel.data.expressions.ExpressionSampler`),
drawn directly from that frame's distribution, all rows of a kind at once in NumPy. Where a
sequence's value at a frame is a sum of sinusoids with uniform random phases, the frame's value
is drawn with a uniform phase (the same distribution at every frame). ``FaceModel.sample`` puts
these weights through the blendshape map (its default expression prior), so a batch of 1,024
faces costs a few milliseconds here, not a Python loop per face.
"""

from __future__ import annotations

import numpy as np

from .._validate import check_int
from .expressions import (
    _ALL_AUS,
    _CLOSE,
    _EXCLUSIVE,
    _GAZE,
    _INDEX,
    _JAW,
    _SIDE_SCALE,
    _SPEECH,
    AU_TO_BLENDSHAPES,
    EMOTION_PROTOTYPES,
    EMOTIONS,
    EXPRESSION_LABELS,
    EXPRESSION_MIX,
    ICT_BLENDSHAPES,
    STATIC_INTENSITIES,
    SWEEP_FRAMES,
    _vec,
    constrain,
)

__all__ = ["random_expressions"]

_S = len(ICT_BLENDSHAPES)
_AU = np.stack([_vec(AU_TO_BLENDSHAPES[a]) for a in _ALL_AUS])  # (A, 53) weights of each AU at full intensity
_PROTO = np.asarray([[EMOTION_PROTOTYPES[lab].get(a, 0.0) for a in _ALL_AUS] for lab in EXPRESSION_LABELS])  # (7, A)
_NEUTRAL = EXPRESSION_LABELS.index("neutral")
_EMOTION_IDX = np.asarray([EXPRESSION_LABELS.index(lab) for lab in EMOTIONS])
_BLINK = np.sin(np.linspace(0.3, 2.8, 5))  # a blink's 5 frames
_EYES = [_INDEX["eyeBlink_L"], _INDEX["eyeBlink_R"]]
_SPEECH_IDX = np.asarray([_INDEX[n] for n in _SPEECH])
_GAZE_MAP = np.zeros((len(_GAZE), _S))
for _g, _cols in enumerate(_GAZE):
    _GAZE_MAP[_g, list(_cols)] = 1.0


def _choose(rng: np.random.Generator, m: int, pool: int, k: np.ndarray | int) -> np.ndarray:
    """(m, pool) bool: ``k`` (per row) distinct random entries of each row."""
    rank = rng.random((m, pool)).argsort(1).argsort(1)
    return rank < np.asarray(k).reshape(-1, 1)


def _emotions(labels: np.ndarray, intensity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(m, 53) :meth:`ExpressionSampler.emotion` of ``EXPRESSION_LABELS[labels]`` at ``intensity``."""
    m, A = len(labels), len(_ALL_AUS)
    aus = _PROTO[labels] * intensity[:, None] * np.clip(1 + 0.15 * rng.standard_normal((m, A)), 0.5, 1.5)
    extra = _choose(rng, m, A, rng.integers(1, 3, size=m)) * rng.uniform(0.02, 0.2, (m, A))
    aus += extra * np.where(labels == _NEUTRAL, 0.25, 1.0)[:, None]  # neutral stays close to rest
    asym = 1 + 0.1 * rng.standard_normal((m, 2))
    return constrain((aus @ _AU) * (asym @ _SIDE_SCALE.T))


def _curve(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A frame of :meth:`ExpressionSampler.smooth_curve`: three sinusoids at uniform random phases."""
    a = rng.uniform(0.3, 1.0, (*shape, 3))
    return np.clip((a * np.sin(rng.uniform(0, 2 * np.pi, (*shape, 3)))).sum(-1) / 2.0, 0.0, 1.0)


def _blink_level(m: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """(m,) the eyes' blink at a random frame of a ``frames``-long sequence: a blink starts at
    each frame with probability 1/40 and lasts 5 frames (:meth:`ExpressionSampler.free_sequence`)."""
    f = rng.integers(frames, size=m)
    started = (f[:, None] - np.arange(5)[None] >= 0) & (rng.random((m, 5)) < 1 / 40)
    return (started * _BLINK[None]).max(1)


def _noise(m: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 0.03, (m, _S)) * (rng.random((m, _S)) < 0.05)


def _held(rng: np.random.Generator, t: np.ndarray, frames: int, shape: tuple[int, ...]) -> np.ndarray:
    """:meth:`ExpressionSampler._held_curve` at frames ``t`` (broadcast over ``shape``)."""
    hold = rng.uniform(0.5, 0.9, shape) * frames
    start = rng.uniform(0, 1, shape) * (frames - hold)
    ramp = max(2.0, 0.1 * frames)
    env = np.minimum(np.clip((t - start) / ramp + 0.5, 0, 1), np.clip((start + hold - t) / ramp + 0.5, 0, 1))
    env = env * env * (3 - 2 * env)
    drift = 1 + 0.1 * np.sin(rng.uniform(0, 2 * np.pi, shape))
    return np.clip(env * drift * rng.uniform(0.7, 1.0, shape), 0.0, 1.0)


def _static(m: int, rng: np.random.Generator) -> np.ndarray:
    """A static subject's scan: neutral once, each emotion at 0.4 / 0.6 / 0.8 / 1.0."""
    j = rng.integers(1 + len(EMOTIONS) * len(STATIC_INTENSITIES), size=m)
    labels = np.where(j == 0, _NEUTRAL, _EMOTION_IDX[np.maximum(j - 1, 0) // len(STATIC_INTENSITIES)])
    intensity = np.where(j == 0, 1.0, np.asarray(STATIC_INTENSITIES)[np.maximum(j - 1, 0) % len(STATIC_INTENSITIES)])
    return _emotions(labels, intensity, rng)


def _emotion_frames(m: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A random frame of :meth:`ExpressionSampler.emotion_sequence` of a random emotion."""
    f = rng.integers(frames, size=m)
    apex = _emotions(_EMOTION_IDX[rng.integers(len(EMOTIONS), size=m)], rng.uniform(0.7, 1.0, m), rng)
    envelope = np.sin(np.pi * f / (frames - 1)) ** 1.5
    blinks = _with_blinks(np.zeros((m, _S)), frames, rng)  # a frame of free_sequence(frames, "blinks")
    w = constrain(envelope[:, None] * apex + blinks * (f != frames // 2)[:, None])
    ends = (f == 0) | (f == frames - 1)
    w[ends] = _emotions(np.full(int(ends.sum()), _NEUTRAL), np.ones(int(ends.sum())), rng)
    return w


def _free_frames(m: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A random frame of ``free_sequence(frames, kind)``, kind speech, blinks or mixed."""
    kind = rng.integers(3, size=m)
    w = np.zeros((m, _S))
    speech = kind == 0  # 4 mouth shapes, each on its own curve at 0.3-0.8
    on = _choose(rng, m, len(_SPEECH), 4) & speech[:, None]
    w[:, _SPEECH_IDX] = on * _curve(rng, (m, len(_SPEECH))) * rng.uniform(0.3, 0.8, (m, len(_SPEECH)))
    mixed = kind == 2  # 3 AUs, each on its own slow curve at 0.3-0.9
    on = _choose(rng, m, len(_ALL_AUS), 3) & mixed[:, None]
    w += (on * _curve(rng, (m, len(_ALL_AUS))) * rng.uniform(0.3, 0.9, (m, len(_ALL_AUS)))) @ _AU
    return _with_blinks(w, frames, rng)


def _with_blinks(w: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """``free_sequence``'s last steps: the eyes blink, faint noise on 5 % of the weights, constrain."""
    w[:, _EYES] = np.maximum(w[:, _EYES], _blink_level(len(w), frames, rng)[:, None])
    return constrain(w + _noise(len(w), rng))


def _tracker_frames(m: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A random frame of :meth:`ExpressionSampler.tracker_sequence`: a sweep (one sequence in
    three: ``frames // 10`` shapes alone one after the other) or 3-8 shapes on held curves, a
    third of those with a coherent gaze."""
    f = rng.integers(frames, size=m)
    sweep = rng.random(m) < 1 / 3
    k = max(1, frames // SWEEP_FRAMES)
    edges = np.linspace(0, frames, k + 1).round().astype(int)
    seg = np.searchsorted(edges, f, side="right") - 1
    a, b = edges[seg], edges[seg + 1]
    level = np.sin(np.pi * (f - a) / np.maximum(b - a - 1, 1)) * rng.uniform(0.8, 1.0, m)
    w_sweep = np.zeros((m, _S))
    w_sweep[np.arange(m), rng.integers(_S, size=m)] = level
    w = _choose(rng, m, _S, rng.integers(3, 9, size=m)) * _held(rng, f[:, None].astype(float), frames, (m, _S))
    for i, j in _EXCLUSIVE:  # the weaker of two opposite shapes rests
        weaker = np.where(w[:, i] >= w[:, j], j, i)
        w[np.arange(m), weaker] = 0.0
    gaze = (rng.random(m) < 1 / 3)[:, None] * _GAZE_MAP[rng.integers(len(_GAZE), size=m)]
    w = np.maximum(w, gaze * _held(rng, f.astype(float), frames, (m,))[:, None])
    w = np.where(sweep[:, None], w_sweep, w)
    w[:, _JAW] = np.maximum(w[:, _JAW], w[:, _CLOSE])
    return constrain(w)


def random_expressions(
    n: int,
    rng: np.random.Generator,
    *,
    mix: dict[str, float] | None = None,
    frames: int = 40,
    emotion_frames: int = 25,
) -> np.ndarray:
    """(n, 53) random blendshape weights of realistic expressions, drawn like the training data's.

    Each row is one frame of the motion the ICT 4D builder makes (no data is read): a kind
    is drawn from ``mix`` (default :data:`~facemodel.data.expressions.EXPRESSION_MIX`, the
    release build's shares), then

    - ``"static"``: a static scan, neutral or one of the six emotions at 0.4 / 0.6 / 0.8 / 1.0;
    - ``"emotion"``: a random frame of a neutral -> apex -> neutral sequence
      (:meth:`~facemodel.data.expressions.ExpressionSampler.emotion_sequence`, ``emotion_frames`` long);
    - ``"free"``: a random frame of a speech, blink or mixed-AU sequence (``frames`` long);
    - ``"tracker"``: a random frame of tracker-like motion over all 53 shapes: one sequence
      in three sweeps shapes alone one after the other, the others hold 3-8 shapes at once.

    So about half the rows are mild (speech, blinks) and a quarter near rest, as in the data
    (pinned by ``tests/test_builder.py`` against the builder's own plan). ``FaceModel.sample``
    maps such weights to expression codes (its default prior for models with a blendshape map).

    Args:
        n: number of rows (>= 0).
        rng: the random stream (the same stream gives the same rows).
        mix: {kind: share} over ``"static"``, ``"emotion"``, ``"free"``, ``"tracker"``
            (shares >= 0, normalised; missing kinds are not drawn).
        frames: length of the free-form and tracker sequences a frame is taken from (>= 10).
        emotion_frames: length of an emotion sequence (>= 5).

    Returns:
        (n, 53) float64 weights in [0, 1], ICT order (``mouthClose <= jawOpen``).

    Raises:
        InvalidArgumentError: ``n`` negative, an unknown kind or a negative share, all
            shares 0, or sequences too short.
    """
    from ..errors import InvalidArgumentError

    n = check_int("n", n, lo=0)
    frames = check_int("frames", frames, lo=SWEEP_FRAMES)
    emotion_frames = check_int("emotion_frames", emotion_frames, lo=5)
    mix = EXPRESSION_MIX if mix is None else dict(mix)
    unknown = set(mix) - set(EXPRESSION_MIX)
    if unknown:
        raise InvalidArgumentError(f"unknown kinds {sorted(unknown)} in mix; use {sorted(EXPRESSION_MIX)}")
    kinds = list(mix)
    p = np.asarray([float(mix[k]) for k in kinds])
    if not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise InvalidArgumentError(f"mix shares must be finite, >= 0 and not all 0, got {mix}")
    which = rng.choice(len(kinds), size=n, p=p / p.sum())
    out = np.zeros((n, _S))
    draw = {"static": lambda m: _static(m, rng), "emotion": lambda m: _emotion_frames(m, emotion_frames, rng),
            "free": lambda m: _free_frames(m, frames, rng), "tracker": lambda m: _tracker_frames(m, frames, rng)}  # fmt: skip
    for k, kind in enumerate(kinds):
        rows = np.flatnonzero(which == k)
        if rows.size:
            out[rows] = draw[kind](rows.size)
    return out
