"""Pretraining the autoencoders: the held-out loss, `pretrain` (resumable) and `load_pretrained`.

The run directory, its checkpoints and the epoch loop are `vwe.runs`'s; this module supplies what
is particular to the autoencoders: the step (`vwe.train_step.make_train_step`), the held-out
reconstruction loss, and which config fields a resume may change (RESUMABLE_FIELDS).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vwe import distributed
from vwe.config import Config, resolve_device
from vwe.data import Dataset, batches, to_float
from vwe.models import Autoencoder, build_model
from vwe.runs import CheckpointError, latest_checkpoint, load_checkpoint, resolve_data, run_epochs
from vwe.train_step import make_train_step

# Fields that may change between a run and its resume: how long, where, how fast, how it is judged.
RESUMABLE_FIELDS = {"profile", "epochs", "device", "compile", "eval_batch_size"} | {
    "probe_epochs", "probe_batch_size", "probe_lr", "probe_seeds", "probe_norm",
}


@torch.no_grad()
def held_out_loss(model: Autoencoder, images: torch.Tensor, batch_size: int = 1024) -> float:
    """Mean reconstruction loss over `images` (N, 3, 32, 32) uint8: eval mode, no augmentation.

    Under torchrun each process evaluates its share and the sums are added: every process returns
    the same number.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=images.device)
    use_bf16 = images.device.type == "cuda"
    mine = images[distributed.shard(len(images))]
    for idx in batches(len(mine), batch_size, shuffle=False, device=images.device):
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            total += model.forward_loss(to_float(mine[idx])).float() * len(idx)
    model.train(was_training)
    return (distributed.sum_across(total) / len(images)).item()


def run_key(state: dict) -> dict:
    """What a checkpoint must share with the run that resumes it: every field but RESUMABLE_FIELDS. A
    field that a checkpoint predates counts as its default, which is what such a run used."""
    config = {**Config().to_dict(), **state["config"]}
    return {k: v for k, v in config.items() if k not in RESUMABLE_FIELDS}


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
    data: Dataset | None = None,
    fresh: bool = False,
    progress: bool = True,
    sync_bn: bool = True,
) -> PretrainResult:
    """Train `cfg.model` for `cfg.epochs` epochs, checkpointing every epoch, resuming when possible.

    `data` defaults to `load_dataset(cfg.dataset, ...)`. `fresh=True` discards earlier checkpoints
    of this run directory instead of resuming (also needed to change the config of a run); nothing
    is discarded before the data has loaded and the run directory's lock is held. Under torchrun
    the processes train data-parallel (`vwe.distributed`); `sync_bn=False` lets each normalise
    its own slice instead of the global batch.
    """
    run_dir = Path(run_dir)
    device = distributed.local_device(resolve_device(cfg.device))
    cfg, data = resolve_data(cfg, data)
    n_train = len(data.train_labels)
    if cfg.batch_size > n_train:
        raise ValueError(f"batch_size={cfg.batch_size} is more than the {n_train} training images: "
                         f"no full batch to train on; use a batch_size <= {n_train} or more images")
    distributed.check_batch(cfg.batch_size)
    if progress and distributed.is_main():
        print(f"{cfg.run_name} on {device}: {cfg.cost_text(n_train)}", flush=True)
    data = data.to(device)  # the whole dataset lives on the device as uint8

    torch.manual_seed(cfg.seed)
    model = distributed.prepare_model(build_model(**cfg.model_args).to(device),
                                      device, sync_bn)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=device.type == "cuda")
    checkpoint, metrics = run_epochs(
        run_dir, cfg, data, model, optimizer,
        lambda aug_gen: make_train_step(model, optimizer, cfg.aug if cfg.augment else None, aug_gen,
                                        device, compile=cfg.compile, views=cfg.views,
                                        original=cfg.original),
        lambda: {"test_loss": held_out_loss(model, data.test_images, cfg.eval_batch_size)},
        run_key, cfg.batch_size, name=cfg.run_name, fresh=fresh, progress=progress)
    return PretrainResult(run_dir, checkpoint, model, metrics, cfg, data.name)


def load_pretrained(path: str | Path, device: str = "auto") -> tuple[Autoencoder, Config, dict]:
    """A trained model in eval mode from a checkpoint file or a run directory (its newest checkpoint).

    Returns (model, config, checkpoint dict). Raises FileNotFoundError when there is no checkpoint,
    CheckpointError when none loads or it does not fit the model its config names.
    """
    path = Path(path)
    dev = resolve_device(device)
    if path.is_dir():
        found = latest_checkpoint(path, map_location=dev)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {path}; run `python -m vwe pretrain` first")
        path, state = found
    else:
        state = load_checkpoint(path, map_location=dev)
    try:
        cfg = Config.from_dict(state["config"])
        model = build_model(**cfg.model_args).to(dev)
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} does not hold a model vwe can rebuild: {e}") from e
    return model.eval(), cfg, state
