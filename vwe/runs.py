"""A run folder and the one epoch loop both trainers share (`run_epochs`).

A run directory holds `checkpoint-EEEE.pt` (the last two epochs), `metrics.jsonl` (one line per
finished epoch), `config.json` and `.lock`. Every file is written to a temp name and renamed, so a
reader sees the old file or the new one; a checkpoint ends in a SHA-256 footer, so a file damaged
later on disk is caught instead of loaded. Rerunning with the same config resumes from the newest
checkpoint that loads and rewrites the metrics log from it: a kill at any point leaves neither
duplicated nor missing epochs. One process at a time may train in a run directory.

`vwe.pretrain` (the autoencoders) and `vwe.supervised` (the supervised row) each supply a step, an
evaluation, what a resumed checkpoint must share with the run, and (the supervised row) an lr
schedule; `run_epochs` does the rest (docs/design.md, Runs, checkpoints and records). Under torchrun
every process runs the loop on its slice of each batch (`vwe.distributed`): all of them resume from
the same checkpoint, and rank 0 alone holds the lock and writes the files.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, run directories are not guarded
    fcntl = None

import torch
from torch import nn
from tqdm.auto import tqdm

from vwe import distributed
from vwe.config import Config
from vwe.data import Dataset, batches, load_dataset
from vwe.files import atomic_write

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{4,})\.pt$")
TEMP_RE = re.compile(r"^\..+\.tmp\d+$")  # atomic_write's temp names: .<name>.tmp<pid>
# After torch's zip bytes: this marker and the SHA-256 of those bytes. torch.load ignores trailing
# bytes and never checks the zip's CRCs (a flipped byte in a tensor loads silently): we do.
FOOTER_MAGIC = b"\nvwe-sha256\n"
FOOTER_SIZE = len(FOOTER_MAGIC) + 32
KEEP_CHECKPOINTS = 2  # the newest and one to fall back on if the newest is damaged


class RunError(RuntimeError):
    """Base of the errors that stop a run with a message meant for the user."""


class NonFiniteLossError(RunError):
    """The training loss (or the weights) became NaN or infinite."""


class CheckpointError(RunError):
    """A checkpoint file could not be read, or does not belong to this kind of run."""


class RunDirBusyError(RunError):
    """Another process is training in the same run directory."""


class ConfigMismatchError(ValueError):
    """A resume was asked with a config that differs from the checkpoint's."""


# ----------------------------------------------------------------------------- checkpoints


def provenance(device: torch.device) -> dict:
    """Where a result came from: git revision, torch version, device name, time."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"git": rev, "torch": str(torch.__version__), "device": name,
            "processes": distributed.world(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a checkpoint dict atomically: torch's zip bytes, then FOOTER_MAGIC and their SHA-256."""

    def write(tmp: Path) -> None:
        # Serialised in memory first: torch's own file writer reports a full disk as a bare
        # RuntimeError ("unexpected pos"), a Python write as OSError(ENOSPC).
        buf = io.BytesIO()
        torch.save(state, buf)
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.write(FOOTER_MAGIC + hashlib.sha256(buf.getbuffer()).digest())

    try:
        atomic_write(path, write)
    except OSError as e:
        raise OSError(e.errno, f"could not write checkpoint {path} ({e.strerror or e}); the previous "
                      "checkpoint is untouched. Free some disk space and rerun to resume.") from e


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with `weights_only=True`: tensors and plain containers only, no code runs.

    Raises FileNotFoundError when there is no file, CheckpointError when it is truncated, corrupt
    (its SHA-256 footer does not match), refused by the safe unpickler, or not written by vwe.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    blob = path.read_bytes()
    source: Path | io.BytesIO = path  # no footer: written before vwe added one, loaded unverified
    if blob[-FOOTER_SIZE:-32] == FOOTER_MAGIC:
        body = memoryview(blob)[:-FOOTER_SIZE]
        if hashlib.sha256(body).digest() != blob[-32:]:
            raise CheckpointError(f"checkpoint {path} is corrupt: its bytes no longer match the "
                                  "SHA-256 written with it (a damaged disk or an interrupted copy)")
        source = io.BytesIO(body)
    try:
        state = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, refused global: all mean "not a good file"
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [""]
        reason = next((ln for ln in lines if "unsupported global" in ln.lower()), lines[0])[:300]
        raise CheckpointError(f"checkpoint {path} is damaged or not a plain checkpoint, nothing in it "
                              f"was run ({type(e).__name__}: {reason})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a vwe checkpoint dict")
    missing = {"model", "optimizer", "config", "epoch", "metrics"} - set(state)
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {sorted(missing)}; was it written by vwe?")
    return state


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints in `run_dir`, newest epoch first (temp files of interrupted writes are ignored)."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("checkpoint-*.pt")
             if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(run_dir: str | Path, map_location="cpu") -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, falling back past damaged ones with a warning.

    None when the directory holds no checkpoint; CheckpointError when it holds some but none loads
    (silently starting over would overwrite them one epoch at a time).
    """
    damaged = []
    for path in list_checkpoints(run_dir):
        try:
            return path, load_checkpoint(path, map_location)
        except FileNotFoundError:
            continue  # pruned by a run training in this directory since we listed it
        except CheckpointError as e:
            damaged.append(path.name)
            warnings.warn(f"{e}; falling back to the previous checkpoint", stacklevel=2)
    if damaged:
        raise CheckpointError(
            f"none of the checkpoints in {run_dir} loads ({', '.join(damaged)}; the warnings above "
            "say why). Move them away, or start over with fresh=True (--fresh)."
        )
    return None


@contextmanager
def lock_run_dir(run_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `run_dir` (its `.lock` file) or raise RunDirBusyError at once.

    Two processes writing one run directory would interleave their checkpoints and metrics. The
    kernel drops the lock when its process dies, even by SIGKILL, so a killed run never leaves a
    stale lock behind.
    """
    if fcntl is None:
        yield
        return
    with open(Path(run_dir) / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RunDirBusyError(f"{run_dir} is in use by another run (pid {holder}); wait for it to "
                                  "finish, or use another run directory") from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")  # for the message above, in the process that waits
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_temp_files(run_dir: str | Path) -> None:
    """Delete the temp files of writes that a kill interrupted (call it holding the run's lock)."""
    for p in Path(run_dir).iterdir():
        if TEMP_RE.match(p.name):
            p.unlink(missing_ok=True)


def differences(saved: dict, current: dict) -> list[str]:
    """The entries of `current` whose values `saved` does not share, as 'name: saved -> current'."""
    return [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in current.items()
            if _plain(saved.get(k)) != _plain(v)]


def _plain(v):
    """Tuples and lists compare equal after a round trip through a checkpoint."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return list(v) if isinstance(v, (tuple, list)) else v


def write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    """Rewrite the run's metrics log (one JSON line per epoch) atomically."""
    text = "".join(json.dumps(m) + "\n" for m in metrics)
    atomic_write(run_dir / METRICS_FILE, lambda tmp: tmp.write_text(text))


def discard_run(run_dir: Path) -> None:
    """What `fresh=True` removes: the run's checkpoints and its metrics log."""
    for p in list_checkpoints(run_dir):
        p.unlink()
    (run_dir / METRICS_FILE).unlink(missing_ok=True)


def resolve_data(cfg: Config, data: Dataset | None) -> tuple[Config, Dataset]:
    """`data` cut to cfg's sizes (loaded when None), and cfg with the dataset that "auto" became."""
    if data is None:
        with distributed.main_first():  # one process downloads and caches, the others read
            data = load_dataset(cfg.dataset, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.data_seed,
                                validation=cfg.validation)
    else:
        data = data.cut(cfg.n_train, cfg.n_test, cfg.validation)
    return cfg.replace(dataset=data.name), data


# ----------------------------------------------------------------------------- resume


def rng_state(shuffle_gen: torch.Generator, aug_gen: torch.Generator) -> dict:
    """The run's random streams, as a checkpoint holds them."""
    return {"shuffle": shuffle_gen.get_state(), "augment": aug_gen.get_state(),
            "torch": torch.get_rng_state()}


def restore_rng(state: dict, path: Path, seed: int, shuffle_gen: torch.Generator,
                aug_gen: torch.Generator) -> None:
    """Put a checkpoint's random streams back (`seed` restarts augmentation across device kinds)."""
    rng = state["rng"]
    # map_location moved every tensor to the training device, but generator states live on the CPU.
    shuffle_gen.set_state(rng["shuffle"].cpu())
    torch.set_rng_state(rng["torch"].cpu())
    try:
        aug_gen.set_state(rng["augment"].cpu())
    except RuntimeError:  # a CUDA generator's state, resumed on the CPU (or the reverse)
        warnings.warn(f"{path.name} was written on another kind of device: the augmentation random "
                      "stream restarts, so this run will not match an uninterrupted one bit for bit",
                      stacklevel=4)
        aug_gen.manual_seed(seed + 1 + state["epoch"])


def check_resumable(state: dict, path: Path, key: dict, saved_key: dict, epochs: int, run_dir: Path) -> None:
    """ConfigMismatchError unless the checkpoint `state` (whose run key is `saved_key`) continues this
    run (run key `key`, `epochs` epochs); CheckpointError when it cannot be resumed exactly."""
    diffs = differences(saved_key, key)
    if diffs:
        raise ConfigMismatchError(
            f"{run_dir} holds a run with another config ({path.name}):\n  " + "\n  ".join(diffs)
            + "\nUse another run directory, or fresh=True (--fresh) to discard it and start over."
        )
    if state["epoch"] > epochs:
        raise ConfigMismatchError(
            f"{run_dir} holds {state['epoch']} epochs of this run ({path.name}), more than the "
            f"{epochs} asked for, and a run cannot be shortened. Ask for epochs={state['epoch']} (or "
            "more), use another run directory, or fresh=True (--fresh) to discard it and start over."
        )
    if "rng" not in state:
        raise CheckpointError(f"checkpoint {path} has no random states, so it cannot be resumed "
                              "exactly; start over with fresh=True (--fresh)")


def resume_run(run_dir: Path, device: torch.device, load: Callable[[dict, Path], None],
               config: dict) -> tuple[int, list[dict], Path | None]:
    """Pick up a run directory (locked by the caller): the epochs done, their metrics, the checkpoint.

    `load(state, path)` checks the newest checkpoint against the run and loads it into the fresh
    model, optimizer and generators (or raises). Then metrics.jsonl is cut back to that checkpoint's
    epochs and config.json rewritten with `config` (by rank 0). (0, [], None) for a directory without
    one. Under torchrun every process calls it after rank 0 has prepared the directory
    (`prepare_run_dir`), and all of them find the same newest checkpoint.
    """
    start, metrics, checkpoint = 0, [], None
    found = latest_checkpoint(run_dir, map_location=device)
    if found:
        checkpoint, state = found
        load(state, checkpoint)
        start, metrics = state["epoch"], state["metrics"]
    if distributed.is_main():
        write_metrics(run_dir, metrics)  # drop epochs logged after the checkpoint we resume from
        config_text = json.dumps(config, indent=2) + "\n"
        atomic_write(run_dir / CONFIG_FILE, lambda tmp: tmp.write_text(config_text))
    return start, metrics, checkpoint


@contextmanager
def prepare_run_dir(run_dir: Path, fresh: bool) -> Iterator[None]:
    """Rank 0 creates and locks `run_dir` for the block, removes interrupted writes' temp files, and
    with `fresh` discards the old run; the other processes wait until it has (then only read)."""
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
    with lock_run_dir(run_dir) if distributed.is_main() else nullcontext():
        if distributed.is_main():
            remove_temp_files(run_dir)
            if fresh:
                discard_run(run_dir)
        distributed.barrier()
        yield


def save_epoch(run_dir: Path, epoch: int, state: dict, metrics: list[dict]) -> Path:
    """Rank 0 writes the epoch's checkpoint, then the metrics log, then prunes old checkpoints.

    After the checkpoint: the log never lists an epoch that no checkpoint holds, and a kill between
    the two is repaired by the rewrite from the checkpoint on resume. Returns the checkpoint's path.
    """
    checkpoint = run_dir / f"checkpoint-{epoch:04d}.pt"
    if distributed.is_main():
        save_checkpoint(checkpoint, state)
        write_metrics(run_dir, metrics)
        for old in list_checkpoints(run_dir)[KEEP_CHECKPOINTS:]:
            old.unlink()
    return checkpoint


# ----------------------------------------------------------------------------- the epoch loop


def train_one_epoch(
    step: Callable[..., torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
    batch_size: int,
    shuffle_gen: torch.Generator,
    epoch: int,
    progress: bool = True,
) -> float:
    """One pass over `inputs` (images (N, 3, 32, 32) uint8, then labels (N,) for a step that takes
    them) on the training device; returns the mean loss.

    `step(*batch)` is one optimisation step on a batch of each input, returning the loss. Raises
    NonFiniteLossError naming the epoch and step of the first non-finite loss. The check happens
    once at the end of the epoch: a per-step `loss.item()` is a CPU-GPU sync point that would stall
    the GPU every step.
    """
    n, device = len(inputs[0]), inputs[0].device
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"{n} training images are fewer than one batch of {batch_size}")
    losses = torch.zeros(steps, device=device)
    order = batches(n, batch_size, shuffle=True, generator=shuffle_gen, drop_last=True, device=device)
    for i, idx in enumerate(tqdm(order, total=steps, desc=f"epoch {epoch}", leave=False,
                                 disable=not progress)):
        losses[i] = step(*(x[idx] for x in inputs))
    # each process's losses are its slices' means: their average is the global batches' mean loss,
    # the same bits on every process, so all of them stop together on a NaN
    losses = distributed.sum_across(losses) / distributed.world()
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise NonFiniteLossError(
            f"non-finite loss {losses[i].item()} at epoch {epoch}, step {i + 1} of {steps}; the run "
            "stopped and the last checkpoint is intact. Lower the learning rate or check the input data."
        )
    return losses.mean().item()


def check_weights(model: nn.Module, scores: dict[str, float], epoch: int) -> None:
    """NonFiniteLossError when the weights (or the held-out scores) are NaN/inf after `epoch`, before
    they are checkpointed.

    The last step's update is never seen by a training loss: a checkpoint of broken weights would
    fail every resume from it.
    """
    finite = torch.stack([p.isfinite().all() for p in model.parameters()]).all()  # one sync
    if not (all(math.isfinite(v) for v in scores.values()) and finite):
        held_out = ", ".join(f"{k} {v}" for k, v in scores.items())
        raise NonFiniteLossError(
            f"the weights became non-finite at the end of epoch {epoch} ({held_out}); the run stopped "
            "before checkpointing them and the last checkpoint is intact. Lower the learning rate."
        )


def run_epochs(
    run_dir: Path,
    cfg: Config,
    data: Dataset,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    make_step: Callable[[torch.Generator], Callable[..., torch.Tensor]],
    evaluate: Callable[[], dict[str, float]],
    run_key: Callable[[dict], dict],
    batch_size: int,
    *,
    name: str,
    labels: bool = False,
    lr_at: Callable[[int], float] | None = None,
    record: dict | None = None,
    fresh: bool = False,
    progress: bool = True,
) -> tuple[Path, list[dict]]:
    """Train `model` in `run_dir` up to `cfg.epochs` epochs, checkpointing each; returns the newest
    checkpoint's path and the metrics of every epoch.

    What the trainer supplies: `make_step(aug_gen)`, its training step (called after a resume has
    loaded the optimizer), which takes an image batch and, with `labels`, the labels' batch;
    `evaluate()`, the held-out scores that go into the metrics (e.g. {"test_loss": ...});
    `run_key(state)`, what a checkpoint (or {"config": ..., **record}) must share with this run for
    a resume; `lr_at(epoch)`, the learning rate of each 1-based epoch (None keeps the optimizer's);
    `record`, entries the checkpoints and config.json carry besides the config. `data` is on the
    training device. `fresh=True` discards the directory's run instead of resuming, once the lock
    is held.
    """
    record = record or {}
    device = data.train_images.device
    progress = progress and distributed.is_main()
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    key = run_key({"config": cfg.to_dict(), **record})

    def load(state: dict, path: Path) -> None:
        check_resumable(state, path, key, run_key(state), cfg.epochs, run_dir)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {path} does not fit a {name} model: {e}") from e
        restore_rng(state, path, cfg.seed, shuffle_gen, aug_gen)

    with prepare_run_dir(run_dir, fresh):
        start, metrics, checkpoint = resume_run(run_dir, device, load,
                                                {**cfg.to_dict(), **record, "data": data.provenance()})
        step = make_step(aug_gen)
        inputs = (data.train_images, data.train_labels) if labels else (data.train_images,)
        seen = (len(data.train_images) // batch_size) * batch_size  # images per epoch

        epochs = tqdm(range(start + 1, cfg.epochs + 1), initial=start, total=cfg.epochs, desc=name,
                      disable=not progress)
        for epoch in epochs:
            lr = {}
            if lr_at is not None:
                lr = {"lr": lr_at(epoch)}
                for group in optimizer.param_groups:
                    group["lr"] = lr["lr"]
            t0 = time.perf_counter()
            model.train()
            train_loss = train_one_epoch(step, inputs, batch_size, shuffle_gen, epoch, progress)
            seconds = time.perf_counter() - t0  # train_one_epoch ends on a sync, so this is real time
            distributed.sync_buffers(model)  # rank 0's BatchNorm statistics, for evaluation and saving
            scores = evaluate()
            check_weights(model, scores, epoch)
            metrics.append({"epoch": epoch, **lr, "train_loss": train_loss, **scores,
                            "seconds": round(seconds, 3), "images_per_s": round(seen / seconds, 1)})
            checkpoint = save_epoch(run_dir, epoch, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "config": cfg.to_dict(), **record, "epoch": epoch, "metrics": metrics,
                "data": data.provenance(), "rng": rng_state(shuffle_gen, aug_gen),
                "provenance": provenance(device),
            }, metrics)
            epochs.set_postfix(train=f"{train_loss:.4f}", **{k: f"{v:.4g}" for k, v in scores.items()},
                               img_s=f"{metrics[-1]['images_per_s']:.0f}")
    model.eval()
    return checkpoint, metrics
