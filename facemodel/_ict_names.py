"""The ICT-FaceKit blendshape names (a constant shared by the SDK's blendshape API and the
dataset builder; no imports, so neither layer loads the other)."""

from __future__ import annotations

__all__ = ["ICT_BLENDSHAPES"]

#: The 53 ICT blendshapes in the order of ``vertex_indices.json["expressions"]``.
ICT_BLENDSHAPES: tuple[str, ...] = (
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

#: Expression labels, index = class id. Order follows the paper's "seven basic" labels.
EXPRESSION_LABELS: tuple[str, ...] = (
    "neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise",
)  # fmt: skip

_LR = ("_L", "_R")
