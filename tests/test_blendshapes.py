"""Blendshape name table: ICT, ARKit / MediaPipe and Live Link Face spellings."""

import numpy as np
import pytest
import torch

from facemodel.blendshapes import (ARKIT_NAMES, ICT_NAMES, BlendshapeError, canonical_name, ict_to_arkit,
                                   livelink_name, to_ict_weights)
from facemodel.errors import FaceModelError


def test_ict_names_match_the_data(ict):
    assert list(ICT_NAMES) == list(ict.expression_names)


def test_arkit_table_has_52_names_and_one_without_ict_shape():
    assert len(ARKIT_NAMES) == 52
    covered = [n for n in ARKIT_NAMES if canonical_name(n) is not None]
    assert sorted(set(ARKIT_NAMES) - set(covered)) == ["tongueOut"]


@pytest.mark.parametrize("name", ["eyeBlink_L", "eyeBlinkLeft", "EyeBlinkLeft"])
def test_three_spellings_address_the_same_shape(name):
    w = to_ict_weights({name: 0.7})
    assert w.shape == (1, 53)
    assert w[0, ICT_NAMES.index("eyeBlink_L")] == pytest.approx(0.7)
    assert w.sum() == pytest.approx(0.7)


def test_merged_arkit_shapes_drive_both_ict_halves_and_read_back_as_mean():
    w = to_ict_weights({"browInnerUp": 0.6, "CheekPuff": 0.2})
    for n, v in [("browInnerUp_L", 0.6), ("browInnerUp_R", 0.6), ("cheekPuff_L", 0.2), ("cheekPuff_R", 0.2)]:
        assert w[0, ICT_NAMES.index(n)] == pytest.approx(v)
    w[0, ICT_NAMES.index("browInnerUp_R")] = 0.2
    back = ict_to_arkit(w)
    assert back["browInnerUp"].item() == pytest.approx(0.4)
    assert "tongueOut" not in back
    assert set(ict_to_arkit(w, spelling="livelink")) == {livelink_name(n) for n in back}


def test_round_trip_arkit_names():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(4, 53, generator=g)
    for a, b in [("browInnerUp_L", "browInnerUp_R"), ("cheekPuff_L", "cheekPuff_R")]:
        w[:, ICT_NAMES.index(b)] = w[:, ICT_NAMES.index(a)]
    assert torch.allclose(to_ict_weights(ict_to_arkit(w)), w)


def test_batched_values_broadcast_and_ignored_columns_skipped():
    w = to_ict_weights({"Timecode": [1, 2, 3], "JawOpen": [0.1, 0.2, 0.3], "mouthClose": 0.5, "tongueOut": 1.0})
    assert w.shape == (3, 53)
    assert torch.allclose(w[:, ICT_NAMES.index("jawOpen")], torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(w[:, ICT_NAMES.index("mouthClose")], torch.full((3,), 0.5))


def test_small_overshoot_is_clipped():
    w = to_ict_weights(np.full(53, 1.02))
    assert float(w.max()) == 1.0


@pytest.mark.parametrize("bad, words", [
    ({"jawOpn": 1.0}, "did you mean 'jawOpen'"),
    ({"jawOpen": float("nan")}, "NaN"),
    ({"jawOpen": -0.5}, "[0, 1]"),
    ({"jawOpen": 50.0}, "Divide by 100"),
    ({"jawOpen": [0.1, 0.2], "eyeBlinkLeft": [0.1, 0.2, 0.3]}, "one value per frame"),
    ({"Timecode": 1.0}, "none of the names"),
    ({"eyeBlink_L": 0.1, "EyeBlinkLeft": 0.2}, "given twice"),
    ({}, "empty"),
    (np.zeros((2, 52)), "(B, 53)"),
])
def test_bad_input_raises_a_clear_error(bad, words):
    with pytest.raises(BlendshapeError) as info:
        to_ict_weights(bad)
    assert words in str(info.value)
    assert isinstance(info.value, FaceModelError)
