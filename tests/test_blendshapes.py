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


# ---- files ---------------------------------------------------------------------------
from facemodel.blendshapes import parse_weights_csv, parse_weights_json, read_weights, write_weights_csv  # noqa: E402

LIVELINK_HEAD = "Timecode,BlendShapeCount,EyeBlinkLeft,JawOpen,MouthSmileRight,TongueOut,HeadYaw\n"


def test_livelink_csv_header_names_and_ignored_columns(tmp_path):
    p = tmp_path / "take.csv"
    p.write_text("\ufeff" + LIVELINK_HEAD + "16:49:35:32.850,61,0.5,0.25,0,0.9,-0.3\n16:49:35:33.850,61,0.1,1.02,0.75,0,0.1\n")
    w = read_weights(p)
    assert w.shape == (2, 53)
    col = {n: w[:, ICT_NAMES.index(n)].tolist() for n in ("eyeBlink_L", "jawOpen", "mouthSmile_R")}
    assert col == {"eyeBlink_L": [0.5, pytest.approx(0.1)], "jawOpen": [0.25, 1.0], "mouthSmile_R": [0.0, 0.75]}
    assert float(w.sum()) == pytest.approx(0.5 + 0.25 + 0.1 + 1.0 + 0.75)
    d = read_weights(p, as_dict=True)
    assert set(d) == set(ICT_NAMES) and torch.equal(to_ict_weights(d), w)


def test_plain_csv_semicolons_and_json_layouts_agree():
    a = parse_weights_csv("frame;jawOpen;eyeBlink_L\n0;0.2;0\n1;0.4;1\n")
    b = parse_weights_json({"jawOpen": [0.2, 0.4], "eyeBlinkLeft": [0, 1], "time": [0, 1]})
    c = parse_weights_json([{"jawOpen": 0.2}, {"JawOpen": 0.4, "eyeBlink_L": 1}])
    d = parse_weights_json({"frames": [[{"categoryName": "_neutral", "score": 0.9}, {"categoryName": "jawOpen", "score": 0.2}],
                                       [{"categoryName": "jawOpen", "score": 0.4}, {"categoryName": "eyeBlinkLeft", "score": 1.0}]]})  # fmt: skip
    for x in (b, c, d):
        assert torch.allclose(x, a)
    assert a[1, ICT_NAMES.index("eyeBlink_L")] == 1 and a.shape == (2, 53)


@pytest.mark.parametrize("spelling", ["livelink", "arkit", "ict"])
def test_write_then_read_round_trip(tmp_path, spelling):
    g = torch.Generator().manual_seed(1)
    w = torch.rand(7, 53, generator=g)
    if spelling != "ict":  # ARKit has one browInnerUp / cheekPuff for both ICT halves
        for a, b in [("browInnerUp_L", "browInnerUp_R"), ("cheekPuff_L", "cheekPuff_R")]:
            w[:, ICT_NAMES.index(b)] = w[:, ICT_NAMES.index(a)]
    back = read_weights(write_weights_csv(tmp_path / f"{spelling}.csv", w, spelling=spelling))
    assert torch.allclose(back, w, atol=1e-5)


@pytest.mark.parametrize("text, words", [
    ("", "empty file"),
    ("Timecode,BlendShapeCount\n1,61\n", "no column names a blendshape"),
    ("Timecode,HeadYaw,Foo\n1,2,3\n", "unknown blendshape name 'Foo'"),
    ("JawOpen,EyeBlnkLeft\n0.1,0.2\n", "did you mean 'eyeBlinkLeft'"),
    ("JawOpen,EyeBlinkLeft\n", "no frames"),
    ("JawOpen,EyeBlinkLeft\n0.1,0.2\n0.3\n", "line 3 has 1 fields but the header has 2"),
    ("JawOpen,EyeBlinkLeft\n0.1,0.2,0.5\n", "ragged"),
    ("JawOpen,EyeBlinkLeft\n0.1,abc\n", "line 2, column 'EyeBlinkLeft': 'abc' is not a number"),
    ("JawOpen,EyeBlinkLeft\n0.1,0.2\nnan,0.1\n", "line 3, column 'JawOpen'"),
    ("JawOpen\n-0.2\n", "outside [0, 1]"),
    ("JawOpen\n1.5\n", "outside [0, 1]"),
    ("JawOpen\n80\n", "divide by 100"),
    ("jawOpen,JawOpen\n0.1,0.2\n", "name the same shape"),
])  # fmt: skip
def test_bad_csv_raises_a_clear_error(text, words):
    with pytest.raises(BlendshapeError) as info:
        parse_weights_csv(text, source="take.csv")
    assert words in str(info.value)
    assert str(info.value).startswith("take.csv")


@pytest.mark.parametrize("obj, words", [
    ({"jawOpen": [0.1, "x"]}, "is not a number"),
    ({"jawOpen": [0.1, 0.2], "eyeBlinkLeft": [0.1]}, "one value per frame"),
    ({"jawOpen": [0.1, 0.2], "eyeBlinkLeft": [0.1, 0.2, 0.3]}, "ragged"),
    ([], "empty list"),
    ([{"Timecode": 1}], "no key names a blendshape"),
    ([{"jawOpen": 2.0}], "frame 0, 'jawOpen'"),
    ([3.0], "a frame must be an object"),
    ("hello", "expected an object"),
])  # fmt: skip
def test_bad_json_raises_a_clear_error(obj, words):
    with pytest.raises(BlendshapeError, match=None) as info:
        parse_weights_json(obj)
    assert words in str(info.value)


def test_read_weights_file_errors(tmp_path):
    with pytest.raises(BlendshapeError, match="no weights file"):
        read_weights(tmp_path / "missing.csv")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BlendshapeError, match="not valid JSON"):
        read_weights(tmp_path / "bad.json")
