"""Pretraining the autoencoders: their step (`PretrainStep`), `pretrain` (resumable), the held-out
loss, and `load_pretrained`.

`pretrain` reads top to bottom: the data on the device, the seed, the model, Adam, the run folder
(`vwe.runs`) and its resume, the step (on CUDA as `vwe.fast_step.FastStep`: bf16, torch.compile, a
CUDA graph), then `vwe.engine.fit`, the epoch loop.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from vwe import distributed
from vwe.augment import AugmentConfig, AugmentParams, apply_params, batch_views, sample_params
from vwe.checks import check_images, is_int
from vwe.config import Config
from vwe.data import Dataset, to_float
from vwe.engine import Step, fit, held_out_sum, training_data
from vwe.fast_step import default_options, for_device, in_form
from vwe.models import Autoencoder, build_model
from vwe.runs import CheckpointError, latest_checkpoint, load_checkpoint, open_run


class PretrainStep(Step):
    """The autoencoders' step: (B, 3, 32, 32) uint8 -> MSE loss over every view of every image.

    `aug=None` trains without augmentation (the paper's ablation). With `aug` the model sees `views`
    augmented views of every image, after the image itself when `original` (the author's code: 3
    views and the original).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, aug: AugmentConfig | None,
                 aug_gen: torch.Generator, views: int = 1, original: bool = False):
        super().__init__(model, optimizer)
        if not is_int(views) or views < 1:
            raise ValueError(f"views is the number of augmented views of each image, >= 1, got {views!r}")
        if aug is not None and aug_gen.device.type != self.device.type:
            raise ValueError(f"the augmentation generator lives on {aug_gen.device} but the model on "
                             f"{self.device}; make it with torch.Generator(device={str(self.device)!r})")
        self.aug, self.aug_gen = aug, aug_gen
        self.views, self.original = batch_views(views, original, aug is not None)
        # DDP hooks `forward` only: under torchrun the loss goes through a module whose forward it is
        self.net = (distributed.data_parallel(distributed.ForwardLoss(model), self.device)
                    if distributed.world() > 1 else model.forward_loss)

    def draw(self, n: int) -> tuple[Tensor, ...]:
        if self.aug is None:
            return ()
        params = sample_params(n * self.views, self.aug, self.aug_gen, self.device)  # view-major
        return tuple(getattr(params, f.name) for f in fields(params))

    def loss(self, net: Callable[[Tensor], Tensor], images: Tensor, *params: Tensor) -> Tensor:
        x = to_float(images)  # (B, 3, 32, 32) in [0, 1]
        if self.aug is not None:
            views = apply_params(x.repeat(self.views, 1, 1, 1), AugmentParams(*params), self.aug)
            x = torch.cat([x, views]) if self.original else views  # ((V + 1) * B or V * B, 3, 32, 32)
        return net(x)

    def check(self, images: Tensor) -> None:
        check_images(images, "uint8", name="a training batch")
        if images.device.type != self.device.type:
            raise ValueError(f"the batch is on {images.device} but the step trains on {self.device}; "
                             "move the dataset with Dataset.to(device) first")


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


def pretrain(cfg: Config, run_dir: str | Path, data: Dataset, device: torch.device | None = None,
             fresh: bool = False, progress: bool = True, sync_bn: bool = True) -> PretrainResult:
    """Train `cfg.model` for `cfg.epochs` epochs, checkpointing every epoch, resuming when possible.

    `cfg`, `data` and `device` as `vwe.config.resolve` makes them (`device` None: where `data` is).
    `fresh=True` discards earlier checkpoints of this run directory instead of resuming (also needed
    to change the config of a run); nothing is discarded before the run directory's lock is held.
    Under torchrun the processes train data-parallel (`vwe.distributed`); `sync_bn=False` lets each
    normalise its own slice instead of the global batch.
    """
    data, device = training_data(cfg, data, device, cfg.batch_size)
    if progress:
        distributed.print0(f"{cfg.run_name} on {device}: {cfg.cost_text(len(data.train_labels))}")
    options = for_device(default_options(cfg.compile), device)

    torch.manual_seed(cfg.seed)
    # one zero patch per global batch when BatchNorm sees the global batch of several processes
    model = build_model(**cfg.model_args, sync_zero_patch=sync_bn and distributed.world() > 1)
    model = distributed.prepare_model(model.to(device), device, sync_bn)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=device.type == "cuda")
    with open_run(run_dir, cfg.run_name, cfg, cfg.identity("pretrain"), data, device, fresh=fresh) as run:
        run.resume(model, optimizer)  # before the step: a CUDA graph captures the loaded optimizer
        step = PretrainStep(model, optimizer, cfg.aug if cfg.augment else None, run.aug_gen, cfg.views,
                            cfg.original)
        metrics = fit(run, model, optimizer, in_form(step, options), (data.train_images,),
                      lambda: {"test_loss": held_out_loss(model, data.test_images, cfg.eval_batch_size)},
                      progress=progress)
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
