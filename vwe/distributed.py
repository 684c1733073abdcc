"""Data parallelism over the processes that `torchrun` starts: which process am I, my slice, DDP.

    torchrun --standalone --nproc-per-node 4 -m vwe pretrain --profile paper    # 4 GPUs, one node

Every process ("rank") holds the whole dataset and the same random generators, so all of them
draw the same global batch of `batch_size` images and the same augmentation for it; each trains on
its equal slice of it (`batch_slice`), and the recipe does not change with the number of processes.
DistributedDataParallel averages the gradients, which with equal slices is the gradient of the
global batch's mean loss, and BatchNorm is synchronised (`prepare_model`): N processes train the
model that one process trains, up to fp32 rounding (tests/torchrun/test_torchrun.py measures it).
Rank 0 alone writes files. Outside torchrun (no process group) every function here describes one
process, rank 0 of 1, so the training code reads the same either way.

Backends: NCCL for CUDA tensors, one GPU per process (LOCAL_RANK); gloo for CPU tensors (the tests).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# Rank 0 alone extracts features and trains the probes while the others wait at a barrier: tens of
# minutes for the paper's protocol, far past NCCL's default of 10. A dead process is still noticed
# at once: torchrun stops the others when one exits.
TIMEOUT = timedelta(hours=4)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    """How many processes train together (1 outside torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on the process that writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def print0(*args, **kwargs) -> None:
    """`print` on rank 0 only (every process, under torchrun, runs the same code), flushed at once."""
    if is_main():
        print(*args, **kwargs, flush=True)


@contextmanager
def launched() -> Iterator[None]:
    """Join torchrun's process group for the duration (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
    MASTER_PORT from the environment); without torchrun, or with one process, nothing happens."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or dist.is_initialized():
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # NCCL: one GPU per process
        backend = "cpu:gloo,cuda:nccl"  # "--device cpu" on a GPU machine still works
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """This process's device: `cuda` becomes cuda:LOCAL_RANK in a data-parallel run."""
    if device.type == "cuda" and world() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank())))
    return device


def check_batch(batch_size: int) -> None:
    """ValueError unless the global batch splits into equal slices (the mean of the slices' mean
    losses is then the global batch's mean loss)."""
    if batch_size % world():
        raise ValueError(f"the batch of {batch_size} images does not split into {world()} equal slices, "
                         f"one per process; use a batch size divisible by {world()}")


def batch_slice(n: int) -> slice:
    """This process's part of a global batch of `n` (equal parts; `check_batch` first)."""
    size = n // world()
    return slice(rank() * size, (rank() + 1) * size)


def local_part(batch: tuple[torch.Tensor, ...], params: tuple[torch.Tensor, ...]
               ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """This process's slice of a global batch (each (B, ...)) and of the augmentation drawn for it
    (each (V * B,), view-major: draw v * B + i is view v of image i). One process: both unchanged."""
    if world() == 1:
        return batch, params
    n = len(batch[0])
    check_batch(n)
    part = batch_slice(n)
    return tuple(x[part] for x in batch), tuple(p.view(-1, n)[:, part].flatten() for p in params)


def shard(n: int) -> slice:
    """This process's contiguous share of `n` items for evaluation (sizes may differ by one)."""
    return slice(rank() * n // world(), (rank() + 1) * n // world())


def barrier() -> None:
    if world() > 1:
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (a download, a cache write), the others after it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def sum_across(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over the processes, in place (no gradient); returns `t`. Every process gets the same
    bits, so what is decided from the result (a NaN check, a logged loss) agrees everywhere."""
    if world() > 1:
        dist.all_reduce(t)
    return t


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient of each process's input is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over the processes (the identity in one process)."""
    return _eager(_AllReduceSum.apply)(x) if world() > 1 else x


@functools.cache
def _eager(fn):
    """`fn` run eagerly under torch.compile (a collective inside an autograd.Function). Made at the
    first data-parallel call, not at import: torch.compiler.disable imports torch._dynamo, about 2 CPU
    seconds of every process's start (a notebook kernel, a CLI call) that never compiles."""
    return torch.compiler.disable(fn)


class SyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that normalises with the statistics of the global batch, on any device.

    torch's nn.SyncBatchNorm runs on GPUs only (`prepare_model` uses it there); this one serves gloo
    on the CPU. The per-channel sums go through a differentiable all-reduce, so autograd gives the
    gradient through the global statistics, and are taken in float64, as the CPU BatchNorm
    accumulates; mean first, then the squared deviations from it (two passes, no cancellation).
    Processes may hold different numbers of rows. Eval mode, or one process: plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world() > 1):
            return super().forward(x)
        c = x.shape[1]
        xd = x.double()  # (B, C, H, W)
        local = torch.cat([xd.sum((0, 2, 3)), xd.new_full((1,), x.numel() // c)])
        total = all_reduce_sum(local)  # (C + 1,): per-channel sums, then the global row count
        n = total[c]
        mean = total[:c] / n
        centred = xd - mean.view(1, c, 1, 1)
        var = all_reduce_sum(centred.square().sum((0, 2, 3))) / n  # biased, as BatchNorm normalises
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.to(x.dtype), alpha=m)
            self.running_var.mul_(1 - m).add_((var * n / (n - 1)).to(x.dtype), alpha=m)  # unbiased
        return y.to(x.dtype)


def _to_sync(module: nn.Module) -> nn.Module:
    """Every nn.BatchNorm2d in `module` replaced by vwe's SyncBatchNorm on the same tensors."""
    if type(module) is nn.BatchNorm2d:
        sync = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        # the same Parameter objects: an optimizer made before the conversion still holds them
        sync.weight, sync.bias = module.weight, module.bias
        sync.running_mean, sync.running_var = module.running_mean, module.running_var
        sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        setattr(module, name, _to_sync(child))
    return module


def prepare_model(model: nn.Module, device: torch.device, sync_bn: bool = True) -> nn.Module:
    """`model` made ready for a data-parallel run (unchanged in one process); returns it.

    sync_bn: BatchNorm normalises with the global batch's statistics (torch's nn.SyncBatchNorm on
    CUDA, `SyncBatchNorm` elsewhere); build a context autoencoder with `sync_zero_patch=True` too, so
    that BatchNorm sees the B*16 + 1 patches that one process sees. Parameters and buffers keep their
    names, so checkpoints are the same either way. sync_bn=False: each process normalises its own
    slice (cheaper; the model then depends on the number of processes).
    """
    if world() == 1 or not sync_bn:
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else _to_sync(model)


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` in DistributedDataParallel when several processes train, else `module` itself.

    DDP hooks `forward` only: wrap a module whose forward returns the loss. Buffers are not
    broadcast at every step; `sync_buffers` does it once an epoch, before they are used.
    """
    if world() == 1:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)


@torch.no_grad()
def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every process. With synchronised
    BatchNorm they are equal already; without it each process tracked its own slice."""
    if world() > 1:
        for b in model.buffers():
            dist.broadcast(b, 0)


class ForwardLoss(nn.Module):
    """An autoencoder whose `forward` is its `forward_loss`, for DDP (which hooks `forward` only)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_loss(x)
