"""Faults injected on purpose: kills, damaged and hostile files, a full disk, bad inputs.

Each test breaks one thing and asserts what the user sees, that nothing is lost and that nothing
in a file is executed. Runs are smoke-sized (Conv4, 64 training / 32 test Shapes, batch 32, so two
steps per epoch) and deterministic on the CPU, so "resumed == uninterrupted" is checked with
torch.equal, not a tolerance.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_fixture import META, TEST, TRAIN, py2_pickle, rewrite, write_fake_cifar100
from entry import resolve_and_pretrain

import vwe.data.dataset
import vwe.pretrain
import vwe.runs
from vwe.__main__ import main as vwe_main
from vwe.config import get_config
from vwe.data.cifar import CIFAR100_ARCHIVE, CIFAR100_CACHE, load_cifar100
from vwe.data.dataset import Dataset
from vwe.data.shapes import make_shapes
from vwe.evaluate import extract_features
from vwe.models import build_model
from vwe.patches import patchify
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

ROOT = Path(__file__).resolve().parents[1]
CFG = get_config("smoke", tower="conv4", n_train=64, n_test=32, batch_size=32, epochs=3)
CLI_ARGS = ["pretrain", "--profile", "smoke", "--tower", "conv4", "--n-train", "64", "--n-test", "32",
            "--batch-size", "32", "--epochs", "3", "--no-progress"]


@pytest.fixture(scope="module")
def shapes() -> Dataset:
    return make_shapes(64, 32, seed=CFG.data_seed)  # what load_dataset gives the CLI for CFG


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
    """`python -m vwe pretrain ...` (CFG) in a subprocess, through tests/fault_worker.py."""
    env = {**os.environ, "VWE_FAULT_THREADS": str(torch.get_num_threads()),
           **{f"VWE_FAULT_{k.upper()}": str(v) for k, v in fault.items()}}
    return subprocess.run([sys.executable, str(ROOT / "tests" / "fault_worker.py"), *CLI_ARGS,
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
                    next(self.model.parameters()).view(-1)[0] = float("nan")
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

def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


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

class Payload:
    """Unpickling this calls `func(*args)`: what a malicious pickle would do."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


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


# --- CIFAR-100 archives that are damaged, wrong or hostile -------------------------------------

def test_cifar100_wrong_md5_is_refused(tmp_path):
    write_fake_cifar100(tmp_path)
    with pytest.raises(ValueError, match="md5") as err:
        load_cifar100(tmp_path, md5="0" * 32)
    assert str((tmp_path / CIFAR100_ARCHIVE).resolve()) in str(err.value)
    assert not (tmp_path / CIFAR100_CACHE).exists()


def test_truncated_archive_is_a_clear_error_and_caches_nothing(tmp_path):
    fx = write_fake_cifar100(tmp_path, n_train=50)
    blob = fx["path"].read_bytes()
    fx["path"].write_bytes(blob[: len(blob) // 2])
    md5 = hashlib.md5(blob[: len(blob) // 2]).hexdigest()
    with pytest.raises(ValueError, match="truncated or corrupt") as err:
        load_cifar100(tmp_path, md5=md5)
    assert str(fx["path"]) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CIFAR100_ARCHIVE]


def test_missing_member_is_named(tmp_path):
    fx = write_fake_cifar100(tmp_path)
    md5 = rewrite(fx, tmp_path, drop=META)
    with pytest.raises(ValueError, match=f"no file {META}"):
        load_cifar100(tmp_path, md5=md5)
    assert not (tmp_path / CIFAR100_CACHE).exists()


def test_missing_key_is_named(tmp_path):
    fx = write_fake_cifar100(tmp_path)
    no_coarse = {k: v for k, v in fx["members"][TRAIN].items() if k != "coarse_labels"}
    md5 = rewrite(fx, tmp_path, replace={TRAIN: no_coarse})
    with pytest.raises(ValueError, match=f"{TRAIN} has no 'coarse_labels'"):
        load_cifar100(tmp_path, md5=md5)
    assert not (tmp_path / CIFAR100_CACHE).exists()


@pytest.mark.parametrize("bad", ["4d", "3071", "float"])
def test_wrong_data_array_is_refused(tmp_path, bad):
    fx = write_fake_cifar100(tmp_path)
    rows = fx["train_data"]
    wrong = {"4d": rows.reshape(-1, 3, 32, 32), "3071": rows[:, :3071],
             "float": rows.astype(np.float32)}[bad]
    md5 = rewrite(fx, tmp_path, replace={TRAIN: {**fx["members"][TRAIN], "data": wrong}})
    with pytest.raises(ValueError, match=r"'data' must be uint8 of shape \(N, 3072\)"):
        load_cifar100(tmp_path, md5=md5)
    assert not (tmp_path / CIFAR100_CACHE).exists()


@pytest.mark.parametrize("key, value, message", [
    ("fine_labels", 100, r"0\.\.99"),
    ("coarse_labels", 20, r"0\.\.19"),
    ("fine_labels", -1, r"0\.\.99"),
])
def test_label_out_of_range_is_refused(tmp_path, key, value, message):
    fx = write_fake_cifar100(tmp_path)
    labels = list(fx["members"][TEST][key])
    labels[3] = value
    md5 = rewrite(fx, tmp_path, replace={TEST: {**fx["members"][TEST], key: labels}})
    with pytest.raises(ValueError, match=f"{TEST} '{key}' must lie in {message}"):
        load_cifar100(tmp_path, md5=md5)
    assert not (tmp_path / CIFAR100_CACHE).exists()


def test_label_count_must_match_images(tmp_path):
    fx = write_fake_cifar100(tmp_path)
    short = {**fx["members"][TRAIN], "fine_labels": fx["train_fine"][:-1]}
    md5 = rewrite(fx, tmp_path, replace={TRAIN: short})
    with pytest.raises(ValueError, match="'fine_labels' must be 20 integers"):
        load_cifar100(tmp_path, md5=md5)


@pytest.mark.parametrize("member, func, args, refused", [
    (TRAIN, open, ("{marker}", "w"), r"\w+\.open"),
    (META, os.system, ("touch {marker}",), r"\w+\.system"),
    (TEST, eval, ("open({marker!r}, 'w')",), r"\w+\.eval"),
])
def test_archive_pickle_that_calls_anything_is_refused_and_never_runs(tmp_path, member, func, args,
                                                                      refused):
    fx = write_fake_cifar100(tmp_path)
    marker = tmp_path / "pwned"
    payload = Payload(func, *(a.format(marker=str(marker)) for a in args))
    # Control: a plain unpickler does run the payload, so the assertion below can fail.
    result = pickle.loads(py2_pickle(payload), encoding="latin1")
    if hasattr(result, "close"):
        result.close()
    assert marker.exists()
    marker.unlink()

    poisoned = payload if member == META else {**fx["members"][member], "batch_label": payload}
    md5 = rewrite(fx, tmp_path, replace={member: poisoned})
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to unpickle {refused} from {member}"):
        load_cifar100(tmp_path, md5=md5)
    assert not marker.exists()
    assert not (tmp_path / CIFAR100_CACHE).exists()


def test_hostile_cache_is_never_run_and_the_archive_is_read_instead(tmp_path):
    fx = write_fake_cifar100(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"md5": fx["md5"], "train_images": Payload(os.system, f"touch {marker}")},
               tmp_path / CIFAR100_CACHE)
    ds = load_cifar100(tmp_path, md5=fx["md5"])
    assert not marker.exists()
    assert ds.train_labels.tolist() == fx["train_fine"]
    good = torch.load(tmp_path / CIFAR100_CACHE, weights_only=True)  # replaced by a plain cache
    assert torch.equal(good["train_images"], ds.train_images)


def test_full_disk_while_caching_only_warns(tmp_path, monkeypatch):
    fx = write_fake_cifar100(tmp_path)

    def save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a cache")
        raise enospc()
    monkeypatch.setattr(vwe.data.dataset.torch, "save", save)  # in save_cache
    with pytest.warns(UserWarning, match="cannot write the CIFAR-100 cache.*No space left"):
        ds = load_cifar100(tmp_path, md5=fx["md5"])
    assert ds.test_labels.tolist() == fx["test_fine"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [CIFAR100_ARCHIVE]  # no cache, no temp file


# --- bad inputs to the package's functions ------------------------------------------------------

@pytest.mark.parametrize("model", ["context", "patch"])
def test_models_refuse_images_they_cannot_read(model):
    ae = build_model(model, "conv4")
    cases = [
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError,
         r"x must be float images in \[0, 1\] of shape \(B, 3, 32, 32\), got uint8 \(2, 3, 32, 32\): "
         r"convert with vwe.data.to_float"),
        (torch.rand(2, 1, 32, 32), ValueError, r"got float32 \(2, 1, 32, 32\)"),
        (torch.rand(2, 3, 28, 28), ValueError, r"got float32 \(2, 3, 28, 28\)"),
        (torch.rand(2, 32, 32, 3), ValueError, r"channels last\? use x.permute\(0, 3, 1, 2\)"),
        (torch.rand(3, 32, 32), ValueError, r"x.unsqueeze\(0\)"),
        (torch.rand(2, 3, 32, 32).numpy(), TypeError, "got ndarray"),
    ]
    for method in (ae.encode, ae.forward, ae.forward_loss, ae.image_embedding):
        for x, error, message in cases:
            with pytest.raises(error, match=message):
                method(x)


def test_patchify_refuses_a_bad_patch_size():
    with pytest.raises(ValueError, match="not divisible by the patch size 5: use 32x32 images"):
        patchify(torch.rand(1, 3, 32, 32), patch=5)
    with pytest.raises(ValueError, match="patch must be a positive int"):
        patchify(torch.rand(1, 3, 32, 32), patch=0)


def test_extract_features_wants_uint8_images():
    with pytest.raises(TypeError, match="uint8"):
        extract_features(build_model("patch", "conv4"), torch.rand(4, 3, 32, 32), batch_size=4)


@pytest.mark.parametrize("overrides, error, message", [
    (dict(batch_size=32.0), TypeError, "batch_size must be an int"),
    (dict(epochs="3"), TypeError, "epochs must be an int"),
    (dict(epochs=True), TypeError, "epochs must be an int"),
    (dict(n_train=0), ValueError, "n_train must be a positive number"),
    (dict(lr=float("nan")), ValueError, "lr must be > 0"),
    (dict(lr=float("inf")), ValueError, "lr must be finite"),
    (dict(lr="1e-3"), TypeError, "lr must be a number"),
    (dict(augment="no"), TypeError, "augment must be True or False"),
    (dict(probe_seeds=(0, 1.5)), TypeError, "probe_seeds must be a tuple of ints"),
    (dict(device=0), TypeError, "device must be a string"),
])
def test_config_refuses_wrong_types_and_values(overrides, error, message):
    with pytest.raises(error, match=message):
        get_config("smoke", **overrides)


def test_batch_larger_than_the_data_is_refused_before_the_run_dir_is_touched(tmp_path, shapes):
    with pytest.raises(ValueError, match="batch of 128 is more than the 64 training images"):
        resolve_and_pretrain(CFG.replace(batch_size=128), tmp_path / "run", data=shapes, progress=False)
    assert not (tmp_path / "run").exists()


# --- make lab ------------------------------------------------------------------------------------

def lab_problems(command: str) -> list[str]:
    """What makes a JupyterLab command line reachable by others: the list is empty when it is safe."""
    problems = []
    ips = [v.strip("'\"") for v in re.findall(r"--(?:ServerApp\.|NotebookApp\.)?ip[= ](\S+)", command)]
    if not ips:
        problems.append("no --ServerApp.ip: Jupyter may listen on every interface")
    problems += [f"listens on {ip}" for ip in ips if ip not in ("127.0.0.1", "localhost")]
    tokens = re.findall(r"--(?:IdentityProvider|ServerApp|NotebookApp)\.token[= ]('[^']*'|\"[^\"]*\"|\S*)",
                        command)
    problems += ["empty token: no authentication" for t in tokens if not t.strip("'\"")]
    for flag in ("disable_check_xsrf=True", "allow_origin='*'", "allow_origin=*", "allow_remote_access=True"):
        if flag in command:
            problems.append(flag)
    return problems


@pytest.mark.parametrize("command", [
    "python -m jupyterlab --ServerApp.ip=0.0.0.0 --IdentityProvider.token=abc",
    "python -m jupyterlab --ServerApp.ip=127.0.0.1 --no-browser --ServerApp.token=''",
    "python -m jupyterlab --IdentityProvider.token=abc",
    "python -m jupyterlab --ip='*' --IdentityProvider.token=abc",
    "python -m jupyterlab --ServerApp.ip=localhost --IdentityProvider.token=\"\"",
])
def test_lab_checker_flags_unsafe_commands(command):
    assert lab_problems(command)


def test_make_lab_binds_localhost_with_a_token():
    out = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    commands = out.stdout.replace("\\\n", " ")
    lab = [line for line in commands.splitlines() if "jupyterlab" in line or "jupyter lab" in line]
    assert len(lab) == 1, out.stdout
    assert lab_problems(lab[0]) == []
    assert re.search(r"--IdentityProvider\.token=\S", lab[0])
