"""A run folder: its checkpoints, its lock, resuming it (`open_run`) and saving each epoch (`Run.save`).

A run's progress is one number, its global step: the optimisation steps it has trained in all
(`Run.global_step`, a checkpoint's "global_step"). The whole epochs done, the steps into the next,
the fractional epoch a metrics entry shows and the checkpoint's file name all derive from it and the
steps of an epoch (`epoch_and_step`, `epochs_begun`, `fractional_epochs`, `checkpoint_name`); only
this module reads a checkpoint's name.

A run directory holds the last two checkpoints, `checkpoint-EEEE.pt` after EEEE whole epochs
(`checkpoint-EEEE-SSSSSS.pt` when a time box or `Config.steps` stopped the run SSSSSS steps into epoch
EEEE + 1), `metrics.jsonl` (one line per epoch), `config.json` and `.lock`. Every file is written to
a temp name and renamed, so a reader sees the old file or the new one; a checkpoint ends in a SHA-256
footer, so a file damaged later on disk is caught instead of loaded. Rerunning with the same config
resumes from the newest checkpoint that loads and rewrites the metrics log from it: a kill at any
point leaves neither duplicated nor missing epochs. One process at a time may train in a run directory.

Both trainers (`vwe.pretrain`, `vwe.supervised`) open their run folder here and train in it with
`vwe.engine.fit` (docs/design.md, Runs, checkpoints and records). What a checkpoint must share with
the run that resumes it is the config's `identity` (`vwe.config.Config.identity`). Under torchrun
every process resumes from the same checkpoint, and rank 0 alone holds the lock and writes the files.
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
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, run directories are not guarded
    fcntl = None

import torch
from torch import nn

from vwe import distributed
from vwe.config import PROFILES, Config
from vwe.data import Dataset, full_batches, project_dir
from vwe.files import atomic_write, write_json

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{4,})(?:-(\d{6,}))?\.pt$")  # `checkpoint_name`'s: epochs, steps
TEMP_RE = re.compile(r"^\..+\.tmp\d+$")  # atomic_write's temp names: .<name>.tmp<pid>
# After torch's zip bytes: this marker and the SHA-256 of those bytes. torch.load ignores trailing
# bytes and never checks the zip's CRCs (a flipped byte in a tensor loads silently): we do.
FOOTER_MAGIC = b"\nvwe-sha256\n"
FOOTER_SIZE = len(FOOTER_MAGIC) + 32
# A zip ends in its end-of-central-directory record, 22 bytes that start so (torch writes no zip
# comment): a file that ends in one has no footer; any other tail must be a whole, intact footer.
ZIP_END = b"PK\x05\x06"
ZIP_END_SIZE = 22
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


def profile_dir(profile: str, epochs: int | None = None) -> Path:
    """Where a profile's runs live: runs/<profile> in the repository (the course's notebooks, the CLI,
    the table). Another number of `epochs` than the profile's gets a folder of its own
    (runs/cpu-30ep), or its runs would resume, or refuse to shorten, the course's."""
    name = profile if epochs in (None, PROFILES[profile].epochs) else f"{profile}-{epochs}ep"
    return project_dir() / "runs" / name


# ----------------------------------------------------------------------------- the position


def epoch_and_step(global_step: int, steps_per_epoch: int) -> tuple[int, int]:
    """A global step -> (whole epochs done, steps into the next)."""
    return divmod(global_step, steps_per_epoch)


def epochs_begun(global_step: int, steps_per_epoch: int) -> int:
    """The epochs a global step has begun: the whole ones, and the one it stopped inside if any."""
    return -(-global_step // steps_per_epoch)


def fractional_epochs(global_step: int, steps_per_epoch: int) -> int | float:
    """The epochs a global step has trained, as a metrics entry's "epoch" gives them: an int at an
    epoch's end, else floored to 1e-4, so that a stopped epoch never reads as a whole one."""
    epoch, step = epoch_and_step(global_step, steps_per_epoch)
    return epoch if step == 0 else math.floor((epoch + step / steps_per_epoch) * 1e4) / 1e4


def checkpoint_name(global_step: int, steps_per_epoch: int) -> str:
    """The file a run's checkpoint at `global_step` is saved as: checkpoint-EEEE.pt after EEEE whole
    epochs, checkpoint-EEEE-SSSSSS.pt SSSSSS steps into epoch EEEE + 1 (`CHECKPOINT_RE` reads it)."""
    epoch, step = epoch_and_step(global_step, steps_per_epoch)
    return f"checkpoint-{epoch:04d}-{step:06d}.pt" if step else f"checkpoint-{epoch:04d}.pt"


def saved_global_step(state: dict, steps_per_epoch: int) -> int:
    """A checkpoint's global step: its "global_step"; a checkpoint written before that key holds its
    whole epochs ("epoch") and the steps into the next ("step", absent at an epoch's end) instead."""
    if "global_step" in state:
        return int(state["global_step"])
    return state["epoch"] * steps_per_epoch + state.get("step", 0)


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
    source: Path | io.BytesIO = path  # ends at its zip: written before vwe added a footer, unverified
    if blob[-FOOTER_SIZE:-32] != FOOTER_MAGIC and blob[-ZIP_END_SIZE:][:4] != ZIP_END:
        # bytes after the zip that are no footer: a footer damaged or cut off. torch.load would skip
        # them and load the file unverified, the very case the footer is there to catch.
        raise CheckpointError(f"checkpoint {path} is corrupt: its SHA-256 footer is damaged or cut off "
                              "(a damaged disk or an interrupted copy)")
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
    """Checkpoints in `run_dir`, newest (the furthest global step) first, as their names say (temp files
    of interrupted writes are ignored)."""
    found = [((int(m.group(1)), int(m.group(2) or 0)), p) for p in Path(run_dir).glob("checkpoint-*.pt")
             if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def epochs_saved(run_dir: str | Path) -> int:
    """The whole epochs the newest checkpoint in `run_dir` holds, as its name says (a time box's steps
    into the next epoch not counted); 0 without a checkpoint. Nothing is loaded."""
    checkpoints = list_checkpoints(run_dir)
    return int(CHECKPOINT_RE.match(checkpoints[0].name).group(1)) if checkpoints else 0


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


# ----------------------------------------------------------------------------- resume


def rng_state(shuffle_gen: torch.Generator, aug_gen: torch.Generator) -> dict:
    """The run's random streams, as a checkpoint holds them."""
    return {"shuffle": shuffle_gen.get_state(), "augment": aug_gen.get_state(),
            "torch": torch.get_rng_state()}


def restore_rng(state: dict, path: Path, restart_seed: int, shuffle_gen: torch.Generator,
                aug_gen: torch.Generator) -> None:
    """Put a checkpoint's random streams back; the augmentation stream of another kind of device
    cannot be, and restarts from `restart_seed`."""
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
        aug_gen.manual_seed(restart_seed)


def check_resumable(state: dict, path: Path, key: dict, saved_key: dict, epochs: int, steps_per_epoch: int,
                    run_dir: Path) -> None:
    """ConfigMismatchError unless the checkpoint `state` (whose run key is `saved_key`) continues this
    run (run key `key`, `epochs` epochs of `steps_per_epoch` steps); CheckpointError when it cannot be
    resumed exactly."""
    diffs = differences(saved_key, key)
    if diffs:
        raise ConfigMismatchError(
            f"{run_dir} holds a run with another config ({path.name}):\n  " + "\n  ".join(diffs)
            + "\nUse another run directory, or fresh=True (--fresh) to discard it and start over."
        )
    started = epochs_begun(saved_global_step(state, steps_per_epoch), steps_per_epoch)
    if started > epochs:
        raise ConfigMismatchError(
            f"{run_dir} holds {started} epochs of this run ({path.name}), more than the "
            f"{epochs} asked for, and a run cannot be shortened. Ask for epochs={started} (or "
            "more), use another run directory, or fresh=True (--fresh) to discard it and start over."
        )
    if "rng" not in state:
        raise CheckpointError(f"checkpoint {path} has no random states, so it cannot be resumed "
                              "exactly; start over with fresh=True (--fresh)")


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


def save_epoch(run_dir: Path, name: str, state: dict, metrics: list[dict]) -> Path:
    """Rank 0 writes the checkpoint `state` as `name` (`checkpoint_name`), then the metrics log, then
    prunes old checkpoints.

    After the checkpoint: the log never lists an epoch that no checkpoint holds, and a kill between
    the two is repaired by the rewrite from the checkpoint on resume. Returns the checkpoint's path.
    """
    checkpoint = run_dir / name
    if distributed.is_main():
        save_checkpoint(checkpoint, state)
        write_metrics(run_dir, metrics)
        for old in list_checkpoints(run_dir)[KEEP_CHECKPOINTS:]:
            old.unlink()
    return checkpoint


class Run:
    """A run folder held for training (made by `open_run`): its position, the global step (the
    optimisation steps trained in all; a run stopped inside an epoch also holds that epoch's losses so
    far), the metrics, the random streams, and `save` for each new position.

    `batch_size` is the run's global batch in images (its config's unless given), which with the
    training images sets `steps_per_epoch`: the epochs, the step inside one and the checkpoints'
    names derive from the global step with it. `identity` is what a checkpoint must share with this
    run to be resumed by it (config fields, `vwe.config.Config.identity`); `record`, entries the
    checkpoints and config.json carry besides the config (the supervised recipe), which are part of
    the identity too.
    """

    def __init__(self, run_dir: Path, name: str, cfg: Config, identity: dict, record: dict, data: Dataset,
                 device: torch.device, batch_size: int | None = None):
        self.dir, self.name, self.cfg, self.record, self.device = run_dir, name, cfg, record, device
        self.batch_size = batch_size or cfg.batch_size
        self.n_train = len(data.train_labels)
        self.identity = {**identity, **record}
        self.data = data.provenance()
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed)
        self.aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        self.global_step, self.metrics, self.checkpoint = 0, [], None
        # the losses of the epoch that `global_step` is inside, (its steps into it,); None at an epoch's end
        self.epoch_losses = None

    @property
    def steps_per_epoch(self) -> int:
        """The full batches of `batch_size` in the training images."""
        return full_batches(self.n_train, self.batch_size)

    def saved_identity(self, state: dict) -> dict:
        """A checkpoint's identity; a field it predates counts as its default, which is what it used."""
        config = {**Config().to_dict(), **state["config"]}
        return {k: state.get(k, {}) if k in self.record else config.get(k) for k in self.identity}

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Load the newest checkpoint into `model`, `optimizer` and the random streams, after checking
        that it continues this run (ConfigMismatchError, CheckpointError); then cut metrics.jsonl back
        to its epochs and rewrite config.json (rank 0). A folder without a checkpoint starts at global
        step 0.
        """
        found = latest_checkpoint(self.dir, map_location=self.device)
        if found:
            path, state = found
            check_resumable(state, path, self.identity, self.saved_identity(state), self.cfg.epochs,
                            self.steps_per_epoch, self.dir)
            try:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as e:
                raise CheckpointError(f"checkpoint {path} does not fit a {self.name} model: {e}") from e
            self.global_step = saved_global_step(state, self.steps_per_epoch)
            epoch, _ = epoch_and_step(self.global_step, self.steps_per_epoch)
            restore_rng(state, path, self.cfg.seed + 1 + epoch, self.shuffle_gen, self.aug_gen)
            self.metrics, self.checkpoint = state["metrics"], path
            self.epoch_losses = state.get("epoch_losses")
        if distributed.is_main():
            write_metrics(self.dir, self.metrics)  # drop epochs logged after the checkpoint we resume from
            config = {**self.cfg.to_dict(), **self.record, "data": self.data}
            write_json(self.dir / CONFIG_FILE, config)

    def save(self, global_step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             epoch_losses: torch.Tensor | None = None) -> None:
        """Checkpoint the run at `global_step` (its metrics appended to `self.metrics` already): rank 0
        writes it, as `checkpoint_name` names it. Inside an epoch, `epoch_losses` are that epoch's
        losses so far, (its steps into it,), and the shuffle stream must be the state its order was
        drawn from, so that a resume redraws it; at an epoch's end they are not kept.

        Besides "global_step" a checkpoint holds its whole epochs ("epoch") and, inside an epoch, the
        steps into it ("step") and their losses ("epoch_losses"), as checkpoints did before the global
        step, for the code that reads those (an older revision resuming the run, `vwe.embed`'s record).
        """
        epoch, step = epoch_and_step(global_step, self.steps_per_epoch)
        if step and (epoch_losses is None or len(epoch_losses) != step):
            raise ValueError(f"global step {global_step} is {step} steps into an epoch: give their losses")
        self.global_step, self.epoch_losses = global_step, epoch_losses if step else None
        partial = {"step": step, "epoch_losses": epoch_losses} if step else {}
        self.checkpoint = save_epoch(self.dir, checkpoint_name(global_step, self.steps_per_epoch), {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "config": self.cfg.to_dict(), **self.record,
            "global_step": global_step, "epoch": epoch, **partial, "metrics": self.metrics, "data": self.data,
            "rng": rng_state(self.shuffle_gen, self.aug_gen),
            "provenance": provenance(self.device),
        }, self.metrics)


@contextmanager
def open_run(run_dir: str | Path, name: str, cfg: Config, identity: dict, data: Dataset,
             device: torch.device, record: dict | None = None, fresh: bool = False,
             batch_size: int | None = None) -> Iterator[Run]:
    """Hold `run_dir` for training for the block (`prepare_run_dir`) and give its `Run`, training in
    global batches of `batch_size` images (None: the config's); call `run.resume(model, optimizer)`
    first. `fresh=True` discards the folder's run once the lock is held."""
    run_dir = Path(run_dir)
    with prepare_run_dir(run_dir, fresh):
        yield Run(run_dir, name, cfg, identity, record or {}, data, device, batch_size)
