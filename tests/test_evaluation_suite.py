"""`facemodel evaluate --quick`: the whole protocol end to end on a small dataset and a random model."""

from __future__ import annotations

import json

import pytest

from facemodel.cli import main
from facemodel.errors import FaceModelError
from facemodel.evaluation.report import render_report


@pytest.fixture(scope="module")
def eval_dataset(ict, tmp_path_factory):
    """40 identities (32 / 4 / 4): the embedding networks need several validation identities."""
    from facemodel.data.builder import ICTDatasetConfig, build_ict_dataset

    out = tmp_path_factory.mktemp("ict4d") / "eval"
    build_ict_dataset(ict, out, ICTDatasetConfig(seed=3, size=700, identities=40), progress=False)
    return out


@pytest.fixture(scope="module")
def quick_report(random_model_dir, eval_dataset, ict_dir, tmp_path_factory):
    small_dataset = eval_dataset
    out = tmp_path_factory.mktemp("eval") / "report"
    cache = tmp_path_factory.mktemp("cache")
    rc = main(["evaluate", "--model", str(random_model_dir), "--data", str(small_dataset), "--out", str(out),
               "--quick", "--ict", str(ict_dir), "--cache-dir", str(cache), "--quiet"])  # fmt: skip
    assert rc == 0
    return out, cache


def test_quick_evaluation_writes_tables_and_figures(quick_report):
    out, _ = quick_report
    results = json.loads((out / "results.json").read_text())
    names = list(results["table1"])
    assert names[0] == "ours" and {"linear", "multilinear", "coma"} <= {n.split()[0].lower() for n in names}
    for name, row in results["table1"].items():
        assert 0 <= row["dec_id"] <= 100 and 0 <= row["dec_exp"] <= 100, name
        assert row["div"] > 0, name
    assert set(results["table2"]) == {n for n in names if not n.startswith("ICT")}
    for name, row in results["table2"].items():
        assert row["adam"]["0"] > 0 and row["adam"]["10"] > 0, name
    report = (out / "report.md").read_text()
    assert "Table 1" in report and "Table 2" in report and "Published numbers" in report
    for path in results["figures"].values():
        assert (out / path).stat().st_size > 1000
    assert report == render_report(results)  # the report re-renders from results.json alone
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".part")]


def test_ground_truth_generator_is_decoupled_and_random_model_is_not(quick_report):
    out, _ = quick_report
    t1 = json.loads((out / "results.json").read_text())["table1"]
    gt = next(v for k, v in t1.items() if k.startswith("ICT"))
    # the random generator mixes identity and expression in every code; the ICT generator does not
    assert gt["spill"] < t1["ours"]["spill"]
    # an untrained generator's displacements are high-frequency noise; the linear model's samples are
    # combinations of data meshes, as smooth as the data
    results = json.loads((out / "results.json").read_text())
    linear = next(v for k, v in t1.items() if k.lower().startswith("linear"))
    data = results["data"]["roughness"]
    assert data > 0 and 0.2 * data < linear["rough"] < 2 * data
    assert t1["ours"]["rough"] > 3 * linear["rough"]
    assert "Rough." in (out / "report.md").read_text()


def test_second_run_reuses_cached_baselines(quick_report, random_model_dir, eval_dataset, ict_dir, tmp_path):
    small_dataset = eval_dataset
    _, cache = quick_report
    assert any((cache / "baselines").iterdir())
    before = {p: p.stat().st_mtime_ns for p in (cache / "baselines").rglob("*.safetensors")}
    rc = main(["evaluate", "--model", str(random_model_dir), "--data", str(small_dataset), "--out", str(tmp_path / "r"),
               "--quick", "--ict", str(ict_dir), "--cache-dir", str(cache), "--quiet", "--baselines", "linear"])  # fmt: skip
    assert rc == 0
    after = {p: p.stat().st_mtime_ns for p in (cache / "baselines").rglob("*.safetensors")}
    assert before == after


def test_existing_output_is_refused(quick_report, random_model_dir, eval_dataset, ict_dir, capsys):
    small_dataset = eval_dataset
    out, cache = quick_report
    rc = main(["evaluate", "--model", str(random_model_dir), "--data", str(small_dataset), "--out", str(out),
               "--quick", "--ict", str(ict_dir), "--cache-dir", str(cache), "--quiet"])  # fmt: skip
    assert rc != 0
    assert "overwrite" in capsys.readouterr().err


def test_unknown_baseline_is_a_clear_error(random_model_dir, small_dataset, tmp_path):
    from facemodel.evaluation.suite import EvaluationSettings, fit_or_load_baselines

    with pytest.raises(FaceModelError, match="unknown baselines"):
        fit_or_load_baselines(small_dataset, EvaluationSettings.quick_settings(baselines=("pca9000",)), cache_dir=tmp_path)
