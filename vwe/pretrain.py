"""Pretraining: `train_one_epoch`, `evaluate`, atomic checkpoints, and the resumable `pretrain` loop.

A run directory holds `checkpoint-EEEE.pt` (the last two epochs), `metrics.jsonl` (one line per
finished epoch) and `config.json`. Rerunning `pretrain` with the same config resumes from the newest
checkpoint that loads; the metrics log is rewritten from that checkpoint, so a kill at any point
leaves neither duplicated nor missing epochs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vwe.config import Config, resolve_device
from vwe.data import Dataset, batches, load_dataset, to_float
from vwe.models import Autoencoder, build_model
from vwe.train_step import make_train_step

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{4,})\.pt$")
KEEP_CHECKPOINTS = 2  # the newest and one to fall back on if the newest is damaged
# Fields that may change between a run and its resume: how long, where, how fast, how it is judged.
RESUMABLE_FIELDS = {"profile", "epochs", "device", "compile", "eval_batch_size"} | {
    "probe_epochs", "probe_batch_size", "probe_lr", "probe_seeds",
}


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read."""


class ConfigMismatchError(ValueError):
    """A resume was asked with a config that differs from the checkpoint's."""


# ----------------------------------------------------------------------------- the two loops


def train_one_epoch(
    step: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int,
    shuffle_gen: torch.Generator,
    epoch: int,
    progress: bool = True,
) -> float:
    """One pass over `images` (N, 3, 32, 32) uint8 on the training device; returns the mean loss.

    `step` is `make_train_step(...)`: one optimisation step on a uint8 batch, returning the loss.
    Raises NonFiniteLossError naming the epoch and step of the first non-finite loss. The check
    happens once at the end of the epoch: a per-step `loss.item()` is a CPU-GPU sync point that
    would stall the GPU every step.
    """
    device = images.device
    steps = len(images) // batch_size
    if steps == 0:
        raise ValueError(f"{len(images)} training images are fewer than one batch of {batch_size}")
    losses = torch.zeros(steps, device=device)
    order = batches(len(images), batch_size, shuffle=True, generator=shuffle_gen,
                    drop_last=True, device=device)
    for i, idx in enumerate(tqdm(order, total=steps, desc=f"epoch {epoch}", leave=False,
                                 disable=not progress)):
        losses[i] = step(images[idx])
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise NonFiniteLossError(
            f"non-finite loss {losses[i].item()} at epoch {epoch}, step {i}; the run stopped "
            "and the last checkpoint is intact. Lower the learning rate or check the input data."
        )
    return losses.mean().item()


@torch.no_grad()
def evaluate(model: Autoencoder, images: torch.Tensor, batch_size: int = 1024) -> float:
    """Mean reconstruction loss over `images` (N, 3, 32, 32) uint8: eval mode, no augmentation."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=images.device)
    use_bf16 = images.device.type == "cuda"
    for idx in batches(len(images), batch_size, shuffle=False, device=images.device):
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            total += model.forward_loss(to_float(images[idx])).float() * len(idx)
    model.train(was_training)
    return (total / len(images)).item()


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
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)`, fsync, then rename over `path`: readers see the old file or the new one,
    never half of one. A failure (a full disk, say) leaves `path` untouched and removes the temp file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a checkpoint dict atomically."""
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except OSError as e:
        raise OSError(e.errno, f"could not write checkpoint {path} ({e.strerror}); the previous "
                      "checkpoint is untouched. Free some disk space and rerun to resume.") from e


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with `weights_only=True`: tensors and plain containers only, no code runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, refused global: all mean "not a good file"
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [""]
        reason = next((ln for ln in lines if "Unsupported global" in ln), lines[0])[:300]
        raise CheckpointError(f"checkpoint {path} is damaged or not a plain checkpoint "
                              f"({type(e).__name__}: {reason})") from e
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
    """The newest checkpoint that loads, falling back past damaged ones with a warning."""
    for path in list_checkpoints(run_dir):
        try:
            return path, load_checkpoint(path, map_location)
        except CheckpointError as e:
            warnings.warn(f"{e}; falling back to the previous checkpoint", stacklevel=2)
    return None


def config_differences(saved: dict, current: Config) -> list[str]:
    """Fields (other than RESUMABLE_FIELDS) whose values differ, as 'name: saved -> current'."""
    now = current.to_dict()
    return [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in now
            if k not in RESUMABLE_FIELDS and _plain(saved.get(k)) != _plain(now[k])]


def _plain(v):
    """Tuples and lists compare equal after a round trip through a checkpoint."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return list(v) if isinstance(v, (tuple, list)) else v


# ----------------------------------------------------------------------------- the run


@dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path
    model: Autoencoder
    metrics: list[dict]
    config: Config
    dataset: str  # what actually ran: "cifar100" or "shapes"


def _rng_state(shuffle_gen: torch.Generator, aug_gen: torch.Generator) -> dict:
    return {"shuffle": shuffle_gen.get_state(), "augment": aug_gen.get_state(),
            "torch": torch.get_rng_state()}


def _write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    text = "".join(json.dumps(m) + "\n" for m in metrics)
    atomic_write(run_dir / METRICS_FILE, lambda tmp: tmp.write_text(text))


def pretrain(
    cfg: Config,
    run_dir: str | Path,
    data: Dataset | None = None,
    fresh: bool = False,
    progress: bool = True,
) -> PretrainResult:
    """Train `cfg.model` for `cfg.epochs` epochs, checkpointing every epoch, resuming when possible.

    `data` defaults to `load_dataset(cfg.dataset, ...)`. `fresh=True` discards earlier checkpoints
    of this run directory instead of resuming (also needed to change the config of a run).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    for stale in run_dir.glob(".checkpoint-*.pt.tmp*"):
        stale.unlink()  # a write interrupted by a kill
    if fresh:
        for p in list_checkpoints(run_dir):
            p.unlink()
        (run_dir / METRICS_FILE).unlink(missing_ok=True)

    if data is None:
        data = load_dataset(cfg.dataset, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.data_seed)
    else:
        data = data.subset(cfg.n_train, cfg.n_test)
    cfg = cfg.replace(dataset=data.name)  # record what "auto" resolved to
    train_images = data.train_images.to(device)
    test_images = data.test_images.to(device)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.tower, cfg.encoding).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=device.type == "cuda")
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    metrics: list[dict] = []
    start = 0

    found = latest_checkpoint(run_dir, map_location=device)
    if found:
        path, state = found
        diffs = config_differences(state["config"], cfg)
        if diffs:
            raise ConfigMismatchError(
                f"{run_dir} holds a run with another config ({path.name}):\n  " + "\n  ".join(diffs)
                + "\nUse another run directory, or fresh=True (--fresh) to discard it and start over."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        shuffle_gen.set_state(state["rng"]["shuffle"])
        aug_gen.set_state(state["rng"]["augment"])
        torch.set_rng_state(state["rng"]["torch"])
        start, metrics = state["epoch"], state["metrics"]
    step = make_train_step(model, optimizer, cfg.aug if cfg.augment else None, aug_gen, device,
                           compile=cfg.compile)
    _write_metrics(run_dir, metrics)  # drop epochs logged after the checkpoint we resume from
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    checkpoint = list_checkpoints(run_dir)[0] if found else None

    epochs = tqdm(range(start + 1, cfg.epochs + 1), initial=start, total=cfg.epochs,
                  desc=cfg.run_name, disable=not progress)
    for epoch in epochs:
        t0 = time.perf_counter()
        model.train()
        train_loss = train_one_epoch(step, train_images, cfg.batch_size, shuffle_gen, epoch, progress)
        seconds = time.perf_counter() - t0  # train_one_epoch ends on a sync, so this is real time
        test_loss = evaluate(model, test_images, cfg.eval_batch_size)
        seen = (len(train_images) // cfg.batch_size) * cfg.batch_size
        metrics.append({"epoch": epoch, "train_loss": train_loss, "test_loss": test_loss,
                        "seconds": round(seconds, 3), "images_per_s": round(seen / seconds, 1)})
        checkpoint = run_dir / f"checkpoint-{epoch:04d}.pt"
        save_checkpoint(checkpoint, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "config": cfg.to_dict(), "epoch": epoch, "metrics": metrics,
            "rng": _rng_state(shuffle_gen, aug_gen), "provenance": provenance(device),
        })
        with open(run_dir / METRICS_FILE, "a") as f:  # after the checkpoint: see the module docstring
            f.write(json.dumps(metrics[-1]) + "\n")
        for old in list_checkpoints(run_dir)[KEEP_CHECKPOINTS:]:
            old.unlink()
        epochs.set_postfix(train=f"{train_loss:.4f}", test=f"{test_loss:.4f}",
                           img_s=f"{metrics[-1]['images_per_s']:.0f}")
    model.eval()
    return PretrainResult(run_dir, checkpoint, model, metrics, cfg, data.name)


def load_pretrained(path: str | Path, device: str = "auto") -> tuple[Autoencoder, Config, dict]:
    """A trained model in eval mode from a checkpoint file or a run directory (its newest checkpoint).

    Returns (model, config, checkpoint dict).
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
    cfg = Config.from_dict(state["config"])
    model = build_model(cfg.model, cfg.tower, cfg.encoding).to(dev)
    model.load_state_dict(state["model"])
    return model.eval(), cfg, state
