"""Tests for vwe.data: the dataset names and `load_dataset` (sizes, the "auto" fallback, CIFAR-100 when
its archive is present, the validation split)."""

from __future__ import annotations

import socket
import urllib.error

import pytest
import torch
from cifar_fixture import (
    assert_says_where_to_put_it,
    official_md5_expected,
    reference_images,
    write_fake_cifar100,
)

from vwe import data
from vwe.data import DATASETS, cifar, load_dataset
from vwe.data.shapes import make_shapes


def no_network(*args, **kwargs):
    raise AssertionError("must not touch the network")


def test_load_dataset_shapes_sizes(tmp_path):
    ds = load_dataset("shapes", root=tmp_path, n_train=30, n_test=10, seed=5)
    assert ds.name == "shapes" and len(ds.train_labels) == 30 and len(ds.test_labels) == 10
    assert torch.equal(ds.train_images, make_shapes(30, 10, seed=5).train_images)


def test_auto_falls_back_to_shapes_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "download_url", no_network)
    ds = load_dataset("auto", root=tmp_path, n_train=20, n_test=10, download=False)
    assert ds.name == "shapes"
    monkeypatch.setattr(data, "_reachable", lambda url, timeout=3.0: False)
    ds = load_dataset("auto", root=tmp_path, n_train=20, n_test=10, download=True)
    assert ds.name == "shapes" and list(tmp_path.iterdir()) == []


def test_auto_falls_back_when_the_download_breaks(tmp_path, monkeypatch):
    def broken(url, root, filename, md5):
        raise urllib.error.URLError("connection reset")

    monkeypatch.setattr(data, "_reachable", lambda url, timeout=3.0: True)
    monkeypatch.setattr(cifar, "download_url", broken)
    assert load_dataset("auto", root=tmp_path, n_train=20, n_test=10).name == "shapes"


def test_auto_and_cifar100_use_the_archive_when_present(tmp_path, monkeypatch):
    fx = write_fake_cifar100(tmp_path)
    official_md5_expected(monkeypatch)
    monkeypatch.setattr(cifar, "CIFAR100_MD5", fx["md5"])
    monkeypatch.setattr(cifar, "download_url", no_network)
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
    official_md5_expected(monkeypatch)
    monkeypatch.setattr(cifar, "download_url", no_network)
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar100", root=tmp_path, download=False)
    assert_says_where_to_put_it(str(err.value), tmp_path)


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'") as err:
        load_dataset("mnist")
    assert all(name in str(err.value) for name in DATASETS)


def test_load_dataset_with_validation_never_touches_the_test_split():
    ds = load_dataset("shapes", n_train=40, n_test=8, validation=16)
    full = make_shapes(56, 8)  # Shapes draws the validation images on top of n_train
    assert torch.equal(ds.train_images, full.train_images[:40])
    assert torch.equal(ds.test_images, full.train_images[40:48]) and ds.validation == 16  # n_test of them
