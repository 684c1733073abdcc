"""The real CIFAR-100 through the project's own loader: facts a fake archive cannot fake.

Skipped, with one line saying why, where the archive is not beside the repository (real_cifar100.py).
"""

import pytest
import torch
from real_cifar100 import ARCHIVE, VERIFIED_MD5, skip_without_real_cifar100

from vwe.data import load_dataset
from vwe.data.cifar import CIFAR100_CACHE, CIFAR100_MD5_ENV, load_cifar100
from vwe.data.dataset import describe
from vwe.models import CIFAR100_MEAN, CIFAR100_STD

skip_without_real_cifar100()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A data folder holding a link to the archive, so that the cache is written here, not beside it."""
    path = tmp_path_factory.mktemp("cifar100")
    (path / ARCHIVE.name).symlink_to(ARCHIVE)
    return path


@pytest.fixture(scope="module")
def cifar(folder):
    return load_cifar100(folder, md5=VERIFIED_MD5)


def test_the_copy_is_refused_unless_its_md5_is_named(folder, monkeypatch):
    monkeypatch.delenv(CIFAR100_MD5_ENV, raising=False)
    with pytest.raises(ValueError, match=f"has md5 {VERIFIED_MD5}, not the official"):
        load_cifar100(folder)
    monkeypatch.setenv(CIFAR100_MD5_ENV, VERIFIED_MD5)
    ds = load_dataset("cifar100", root=folder, n_train=10, n_test=10)
    assert ds.archive_md5 == VERIFIED_MD5 and ds.official is False
    assert f"archive md5 {VERIFIED_MD5} (not the official archive)" in describe(ds.provenance())


def test_splits_and_classes(cifar):
    assert cifar.train_images.shape == (50_000, 3, 32, 32) and cifar.test_images.shape == (10_000, 3, 32, 32)
    assert torch.equal(torch.bincount(cifar.train_labels, minlength=100), torch.full((100,), 500))
    assert torch.equal(torch.bincount(cifar.test_labels, minlength=100), torch.full((100,), 100))
    assert torch.equal(torch.bincount(cifar.train_coarse, minlength=20), torch.full((20,), 2500))
    assert cifar.train_labels[:10].tolist() == [19, 29, 0, 11, 1, 86, 90, 28, 23, 31]
    assert cifar.classes[:5] == ["apple", "aquarium_fish", "baby", "bear", "beaver"]
    assert cifar.classes[-1] == "worm" and len(set(cifar.classes)) == 100
    assert cifar.coarse_classes[0] == "aquatic_mammals" and cifar.coarse_classes[-1] == "vehicles_2"
    # every fine class belongs to exactly one superclass
    pairs = set(zip(cifar.train_labels.tolist(), cifar.train_coarse.tolist(), strict=True))
    assert len(pairs) == 100


def test_pixels(cifar):
    first = cifar.train_images[0].flatten()  # the official row order: 1024 R, 1024 G, 1024 B
    assert first[:3].tolist() == [255, 255, 255] and first[-3:].tolist() == [10, 59, 79]


def test_training_statistics_are_the_towers_normalisation(cifar):
    # Each channel's mean and std from its histogram of the 256 pixel values: exact integer sums, then
    # one division each (the variance as E[v^2] - E[v]^2 loses about 1e-15 to cancellation).
    pixels = cifar.train_images  # (50000, 3, 32, 32) uint8
    counts = torch.stack([torch.bincount(pixels[:, c].flatten(), minlength=256) for c in range(3)])
    values = torch.arange(256, dtype=torch.int64)
    n = counts.sum(dim=1)  # 50 000 x 32 x 32 pixels each
    mean = (counts * values).sum(dim=1).double() / n / 255
    std = ((counts * values**2).sum(dim=1).double() / n / 255**2 - mean**2).sqrt()
    assert mean.tolist() == pytest.approx([0.50707516, 0.48654887, 0.44091784], abs=1e-7)
    assert std.tolist() == pytest.approx([0.26733429, 0.25643846, 0.27615047], abs=1e-7)
    # the towers' constants are these statistics to their 4 decimals
    assert mean.tolist() == pytest.approx(list(CIFAR100_MEAN), abs=5e-5)
    assert std.tolist() == pytest.approx(list(CIFAR100_STD), abs=5e-5)


def test_cache_round_trip(cifar, folder):
    cache = folder / CIFAR100_CACHE
    assert cache.is_file() and torch.load(cache, weights_only=True)["md5"] == VERIFIED_MD5
    (folder / ARCHIVE.name).rename(folder / "moved.tar.gz")  # the cache alone must serve
    try:
        again = load_cifar100(folder, md5=VERIFIED_MD5)
    finally:
        (folder / "moved.tar.gz").rename(folder / ARCHIVE.name)
    for field in ("train_images", "train_labels", "test_images", "test_labels", "train_coarse",
                  "test_coarse"):
        assert torch.equal(getattr(again, field), getattr(cifar, field)), field
    assert again.classes == cifar.classes and again.archive_md5 == VERIFIED_MD5
