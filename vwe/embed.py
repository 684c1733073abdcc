"""Embeddings out: a trained checkpoint's image (and patch) embeddings of any images, to a file.

    python -m vwe embed --checkpoint runs/cpu/context-resnet32-aug --images folder:photos --out emb.npy

An image's embedding is the model's `image_embedding` (docs/design.md §11): its 16 patch embeddings
concatenated, 16 * 512 = 8192 numbers for the context autoencoder, 16 * 64 = 1024 for the simple
one. With `patches`, also the tower's 64-d output on each of the 16 patches, (N, 16, 64): the
"word vectors" of notebook 07 (`vwe.words.patch_embeddings`, one row per patch).

The images (`load_images`) are a dataset name (auto, cifar10, cifar100, shapes, folder:PATH: labels,
class names and, for a folder, file names come along), a folder of image files in any layout
(file names, no labels) or one image file; dataset names win over a folder of the same name
(write ./shapes for the folder).

The file's suffix picks its format; `load_embeddings` reads both back into the same dict:
- `.pt`: one dict (torch.save, plain tensors and lists): "embeddings" (N, E) float32,
  "patch_embeddings" (N, 16, 64) float32 when asked for, "labels" (N,) int64 and "classes" when
  the images have labels, "files" (N,) when they have file names, and "meta": the checkpoint, the
  model and where the images came from (`Dataset.provenance()` for a dataset);
- `.npy`: the embeddings (N, E) float32 in FILE, the patch embeddings in FILE's stem + `.patches.npy`,
  and everything else (labels, classes, files, meta) in FILE's stem + `.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vwe.data import DATASETS, FOLDER_PREFIX, absolute_dataset_name, describe, load_dataset
from vwe.data.folder import bad_files_message, decode_files, list_files, skips_bad
from vwe.files import write_json
from vwe.patches import N_PATCHES
from vwe.pretrain import load_pretrained
from vwe.words import batched_features, patch_embeddings

SPLITS = ("all", "train", "test")
FORMATS = (".npy", ".pt")


@dataclass
class Images:
    """Images to embed and what is known about them."""

    images: torch.Tensor  # (N, 3, 32, 32) uint8
    source: dict  # where they came from (JSON-plain): a dataset's provenance, or the files' folder
    labels: torch.Tensor | None = None  # (N,) int64
    classes: list[str] | None = None
    files: list[str] | None = None  # (N,) paths relative to the source folder


def load_images(source: str, split: str = "all", n_train: int | None = None, n_test: int | None = None,
                seed: int = 0, root: str | Path | None = None, skip_bad: bool | None = None,
                progress: bool = True, cifar100_md5: str | None = None, cifar10_md5: str | None = None
                ) -> Images:
    """The images named by `source` (module doc). For a dataset, `split` picks train, test or all
    (train first), `n_train`/`n_test`/`seed` and the archives' md5s as in `load_dataset`; `skip_bad`
    leaves out the files that do not decode (with their count in `source`) instead of refusing them
    (None: as $VWE_SKIP_BAD_IMAGES says, `vwe.data.folder.skips_bad`), for a dataset as for a folder."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if source in DATASETS or source.startswith(FOLDER_PREFIX):
        ds = load_dataset(source, root=root, n_train=n_train, n_test=n_test, seed=seed,
                          cifar100_md5=cifar100_md5, cifar10_md5=cifar10_md5, skip_bad=skip_bad)
        parts = ("train", "test") if split == "all" else (split,)
        files = [getattr(ds, f"{p}_files") for p in parts]
        return Images(
            images=torch.cat([getattr(ds, f"{p}_images") for p in parts]),
            labels=torch.cat([getattr(ds, f"{p}_labels") for p in parts]),
            classes=ds.classes,
            files=None if files[0] is None else [f for fs in files for f in fs],
            source={**ds.provenance(), "split": split, "description": describe(ds.provenance())},
        )
    path = Path(source).expanduser().resolve()
    if path.is_file():
        folder, names = path.parent, [path.name]
    elif path.is_dir():
        folder, names = path, list_files(path)
        if not names:
            raise ValueError(f"{path} holds no files to embed")
    else:
        raise FileNotFoundError(f"{source!r} is neither a dataset ({', '.join(DATASETS)}, "
                                f"{FOLDER_PREFIX}PATH) nor an image file or folder")
    images, good, bad = decode_files(folder, names, progress, desc=f"decoding {path.name}")
    if bad and not skips_bad(skip_bad):
        raise ValueError(bad_files_message(folder, bad))
    if not good:
        raise ValueError(f"no file under {path} decodes as an image")
    return Images(images=images, files=good,
                  source={"folder": str(folder), "n_images": len(good), "skipped_files": len(bad)})


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 256, patches: bool = False,
          progress: bool = True) -> dict[str, torch.Tensor]:
    """Embeddings of uint8 images (N, 3, 32, 32), on the model's device, returned on the CPU:
    "embeddings" (N, E) = `model.image_embedding`, and with `patches` "patch_embeddings" (N, 16, 64),
    the tower's output on each patch. The model runs in eval mode (BatchNorm's running statistics)."""
    model.eval()
    device = next(model.parameters()).device
    out = {"embeddings": batched_features(model.image_embedding, images, batch_size, device, "cpu",
                                          progress, "embedding")}  # (N, E)
    if patches:  # the tower runs again on the patches: for the shared encoding, twice the work
        rows = patch_embeddings(model, images, batch_size=batch_size, out_device="cpu", progress=progress)
        out["patch_embeddings"] = rows.view(len(images), N_PATCHES, -1)  # (N*16, 64) -> (N, 16, 64)
    return out


def _sidecars(path: Path) -> tuple[Path, Path]:
    """FILE.npy -> (FILE.patches.npy, FILE.json)."""
    return path.with_name(f"{path.stem}.patches.npy"), path.with_name(f"{path.stem}.json")


def save_embeddings(path: str | Path, result: dict) -> list[Path]:
    """Write `result` (keys as in the module doc) to `path` (.pt or .npy); returns the files written."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"{path}: the output's suffix picks its format; use one of {FORMATS}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pt":
        torch.save(result, path)
        return [path]
    np.save(path, result["embeddings"].numpy())
    written = [path]
    patches_path, json_path = _sidecars(path)
    if "patch_embeddings" in result:
        np.save(patches_path, result["patch_embeddings"].numpy())
        written.append(patches_path)
    else:
        patches_path.unlink(missing_ok=True)  # a stale one from an earlier run would be misread
    rest = {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in result.items()
            if k not in ("embeddings", "patch_embeddings")}
    write_json(json_path, rest)
    return written + [json_path]


def load_embeddings(path: str | Path) -> dict:
    """What `save_embeddings` wrote, as one dict of tensors and lists, whichever the format."""
    path = Path(path)
    if path.suffix == ".pt":
        return torch.load(path, map_location="cpu", weights_only=True)
    if path.suffix != ".npy":
        raise ValueError(f"{path}: not an embeddings file ({' or '.join(FORMATS)})")
    patches_path, json_path = _sidecars(path)
    result = {"embeddings": torch.from_numpy(np.load(path))}
    if patches_path.is_file():
        result["patch_embeddings"] = torch.from_numpy(np.load(patches_path))
    rest = json.loads(json_path.read_text()) if json_path.is_file() else {}
    if rest.get("labels") is not None:
        rest["labels"] = torch.tensor(rest["labels"], dtype=torch.int64)
    return {**result, **rest}


def embed_to_file(checkpoint: str | Path, images: str | Images, out: str | Path, patches: bool = False,
                  split: str = "all", batch_size: int = 256, device: torch.device | str = "cpu",
                  progress: bool = True, **sources) -> tuple[dict, list[Path]]:
    """Load `checkpoint` (a file, a run directory or shipped weights), embed `images` (a source for
    `load_images`, with its `sources`: `skip_bad` and the archives' md5s; or loaded `Images`), write
    `out`; returns (the result dict, the files written).

    A dataset source that is the checkpoint's own dataset gets the checkpoint's sizes and seed (the
    images it was trained and tested on); any other dataset is read whole.
    """
    if Path(out).suffix not in FORMATS:  # before the work, not after it
        raise ValueError(f"{out}: the output's suffix picks its format; use one of {FORMATS}")
    model, cfg, state = load_pretrained(checkpoint, device)
    if isinstance(images, str):
        same = dict(n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.data_seed)
        sizes = same if absolute_dataset_name(images) == cfg.dataset else {}
        images = load_images(images, split, progress=progress, **sources, **sizes)
    result = embed(model, images.images, batch_size, patches, progress)
    if images.labels is not None:
        result.update(labels=images.labels, classes=images.classes)
    if images.files is not None:
        result["files"] = images.files
    result["meta"] = {"checkpoint": str(checkpoint), "model": cfg.run_name, "epoch": state.get("epoch"),
                      "trained_on": cfg.dataset, "source": images.source,
                      "embedding": f"image_embedding ({model.embed_dim * N_PATCHES}-d)",
                      "patch_embeddings": "tower output per patch (16, 64)" if patches else None}
    return result, save_embeddings(out, result)
