"""Tests for vwe.data.shapes: determinism per seed, the format, class balance, and that only the shape
decides the class."""

from __future__ import annotations

import pytest
import torch

from vwe.data.dataset import Dataset, to_float
from vwe.data.shapes import SHAPE_CLASSES, make_shapes


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
