"""Facial expressions as FACS action units (AUs) mapped onto the 53 ICT blendshapes.

The seven expression labels of the paper's data (neutral and six basic emotions) are
defined by their EMFACS prototype AU combinations (Ekman & Friesen; Matsumoto & Ekman),
and every AU by the ICT/ARKit blendshapes that produce it. A sample of a label draws a
random intensity, per-AU jitter, left/right asymmetry and a few weak extra AUs, so no two
samples of a label are identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .._ict_names import _LR, EXPRESSION_LABELS, ICT_BLENDSHAPES
from .._validate import check_int

__all__ = [
    "ICT_BLENDSHAPES",
    "EXPRESSION_LABELS",
    "AU_TO_BLENDSHAPES",
    "EMOTION_PROTOTYPES",
    "NOVEL_COMBINATIONS",
    "EXPRESSION_MIX",
    "EMOTIONS",
    "ExpressionSampler",
    "au_to_weights",
    "constrain",
    "sparse_weights",
]


def _both(name: str, w: float = 1.0) -> dict[str, float]:
    return {name + s: w for s in _LR}


#: FACS action unit -> ICT blendshape weights at full (AU "E") intensity.
AU_TO_BLENDSHAPES: dict[int, dict[str, float]] = {
    1: _both("browInnerUp"),  # inner brow raiser
    2: _both("browOuterUp"),  # outer brow raiser
    4: _both("browDown"),  # brow lowerer
    5: _both("eyeWide"),  # upper lid raiser
    6: {**_both("cheekSquint"), **_both("eyeSquint", 0.3)},  # cheek raiser
    7: _both("eyeSquint"),  # lid tightener
    9: {**_both("noseSneer"), **_both("mouthUpperUp", 0.3)},  # nose wrinkler
    10: _both("mouthUpperUp"),  # upper lip raiser
    12: _both("mouthSmile"),  # lip corner puller
    14: _both("mouthDimple"),  # dimpler
    15: _both("mouthFrown"),  # lip corner depressor
    16: _both("mouthLowerDown"),  # lower lip depressor
    17: {"mouthShrugLower": 1.0, "mouthShrugUpper": 0.4},  # chin raiser
    18: {"mouthPucker": 1.0},  # lip pucker
    20: _both("mouthStretch"),  # lip stretcher
    22: {"mouthFunnel": 1.0},  # lip funneler
    23: {"mouthRollLower": 0.5, "mouthRollUpper": 0.5},  # lip tightener
    24: _both("mouthPress"),  # lip pressor
    25: {"jawOpen": 0.15, **_both("mouthLowerDown", 0.2)},  # lips part
    26: {"jawOpen": 0.6},  # jaw drop
    27: {"jawOpen": 1.0, **_both("mouthStretch", 0.3)},  # mouth stretch
    28: {"mouthRollLower": 1.0, "mouthRollUpper": 1.0},  # lip suck
    43: _both("eyeBlink"),  # eyes closed
}

#: EMFACS prototypes: label -> {AU: relative intensity at the label's apex}.
EMOTION_PROTOTYPES: dict[str, dict[int, float]] = {
    "neutral": {},
    # AU5 kept weak: ICT's eyeWide and eyeSquint cancel each other when both are strong
    "anger": {4: 1.0, 5: 0.2, 7: 0.8, 10: 0.3, 17: 0.6, 23: 0.8, 24: 0.8},
    "disgust": {9: 1.0, 10: 0.6, 15: 0.6, 16: 0.4, 17: 0.4},
    "fear": {1: 0.9, 2: 0.7, 4: 0.5, 5: 1.0, 7: 0.3, 20: 0.9, 26: 0.5},
    "happiness": {6: 0.9, 12: 1.0, 25: 0.5},
    "sadness": {1: 1.0, 4: 0.7, 15: 1.0, 17: 0.7, 43: 0.25},  # lids droop a little
    "surprise": {1: 1.0, 2: 1.0, 5: 0.8, 26: 1.0},
}

#: Expression combinations used only in the test split (sparse-reconstruction benchmark):
#: asymmetric, extreme or otherwise never produced by the training-split generator.
NOVEL_COMBINATIONS: dict[str, dict[str, float]] = {
    "wink_smile_L": {"eyeBlink_L": 1.0, "mouthSmile_L": 1.0, "cheekSquint_L": 0.8},
    "jaw_left_pucker": {"jawLeft": 1.0, "mouthPucker": 1.0, "mouthLeft": 0.6},
    "scream": {"jawOpen": 1.0, "mouthStretch_L": 1.0, "mouthStretch_R": 1.0, "eyeSquint_L": 1.0,
               "eyeSquint_R": 1.0, "browDown_L": 1.0, "browDown_R": 1.0, "noseSneer_L": 0.8,
               "noseSneer_R": 0.8},
    "cheek_puff_brow_up": {"cheekPuff_L": 1.0, "cheekPuff_R": 1.0, "browInnerUp_L": 1.0,
                           "browInnerUp_R": 1.0, "browOuterUp_L": 1.0, "browOuterUp_R": 1.0},
    "half_sneer_R": {"noseSneer_R": 1.0, "mouthUpperUp_R": 1.0, "browDown_R": 0.8, "jawRight": 0.6},
    "funnel_roll_forward": {"mouthFunnel": 1.0, "jawForward": 1.0, "mouthRollUpper": 0.7},
}  # fmt: skip

EMOTIONS = tuple(label for label in EXPRESSION_LABELS if label != "neutral")
STATIC_INTENSITIES = (0.4, 0.6, 0.8, 1.0)  # a static subject's scans of each emotion
SWEEP_FRAMES = 10  # frames of one shape's 0 -> peak -> 0 sweep in a tracker sequence
FREE_KINDS = ("speech", "blinks", "mixed")

#: Share of each kind of motion among the meshes of the release build of the ICT 4D data
#: (``facemodel data build-ict``, 1,000 identities, 40,000 meshes, ``tracker_fraction`` 0.25:
#: 2,000 static scans, 6,675 emotion-sequence frames, 20,125 free-form frames, 10,000 tracker
#: frames; the test-only ``novel`` kind left out): the mixture
#: :func:`facemodel.data.random_expressions.random_expressions` draws from.
EXPRESSION_MIX: dict[str, float] = {"static": 2000 / 38800, "emotion": 6675 / 38800, "free": 20125 / 38800,
                                    "tracker": 10000 / 38800}  # fmt: skip

_INDEX = {n: i for i, n in enumerate(ICT_BLENDSHAPES)}
#: AUs used for extra jitter and for free-form motion.
_ALL_AUS = tuple(sorted(AU_TO_BLENDSHAPES))
#: blendshapes animated by speech-like motion
_SPEECH = ("jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthRollLower", "mouthRollUpper",
           "mouthStretch_L", "mouthStretch_R", "mouthLowerDown_L", "mouthLowerDown_R",
           "mouthUpperUp_L", "mouthUpperUp_R", "mouthPress_L", "mouthPress_R")  # fmt: skip


def _vec(weights: dict[str, float]) -> np.ndarray:
    out = np.zeros(len(ICT_BLENDSHAPES))
    for name, w in weights.items():
        out[_INDEX[name]] += w
    return out


_JAW, _CLOSE = ICT_BLENDSHAPES.index("jawOpen"), ICT_BLENDSHAPES.index("mouthClose")
#: pairs of shapes that pull opposite ways (the second is zeroed where the first moves)
_EXCLUSIVE = tuple((_INDEX[a], _INDEX[b]) for a, b in (("jawLeft", "jawRight"), ("mouthLeft", "mouthRight")))
#: coherent gaze directions: the shapes of both eyes that look the same way
_GAZE = tuple(tuple(_INDEX[n] for n in names) for names in (
    ("eyeLookUp_L", "eyeLookUp_R"), ("eyeLookDown_L", "eyeLookDown_R"),
    ("eyeLookOut_L", "eyeLookIn_R"), ("eyeLookIn_L", "eyeLookOut_R")))  # fmt: skip


def constrain(weights: np.ndarray) -> np.ndarray:
    """Clip weights to [0, 1] and keep ``mouthClose <= jawOpen`` (ARKit semantics: mouthClose
    closes the lips of an open jaw; alone it pushes the lips through each other)."""
    w = np.clip(weights, 0.0, 1.0)
    w[..., _CLOSE] = np.minimum(w[..., _CLOSE], w[..., _JAW])
    return w


def sparse_weights(n: int, rng: np.random.Generator, *, max_shapes: int = 8) -> np.ndarray:
    """(n, 53) random sparse weight vectors like a face tracker's frames, not drawn from any data.

    Each row moves 1 to ``max_shapes`` of the 53 ICT shapes (gaze, jaw and mouth sideways and
    cheek puff included), chosen uniformly, each at a uniform weight in [0, 1], then passed
    through :func:`constrain`. Used to validate weight read-backs on the inputs a tracker sends
    (``facemodel.training.blendshape_map``, ``benchmarks/bench_animate.py``).

    Args:
        n: number of vectors.
        rng: the random stream (rows are drawn one after the other: the same stream gives the
            same vectors).
        max_shapes: most shapes moved in one vector (1 to 53).

    Returns:
        (n, 53) float64 weights in [0, 1], ICT order.

    Raises:
        InvalidArgumentError: ``n`` negative or ``max_shapes`` outside 1..53.
        ArgumentTypeError: either is not an integer.
    """
    n = check_int("n", n, lo=0)
    max_shapes = check_int("max_shapes", max_shapes, lo=1, hi=len(ICT_BLENDSHAPES))
    w = np.zeros((n, len(ICT_BLENDSHAPES)))
    for i in range(n):
        k = int(rng.integers(1, max_shapes + 1))
        w[i, rng.choice(len(ICT_BLENDSHAPES), k, replace=False)] = rng.uniform(0, 1, k)
    return constrain(w)


def au_to_weights(aus: dict[int, float], *, asymmetry: np.ndarray | None = None) -> np.ndarray:
    """ICT blendshape weights (53,) for AU intensities in [0, 1].

    Args:
        aus: {AU number: intensity}.
        asymmetry: optional (2,) multipliers for the left (_L) and right (_R) shapes.

    Returns:
        (53,) float64 weights clipped to [0, 1].
    """
    w = np.zeros(len(ICT_BLENDSHAPES))
    for au, s in aus.items():
        w += s * _vec(AU_TO_BLENDSHAPES[au])
    if asymmetry is not None:
        w *= _SIDE_SCALE @ np.asarray(asymmetry)
    return constrain(w)


# (53, 3) one-hot of side: left, right, centre -> asymmetry multiplier via (53,2) @ (2,)
_SIDE_SCALE = np.array(
    [[1.0, 0.0] if n.endswith("_L") else [0.0, 1.0] if n.endswith("_R") else [0.5, 0.5] for n in ICT_BLENDSHAPES]
)


@dataclass
class ExpressionSampler:
    """Random blendshape weights for labelled expressions and free-form motion.

    Args:
        rng: numpy Generator (the builder passes one derived from its seed).
        jitter: relative std of per-AU intensity jitter.
        extra_aus: maximum number of weak extra AUs added to a labelled sample.
        extra_max: maximum intensity of an extra AU.
    """

    rng: np.random.Generator
    jitter: float = 0.15
    extra_aus: int = 2
    extra_max: float = 0.2

    def emotion(self, label: str, intensity: float) -> np.ndarray:
        """(53,) weights of one sample of ``label`` at apex intensity in (0, 1]."""
        proto = EMOTION_PROTOTYPES[label]
        aus = {au: s * intensity * float(np.clip(1 + self.jitter * self.rng.standard_normal(), 0.5, 1.5))
               for au, s in proto.items()}  # fmt: skip
        k = int(self.rng.integers(1, self.extra_aus + 1))
        for au in self.rng.choice(_ALL_AUS, size=k, replace=False):
            scale = 0.25 if label == "neutral" else 1.0  # neutral stays close to rest
            aus[int(au)] = aus.get(int(au), 0.0) + float(self.rng.uniform(0.02, self.extra_max)) * scale
        asym = 1 + 0.1 * self.rng.standard_normal(2)
        return au_to_weights(aus, asymmetry=asym)

    def emotion_sequence(self, label: str, frames: int) -> np.ndarray:
        """(frames, 53) weights of a neutral -> apex -> neutral sequence of ``label``.

        The apex (frame ``frames // 2``) is :meth:`emotion` at an intensity in [0.7, 1]; the
        other frames scale it by ``sin(pi t)^1.5`` and blink (:meth:`free_sequence` ``"blinks"``);
        the first and last frames are samples of ``"neutral"``.
        """
        t = np.arange(frames) / (frames - 1)
        envelope = np.sin(np.pi * t) ** 1.5  # 0 at both ends, 1 at the apex
        apex = self.emotion(label, float(self.rng.uniform(0.7, 1.0)))
        blinks = self.free_sequence(frames, "blinks")
        out = np.empty((frames, len(ICT_BLENDSHAPES)))
        out[0] = self.emotion("neutral", 1.0)
        for f in range(1, frames - 1):
            out[f] = constrain(envelope[f] * apex + blinks[f] * (f != frames // 2))
        out[-1] = self.emotion("neutral", 1.0)
        return out

    def smooth_curve(self, frames: int, *, rate: float = 0.15) -> np.ndarray:
        """(frames,) smooth random curve in [0, 1] (sum of random sinusoids, rectified)."""
        t = np.arange(frames)
        y = np.zeros(frames)
        for _ in range(3):
            f = self.rng.uniform(0.3, 1.0) * rate
            y += self.rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + self.rng.uniform(0, 2 * np.pi))
        return np.clip(y / 2.0, 0.0, 1.0)

    def _held_curve(self, frames: int) -> np.ndarray:
        """(frames,) a shape a tracker holds: rests, rises over a few frames, holds a peak in
        [0.7, 1] for 50-90 % of the sequence (with a slight drift), then falls back."""
        t = np.arange(frames, dtype=np.float64)
        hold = self.rng.uniform(0.5, 0.9) * frames
        start = self.rng.uniform(0, frames - hold)
        ramp = max(2.0, 0.1 * frames)
        up = np.clip((t - start) / ramp + 0.5, 0, 1)
        down = np.clip((start + hold - t) / ramp + 0.5, 0, 1)
        env = np.minimum(up, down)
        env = env * env * (3 - 2 * env)  # smoothstep: no kinks at the ramps' ends
        drift = 1 + 0.1 * np.sin(2 * np.pi * self.rng.uniform(0.02, 0.08) * t + self.rng.uniform(0, 2 * np.pi))
        return np.clip(env * drift * self.rng.uniform(0.7, 1.0), 0.0, 1.0)

    def tracker_sequence(self, frames: int, shapes: Sequence[int], *, sweep: bool = False) -> np.ndarray:
        """(frames, 53) tracker-like motion of the given shapes (what a face tracker emits).

        Args:
            frames: sequence length.
            shapes: indices of the shapes to move (the builder deals them from a shuffled deck
                of all 53, so that every shape moves equally often).
            sweep: move the shapes alone one after the other, each over its range (0 -> peak
                in [0.8, 1] -> 0 over an equal share of the frames);
                otherwise every shape follows its own held curve (:meth:`_held_curve`), and a
                third of the sequences add a coherent gaze (both eyes look the same way).

        Mutually exclusive shapes (``jawLeft``/``jawRight``, ``mouthLeft``/``mouthRight``)
        take turns: where both would move, the one with the larger weight moves.
        ``mouthClose`` opens the jaw at least as far (see :func:`constrain`). Weights in [0, 1].
        """
        w = np.zeros((frames, len(ICT_BLENDSHAPES)))
        if sweep:
            edges = np.linspace(0, frames, len(shapes) + 1).round().astype(int)
            for j, a, b in zip(shapes, edges[:-1], edges[1:]):
                w[a:b, int(j)] = np.sin(np.pi * np.arange(b - a) / max(b - a - 1, 1)) * self.rng.uniform(0.8, 1.0)
        else:
            for j in shapes:
                w[:, int(j)] = self._held_curve(frames)
            for a, b in _EXCLUSIVE:
                weaker = np.where(w[:, a] >= w[:, b], b, a)
                w[np.arange(frames), weaker] = 0.0
            if self.rng.random() < 1 / 3:
                curve = self._held_curve(frames)
                for j in _GAZE[int(self.rng.integers(len(_GAZE)))]:
                    w[:, j] = np.maximum(w[:, j], curve)
        w[:, _JAW] = np.maximum(w[:, _JAW], w[:, _CLOSE])
        return constrain(w)

    def free_sequence(self, frames: int, kind: str) -> np.ndarray:
        """(frames, 53) unlabelled motion: ``"speech"``, ``"blinks"``, ``"mixed"`` or ``"tracker"``
        (:meth:`tracker_sequence` of shapes drawn at random)."""
        if kind == "tracker":
            return self.tracker_sequence(frames, self.rng.choice(len(ICT_BLENDSHAPES), size=5, replace=False))
        w = np.zeros((frames, len(ICT_BLENDSHAPES)))
        if kind == "speech":
            names = self.rng.choice(_SPEECH, size=4, replace=False)
            for n in names:
                w[:, _INDEX[str(n)]] = self.smooth_curve(frames, rate=0.25) * self.rng.uniform(0.3, 0.8)
        elif kind == "mixed":
            for au in self.rng.choice(_ALL_AUS, size=3, replace=False):
                curve = self.smooth_curve(frames, rate=0.08) * self.rng.uniform(0.3, 0.9)
                w += curve[:, None] * _vec(AU_TO_BLENDSHAPES[int(au)])[None]
        elif kind != "blinks":
            raise ValueError(f"unknown free-form sequence kind {kind!r}")
        # blinks everywhere: ~ every 40 frames, 5 frames long
        blink = np.zeros(frames)
        for start in np.flatnonzero(self.rng.random(frames) < 1 / 40):
            blink[start : start + 5] = np.maximum(blink[start : start + 5], np.sin(np.linspace(0.3, 2.8, 5))[: frames - start])
        w[:, _INDEX["eyeBlink_L"]] = np.maximum(w[:, _INDEX["eyeBlink_L"]], blink)
        w[:, _INDEX["eyeBlink_R"]] = np.maximum(w[:, _INDEX["eyeBlink_R"]], blink)
        w += self.rng.uniform(0, 0.03, size=w.shape) * (self.rng.random(w.shape) < 0.05)  # faint noise
        return constrain(w)
