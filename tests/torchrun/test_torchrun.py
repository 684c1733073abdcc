"""Data-parallel training on the CPU with gloo, as torchrun runs it on GPUs.

Two processes with the same global batch and seed train the model that one process trains (up to
fp32 rounding: the sums of the global statistics and gradients are taken in another order), only
rank 0 writes into the run directory, and a job that loses a rank mid-epoch stops, leaves nothing
half-written, and resumes to the weights of an uninterrupted two-process run bit for bit.
Smoke-sized (Conv4, 64 training / 32 test Shapes, batch 32: two steps an epoch), as
tests/faults/test_faults.py.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from entry import resolve_and_pretrain, resolve_and_train_supervised

from vwe.config import get_config, resolve
from vwe.data import make_shapes
from vwe.models import Classifier, build_model
from vwe.pretrain import held_out_loss, load_pretrained
from vwe.runs import list_checkpoints, load_checkpoint
from vwe.supervised import SupervisedRecipe
from vwe.table import run_table

ROOT = Path(__file__).resolve().parents[2]
# The config that the CLI arguments below make (as in tests/faults/test_faults.py); shared encoding and
# augmentation on, so the zero patch and the global batch's augmentation draws are exercised.
CFG = get_config("smoke", tower="conv4", n_train=64, n_test=32, batch_size=32, epochs=3)
CLI_ARGS = ["pretrain", "--profile", "smoke", "--tower", "conv4", "--n-train", "64", "--n-test", "32",
            "--batch-size", "32", "--epochs", "3", "--no-progress"]
SUPERVISED = CFG.replace(epochs=2)
RECIPE = SupervisedRecipe(batch_size=32)
TABLE_ROWS = ["random-resnet32", "context-conv4-aug"]
PRETRAINED = "table/context-conv4-aug"  # the table's row directory for CFG: the table evaluates it
# How close is "the same model" in fp32. Two processes sum the global batch's statistics and gradients
# in another order than one, and the towers' channels_last BatchNorm on the CPU rounds its statistics
# several times more coarsely than the default layout's, so the runs drift apart from rounding alone:
# Adam moves an entry whose gradient is rounding noise by about lr whatever the noise, and SGD at lr 0.1
# with BatchNorm amplifies a difference step by step. What the tests hold fixed is the maths: the
# updates (final - initial weights) of one and two processes differ by under UPDATE_RTOL in L2, and the
# smallest departure from the one-process model that data parallelism can make, BatchNorm on each
# process's slice (sync_bn=False), is asserted to move them by more than 3 times that.
ADAM_ATOL = 1e-2  # under 2 * lr * steps = 1.2e-2, the most two 6-step Adam runs can drift apart
UPDATE_RTOL = 0.1
# Audit events that change the file system (besides opening a file to write), path first.
WRITES = {"os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate", "os.chmod", "os.utime",
          "shutil.rmtree"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _audit_writes(root: Path, found: list[str]):
    """An audit hook that records every change this process makes to the file system under `root`."""
    root = str(root)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in (mode or "") for c in "wax+") or (
                mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        else:
            writing = event in WRITES
            path = args[0] if writing else None
        if writing and isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).startswith(root):
            found.append(f"{event} {os.fsdecode(path)}")

    return hook


def _worker(rank: int, port: int, runs: Path) -> None:
    """One of two processes: pretrain and train the supervised baseline, data-parallel."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    writes: list[str] = []
    if rank:
        sys.addaudithook(_audit_writes(runs, writes))
    try:
        resolve_and_pretrain(CFG, runs / PRETRAINED, progress=False)
        resolve_and_pretrain(CFG, runs / "pretrain-nosync", progress=False, sync_bn=False)
        resolve_and_train_supervised(SUPERVISED, runs / "supervised", make_shapes(64, 32), RECIPE,
                                     progress=False)
        resolve_and_train_supervised(SUPERVISED, runs / "supervised-nosync", make_shapes(64, 32), RECIPE,
                                     progress=False, sync_bn=False)
        run_table(CFG, runs / "table", TABLE_ROWS, make_shapes(64, 32), progress=False)  # reuses PRETRAINED
    finally:
        dist.destroy_process_group()
    if rank:
        (runs.parent / "rank1-writes.json").write_text(json.dumps(writes))


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    """Both runs by two processes: <dir>/runs/pretrain, <dir>/runs/supervised, <dir>/rank1-writes.json."""
    runs = tmp_path_factory.mktemp("two") / "runs"
    runs.mkdir()
    mp.spawn(_worker, args=(free_port(), runs), nprocs=2)
    return runs


def final_state(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(list_checkpoints(run)[0])["model"]


def max_difference(one: dict, two: dict) -> float:
    """The largest |difference| over all tensors of two state dicts with the same keys."""
    assert one.keys() == two.keys()
    return max((one[k].double() - two[k].double()).abs().max().item() for k in one)


def update_difference(one: dict, two: dict, init: dict) -> float:
    """|update 1 - update 2| / |update 1| over all parameters, an update being final - init."""
    keys = [k for k in init if k.endswith(("weight", "bias"))]
    d1 = torch.cat([(one[k] - init[k]).flatten() for k in keys])
    d2 = torch.cat([(two[k] - init[k]).flatten() for k in keys])
    return ((d1 - d2).norm() / d1.norm()).item()


def test_two_processes_pretrain_the_model_of_one(two, tmp_path):
    one = resolve_and_pretrain(CFG, tmp_path, progress=False)
    torch.manual_seed(CFG.seed)
    init = build_model(CFG.model, CFG.tower, CFG.encoding).state_dict()
    ours, theirs = one.model.state_dict(), final_state(two / PRETRAINED)
    worst, update = max_difference(ours, theirs), update_difference(ours, theirs, init)
    print(f"pretrain: max |1 - 2 processes| = {worst:.2e}, updates differ by {update:.1%}")
    assert worst < ADAM_ATOL and update < UPDATE_RTOL
    # the tolerance has teeth: BatchNorm on each process's slice (sync_bn=False) is another model
    assert update_difference(ours, final_state(two / "pretrain-nosync"), init) > 3 * UPDATE_RTOL
    # Each epoch's held-out loss is logged once for the global batch: the two-process run's last one is
    # the one-process loss of its own final weights, up to the order of an fp32 sum of the m
    # nonnegative squared errors it averages (relative error under m * 2^-24)
    logged = [json.loads(line) for line in (two / PRETRAINED / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in logged] == [1, 2, 3]
    model, cfg, _ = load_pretrained(two / PRETRAINED, "cpu")
    test = resolve(cfg)[1].test_images
    m = len(test) * test[0].numel()
    assert held_out_loss(model, test, CFG.eval_batch_size) == pytest.approx(logged[-1]["test_loss"],
                                                                             rel=m * 2**-24)
    assert load_checkpoint(list_checkpoints(two / PRETRAINED)[0])["provenance"]["processes"] == 2


def test_two_processes_train_the_supervised_model_of_one(two, tmp_path):
    one = resolve_and_train_supervised(SUPERVISED, tmp_path, make_shapes(64, 32), RECIPE, progress=False)
    torch.manual_seed(SUPERVISED.seed)
    init = Classifier(SUPERVISED.tower, make_shapes(64, 32).num_classes).state_dict()
    ours, theirs = one.model.state_dict(), final_state(two / "supervised")
    update = update_difference(ours, theirs, init)
    print(f"supervised: max |1 - 2 processes| = {max_difference(ours, theirs):.2e}, updates differ by "
          f"{update:.1%}")
    assert update < UPDATE_RTOL
    assert update_difference(ours, final_state(two / "supervised-nosync"), init) > 3 * UPDATE_RTOL
    logged = [json.loads(line) for line in (two / "supervised" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in logged] == [m["epoch"] for m in one.metrics] == [1, 2]


def test_the_table_under_two_processes_evaluates_as_one(two, tmp_path):
    """Rank 0 alone extracts features and trains probes: on the same weights (the random row's)
    the numbers are those of one process, bit for bit; a pretrained row trains data-parallel."""
    saved = {r["key"]: r for r in json.loads((two / "table" / "results.json").read_text())["rows"]}
    assert list(saved) == TABLE_ROWS
    one = run_table(CFG, tmp_path, TABLE_ROWS[:1], make_shapes(64, 32), progress=False).rows[0]
    for key in ("mean", "std", "accs", "knn"):
        assert saved["random-resnet32"][key] == getattr(one, key), key
    assert saved["context-conv4-aug"]["epochs"] == CFG.epochs


def test_only_rank_0_writes_into_the_run_directories(two):
    assert json.loads((two.parent / "rank1-writes.json").read_text()) == []
    for run, epochs in ((PRETRAINED, 3), ("pretrain-nosync", 3), ("supervised", 2)):
        names = sorted(p.name for p in (two / run).iterdir())
        results = ["linear_eval.json"] if run == PRETRAINED else []  # the table's row result
        assert names == sorted([".lock", f"checkpoint-{epochs - 1:04d}.pt", f"checkpoint-{epochs:04d}.pt",
                                "config.json", "metrics.jsonl", *results]), run
    names = sorted(p.name for p in (two / "table").iterdir())
    assert names == [*TABLE_ROWS[1:], "random-resnet32", "results.csv", "results.json", "results.md",
                     "results.png"]


def torchrun(run: Path, **fault: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 tests/faults/fault_worker.py pretrain ...` (the CLI, with a fault)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "VWE_FAULT_THREADS": "1", **fault}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--monitor-interval", "0.1", str(ROOT / "tests" / "faults" / "fault_worker.py"), *CLI_ARGS,
           "--run-dir", str(run)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_a_killed_rank_stops_the_job_and_a_rerun_resumes(two, tmp_path):
    run = tmp_path / "run"
    # rank 1 dies by SIGKILL after the first step of epoch 2: rank 0 has done that step too
    killed = torchrun(run, VWE_FAULT_KILL_STEP="3", VWE_FAULT_RANK="1")
    assert killed.returncode != 0
    # torchrun's summary names the dead rank and the signal (and stops rank 0 with SIGTERM)
    assert re.search(r"Root Cause.*?rank\s*: 1 \(local_rank: 1\).*?SIGKILL", killed.stderr, re.S), \
        killed.stderr[-3000:]
    names = sorted(p.name for p in run.iterdir())
    assert names == [".lock", "checkpoint-0001.pt", "config.json", "metrics.jsonl"]  # no temp file
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    again = torchrun(run)
    assert again.returncode == 0, again.stderr[-3000:]
    ours, theirs = final_state(run), final_state(two / PRETRAINED)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
