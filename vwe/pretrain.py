"""Pretraining the autoencoders: `pretrain` (resumable), the held-out loss, and `load_pretrained`.

    step = PretrainStep(model, optimizer, aug, run.aug_gen, views, original)   # vwe.engine
    fit(run, model, optimizer, step, ...)                                       # the epoch loop

`vwe.engine.train` sets both up (on CUDA the step runs as `vwe.fast_step.FastStep`: bf16,
torch.compile, a CUDA graph); the run folder and its checkpoints are `vwe.runs`'s.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from vwe import distributed
from vwe.config import Config
from vwe.data import Dataset, to_float
from vwe.engine import PretrainStep, held_out_sum, train
from vwe.fast_step import default_options
from vwe.models import Autoencoder, build_model
from vwe.runs import CheckpointError, latest_checkpoint, load_checkpoint


def held_out_loss(model: Autoencoder, images: torch.Tensor, batch_size: int = 1024) -> float:
    """Mean reconstruction loss over `images` (N, 3, 32, 32) uint8: eval mode, no augmentation.

    Under torchrun each process evaluates its share and the sums are added: every process returns
    the same number.
    """
    total = held_out_sum(model, (images,), batch_size,
                         lambda x: model.forward_loss(to_float(x)).float() * len(x))
    return (total / len(images)).item()


@dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path
    model: Autoencoder
    metrics: list[dict]  # per epoch: epoch, train_loss, test_loss, seconds, images_per_s
    config: Config
    dataset: str  # what actually ran: "cifar100", "shapes", "folder:/abs/path", ...


def pretrain(
    cfg: Config,
    run_dir: str | Path,
    data: Dataset,
    device: torch.device | None = None,
    fresh: bool = False,
    progress: bool = True,
    sync_bn: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> PretrainResult:
    """Train `cfg.model` for `cfg.epochs` epochs, checkpointing every epoch, resuming when possible.

    `cfg`, `data` and `device` as `vwe.config.resolve` makes them (`device` None: where `data` is).
    `fresh=True` discards earlier checkpoints of this run directory instead of resuming (also needed
    to change the config of a run); nothing is discarded before the run directory's lock is held.
    Under torchrun the processes train data-parallel (`vwe.distributed`); `sync_bn=False` lets each
    normalise its own slice instead of the global batch. `clock` measures a time box (`cfg.minutes`;
    a test passes one that ticks at every read).
    """
    if progress and distributed.is_main():
        print(f"{cfg.run_name} on {device or data.train_images.device}: "
              f"{cfg.cost_text(len(data.train_labels))}", flush=True)
    run, model, metrics = train(
        cfg, run_dir, data, device, name=cfg.run_name, identity=cfg.identity("pretrain"), record=None,
        batch_size=cfg.batch_size, labels=False,
        # one zero patch per global batch when BatchNorm sees the global batch of several processes
        build=lambda dense: build_model(**cfg.model_args, dense_convs=dense,
                                        sync_zero_patch=sync_bn and distributed.world() > 1),
        optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=cfg.lr, fused=next(m.parameters()).is_cuda),
        step=lambda m, opt, aug_gen: PretrainStep(m, opt, cfg.aug if cfg.augment else None, aug_gen,
                                                  cfg.views, cfg.original),
        options=default_options(cfg.compile),
        evaluate=lambda m, d: {"test_loss": held_out_loss(m, d.test_images, cfg.eval_batch_size)},
        fresh=fresh, progress=progress, sync_bn=sync_bn, clock=clock)
    return PretrainResult(run.dir, run.checkpoint, model, metrics, cfg, data.name)


MANIFEST = "manifest.json"  # beside compact weights (checkpoints/): each file's sha256, config, metrics


def load_weights(path: Path, map_location: torch.device | str = "cpu") -> dict:
    """Compact weights (`vwe.course.export_shipped`: an fp16 state dict, listed with its sha256, config,
    data and metrics in the MANIFEST beside it) as the checkpoint dict a run would hold: the sha256
    checked, the weights loaded with `weights_only=True` and back in fp32. CheckpointError when the
    manifest does not list the file or its bytes differ."""
    manifest = json.loads((path.parent / MANIFEST).read_text())
    entry = next((e for e in manifest.get("models", {}).values() if e["file"] == path.name), None)
    if entry is None:
        raise CheckpointError(f"{path.parent / MANIFEST} does not list {path.name}")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise CheckpointError(f"{path} does not match the sha256 in {MANIFEST}: the file is damaged or "
                              "was replaced; restore it with git (git checkout -- checkpoints)")
    weights = torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)
    model = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    return {"model": model, "config": entry["config"], "metrics": entry["metrics"], "data": entry["data"],
            "epoch": entry["metrics"][-1]["epoch"], "provenance": entry.get("provenance")}


def load_pretrained(path: str | Path, device: torch.device | str = "cpu") -> tuple[Autoencoder, Config, dict]:
    """A trained model in eval mode from a checkpoint file, a run directory (its newest checkpoint) or
    compact weights listed in a manifest beside them (`load_weights`: the shipped checkpoints/).

    Returns (model, config, checkpoint dict). Raises FileNotFoundError when there is no checkpoint,
    CheckpointError when none loads or it does not fit the model its config names.
    """
    path = Path(path)
    dev = torch.device(device)
    if path.is_dir():
        found = latest_checkpoint(path, map_location=dev)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {path}; run `python -m vwe pretrain` first")
        path, state = found
    elif (path.parent / MANIFEST).is_file():
        state = load_weights(path, dev)
    else:
        state = load_checkpoint(path, map_location=dev)
    try:
        cfg = Config.from_dict(state["config"])
        model = build_model(**cfg.model_args).to(dev)
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} does not hold a model vwe can rebuild: {e}") from e
    return model.eval(), cfg, state
