"""Tests for vwe.data: the CIFAR-100 reader (on a tiny fake archive), Shapes, batches."""

from __future__ import annotations

import os
import socket
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_fixture import write_fake_cifar100

from vwe import data
from vwe.data import (
    CIFAR100_ARCHIVE,
    CIFAR100_CACHE,
    CIFAR100_URL,
    DATASETS,
    SHAPE_CLASSES,
    Dataset,
    batches,
    cifar100_available,
    data_dir,
    load_cifar100,
    load_dataset,
    make_shapes,
    to_float,
)


def reference_images(rows: np.ndarray) -> torch.Tensor:
    """(N, 3072) official rows -> (N, 3, 32, 32), built plane by plane (not by one reshape)."""
    planes = [rows[:, c * 1024:(c + 1) * 1024].reshape(-1, 32, 32) for c in range(3)]
    return torch.from_numpy(np.stack(planes, axis=1))


# --- CIFAR-100 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("numpy_module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_cifar100_reads_exact_pixels_labels_and_names(tmp_path, numpy_module):
    fx = write_fake_cifar100(tmp_path, n_train=20, n_test=10, seed=3, numpy_module=numpy_module)
    ds = load_cifar100(tmp_path, download=False, md5=fx["md5"])
    assert ds.name == "cifar100"
    assert ds.train_images.dtype == torch.uint8 and ds.train_images.shape == (20, 3, 32, 32)
    assert torch.equal(ds.train_images, reference_images(fx["train_data"]))
    assert torch.equal(ds.test_images, reference_images(fx["test_data"]))
    # One pixel by the format's definition: green plane, row 5, column 7 of image 2.
    assert ds.train_images[2, 1, 5, 7].item() == fx["train_data"][2, 1024 + 5 * 32 + 7]
    assert ds.train_labels.tolist() == fx["train_fine"]
    assert ds.test_labels.tolist() == fx["test_fine"]
    assert ds.train_coarse.tolist() == fx["train_coarse"]
    assert ds.test_coarse.tolist() == fx["test_coarse"]
    assert ds.train_labels.dtype == ds.train_coarse.dtype == torch.int64
    assert ds.classes == fx["fine_label_names"] and ds.num_classes == 100
    assert ds.coarse_classes == fx["coarse_label_names"]


def test_cifar100_cache_is_used_the_second_time(tmp_path):
    fx = write_fake_cifar100(tmp_path)
    first = load_cifar100(tmp_path, md5=fx["md5"])
    assert (tmp_path / CIFAR100_CACHE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [CIFAR100_ARCHIVE, CIFAR100_CACHE]
    os.remove(fx["path"])  # only the cache can answer now
    second = load_cifar100(tmp_path, md5=fx["md5"])
    for field in ("train_images", "train_labels", "test_images", "test_labels",
                  "train_coarse", "test_coarse"):
        assert torch.equal(getattr(first, field), getattr(second, field))
    assert second.classes == first.classes and second.coarse_classes == first.coarse_classes


def test_cifar100_cache_from_another_archive_is_not_used(tmp_path):
    fx_old = write_fake_cifar100(tmp_path, seed=0)
    load_cifar100(tmp_path, md5=fx_old["md5"])
    fx_new = write_fake_cifar100(tmp_path, seed=1)  # replaces the archive, not the cache
    ds = load_cifar100(tmp_path, md5=fx_new["md5"])
    assert torch.equal(ds.train_images, reference_images(fx_new["train_data"]))
    assert not torch.equal(ds.train_images, reference_images(fx_old["train_data"]))


def test_unreadable_cache_is_rebuilt_from_the_archive(tmp_path):
    fx = write_fake_cifar100(tmp_path)
    (tmp_path / CIFAR100_CACHE).write_bytes(b"not a torch file")
    ds = load_cifar100(tmp_path, md5=fx["md5"])
    assert torch.equal(ds.train_images, reference_images(fx["train_data"]))
    os.remove(fx["path"])
    assert torch.equal(load_cifar100(tmp_path, md5=fx["md5"]).train_images, ds.train_images)


def test_unwritable_cache_only_warns(tmp_path, monkeypatch):
    fx = write_fake_cifar100(tmp_path)

    def read_only(obj, f, *args, **kwargs):
        open(f, "wb").close()  # the temp file exists, then the write fails
        raise PermissionError("read-only file system")

    monkeypatch.setattr(torch, "save", read_only)
    with pytest.warns(UserWarning, match="cannot write the CIFAR-100 cache"):
        ds = load_cifar100(tmp_path, md5=fx["md5"])
    assert torch.equal(ds.test_images, reference_images(fx["test_data"]))
    assert not (tmp_path / CIFAR100_CACHE).exists()
    assert not list(tmp_path.glob(".*.tmp*"))  # no half-written temp file left behind


def assert_says_where_to_put_it(message: str, folder) -> None:
    assert str((folder / CIFAR100_ARCHIVE).resolve()) in message
    assert CIFAR100_URL in message
    assert data.CIFAR100_MD5 in message


def test_absent_archive_without_download_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar100(tmp_path / "nowhere", download=False)
    assert_says_where_to_put_it(str(err.value), tmp_path / "nowhere")


def test_failed_download_says_where_to_put_it(tmp_path, monkeypatch):
    def offline(url, root, filename, md5):
        (tmp_path / filename).write_bytes(b"partial")  # a transfer that died half-way
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data, "download_url", offline)
    with pytest.raises(FileNotFoundError, match="no network") as err:
        load_cifar100(tmp_path, download=True)
    assert_says_where_to_put_it(str(err.value), tmp_path)
    assert list(tmp_path.iterdir()) == []  # the partial file is gone, nothing looks like data


def test_download_lands_at_the_archive_path(tmp_path, monkeypatch):
    source = tmp_path / "server"
    fx = write_fake_cifar100(source)

    def fake_download(url, root, filename, md5):
        assert url == CIFAR100_URL and md5 == fx["md5"]
        (tmp_path / "data" / filename).write_bytes(fx["path"].read_bytes())

    monkeypatch.setattr(data, "download_url", fake_download)
    ds = load_cifar100(tmp_path / "data", download=True, md5=fx["md5"])
    assert torch.equal(ds.test_images, reference_images(fx["test_data"]))
    assert (tmp_path / "data" / CIFAR100_ARCHIVE).read_bytes() == fx["path"].read_bytes()


def test_cifar100_available(tmp_path):
    assert not cifar100_available(tmp_path)
    fx = write_fake_cifar100(tmp_path)
    assert cifar100_available(tmp_path)
    load_cifar100(tmp_path, md5=fx["md5"])
    os.remove(fx["path"])
    assert cifar100_available(tmp_path)  # the cache alone counts


def test_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("VWE_DATA_DIR", raising=False)
    # the project's data/, wherever the command or the notebook's kernel runs from
    assert data_dir() == data_dir(None) == Path(__file__).resolve().parent.parent / "data"
    monkeypatch.setenv("VWE_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    assert data_dir(tmp_path / "x") == tmp_path / "x"


# --- Dataset -----------------------------------------------------------------------------------

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
    assert on_meta.describe() == (
        "cifar100: 5 train / 10 test images 3x32x32 uint8, 100 classes (20 coarse), on meta, "
        f"archive md5 {fx['md5']} (not the official archive)"
    )
    assert small.provenance() == {"dataset": "cifar100", "n_train": 5, "n_test": 10, "evaluated_on": "test",
                                  "archive_md5": fx["md5"], "official_archive": False}


def test_a_verified_copy_is_read_only_when_its_md5_is_named(tmp_path, monkeypatch):
    fx = write_fake_cifar100(tmp_path)
    monkeypatch.delenv(data.CIFAR100_MD5_ENV, raising=False)
    with pytest.raises(ValueError, match=f"has md5 {fx['md5']}, not the official") as err:
        load_cifar100(tmp_path)
    assert f"{data.CIFAR100_MD5_ENV}={fx['md5']}" in str(err.value)  # the way out, spelled out
    assert not (tmp_path / data.CIFAR100_CACHE).exists()
    monkeypatch.setenv(data.CIFAR100_MD5_ENV, "0" * 32)  # another copy's md5 is refused too
    with pytest.raises(ValueError, match=f"not \\${data.CIFAR100_MD5_ENV}'s"):
        load_cifar100(tmp_path)
    monkeypatch.setenv(data.CIFAR100_MD5_ENV, fx["md5"].upper())
    ds = load_cifar100(tmp_path)
    assert ds.archive_md5 == fx["md5"] and ds.official is False
    assert ds.train_images[0].flatten().tolist() == fx["train_data"][0].tolist()
    monkeypatch.setenv(data.CIFAR100_MD5_ENV, "not-an-md5")
    with pytest.raises(ValueError, match="not an md5"):
        load_cifar100(tmp_path)


def test_shapes_has_no_archive_md5():
    ds = data.make_shapes(4, 2)
    assert ds.archive_md5 is None and ds.official is None and "archive" not in ds.describe()


@pytest.mark.parametrize("n_train, error", [(0, ValueError), (21, ValueError), (2.0, TypeError)])
def test_subset_rejects_bad_sizes(tmp_path, n_train, error):
    ds = make_shapes(20, 10)
    with pytest.raises(error, match="n_train"):
        ds.subset(n_train, None)


def test_dataset_rejects_wrong_dtypes():
    images, labels = torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="train_images must be uint8"):
        Dataset("x", images.float(), labels, images, labels, ["a"])
    with pytest.raises(ValueError, match="test_labels must be int64"):
        Dataset("x", images, labels, images, labels[:3], ["a"])


# --- Shapes ------------------------------------------------------------------------------------

def test_shapes_are_deterministic_per_seed():
    a, b, c = make_shapes(30, 20, seed=0), make_shapes(30, 20, seed=0), make_shapes(30, 20, seed=1)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_images, b.test_images)
    assert torch.equal(a.train_labels, b.train_labels)
    assert not torch.equal(a.train_images, c.train_images)
    assert not torch.equal(a.test_images, c.test_images)
    # Train and test come from different streams: the test split is not the train split again.
    assert not torch.equal(a.train_images[:20], a.test_images)


def test_shapes_format_and_balance():
    ds = make_shapes(53, 20, seed=2)
    assert ds.name == "shapes" and ds.classes == list(SHAPE_CLASSES) and ds.num_classes >= 10
    assert all(name.isalpha() and name.islower() for name in ds.classes)
    assert ds.train_images.shape == (53, 3, 32, 32) and ds.train_images.dtype == torch.uint8
    assert ds.train_labels.dtype == torch.int64 and ds.train_coarse is None
    counts = torch.bincount(ds.train_labels, minlength=10)
    assert counts.sum() == 53 and counts.min() == 5 and counts.max() == 6
    assert torch.bincount(ds.test_labels, minlength=10).tolist() == [2] * 10
    # Real images, not blanks: every image has a visible shape over its background.
    assert (ds.train_images.float().flatten(1).std(dim=1) > 10).all()


def test_ten_thousand_shapes():
    ds = make_shapes(10_000, 1, seed=0)
    assert ds.train_images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(ds.train_labels).tolist() == [1000] * 10
    assert int(ds.train_images.min()) == 0 and int(ds.train_images.max()) == 255


def mean_colour_probe_accuracy(ds: Dataset) -> float:
    """Nearest-centroid classifier on per-image mean RGB, trained on train, scored on test."""
    def feats(x):
        return to_float(x).mean(dim=(2, 3))  # (N, 3, 32, 32) -> (N, 3)
    train, test = feats(ds.train_images), feats(ds.test_images)
    centroids = torch.stack([train[ds.train_labels == c].mean(0) for c in range(ds.num_classes)])
    predicted = torch.cdist(test, centroids).argmin(dim=1)
    return (predicted == ds.test_labels).float().mean().item()


def test_mean_colour_does_not_decide_the_class():
    ds = make_shapes(2000, 1000, seed=4)
    assert mean_colour_probe_accuracy(ds) < 2 / ds.num_classes
    # Control: the same probe wins as soon as colour carries the class (one RGB tint per class,
    # 96 levels apart, over the dimmed images).
    tint = torch.cartesian_prod(*[torch.tensor([0, 96, 192])] * 3)[: ds.num_classes]
    tint = tint.to(torch.uint8).view(-1, 3, 1, 1)  # (C, 3, 1, 1)
    tinted = Dataset(
        "tinted",
        ds.train_images // 4 + tint[ds.train_labels], ds.train_labels,
        ds.test_images // 4 + tint[ds.test_labels], ds.test_labels,
        ds.classes,
    )
    assert mean_colour_probe_accuracy(tinted) > 0.9


@pytest.mark.parametrize("n_train, n_test", [(0, 5), (5, -1), (5.0, 5)])
def test_make_shapes_rejects_bad_sizes(n_train, n_test):
    with pytest.raises(ValueError, match="make_shapes needs"):
        make_shapes(n_train, n_test)


# --- load_dataset ------------------------------------------------------------------------------

def no_network(*args, **kwargs):
    raise AssertionError("must not touch the network")


def test_load_dataset_shapes_sizes(tmp_path):
    ds = load_dataset("shapes", root=tmp_path, n_train=30, n_test=10, seed=5)
    assert ds.name == "shapes" and len(ds.train_labels) == 30 and len(ds.test_labels) == 10
    assert torch.equal(ds.train_images, make_shapes(30, 10, seed=5).train_images)


def test_auto_falls_back_to_shapes_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "download_url", no_network)
    ds = load_dataset("auto", root=tmp_path, n_train=20, n_test=10, download=False)
    assert ds.name == "shapes"
    monkeypatch.setattr(data, "_reachable", lambda url, timeout=3.0: False)
    ds = load_dataset("auto", root=tmp_path, n_train=20, n_test=10, download=True)
    assert ds.name == "shapes" and list(tmp_path.iterdir()) == []


def test_auto_falls_back_when_the_download_breaks(tmp_path, monkeypatch):
    def broken(url, root, filename, md5):
        raise urllib.error.URLError("connection reset")

    monkeypatch.setattr(data, "_reachable", lambda url, timeout=3.0: True)
    monkeypatch.setattr(data, "download_url", broken)
    assert load_dataset("auto", root=tmp_path, n_train=20, n_test=10).name == "shapes"


def test_auto_and_cifar100_use_the_archive_when_present(tmp_path, monkeypatch):
    fx = write_fake_cifar100(tmp_path)
    monkeypatch.setattr(data, "CIFAR100_MD5", fx["md5"])
    monkeypatch.setattr(data, "download_url", no_network)
    auto = load_dataset("auto", root=tmp_path, n_train=7, n_test=3)
    assert auto.name == "cifar100" and len(auto.train_labels) == 7 and len(auto.test_labels) == 3
    assert torch.equal(auto.train_images, reference_images(fx["train_data"][:7]))
    full = load_dataset("cifar100", root=tmp_path)
    assert len(full.train_labels) == 20 and len(full.test_labels) == 10


def test_reachable_is_a_plain_tcp_connect():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert data._reachable(f"https://127.0.0.1:{port}/x.tar.gz", timeout=1.0)
    assert not data._reachable(f"https://127.0.0.1:{port}/x.tar.gz", timeout=1.0)


def test_cifar100_never_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "download_url", no_network)
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar100", root=tmp_path, download=False)
    assert_says_where_to_put_it(str(err.value), tmp_path)


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'") as err:
        load_dataset("mnist")
    assert all(name in str(err.value) for name in DATASETS)


# --- batches and to_float ----------------------------------------------------------------------

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
    (10, 11, True, "yields no batch"),
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
    ds = data.make_shapes(30, 7)
    val = ds.validation_split(10)
    assert torch.equal(val.train_images, ds.train_images[:20])
    assert torch.equal(val.test_images, ds.train_images[20:])
    assert torch.equal(val.test_labels, ds.train_labels[20:]) and val.validation == 10
    assert val.validation_split(10) is val  # idempotent for one n: a second resolve changes nothing
    assert "20 train / 10 validation (held-out training) images" in val.describe()
    assert val.provenance()["evaluated_on"] == "validation"
    with pytest.raises(ValueError, match="already a validation split"):
        val.validation_split(5)
    assert ds.validation_split(0) is ds  # 0: no validation split, the test split is used
    for bad in (30, -1):
        with pytest.raises(ValueError, match="0 < n < 30"):
            ds.validation_split(bad)
    cut = ds.cut(12, 99, validation=10)  # n_test counts validation images, capped at their number
    assert len(cut.train_labels) == 12 and torch.equal(cut.test_images, ds.train_images[20:])


def test_load_dataset_with_validation_never_touches_the_test_split():
    ds = load_dataset("shapes", n_train=40, n_test=8, validation=16)
    full = data.make_shapes(56, 8)  # Shapes draws the validation images on top of n_train
    assert torch.equal(ds.train_images, full.train_images[:40])
    assert torch.equal(ds.test_images, full.train_images[40:48]) and ds.validation == 16  # n_test of them
