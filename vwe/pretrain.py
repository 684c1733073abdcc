"""Pretraining the autoencoders: `pretrain` (resumable), the held-out loss, and `load_pretrained`.

    step = PretrainStep(model, optimizer, aug, run.aug_gen, views, original)   # vwe.engine
    fit(run, model, optimizer, step, ...)                                       # the epoch loop

On CUDA the step is wrapped in `vwe.fast_step.FastStep` (bf16, torch.compile, a CUDA graph); the
CPU trains with the plain step. The run folder and its checkpoints are `vwe.runs`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vwe import distributed
from vwe.config import Config, check_resolved
from vwe.data import Dataset, batches, to_float
from vwe.engine import PretrainStep, fit
from vwe.fast_step import FastStep, default_options
from vwe.models import Autoencoder, build_model
from vwe.runs import CheckpointError, latest_checkpoint, load_checkpoint, open_run


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
) -> PretrainResult:
    """Train `cfg.model` for `cfg.epochs` epochs, checkpointing every epoch, resuming when possible.

    `cfg`, `data` and `device` as `vwe.config.resolve` makes them (`device` None: where `data` is).
    `fresh=True` discards earlier checkpoints of this run directory instead of resuming (also needed
    to change the config of a run); nothing is discarded before the run directory's lock is held.
    Under torchrun the processes train data-parallel (`vwe.distributed`); `sync_bn=False` lets each
    normalise its own slice instead of the global batch.
    """
    check_resolved(cfg, data)
    device = device or data.train_images.device
    n_train = len(data.train_labels)
    if cfg.batch_size > n_train:
        raise ValueError(f"batch_size={cfg.batch_size} is more than the {n_train} training images: "
                         f"no full batch to train on; use a batch_size <= {n_train} or more images")
    distributed.check_batch(cfg.batch_size)
    if progress and distributed.is_main():
        print(f"{cfg.run_name} on {device}: {cfg.cost_text(n_train)}", flush=True)
    data = data.to(device)  # the whole dataset lives on the device as uint8

    torch.manual_seed(cfg.seed)
    model = distributed.prepare_model(build_model(**cfg.model_args).to(device), device, sync_bn)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=device.type == "cuda")
    with open_run(run_dir, cfg.run_name, cfg, cfg.identity("pretrain"), data, device, fresh=fresh) as run:
        run.resume(model, optimizer)  # before the step: a CUDA graph captures the loaded optimizer
        step = PretrainStep(model, optimizer, cfg.aug if cfg.augment else None, run.aug_gen, cfg.views,
                            cfg.original)
        if device.type == "cuda":  # bf16, torch.compile and a CUDA graph: the same step, faster
            step = FastStep(step, default_options(device, cfg.compile))
        metrics = fit(run, model, optimizer, step, (data.train_images,), cfg.batch_size,
                      lambda: {"test_loss": held_out_loss(model, data.test_images, cfg.eval_batch_size)},
                      progress=progress)
    return PretrainResult(run.dir, run.checkpoint, model, metrics, cfg, data.name)


def load_pretrained(path: str | Path, device: torch.device | str = "cpu") -> tuple[Autoencoder, Config, dict]:
    """A trained model in eval mode from a checkpoint file or a run directory (its newest checkpoint).

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
    else:
        state = load_checkpoint(path, map_location=dev)
    try:
        cfg = Config.from_dict(state["config"])
        model = build_model(**cfg.model_args).to(dev)
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} does not hold a model vwe can rebuild: {e}") from e
    return model.eval(), cfg, state
