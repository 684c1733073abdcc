"""The supervised upper bound of Table 1: a ResNet-32 trained with labels on whole 32x32 images.

The recipe is the supervised baseline of Patacchiola & Storkey (2020), the paper's [24]
(docs/design.md §13): SGD with lr 0.1 and momentum 0.9, lr / 10 at 50 % and 75 % of the epochs,
batch 128, random crop with 4-pixel zero padding and a horizontal flip, and no weight decay (its SGD
is built without one). The row's number is the test top-1 accuracy of
one run (seed `cfg.seed`) after the last epoch; no linear probe is involved.

It trains as `vwe.pretrain.pretrain` does, read top to bottom in `train_supervised`: its step
(`SupervisedStep`) in `vwe.engine.fit`, in a run folder of `vwe.runs`, data-parallel under torchrun.
A resume must share the config's supervised identity (`vwe.config.SUPERVISED_FIELDS`) and the recipe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vwe import distributed
from vwe.config import Config
from vwe.data import Dataset, to_float
from vwe.engine import Step, fit, held_out_sum, training_data
from vwe.fast_step import StepOptions, for_device, in_form
from vwe.models import Classifier
from vwe.runs import open_run


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


def draw_crop_flip(n: int, pad: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Per sample of a batch of `n`: the crop's row and column offsets in [0, 2 * pad] and whether
    to flip (p = 0.5), each (n,), on the generator's device."""
    device = generator.device
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return dy, dx, flip


def crop_flip(images: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor
              ) -> torch.Tensor:
    """The HxW crops at (dy, dx) of the zero-padded images, flipped where `flip`.

    (B, 3, H, W) -> (B, 3, H, W), any dtype. One gather for the whole batch: the crop offsets and
    the flip become per-sample row and column indices.
    """
    b, _, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad))  # (B, 3, H + 2p, W + 2p); zero is black
    rows = dy[:, None] + torch.arange(h, device=device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip reads the columns backwards
    # Advanced indices split by the channel slice put their broadcast shape first: (B, H, W, 3).
    out = padded[torch.arange(b, device=device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)


class SupervisedStep(Step):
    """(B, 3, 32, 32) uint8 images and (B,) labels -> cross-entropy of the crops (0-d, fp32).

    Crop and flip run on the uint8 batch (4x less memory traffic than on floats).
    """

    def __init__(self, model: Classifier, optimizer: torch.optim.Optimizer, pad: int,
                 aug_gen: torch.Generator):
        super().__init__(model, optimizer)
        self.pad, self.aug_gen = pad, aug_gen
        self.net = distributed.data_parallel(model, self.device)

    def draw(self, n: int) -> tuple[torch.Tensor, ...]:
        return draw_crop_flip(n, self.pad, self.aug_gen)

    def loss(self, net: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor,
             *params: torch.Tensor) -> torch.Tensor:
        crops = crop_flip(images, self.pad, *params)
        return F.cross_entropy(net(to_float(crops)).float(), labels)  # (B, 3, 32, 32) in [0, 1]


def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy in percent of `model` (eval mode, no augmentation) on (N, 3, 32, 32) uint8.

    Under torchrun each process counts its share and the counts are added.
    """
    correct = held_out_sum(model, (images, labels), batch_size,
                           lambda x, y: (model(to_float(x)).argmax(1) == y).sum())
    return 100.0 * correct.item() / len(images)


@dataclass
class SupervisedResult:
    run_dir: Path
    checkpoint: Path
    model: Classifier  # eval mode
    metrics: list[dict]  # per epoch: epoch, lr, train_loss, test_acc, seconds, images_per_s
    config: Config
    dataset: str  # what actually ran
    test_acc: float  # top-1 on the test split after the last epoch, percent


def train_supervised(
    cfg: Config,
    run_dir: str | Path,
    data: Dataset,
    recipe: SupervisedRecipe | None = None,
    device: torch.device | None = None,
    fresh: bool = False,
    progress: bool = True,
    sync_bn: bool = True,
) -> SupervisedResult:
    """Train `Classifier(cfg.tower)` with `recipe` for `cfg.epochs` epochs; checkpoint every epoch.

    Resumes from the newest checkpoint in `run_dir` and trains nothing when it already holds
    `cfg.epochs` epochs. The epoch count is part of the run (it places the lr drops), so a checkpoint
    of another epoch count, like any other change of its identity (`vwe.config.SUPERVISED_FIELDS`)
    or the recipe, raises ConfigMismatchError; `fresh=True` discards the directory's checkpoints and
    starts over. `cfg`, `data` and `device` as `vwe.config.resolve` makes them (`device` None: where
    `data` is).
    Under torchrun the processes train data-parallel; `sync_bn` as in `vwe.pretrain.pretrain`.
    """
    recipe = recipe or SupervisedRecipe()
    data, device = training_data(cfg, data, device, recipe.batch_size)
    # bf16 on channels_last weights, compiled; SGD: no CUDA graph
    compile_mode = "default" if cfg.compile else None
    options = for_device(StepOptions(bf16=True, channels_last=True, compile=compile_mode), device)

    torch.manual_seed(cfg.seed)
    model = Classifier(cfg.tower, data.num_classes)
    model = distributed.prepare_model(model.to(device), device, sync_bn)
    optimizer = recipe.optimizer(model.parameters())
    record = {"recipe": dataclasses.asdict(recipe)}
    with open_run(run_dir, f"supervised-{cfg.tower}", cfg, cfg.identity("supervised"), data, device, record,
                  fresh, batch_size=recipe.batch_size) as run:
        run.resume(model, optimizer)
        step = SupervisedStep(model, optimizer, recipe.pad, run.aug_gen)
        inputs = (data.train_images, data.train_labels)

        def evaluate() -> dict[str, float]:
            return {"test_acc": accuracy(model, data.test_images, data.test_labels, cfg.eval_batch_size)}

        metrics = fit(run, model, optimizer, in_form(step, options), inputs, evaluate,
                      lr_at=lambda epoch: lr_at(epoch, cfg.epochs, recipe), progress=progress)
    return SupervisedResult(run.dir, run.checkpoint, model, metrics, cfg, data.name, metrics[-1]["test_acc"])
