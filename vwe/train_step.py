"""The pretraining step (augment, forward, loss, backward, Adam) and its fast CUDA form.

`make_train_step` returns a function of a uint8 batch that does one optimisation step and returns
the loss as a 0-d tensor, without a host sync. On CUDA it runs in bf16 autocast on channels_last
weights and is compiled; on the CPU it is the plain fp32 step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vwe.augment import AugmentConfig, augment
from vwe.data import to_float
from vwe.models import Autoencoder


def make_train_step(
    model: Autoencoder,
    optimizer: torch.optim.Optimizer,
    aug: AugmentConfig | None,
    aug_gen: torch.Generator,
    device: torch.device,
    compile: bool = True,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A step function: (B, 3, 32, 32) uint8 on `device` -> loss (0-d tensor, fp32).

    `aug=None` trains without augmentation (the paper's ablation).
    """
    cuda = device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)

    def forward_loss(images: torch.Tensor) -> torch.Tensor:
        x = to_float(images)  # (B, 3, 32, 32) in [0, 1]
        if aug is not None:
            x = augment(x, aug, aug_gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            return model.forward_loss(x)

    if cuda and compile:
        forward_loss = torch.compile(forward_loss)

    def step(images: torch.Tensor) -> torch.Tensor:
        loss = forward_loss(images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step
