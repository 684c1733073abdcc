"""CIFAR-10 through the same reader as CIFAR-100: exact pixels and labels of a generated archive in the
official format, its cache, and the same refusals (md5, truncation, hostile pickles, missing members)."""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest
import torch
from cifar_fixture import C10_META, C10_TEST, C10_TRAIN, CIFAR10_ARCHIVE, rewrite, write_fake_cifar10
from hostile import Payload  # unpickling it calls os.system: what a malicious pickle does

from vwe.data import cifar, load_dataset
from vwe.data.cifar import CIFAR10_CACHE, CIFAR10_MD5_ENV, CIFAR10_URL, load_cifar10
from vwe.data.dataset import describe


def reference_images(rows: np.ndarray) -> torch.Tensor:
    """(N, 3072) official rows -> (N, 3, 32, 32), built plane by plane (not by one reshape)."""
    planes = [rows[:, c * 1024:(c + 1) * 1024].reshape(-1, 32, 32) for c in range(3)]
    return torch.from_numpy(np.stack(planes, axis=1))


def test_cifar10_reads_the_five_batches_in_order_exactly(tmp_path):
    fx = write_fake_cifar10(tmp_path, per_batch=4, n_test=6, seed=2)
    ds = load_cifar10(tmp_path, md5=fx["md5"])
    assert ds.name == "cifar10" and ds.train_images.shape == (20, 3, 32, 32)
    assert torch.equal(ds.train_images, reference_images(fx["train_data"]))
    assert torch.equal(ds.test_images, reference_images(fx["test_data"]))
    # Image 9 is batch 3's second image: blue plane, row 31, column 0.
    batch3 = fx["members"][C10_TRAIN[2]]["data"]
    assert ds.train_images[9, 2, 31, 0].item() == batch3[1, 2048 + 31 * 32]
    assert ds.train_labels.tolist() == fx["train_labels"] and ds.test_labels.tolist() == fx["test_labels"]
    assert ds.train_labels.dtype == torch.int64
    assert ds.classes == fx["label_names"] and ds.num_classes == 10
    assert ds.train_coarse is None and ds.coarse_classes is None
    assert ds.archive_md5 == fx["md5"] and ds.official is False
    assert describe(ds.provenance()).endswith(f"archive md5 {fx['md5']} (not the official archive)")
    assert ds.provenance()["dataset"] == "cifar10"


def test_cifar10_cache_and_load_dataset(tmp_path, monkeypatch):
    fx = write_fake_cifar10(tmp_path)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", fx["md5"])  # as if the fixture were the official file
    first = load_dataset("cifar10", root=tmp_path, n_train=7, n_test=3)
    assert first.official is True and len(first.train_labels) == 7 and len(first.test_labels) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [CIFAR10_ARCHIVE, CIFAR10_CACHE]
    os.remove(fx["path"])  # only the cache can answer now
    second = load_dataset("cifar10", root=tmp_path)
    assert torch.equal(second.train_images[:7], first.train_images)
    assert second.train_labels.tolist() == fx["train_labels"]


def test_cifar10_md5_is_checked_and_a_verified_copy_named(tmp_path, monkeypatch):
    fx = write_fake_cifar10(tmp_path)
    monkeypatch.delenv(CIFAR10_MD5_ENV, raising=False)
    with pytest.raises(ValueError, match=f"has md5 {fx['md5']}, not the official CIFAR-10") as err:
        load_cifar10(tmp_path)
    assert f"{CIFAR10_MD5_ENV}={fx['md5']}" in str(err.value) and "--cifar10-md5" in str(err.value)
    assert not (tmp_path / CIFAR10_CACHE).exists()
    monkeypatch.setenv(CIFAR10_MD5_ENV, fx["md5"])
    assert load_cifar10(tmp_path).archive_md5 == fx["md5"]
    monkeypatch.setenv(CIFAR10_MD5_ENV, "nope")
    with pytest.raises(ValueError, match="VWE_CIFAR10_MD5='nope' is not an md5"):
        load_cifar10(tmp_path)


def test_cifar10_absent_offline_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10(tmp_path, download=False)
    message = str(err.value)
    assert str((tmp_path / CIFAR10_ARCHIVE).resolve()) in message
    assert CIFAR10_URL in message and cifar.CIFAR10_MD5 in message and "CIFAR-10 archive" in message


def test_cifar10_truncated_archive_is_refused(tmp_path):
    fx = write_fake_cifar10(tmp_path, per_batch=30)
    blob = fx["path"].read_bytes()[:-200]
    fx["path"].write_bytes(blob)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_cifar10(tmp_path, md5=hashlib.md5(blob).hexdigest())
    assert not (tmp_path / CIFAR10_CACHE).exists()


def test_cifar10_missing_batch_and_bad_labels_are_named(tmp_path):
    fx = write_fake_cifar10(tmp_path)
    with pytest.raises(ValueError, match=f"no file {C10_TRAIN[4]}"):
        load_cifar10(tmp_path, md5=rewrite(fx, tmp_path, drop=C10_TRAIN[4]))
    labels = list(fx["members"][C10_TEST]["labels"])
    labels[0] = 10
    md5 = rewrite(fx, tmp_path, replace={C10_TEST: {**fx["members"][C10_TEST], "labels": labels}})
    with pytest.raises(ValueError, match=rf"{C10_TEST} 'labels' must lie in 0\.\.9"):
        load_cifar10(tmp_path, md5=md5)
    md5 = rewrite(fx, tmp_path, replace={C10_META: {"label_names": fx["label_names"][:9]}})
    with pytest.raises(ValueError, match=f"{C10_META} 'label_names' must be a list of 10 names"):
        load_cifar10(tmp_path, md5=md5)
    assert not (tmp_path / CIFAR10_CACHE).exists()


@pytest.mark.parametrize("member", [C10_TRAIN[2], C10_META])
def test_cifar10_pickle_that_calls_anything_is_refused_and_never_runs(tmp_path, member):
    fx = write_fake_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    payload = Payload(os.system, f"touch {marker}")
    poisoned = {**fx["members"][member], "batch_label": payload}
    md5 = rewrite(fx, tmp_path, replace={member: poisoned})
    with pytest.raises(pickle.UnpicklingError, match=rf"refusing to unpickle \w+\.system from {member}: "
                                                     "CIFAR-10 pickles"):
        load_cifar10(tmp_path, md5=md5)
    assert not marker.exists() and not (tmp_path / CIFAR10_CACHE).exists()
