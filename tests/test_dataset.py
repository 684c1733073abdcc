"""Tests for vwe.data.dataset: the Dataset type (subsets, the device, the validation split, its
provenance and `describe`), the data folder, batches and to_float."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cifar_fixture import write_fake_cifar100

from vwe.data.cifar import load_cifar100
from vwe.data.dataset import Dataset, batches, data_dir, describe, to_float
from vwe.data.shapes import make_shapes


def test_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("VWE_DATA_DIR", raising=False)
    # the project's data/, wherever the command or the notebook's kernel runs from
    assert data_dir() == data_dir(None) == Path(__file__).resolve().parent.parent / "data"
    monkeypatch.setenv("VWE_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    assert data_dir(tmp_path / "x") == tmp_path / "x"


def test_subset_to_and_describe(tmp_path):
    fx = write_fake_cifar100(tmp_path)
    ds = load_cifar100(tmp_path, md5=fx["md5"])
    small = ds.subset(5, None)
    assert torch.equal(small.train_images, ds.train_images[:5])
    assert small.train_coarse.tolist() == fx["train_coarse"][:5]
    assert torch.equal(small.test_images, ds.test_images) and len(small.test_coarse) == 10
    on_meta = small.to("meta")
    assert on_meta.train_images.device.type == "meta"
    assert on_meta.test_coarse.device.type == "meta" and on_meta.train_labels.dtype == torch.int64
    # The fixture's archive is not the official file: every description says so, with its md5.
    assert describe(on_meta.provenance()) == (
        f"cifar100: 5 train / 10 test images, archive md5 {fx['md5']} (not the official archive)"
    )
    assert small.provenance() == {"dataset": "cifar100", "n_train": 5, "n_test": 10, "evaluated_on": "test",
                                  "archive_md5": fx["md5"], "official_archive": False}


def test_shapes_has_no_archive_md5():
    ds = make_shapes(4, 2)
    assert ds.archive_md5 is None and ds.official is None and "archive" not in describe(ds.provenance())


@pytest.mark.parametrize("n_train, error", [(0, ValueError), (21, ValueError), (2.0, TypeError)])
def test_subset_rejects_bad_sizes(tmp_path, n_train, error):
    ds = make_shapes(20, 10)
    with pytest.raises(error, match="n_train"):
        ds.subset(n_train, None)


def test_dataset_rejects_wrong_dtypes():
    images, labels = torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(TypeError, match="train_images must be uint8"):
        Dataset("x", images.float(), labels, images, labels, ["a"])
    with pytest.raises(ValueError, match="test_labels must be int64"):
        Dataset("x", images, labels, images, labels[:3], ["a"])


def test_batches_in_order():
    got = list(batches(10, 4, shuffle=False))
    assert [b.tolist() for b in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(b.dtype == torch.int64 for b in got)


def test_batches_shuffled_is_a_seeded_permutation():
    got = torch.cat(list(batches(103, 16, shuffle=True, generator=torch.Generator().manual_seed(7))))
    assert torch.equal(got, torch.randperm(103, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(got.sort().values, torch.arange(103))
    again = torch.cat(list(batches(103, 16, shuffle=True,
                                   generator=torch.Generator().manual_seed(8))))
    assert not torch.equal(got, again)


def test_batches_drop_last_and_device():
    got = list(batches(103, 16, shuffle=True, generator=torch.Generator().manual_seed(0),
                       drop_last=True))
    assert len(got) == 6 and all(len(b) == 16 for b in got)
    assert len(torch.cat(got).unique()) == 96
    on_meta = next(iter(batches(10, 4, shuffle=False, device="meta")))
    assert on_meta.device.type == "meta" and on_meta.shape == (4,)


@pytest.mark.parametrize("n, batch_size, drop_last, match", [
    (0, 4, False, "n >= 1"),
    (10, 0, False, "batch_size >= 1"),
    (10, 2.5, False, "batch_size >= 1"),
    (10, 11, True, "batch of 11 is more than the 10 training images"),
])
def test_batches_rejects_bad_sizes(n, batch_size, drop_last, match):
    with pytest.raises(ValueError, match=match):
        batches(n, batch_size, shuffle=False, drop_last=drop_last)


def test_to_float():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    y = to_float(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert torch.allclose(y.flatten(), torch.tensor([0.0, 0.2, 1.0]), atol=1e-7)
    with pytest.raises(TypeError, match="uint8"):
        to_float(y)


def test_validation_split_is_carved_from_the_training_images():
    ds = make_shapes(30, 7)
    val = ds.validation_split(10)
    assert torch.equal(val.train_images, ds.train_images[:20])
    assert torch.equal(val.test_images, ds.train_images[20:])
    assert torch.equal(val.test_labels, ds.train_labels[20:]) and val.validation == 10
    assert val.validation_split(10) is val  # idempotent for one n: a second resolve changes nothing
    assert "20 train / 10 validation (held-out training) images" in describe(val.provenance())
    assert val.provenance()["evaluated_on"] == "validation"
    with pytest.raises(ValueError, match="already a validation split"):
        val.validation_split(5)
    assert ds.validation_split(0) is ds  # 0: no validation split, the test split is used
    for bad in (30, -1):
        with pytest.raises(ValueError, match="0 < n < 30"):
            ds.validation_split(bad)
    cut = ds.cut(12, 99, validation=10)  # n_test counts validation images, capped at their number
    assert len(cut.train_labels) == 12 and torch.equal(cut.test_images, ds.train_images[20:])
