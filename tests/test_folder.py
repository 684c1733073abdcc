"""Image folders (`folder:PATH`): both layouts, the seeded stratified split, exact pixels, the
resize-and-crop, the content-keyed cache, and clear errors for broken trees."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from vwe.config import get_config, resolve
from vwe.data import absolute_dataset_name, load_dataset
from vwe.data import folder as vwe_folder
from vwe.data.dataset import describe
from vwe.data.folder import SKIP_BAD_ENV, load_folder

# torchvision 0.29 deprecates torchvision.io's encoders (write_png, here) in favour of TorchCodec.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


def png(path: Path, image: torch.Tensor) -> torch.Tensor:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(image, str(path))
    return image


def make_tree(root: Path, counts: dict[str, int], seed: int = 0, size: tuple[int, int] = (32, 32)
              ) -> dict[str, torch.Tensor]:
    """root/<class>/<i>.png of random pixels; returns {relative path: the (3, H, W) uint8 written}."""
    gen = torch.Generator().manual_seed(seed)
    written = {}
    for cls, n in counts.items():
        for i in range(n):
            rel = f"{cls}/{i:03d}.png"
            pixels = torch.randint(0, 256, (3, *size), generator=gen, dtype=torch.uint8)
            written[rel] = png(root / rel, pixels)
    return written


@pytest.fixture(autouse=True)
def no_skip_env(monkeypatch):
    monkeypatch.delenv(SKIP_BAD_ENV, raising=False)


def test_one_tree_is_split_per_class_by_the_seed_with_exact_pixels(tmp_path):
    written = make_tree(tmp_path / "imgs", {"cat": 10, "dog": 5, "emu": 2})
    ds = load_folder(tmp_path / "imgs", root=tmp_path / "data", progress=False)
    assert ds.name == f"folder:{(tmp_path / 'imgs').resolve()}" and ds.classes == ["cat", "dog", "emu"]
    # 20 % of each class to test, at least one, never all: 2, 1, 1.
    assert torch.bincount(ds.test_labels, minlength=3).tolist() == [2, 1, 1]
    assert torch.bincount(ds.train_labels, minlength=3).tolist() == [8, 4, 1]
    assert sorted(ds.train_files + ds.test_files) == sorted(written)
    for images, labels, files in ((ds.train_images, ds.train_labels, ds.train_files),
                                  (ds.test_images, ds.test_labels, ds.test_files)):
        for image, label, rel in zip(images, labels, files, strict=True):
            assert torch.equal(image, written[rel])  # 32x32 PNGs come back bit for bit
            assert ds.classes[label] == rel.split("/")[0]
    assert ds.split == "stratified split, 20% of each class to test, seed 0"
    again = load_folder(tmp_path / "imgs", root=tmp_path / "data", progress=False)
    other = load_folder(tmp_path / "imgs", root=tmp_path / "data", seed=1, progress=False)
    assert again.test_files == ds.test_files and torch.equal(again.train_images, ds.train_images)
    assert other.test_files != ds.test_files or other.train_files != ds.train_files


def test_train_and_test_folders_are_kept(tmp_path):
    train = make_tree(tmp_path / "imgs" / "train", {"a": 3, "b": 2}, seed=1)
    test = make_tree(tmp_path / "imgs" / "test", {"a": 1, "b": 2}, seed=2)
    ds = load_folder(tmp_path / "imgs", root=tmp_path, progress=False)
    assert sorted(ds.train_files) == sorted(f"train/{r}" for r in train)
    assert sorted(ds.test_files) == sorted(f"test/{r}" for r in test)
    i = ds.test_files.index("test/b/001.png")
    assert torch.equal(ds.test_images[i], test["b/001.png"]) and ds.test_labels[i] == 1
    assert ds.split == "train/ and test/ as given, shuffled with seed 0"


def test_resize_keeps_the_centre_of_the_shorter_side(tmp_path):
    # 64 x 128 (H x W): red | green | blue in column bands 0-31, 32-95, 96-127. The shorter side goes
    # to 32 (-> 32 x 64), and the centre crop keeps the middle 32 columns: the green band.
    image = torch.zeros(3, 64, 128, dtype=torch.uint8)
    image[0, :, :32], image[1, :, 32:96], image[2, :, 96:] = 255, 255, 255
    png(tmp_path / "imgs" / "x" / "wide.png", image)
    make_tree(tmp_path / "imgs", {"y": 2})
    gray = png(tmp_path / "imgs" / "x" / "gray.png", torch.full((1, 40, 40), 77, dtype=torch.uint8))
    ds = load_folder(tmp_path / "imgs", root=tmp_path, progress=False)
    files = ds.train_files + ds.test_files
    images = torch.cat([ds.train_images, ds.test_images])
    wide = images[files.index("x/wide.png")]
    assert wide.shape == (3, 32, 32)
    assert (wide[1, :, 2:30] == 255).all() and (wide[[0, 2], :, 2:30] == 0).all()
    assert (images[files.index("x/gray.png")] == gray[0, 0, 0]).all()  # grey -> RGB, flat stays flat


def test_cache_is_keyed_by_the_folder_content(tmp_path, monkeypatch):
    make_tree(tmp_path / "imgs", {"a": 3, "b": 3})
    first = load_folder(tmp_path / "imgs", root=tmp_path / "data", progress=False)
    assert len(list((tmp_path / "data" / "folders").glob("*.pt"))) == 1
    calls = []
    real = vwe_folder.decode
    monkeypatch.setattr(vwe_folder, "decode", lambda p: calls.append(p) or real(p))
    second = load_folder(tmp_path / "imgs", root=tmp_path / "data", progress=False)
    assert calls == [] and torch.equal(second.train_images, first.train_images)
    assert second.content_sha256 == first.content_sha256
    touched = tmp_path / "imgs" / "a" / "000.png"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    third = load_folder(tmp_path / "imgs", root=tmp_path / "data", progress=False)
    assert len(calls) == 6 and third.content_sha256 != first.content_sha256  # decoded again


def test_fingerprint_is_the_sha256_of_names_sizes_and_mtimes(tmp_path):
    make_tree(tmp_path / "imgs", {"a": 2, "b": 2})
    ds = load_folder(tmp_path / "imgs", root=tmp_path, progress=False)
    h = hashlib.sha256()
    for p in sorted((tmp_path / "imgs").rglob("*.png")):
        rel = p.relative_to(tmp_path / "imgs").as_posix()
        h.update(f"{rel}\0{p.stat().st_size}\0{p.stat().st_mtime_ns}\n".encode())
    assert ds.content_sha256 == h.hexdigest()
    assert ds.provenance()["content_sha256"] == h.hexdigest() and ds.provenance()["split"] == ds.split
    assert f"folder content sha256 {h.hexdigest()[:16]}" in describe(ds.provenance())


def test_bad_files_are_listed_or_skipped_with_a_count(tmp_path):
    make_tree(tmp_path / "imgs", {"a": 3, "b": 3})
    (tmp_path / "imgs" / "a" / "notes.txt").write_text("not an image")
    good = (tmp_path / "imgs" / "b" / "000.png").read_bytes()
    (tmp_path / "imgs" / "b" / "cut.png").write_bytes(good[:50])
    (tmp_path / "imgs" / "b" / ".DS_Store").write_bytes(b"\0")  # hidden: not looked at
    with pytest.raises(ValueError, match="2 file") as err:
        load_folder(tmp_path / "imgs", root=tmp_path, progress=False)
    assert "a/notes.txt" in str(err.value) and "b/cut.png" in str(err.value)
    assert "skip_bad=True" in str(err.value) and ".DS_Store" not in str(err.value)
    with pytest.warns(UserWarning, match="skipped 2 file"):
        ds = load_folder(tmp_path / "imgs", root=tmp_path, skip_bad=True, progress=False)
    assert len(ds.train_files) + len(ds.test_files) == 6
    assert ds.split.endswith("2 undecodable file(s) skipped")


@pytest.mark.parametrize("tree, message", [
    ({}, "no class folders"),
    ({"only": 3}, "one class"),
    ({"a": 3, "b": 0}, "holds no files"),
    ({"a": 1, "b": 1}, "too few images to split"),
])
def test_broken_trees_are_clear_errors(tmp_path, tree, message):
    (tmp_path / "imgs").mkdir()
    make_tree(tmp_path / "imgs", tree)
    for cls in tree:
        (tmp_path / "imgs" / cls).mkdir(exist_ok=True)
    with pytest.raises(ValueError, match=message):
        load_folder(tmp_path / "imgs", root=tmp_path, progress=False)


def test_missing_folder_and_mismatched_splits(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image folder"):
        load_folder(tmp_path / "nowhere", root=tmp_path)
    make_tree(tmp_path / "imgs" / "train", {"a": 2, "b": 2})
    make_tree(tmp_path / "imgs" / "test", {"a": 2, "c": 2})
    with pytest.raises(ValueError, match="same class folders"):
        load_folder(tmp_path / "imgs", root=tmp_path, progress=False)


def test_load_dataset_and_config_take_folder_paths(tmp_path):
    make_tree(tmp_path / "imgs", {"a": 6, "b": 6})
    cfg = get_config("smoke", dataset=f"folder:{tmp_path / 'imgs'}")
    ds = load_dataset(cfg.dataset, root=tmp_path, n_train=5, n_test=2)
    assert len(ds.train_files) == 5 and len(ds.test_labels) == 2
    assert set(ds.train_labels.tolist()) == {0, 1}  # shuffled: the first five are not one class
    whole = load_dataset(cfg.dataset, root=tmp_path, n_train=1000, n_test=1000)  # a cap, not a demand
    assert (len(whole.train_labels), len(whole.test_labels)) == (10, 2)
    with pytest.raises(ValueError, match="folder:PATH"):
        get_config("smoke", dataset="folder:")


def test_a_relative_folder_is_named_by_its_absolute_path(tmp_path, monkeypatch):
    make_tree(tmp_path / "imgs", {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path)
    assert absolute_dataset_name("folder:imgs") == f"folder:{tmp_path.resolve() / 'imgs'}"
    assert absolute_dataset_name("shapes") == "shapes"
    assert load_dataset("folder:imgs", root=tmp_path).name == absolute_dataset_name("folder:imgs")


def test_resolve_passes_skip_bad_to_the_loader_and_a_resolved_folder_stays_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("VWE_DATA_DIR", str(tmp_path / "data"))  # the folder's cache
    make_tree(tmp_path / "imgs", {"a": 3, "b": 3})
    (tmp_path / "imgs" / "a" / "notes.txt").write_text("not an image")
    cfg = get_config("smoke", dataset=f"folder:{tmp_path / 'imgs'}")  # 256 training images asked: a cap
    with pytest.raises(ValueError, match="1 file"):
        resolve(cfg)
    with pytest.warns(UserWarning, match="skipped 1 file"):
        cfg, data, _ = resolve(cfg, skip_bad=True)  # what --skip-bad-images passes, with no environment
    assert len(data.train_labels) + len(data.test_labels) == 6
    _, again, _ = resolve(cfg, data)  # the small folder stays whole: the CLI's table resolves it twice
    assert torch.equal(again.train_images, data.train_images)
    assert torch.equal(again.test_images, data.test_images)
