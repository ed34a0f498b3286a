import json
import math

import numpy as np
import pytest
import torch

from facemodel.cli import main as cli_main
from facemodel.model import FaceModel, WeightsFormatError, WeightsNotFoundError
from facemodel.training import Trainer, load_config
from facemodel.training.config import ConfigError

REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


def tiny(small_dataset, **overrides):
    base = {"data": str(small_dataset), "threads": 1, "eval_every": 0, "sample_every": 0}
    base.update(overrides)
    return load_config(REPO_CONFIGS / "tiny.yaml", [f"{k}={json.dumps(v)}" for k, v in base.items()])


def test_config_files_round_trip(tmp_path):
    for name in ("paper.yaml", "cpu.yaml", "tiny.yaml", "release.yaml", "release-0.1.yaml", "release-0.2.yaml",
                 "release-0.3.yaml", "release-0.4.yaml", "release-0.5.yaml", "release-0.6.yaml"):
        cfg = load_config(REPO_CONFIGS / name)
        cfg.to_file(tmp_path / f"{name}.json")
        assert load_config(tmp_path / f"{name}.json") == cfg
    paper = load_config(REPO_CONFIGS / "paper.yaml")
    assert (paper.classification.critic_weight, paper.adversarial.weight, paper.classification.weight, paper.feature.weight,
            paper.laplacian.weight) == (0.1, 1, 1, 0.5, 100)  # fmt: skip
    assert [(f.name, f.code_dim) for f in paper.factors] == [("identity", 65), ("expression", 15)]
    assert (paper.noise_dim, paper.batch_size, paper.critic_steps, paper.lr, paper.epochs) == (5, 64, 3, 2e-4, 200)
    assert tuple(paper.betas) == (0.9, 0.999) and paper.instance_noise == 0.1


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(REPO_CONFIGS / "paper.yaml", ["lr=1e-4", "use_reg=false", "data=/x/y"])
    assert cfg.lr == 1e-4 and cfg.laplacian.weight == 0 and cfg.data == "/x/y"
    with pytest.raises(ConfigError, match="lr_typo"):
        load_config(REPO_CONFIGS / "paper.yaml", ["lr_typo=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(REPO_CONFIGS / "paper.yaml", ["lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(tmp_path / "bad.yaml")


def _params(trainer):
    return {k: v.clone() for k, v in {**{"G." + k: v for k, v in trainer.G.state_dict().items()},
                                      **{"D." + k: v for k, v in trainer.D.state_dict().items()},
                                      **{"E." + k: v for k, v in trainer.G_ema.state_dict().items()}}.items()}  # fmt: skip


def test_kill_and_resume_matches_uninterrupted_run(small_dataset, tmp_path):
    torch.use_deterministic_algorithms(True, warn_only=True)
    cfg = tiny(small_dataset, max_steps=6, checkpoint_every=3)
    straight = Trainer(cfg, tmp_path / "a", progress=False)
    straight.train(max_steps=3)
    state_after_3 = straight.sampler.state_dict()
    straight.train(max_steps=3)
    expected = _params(straight)

    first = Trainer(cfg, tmp_path / "b", progress=False)
    first.train(max_steps=3)  # checkpoint at step 3, then "killed"
    del first
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # a line logged after the checkpoint, then killed
        f.write(json.dumps({"step": 4, "wdist": 0.0}) + "\n")
    probe = Trainer(cfg, tmp_path / "c", progress=False)  # built first: a new Trainer reseeds torch
    probe.sampler.load_state_dict(state_after_3)
    resumed = Trainer(cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed.step == 3 and resumed.sampler.state_dict() == state_after_3
    assert np.array_equal(resumed.sampler.next(), probe.sampler.next())  # same next batch
    resumed.sampler.load_state_dict(state_after_3)
    resumed.train(max_steps=3)
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and 4 not in steps  # the killed run's line (step 4) was dropped
    got = _params(resumed)
    assert got.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0, msg=k)


def test_resume_refuses_other_dataset(small_dataset, tmp_path, ict):
    from facemodel.data.builder import ICTDatasetConfig, build_ict_dataset
    from facemodel.training.checkpoint import CheckpointError

    t = Trainer(tiny(small_dataset, max_steps=1), tmp_path / "run", progress=False)
    t.train()
    other = build_ict_dataset(ict, tmp_path / "other", ICTDatasetConfig(seed=99, size=600, identities=10), progress=False)
    assert other.checksum
    with pytest.raises(CheckpointError, match="another dataset"):
        Trainer(tiny(tmp_path / "other", max_steps=1), tmp_path / "run", resume=True, progress=False)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Trainer(tiny(small_dataset), tmp_path / "fresh", resume=True, progress=False)


def test_tiny_run_learns_and_exports(small_dataset, tmp_path):
    cfg = tiny(small_dataset, max_steps=60, log_every=5, eval_every=20, sample_every=30)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in records if "wdist" in r]
    evals = [r["eval"] for r in records if "eval" in r]
    assert [r["step"] for r in logs][:3] == [5, 10, 15]
    first, last = logs[:2], logs[-4:]
    # the critic learns to tell real from generated meshes, and to classify real labels
    assert np.mean([r["wdist"] for r in last]) > 5 + np.mean([r["wdist"] for r in first])
    assert np.mean([r["d_cls"] for r in last]) < np.mean([r["d_cls"] for r in first])
    # the generator leaves the template towards the data (whose meshes lie far from it)
    assert evals[-1]["raw"]["offset_mm"] > evals[0]["raw"]["offset_mm"]
    assert evals[0]["data"]["offset_mm"] > evals[-1]["raw"]["offset_mm"]
    assert evals[-1]["ema"]["val_specificity_mm"] > 0 and evals[-1]["data"]["val_specificity_mm"] > 0
    assert all(np.isfinite(r["g_loss"]) for r in logs)
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["step0000030.png", "step0000060.png"]
    # export of the EMA generator loads back with identical outputs
    path = trainer.export()
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    model = FaceModel.from_pretrained(path)
    z = torch.randn(3, trainer.gen_config.code_dim)
    with torch.no_grad():
        torch.testing.assert_close(model(z), trainer.G_ema(z) + trainer.template_t, rtol=0, atol=0)
    assert model.config.label_names["expression"][4] == "happiness"
    torch.testing.assert_close(model.label_codes("expression"), trainer.codes.codes("expression"))
    assert model.faces.shape == (18460, 3) and model.landmarks.shape == (68,) and model.uv.shape == (9409, 2)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="save_pretrained"):
        FaceModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(WeightsFormatError, match="not a valid"):
        FaceModel.from_pretrained(tmp_path)


def test_three_factor_model_trains(small_dataset, tmp_path):
    factors = [{"name": "identity", "code_dim": 6, "labels": "identity"},
               {"name": "expression", "code_dim": 4, "labels": "expression"},
               {"name": "mood", "code_dim": 4, "labels": "expression"}]  # fmt: skip
    trainer = Trainer(tiny(small_dataset, factors=factors, max_steps=6), tmp_path / "run", progress=False)
    assert set(trainer.D.heads) == {"real", "identity", "expression", "mood"}
    assert trainer.gen_config.code_dim == 6 + 4 + 4 + 2
    trainer.train()
    assert trainer.step == 6
    model = FaceModel.from_pretrained(trainer.export())
    assert model.config.label_names["mood"] == model.config.label_names["expression"]


def test_ablation_flags_change_the_losses(small_dataset, tmp_path):
    t = Trainer(tiny(small_dataset, use_reg=False, use_feature_loss=False, classify="identity", max_steps=2),
                tmp_path / "run", progress=False)  # fmt: skip
    logs = t.train_step()
    assert logs["g_reg"] == 0 and logs["g_feat"] == 0
    assert t.classified == ("identity",)


def test_cli_train_dry_run_and_run(small_dataset, tmp_path, capsys):
    args = ["train", "--config", str(REPO_CONFIGS / "tiny.yaml"), "--out", str(tmp_path / "run"),
            f"data={json.dumps(str(small_dataset))}", "threads=1", "eval_every=0", "sample_every=0"]  # fmt: skip
    assert cli_main(args + ["--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["batch_size"] == 16
    assert cli_main(args + ["--max-steps", "2", "--quiet"]) == 0
    assert "step 2/40" in capsys.readouterr().out
    assert cli_main(["train", "--out", str(tmp_path / "run"), "--resume", "--max-steps", "1", "--quiet"]) == 0
    assert "step 3/40" in capsys.readouterr().out
    assert cli_main(["train", "--out", str(tmp_path / "run"), "--export-only", "--export", str(tmp_path / "m")]) == 0
    assert "exported step 3" in capsys.readouterr().out and (tmp_path / "m" / "config.json").is_file()
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_runs_under_torchrun_with_two_processes(small_dataset, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "facemodel.training",
           "--config", str(REPO_CONFIGS / "tiny.yaml"), "--out", str(tmp_path / "run"), "--quiet",
           f"data={json.dumps(str(small_dataset))}", "max_steps=3", "threads=1", "eval_every=0", "sample_every=0"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step 3/3" in r.stdout
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 3 and ckpt["sampler"]["position"] == 3 * 8 * 3  # per-rank batch 8 = 16 / 2
    assert FaceModel.from_pretrained(tmp_path / "run" / "model").num_vertices == 9409


def test_bf16_autocast_step_is_finite(small_dataset, tmp_path):
    t = Trainer(tiny(small_dataset, bf16=True, max_steps=2), tmp_path / "run", progress=False)
    logs = t.train_step()
    assert all(np.isfinite(v) for v in logs.values())
    assert t.G.fc2.weight.dtype == torch.float32  # weights stay float32 under autocast


def test_sigterm_checkpoints_and_stops(small_dataset, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "facemodel.training", "--config", str(REPO_CONFIGS / "tiny.yaml"),
           "--out", str(tmp_path / "run"), "--quiet", f"data={json.dumps(str(small_dataset))}",
           "max_steps=100000", "checkpoint_every=100000", "threads=1", "eval_every=0", "sample_every=0",
           "log_every=1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    step = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"]
    assert step >= 3 and f"step {step}/100000" in out  # stopped early, with a checkpoint of its last step


def test_prior_pairs_draw_unlabelled_codes_for_whole_pairs():
    from facemodel.networks.config import Factor, GeneratorConfig
    from facemodel.training.codes import LabelCodes, sample_codes

    cfg = GeneratorConfig(num_vertices=10, factors=(Factor(name="identity", code_dim=4, num_labels=3),
                                                    Factor(name="expression", code_dim=2, num_labels=2)))  # fmt: skip
    codes = LabelCodes(cfg, seed=0)
    torch.manual_seed(0)
    paper = sample_codes(0, 16, cfg, codes)
    assert (paper.labels["identity"] >= 0).all()
    torch.manual_seed(0)
    b = sample_codes(0, 16, cfg, codes, prior_pairs=0.5)
    lab = b.labels["identity"]
    assert (lab[:8] >= 0).all() and (lab[8:] == -1).all()  # 4 of 8 pairs, whole pairs
    table = codes.codes("identity")
    zid = b.z[:, :4]
    assert torch.equal(zid[:8], table[lab[:8]])
    assert not any(torch.allclose(row, t) for row in zid[8:] for t in table)  # prior draws, not label codes
    assert torch.equal(b.z[0::2, 4:6], b.z[1::2, 4:6])  # pairs still share the other factor's code


def test_regression_targets_train_the_critic_branches(small_dataset, tmp_path):
    from facemodel.training.labels import IDENTITY_TARGET_DIMS

    t = Trainer(tiny(small_dataset, lambda_regress=1.0, prior_pairs=0.5, lambda_consistency=1.0, max_steps=30),
                tmp_path / "run", progress=False)  # fmt: skip
    assert set(t.D.regressors) == {"identity", "expression"}
    targets = t.terms["regression"].targets
    assert targets["identity"].shape[1] == IDENTITY_TARGET_DIMS and targets["expression"].shape[1] == 53
    assert abs(float(targets["expression"].mean())) < 1e-3  # standardised columns
    steps = [t.train_step() for _ in range(30)]
    assert all(np.isfinite(s["g_cons"]) and s["g_cons"] >= 0 for s in steps)
    assert np.mean([s["d_regress"] for s in steps[-5:]]) < steps[0]["d_regress"]  # the regressors learn
    t.save()
    again = Trainer(tiny(small_dataset, lambda_regress=1.0, prior_pairs=0.5, lambda_consistency=1.0, max_steps=30), tmp_path / "run",
                    resume=True, progress=False)  # fmt: skip
    assert torch.equal(again.D.regressors["expression"].weight, t.D.regressors["expression"].weight)
    # the paper's critic has no regressors, so its checkpoints stay loadable
    assert Trainer(tiny(small_dataset, max_steps=1), tmp_path / "paper", progress=False).D.regressors is None


def test_regression_targets_need_ict_data(small_dataset):
    from facemodel.data.dataset import FaceDataset
    from facemodel.errors import DatasetFormatError
    from facemodel.training.labels import factor_targets

    ds = FaceDataset(small_dataset, split="train")
    assert factor_targets(ds, "expression").shape == (len(ds), 53)
    with pytest.raises(DatasetFormatError, match="unknown label source"):
        factor_targets(ds, "mood")


def test_rigidity_weights_follow_the_data_expressions(small_dataset, tmp_path):
    from facemodel.data.dataset import FaceDataset
    from facemodel.training.rigidity import expression_motion_mm, rigidity_loss, rigidity_weights

    ds = FaceDataset(small_dataset, split="train")
    motion = expression_motion_mm(ds, identities=5, per_identity=40)
    assert motion.shape == (ds.manifest.num_vertices,) and (motion >= 0).all()
    lmk = ds.template.landmarks  # iBUG-68: 8 chin, 27 nose bridge top, 62 inner upper lip
    assert motion[lmk[8]] > 2 * motion[lmk[27]] and motion[lmk[62]] > 2 * motion[lmk[27]]
    w = rigidity_weights(motion, 0.5)
    assert w.max() <= 1 and w.min() > 0 and w[lmk[27]] > w[lmk[8]]
    a = torch.randn(3, len(w), 3)
    wt = torch.from_numpy(w)
    assert float(rigidity_loss(a, a, wt)) == 0
    moved = a.clone()
    moved[:, int(np.argmax(w))] += 5.0  # moving a still vertex costs more than moving a mobile one
    moved2 = a.clone()
    moved2[:, int(np.argmin(w))] += 5.0
    assert float(rigidity_loss(a, moved, wt)) > 10 * float(rigidity_loss(a, moved2, wt))
    t = Trainer(tiny(small_dataset, lambda_rigidity=10.0, max_steps=4), tmp_path / "run", progress=False)
    logs = [t.train_step() for _ in range(4)]
    assert any(s["g_rigid"] > 0 for s in logs)  # on the steps whose pairs share the identity code


def test_blendshape_meter_reads_weights_and_drives_the_consistency_term(small_dataset, tmp_path):
    from facemodel.data.dataset import FaceDataset
    from facemodel.training.expression_meter import fit_blendshape_meter

    ds = FaceDataset(small_dataset, split="train")
    meter, mae = fit_blendshape_meter(ds, meshes=600, components=200)
    spread = float(np.abs(ds.meta("blendshapes") - ds.meta("blendshapes").mean(0)).mean())
    assert mae < 0.25 * spread  # reads the weights far better than guessing the mean
    rows = np.arange(5)
    w = meter(torch.from_numpy(ds.vertices(rows)))
    assert w.shape == (5, 53)
    t = Trainer(tiny(small_dataset, lambda_blendshape_consistency=1.0, max_steps=4, meter_components=20),
                tmp_path / "run", progress=False)  # fmt: skip
    sv = torch.linalg.svdvals(t.terms["blendshape_consistency"].meter.matrix.double())
    assert int((sv > 1e-4 * sv[0]).sum()) == 20  # the knob reaches the meter (rank of a float32 matrix)
    logs = [t.train_step() for _ in range(4)]
    assert any(s["g_bcons"] > 0 for s in logs) and all(np.isfinite(s["g_bcons"]) for s in logs)


def test_warm_start_continues_with_a_changed_recipe(small_dataset, tmp_path, capsys):
    from facemodel.training.checkpoint import CheckpointError

    base = Trainer(tiny(small_dataset, max_steps=4), tmp_path / "base", progress=False)
    base.train()
    t = Trainer(tiny(small_dataset, lambda_regress=1.0, lambda_rigidity=10.0, max_steps=8), tmp_path / "new", progress=False)
    fresh = t.warm_start(tmp_path / "base" / "checkpoint.pt")
    assert t.step == 4 and fresh and all(k.startswith("regressors.") for k in fresh)
    for k, v in base.G.state_dict().items():
        assert torch.equal(t.G.state_dict()[k], v)
    t.train()
    assert t.step == 8
    other = Trainer(tiny(small_dataset, factors=[{"name": "identity", "code_dim": 3, "labels": "identity"},
                                                 {"name": "expression", "code_dim": 4, "labels": "expression"}]),
                    tmp_path / "other", progress=False)  # fmt: skip
    with pytest.raises(CheckpointError, match="another shape"):
        other.warm_start(tmp_path / "base" / "checkpoint.pt")
    assert cli_main(["train", "--out", str(tmp_path / "x"), "--resume", "--init-from", str(tmp_path / "base" / "checkpoint.pt")]) == 2
    assert "cannot be combined with --resume" in capsys.readouterr().err


def test_expression_spread_target_and_hinge(small_dataset, tmp_path):
    from facemodel.data.dataset import FaceDataset
    from facemodel.training.expression_meter import fit_blendshape_meter, same_identity_spread

    ds = FaceDataset(small_dataset, split="train")
    meter, _ = fit_blendshape_meter(ds, meshes=600, components=200)
    target = same_identity_spread(ds, meter, pairs=300)
    w = torch.from_numpy(ds.meta("blendshapes"))
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(ds), 300), rng.integers(0, len(ds), 300)
    truth = float((w[a] - w[b]).square().sum(1).mean())  # random pairs, any identity
    assert 0.3 * truth < target < 3 * truth  # same order as the data's true weight differences
    t = Trainer(tiny(small_dataset, lambda_expression_spread=1.0, max_steps=4), tmp_path / "run", progress=False)
    term = t.terms["expression_spread"]
    assert term.target > 0 and term.meter is not None
    logs = [t.train_step() for _ in range(4)]
    assert all(s["g_spread"] >= 0 and np.isfinite(s["g_spread"]) for s in logs)
    term.target = 1e6  # an unreachable target makes the hinge active on the identity-sharing steps
    assert max(t.train_step()["g_spread"] for _ in range(2)) > 0


def test_motion_spread_target_and_hinge(small_dataset, tmp_path):
    from facemodel.data.dataset import FaceDataset
    from facemodel.training.rigidity import expression_motion_mm, rigidity_weights, same_identity_motion

    ds = FaceDataset(small_dataset, split="train")
    w = rigidity_weights(expression_motion_mm(ds, identities=5, per_identity=40))
    same = same_identity_motion(ds, w, pairs=200)
    assert same > 0
    assert same_identity_motion(ds, np.ones_like(w), pairs=200) == 0  # nothing mobile, nothing moves
    t = Trainer(tiny(small_dataset, lambda_motion_spread=1.0, max_steps=4), tmp_path / "run", progress=False)
    term = t.terms["motion_spread"]
    assert term.target > 0 and term.mobility is not None
    term.target = 1e6  # unreachable: the hinge is active on the identity-sharing steps
    assert max(t.train_step()["g_mspread"] for _ in range(2)) > 0


def test_release_recipe_turns_on_the_measured_deviations():
    cfg = load_config(REPO_CONFIGS / "release-0.1.yaml")
    paper = load_config(REPO_CONFIGS / "paper.yaml")
    assert cfg.rigidity.weight > 0 and cfg.motion_spread.weight > 0 and cfg.regression.weight > 0 and cfg.prior_pairs > 0
    assert paper.rigidity.weight == paper.motion_spread.weight == paper.regression.weight == paper.prior_pairs == 0
    assert (cfg.classification.critic_weight, cfg.adversarial.weight, cfg.classification.weight, cfg.feature.weight,
            cfg.laplacian.weight) == (0.1, 1, 1, 0.5, 100)  # fmt: skip
    # 0.2.0's recipe: an additive generator, the session-7 terms, expression anchoring and a stronger Laplacian term
    rel = load_config(REPO_CONFIGS / "release-0.2.yaml")
    assert sum(rel.factor_hidden) == rel.hidden and paper.factor_hidden is None and cfg.factor_hidden is None
    assert rel.motion_subspace.weight > 0 and rel.blendshape_consistency.weight > 0
    old, two = cfg.legacy_flat(), rel.legacy_flat()
    same = {k for k, v in old.items() if two[k] == v}
    assert set(old) - same == {"factor_hidden", "lambda_motion_subspace", "lambda_blendshape_consistency",
                               "lambda_expression_spread", "snapshot_every", "lambda_reg", "lambda_expression_anchor"}  # fmt: skip
    assert rel.laplacian.weight == 4 * cfg.laplacian.weight and rel.expression_anchor.weight > 0 == cfg.expression_anchor.weight
    # 0.3.0's recipe: 0.2.0's plus identity anchoring, nothing else
    new = load_config(REPO_CONFIGS / "release-0.3.yaml")
    same = {k for k, v in two.items() if new.legacy_flat()[k] == v}
    assert set(two) - same == {"lambda_identity_anchor"}
    assert new.identity_anchor.weight > 0 == rel.identity_anchor.weight


def test_release_04_is_the_03_recipe_with_issue_22s_changes_only():
    from facemodel.networks.config import GeneratorConfig
    from facemodel.training.release import MAX_RELEASE_BYTES

    rel = load_config(REPO_CONFIGS / "release-0.3.yaml").legacy_flat()
    cand = load_config(REPO_CONFIGS / "release-0.4.yaml")
    flat = cand.legacy_flat()
    # the schedule (max_steps) is the run's own length: the released step was picked inside it
    assert {k for k, v in rel.items() if flat[k] != v} == {"data", "factors", "hidden", "max_steps"}
    assert cand.data.endswith("ict4d-tracker25") and cand.classification.label_codes == "anchored"
    assert [(f.name, f.code_dim, f.labels) for f in cand.factors] == [("identity", 100, "identity"),
                                                                      ("expression", 53, "expression")]  # fmt: skip
    assert cand.factor_hidden == load_config(REPO_CONFIGS / "release-0.3.yaml").factor_hidden == [384, 128]
    gen = GeneratorConfig(num_vertices=9409, hidden=cand.hidden, factor_hidden=tuple(cand.factor_hidden),
                          factors=({"name": "identity", "code_dim": 100, "num_labels": 240},
                                   {"name": "expression", "code_dim": 53, "num_labels": 7}))  # fmt: skip
    assert gen.interaction_hidden == 64  # identity-dependent expression
    # the float16 export's generator (weights + biases, 2 bytes each) leaves room in the weights/ budget
    params = cand.hidden * (gen.code_dim + 1) + 3 * 9409 * (cand.hidden + 1)
    assert 2 * params < 0.85 * MAX_RELEASE_BYTES


def test_release_05_is_the_04_recipe_with_anchored_pairs_and_a_longer_run():
    """0.5.0's recipe: 0.4.0's with two changes (configs/release-0.5.yaml's header), nothing else."""
    old, new = load_config(REPO_CONFIGS / "release-0.4.yaml"), load_config(REPO_CONFIGS / "release-0.5.yaml")
    a, b = old.model_dump(), new.model_dump()
    assert {k for k in a if a[k] != b[k]} == {"expression_anchor", "max_steps"}
    assert {k for k, v in a["expression_anchor"].items() if b["expression_anchor"][k] != v} == {"identity"}
    assert (old.expression_anchor.identity, new.expression_anchor.identity) == ("random", "anchored")
    assert new.max_steps > old.max_steps == 2000


def test_release_06_is_the_05_recipe_with_a_stronger_rigidity_term_past_step_9100():
    """0.6.0's recipe (configs/release-0.6.yaml's header): 0.5.0's with the rigidity weight 4x and
    10,000 steps, nothing else; its run warm-starts from step 9,100 of 0.5.0's recipe."""
    old, new = load_config(REPO_CONFIGS / "release-0.5.yaml"), load_config(REPO_CONFIGS / "release-0.6.yaml")
    a, b = old.model_dump(), new.model_dump()
    assert {k for k in a if a[k] != b[k]} == {"rigidity", "max_steps"}
    assert (old.rigidity.weight, new.rigidity.weight) == (100.0, 400.0)
    assert old.rigidity.scale_mm == new.rigidity.scale_mm
    assert (old.max_steps, new.max_steps) == (5500, 10000)
    assert "max_steps=9100" in (REPO_CONFIGS / "release-0.6.yaml").read_text()  # the warm start's first stage


def test_release_07_is_the_06_recipe_on_the_larger_build_after_a_reanchored_warm_start():
    """0.7.0's recipe (configs/release.yaml's header): 0.6.0's settings on the 1,000-identity build
    (its first 300 identities and their splits the 300 build's), run past 0.6.0's steps; the stages
    and the re-anchoring warm start are in the header, which `facemodel train` must accept."""
    old, new = load_config(REPO_CONFIGS / "release-0.6.yaml"), load_config(REPO_CONFIGS / "release.yaml")
    a, b = old.model_dump(), new.model_dump()
    assert {k for k in a if a[k] != b[k]} == {"data", "max_steps"}
    assert (old.data, new.data) == ("~/.cache/facemodel/ict4d-tracker25", "~/.cache/facemodel/ict4d-id1000")
    assert new.max_steps > 10976 > old.max_steps
    text = (REPO_CONFIGS / "release.yaml").read_text()
    for part in ("max_steps=9100", "max_steps=10976", "--identities 1000", "--split-base 300", "--reanchor"):
        assert part in text, part
    # the third stage as written in the header parses: a re-anchoring warm start from stage 2
    import argparse

    from facemodel.training.cli import add_arguments

    stage3 = text.split("facemodel train --config configs/release.yaml", 1)[1].split("\n# (", 1)[0]
    words = stage3.replace("#", " ").replace("\\", " ").split()
    args = add_arguments(argparse.ArgumentParser()).parse_args(["--config", "configs/release.yaml", *words])
    assert args.reanchor and args.init_from.endswith("stage2/checkpoint.pt")


# ---- snapshots and checkpoint selection (facemodel.training.select) --------------------------
def test_choose_keeps_good_specificity_then_best_decoupling():
    from facemodel.training.select import SelectionError, choose, motion_floor_met, roughness_ceiling_met

    recs = [
        {"step": 1000, "val_specificity_mm": 3.00, "dec_identity": 99.0, "dec_expression": 10.0, "spill_mm": 0.5},
        {"step": 2000, "val_specificity_mm": 3.10, "dec_identity": 95.0, "dec_expression": 30.0, "spill_mm": 0.6},
        {"step": 3000, "val_specificity_mm": 3.50, "dec_identity": 99.0, "dec_expression": 90.0, "spill_mm": 0.1},
    ]
    # 3000 decouples best but its specificity is 17 % worse than the best: out
    assert choose(recs) == 1
    assert choose(recs, tolerance=0.2) == 2
    assert choose(recs, tolerance=0.0) == 0
    # equal decoupling: the lower spill, then the later step
    tie = [dict(recs[0], dec_expression=30.0, dec_identity=95.0, spill_mm=0.7), recs[1]]
    assert choose(tie) == 1
    assert choose([dict(recs[1], step=500), recs[1]]) == 1
    # specificity only (no probe): the best specificity within the slack, the later step on ties
    assert choose([{"step": 1, "val_specificity_mm": 3.0}, {"step": 2, "val_specificity_mm": 3.05}]) == 1
    # motion floor: a candidate whose expressions barely move is out, however it scores
    weak = {"step": 4000, "val_specificity_mm": 2.9, "dec_identity": 100.0, "dec_expression": 100.0, "motion_mm": 0.1}
    moving = [dict(r, motion_mm=0.8) for r in recs]
    assert choose(moving + [weak]) == 3
    assert choose(moving + [weak], min_motion_mm=0.4) == 1  # the floor also resets the best specificity
    assert motion_floor_met(moving + [weak], 0.4) and not motion_floor_met([weak], 0.4)
    assert choose([weak, dict(weak, step=5000, dec_expression=50.0)], min_motion_mm=0.4) == 0  # none pass: all stay
    # diversity floor: an early snapshot whose faces are all alike is out, however it scores
    alike = {"step": 500, "val_specificity_mm": 2.9, "dec_identity": 100.0, "dec_expression": 95.0, "diversity_mm": 2.9}
    varied = [dict(r, diversity_mm=6.0) for r in recs]
    assert choose([alike] + varied) == 0
    assert choose([alike] + varied, min_diversity_mm=5.5) == 2
    assert choose([alike] + [recs[1]], min_diversity_mm=5.5) == 1  # a missing figure passes
    # roughness ceiling: a bumpy candidate is out, however it scores; a missing figure passes
    bumpy = dict(recs[2], val_specificity_mm=3.0, roughness_mm2=0.9)
    smooth = [dict(r, roughness_mm2=0.3) for r in recs]
    assert choose(smooth + [bumpy]) == 3
    assert choose(smooth + [bumpy], max_roughness_mm2=0.5) == 1
    assert choose([recs[1], bumpy], max_roughness_mm2=0.5) == 0
    # nobody smooth enough: the ceiling goes, the floors stay (the early all-alike snapshot stays out)
    rough = [dict(r, roughness_mm2=0.9, diversity_mm=6.0) for r in recs] + [dict(alike, roughness_mm2=0.9)]
    assert choose(rough, max_roughness_mm2=0.5) == 3
    assert choose(rough, max_roughness_mm2=0.5, min_diversity_mm=5.5) == 1
    assert not roughness_ceiling_met(rough, 0.5) and roughness_ceiling_met(rough, None)
    # decoupling tolerance: within it the lower spill wins (session 17: 98.55 vs 98.2 % mean
    # decoupling, spill 0.393 vs 0.379 mm: the later, lower-spill snapshot); outside it decoupling ranks
    close = [{"step": 2000, "val_specificity_mm": 4.02, "dec_identity": 99.8, "dec_expression": 97.3, "spill_mm": 0.393},
             {"step": 3000, "val_specificity_mm": 4.06, "dec_identity": 99.8, "dec_expression": 96.6, "spill_mm": 0.379}]
    assert choose(close) == 0
    assert choose(close, decoupling_tolerance=0.5) == 1
    assert choose(close, decoupling_tolerance=0.3) == 0  # 0.35 points apart: outside 0.3
    far = close + [dict(close[1], step=4000, dec_expression=94.0, spill_mm=0.2)]
    assert choose(far, decoupling_tolerance=0.5) == 1  # 4000 spills least but decouples 1.65 points worse
    assert choose(far, decoupling_tolerance=2.0) == 2
    assert choose([dict(close[1], step=1), close[1]], decoupling_tolerance=0.5) == 1  # same spill: the later step
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(SelectionError, match="decoupling_tolerance"):
            choose(close, decoupling_tolerance=bad)
    with pytest.raises(SelectionError, match="no candidates"):
        choose([])
    with pytest.raises(SelectionError, match="eval_every"):
        choose([{"step": 1, "val_specificity_mm": None}])


def test_snapshots_are_scored_and_one_is_selected(small_dataset, tmp_path, capsys):
    from facemodel.training.select import SelectionError, candidates, main as select_main, select

    with pytest.raises(SelectionError, match="snapshot_every"):
        candidates(tmp_path)
    cfg = tiny(small_dataset, max_steps=40, eval_every=20, eval_samples=32, snapshot_every=20)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.train()
    snaps = tmp_path / "run" / "snapshots"
    assert sorted(p.name for p in snaps.iterdir()) == ["step0000020", "step0000040"]
    # a snapshot is the EMA generator of its step
    model = FaceModel.from_pretrained(snaps / "step0000040")
    z = torch.randn(2, trainer.gen_config.code_dim)
    with torch.no_grad():
        torch.testing.assert_close(model(z), trainer.G_ema(z) + trainer.template_t, rtol=0, atol=0)
    assert model.config.training["step"] == 40
    trainer.export()  # model/ at step 40 repeats the last snapshot: not a second candidate
    assert [s for s, _ in candidates(tmp_path / "run")] == [20, 40]

    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["eval"]["ema"]["val_specificity_mm"] for r in logged if "eval" in r}
    result = select(tmp_path / "run", data=small_dataset, spill_vertices=np.arange(0, 9409, 50), n=4, log=lambda s: None)
    recs = result["records"]
    assert [r["step"] for r in recs] == [20, 40]
    assert [r["val_specificity_mm"] for r in recs] == [val[20], val[40]]
    div = {r["step"]: r["eval"]["ema"]["diversity_mm"] for r in logged if "eval" in r}
    assert [r["diversity_mm"] for r in recs] == [div[20], div[40]]
    assert all(r["spill_mm"] >= 0 and r["motion_mm"] > 0 for r in recs)
    assert all(r["roughness_mm2"] > 0 for r in recs) and result["data_roughness_mm2"] > 0
    assert result["max_roughness_mm2"] is None  # the ceiling is off unless asked for
    rough = max(recs, key=lambda r: r["roughness_mm2"])
    ceiling = select(tmp_path / "run", data=small_dataset, spill_vertices=np.arange(0, 9409, 50), n=4, log=lambda s: None,
                     max_roughness_fraction=0.999 * rough["roughness_mm2"] / result["data_roughness_mm2"])  # fmt: skip
    assert ceiling["chosen"]["step"] != rough["step"] and "roughness_mm2 at most" in ceiling["rule"]
    assert ceiling["roughness_ceiling_met"] is True and result["roughness_ceiling_met"] is True
    best = min(val.values())
    assert result["chosen"]["val_specificity_mm"] <= best * 1.05
    saved = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert saved["chosen"]["step"] == result["chosen"]["step"]
    # a second call with the same settings reuses the scored records (runs while training adds snapshots)
    scored = []
    again = select(tmp_path / "run", data=small_dataset, spill_vertices=np.arange(0, 9409, 50), n=4, log=scored.append)
    assert scored == [] and again["records"] == recs
    assert again["min_motion_mm"] is None and again["motion_floor_met"] is True
    # a floor nobody reaches: said in the log and the result, and the choice is still made
    warned = []
    floor = select(tmp_path / "run", data=small_dataset, spill_vertices=np.arange(0, 9409, 50), n=4,
                   min_motion_mm=1e6, log=warned.append)  # fmt: skip
    assert floor["motion_floor_met"] is False and any("motion floor" in w for w in warned)
    assert floor["chosen"]["step"] == result["chosen"]["step"]
    # the diversity floor is a fraction of the data's logged diversity; the later, more varied step wins
    data_div = max(r["eval"]["data"]["diversity_mm"] for r in logged if "eval" in r)
    mid = 0.5 * (div[20] + div[40]) / data_div
    varied = select(tmp_path / "run", data=small_dataset, spill_vertices=np.arange(0, 9409, 50), n=4,
                    min_diversity_fraction=mid, log=lambda s: None)  # fmt: skip
    assert varied["min_diversity_mm"] == pytest.approx(mid * data_div)
    assert varied["chosen"]["step"] == max((20, 40), key=div.get) and "diversity_mm at least" in varied["rule"]

    # decoupling scores are reused only from the same embedding nets: other nets rescore
    from facemodel.data.dataset import FaceDataset
    from facemodel.evaluation.embedding import DecouplingNets, EmbeddingNet, ResNet18
    from facemodel.evaluation.normal_render import NormalRenderer

    renderer = NormalRenderer.from_template(FaceDataset(small_dataset, split="train").template, size=16)
    torch.manual_seed(0)
    nets_a = DecouplingNets(EmbeddingNet("identity", ResNet18(4, 8).eval(), renderer, 0.5),
                            EmbeddingNet("expression", ResNet18(4, 8).eval(), renderer, 0.5))  # fmt: skip
    nets_b = DecouplingNets(nets_a.identity, EmbeddingNet("expression", nets_a.expression.network, renderer, 2.5))
    calls = []
    for nets in (nets_a, nets_a, nets_b):
        calls.append([])
        res = select(tmp_path / "run", data=small_dataset, nets=nets, n=2, log=calls[-1].append)
    assert [len(c) for c in calls] == [2, 0, 2]  # scored, reused, scored again
    assert all(r["dec_expression"] == 100.0 for r in res["records"])  # threshold 2.5 > any distance (unit vectors)
    assert json.loads((tmp_path / "run" / "selection.json").read_text())["settings"]["nets"] == nets_b.fingerprint()

    # the command line copies the chosen folder; a step without a logged evaluation is recomputed
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    assert select_main(["--run", str(tmp_path / "run"), "--data", str(small_dataset), "--export", str(tmp_path / "chosen")]) == 0
    saved = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert all(r["val_specificity_source"] == "recomputed" and r["val_specificity_mm"] > 0 for r in saved["records"])
    assert sorted(p.name for p in (tmp_path / "chosen").iterdir()) == ["config.json", "model.safetensors"]
    assert "chosen: step" in capsys.readouterr().out
    assert select_main(["--run", str(tmp_path / "nothing"), "--data", str(small_dataset)]) == 2
    assert select_main(["--run", str(tmp_path / "run"), "--data", str(small_dataset), "--min-motion-fraction", "-1"]) == 2
    assert "min-motion-fraction" in capsys.readouterr().err
    assert select_main(["--run", str(tmp_path / "run"), "--data", str(small_dataset), "--min-diversity-fraction", "1.5"]) == 2
    assert "min-diversity-fraction" in capsys.readouterr().err
    assert select_main(["--run", str(tmp_path / "run"), "--data", str(small_dataset), "--max-roughness-fraction", "-1"]) == 2
    assert "max-roughness-fraction" in capsys.readouterr().err
    assert select_main(["--run", str(tmp_path / "run"), "--data", str(small_dataset), "--decoupling-tolerance", "-1"]) == 2
    assert "decoupling-tolerance" in capsys.readouterr().err


def test_reference_motion_is_the_ground_truth_expressions(small_dataset, ict):
    from facemodel.evaluation.spill import identity_only_vertices
    from facemodel.training.select import reference_motion

    source = ict
    verts = identity_only_vertices(source)
    ref = reference_motion(small_dataset, source, verts, n=4)
    assert 0.2 < ref < 10.0  # mm: ICT expressions move the mobile face by about a millimetre on average
    assert reference_motion(small_dataset, source, verts, n=4) == ref  # seeded


# ---- data_on_device ------------------------------------------------------------------------
def test_data_on_device_gives_the_same_batches_and_training(small_dataset, tmp_path):
    from facemodel.data.dataset import FaceDataset

    ds = FaceDataset(small_dataset, split="train")
    rows = np.array([5, 0, 17, 5])
    off = ds.offsets(rows)
    assert off.dtype == np.float16 and off.shape == (4, ds.template.num_vertices, 3)
    np.testing.assert_allclose(off.astype(np.float32) + ds.template.vertices, ds.vertices(rows), rtol=0, atol=0)

    runs = {}
    for flag in (False, True):
        cfg = tiny(small_dataset, max_steps=6, log_every=2, data_on_device=flag)
        t = Trainer(cfg, tmp_path / f"run{flag}", progress=False)
        assert (t._offsets_t is not None) == flag
        torch.testing.assert_close(t._displacements(rows), t._displacements(rows), rtol=0, atol=0)
        runs[flag] = t
    a, b = runs[False]._displacements(rows), runs[True]._displacements(rows)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)  # (offset + template) - template rounds
    for t in runs.values():
        t.train()
    logs = {f: [json.loads(line) for line in (tmp_path / f"run{f}" / "metrics.jsonl").read_text().splitlines()] for f in runs}
    assert [r["step"] for r in logs[True]] == [r["step"] for r in logs[False]]
    for ra, rb in zip(logs[False], logs[True]):  # the same draws: the runs differ only by that rounding
        assert abs(ra["d_loss"] - rb["d_loss"]) < 1e-2 * (1 + abs(ra["d_loss"]))


def test_factorised_generator_trains_resumes_exports_and_fits(small_dataset, tmp_path):
    with pytest.raises(ConfigError, match="one width per factor"):
        tiny(small_dataset, factor_hidden=[32])
    with pytest.raises(ConfigError, match="sums to 80 > hidden 64"):
        tiny(small_dataset, factor_hidden=[48, 32])
    cfg = tiny(small_dataset, max_steps=20, factor_hidden=[40, 24])  # no interaction units
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.train()
    resumed = Trainer(cfg.model_copy(update={"max_steps": 30}), tmp_path / "run", progress=False, resume=True)
    resumed.train()
    assert resumed.step == 30
    for g in (resumed.G, resumed.G_ema):
        assert (g.fc1.weight.detach() * (1 - g.fc1_mask)).abs().max() == 0
    model = FaceModel.from_pretrained(resumed.export())
    assert model.generator.config.factor_hidden == (40, 24)
    # one expression code moves two identities alike, however the critic trained the weights
    d_exp = model.generator.config.factor("expression").code_dim
    a, b = model.sample(2, seed=1, expression=torch.randn(d_exp)), model.sample(1, seed=2)
    moved = model.transfer_expression(b, a)
    delta = moved.vertices - a.vertices
    assert float(delta.abs().max()) > 1e-3
    torch.testing.assert_close(delta[0], delta[1], rtol=0, atol=1e-4)
    # fitting, which reads fc1 directly, finds the generated face's landmarks again
    points = model.sample(seed=5).vertices[0, model.landmarks]
    fit = model.fit_landmarks(points)
    assert float(fit.rmse) < 0.5  # mm


def test_motion_subspace_holds_the_data_expressions_and_drives_its_term(small_dataset, tmp_path):
    from facemodel.data.dataset import FaceDataset
    from facemodel.training.rigidity import same_identity_pairs
    from facemodel.training.subspace import fit_motion_subspace

    ds = FaceDataset(small_dataset, split="train")
    sub, stats = fit_motion_subspace(ds, pairs=400, components=48, seed=0)
    assert stats["residual_mm"] < 0.15 * stats["motion_mm"]  # unseen same-identity pairs lie (nearly) inside
    a, b = same_identity_pairs(ds, 50, seed=7)
    va, vb = torch.from_numpy(ds.vertices(a)), torch.from_numpy(ds.vertices(b))
    moved = float(((va - vb)[:, sub.rows]).square().sum(-1).mean())
    assert float(sub.residual(va, vb).mean()) < 0.05 * moved
    torch.manual_seed(0)
    noise = torch.randn_like(va)  # 1 mm per axis: nothing like an expression
    assert float(sub.residual(va + noise, vb).mean()) > 2.5  # ~3 mm^2 of it stays outside
    with pytest.raises(Exception, match="lower components"):
        fit_motion_subspace(ds, pairs=20, components=48)
    t = Trainer(tiny(small_dataset, lambda_motion_subspace=1.0, motion_subspace_components=48, max_steps=4),
                tmp_path / "run", progress=False)  # fmt: skip
    logs = [t.train_step() for _ in range(4)]
    assert [s["g_msub"] > 0 for s in logs] == [False, True, False, True]  # only pairs sharing the identity code


def _term_value(trainer, name: str):
    """A generator term's value alone (weight 1; the anchoring terms need no batch)."""
    ctx = trainer._generator_context(None, None, None)
    return lambda: trainer.terms[name].generator(ctx)[0]


def _term_alone_optimises(trainer, term, steps: int = 60) -> tuple[float, float]:
    """Adam on one generator term alone (the same prior codes each call; pairs seeded by the
    step): its value before and after ``steps`` updates."""
    opt = torch.optim.Adam(trainer.G.parameters(), lr=1e-3)

    def loss() -> torch.Tensor:
        torch.manual_seed(0)
        return term()

    first = loss().item()
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    return first, loss().item()


def test_expression_anchor_whitens_the_weights_and_its_term_teaches_the_generator(small_dataset, tmp_path):
    from facemodel.data.dataset import FaceDataset
    from facemodel.errors import DatasetFormatError
    from facemodel.training.anchoring import FACE_VERTICES, fit_expression_anchor
    from facemodel.training.rigidity import same_identity_pairs

    ds = FaceDataset(small_dataset, split="train")
    anchor, stats = fit_expression_anchor(ds, 8, pairs=600, seed=0)
    w = torch.from_numpy(np.asarray(ds.meta("blendshapes"), dtype=np.float32))
    z = anchor(w)  # the training weights' codes: zero mean, identity covariance, like the prior
    assert z.shape == (len(ds), 8)
    torch.testing.assert_close(z.mean(0), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), torch.eye(8), atol=2e-3, rtol=0)
    more, more_stats = fit_expression_anchor(ds, 20, pairs=600, seed=0)
    assert 0.5 < stats["kept"] < more_stats["kept"] <= 1.0
    # the displacement model behind it explains same-person pairs up to the deformation transfer
    assert stats["fit_residual_mm"] < 0.3 * stats["motion_mm"]
    a, b = same_identity_pairs(ds, 40, seed=5)
    moved = (ds.vertices(a) - ds.vertices(b))[:, :FACE_VERTICES]
    assert np.sqrt((moved**2).sum(-1).mean()) > 3 * stats["fit_residual_mm"]
    with pytest.raises(DatasetFormatError, match="at least as many") as info:
        fit_expression_anchor(ds, 60)
    assert "lambda_identity_anchor=0" in str(info.value)  # identity anchoring needs the same map

    t = Trainer(tiny(small_dataset, lambda_expression_anchor=1.0, anchor_pairs=8, max_steps=2), tmp_path / "run",
                progress=False)  # fmt: skip
    logs = [t.train_step() for _ in range(2)]
    assert all(s["g_anchor"] > 0 and np.isfinite(s["g_anchor"]) for s in logs)
    # the term alone, optimised: the generator learns to make the pairs' expression differences
    first, last = _term_alone_optimises(t, _term_value(t, "expression_anchor"), 40)
    assert last < 0.5 * first


def test_identity_anchor_codes_are_whitened_shapes_and_its_term_reproduces_training_meshes(small_dataset, tmp_path):
    from facemodel.data.dataset import FaceDataset
    from facemodel.training.anchoring import fit_identity_anchor

    ds = FaceDataset(small_dataset, split="train")
    labels = ds.identity_classes()
    n_ids = len(np.unique(labels))
    d = n_ids - 2
    classes, codes, stats = fit_identity_anchor(ds, d)
    assert codes.shape == (n_ids, d) and list(classes) == sorted(set(labels.tolist()))
    torch.testing.assert_close(torch.from_numpy(codes).mean(0), torch.zeros(d), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.from_numpy(codes).std(0, correction=0), torch.ones(d), atol=1e-4, rtol=0)
    assert 0 < stats["kept"] < 1 and stats["shape_mm"] > 0 and stats["identities"] == n_ids
    # more code dimensions than identities can whiten: the rest are 0, all variance kept
    _, wide, wide_stats = fit_identity_anchor(ds, n_ids + 3)
    assert wide_stats["whitened"] == n_ids - 1 and wide_stats["kept"] == pytest.approx(1.0)
    assert np.abs(wide[:, n_ids - 1 :]).max() == 0 and np.allclose(np.abs(wide[:, :d]), np.abs(codes), atol=1e-4)

    t = Trainer(tiny(small_dataset, lambda_identity_anchor=1.0, anchor_pairs=8, max_steps=2), tmp_path / "run",
                progress=False)  # fmt: skip
    logs = [t.train_step() for _ in range(2)]
    assert all(s["g_ianchor"] > 0 and np.isfinite(s["g_ianchor"]) for s in logs)
    assert "g_anchor" not in logs[0]  # the expression anchor's own pair term stays off
    first, last = _term_alone_optimises(t, _term_value(t, "identity_anchor"))
    assert last < 0.5 * first
    # anchor rows: seeded by step and term; rank 0 keeps the single-process stream, other ranks differ
    single = np.random.default_rng([t.config.seed, t.step, 13]).integers(0, 10**6, 8)
    assert np.array_equal(t._step_rng(13).integers(0, 10**6, 8), single)
    t.rank = 1
    assert not np.array_equal(t._step_rng(13).integers(0, 10**6, 8), single)


@pytest.mark.parametrize("identity", ["random", "anchored"])
def test_expression_anchor_pairs_take_their_own_identity_code_when_anchored(small_dataset, tmp_path, identity):
    """expression_anchor.identity = "anchored": both meshes of a pair are generated on their
    identity's anchor code (the identity anchor's, fitted once for both terms); "random" (0.4.0)
    draws a prior identity code per pair, never an anchor code."""
    base = [f"data={json.dumps(str(small_dataset))}", "threads=1", "eval_every=0", "sample_every=0", "max_steps=1",
            "expression_anchor.weight=20", "identity_anchor.weight=20", "anchor_pairs=8",
            f'expression_anchor.identity="{identity}"']  # fmt: skip
    t = Trainer(load_config(REPO_CONFIGS / "tiny.yaml", base), tmp_path / "r", progress=False)
    term, ident = t.terms["expression_anchor"], t.terms["identity_anchor"]
    seen = []
    ctx = t._generator_context(None, None, None)
    generate = ctx.generate
    ctx.generate = lambda z: seen.append(z.detach().clone()) or generate(z)
    value, logs = term.generator(ctx)
    assert torch.isfinite(value) and logs["g_anchor"] > 0
    (z,) = seen
    P = z.shape[0] // 2
    rows = ctx.rng(11).integers(0, len(ctx.data), P)  # the term's pairs: the same stream
    sl = ident.identity
    anchor_codes = ident.codes[torch.from_numpy(rows)]
    if identity == "anchored":
        assert term.identity_codes[0] is ident.codes  # one fit shared by both terms
        torch.testing.assert_close(z[:P, sl], anchor_codes)
        torch.testing.assert_close(z[P:, sl], anchor_codes)  # the pair's second mesh: the same person
    else:
        assert term.identity_codes is None
        assert not torch.allclose(z[:P, sl], anchor_codes, atol=1e-3)
        torch.testing.assert_close(z[:P, sl], z[P:, sl])  # still one code per pair
    # the expression block is the pairs' first meshes' weights' anchor codes either way
    torch.testing.assert_close(z[:P, term.fit.expression], term.fit.codes(rows, t.device))


def test_anchored_label_codes_are_the_anchors(small_dataset, tmp_path):
    """classification.label_codes = "anchored": identity labels take their identity's anchor code,
    expression labels the mean expression-anchor code of their labelled meshes; "random" keeps the
    paper's N(0, I) draws; without the anchor terms it is refused."""
    base = [f"data={json.dumps(str(small_dataset))}", "threads=1", "eval_every=0", "sample_every=0", "max_steps=1",
            "expression_anchor.weight=20", "identity_anchor.weight=20", "anchor_pairs=8"]  # fmt: skip
    rnd = Trainer(load_config(REPO_CONFIGS / "tiny.yaml", base), tmp_path / "r", progress=False)
    anc = Trainer(load_config(REPO_CONFIGS / "tiny.yaml", base + ['classification.label_codes="anchored"']),
                  tmp_path / "a", progress=False)  # fmt: skip
    exp_labels = anc.real_labels["expression"].numpy()
    fit = anc.terms["expression_anchor"].fit
    for k in range(anc.codes.codes("expression").shape[0]):
        rows = np.flatnonzero(exp_labels == k)
        want = fit.codes(rows, anc.device).mean(0)
        torch.testing.assert_close(anc.codes.codes("expression")[k], want)
    id_labels = anc.real_labels["identity"].numpy()
    ident = anc.terms["identity_anchor"]
    for k in (0, 3):
        row = int(np.flatnonzero(id_labels == k)[0])
        torch.testing.assert_close(anc.codes.codes("identity")[k], ident.codes[row])
    assert not torch.allclose(rnd.codes.codes("expression"), anc.codes.codes("expression"))
    # the identity codes differ per identity (not one shared code)
    assert len({tuple(c.round(decimals=4).tolist()) for c in anc.codes.codes("identity")}) == anc.codes.codes("identity").shape[0]
    with pytest.raises(ConfigError, match="anchored"):
        Trainer(load_config(REPO_CONFIGS / "tiny.yaml", base[:5] + ['classification.label_codes="anchored"']),
                tmp_path / "x", progress=False)  # fmt: skip


class _LinearIdentities:
    """A stand-in training split for :func:`identity_anchor_basis`: ``n`` identities whose neutral
    shapes lie on a 5-d linear model (one mesh each, no blendshape weights)."""

    def __init__(self, basis, mean, w):
        self._shapes = (mean + w @ basis).astype(np.float32)

    def identity_classes(self):
        return np.arange(len(self._shapes))

    def meta(self, key):
        raise KeyError(key)

    def offsets(self, rows):
        return self._shapes[rows].reshape(len(rows), -1, 3)


def test_reanchor_maps_are_exact_where_both_anchors_span_the_same_space():
    from facemodel.training.anchoring import ExpressionAnchor, identity_anchor_basis
    from facemodel.training.reanchor import expression_map, identity_map

    rng = np.random.default_rng(0)
    basis, mean = rng.normal(size=(5, 30)), rng.normal(size=30)
    old = _LinearIdentities(basis, mean, rng.normal(size=(12, 5)))
    new = _LinearIdentities(basis, mean, rng.normal(size=(40, 5)) * 1.5 + 0.3)  # other faces, other spread
    m = identity_map(old, new, 5)
    assert m.residual < 1e-4
    # the map holds for faces neither anchor saw: old code == new code @ R + c
    unseen = (mean + rng.normal(size=(7, 5)) @ basis)
    code = lambda ds: (unseen - identity_anchor_basis(ds, 5)[2]) @ identity_anchor_basis(ds, 5)[3]  # noqa: E731
    assert np.abs(code(new) @ m.matrix + m.offset - code(old)).max() < 1e-4 * np.abs(code(old)).max()
    assert np.abs(m.matrix - np.eye(5)).max() > 0.1  # a real change of coordinates, not the identity
    # expression: z = (w - mean) @ A, square A -> exact
    a_old = ExpressionAnchor(rng.uniform(0, 0.3, 6), rng.normal(size=(6, 6)))
    a_new = ExpressionAnchor(rng.uniform(0, 0.3, 6), rng.normal(size=(6, 6)))
    e = expression_map(a_old, a_new)
    w = torch.rand(9, 6)
    assert e.residual < 1e-9
    np.testing.assert_allclose(a_new(w).double().numpy() @ e.matrix + e.offset, a_old(w).double().numpy(), atol=1e-4)


def test_reanchor_first_layer_keeps_the_function():
    from facemodel.networks import Factor, Generator, GeneratorConfig
    from facemodel.training.reanchor import CodeMap, reanchor_first_layer

    torch.manual_seed(0)
    cfg = GeneratorConfig(num_vertices=50, factors=(Factor(name="identity", code_dim=6, num_labels=3),
                                                    Factor(name="expression", code_dim=4, num_labels=2)),
                          noise_dim=2, hidden=32, factor_hidden=(12, 8))  # fmt: skip
    old = Generator(cfg)
    rng = np.random.default_rng(1)
    sl = cfg.code_slices()
    maps = [(sl["identity"], CodeMap(rng.normal(size=(6, 6)), rng.normal(size=6), 0.0)),
            (sl["expression"], CodeMap(rng.normal(size=(4, 4)), rng.normal(size=4), 0.0))]
    new = Generator(cfg)
    new.load_state_dict(reanchor_first_layer(old.state_dict(), maps))
    z = torch.randn(5, cfg.code_dim, dtype=torch.float64)
    z_old = z.clone()
    for cols, m in maps:
        z_old[:, cols] = z[:, cols] @ torch.from_numpy(m.matrix) + torch.from_numpy(m.offset)
    with torch.no_grad():
        a, b = new(z.float()), old(z_old.float())
    assert torch.allclose(a, b, atol=1e-4 * float(b.abs().max()))
    assert not torch.allclose(new(z_old.float()), b, atol=1e-2 * float(b.abs().max()))
    # the factorised layer's zeros stay zeros (the identity block does not start reading the expression)
    assert torch.equal(new.fc1.weight != 0, old.fc1.weight != 0)


def test_warm_start_onto_another_build_needs_reanchor(small_dataset, ict, tmp_path, capsys):
    from facemodel.data.builder import ICTDatasetConfig, build_ict_dataset
    from facemodel.training.checkpoint import CheckpointError

    other = tmp_path / "other-build"
    build_ict_dataset(ict, other, ICTDatasetConfig(seed=8, size=1000, identities=20), progress=False)
    anchored = {"lambda_identity_anchor": 1.0, "lambda_expression_anchor": 1.0}
    base = Trainer(tiny(small_dataset, max_steps=3, **anchored), tmp_path / "base", progress=False)
    base.train()
    ckpt = tmp_path / "base" / "checkpoint.pt"
    t = Trainer(tiny(other, max_steps=6, **anchored), tmp_path / "new", progress=False)
    own_codes = {k: v.clone() for k, v in t.codes.state_dict().items()}
    with pytest.raises(CheckpointError, match="--reanchor"):
        t.warm_start(ckpt)
    fresh = t.warm_start(ckpt, reanchor=True)
    assert t.step == 3 and any(k.startswith("heads.identity") for k in fresh)  # 8 -> 16 training identities
    assert all(torch.equal(v, own_codes[k]) for k, v in t.codes.state_dict().items())  # this data's label codes
    assert not torch.equal(t.G.fc1.weight, base.G.fc1.weight) and torch.equal(t.G.fc2.weight, base.G.fc2.weight)
    logs = [t.train_step() for _ in range(2)]
    assert all(np.isfinite(s["g_loss"]) for s in logs)
    # without the anchoring terms there is nothing to re-express
    plain = Trainer(tiny(other, max_steps=6), tmp_path / "plain", progress=False)
    with pytest.raises(ConfigError, match="identity_anchor and expression_anchor"):
        plain.warm_start(ckpt, reanchor=True)
    # the checkpoint's own dataset must still be there
    state = torch.load(ckpt, weights_only=False)
    state["config"]["data"] = str(tmp_path / "gone")
    torch.save(state, tmp_path / "moved.pt")
    with pytest.raises(CheckpointError, match="needs the dataset"):
        t.warm_start(tmp_path / "moved.pt", reanchor=True)
    assert cli_main(["train", "--out", str(tmp_path / "y"), "--reanchor"]) == 2
    assert "add --init-from" in capsys.readouterr().err
