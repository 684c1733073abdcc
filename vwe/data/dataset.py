"""The `Dataset` type every reader returns, index batches to slice it on the device, and the data folder
and cache files the readers share.

A `Dataset` holds both splits as whole tensors, (N, 3, 32, 32) uint8 images and (N,) int64 labels. It is
moved to the device once (`Dataset.to`); a training loop draws index tensors from `batches`, slices the
images with them and converts with `to_float`, so no per-image Python or PIL work happens in the loop.
`Dataset.provenance()` is what a run records about its data; `describe` puts such a record in words.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from vwe.checks import check_images, is_int
from vwe.files import atomic_write


@dataclass
class Dataset:
    """Both splits of one dataset as whole tensors; `name` says which dataset actually ran."""

    name: str
    train_images: torch.Tensor  # (N, 3, 32, 32) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor  # (M, 3, 32, 32) uint8
    test_labels: torch.Tensor  # (M,) int64
    classes: list[str]
    train_coarse: torch.Tensor | None = None  # (N,) int64, CIFAR-100 superclasses
    test_coarse: torch.Tensor | None = None  # (M,) int64
    coarse_classes: list[str] | None = None
    archive_md5: str | None = None  # md5 of the archive the images were read from (None: not an archive)
    official: bool | None = None  # whether archive_md5 is the official archive's (None: not an archive)
    validation: int = 0  # > 0: the "test" split is the last `validation` training images (validation_split)
    # An image folder: sha256 of its listing (each file's path, size and mtime), how it was split
    # into train and test, and each image's path relative to the folder.
    content_sha256: str | None = None
    split: str | None = None
    train_files: list[str] | None = None  # (N,)
    test_files: list[str] | None = None  # (M,)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            check_images(images, "uint8", ("N", 3, 32, 32), name=f"{split}_images")
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{split}_labels must be int64 of shape ({len(images)},), "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )
            files = getattr(self, f"{split}_files")
            if files is not None and len(files) != len(images):
                raise ValueError(f"{split}_files names {len(files)} files for {len(images)} images")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def provenance(self) -> dict:
        """The dataset's one description, JSON-plain: what a results file, config or checkpoint records
        about the data (the keys are read back from old runs: add, never rename). `describe` words it."""
        prov = {"dataset": self.name, "n_train": len(self.train_labels), "n_test": len(self.test_labels),
                "evaluated_on": "validation" if self.validation else "test",
                "archive_md5": self.archive_md5, "official_archive": self.official}
        if self.content_sha256 is not None:
            prov.update(content_sha256=self.content_sha256, split=self.split)
        return prov

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every tensor on `device` (the images stay uint8: 4x less memory)."""
        moved = {
            field: getattr(self, field).to(device)
            for field in ("train_images", "train_labels", "test_images", "test_labels",
                          "train_coarse", "test_coarse")
            if getattr(self, field) is not None
        }
        return replace(self, **moved)

    def validation_split(self, n: int) -> Dataset:
        """The last `n` training images as the evaluation split, the rest as training; the test split
        is set aside. Settings are chosen on this split, never on the test split. Idempotent for one n.
        """
        if n == self.validation:
            return self
        if self.validation:
            raise ValueError(f"this dataset is already a validation split of {self.validation} images")
        size = len(self.train_labels)
        if not is_int(n) or not 0 < n < size:
            raise ValueError(f"a validation split needs 0 < n < {size} training images, got {n!r}")
        coarse = self.train_coarse
        return replace(
            self, train_images=self.train_images[:-n], train_labels=self.train_labels[:-n],
            test_images=self.train_images[-n:], test_labels=self.train_labels[-n:],
            train_coarse=None if coarse is None else coarse[:-n],
            test_coarse=None if coarse is None else coarse[-n:], validation=n,
        )

    def cut(self, n_train: int | None, n_test: int | None, validation: int = 0) -> Dataset:
        """`validation_split(validation)` when > 0, then `subset`; with a validation split, `n_test`
        counts validation images and is capped at their number. An image folder's sizes are caps: a
        small folder is used whole. So a cut dataset cut again to the same sizes stays as it is."""
        data = self.validation_split(validation) if validation else self
        if validation and n_test is not None:
            n_test = min(n_test, validation)
        if data.content_sha256 is not None:  # an image folder (`vwe.data.folder`)
            n_train = None if n_train is None else min(n_train, len(data.train_labels))
            n_test = None if n_test is None else min(n_test, len(data.test_labels))
        return data.subset(n_train, n_test)

    def subset(self, n_train: int | None, n_test: int | None) -> Dataset:
        """The first `n_train` training and `n_test` test images (None keeps a split whole)."""
        n_train = _subset_size(n_train, len(self.train_labels), "n_train", self.name)
        n_test = _subset_size(n_test, len(self.test_labels), "n_test", self.name)

        def head(x, n):  # a tensor, a list of file names, or None
            return None if x is None else x[:n]

        return replace(
            self,
            **{f"train_{k}": head(getattr(self, f"train_{k}"), n_train)
               for k in ("images", "labels", "coarse", "files")},
            **{f"test_{k}": head(getattr(self, f"test_{k}"), n_test)
               for k in ("images", "labels", "coarse", "files")},
        )


def _subset_size(n: int | None, size: int, what: str, name: str) -> int:
    if n is None:
        return size
    if not is_int(n):
        raise TypeError(f"{what} must be an int or None, got {type(n).__name__}")
    if not 1 <= n <= size:
        raise ValueError(f"{what}={n} is out of range 1..{size}: {name} has {size} images there")
    return n


def describe(prov: dict) -> str:
    """A `Dataset.provenance()` record (a dataset's, or one a run, checkpoint or table header holds) in
    one line: the dataset, its split sizes, and the archive's md5 (flagged when not the official one),
    the folder's content fingerprint and split, or "generated"."""
    held_out = "validation (held-out training)" if prov.get("evaluated_on") == "validation" else "test"
    if prov.get("content_sha256"):
        origin = f"folder content sha256 {prov['content_sha256'][:16]}, {prov['split']}"
    elif prov.get("archive_md5"):
        note = "" if prov.get("official_archive") else " (not the official archive)"
        origin = f"archive md5 {prov['archive_md5']}{note}"
    else:
        origin = "generated"
    return f"{prov['dataset']}: {prov['n_train']} train / {prov['n_test']} {held_out} images, {origin}"


def project_dir() -> Path:
    """The repository checkout (pyproject.toml beside vwe/), else the current directory.

    `data/` and `runs/` default to it rather than to the cwd because JupyterLab starts a notebook's
    kernel in notebooks/ and the CLI runs wherever it is started: all should find the same folders.
    """
    root = Path(__file__).resolve().parents[2]  # vwe/data/dataset.py -> the checkout
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def data_dir(root: str | Path | None = None) -> Path:
    """The data folder: `root` if given, else $VWE_DATA_DIR, else the project's `data/`."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("VWE_DATA_DIR") or project_dir() / "data")


def load_cache(path: Path) -> dict | None:
    """A cache written by `save_cache`, or None when there is none or it cannot be read.

    Loaded with weights_only=True: plain tensors, lists and strings only, nothing that runs code.
    """
    if not path.is_file():
        return None
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
    # An unreadable cache (an interrupted copy, another format) is only a cache: read the source.
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, AttributeError):
        return None
    return cache if isinstance(cache, dict) else None


def save_cache(payload: dict, path: Path, what: str) -> None:
    """Write `payload` to `path` atomically; on failure only warn (a cache is optional)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    # A read-only dir or a full disk (OSError, or RuntimeError from torch's zip writer): the data
    # in hand is good, losing the cache only costs a re-read next time.
    except (OSError, RuntimeError) as err:
        warnings.warn(f"cannot write the {what} cache {path} ({err}); the data will be read again "
                      "next time", stacklevel=3)


def full_batches(n: int, batch_size: int) -> int:
    """The full batches of `batch_size` in `n` images (an epoch's steps); ValueError when there is none."""
    if batch_size > n:
        raise ValueError(f"the batch of {batch_size} is more than the {n} training images: no full batch "
                         f"to train on; use a batch of at most {n} or more images")
    return n // batch_size


def batches(n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
            drop_last: bool = False, device: torch.device | str | None = None
            ) -> Iterator[torch.Tensor]:
    """Index tensors (<= batch_size,) int64 covering range(n) once, on `device`.

    One permutation per call (one epoch), moved to the device once; slicing it there costs no
    host-device copy per batch. With `drop_last` the short final batch is skipped (training).
    """
    for what, value in (("n", n), ("batch_size", batch_size)):
        if not is_int(value) or value < 1:
            raise ValueError(f"batches needs {what} >= 1 (an int), got {value!r}")
    if drop_last:
        full_batches(n, batch_size)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(device) if device is not None else order
    stop = n - n % batch_size if drop_last else n
    # A generator expression, not a generator function: bad arguments raise at the call.
    return (order[start:start + batch_size] for start in range(0, stop, batch_size))


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., 3, H, W) -> float32 in [0, 1], same shape and device."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images (0..255), got {images_uint8.dtype}: pass the "
                        "dataset's uint8 tensors (float images are already converted)")
    return images_uint8.to(torch.float32) / 255
