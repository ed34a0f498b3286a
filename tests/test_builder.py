import numpy as np
import pytest

from facemodel.data.builder import KINDS, ICTDatasetConfig, build_ict_dataset, plan_ict_dataset, shape_coverage
from facemodel.data.expressions import EXPRESSION_LABELS, ICT_BLENDSHAPES, NOVEL_COMBINATIONS
from facemodel.data.store import read_manifest
from facemodel.errors import DataSourceError, OutputPathError


@pytest.fixture(scope="module")
def full_plan():
    """The default (paper-sized) plan: 30,000 meshes, 300 identities. No meshes are built."""
    return plan_ict_dataset(ICTDatasetConfig())


def test_paper_sized_composition(full_plan):
    expr = np.asarray(full_plan.expression)
    ident = np.asarray(full_plan.identity)
    assert abs(len(expr) - 30_000) <= 30
    assert len(full_plan.identity_split) == 300
    assert abs((expr >= 0).mean() - 0.07) <= 0.01  # ~7% expression labels, like the paper
    assert set(np.unique(expr)) == set(range(-1, 7))
    # every identity appears; every mesh has an identity label
    assert len(np.unique(ident)) == 300
    split = full_plan.identity_split
    assert np.bincount(split).tolist() == [240, 30, 30]
    kinds = np.asarray(full_plan.kind)
    assert (kinds == 3).sum() == 30 * len(NOVEL_COMBINATIONS) * 2
    assert (split[ident[kinds == 3]] == 2).all()  # novel combinations only in test
    # every split holds labelled examples of every label (for classifiers and evaluation)
    for s in range(3):
        labels = expr[(split[ident] == s) & (expr >= 0)]
        assert set(labels) == set(range(7))


def test_no_two_samples_of_a_label_are_identical(full_plan):
    expr = np.asarray(full_plan.expression)
    w = np.stack(full_plan.blendshapes)
    key = np.concatenate([np.asarray(full_plan.identity)[:, None], w], 1)
    for label in range(7):
        rows = key[expr == label]
        assert len(np.unique(rows, axis=0)) == len(rows), EXPRESSION_LABELS[label]


def test_novel_combinations_never_in_training(full_plan):
    w = np.stack(full_plan.blendshapes)
    train = np.asarray(full_plan.identity_split)[np.asarray(full_plan.identity)] == 0
    for name, combo in NOVEL_COMBINATIONS.items():
        target = np.zeros(53)
        for n, v in combo.items():
            target[ICT_BLENDSHAPES.index(n)] = v
        dist = np.abs(w[train] - 0.6 * target).max(1)
        assert dist.min() > 0.3, name  # no training mesh is close to the combination


def test_emotion_sequences_label_first_apex_last(full_plan):
    kinds = np.asarray(full_plan.kind)
    seq = np.asarray(full_plan.sequence)
    frame = np.asarray(full_plan.frame)
    expr = np.asarray(full_plan.expression)
    s = seq[kinds == 1][0]
    rows = np.flatnonzero(seq == s)
    labelled = frame[rows][expr[rows] >= 0].tolist()
    assert labelled == [0, 12, 24]
    assert expr[rows][[0, -1]].tolist() == [0, 0]  # neutral at both ends
    w = np.stack(full_plan.blendshapes)[rows]
    assert w[12].sum() > 5 * w[0].sum()  # apex is the peak of the sequence


def test_small_build_matches_its_manifest(small_dataset):
    m = read_manifest(small_dataset)
    assert m.num_meshes == 1000 and m.num_vertices == 9409 and m.units == "mm"
    assert abs(m.counts["expression_label_fraction"] - 0.07) <= 0.01
    assert m.expression_labels == list(EXPRESSION_LABELS)
    assert m.source["commit"] == "da5f95a607f5e6b37755b38d3385d7f2853732e5"
    assert m.build["max_offset_rounding_error_mm"] < 0.05
    assert (small_dataset / "LICENSE-ICT-FaceKit").is_file()
    assert sorted(p.name for p in small_dataset.iterdir()) == sorted(
        ["manifest.json", "template.npz", "offsets.npy", "meshes.npz", "identities.npz", "LICENSE-ICT-FaceKit"]
    )
    z = np.load(small_dataset / "meshes.npz")
    ids = np.load(small_dataset / "identities.npz")
    # identity-disjoint splits
    per_split = [set(z["identity"][z["split"] == s]) for s in range(3)]
    assert not (per_split[0] & per_split[1] or per_split[0] & per_split[2] or per_split[1] & per_split[2])
    assert (ids["split"][z["identity"]] == z["split"]).all()
    assert ids["pca_weights"].shape == (10, 100) and z["blendshapes"].shape == (1000, 53)


def test_build_is_deterministic(ict, small_dataset, tmp_path):
    again = build_ict_dataset(ict, tmp_path / "again", ICTDatasetConfig(seed=7, size=1000), progress=False)
    assert again.checksum == read_manifest(small_dataset).checksum
    other = plan_ict_dataset(ICTDatasetConfig(seed=8, size=1000))
    same = plan_ict_dataset(ICTDatasetConfig(seed=7, size=1000))
    assert not np.array_equal(other.identity_weights, same.identity_weights)


def test_meshes_are_regenerated_by_the_generator(ict, small_dataset):
    from facemodel.data.builder import ICTFaceGenerator
    from facemodel.data.dataset import FaceDataset

    ds = FaceDataset(small_dataset, split=None)
    gen = ICTFaceGenerator(ict)
    rows = np.array([0, 500, 999])
    ident = ds.meta("identity")[rows]
    w = ds.identity_table("pca_weights")
    for r, i in zip(rows, ident):
        truth = gen.meshes(w[i], ds.meta("blendshapes")[r : r + 1])[0]
        assert np.abs(ds.vertices(np.array([r]))[0] - truth).max() < 0.05  # float16 storage


def test_existing_output_is_refused_and_untouched(ict, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputPathError, match="not empty"):
        build_ict_dataset(ict, out, ICTDatasetConfig(size=1000), progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary folder left


def test_failure_midway_leaves_nothing(ict, tmp_path, monkeypatch):
    from facemodel.data import builder

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(builder.ICTFaceGenerator, "meshes", boom)
    with pytest.raises(RuntimeError):
        build_ict_dataset(ict, tmp_path / "ds", ICTDatasetConfig(size=1000), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output(ict, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match="folder"):
        build_ict_dataset(ict, blocker / "ds", ICTDatasetConfig(size=1000), progress=False)


def test_missing_source(tmp_path):
    with pytest.raises(DataSourceError, match="shapes.npz"):
        build_ict_dataset(tmp_path, tmp_path / "out", progress=False)


def test_config_validation():
    with pytest.raises(ValueError):
        ICTDatasetConfig(split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError):
        ICTDatasetConfig(size=10)


def test_every_emotion_moves_the_face_clearly(ict):
    """Each emotion's apex must differ visibly from neutral (at least 8 mm somewhere)."""
    from facemodel.data.builder import ICTFaceGenerator
    from facemodel.data.expressions import ExpressionSampler

    gen = ICTFaceGenerator(ict)
    sampler = ExpressionSampler(np.random.default_rng(0))
    w = np.zeros(100)
    neutral = gen.meshes(w, np.zeros((1, 53)))[0]
    for label in EXPRESSION_LABELS[1:]:
        apex = gen.meshes(w, sampler.emotion(label, 1.0)[None])[0]
        assert np.linalg.norm(apex - neutral, axis=1).max() > 8.0, label


def test_mouth_close_never_exceeds_jaw_open(full_plan):
    w = np.stack(full_plan.blendshapes)
    jaw, close = ICT_BLENDSHAPES.index("jawOpen"), ICT_BLENDSHAPES.index("mouthClose")
    assert (w[:, close] <= w[:, jaw] + 1e-7).all()
    assert w.min() >= 0 and w.max() <= 1


def _plan_digest(plan) -> str:
    import hashlib

    parts = [np.stack(plan.blendshapes).tobytes()] + [np.asarray(x, np.int64).tobytes()
                                                     for x in (plan.identity, plan.expression, plan.kind)]  # fmt: skip
    return hashlib.sha256(b"".join(parts)).hexdigest()


def test_tracker_fraction_zero_is_the_03x_plan(full_plan):
    """The 0.3.x datasets stay reproducible: the digest was taken from the builder before the
    tracker kind existed."""
    assert _plan_digest(full_plan) == "27b06ace1a95aaf9fdcf1567e7e56acd8e8833470810d5565594b4fc5a28a19d"
    assert (shape_coverage(full_plan, threshold=0.03) == 0).sum() == 15  # gaze, jaw/mouth sideways, ...


@pytest.fixture(scope="module")
def tracker_plan():
    return plan_ict_dataset(ICTDatasetConfig(tracker_fraction=0.25))


def test_tracker_kind_exercises_every_shape(tracker_plan):
    cov = shape_coverage(tracker_plan)  # train split, weight > 0.5
    assert cov.min() >= 0.01, dict(zip(ICT_BLENDSHAPES, cov.round(4)))
    kinds = np.asarray(tracker_plan.kind)
    assert abs((kinds == KINDS.index("tracker")).mean() - 0.25) < 0.005
    expr = np.asarray(tracker_plan.expression)
    assert abs((expr >= 0).mean() - 0.07) <= 0.01  # the paper's labelled fraction is kept
    assert (expr[kinds == KINDS.index("tracker")] == -1).all()


def test_tracker_motion_respects_rig_semantics(tracker_plan):
    w = np.stack(tracker_plan.blendshapes)[np.asarray(tracker_plan.kind) == KINDS.index("tracker")]
    col = {n: i for i, n in enumerate(ICT_BLENDSHAPES)}
    assert ((w >= 0) & (w <= 1)).all()
    assert (w[:, col["mouthClose"]] <= w[:, col["jawOpen"]] + 1e-7).all()
    for a, b in (("jawLeft", "jawRight"), ("mouthLeft", "mouthRight")):
        assert not ((w[:, col[a]] > 0) & (w[:, col[b]] > 0)).any(), (a, b)
    # sweeps: every shape alone at high weight (mouthClose with the jaw it needs open)
    for j, name in enumerate(ICT_BLENDSHAPES):
        others = np.delete(w, [j, col["jawOpen"]] if name == "mouthClose" else [j], axis=1)
        assert ((w[:, j] > 0.75) & (others.max(1) == 0)).any(), name


def test_tracker_plan_is_deterministic(tracker_plan):
    assert _plan_digest(plan_ict_dataset(ICTDatasetConfig(tracker_fraction=0.25))) == _plan_digest(tracker_plan)
    assert _plan_digest(plan_ict_dataset(ICTDatasetConfig(tracker_fraction=0.25, seed=1))) != _plan_digest(tracker_plan)


def test_small_build_with_tracker_kind(ict, tmp_path):
    out = tmp_path / "tracker"
    m = build_ict_dataset(ict, out, ICTDatasetConfig(seed=3, size=400, identities=10, tracker_fraction=0.2),
                          progress=False)  # fmt: skip
    assert "tracker" in m.kinds and m.counts["per_kind"]["tracker"] == 80


def test_sparse_weights_are_tracker_like_and_reproducible():
    from facemodel.data.expressions import sparse_weights

    w = sparse_weights(3000, np.random.default_rng(7))
    assert w.shape == (3000, len(ICT_BLENDSHAPES)) and w.min() >= 0 and w.max() <= 1
    moved = (w > 0).sum(1)
    assert moved.max() <= 8 and (moved >= 1).mean() > 0.99  # constrain() zeroes mouthClose without jawOpen
    assert (w > 0.5).any(0).all()  # every one of the 53 shapes passes 0.5 somewhere
    jaw, close = ICT_BLENDSHAPES.index("jawOpen"), ICT_BLENDSHAPES.index("mouthClose")
    assert (w[:, close] <= w[:, jaw]).all()
    np.testing.assert_array_equal(w, sparse_weights(3000, np.random.default_rng(7)))
    assert ((sparse_weights(500, np.random.default_rng(0), max_shapes=1) > 0).sum(1) <= 1).all()
    from facemodel.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="max_shapes"):
        sparse_weights(1, np.random.default_rng(0), max_shapes=0)
    with pytest.raises(InvalidArgumentError, match="n must be"):
        sparse_weights(-1, np.random.default_rng(0))


def test_a_grown_build_keeps_the_smaller_builds_split():
    """``split_base``: a run on a 300-identity build can continue on a 1,000-identity one without
    having trained on any of its val / test identities (session 23: without it, 24 of the 30 test
    identities of the 300 build landed in the 1,000 build's training split)."""
    small = plan_ict_dataset(ICTDatasetConfig(size=3000, identities=30))
    grown = plan_ict_dataset(ICTDatasetConfig(size=6000, identities=100, split_base=30))
    plain = plan_ict_dataset(ICTDatasetConfig(size=6000, identities=100))
    assert np.array_equal(grown.identity_weights[:30], small.identity_weights)  # the same 30 faces first
    assert np.array_equal(grown.identity_split[:30], small.identity_split)
    assert not np.array_equal(plain.identity_split[:30], small.identity_split)  # what it guards against
    assert np.bincount(grown.identity_split[30:], minlength=3).tolist() == [56, 7, 7]  # the added 70: 80/10/10
    with pytest.raises(ValueError, match="split_base"):
        ICTDatasetConfig(size=3000, identities=30, split_base=40)


def test_split_base_on_the_command_line(ict, tmp_path, capsys):
    from facemodel.cli import main as cli_main

    out = tmp_path / "grown"
    rc = cli_main(["data", "build-ict", "--source", str(ict.root), "--out", str(out), "--size", "3000",
                   "--identities", "30", "--split-base", "40", "--quiet"])  # fmt: skip
    assert rc == 2 and "split_base (40) must not exceed the number of identities (30)" in capsys.readouterr().err
    assert not out.exists()


def test_static_fraction_moves_labels_into_emotion_sequences(ict, tmp_path, capsys):
    """``static_fraction`` (``--static-fraction``): fewer static subjects leave more of the 7 %
    labelled budget to emotion sequences (25 frames each) on the same identities and splits, so a
    run can move between the two builds without re-anchoring its identities (session 25)."""
    from facemodel.cli import main as cli_main
    from facemodel.data.builder import KINDS

    base = plan_ict_dataset(ICTDatasetConfig(size=6000, identities=100))
    emo = plan_ict_dataset(ICTDatasetConfig(size=6000, identities=100, static_fraction=0.02))
    assert np.array_equal(base.identity_weights, emo.identity_weights)
    assert np.array_equal(base.identity_split, emo.identity_split)
    count = lambda p, k: int((np.asarray(p.kind) == KINDS.index(k)).sum())  # noqa: E731
    assert (count(base, "static"), count(emo, "static")) == (8 * 25, 2 * 25)
    # the labels the static subjects leave, 3 per 25-frame sequence: round((420 - 200) / 3) and round((420 - 50) / 3)
    assert (count(base, "emotion"), count(emo, "emotion")) == (73 * 25, 123 * 25)
    frac = lambda p: float((np.asarray(p.expression) >= 0).mean())  # noqa: E731
    assert abs(frac(emo) - 0.07) < 0.002 and abs(frac(base) - 0.07) < 0.002
    out = tmp_path / "bad"
    rc = cli_main(["data", "build-ict", "--source", str(ict.root), "--out", str(out), "--size", "3000",
                   "--static-fraction", "1.5", "--quiet"])  # fmt: skip
    assert rc == 2 and "static_fraction" in capsys.readouterr().err
    assert not out.exists()


def test_random_expressions_are_drawn_like_the_release_builds_meshes():
    """``random_expressions`` (``FaceModel.sample``'s expression prior) follows the builder: its mix is
    the release build's kind shares, and its rows have the plan's per-shape statistics."""
    from facemodel.data.expressions import EXPRESSION_MIX
    from facemodel.data.random_expressions import random_expressions

    cfg = ICTDatasetConfig(size=40_000, identities=1_000, tracker_fraction=0.25, split_base=300)
    plan = plan_ict_dataset(cfg)
    kinds = np.asarray(plan.kind)
    keep = kinds != KINDS.index("novel")
    for kind, share in EXPRESSION_MIX.items():
        assert abs(float((kinds[keep] == KINDS.index(kind)).mean()) - share) < 1e-9, kind
    W = np.stack(plan.blendshapes)
    R = random_expressions(8000, np.random.default_rng(5))
    assert R.shape == (8000, len(ICT_BLENDSHAPES)) and R.min() >= 0.0 and R.max() <= 1.0
    jaw, close = ICT_BLENDSHAPES.index("jawOpen"), ICT_BLENDSHAPES.index("mouthClose")
    assert (R[:, close] <= R[:, jaw] + 1e-12).all()
    assert (R > 0.5).any(0).all()  # every shape is drawn strongly somewhere (the tracker frames)
    assert np.array_equal(R, random_expressions(8000, np.random.default_rng(5)))
    # each kind's frames, and the mixture, against the plan's meshes of that kind
    for kind in (*EXPRESSION_MIX, None):
        X = W[keep] if kind is None else W[kinds == KINDS.index(kind)]
        Y = R if kind is None else random_expressions(4000, np.random.default_rng(6), mix={kind: 1.0})
        # per-shape mean and spread (weights 0-1; shapes' means reach 0.08-0.32): sampling noise is ~0.01-0.025
        assert np.abs(X.mean(0) - Y.mean(0)).max() < 0.025, kind
        assert np.abs(X.std(0) - Y.std(0)).max() < 0.04, kind
        assert abs(Y.mean() - X.mean()) < 0.1 * X.mean(), kind
        active, rest = (lambda A: (A > 0.1).sum(1).mean()), (lambda A: ((A > 0.05).sum(1) == 0).mean())
        assert abs(active(Y) - active(X)) < 0.1 * active(X), kind
        assert abs(rest(Y) - rest(X)) < 0.1 * rest(X) + 0.01, kind


def test_random_expressions_mix_and_bad_arguments():
    from facemodel.data.random_expressions import random_expressions
    from facemodel.errors import InvalidArgumentError

    rng = np.random.default_rng(0)
    static = random_expressions(300, rng, mix={"static": 1.0})
    assert len({tuple(np.round(r, 6)) for r in static}) == 300  # jittered samples, never the same twice
    tracker = random_expressions(300, rng, mix={"tracker": 1.0})
    gaze = [i for i, name in enumerate(ICT_BLENDSHAPES) if name.startswith("eyeLook")]
    assert (tracker[:, gaze] > 0.5).any() and not (static[:, gaze] > 0.05).any()  # gaze: tracker motion only
    assert ((tracker > 0.05).sum(1) == 1).any()  # a sweep's frame: one shape alone
    assert random_expressions(0, rng).shape == (0, len(ICT_BLENDSHAPES))
    for bad in ({"smile": 1.0}, {"static": -1.0}, {"static": 0.0}, {"free": float("nan")}):
        with pytest.raises(InvalidArgumentError, match="mix"):
            random_expressions(3, rng, mix=bad)
    with pytest.raises(InvalidArgumentError):
        random_expressions(3, rng, frames=4)


def test_plan_matches_the_recorded_plan():
    """A refactor pin: a small plan's weights and labels as the builder of 0.7.0 made them (recorded
    from commit 32c71c5; bit-identical there, compared to float64 round-off here)."""
    p = plan_ict_dataset(ICTDatasetConfig(seed=2, size=4000, identities=40, tracker_fraction=0.25))
    W = np.stack(p.blendshapes).astype(np.float64)
    got = [W.sum(), (W * np.arange(1, 54)).sum(), (W.sum(1) * np.arange(len(W))).sum() / len(W)]
    np.testing.assert_allclose(got, [9157.023011672329, 228217.8932280778, 4508.522915547753], rtol=1e-9)
    assert np.bincount(np.asarray(p.expression) + 1).tolist() == [3721, 139, 25, 23, 23, 23, 23, 23]
