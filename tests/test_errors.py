"""The error hierarchy: every error lives in facemodel.errors, subclasses FaceModelError and
the builtin that fits, is re-exported from facemodel, and stays importable where it was."""

from __future__ import annotations

import importlib

import pytest

import facemodel
from facemodel import errors

BUILTINS = (ValueError, TypeError, KeyError, LookupError, OSError, RuntimeError, MemoryError, ArithmeticError,
            ImportError)

#: old homes of the errors that moved into errors.py (their imports must keep working)
OLD_HOMES = {
    "facemodel.model": ["WeightsNotFoundError", "WeightsFormatError", "UnknownLabelError"],
    "facemodel.hub": ["HubUploadError", "InvalidRepoIdError"],
    "facemodel.fitting": ["FittingError"],
    "facemodel.landmarks": ["LandmarkError", "UnknownLandmarksError"],
    "facemodel.io_points": ["PointsFormatError"],
    "facemodel.blendshapes": ["BlendshapeError"],
    "facemodel.expression_map": ["NoExpressionMapError"],
    "facemodel.evaluation.protocol": ["EvaluationError"],
    "facemodel.training.config": ["ConfigError"],
    "facemodel.training.checkpoint": ["CheckpointError"],
    "facemodel.training.select": ["SelectionError"],
    "facemodel.training.release": ["ReleaseError"],
}

ERRORS = [n for n in errors.__all__ if n != "FaceModelError"]


def test_the_base_is_a_plain_exception():
    assert errors.FaceModelError.__bases__ == (Exception,)


@pytest.mark.parametrize("name", ERRORS)
def test_each_error_is_a_facemodel_error_and_a_builtin(name):
    cls = getattr(errors, name)
    assert issubclass(cls, errors.FaceModelError), name
    assert issubclass(cls, BUILTINS), f"{name} subclasses no builtin other than Exception: {cls.__mro__}"
    assert cls.__module__ == "facemodel.errors"


@pytest.mark.parametrize("name", errors.__all__)
def test_each_error_is_re_exported_from_facemodel(name):
    assert getattr(facemodel, name) is getattr(errors, name)
    assert name in facemodel.__all__


@pytest.mark.parametrize("module", sorted(OLD_HOMES))
def test_the_old_import_locations_still_work(module):
    mod = importlib.import_module(module)
    for name in OLD_HOMES[module]:
        assert getattr(mod, name) is getattr(errors, name), (module, name)


def test_no_error_class_is_defined_outside_errors_py():
    import ast
    from pathlib import Path

    root = Path(facemodel.__file__).parent
    stray = []
    for path in root.rglob("*.py"):
        if path.name == "errors.py" and path.parent == root:
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                stray.append(f"{path.relative_to(root)}:{node.name}")
    assert not stray, stray


def test_unknown_label_error_prints_its_message_unquoted():
    assert str(errors.UnknownLabelError("no label 'x'")) == "no label 'x'"
