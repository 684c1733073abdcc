"""Your own images as a `Dataset`: a folder in torchvision's ImageFolder layout, decoded once and cached.

Two layouts, one sub-folder per class:

    PATH/train/<class>/<image> and PATH/test/<class>/<image>   the split is yours
    PATH/<class>/<image>                                      split here: TEST_FRACTION of each class
                                                              goes to test, by a seeded permutation

Every file under a class folder (sub-folders included) is decoded with torchvision.io (JPEG, PNG,
GIF, WebP), converted to RGB, resized so that its shorter side is 32 pixels and centre-cropped to
32x32. Names starting with a dot (.DS_Store, .ipynb_checkpoints) are not looked at, nor are files
beside the class folders, as in torchvision's ImageFolder. A file that does not decode is an error
that lists every such file, unless `skip_bad` (or $VWE_SKIP_BAD_IMAGES=1) leaves them out, with a
warning that counts them; a class without images, a folder without classes or with one class is an
error too.

The decoded images are cached in `<data dir>/folders/<fingerprint>.pt`. The fingerprint is the
sha256 of the sorted list of every file's path, size and modification time (`content_sha256`), so
adding, removing, replacing or touching a file decodes the folder again; every result records it.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vwe.data.dataset import Dataset, data_dir, load_cache, save_cache

FOLDER_PREFIX = "folder:"  # "folder:PATH" names an image folder of your own, as a dataset name
SIZE = 32  # pixels: images are resized (shorter side) and centre-cropped to SIZE x SIZE
TEST_FRACTION = 0.2  # of each class, when the folder has no train/ and test/ of its own
SKIP_BAD_ENV = "VWE_SKIP_BAD_IMAGES"
CACHE_VERSION = 1  # bump when decoding changes: old caches are then decoded again
_SHOWN = 20  # bad files listed in an error message


# ----------------------------------------------------------------------------- files


def _visible(name: str) -> bool:
    return not name.startswith(".")


def class_folders(folder: Path) -> list[str]:
    """The class names: the visible sub-folders of `folder`, sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and _visible(p.name))


def list_files(folder: Path) -> list[str]:
    """Every visible file under `folder`, recursively, as sorted paths relative to it ("a/b.png")."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if _visible(d)]  # pruned in place: os.walk skips them
        rel = Path(parent).relative_to(folder)
        found += [(rel / f).as_posix() for f in files if _visible(f)]
    return sorted(found)


def fingerprint(folder: Path, files: list[str]) -> str:
    """sha256 of each file's relative path, size and modification time (ns), in sorted order."""
    h = hashlib.sha256()
    for rel in sorted(files):
        st = (folder / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- decoding


def decode(path: str | Path) -> torch.Tensor:
    """One image file -> (3, 32, 32) uint8: RGB, shorter side resized to 32, centre-cropped.

    Raises RuntimeError (from torchvision) when the file is not an image it can decode.
    """
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2 import functional as TF

    img = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)  # (3, H, W), or (T, 3, H, W) for a GIF
    if img.ndim == 4:
        img = img[0]  # an animated GIF: its first frame
    if img.dtype != torch.uint8:
        img = TF.to_dtype(img, torch.uint8, scale=True)  # a 16-bit PNG
    img = TF.resize(img, [SIZE], antialias=True)  # (3, H, W) -> shorter side 32
    return TF.center_crop(img, [SIZE, SIZE])  # -> (3, 32, 32)


def _reason(err: Exception) -> str:
    # torchvision's messages start with the C++ source location: keep what follows it.
    return re.sub(r"^.*?\.cpp:\d+, ", "", str(err)).splitlines()[0]


def decode_files(folder: Path, files: list[str], progress: bool = True, desc: str = "decoding"
                 ) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
    """Decode `files` (relative to `folder`): images (N, 3, 32, 32) uint8 of the N that decoded,
    their names, and (name, reason) for each that did not."""
    images, good, bad = [], [], []
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image decoders in favour of TorchCodec, once per call: one
        # line per image. They still decode exactly; this module is where to switch when they go.
        warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision",
                                DeprecationWarning)
        for rel in tqdm(files, desc=desc, unit="img", disable=not progress):
            try:
                images.append(decode(folder / rel))
                good.append(rel)
            except (RuntimeError, ValueError, OSError) as err:
                bad.append((rel, _reason(err)))
    stacked = torch.stack(images) if images else torch.empty(0, 3, SIZE, SIZE, dtype=torch.uint8)
    return stacked, good, bad


def bad_files_message(folder: Path, bad: list[tuple[str, str]]) -> str:
    shown = "\n".join(f"  {rel}: {reason}" for rel, reason in bad[:_SHOWN])
    more = f"\n  ... and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    return (f"{len(bad)} file(s) in {folder} are not images torchvision can decode "
            f"(JPEG, PNG, GIF, WebP):\n{shown}{more}\nRemove or convert them, or leave them out with "
            f"skip_bad=True (--skip-bad-images on the command line, or {SKIP_BAD_ENV}=1).")


def skips_bad(skip_bad: bool | None) -> bool:
    """Whether undecodable files are left out: `skip_bad` when given, else $VWE_SKIP_BAD_IMAGES (None
    is the default every loader takes, so that the environment reaches notebook kernels too)."""
    if skip_bad is not None:
        return skip_bad
    return os.environ.get(SKIP_BAD_ENV, "").strip().lower() in ("1", "true", "yes")


def read_folder_images(folder: Path, files: list[str], root: str | Path | None = None,
                       progress: bool = True) -> tuple[torch.Tensor, list[str], list[tuple[str, str]], str]:
    """`decode_files` through the cache: (images, names, bad files, content sha256).

    The cache lives in `<data dir>/folders/` (`root` as for `vwe.data.dataset.data_dir`) and is used only
    when its fingerprint and CACHE_VERSION match.
    """
    sha = fingerprint(folder, files)
    path = data_dir(root) / "folders" / f"{sha[:32]}.pt"
    cache = load_cache(path)
    if cache is not None and cache.get("key") == [sha, CACHE_VERSION]:
        return cache["images"], cache["files"], [tuple(b) for b in cache["bad"]], sha
    images, good, bad = decode_files(folder, files, progress, desc=f"decoding {folder.name}")
    save_cache({"key": [sha, CACHE_VERSION], "images": images, "files": good,
                "bad": [list(b) for b in bad]}, path, "image-folder")
    return images, good, bad, sha


# ----------------------------------------------------------------------------- the dataset


def _layout(folder: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The class names, and for each split given by the folder ("train", "test") or for the one tree
    (""), the class folders' relative paths; a clear error for a folder without classes."""
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        classes = {s: class_folders(folder / s) for s in ("train", "test")}
        if classes["train"] != classes["test"]:
            raise ValueError(f"{folder}/train and {folder}/test must hold the same class folders, got "
                             f"{classes['train']} and {classes['test']}")
        names, splits = classes["train"], ("train", "test")
    else:
        names, splits = class_folders(folder), ("",)
    if len(names) < 2:
        found = f"one class ({names[0]!r})" if names else "no class folders"
        raise ValueError(
            f"{folder} has {found}: an image folder needs at least two classes, one sub-folder "
            f"each, as {folder}/<class>/<image> or {folder}/train/<class>/<image> + {folder}/test/...")
    return names, {s: [f"{s}/{c}" if s else c for c in names] for s in splits}


def _stratified_split(labels: torch.Tensor, num_classes: int, test_fraction: float,
                      gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of train and test: round(test_fraction * n) of each class's n images to test (at least
    one when n >= 2, never all of them), picked by a permutation drawn from `gen`."""
    train, test = [], []
    for c in range(num_classes):
        idx = (labels == c).nonzero().squeeze(1)
        n = len(idx)
        n_test = min(max(round(test_fraction * n), 1), n - 1) if n >= 2 else 0
        idx = idx[torch.randperm(n, generator=gen)]
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train), torch.cat(test)


def load_folder(path: str | Path, root: str | Path | None = None, seed: int = 0,
                test_fraction: float = TEST_FRACTION, skip_bad: bool | None = None,
                progress: bool = True) -> Dataset:
    """The image folder at `path` as a Dataset named "folder:<absolute path>" (layouts: module doc).

    Both splits come shuffled by `seed` (so that `subset` keeps a mix of classes); a folder without
    train/ and test/ is split per class by `seed` too. `skip_bad` None reads $VWE_SKIP_BAD_IMAGES.
    `root` is the data dir that holds the cache.
    """
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"no image folder at {folder}; give {FOLDER_PREFIX}PATH of a folder with "
                                "one sub-folder of images per class")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    names, class_dirs = _layout(folder)
    files, owner = [], []  # owner: (split, class index) of each file
    for split, dirs in class_dirs.items():
        for c, rel_dir in enumerate(dirs):
            inside = [f"{rel_dir}/{f}" for f in list_files(folder / rel_dir)]
            if not inside:
                raise ValueError(f"class folder {folder / rel_dir} holds no files: every class needs "
                                 "images (remove the folder if the class is not meant to be there)")
            files += inside
            owner += [(split, c)] * len(inside)
    images, good, bad, sha = read_folder_images(folder, files, root, progress)
    skip = skips_bad(skip_bad)
    if bad and not skip:
        raise ValueError(bad_files_message(folder, bad))
    kept = set(good)
    owner = [o for f, o in zip(files, owner, strict=True) if f in kept]  # files and good share the order
    labels = torch.tensor([c for _, c in owner], dtype=torch.int64)
    present = set(owner)
    empty = [class_dirs[s][c] for s in class_dirs for c in range(len(names)) if (s, c) not in present]
    if empty:
        raise ValueError(f"class folder(s) {empty} in {folder} hold no image that decodes")

    gen = torch.Generator().manual_seed(seed)
    if "" in class_dirs:
        train, test = _stratified_split(labels, len(names), test_fraction, gen)
        split = f"stratified split, {test_fraction:.0%} of each class to test, seed {seed}"
    else:
        train = torch.tensor([i for i, (s, _) in enumerate(owner) if s == "train"], dtype=torch.int64)
        test = torch.tensor([i for i, (s, _) in enumerate(owner) if s == "test"], dtype=torch.int64)
        split = f"train/ and test/ as given, shuffled with seed {seed}"
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"{folder} has too few images to split into train and test ({len(owner)} in "
                         f"{len(names)} classes); give each class at least two images")
    train = train[torch.randperm(len(train), generator=gen)]
    test = test[torch.randperm(len(test), generator=gen)]
    if bad:
        split += f", {len(bad)} undecodable file(s) skipped"
        warnings.warn(f"skipped {len(bad)} file(s) in {folder} that do not decode as images "
                      f"(first: {bad[0][0]}: {bad[0][1]})", stacklevel=2)
    return Dataset(
        name=f"{FOLDER_PREFIX}{folder}",
        train_images=images[train], train_labels=labels[train],
        test_images=images[test], test_labels=labels[test],
        classes=names, content_sha256=sha, split=split,
        train_files=[good[i] for i in train.tolist()], test_files=[good[i] for i in test.tolist()],
    )
