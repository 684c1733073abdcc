"""The training loop both trainers share: a step, one epoch (`train_one_epoch`), the epochs (`fit`).

A step is a function of one batch (images (B, 3, 32, 32) uint8, and for the supervised row labels
(B,)) on the training device that does one optimisation step and returns the loss as a 0-d fp32
tensor, without a host sync. `Step` is the plain one: what a trainer adds is its augmentation
(`draw`) and its loss (`loss`): `vwe.pretrain.PretrainStep` for the autoencoders,
`vwe.supervised.SupervisedStep` for the supervised row. On CUDA `vwe.fast_step.FastStep` runs the
same two at GPU speed (bf16, torch.compile, a CUDA graph); the CPU, and so the course, trains with the
plain step.

Each trainer reads top to bottom in its own module (seed, build, optimizer, open the run, resume,
the step, `fit`); what they share is here: `training_data` (the data on the device, checked),
`fit` and `held_out_sum`, the evaluation loop under both trainers' held-out scores.

Under torchrun every process draws the augmentation of the whole global batch, as one process does,
and trains on its slice of it inside DistributedDataParallel (`vwe.distributed`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vwe import distributed
from vwe.config import Config, check_resolved
from vwe.data import Dataset, batches, full_batches
from vwe.runs import NonFiniteLossError, Run, epoch_and_step, fractional_epochs

CLOCK_EVERY = 50  # steps between the processes' agreements on a time box's end, under torchrun
clock = time.monotonic  # what a time box (`Config.minutes`) reads; a test puts a clock of its own here


class Step:
    """One optimisation step on a global batch -> its loss (0-d fp32), for `model` and `optimizer`.

    Subclasses give `check(*batch)`; `draw(n)`, the batch's random augmentation as (n,)-leading
    tensors (the only use of their generator, so every process and every form of the step draws the
    same); `net`, the module that runs the model (the model, or under torchrun the DDP module around
    it); and `loss(net, *batch, *params)`, the loss computed with `net` as the network (FastStep
    passes its own compiled, bf16 form of `net`).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer
        self.device = next(model.parameters()).device

    def draw(self, n: int) -> tuple[Tensor, ...]:
        return ()

    def forward_loss(self, *inputs: Tensor) -> Tensor:
        """The loss of a local batch and its augmentation, with the step's own network."""
        return self.loss(self.net, *inputs)

    def loss(self, net: Callable[[Tensor], Tensor], *inputs: Tensor) -> Tensor:
        raise NotImplementedError

    def check(self, *batch: Tensor) -> None:
        """Raise on a batch the step cannot train on (a clear error instead of a deep one)."""

    def local_inputs(self, *batch: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """A checked global batch -> this process's part of it and of the augmentation drawn for it."""
        self.check(*batch)
        params = self.draw(len(batch[0]))  # for the whole global batch, the same on every process
        return distributed.local_part(batch, params)

    def __call__(self, *batch: Tensor) -> Tensor:
        batch, params = self.local_inputs(*batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.forward_loss(*batch, *params)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def train_one_epoch(step: Callable[..., Tensor], inputs: tuple[Tensor, ...], batch_size: int,
                    shuffle_gen: torch.Generator, epoch: int, progress: bool = True,
                    done: Tensor | None = None, stop: Callable[[int], bool] | None = None) -> Tensor:
    """One pass over `inputs` (images (N, 3, 32, 32) uint8, then labels (N,) for a step that takes
    them) in shuffled full batches; returns the losses of its steps, (steps,) fp32.

    `stop(i)`, asked before each step i, ends the epoch early when True: the losses returned are
    then those of steps 0..i-1 (`clock_stop` makes one for a time box). `done`, the
    losses of the epoch's first steps from such a call, resumes it: the same `shuffle_gen` state as
    then draws the same order, and its first len(done) batches are skipped.

    Raises NonFiniteLossError naming the epoch and step of the first non-finite loss. The check is
    once, at the end: a per-step `loss.item()` is a CPU-GPU sync point that would stall every step.
    """
    n, device = len(inputs[0]), inputs[0].device
    steps = full_batches(n, batch_size)
    first = 0 if done is None else len(done)
    losses = torch.zeros(steps, device=device)
    if done is not None:
        losses[:first] = done
    order = batches(n, batch_size, shuffle=True, generator=shuffle_gen, drop_last=True, device=device)
    bar = tqdm(itertools.islice(order, first, None), initial=first, total=steps, desc=f"epoch {epoch}",
               leave=False, disable=not progress)
    end = steps
    for i, idx in enumerate(bar, start=first):
        if stop is not None and stop(i):
            end = i
            break
        losses[i] = step(*(x[idx] for x in inputs))
    bar.close()
    # each process's losses are its slices' means: their average is the global batches' mean loss,
    # the same bits on every process, so all of them stop together on a NaN
    losses = torch.cat([losses[:first], distributed.sum_across(losses[first:end]) / distributed.world()])
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise NonFiniteLossError(
            f"non-finite loss {losses[i].item()} at epoch {epoch}, step {i + 1} of {steps}; the run "
            "stopped and the last checkpoint is intact. Lower the learning rate or check the input data.")
    return losses


def clock_stop(minutes: float, device: torch.device) -> Callable[[int], bool]:
    """`train_one_epoch`'s `stop` for a time box: True once `minutes` have passed on `clock` since
    this call, never when asked first (every time-boxed `fit` trains at least one step, so it leaves
    a checkpoint).

    One process reads its clock before every step, without a device sync: on a GPU the clock runs
    ahead of the queued steps by at most the queue's depth. Under torchrun every process must stop at
    the same step, so they agree every CLOCK_EVERY steps with an all-reduce (a sync: not every step).
    """
    deadline = clock() + 60 * minutes
    asked = itertools.count()

    def stop(i: int) -> bool:
        n = next(asked)
        if n == 0:
            return False
        if distributed.world() == 1:
            return clock() >= deadline
        if n % CLOCK_EVERY:
            return False
        late = torch.tensor([float(clock() >= deadline)], device=device)
        return bool(distributed.sum_across(late).item() > 0)  # one process late: all stop

    return stop


def steps_done(metrics: list[dict], steps_per_epoch: int) -> int:
    """The steps a run has trained in all, from its metrics (`fit`'s): 0 before the first."""
    if not metrics:
        return 0
    last = metrics[-1]
    if "steps" in last:  # stopped inside an epoch: the epochs before it, then its steps
        return int(last["epoch"]) * last["steps_per_epoch"] + last["steps"]
    return last["epoch"] * steps_per_epoch


def epochs_reached(metrics: list[dict]) -> float:
    """The epochs a run has trained, from its metrics (`fit`'s), not from the epochs its config asked
    for: fractional (floored to 1e-4) when a time box or `Config.steps` stopped it inside one, 0 before
    the first."""
    return metrics[-1]["epoch"] if metrics else 0


def check_weights(model: nn.Module, scores: dict[str, float], epoch: int) -> None:
    """NonFiniteLossError when the weights (or the held-out scores) are NaN/inf after `epoch`.

    Before the checkpoint: the last step's update is never seen by a training loss, and a checkpoint
    of broken weights would fail every resume from it.
    """
    finite = torch.stack([p.isfinite().all() for p in model.parameters()]).all()  # one sync
    if not (all(math.isfinite(v) for v in scores.values()) and finite):
        held_out = ", ".join(f"{k} {v}" for k, v in scores.items())
        raise NonFiniteLossError(
            f"the weights became non-finite at the end of epoch {epoch} ({held_out}); the run stopped "
            "before checkpointing them and the last checkpoint is intact. Lower the learning rate.")


def fit(run: Run, model: nn.Module, optimizer: torch.optim.Optimizer, step: Callable[..., Tensor],
        inputs: tuple[Tensor, ...], evaluate: Callable[[], dict[str, float]],
        lr_at: Callable[[int], float] | None = None, progress: bool = True) -> list[dict]:
    """The epoch loop: from the run's global step to `run.cfg.epochs` epochs, train, evaluate, checkpoint.

    The run's position is its global step (`vwe.runs.Run`): the epoch to train and the step inside it
    to start from are its quotient and remainder by the steps of an epoch (the full batches of
    `run.batch_size` in `inputs`). `evaluate()` gives the held-out scores logged with each epoch (e.g.
    {"test_loss": ...}); `lr_at(epoch)` the learning rate of each 1-based epoch (None keeps the
    optimizer's). With `run.cfg.minutes` the loop stops once that much time has passed (`clock_stop`),
    with `run.cfg.steps` at that global step, at an epoch's end or inside one: the steps done are
    evaluated and checkpointed like an epoch, and the next call resumes at the next step, bit for bit
    as if nothing had stopped. Returns the metrics of every epoch (a stopped epoch's entry has a
    fractional "epoch" and its "steps"); the model is left in eval mode.
    """
    progress = progress and distributed.is_main()
    batch_size, steps = run.batch_size, run.steps_per_epoch  # a full epoch's steps
    if len(inputs[0]) != run.n_train:
        raise ValueError(f"fit was given {len(inputs[0])} training images, the run {run.n_train}")
    goal = run.cfg.epochs * steps if run.cfg.steps is None else min(run.cfg.epochs * steps, run.cfg.steps)
    last = math.ceil(goal / steps)  # the last epoch to train (in part when `goal` is inside it)
    time_up = None if run.cfg.minutes is None else clock_stop(run.cfg.minutes, inputs[0].device)
    first, _ = epoch_and_step(run.global_step, steps)  # the whole epochs done: train from the next
    epochs = tqdm(range(first + 1, last + 1), initial=first, total=last, desc=run.name, disable=not progress)
    for epoch in epochs:
        start = (epoch - 1) * steps  # the global step this epoch begins at
        # stop before step i of this epoch once the goal is reached, or when the time is up
        def stop(i: int, start: int = start) -> bool:
            return start + i >= goal or (time_up is not None and time_up(i))

        lr = {}
        if lr_at is not None:
            lr = {"lr": lr_at(epoch)}
            for group in optimizer.param_groups:
                group["lr"] = lr["lr"]
        t0 = time.perf_counter()
        model.train()
        order_state = run.shuffle_gen.get_state()  # before the epoch's order is drawn from it
        losses = train_one_epoch(step, inputs, batch_size, run.shuffle_gen, epoch, progress, run.epoch_losses,
                                 stop)
        seconds = time.perf_counter() - t0  # train_one_epoch ends on a sync, so this is real time
        before = run.global_step - start  # this epoch's steps trained by earlier calls
        trained = len(losses) - before  # steps of this call
        if trained == 0:  # the clock stopped it before this epoch's first step: nothing new to save
            break
        distributed.sync_buffers(model)  # rank 0's BatchNorm statistics, for evaluation and saving
        scores = evaluate()
        check_weights(model, scores, epoch)
        # the stopped epoch's entry, which this one replaces: its training time counts in the epoch's
        spent = run.metrics.pop()["seconds"] if before else 0.0
        done = len(losses)
        reached = {"epoch": fractional_epochs(start + done, steps)}
        if done < steps:
            reached |= {"steps": done, "steps_per_epoch": steps}
        run.metrics.append({**reached, **lr, "train_loss": losses.mean().item(), **scores,
                            "seconds": round(spent + seconds, 3),  # every call's that trained it
                            "images_per_s": round(trained * batch_size / seconds, 1)})  # this call's
        if done < steps:
            # a resumed epoch draws its order again from the state it was drawn from
            run.shuffle_gen.set_state(order_state)
        run.save(start + done, model, optimizer, losses)
        epochs.set_postfix(train=f"{run.metrics[-1]['train_loss']:.4f}",
                           **{k: f"{v:.4g}" for k, v in scores.items()},
                           img_s=f"{run.metrics[-1]['images_per_s']:.0f}")
        if done < steps:
            break
    epochs.close()
    model.eval()
    return run.metrics


@torch.no_grad()
def held_out_sum(model: nn.Module, inputs: tuple[Tensor, ...], batch_size: int,
                 score: Callable[..., Tensor]) -> Tensor:
    """The sum of `score(*batch)` over `inputs` (each (N, ...), images (N, 3, 32, 32) uint8 first) in
    eval mode, in fp32 on every device (the table's rows share one precision: the probes read fp32
    features); the model's mode is restored after. Returns a 0-d fp32 tensor.

    Under torchrun each process scores its share and the sums are added: every process returns the
    same number.
    """
    was_training = model.training
    model.eval()
    device = inputs[0].device
    total = torch.zeros((), device=device)
    part = distributed.shard(len(inputs[0]))
    mine = tuple(x[part] for x in inputs)
    for idx in batches(len(mine[0]), batch_size, shuffle=False, device=device):
        total += score(*(x[idx] for x in mine))
    model.train(was_training)
    return distributed.sum_across(total)


def training_data(cfg: Config, data: Dataset, device: torch.device | None, batch_size: int
                  ) -> tuple[Dataset, torch.device]:
    """A trainer's data on its training device (`device` None: where `data` is), the whole dataset as
    uint8, after checking that `cfg` and `data` are what `vwe.config.resolve` made and that they hold
    a full global batch of `batch_size` that splits over the processes. Returns (data, device)."""
    check_resolved(cfg, data)
    full_batches(len(data.train_labels), batch_size)
    distributed.check_batch(batch_size)
    device = device or data.train_images.device
    return data.to(device), device
