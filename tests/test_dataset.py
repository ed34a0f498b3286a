import numpy as np
import pytest
import torch

from facemodel.data.dataset import FaceDataset
from facemodel.errors import DatasetFormatError


def test_items_and_labels(small_dataset):
    ds = FaceDataset(small_dataset, split="train")
    item = ds[0]
    assert item["vertices"].shape == (9409, 3) and item["vertices"].dtype == torch.float32
    assert 0 <= int(item["identity"]) < ds.num_identity_classes
    assert ds.num_expression_classes == 7
    labels = ds.meta("expression")
    assert (labels >= -1).all() and (labels < 7).all()
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)
    batch = next(iter(loader))
    assert batch["vertices"].shape == (16, 9409, 3)


def test_splits_partition_the_data(small_dataset):
    sizes = [len(FaceDataset(small_dataset, split=s)) for s in ("train", "val", "test")]
    assert sum(sizes) == len(FaceDataset(small_dataset, split=None)) == 1000
    train_ids = set(FaceDataset(small_dataset, "train").identity_ids)
    test_ids = set(FaceDataset(small_dataset, "test").identity_ids)
    assert not train_ids & test_ids


def test_filters(small_dataset):
    ds = FaceDataset(small_dataset, split=None, expression_labelled_only=True)
    assert (ds.meta("expression") >= 0).all() and len(ds) == 70
    novel = FaceDataset(small_dataset, split="test", kinds=["novel"])
    assert len(novel) == 12 and (novel.meta("expression") == -1).all()
    with pytest.raises(DatasetFormatError, match="unknown kinds"):
        FaceDataset(small_dataset, kinds=["dance"])
    with pytest.raises(DatasetFormatError, match="split"):
        FaceDataset(small_dataset, split="training")


def test_vertices_batch_matches_items(small_dataset):
    ds = FaceDataset(small_dataset, split="val")
    rows = np.array([3, 1, 2])
    batch = ds.vertices(rows)
    for k, r in enumerate(rows):
        np.testing.assert_array_equal(batch[k], ds[r]["vertices"].numpy())
    assert ds.template.num_vertices == 9409


def test_offsets_are_memory_mapped(small_dataset):
    ds = FaceDataset(small_dataset)
    ds[0]
    assert isinstance(ds._offsets, np.memmap)


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetFormatError, match="manifest.json"):
        FaceDataset(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="not a valid"):
        FaceDataset(tmp_path)


def test_newer_format_version_is_refused(small_dataset, tmp_path):
    import json
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(small_dataset, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetFormatError, match="upgrade"):
        FaceDataset(copy)
    (copy / "offsets.npy").unlink()
    m["format_version"] = 1
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetFormatError, match="offsets.npy"):
        FaceDataset(copy)
