"""Tests for vwe.data.cifar: the reader on tiny fake archives in the official formats (CIFAR-100, then
CIFAR-10 through the same reader), their cache, the download, the md5 check, and archives that are
damaged, wrong or hostile."""

from __future__ import annotations

import hashlib
import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_fixture import (
    C10_META,
    C10_TEST,
    C10_TRAIN,
    CIFAR10_ARCHIVE,
    META,
    TEST,
    TRAIN,
    assert_says_where_to_put_it,
    official_md5_expected,
    py2_pickle,
    reference_images,
    rewrite,
    write_fake_cifar10,
    write_fake_cifar100,
)
from hostile import Payload, enospc  # unpickling a Payload calls its function: what a malicious pickle does

import vwe.data.dataset
from vwe.data import cifar, load_dataset
from vwe.data.cifar import (
    CIFAR10_CACHE,
    CIFAR10_MD5_ENV,
    CIFAR10_URL,
    CIFAR100_ARCHIVE,
    CIFAR100_CACHE,
    CIFAR100_MD5_ENV,
    CIFAR100_URL,
    cifar100_available,
    load_cifar10,
    load_cifar100,
)
from vwe.data.dataset import describe


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


def test_absent_archive_without_download_says_where_to_put_it(tmp_path, monkeypatch):
    official_md5_expected(monkeypatch)
    with pytest.raises(FileNotFoundError) as err:
        load_cifar100(tmp_path / "nowhere", download=False)
    assert_says_where_to_put_it(str(err.value), tmp_path / "nowhere")


def test_failed_download_says_where_to_put_it(tmp_path, monkeypatch):
    def offline(url, root, filename, md5):
        (tmp_path / filename).write_bytes(b"partial")  # a transfer that died half-way
        raise urllib.error.URLError("no network")

    official_md5_expected(monkeypatch)
    monkeypatch.setattr(cifar, "download_url", offline)
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

    monkeypatch.setattr(cifar, "download_url", fake_download)
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


def test_a_verified_copy_is_read_only_when_its_md5_is_named(tmp_path, monkeypatch):
    fx = write_fake_cifar100(tmp_path)
    monkeypatch.delenv(CIFAR100_MD5_ENV, raising=False)
    with pytest.raises(ValueError, match=f"has md5 {fx['md5']}, not the official") as err:
        load_cifar100(tmp_path)
    assert f"{CIFAR100_MD5_ENV}={fx['md5']}" in str(err.value)  # the way out, spelled out
    assert not (tmp_path / CIFAR100_CACHE).exists()
    monkeypatch.setenv(CIFAR100_MD5_ENV, "0" * 32)  # another copy's md5 is refused too
    with pytest.raises(ValueError, match=f"not \\${CIFAR100_MD5_ENV}'s"):
        load_cifar100(tmp_path)
    monkeypatch.setenv(CIFAR100_MD5_ENV, fx["md5"].upper())
    ds = load_cifar100(tmp_path)
    assert ds.archive_md5 == fx["md5"] and ds.official is False
    assert ds.train_images[0].flatten().tolist() == fx["train_data"][0].tolist()
    monkeypatch.setenv(CIFAR100_MD5_ENV, "not-an-md5")
    with pytest.raises(ValueError, match="not an md5"):
        load_cifar100(tmp_path)


def test_an_md5_named_as_an_argument_reaches_the_reader_without_the_environment(tmp_path, monkeypatch):
    # what --cifar100-md5 passes down (vwe.config.resolve -> load_dataset); it wins over the environment
    fx = write_fake_cifar100(tmp_path)
    monkeypatch.setenv(CIFAR100_MD5_ENV, "0" * 32)
    ds = load_dataset("cifar100", root=tmp_path, download=False, cifar100_md5=fx["md5"].upper())
    assert ds.archive_md5 == fx["md5"] and ds.official is False
    with pytest.raises(ValueError, match="--cifar100-md5='nope' is not an md5"):
        load_dataset("cifar100", root=tmp_path, download=False, cifar100_md5="nope")


# ----------------------------------------------------------------------------- hostile archives

def test_cifar100_wrong_md5_is_refused(tmp_path):
    write_fake_cifar100(tmp_path)
    with pytest.raises(ValueError, match="md5") as err:
        load_cifar100(tmp_path, md5="0" * 32)
    assert str((tmp_path / CIFAR100_ARCHIVE).resolve()) in str(err.value)
    assert not (tmp_path / CIFAR100_CACHE).exists()


def test_truncated_archive_is_a_clear_error_and_caches_nothing(tmp_path):
    fx = write_fake_cifar100(tmp_path, n_train=50)
    blob = fx["path"].read_bytes()
    fx["path"].write_bytes(blob[: len(blob) // 2])
    md5 = hashlib.md5(blob[: len(blob) // 2]).hexdigest()
    with pytest.raises(ValueError, match="truncated or corrupt") as err:
        load_cifar100(tmp_path, md5=md5)
    assert str(fx["path"]) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CIFAR100_ARCHIVE]


def test_missing_member_is_named(tmp_path):
    fx = write_fake_cifar100(tmp_path)
    md5 = rewrite(fx, tmp_path, drop=META)
    with pytest.raises(ValueError, match=f"no file {META}"):
        load_cifar100(tmp_path, md5=md5)
    assert not (tmp_path / CIFAR100_CACHE).exists()


def test_missing_key_is_named(tmp_path):
    fx = write_fake_cifar100(tmp_path)
    no_coarse = {k: v for k, v in fx["members"][TRAIN].items() if k != "coarse_labels"}
    md5 = rewrite(fx, tmp_path, replace={TRAIN: no_coarse})
    with pytest.raises(ValueError, match=f"{TRAIN} has no 'coarse_labels'"):
        load_cifar100(tmp_path, md5=md5)
    assert not (tmp_path / CIFAR100_CACHE).exists()


@pytest.mark.parametrize("bad", ["4d", "3071", "float"])
def test_wrong_data_array_is_refused(tmp_path, bad):
    fx = write_fake_cifar100(tmp_path)
    rows = fx["train_data"]
    wrong = {"4d": rows.reshape(-1, 3, 32, 32), "3071": rows[:, :3071],
             "float": rows.astype(np.float32)}[bad]
    md5 = rewrite(fx, tmp_path, replace={TRAIN: {**fx["members"][TRAIN], "data": wrong}})
    with pytest.raises(ValueError, match=r"'data' must be uint8 of shape \(N, 3072\)"):
        load_cifar100(tmp_path, md5=md5)
    assert not (tmp_path / CIFAR100_CACHE).exists()


@pytest.mark.parametrize("key, value, message", [
    ("fine_labels", 100, r"0\.\.99"),
    ("coarse_labels", 20, r"0\.\.19"),
    ("fine_labels", -1, r"0\.\.99"),
])
def test_label_out_of_range_is_refused(tmp_path, key, value, message):
    fx = write_fake_cifar100(tmp_path)
    labels = list(fx["members"][TEST][key])
    labels[3] = value
    md5 = rewrite(fx, tmp_path, replace={TEST: {**fx["members"][TEST], key: labels}})
    with pytest.raises(ValueError, match=f"{TEST} '{key}' must lie in {message}"):
        load_cifar100(tmp_path, md5=md5)
    assert not (tmp_path / CIFAR100_CACHE).exists()


def test_label_count_must_match_images(tmp_path):
    fx = write_fake_cifar100(tmp_path)
    short = {**fx["members"][TRAIN], "fine_labels": fx["train_fine"][:-1]}
    md5 = rewrite(fx, tmp_path, replace={TRAIN: short})
    with pytest.raises(ValueError, match="'fine_labels' must be 20 integers"):
        load_cifar100(tmp_path, md5=md5)


@pytest.mark.parametrize("member, func, args, refused", [
    (TRAIN, open, ("{marker}", "w"), r"\w+\.open"),
    (META, os.system, ("touch {marker}",), r"\w+\.system"),
    (TEST, eval, ("open({marker!r}, 'w')",), r"\w+\.eval"),
])
def test_archive_pickle_that_calls_anything_is_refused_and_never_runs(tmp_path, member, func, args,
                                                                      refused):
    fx = write_fake_cifar100(tmp_path)
    marker = tmp_path / "pwned"
    payload = Payload(func, *(a.format(marker=str(marker)) for a in args))
    # Control: a plain unpickler does run the payload, so the assertion below can fail.
    result = pickle.loads(py2_pickle(payload), encoding="latin1")
    if hasattr(result, "close"):
        result.close()
    assert marker.exists()
    marker.unlink()

    poisoned = payload if member == META else {**fx["members"][member], "batch_label": payload}
    md5 = rewrite(fx, tmp_path, replace={member: poisoned})
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to unpickle {refused} from {member}"):
        load_cifar100(tmp_path, md5=md5)
    assert not marker.exists()
    assert not (tmp_path / CIFAR100_CACHE).exists()


def test_hostile_cache_is_never_run_and_the_archive_is_read_instead(tmp_path):
    fx = write_fake_cifar100(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"md5": fx["md5"], "train_images": Payload(os.system, f"touch {marker}")},
               tmp_path / CIFAR100_CACHE)
    ds = load_cifar100(tmp_path, md5=fx["md5"])
    assert not marker.exists()
    assert ds.train_labels.tolist() == fx["train_fine"]
    good = torch.load(tmp_path / CIFAR100_CACHE, weights_only=True)  # replaced by a plain cache
    assert torch.equal(good["train_images"], ds.train_images)


def test_full_disk_while_caching_only_warns(tmp_path, monkeypatch):
    fx = write_fake_cifar100(tmp_path)

    def save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a cache")
        raise enospc()
    monkeypatch.setattr(vwe.data.dataset.torch, "save", save)  # in save_cache
    with pytest.warns(UserWarning, match="cannot write the CIFAR-100 cache.*No space left"):
        ds = load_cifar100(tmp_path, md5=fx["md5"])
    assert ds.test_labels.tolist() == fx["test_fine"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [CIFAR100_ARCHIVE]  # no cache, no temp file


# ----------------------------------------------------------------------------- CIFAR-10


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
