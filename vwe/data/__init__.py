"""The dataset names (`DATASETS`, "folder:PATH") and `load_dataset`, which loads one by name, on top of
the readers below it; every public name of those is re-exported here.

Every dataset is returned as a `Dataset` (`vwe.data.dataset`) of (N, 3, 32, 32) uint8 images and int64
labels:

- CIFAR-100 (the paper's data) and CIFAR-10 from their official archives (`vwe.data.cifar`);
- your own images, `folder:PATH` in torchvision's ImageFolder layout, decoded once and cached
  (`vwe.data.folder`);
- Shapes, generated procedurally in seconds from a seed: the offline dataset of tests and CI
  (`vwe.data.shapes`).

The submodules import `vwe.data.dataset` and nothing above it; only this module knows them all.
"""

from __future__ import annotations

import argparse
import socket
import urllib.parse
from pathlib import Path

from vwe.data.cifar import (
    CIFAR10_ARCHIVE,
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
from vwe.data.dataset import Dataset, batches, data_dir, describe, full_batches, project_dir, to_float
from vwe.data.folder import FOLDER_PREFIX, load_folder
from vwe.data.shapes import SHAPE_CLASSES, SHAPES_TEST, SHAPES_TRAIN, make_shapes

__all__ = [
    "CIFAR10_ARCHIVE", "CIFAR10_CACHE", "CIFAR10_MD5_ENV", "CIFAR10_URL",
    "CIFAR100_ARCHIVE", "CIFAR100_CACHE", "CIFAR100_MD5_ENV", "CIFAR100_URL",
    "DATASETS", "FOLDER_PREFIX", "SHAPE_CLASSES", "Dataset",
    "absolute_dataset_name", "batches", "check_dataset_name", "cifar100_available", "data_dir",
    "dataset_type", "describe", "full_batches", "load_cifar10", "load_cifar100", "load_dataset",
    "load_folder",
    "make_shapes", "project_dir", "to_float",
]

DATASETS = ("auto", "cifar10", "cifar100", "shapes")


def check_dataset_name(name: object) -> None:
    """Refuse anything but one of DATASETS or "folder:PATH", listing the choices."""
    if name in DATASETS:
        return
    if isinstance(name, str) and name.startswith(FOLDER_PREFIX) and name[len(FOLDER_PREFIX):].strip():
        return
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}, or {FOLDER_PREFIX}PATH for a "
                     "folder of your own images (one sub-folder per class)")


def dataset_type(text: str) -> str:
    """argparse type of --dataset: one of DATASETS or folder:PATH, refused with the choices listed."""
    try:
        check_dataset_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return text


def absolute_dataset_name(name: str) -> str:
    """`name` with a folder's PATH made absolute (a notebook kernel runs elsewhere); others unchanged."""
    if not name.startswith(FOLDER_PREFIX):
        return name
    return FOLDER_PREFIX + str(Path(name[len(FOLDER_PREFIX):]).expanduser().resolve())


def _reachable(url: str, timeout: float = 3.0) -> bool:
    # A plain TCP connect fails in seconds offline, where a download could hang for minutes.
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_dataset(name: str = "auto", root: str | Path | None = None, n_train: int | None = None,
                 n_test: int | None = None, seed: int = 0, download: bool = True,
                 validation: int = 0, cifar100_md5: str | None = None, cifar10_md5: str | None = None,
                 skip_bad: bool | None = None) -> Dataset:
    """Load `name` (one of DATASETS, or "folder:PATH"), on the CPU; read `.name` for what ran.

    "auto" is CIFAR-100 when its archive or cache is in the data dir, or (with `download`) when
    the server answers and the download succeeds; otherwise Shapes. "cifar10" and "cifar100" never
    fall back. "folder:PATH" reads your own images (`vwe.data.folder.load_folder`; a relative PATH is
    relative to the current directory). `n_train`/`n_test` keep the first n images of CIFAR or
    of a folder (all of a folder's when it has fewer), or set the Shapes sizes (default 10 000 /
    2 000); `seed` generates Shapes and splits and shuffles a folder. With `validation` > 0 the
    dataset is its `validation_split(validation)`, cut to `n_train`/`n_test`. `cifar100_md5` and
    `cifar10_md5` accept a verified copy of an archive (`vwe.data.cifar.expected_md5`), `skip_bad`
    leaves out a folder's files that do not decode (`vwe.data.folder.load_folder`).
    """
    sources = dict(cifar100_md5=cifar100_md5, cifar10_md5=cifar10_md5, skip_bad=skip_bad)
    check_dataset_name(name)
    if validation:
        # The validation images are the last of the whole training split (fixed whatever n_train is);
        # Shapes draws its split at the size asked, so ask for them on top of n_train.
        n_whole = n_train + validation if name == "shapes" and n_train else None
        whole = load_dataset(name, root, n_whole, None, seed, download, **sources)
        return whole.cut(n_train, n_test, validation)
    if name.startswith(FOLDER_PREFIX):
        # a profile's sizes are a cap for your own images (`Dataset.cut`)
        ds = load_folder(name[len(FOLDER_PREFIX):], root=root, seed=seed, skip_bad=skip_bad)
        return ds.cut(n_train, n_test)
    shapes = (SHAPES_TRAIN if n_train is None else n_train,
              SHAPES_TEST if n_test is None else n_test, seed)
    if name == "shapes":
        return make_shapes(*shapes)
    if name == "cifar10":
        return load_cifar10(root, download=download, md5=cifar10_md5).subset(n_train, n_test)
    if name == "auto" and not cifar100_available(root):
        if not (download and _reachable(CIFAR100_URL)):
            return make_shapes(*shapes)
        try:
            ds = load_cifar100(root, download=True, md5=cifar100_md5)
        except FileNotFoundError:  # the server answered but the download did not complete
            return make_shapes(*shapes)
        return ds.subset(n_train, n_test)
    return load_cifar100(root, download=download, md5=cifar100_md5).subset(n_train, n_test)
