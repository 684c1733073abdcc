"""Tiny CIFAR-100 and CIFAR-10 archives in the official formats, for offline tests of `vwe.data`.

The official `cifar-100-python.tar.gz` holds Python 2 pickles (protocol 2): dict keys and strings
are Python 2 byte strings, arrays are rebuilt by `numpy.core.multiarray._reconstruct`, and the
pixel buffer is one byte string. `py2_pickle` writes exactly that from Python 3, so the tests read
what a real archive holds. Build broken variants with `rewrite` (or `py2_pickle` + `write_archive`).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import torch

from vwe.data import cifar
from vwe.data.cifar import CIFAR100_ARCHIVE, CIFAR100_MD5_ENV, CIFAR100_URL

ARCHIVE = "cifar-100-python.tar.gz"
TRAIN, TEST, META = "cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"


class _Py2Pickler(pickle._Pickler):
    """Pickles str and bytes as Python 2 `str` (BINSTRING), as the official archive does.

    Python 3's protocol 2 would spell bytes as a call to `_codecs.encode`, a global that the
    official pickles never contain (and that a restricted unpickler rightly refuses).
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def py2_pickle(obj: object, numpy_module: str = "numpy.core.multiarray") -> bytes:
    """`obj` as a Python 2 protocol-2 pickle; arrays rebuilt via `<numpy_module>._reconstruct`."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 2 names its own module `numpy._core.multiarray`; the 2009 archive says `numpy.core`.
    return buf.getvalue().replace(
        b"cnumpy._core.multiarray\n", f"c{numpy_module}\n".encode("ascii")
    )


def write_archive(path: str | Path, members: dict[str, bytes], top: str = "cifar-100-python") -> str:
    """Write `members` (name -> bytes) under the folder `top` into a tar.gz at `path`, return its md5."""
    path = Path(path)
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(top)
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_fake_cifar100(root: str | Path, n_train: int = 20, n_test: int = 10, seed: int = 0,
                        numpy_module: str = "numpy.core.multiarray") -> dict:
    """Write `<root>/cifar-100-python.tar.gz` with random images; return what was written.

    Keys: path, md5, members ({member name: the pickled dict}), and for split in (train, test):
    `<split>_data` (n, 3072) uint8 rows as in the official format, `<split>_fine` and
    `<split>_coarse` label lists; `fine_label_names` (100) and `coarse_label_names` (20).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out: dict = {}
    members = {}
    for split, member, n in (("train", TRAIN, n_train), ("test", TEST, n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(x) for x in rng.integers(0, 100, size=n)]
        coarse = [f // 5 for f in fine]
        members[member] = {
            "filenames": [f"image_{split}_{i}.png" for i in range(n)],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": fine,
            "coarse_labels": coarse,
            "data": data,
        }
        out.update({f"{split}_data": data, f"{split}_fine": fine, f"{split}_coarse": coarse})
    out["fine_label_names"] = [f"fine_{i:02d}" for i in range(100)]
    out["coarse_label_names"] = [f"coarse_{i:02d}" for i in range(20)]
    members[META] = {
        "fine_label_names": out["fine_label_names"],
        "coarse_label_names": out["coarse_label_names"],
    }
    path = root / ARCHIVE
    blobs = {name: py2_pickle(obj, numpy_module) for name, obj in members.items()}
    blobs["cifar-100-python/file.txt~"] = b""  # the official archive carries this stray file too
    out.update(path=path, md5=write_archive(path, blobs), members=members)
    return out


def rewrite(fx: dict, root: str | Path, replace: dict[str, object] | None = None,
            drop: str | None = None) -> str:
    """Re-write `fx`'s archive (CIFAR-100 or CIFAR-10) with some members replaced (objects) or dropped;
    return its md5."""
    objs = {**fx["members"], **(replace or {})}
    blobs = {name: py2_pickle(obj) for name, obj in objs.items() if name != drop}
    return write_archive(Path(root) / fx["path"].name, blobs, top=fx.get("top", "cifar-100-python"))


# --- CIFAR-10: cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta; labels under `labels`

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
C10 = "cifar-10-batches-py"
C10_TRAIN = tuple(f"{C10}/data_batch_{i}" for i in range(1, 6))
C10_TEST, C10_META = f"{C10}/test_batch", f"{C10}/batches.meta"


def write_fake_cifar10(root: str | Path, per_batch: int = 4, n_test: int = 6, seed: int = 0) -> dict:
    """Write `<root>/cifar-10-python.tar.gz` with random images; return what was written.

    Keys: path, md5, members ({member name: the pickled dict}), `train_data` (5 * per_batch, 3072)
    uint8 (the five batches in order) and `train_labels`, `test_data` and `test_labels`,
    `label_names` (10).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    members, rows, labels = {}, {"train": [], "test": []}, {"train": [], "test": []}
    for i, member in enumerate((*C10_TRAIN, C10_TEST)):
        split, n = ("test", n_test) if member == C10_TEST else ("train", per_batch)
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        y = [int(x) for x in rng.integers(0, 10, size=n)]
        members[member] = {"batch_label": f"batch {i + 1}", "labels": y, "data": data,
                           "filenames": [f"img_{i}_{j}.png" for j in range(n)]}
        rows[split].append(data)
        labels[split] += y
    names = [f"class_{i}" for i in range(10)]
    members[C10_META] = {"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072}
    path = root / CIFAR10_ARCHIVE
    blobs = {name: py2_pickle(obj) for name, obj in members.items()}
    blobs[f"{C10}/readme.html"] = b"<html></html>"  # the official archive carries one too
    return {"path": path, "md5": write_archive(path, blobs, top=C10), "members": members, "top": C10,
            "train_data": np.concatenate(rows["train"]), "train_labels": labels["train"],
            "test_data": rows["test"][0], "test_labels": labels["test"], "label_names": names}


def reference_images(rows: np.ndarray) -> torch.Tensor:
    """(N, 3072) official rows -> (N, 3, 32, 32), built plane by plane (not by one reshape)."""
    planes = [rows[:, c * 1024:(c + 1) * 1024].reshape(-1, 32, 32) for c in range(3)]
    return torch.from_numpy(np.stack(planes, axis=1))


def official_md5_expected(monkeypatch) -> None:
    """As without $VWE_CIFAR100_MD5: a user's own verified copy named there changes the expected md5."""
    monkeypatch.delenv(CIFAR100_MD5_ENV, raising=False)


def assert_says_where_to_put_it(message: str, folder) -> None:
    """The message of a missing CIFAR-100 archive names where to put it, where to get it and its md5."""
    assert str((folder / CIFAR100_ARCHIVE).resolve()) in message
    assert CIFAR100_URL in message
    assert cifar.CIFAR100_MD5 in message
