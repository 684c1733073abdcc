"""Faults injected on purpose into a run: kills, damaged and hostile checkpoints, another config, a
non-finite loss, a full disk, a busy run directory.

Each test breaks one thing and asserts what the user sees, that nothing is lost and that nothing
in a file is executed. Runs are smoke-sized (Conv4, 64 training / 32 test Shapes, batch 32, so two
steps per epoch) and deterministic on the CPU, so "resumed == uninterrupted" is checked with
torch.equal, not a tolerance.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from entry import resolve_and_pretrain
from hostile import Payload, enospc

import vwe.pretrain
import vwe.runs
from vwe.__main__ import main as vwe_main
from vwe.config import get_config
from vwe.data.dataset import Dataset
from vwe.pretrain import load_pretrained
from vwe.runs import (
    CheckpointError,
    ConfigMismatchError,
    NonFiniteLossError,
    RunDirBusyError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    lock_run_dir,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[2]
CFG = get_config("smoke", tower="conv4", n_train=64, n_test=32, batch_size=32, epochs=3)
CLI_ARGS = ["pretrain", "--profile", "smoke", "--tower", "conv4", "--n-train", "64", "--n-test", "32",
            "--batch-size", "32", "--epochs", "3", "--no-progress"]
# The `shapes` fixture (tests/conftest.py): 64 training / 32 test images of data seed 0, what
# load_dataset gives the CLI for CFG.


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run of CFG: checkpoint-0002.pt, checkpoint-0003.pt, metrics.jsonl."""
    run = tmp_path_factory.mktemp("reference")
    resolve_and_pretrain(CFG, run, progress=False)
    return run


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(run: Path, ref: Path) -> None:
    """Same final weights, optimizer state and metrics log (epoch, train and test loss)."""
    ours, theirs = load_checkpoint(list_checkpoints(run)[0]), load_checkpoint(list_checkpoints(ref)[0])
    assert ours["epoch"] == theirs["epoch"]
    assert ours["model"].keys() == theirs["model"].keys()
    for name in ours["model"]:
        assert torch.equal(ours["model"][name], theirs["model"][name]), name
    for p, q in zip(ours["optimizer"]["state"].values(), theirs["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(p[k], q[k]) for k in p)
    fields = ("epoch", "train_loss", "test_loss")
    assert [[m[k] for k in fields] for m in logged(run)] == [[m[k] for k in fields] for m in logged(ref)]


def run_files(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir())


def snapshot(run: Path) -> dict[str, bytes]:
    """The bytes of every checkpoint and of the metrics log (the files a run must never lose)."""
    return {p.name: p.read_bytes() for p in [*list_checkpoints(run), run / "metrics.jsonl"]}


# --- killed with SIGKILL, restarted with the same command ------------------------------------------

def worker(run: Path, **fault: int) -> subprocess.CompletedProcess:
    """`python -m vwe pretrain ...` (CFG) in a subprocess, through tests/faults/fault_worker.py."""
    env = {**os.environ, "VWE_FAULT_THREADS": str(torch.get_num_threads()),
           **{f"VWE_FAULT_{k.upper()}": str(v) for k, v in fault.items()}}
    return subprocess.run([sys.executable, str(ROOT / "tests" / "faults" / "fault_worker.py"), *CLI_ARGS,
                           "--run-dir", str(run)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path, reference):
    run = tmp_path / "run"
    # 1. Killed mid-epoch 2 (after its first step): epoch 1 is all that survives.
    out = worker(run, kill_step=3)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-0001.pt"]
    assert [m["epoch"] for m in logged(run)] == [1]

    # 2. Restarted, resumes epoch 2 and is killed half-way through writing checkpoint-0002.
    out = worker(run, kill_save=1)
    assert out.returncode == -signal.SIGKILL, out.stderr
    half = [p for p in run.iterdir() if p.name.startswith(".checkpoint-0002.pt.tmp")]
    assert len(half) == 1 and half[0].stat().st_size > 0
    with pytest.raises(CheckpointError, match=re.escape(half[0].name)):
        load_checkpoint(half[0])  # what a loader would get: it is never a candidate, see next line
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-0001.pt"]
    assert [m["epoch"] for m in logged(run)] == [1]

    # 3. Restarted, killed after checkpoint-0002 landed but before the log says so.
    out = worker(run, kill_metrics=2)  # rename 1 is the log rewrite at start-up
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert not half[0].exists()  # the half-written file was swept at start-up, never loaded
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-0002.pt", "checkpoint-0001.pt"]
    assert [m["epoch"] for m in logged(run)] == [1]

    # 4. Restarted once more with no fault: it finishes as if nothing had happened.
    out = worker(run)
    assert out.returncode == 0, out.stderr
    assert "checkpoint-0003.pt" in out.stdout
    assert run_files(run) == [".lock", "checkpoint-0002.pt", "checkpoint-0003.pt", "config.json",
                              "metrics.jsonl"]
    assert_same_run(run, reference)


# --- damaged checkpoints ------------------------------------------------------------------------

def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    # A byte in the last tensor's data, far from the zip headers torch would notice.
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))


def test_a_flipped_byte_is_caught_although_torch_load_misses_it(tmp_path, reference):
    path = shutil.copy(reference / "checkpoint-0003.pt", tmp_path / "checkpoint-0003.pt")
    flip_a_byte(path)
    torch.load(path, weights_only=True)  # control: torch alone loads the damaged file silently
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))} is corrupt.*SHA-256"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", [truncate, flip_a_byte, lambda p: p.write_bytes(b"")],
                         ids=["truncated", "flipped", "empty"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, reference, damage):
    run = copy_run(reference, tmp_path / "run")
    newest = run / "checkpoint-0003.pt"
    damage(newest)
    with pytest.raises(CheckpointError, match=re.escape(str(newest))):
        load_checkpoint(newest)
    with pytest.warns(UserWarning, match=f"{re.escape(str(newest))}.*falling back"):
        path, state = latest_checkpoint(run)
    assert path.name == "checkpoint-0002.pt" and state["epoch"] == 2
    with pytest.warns(UserWarning, match="checkpoint-0003.pt"):
        res = resolve_and_pretrain(CFG, run, progress=False)  # redoes epoch 3 from epoch 2's checkpoint
    assert res.metrics[-1]["epoch"] == 3
    assert_same_run(run, reference)


def test_when_no_checkpoint_loads_the_run_is_refused_not_restarted(tmp_path, reference, shapes):
    run = copy_run(reference, tmp_path / "run")
    truncate(run / "checkpoint-0003.pt")
    flip_a_byte(run / "checkpoint-0002.pt")
    before = snapshot(run)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="none of the checkpoints"):
        resolve_and_pretrain(CFG, run, data=shapes, progress=False)
    assert snapshot(run) == before
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="fresh=True"):
        load_pretrained(run, "cpu")
    res = resolve_and_pretrain(CFG.replace(epochs=1), run, data=shapes, fresh=True, progress=False)
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-0001.pt"] and len(res.metrics) == 1


def test_checkpoint_from_another_kind_of_device_resumes_with_a_warning(tmp_path, reference, shapes):
    run = copy_run(reference, tmp_path / "run")
    path = run / "checkpoint-0003.pt"
    state = load_checkpoint(path)
    state["rng"]["augment"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state size
    save_checkpoint(path, state)
    with pytest.warns(UserWarning, match="another kind of device"):
        res = resolve_and_pretrain(CFG.replace(epochs=4), run, data=shapes, progress=False)
    assert [m["epoch"] for m in res.metrics] == [1, 2, 3, 4]


def test_checkpoint_from_another_version_is_a_clear_error(tmp_path, reference):
    path = shutil.copy(reference / "checkpoint-0003.pt", tmp_path / "checkpoint-0003.pt")
    state = load_checkpoint(path)
    state["config"]["colour"] = "blue"  # a field this version does not know
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match=r"unknown config field\(s\) \['colour'\]"):
        load_pretrained(path, "cpu")
    state["config"].pop("colour")
    state["model"].pop("decoder.fc.0.weight")
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match="decoder.fc.0.weight"):
        load_pretrained(path, "cpu")


# --- a resume with another config -------------------------------------------------------------

def test_resume_with_another_config_lists_every_difference(tmp_path, reference, shapes):
    run = copy_run(reference, tmp_path / "run")
    before = snapshot(run)
    renamed = Dataset("cifar100", shapes.train_images, shapes.train_labels, shapes.test_images,
                      shapes.test_labels, shapes.classes)
    other = CFG.replace(tower="resnet32", encoding="literal", batch_size=16)
    with pytest.raises(ConfigMismatchError) as err:
        resolve_and_pretrain(other, run, data=renamed, progress=False)
    for line in ("tower: 'conv4' -> 'resnet32'", "encoding: 'shared' -> 'literal'",
                 "batch_size: 32 -> 16", "dataset: 'shapes' -> 'cifar100'", "fresh=True"):
        assert line in str(err.value)
    assert "epochs" not in str(err.value)  # more epochs is a resume, not another run
    assert snapshot(run) == before


def test_a_run_is_not_shortened_silently(tmp_path, reference, shapes):
    # e.g. the course's 4-epoch run pointed at a directory where the table trained 30 epochs
    run = copy_run(reference, tmp_path / "run")
    before = snapshot(run)
    held = load_checkpoint(list_checkpoints(run)[0])["epoch"]
    with pytest.raises(ConfigMismatchError, match=f"holds {held} epochs.*cannot be shortened.*--fresh"):
        resolve_and_pretrain(CFG.replace(epochs=held - 1), run, data=shapes, progress=False)
    assert snapshot(run) == before


def test_cli_refuses_another_config_unless_fresh(tmp_path, reference):
    run = copy_run(reference, tmp_path / "run")
    args = [*CLI_ARGS, "--run-dir", str(run), "--batch-size", "16", "--epochs", "1"]
    with pytest.raises(SystemExit) as err:
        vwe_main(args)
    assert "batch_size: 32 -> 16" in str(err.value.code) and "--fresh" in str(err.value.code)
    vwe_main([*args, "--fresh"])
    state = load_checkpoint(list_checkpoints(run)[0])
    assert state["config"]["batch_size"] == 16 and state["epoch"] == 1
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-0001.pt"]


# --- a non-finite loss --------------------------------------------------------------------------

def nan_loss_at(call: int):
    """A PretrainStep whose `call`-th step reports a NaN loss."""
    calls = [0]

    class Faulty(vwe.pretrain.PretrainStep):
        def __call__(self, images):
            calls[0] += 1
            loss = super().__call__(images)
            return torch.tensor(float("nan")) if calls[0] == call else loss
    return Faulty


def nan_weights_at(call: int):
    """A PretrainStep whose `call`-th step leaves a NaN weight behind a finite loss."""
    calls = [0]

    class Faulty(vwe.pretrain.PretrainStep):
        def __call__(self, images):
            calls[0] += 1
            loss = super().__call__(images)
            if calls[0] == call:
                with torch.no_grad():
                    first = next(self.model.parameters())
                    first[(0,) * first.dim()] = float("nan")
            return loss
    return Faulty


@pytest.mark.parametrize("fault, message", [
    (nan_loss_at, "non-finite loss nan at epoch 2, step 2 of 2"),
    (nan_weights_at, "weights became non-finite at the end of epoch 2"),
])
def test_non_finite_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, shapes, monkeypatch,
                                                                 fault, message):
    resolve_and_pretrain(CFG.replace(epochs=1), tmp_path, data=shapes, progress=False)
    before = snapshot(tmp_path)
    monkeypatch.setattr(vwe.pretrain, "PretrainStep", fault(2))  # epoch 2's second step
    with pytest.raises(NonFiniteLossError, match=message):
        resolve_and_pretrain(CFG, tmp_path, data=shapes, progress=False)
    assert snapshot(tmp_path) == before
    assert run_files(tmp_path) == [".lock", "checkpoint-0001.pt", "config.json", "metrics.jsonl"]


def test_exploding_learning_rate_is_a_non_finite_loss(tmp_path, shapes):
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, step \d+ of 2"):
        resolve_and_pretrain(CFG.replace(lr=1e30, augment=False), tmp_path, data=shapes, progress=False)
    assert list_checkpoints(tmp_path) == []


# --- no space left on the device ----------------------------------------------------------------

def full_disk_in_torch_save(monkeypatch):
    real = torch.save

    def save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise enospc()
    monkeypatch.setattr(vwe.runs.torch, "save", save)


def full_disk_in_the_file_write(monkeypatch):
    def opening(file, mode="r", *args, **kwargs):
        f = open(file, mode, *args, **kwargs)
        if "w" not in mode or not Path(file).name.startswith(".checkpoint-"):
            return f

        class HalfThenFull:
            """The checkpoint's file: half of the first write lands, then the disk is full."""

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, data):
                f.write(bytes(data)[: len(data) // 2])
                f.flush()
                raise enospc()
        return HalfThenFull()
    monkeypatch.setattr(vwe.runs, "open", opening, raising=False)


@pytest.mark.parametrize("fill_disk", [full_disk_in_torch_save, full_disk_in_the_file_write])
def test_full_disk_leaves_the_previous_checkpoint_and_no_temp_file(tmp_path, reference, shapes,
                                                                   monkeypatch, fill_disk):
    resolve_and_pretrain(CFG.replace(epochs=1), tmp_path, data=shapes, progress=False)
    before = snapshot(tmp_path)
    with monkeypatch.context() as m:
        fill_disk(m)
        with pytest.raises(OSError) as err:
            resolve_and_pretrain(CFG.replace(epochs=2), tmp_path, data=shapes, progress=False)
    assert err.value.errno == errno.ENOSPC
    message = str(err.value)
    for part in ("could not write checkpoint", "checkpoint-0002.pt", "No space left on device",
                 "previous checkpoint is untouched"):
        assert part in message
    assert snapshot(tmp_path) == before
    assert run_files(tmp_path) == [".lock", "checkpoint-0001.pt", "config.json", "metrics.jsonl"]
    # Space freed: the same command resumes and reaches the uninterrupted run's epoch 2.
    resolve_and_pretrain(CFG.replace(epochs=2), tmp_path, data=shapes, progress=False)
    ours, theirs = load_checkpoint(tmp_path / "checkpoint-0002.pt"), load_checkpoint(
        reference / "checkpoint-0002.pt")
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in theirs["model"])


# --- one run at a time per directory ------------------------------------------------------------

def test_second_run_in_a_busy_run_dir_is_refused(tmp_path, shapes):
    with lock_run_dir(tmp_path):
        with pytest.raises(RunDirBusyError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            resolve_and_pretrain(CFG.replace(epochs=1), tmp_path, data=shapes, progress=False)
    assert list_checkpoints(tmp_path) == []
    resolve_and_pretrain(CFG.replace(epochs=1), tmp_path, data=shapes, progress=False)  # free again
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-0001.pt"]


# --- hostile checkpoints ------------------------------------------------------------------------

@pytest.mark.parametrize("writer", ["torch.save", "save_checkpoint"])
def test_checkpoint_that_runs_code_is_refused_everywhere(tmp_path, shapes, writer):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    run.mkdir()
    path = run / "checkpoint-0001.pt"
    state = {"model": Payload(os.system, f"touch {marker}"), "optimizer": {},
             "config": CFG.to_dict(), "epoch": 1, "metrics": []}
    if writer == "torch.save":
        torch.save(state, path)
    else:  # with a valid SHA-256 footer: the checksum vouches for the bytes, not for their safety
        save_checkpoint(path, state)
    # Control: a plain torch.load does run it, so the assertions below can fail.
    with open(path, "rb") as f:  # a file object: torch.load ignores the footer either way
        torch.load(f, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}.*(?i:unsupported global)"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="(?i:unsupported global)"):
        load_pretrained(path, "cpu")
    with pytest.warns(UserWarning, match="(?i:unsupported global)"), pytest.raises(CheckpointError):
        load_pretrained(run, "cpu")
    with pytest.warns(UserWarning, match="(?i:unsupported global)"), pytest.raises(CheckpointError):
        resolve_and_pretrain(CFG, run, data=shapes, progress=False)
    assert not marker.exists()
