"""Datasets as whole uint8 tensors, and index batches to slice them on the training device.

Every dataset is returned as a `Dataset` of (N, 3, 32, 32) uint8 images and int64 labels:

- CIFAR-100 (the paper's data) and CIFAR-10, read from their official archives
  (`cifar-100-python.tar.gz`, `cifar-10-python.tar.gz`) by one reader with a restricted unpickler,
  and cached as `cifar100_uint8.pt` / `cifar10_uint8.pt` next to the archive;
- your own images, `folder:PATH` in torchvision's ImageFolder layout, decoded once and cached
  (`vwe.data.folder`);
- Shapes, generated procedurally in seconds from a seed: the offline dataset of tests and CI.

The whole dataset is moved to the device once (`Dataset.to`); a training loop draws index
tensors from `batches`, slices the images with them and converts with `to_float`, so no per-image
Python or PIL work happens in the loop.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import pickle
import re
import socket
import tarfile
import urllib.parse
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vwe.files import atomic_write, file_digest

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_CACHE = "cifar100_uint8.pt"
# A verified copy of CIFAR-100 whose bytes differ from the official archive (rebuilt offline, say) is
# read only when the user names the md5 it must have here; nothing else relaxes the md5 check.
CIFAR100_MD5_ENV = "VWE_CIFAR100_MD5"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_CACHE = "cifar10_uint8.pt"
CIFAR10_MD5_ENV = "VWE_CIFAR10_MD5"  # as CIFAR100_MD5_ENV, for CIFAR-10
DATASETS = ("auto", "cifar10", "cifar100", "shapes")
FOLDER_PREFIX = "folder:"  # "folder:PATH" names an image folder of your own

SHAPE_CLASSES = (
    "disk", "ring", "square", "frame", "triangle", "cross", "star", "crescent", "bars", "dots",
)
SHAPES_TRAIN, SHAPES_TEST = 10_000, 2_000  # default split sizes (images)


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


@dataclass(frozen=True)
class CifarFormat:
    """What tells the two CIFAR archives apart; one reader (`load_cifar`) handles both."""

    name: str  # the Dataset's name: "cifar10" | "cifar100"
    title: str  # for messages: "CIFAR-10" | "CIFAR-100"
    url: str
    archive: str  # file name in the data dir
    cache: str  # file name of the uint8 cache beside it
    md5_env: str  # names the md5 of a verified copy
    md5_flag: str  # the command-line option that sets md5_env
    train_members: tuple[str, ...]  # pickles concatenated, in order, into the training split
    test_member: str
    meta_member: str
    # (labels key, names key in the meta pickle, number of classes): the labels first, then any
    # coarser labels (CIFAR-100's 20 superclasses).
    labels: tuple[tuple[str, str, int], ...]

    def official_md5(self) -> str:
        # The module constant, looked up at call time, so that tests can substitute it.
        return CIFAR100_MD5 if self.name == "cifar100" else CIFAR10_MD5


CIFAR100 = CifarFormat(
    "cifar100", "CIFAR-100", CIFAR100_URL, CIFAR100_ARCHIVE, CIFAR100_CACHE, CIFAR100_MD5_ENV,
    "--cifar100-md5", ("cifar-100-python/train",), "cifar-100-python/test", "cifar-100-python/meta",
    (("fine_labels", "fine_label_names", 100), ("coarse_labels", "coarse_label_names", 20)),
)
CIFAR10 = CifarFormat(
    "cifar10", "CIFAR-10", CIFAR10_URL, CIFAR10_ARCHIVE, CIFAR10_CACHE, CIFAR10_MD5_ENV, "--cifar10-md5",
    tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)), "cifar-10-batches-py/test_batch",
    "cifar-10-batches-py/batches.meta", (("labels", "label_names", 10),),
)
CIFAR_FORMATS = {f.name: f for f in (CIFAR10, CIFAR100)}


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
            if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1:] != (3, 32, 32):
                raise ValueError(
                    f"{split}_images must be uint8 of shape (N, 3, 32, 32), "
                    f"got {images.dtype} {tuple(images.shape)}"
                )
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

    @property
    def official(self) -> bool | None:
        """Whether the archive is the official CIFAR file (None when not read from an archive)."""
        fmt = CIFAR_FORMATS.get(self.name)
        if self.archive_md5 is None or fmt is None:
            return None
        return self.archive_md5 == fmt.official_md5()

    def source(self) -> str:
        """Where the images came from, for headers: the archive's md5, flagged when not the official
        one, or the image folder's content fingerprint and split."""
        if self.content_sha256 is not None:
            return f"folder content sha256 {self.content_sha256[:16]}, {self.split}"
        if self.archive_md5 is None:
            return f"{self.name} (generated)"
        note = "" if self.official else " (not the official archive)"
        return f"archive md5 {self.archive_md5}{note}"

    def provenance(self) -> dict:
        """What a results file, config or checkpoint records about the data (JSON-plain values)."""
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
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n < size:
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
        counts validation images and is capped at their number."""
        if validation:
            data = self.validation_split(validation)
            return data.subset(n_train, None if n_test is None else min(n_test, validation))
        return self.subset(n_train, n_test)

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

    def describe(self) -> str:
        coarse = "" if self.coarse_classes is None else f" ({len(self.coarse_classes)} coarse)"
        generated = self.archive_md5 is None and self.content_sha256 is None
        source = "" if generated else f", {self.source()}"
        held_out = "validation (held-out training)" if self.validation else "test"
        return (
            f"{self.name}: {len(self.train_labels)} train / {len(self.test_labels)} {held_out} images "
            f"3x32x32 uint8, {self.num_classes} classes{coarse}, on {self.train_images.device}{source}"
        )


def _subset_size(n: int | None, size: int, what: str, name: str) -> int:
    if n is None:
        return size
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{what} must be an int or None, got {type(n).__name__}")
    if not 1 <= n <= size:
        raise ValueError(f"{what}={n} is out of range 1..{size}: {name} has {size} images there")
    return n


def expected_md5(fmt: CifarFormat) -> str:
    """The md5 the archive must have: $<fmt.md5_env> when set (a copy the user verified and names),
    else the official archive's."""
    named = os.environ.get(fmt.md5_env, "").strip().lower()
    if not named:
        return fmt.official_md5()
    if not re.fullmatch(r"[0-9a-f]{32}", named):
        raise ValueError(f"{fmt.md5_env}={os.environ[fmt.md5_env]!r} is not an md5 (32 hex digits); "
                         f"set it to the md5 of your verified copy, or unset it to require the "
                         f"official archive ({fmt.official_md5()})")
    return named


def project_dir() -> Path:
    """The repository checkout (pyproject.toml beside vwe/), else the current directory.

    `data/` and `runs/` default to it rather than to the cwd because JupyterLab starts a notebook's
    kernel in notebooks/ and the CLI runs wherever it is started: all should find the same folders.
    """
    root = Path(__file__).resolve().parents[2]  # vwe/data/ -> the checkout
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def data_dir(root: str | Path | None = None) -> Path:
    """The data folder: `root` if given, else $VWE_DATA_DIR, else the project's `data/`."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("VWE_DATA_DIR") or project_dir() / "data")


# ---------------------------------------------------------------------------------------------
# CIFAR-10 and CIFAR-100: Python 2 pickles of dicts inside a tar.gz


def _allowed_globals() -> dict[tuple[str, str], object]:
    # The numpy function that rebuilds an array, taken from numpy itself rather than by import
    # path: the archive spells it `numpy.core.multiarray`, numpy 2 moved it to `numpy._core`.
    reconstruct = np.empty(0).__reduce__()[0]
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a callable that CIFAR pickles never contain."""


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only the three numpy names an array pickle needs; everything else is refused."""

    def __init__(self, data: bytes, member: str, fmt: CifarFormat) -> None:
        # latin1 decodes the Python 2 byte strings of the official pickles into str, and numpy
        # turns a latin1 str back into the array's raw bytes.
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.member, self.fmt = member, fmt
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.allowed:
            raise _RefusedGlobal(
                f"refusing to unpickle {module}.{name} from {self.member}: {self.fmt.title} pickles "
                "hold only dicts, lists, strings, numbers and numpy uint8 arrays. The archive is not "
                f"the official one; delete it and download it again from {self.fmt.url}"
            )
        return self.allowed[(module, name)]


def _unpickle(data: bytes, member: str, archive: Path, fmt: CifarFormat) -> dict[str, object]:
    try:
        obj = _CifarUnpickler(data, member, fmt).load()
    except _RefusedGlobal:
        raise
    # A damaged pickle can fail in many ways (EOFError, KeyError, ValueError, ...): all of them
    # mean the same thing to the user.
    except Exception as err:
        raise ValueError(f"{archive}: member {member} is not a readable pickle ({err!r})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{archive}: member {member} holds {type(obj).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(d: dict[str, object], key: str, member: str, archive: Path) -> object:
    if key not in d:
        raise ValueError(f"{archive}: member {member} has no {key!r} (keys: {sorted(d)})")
    return d[key]


def _labels(d: dict[str, object], key: str, n: int, num: int, member: str, archive: Path
            ) -> torch.Tensor:
    labels = np.asarray(_field(d, key, member, archive))
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise ValueError(
            f"{archive}: {member} {key!r} must be {n} integers, "
            f"got {labels.dtype} of shape {labels.shape}"
        )
    if n and (labels.min() < 0 or labels.max() >= num):
        raise ValueError(
            f"{archive}: {member} {key!r} must lie in 0..{num - 1}, "
            f"found {labels.min()}..{labels.max()}"
        )
    return torch.from_numpy(labels.astype(np.int64))


def _split(d: dict[str, object], member: str, archive: Path, fmt: CifarFormat
           ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One pickled batch -> images (N, 3, 32, 32) uint8 and one (N,) label tensor per `fmt.labels`."""
    data = _field(d, "data", member, archive)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{archive}: {member} 'data' must be uint8 of shape (N, 3072), got {got}")
    n = len(data)
    labels = [_labels(d, key, n, num, member, archive) for key, _, num in fmt.labels]
    # Each row is channel-major (1024 R, 1024 G, 1024 B), each plane row-major 32x32.
    images = torch.from_numpy(np.ascontiguousarray(data.reshape(n, 3, 32, 32)))  # (N, 3, 32, 32)
    return images, labels


def _names(d: dict[str, object], key: str, num: int, member: str, archive: Path) -> list[str]:
    names = _field(d, key, member, archive)
    if not isinstance(names, list) or len(names) != num:
        raise ValueError(f"{archive}: {member} {key!r} must be a list of {num} names")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _read_archive(archive: Path, fmt: CifarFormat) -> Dataset:
    """Read every pickle straight out of the tar.gz (nothing is extracted to disk)."""
    members = (*fmt.train_members, fmt.test_member, fmt.meta_member)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            blobs = {}
            for member in members:
                try:
                    f = tar.extractfile(member)
                except KeyError:
                    f = None
                if f is None:
                    raise ValueError(
                        f"{archive} has no file {member}: it is not the official "
                        f"{fmt.archive}; download it again from {fmt.url}"
                    )
                blobs[member] = f.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ValueError(
            f"{archive} is truncated or corrupt ({err!r}); delete it and download it again "
            f"from {fmt.url}"
        ) from err
    d = {m: _unpickle(blobs[m], m, archive, fmt) for m in members}
    train = [_split(d[m], m, archive, fmt) for m in fmt.train_members]
    test_images, test_labels = _split(d[fmt.test_member], fmt.test_member, archive, fmt)
    train_labels = [torch.cat(per_key) for per_key in zip(*(labels for _, labels in train), strict=True)]
    names = [_names(d[fmt.meta_member], key, num, fmt.meta_member, archive) for _, key, num in fmt.labels]
    coarse = len(fmt.labels) > 1
    return Dataset(
        name=fmt.name,
        train_images=torch.cat([images for images, _ in train]),
        train_labels=train_labels[0],
        test_images=test_images,
        test_labels=test_labels[0],
        classes=names[0],
        train_coarse=train_labels[1] if coarse else None,
        test_coarse=test_labels[1] if coarse else None,
        coarse_classes=names[1] if coarse else None,
    )


_CACHED = ("train_images", "train_labels", "test_images", "test_labels", "classes",
           "train_coarse", "test_coarse", "coarse_classes")


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


def _from_cache(path: Path, md5: str, fmt: CifarFormat) -> Dataset | None:
    """The cached tensors if they were read from an archive with this md5, else None."""
    cache = load_cache(path)
    if cache is None or cache.get("md5") != md5:
        return None
    try:
        return Dataset(name=fmt.name, **{k: cache[k] for k in _CACHED}, archive_md5=md5)
    except (KeyError, ValueError, TypeError):  # a cache of another layout: read the archive
        return None


def _missing_message(archive: Path, md5: str, reason: str, fmt: CifarFormat) -> str:
    return (
        f"{reason}\nThe {fmt.title} archive is missing: {archive.resolve()}\n"
        f"Fetch it on a machine with internet from {fmt.url}\n"
        f"(md5 {md5}) and put it at exactly that path, or point VWE_DATA_DIR at the folder "
        "that holds it. Or run with dataset='shapes' (built in, offline)."
    )


def download_url(url: str, root: str, filename: str, md5: str) -> None:
    """torchvision's downloader, imported on first use: importing torchvision costs every process
    that imports vwe about a second, and only a download needs it."""
    from torchvision.datasets.utils import download_url as torchvision_download

    torchvision_download(url, root, filename, md5)


def _download(archive: Path, md5: str, fmt: CifarFormat) -> None:
    # Downloaded to a side name and renamed, so a broken transfer never looks like an archive; the
    # pid keeps two processes downloading into one data dir from writing the same file.
    part = archive.with_name(f"{archive.name}.part{os.getpid()}")
    try:
        download_url(fmt.url, str(archive.parent), part.name, md5)
        os.replace(part, archive)
    # Whatever broke (URLError offline, IncompleteRead, the md5 check's RuntimeError), the
    # user's next step is the same: get the archive by hand.
    except Exception as err:
        raise FileNotFoundError(
            _missing_message(archive, md5, f"Downloading {fmt.url} failed: {err!r}.", fmt)
        ) from err
    finally:
        part.unlink(missing_ok=True)


def load_cifar(fmt: CifarFormat, root: str | Path | None = None, download: bool = False,
               md5: str | None = None) -> Dataset:
    """CIFAR-10 or CIFAR-100 (`fmt`) from `<data dir>/<fmt.archive>` (or its cache), on the CPU.

    `md5` is the archive's expected checksum, by default `expected_md5(fmt)`: the official one
    unless $<fmt.md5_env> names the md5 of a verified copy. The result's `archive_md5` records it.
    """
    md5 = md5 or expected_md5(fmt)
    folder = data_dir(root)
    archive, cache = folder / fmt.archive, folder / fmt.cache
    ds = _from_cache(cache, md5, fmt)
    if ds is not None:
        return ds
    if not archive.is_file():
        if not download:
            reason = "Not downloading (download=False)."
            raise FileNotFoundError(_missing_message(archive, md5, reason, fmt))
        folder.mkdir(parents=True, exist_ok=True)
        _download(archive, md5, fmt)
    found = file_digest(archive, "md5")
    if found != md5:
        expected = f"the official {fmt.title} archive's" if md5 == fmt.official_md5() else f"${fmt.md5_env}'s"
        raise ValueError(
            f"{archive.resolve()} has md5 {found}, not {expected} {md5}: it is corrupt or a different "
            f"file. Delete it and fetch it again from {fmt.url}. If it is a copy you have "
            f"verified yourself (the same images in other bytes), name its md5 to accept it: "
            f"{fmt.md5_env}={found} (or {fmt.md5_flag} on the command line)."
        )
    ds = replace(_read_archive(archive, fmt), archive_md5=md5)
    save_cache({"md5": md5, **{k: getattr(ds, k) for k in _CACHED}}, cache, fmt.title)
    return ds


def load_cifar100(root: str | Path | None = None, download: bool = False,
                  md5: str | None = None) -> Dataset:
    """CIFAR-100: train 50 000 and test 10 000 images (N, 3, 32, 32) uint8 with fine (0..99) and
    coarse (0..19) labels; see `load_cifar`."""
    return load_cifar(CIFAR100, root, download, md5)


def load_cifar10(root: str | Path | None = None, download: bool = False,
                 md5: str | None = None) -> Dataset:
    """CIFAR-10: train 50 000 (five batches, in order) and test 10 000 images (N, 3, 32, 32) uint8
    with labels 0..9; see `load_cifar`."""
    return load_cifar(CIFAR10, root, download, md5)


def cifar_available(fmt: CifarFormat, root: str | Path | None = None) -> bool:
    """Whether the archive or its cache sits in the data dir (no download)."""
    folder = data_dir(root)
    return (folder / fmt.archive).is_file() or (folder / fmt.cache).is_file()


def cifar100_available(root: str | Path | None = None) -> bool:
    """Whether the CIFAR-100 archive or its cache sits in the data dir (no download)."""
    return cifar_available(CIFAR100, root)


def _reachable(url: str, timeout: float = 3.0) -> bool:
    # A plain TCP connect fails in seconds offline, where a download could hang for minutes.
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Shapes: implicit shape functions on a rotated, scaled coordinate grid, rendered in batches.
# Each takes local coordinates u, v (B, S, S) in units of the shape's radius; True is inside.

def _disk(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u * u + v * v < 1.0


def _ring(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r2 = u * u + v * v
    return (r2 < 1.0) & (r2 > 0.55**2)


def _square(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.maximum(u.abs(), v.abs()) < 0.8


def _frame(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    m = torch.maximum(u.abs(), v.abs())
    return (m < 0.85) & (m > 0.52)


def _triangle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Equilateral, circumradius 1.15: inside all three edges, whose normals point at 30/150/270 deg.
    inside = torch.ones_like(u, dtype=torch.bool)
    for deg in (30.0, 150.0, 270.0):
        a = math.radians(deg)
        inside &= u * math.cos(a) + v * math.sin(a) < 0.575
    return inside


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    au, av = u.abs(), v.abs()
    return ((au < 0.27) & (av < 0.95)) | ((av < 0.27) & (au < 0.95))


def _star(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Fold the angle into one half-spike [0, pi/5]; inside means below the edge running from
    # the tip (1.05, 0) to the inner corner at radius 0.45, angle pi/5.
    half = math.pi / 5
    phi = torch.remainder(torch.atan2(v, u) + half, 2 * half) - half
    r = torch.sqrt(u * u + v * v)
    x, y = r * torch.cos(phi.abs()), r * torch.sin(phi.abs())
    tip_x, in_x, in_y = 1.05, 0.45 * math.cos(half), 0.45 * math.sin(half)
    # Cross product sign: the origin (inside) lies on the positive side of the tip->corner edge.
    return (in_x - tip_x) * y - in_y * (x - tip_x) > 0


def _crescent(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * u + v * v < 1.0) & ((u - 0.45) ** 2 + v * v > 0.8**2)


def _bars(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    au = u.abs()
    return (au > 0.18) & (au < 0.55) & (v.abs() < 0.9)


def _dots(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    inside = torch.zeros_like(u, dtype=torch.bool)
    for deg in (90.0, 210.0, 330.0):
        a = math.radians(deg)
        inside |= (u - 0.62 * math.cos(a)) ** 2 + (v - 0.62 * math.sin(a)) ** 2 < 0.32**2
    return inside


_SHAPE_FNS = (_disk, _ring, _square, _frame, _triangle, _cross, _star, _crescent, _bars, _dots)

_SUPER = 64  # render at 2x and average 2x2 blocks: anti-aliased 32x32 edges
_CHUNK = 1024  # images rendered at once: bounds memory (~17 MB per (B, 64, 64) float tensor)


def _far_colour(gen: torch.Generator, ref: torch.Tensor, min_dist: float = 0.45) -> torch.Tensor:
    """Random RGB colours (B, 3) at least about `min_dist` from `ref`, so the shape stays visible."""
    c = torch.rand(ref.shape, generator=gen)
    # Too close: shift every channel by 0.5 away from the reference instead (distance 0.87).
    shifted = torch.where(ref > 0.5, ref - 0.5, ref + 0.5)
    close = (c - ref).norm(dim=1, keepdim=True) < min_dist
    return torch.where(close, shifted, c)


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres in [-1, 1] as y (1, size, 1) and x (1, 1, size); y grows down like rows."""
    t = (torch.arange(size) + 0.5) / size * 2 - 1
    return t.view(1, size, 1), t.view(1, 1, size)


# Pose ranges of a Shapes image, in units of the half-width (16 px) and radians.
SHAPES_SCALE = (0.5, 0.8)
SHAPES_ROTATION = math.pi / 6
SHAPES_JITTER = 0.2


def _render(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Labels (B,) -> images (B, 3, 32, 32) uint8, every random choice drawn from `gen`."""
    B, S = len(labels), _SUPER

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=gen)

    def uniform(lo: float, hi: float) -> torch.Tensor:  # (B, 1, 1) for broadcasting on (B, S, S)
        return lo + (hi - lo) * rand(B, 1, 1)

    y, x = _grid(S)  # (1, S, 1), (1, 1, S)

    # Pose: radius 0.5-0.8 of the half-width (8-13 px), mild stretch, rotation within +-ROTATION
    # and the centre within +-JITTER of the middle. Wider ranges (any rotation, any position) made
    # the classes so pose-dependent that no linear probe on the position-ordered patch features, not
    # even of a supervised tower, got far above chance on a few thousand images.
    scale, stretch = uniform(*SHAPES_SCALE), uniform(0.85, 1.18)
    angle = uniform(-SHAPES_ROTATION, SHAPES_ROTATION)
    cx, cy = (2 * rand(B, 1, 1) - 1) * SHAPES_JITTER, (2 * rand(B, 1, 1) - 1) * SHAPES_JITTER
    dx, dy = x - cx, y - cy  # (B, S, S)
    u = (torch.cos(angle) * dx + torch.sin(angle) * dy) / (scale * stretch)
    v = (-torch.sin(angle) * dx + torch.cos(angle) * dy) * stretch / scale

    mask = torch.zeros(B, S, S, dtype=torch.bool)
    for c, fn in enumerate(_SHAPE_FNS):
        idx = (labels == c).nonzero().squeeze(1)
        mask[idx] = fn(u[idx], v[idx])

    # Fill: solid, striped or two-tone, in the shape's own coordinates so fills rotate too.
    alpha = uniform(0, 2 * math.pi)
    axis = u * torch.cos(alpha) + v * torch.sin(alpha)  # (B, S, S)
    stripes = torch.sin(2 * math.pi * uniform(1.2, 2.0) * axis + uniform(0, 2 * math.pi)) > 0
    fill = torch.randint(0, 3, (B, 1, 1), generator=gen)
    second = torch.where(fill == 0, False, torch.where(fill == 1, stripes, axis > 0))
    # Only edges and stripes need the 2x grid: keep each fill colour's coverage of every
    # 32x32 pixel and composite over a background drawn at 32x32 directly (3x less work).
    cover1 = F.avg_pool2d((mask & ~second).unsqueeze(1).float(), 2)  # (B, 1, 32, 32)
    cover2 = F.avg_pool2d((mask & second).unsqueeze(1).float(), 2)  # (B, 1, 32, 32)

    # Background: plain, gradient, smooth noise or grating around a base colour bg1.
    y, x = _grid(32)
    bg1, bg2 = rand(B, 3), rand(B, 3)
    bg2 = (bg1 + 0.7 * (bg2 - 0.5)).clamp(0, 1)  # second colour near the first
    beta = uniform(0, 2 * math.pi).unsqueeze(1)  # (B, 1, 1, 1)
    along = (x * torch.cos(beta) + y * torch.sin(beta)) / math.sqrt(2)  # (B, 1, 32, 32)
    gradient = 0.5 + 0.5 * along
    noise = F.interpolate(torch.randn(B, 1, 5, 5, generator=gen), size=(32, 32),
                          mode="bilinear", align_corners=False)
    grating = 0.5 + 0.5 * torch.sin(2 * math.pi * (2 + 3 * rand(B, 1, 1, 1)) * along)
    kind = torch.randint(0, 4, (B, 1, 1, 1), generator=gen)
    mix = torch.where(kind == 0, 0.0, torch.where(
        kind == 1, gradient, torch.where(kind == 2, (0.5 + 0.35 * noise).clamp(0, 1), grating)))
    a, b = bg1[:, :, None, None], bg2[:, :, None, None]
    background = a + (b - a) * mix  # (B, 3, 32, 32)

    fg1, fg2 = _far_colour(gen, bg1), _far_colour(gen, bg1)  # (B, 3) each
    image = (cover1 * fg1[:, :, None, None] + cover2 * fg2[:, :, None, None]
             + (1 - cover1 - cover2) * background)  # (B, 3, 32, 32)
    image = image + 0.02 * torch.randn(image.shape, generator=gen)  # sensor-like pixel noise
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def _shapes_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # Balanced: every class n // C or n // C + 1 times, in random order.
    labels = torch.arange(n) % len(SHAPE_CLASSES)
    labels = labels[torch.randperm(n, generator=gen)]
    images = torch.cat([_render(labels[i:i + _CHUNK], gen) for i in range(0, n, _CHUNK)])
    return images, labels


def make_shapes(n_train: int, n_test: int, seed: int = 0) -> Dataset:
    """The built-in Shapes dataset: (N, 3, 32, 32) uint8 images of 10 shape classes.

    Colour, position, scale, stretch, rotation, fill (solid, striped, two-tone) and background
    (plain, gradient, noise, grating) vary within every class; only the shape decides the label.
    Deterministic for a seed; train and test come from disjoint seed streams (2s and 2s + 1).
    """
    for what, n in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"make_shapes needs {what} >= 1 (an int), got {n!r}")
    train_images, train_labels = _shapes_split(n_train, 2 * seed)
    test_images, test_labels = _shapes_split(n_test, 2 * seed + 1)
    return Dataset("shapes", train_images, train_labels, test_images, test_labels,
                   list(SHAPE_CLASSES))


# ---------------------------------------------------------------------------------------------
# Entry points used by the notebooks and the training loops

def load_dataset(name: str = "auto", root: str | Path | None = None, n_train: int | None = None,
                 n_test: int | None = None, seed: int = 0, download: bool = True,
                 validation: int = 0) -> Dataset:
    """`_load_dataset`, then (with `validation` > 0) its `validation_split(validation)`, cut to
    `n_train`/`n_test`."""
    if not validation:
        return _load_dataset(name, root, n_train, n_test, seed, download)
    # The validation images are the last of the whole training split (fixed whatever n_train is);
    # Shapes draws its split at the size asked, so ask for them on top of n_train.
    n_full = n_train + validation if name == "shapes" and n_train else None
    full = _load_dataset(name, root, n_full, None, seed, download)
    return full.cut(n_train, n_test, validation)


def _load_dataset(name: str, root: str | Path | None, n_train: int | None, n_test: int | None,
                  seed: int, download: bool) -> Dataset:
    """Load `name` (one of DATASETS, or "folder:PATH"), on the CPU; read `.name` for what ran.

    "auto" is CIFAR-100 when its archive or cache is in the data dir, or (with `download`) when
    the server answers and the download succeeds; otherwise Shapes. "cifar10" and "cifar100" never
    fall back. "folder:PATH" reads your own images (`vwe.data.folder.load_folder`; a relative PATH is
    relative to the current directory). `n_train`/`n_test` keep the first n images of CIFAR or
    of a folder (all of a folder's when it has fewer), or set the Shapes sizes (default 10 000 /
    2 000); `seed` generates Shapes and splits and shuffles a folder.
    """
    check_dataset_name(name)
    if name.startswith(FOLDER_PREFIX):
        from vwe.data.folder import load_folder  # torchvision's decoders: imported only when needed

        ds = load_folder(name[len(FOLDER_PREFIX):], root=root, seed=seed)
        # A profile's sizes are a cap for your own images: a small folder is used whole.
        return ds.subset(*(None if n is None else min(n, len(labels))
                           for n, labels in ((n_train, ds.train_labels), (n_test, ds.test_labels))))
    shapes = (SHAPES_TRAIN if n_train is None else n_train,
              SHAPES_TEST if n_test is None else n_test, seed)
    if name == "shapes":
        return make_shapes(*shapes)
    if name == "cifar10":
        return load_cifar10(root, download=download).subset(n_train, n_test)
    if name == "auto" and not cifar100_available(root):
        if not (download and _reachable(CIFAR100_URL)):
            return make_shapes(*shapes)
        try:
            ds = load_cifar100(root, download=True)
        except FileNotFoundError:  # the server answered but the download did not complete
            return make_shapes(*shapes)
        return ds.subset(n_train, n_test)
    return load_cifar100(root, download=download).subset(n_train, n_test)


def batches(n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
            drop_last: bool = False, device: torch.device | str | None = None
            ) -> Iterator[torch.Tensor]:
    """Index tensors (<= batch_size,) int64 covering range(n) once, on `device`.

    One permutation per call (one epoch), moved to the device once; slicing it there costs no
    host-device copy per batch. With `drop_last` the short final batch is skipped (training).
    """
    for what, value in (("n", n), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"batches needs {what} >= 1 (an int), got {value!r}")
    if drop_last and batch_size > n:
        raise ValueError(
            f"batch_size={batch_size} > n={n} with drop_last=True yields no batch at all; "
            "use a batch_size <= n"
        )
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
