"""The supervised upper bound of Table 1: a ResNet-32 trained with labels on whole 32x32 images.

The recipe is the supervised baseline of Patacchiola & Storkey (2020), the paper's [24]
(docs/design.md §13): SGD with lr 0.1 and momentum 0.9, lr / 10 at 50 % and 75 % of the epochs,
batch 128, random crop with 4-pixel zero padding and a horizontal flip, and no weight decay (its SGD
is built without one). The row's number is the test top-1 accuracy of
one run (seed `cfg.seed`) after the last epoch; no linear probe is involved.

The run directory, its checkpoints, resume and the epoch loop are `vwe.runs`'s, as for pretraining:
this module supplies the step, the accuracy, the lr schedule and what a resume must share (RUN_FIELDS
and the recipe). Under torchrun it trains data-parallel as `vwe.pretrain.pretrain` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vwe import distributed
from vwe.config import Config, resolve_device
from vwe.data import Dataset, batches, to_float
from vwe.models import Classifier
from vwe.runs import resolve_data, run_epochs

# The Config fields a supervised run depends on; the rest (the autoencoder's lr, batch size and
# augmentation, the probe) do not touch it and may change without invalidating its checkpoints.
RUN_FIELDS = ("dataset", "n_train", "n_test", "validation", "data_seed", "tower", "epochs", "seed")


@dataclass(frozen=True)
class SupervisedRecipe:
    """Optimisation and augmentation of the supervised baseline, as [24]'s code trains it."""

    batch_size: int = 128  # images per step, as [24]'s supervised baseline
    lr: float = 0.1  # SGD learning rate before the first drop
    momentum: float = 0.9
    weight_decay: float = 0.0  # none, as [24]'s code (its SGD has no weight_decay argument)
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the epochs after which lr drops / 10
    pad: int = 4  # random-crop padding, pixels

    def optimizer(self, params) -> torch.optim.SGD:
        """SGD with this recipe's lr, momentum and weight decay over `params`."""
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def __post_init__(self) -> None:
        for name in ("batch_size", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.pad < 0 or not all(0 < m < 1 for m in self.milestones):
            raise ValueError(f"pad must be >= 0 and milestones in (0, 1), got pad={self.pad}, "
                             f"milestones={self.milestones}")


def lr_at(epoch: int, epochs: int, recipe: SupervisedRecipe) -> float:
    """The learning rate of 1-based `epoch` out of `epochs`: lr / 10 after each milestone epoch.

    With 200 epochs: 0.1 for epochs 1-100, 0.01 for 101-150, 0.001 for 151-200 (torch's MultiStepLR
    with milestones [100, 150]).
    """
    drops = sum(epoch > int(m * epochs) for m in recipe.milestones)
    return recipe.lr * 0.1**drops


def random_crop_flip(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per sample: a random HxW crop of the zero-padded image, then a horizontal flip with p = 0.5.

    (B, 3, H, W) -> (B, 3, H, W), any dtype, on the generator's device. One gather for the whole
    batch: the crop offsets and the flip become per-sample row and column indices.
    """
    b, _, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad))  # (B, 3, H + 2p, W + 2p); zero is black
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=device)
    flip = torch.rand(b, generator=generator, device=device) < 0.5
    rows = dy[:, None] + torch.arange(h, device=device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip reads the columns backwards
    # Advanced indices split by the channel slice put their broadcast shape first: (B, H, W, 3).
    out = padded[torch.arange(b, device=device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)


def make_supervised_step(
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    pad: int,
    aug_gen: torch.Generator,
    device: torch.device,
    compile: bool = True,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A step function: (B, 3, 32, 32) uint8 images and (B,) labels on `device` -> loss (0-d, fp32).

    Crop and flip run on the uint8 batch (4x less memory traffic than on floats). On CUDA the
    forward runs in bf16 autocast on channels_last weights and is compiled, and cuDNN searches for
    its fastest kernels (the batch shape never changes), as in `vwe.train_step`. Under torchrun the
    crops are drawn for the whole global batch on every process, each process trains on its slice,
    and DDP averages the gradients (the compiled CUDA form of that is unmeasured).
    """
    cuda = device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
        # without the search cuDNN's heuristics pick the kernels; a supervised row run before any
        # autoencoder step in the same process would otherwise never have it on
        torch.backends.cudnn.benchmark = True

    parallel = distributed.world() > 1
    net = distributed.data_parallel(model, device)
    if cuda and compile and parallel:
        net = torch.compile(net)  # torch.compile's DDP support: compile the wrapped module

    def forward_loss(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            return F.cross_entropy(net(x).float(), labels)

    if cuda and compile and not parallel:
        forward_loss = torch.compile(forward_loss)

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        crops = random_crop_flip(images, pad, aug_gen)  # the whole global batch, on every process
        if parallel:
            part = distributed.batch_slice(len(images))
            crops, labels = crops[part], labels[part]
        loss = forward_loss(to_float(crops), labels)  # (B, 3, 32, 32) in [0, 1]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


@torch.no_grad()
def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy in percent of `model` (eval mode, no augmentation) on (N, 3, 32, 32) uint8.

    Under torchrun each process counts its share and the counts are added.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    part = distributed.shard(len(images))
    mine, my_labels = images[part], labels[part]
    for idx in batches(len(mine), batch_size, shuffle=False, device=images.device):
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=images.device.type == "cuda"):
            correct += (model(to_float(mine[idx])).argmax(1) == my_labels[idx]).sum()
    model.train(was_training)
    return 100.0 * distributed.sum_across(correct).item() / len(images)


@dataclass
class SupervisedResult:
    run_dir: Path
    checkpoint: Path
    model: Classifier  # eval mode
    metrics: list[dict]  # per epoch: epoch, lr, train_loss, test_acc, seconds, images_per_s
    config: Config
    dataset: str  # what actually ran
    test_acc: float  # top-1 on the test split after the last epoch, percent


def run_key(state: dict) -> dict:
    """What a checkpoint must share with the run that resumes it: RUN_FIELDS and the recipe."""
    config = {**Config().to_dict(), **state["config"]}  # a field a checkpoint predates: its default
    return {**{k: config[k] for k in RUN_FIELDS}, "recipe": state.get("recipe", {})}


def train_supervised(
    cfg: Config,
    run_dir: str | Path,
    data: Dataset | None = None,
    recipe: SupervisedRecipe | None = None,
    fresh: bool = False,
    progress: bool = True,
    sync_bn: bool = True,
) -> SupervisedResult:
    """Train `Classifier(cfg.tower)` with `recipe` for `cfg.epochs` epochs; checkpoint every epoch.

    Resumes from the newest checkpoint in `run_dir` and trains nothing when it already holds
    `cfg.epochs` epochs. The epoch count is part of the run (it places the lr drops), so a checkpoint
    of another epoch count, like any other change of RUN_FIELDS or the recipe, raises
    ConfigMismatchError; `fresh=True` discards the directory's checkpoints and starts over.
    Under torchrun the processes train data-parallel; `sync_bn` as in `vwe.pretrain.pretrain`.
    """
    recipe = recipe or SupervisedRecipe()
    run_dir = Path(run_dir)
    device = distributed.local_device(resolve_device(cfg.device))
    cfg, data = resolve_data(cfg, data)
    n_train = len(data.train_labels)
    if recipe.batch_size > n_train:
        raise ValueError(f"the supervised batch of {recipe.batch_size} is more than the {n_train} "
                         "training images; use more images or a smaller SupervisedRecipe.batch_size")
    distributed.check_batch(recipe.batch_size)
    data = data.to(device)  # the whole dataset lives on the device as uint8

    torch.manual_seed(cfg.seed)
    model = distributed.prepare_model(Classifier(cfg.tower, data.num_classes).to(device), device, sync_bn)
    optimizer = recipe.optimizer(model.parameters())
    checkpoint, metrics = run_epochs(
        run_dir, cfg, data, model, optimizer,
        lambda aug_gen: make_supervised_step(model, optimizer, recipe.pad, aug_gen, device,
                                             compile=cfg.compile),
        lambda: {"test_acc": accuracy(model, data.test_images, data.test_labels, cfg.eval_batch_size)},
        run_key, recipe.batch_size, name=f"supervised-{cfg.tower}", labels=True,
        lr_at=lambda epoch: lr_at(epoch, cfg.epochs, recipe),
        record={"recipe": dataclasses.asdict(recipe)}, fresh=fresh, progress=progress)
    return SupervisedResult(run_dir, checkpoint, model, metrics, cfg, data.name, metrics[-1]["test_acc"])
