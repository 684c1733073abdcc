"""CIFAR-10 and CIFAR-100 read from their official archives as a `Dataset`: md5-checked, unpickled by a
restricted unpickler, cached as uint8 tensors, downloaded when asked.

Both archives (`cifar-100-python.tar.gz`, `cifar-10-python.tar.gz`) hold Python 2 pickles of dicts; one
reader (`load_cifar`) handles both, told apart by a `CifarFormat`. The tensors are cached as
`cifar100_uint8.pt` / `cifar10_uint8.pt` next to the archive, keyed by the archive's md5.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from vwe.data.dataset import Dataset, data_dir, load_cache, save_cache
from vwe.files import file_digest

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


def expected_md5(fmt: CifarFormat, named: str | None = None) -> str:
    """The md5 the archive must have: `named` (a copy the user verified and names, on the command
    line `fmt.md5_flag`), else $<fmt.md5_env> when set, else the official archive's."""
    given = named or os.environ.get(fmt.md5_env, "")
    md5 = given.strip().lower()
    if not md5:
        return fmt.official_md5()
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        source = fmt.md5_flag if named else fmt.md5_env
        raise ValueError(f"{source}={given!r} is not an md5 (32 hex digits); "
                         f"give the md5 of your verified copy, or none to require the official "
                         f"archive ({fmt.official_md5()})")
    return md5


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



def _from_cache(path: Path, md5: str, fmt: CifarFormat) -> Dataset | None:
    """The cached tensors if they were read from an archive with this md5, else None."""
    cache = load_cache(path)
    if cache is None or cache.get("md5") != md5:
        return None
    try:
        return Dataset(name=fmt.name, **{k: cache[k] for k in _CACHED})
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

    `md5` names the md5 of a verified copy of the archive (`expected_md5(fmt, md5)`: by default
    $<fmt.md5_env>'s, else the official one). The result's `archive_md5` records it, `official`
    whether it is the official archive's.
    """
    md5 = expected_md5(fmt, md5)
    folder = data_dir(root)
    archive, cache = folder / fmt.archive, folder / fmt.cache
    ds = _from_cache(cache, md5, fmt)
    if ds is None:
        if not archive.is_file():
            if not download:
                reason = "Not downloading (download=False)."
                raise FileNotFoundError(_missing_message(archive, md5, reason, fmt))
            folder.mkdir(parents=True, exist_ok=True)
            _download(archive, md5, fmt)
        found = file_digest(archive, "md5")
        if found != md5:
            official = f"the official {fmt.title} archive's"
            expected = official if md5 == fmt.official_md5() else f"${fmt.md5_env}'s"
            raise ValueError(
                f"{archive.resolve()} has md5 {found}, not {expected} {md5}: it is corrupt or a "
                f"different file. Delete it and fetch it again from {fmt.url}. If it is a copy you have "
                f"verified yourself (the same images in other bytes), name its md5 to accept it: "
                f"{fmt.md5_env}={found} (or {fmt.md5_flag} on the command line)."
            )
        ds = _read_archive(archive, fmt)
        save_cache({"md5": md5, **{k: getattr(ds, k) for k in _CACHED}}, cache, fmt.title)
    # The md5 was checked (or keyed the cache): every result records it, and whether it is the official one.
    return replace(ds, archive_md5=md5, official=md5 == fmt.official_md5())


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

