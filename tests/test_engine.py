"""Training by the clock (`Config.minutes`, `--minutes`): a time box stops a run inside an epoch, and the
same command resumes it to the same bits as a run that never stopped.

The clock is replaced (`vwe.engine.clock`, what `vwe.engine.fit`'s time box reads): one that
ticks a minute at every read stops a run with `minutes=k` after exactly k steps of the call, whatever
this machine's speed. Runs are smoke-sized (Conv4, 64 training / 32 test Shapes, batch 16: four steps
an epoch) and deterministic on the CPU, so "resumed == uninterrupted" is torch.equal, not a tolerance.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from unittest import mock

import pytest
import torch

import vwe.engine
from vwe.__main__ import main as vwe_main
from vwe.config import get_config
from vwe.engine import epochs_reached, steps_done
from vwe.pretrain import pretrain
from vwe.runs import list_checkpoints, load_checkpoint, save_checkpoint

CFG = get_config("smoke", tower="conv4", n_train=64, n_test=32, batch_size=16, epochs=3)
STEPS = 64 // 16  # an epoch


def minute_clock():
    """A clock that reads 0, 60, 120, ... seconds: `minutes=k` ends a call after k steps."""
    ticks = itertools.count()
    return lambda: 60.0 * next(ticks)


def train(cfg, run_dir: Path, data) -> list[dict]:
    """`vwe.pretrain.pretrain` on the CPU with the minute clock."""
    with mock.patch.object(vwe.engine, "clock", minute_clock()):
        return pretrain(cfg, run_dir, data, progress=False).metrics


def newest(run_dir: Path) -> dict:
    return load_checkpoint(list_checkpoints(run_dir)[0])


def test_a_clock_stopped_run_resumes_to_the_bits_of_an_uninterrupted_one(tmp_path, shapes):
    reference = train(CFG, tmp_path / "reference", shapes)  # no time box: 3 epochs, 12 steps

    run = tmp_path / "boxed"
    first = train(CFG.replace(minutes=6), run, shapes)  # epoch 1, then 2 of epoch 2's 4 steps
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-0001-000002.pt", "checkpoint-0001.pt"]
    assert first[-1] | {"epoch": 1.5, "steps": 2, "steps_per_epoch": STEPS} == first[-1]
    state = newest(run)
    assert (state["epoch"], state["step"], state["epoch_losses"].shape) == (1, 2, (2,))

    second = train(CFG.replace(minutes=5), run, shapes)  # the rest of epoch 2, 3 steps of epoch 3
    assert [m["epoch"] for m in second] == [1, 2, 2.75]
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-0002-000003.pt", "checkpoint-0002.pt"]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == second

    finished = train(CFG, run, shapes)  # no time box: the last step
    ours, theirs = newest(run), newest(tmp_path / "reference")
    assert ours["epoch"] == theirs["epoch"] == 3 and "step" not in ours
    assert_same_bits(ours, theirs)
    # each epoch's mean training loss too: a resumed epoch keeps its first steps' losses
    assert losses(finished) == losses(reference)


def assert_same_bits(ours: dict, theirs: dict) -> None:
    """Two checkpoints hold the same weights, Adam state and random streams, bit for bit."""
    for name in theirs["model"]:
        assert torch.equal(ours["model"][name], theirs["model"][name]), name
    for p, q in zip(ours["optimizer"]["state"].values(), theirs["optimizer"]["state"].values(), strict=True):
        assert p.keys() == q.keys() and all(torch.equal(p[k], q[k]) for k in p)
    assert all(torch.equal(ours["rng"][k], theirs["rng"][k]) for k in theirs["rng"])


def losses(metrics: list[dict]) -> list[list]:
    return [[m[k] for k in ("epoch", "train_loss", "test_loss")] for m in metrics]


def test_a_time_box_on_the_real_clock_stops_after_the_first_step(tmp_path, shapes):
    # 60 microseconds: one step takes longer, and every time-boxed call trains at least one step
    res = pretrain(CFG.replace(minutes=1e-6), tmp_path, shapes, progress=False)
    assert res.checkpoint.name.startswith("checkpoint-0000-") and len(res.metrics) == 1
    assert 0 < res.metrics[-1]["epoch"] < 1 and res.metrics[-1]["steps_per_epoch"] == STEPS


def test_minutes_must_be_a_positive_number():
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="minutes"):
            CFG.replace(minutes=bad)
    with pytest.raises(TypeError, match="minutes"):
        CFG.replace(minutes="5")


def test_pretrain_help_shows_minutes(capsys):
    with pytest.raises(SystemExit):
        vwe_main(["pretrain", "--help"])
    assert "--minutes M" in capsys.readouterr().out


def test_steps_stop_a_run_where_asked_and_a_larger_count_resumes_it_bit_for_bit(tmp_path, shapes):
    """`Config.steps` (a compute curve's points) stops inside an epoch or at its end, like a time box."""
    reference = newest_after(pretrain(CFG, tmp_path / "reference", shapes, progress=False))
    run = tmp_path / "stepped"
    for steps, files in ((3, ["checkpoint-0000-000003.pt"]), (4, ["checkpoint-0001.pt"]),
                         (9, ["checkpoint-0002-000001.pt", "checkpoint-0002.pt"])):
        res = pretrain(CFG.replace(steps=steps), run, shapes, progress=False)
        assert steps_done(res.metrics, STEPS) == steps
        assert [p.name for p in list_checkpoints(run)][:len(files)] == files
    again = pretrain(CFG.replace(steps=9), run, shapes, progress=False)  # reached: nothing more to train
    assert steps_done(again.metrics, STEPS) == 9
    assert list_checkpoints(run)[0].name == "checkpoint-0002-000001.pt"
    ours = newest_after(pretrain(CFG.replace(steps=100), run, shapes, progress=False))  # capped by epochs
    assert ours["epoch"] == reference["epoch"] == 3
    for name in reference["model"]:
        assert torch.equal(ours["model"][name], reference["model"][name]), name


# A checkpoint as runs in progress hold it, written before checkpoints held their global step: named
# checkpoint-EEEE.pt at an epoch's end, checkpoint-EEEE-SSSSSS.pt inside one, with "epoch" (the whole
# epochs) and inside an epoch "step" (the steps into the next) and "epoch_losses" (those steps' losses,
# (step,)). Long runs elsewhere resume from such files, so the test below writes one key by key, whatever
# the code writes today.
CURRENT_FORMAT = ("model", "optimizer", "config", "metrics", "data", "rng", "provenance")


@pytest.mark.parametrize(("steps", "name"), [(STEPS + 2, "checkpoint-0001-000002.pt"),
                                             (STEPS, "checkpoint-0001.pt")])
def test_a_checkpoint_in_the_current_format_resumes_bit_for_bit(tmp_path, shapes, steps, name):
    reference = newest_after(pretrain(CFG, tmp_path / "reference", shapes, progress=False))
    stopped = load_checkpoint(pretrain(CFG.replace(steps=steps), tmp_path / "stopped", shapes,
                                       progress=False).checkpoint)
    assert stopped["global_step"] == steps  # what the code writes today, left out below
    run = tmp_path / "current-format"
    run.mkdir()
    partial = {"step": 2, "epoch_losses": stopped["epoch_losses"][:2].clone()} if steps % STEPS else {}
    save_checkpoint(run / name, {**{k: stopped[k] for k in CURRENT_FORMAT}, "epoch": 1, **partial})
    res = pretrain(CFG, run, shapes, progress=False)
    assert [m["epoch"] for m in res.metrics] == [1, 2, 3]
    ours = newest_after(res)
    assert ours["epoch"] == reference["epoch"] == 3
    assert_same_bits(ours, reference)
    assert losses(res.metrics) == losses(reference["metrics"])


def newest_after(res) -> dict:
    return load_checkpoint(res.checkpoint)


def test_steps_must_be_a_positive_int():
    for bad in (0, -3):
        with pytest.raises(ValueError, match="steps must be a positive number of steps"):
            CFG.replace(steps=bad)
    with pytest.raises(TypeError, match="steps"):
        CFG.replace(steps=2.5)


def test_steps_done_counts_whole_and_stopped_epochs():
    assert steps_done([], STEPS) == 0
    assert steps_done([{"epoch": 2}], STEPS) == 2 * STEPS
    assert steps_done([{"epoch": 2}, {"epoch": 2.25, "steps": 1, "steps_per_epoch": STEPS}], STEPS) == 9


def test_epochs_reached_reads_the_metrics_not_the_config():
    assert epochs_reached([]) == 0
    assert epochs_reached([{"epoch": 2}]) == 2
    assert epochs_reached([{"epoch": 2}, {"epoch": 2.25, "steps": 1, "steps_per_epoch": STEPS}]) == 2.25


def test_an_epoch_trained_over_several_calls_counts_the_time_of_each(tmp_path, shapes, monkeypatch):
    """A stopped epoch's entry is replaced when it resumes: its seconds add up (a compute curve's
    pretraining time), while images_per_s stays the speed of the call that finished it."""

    class Ticks:  # every read of the performance counter one second later: each call's epoch takes 1 s
        now = 0.0

        def perf_counter(self) -> float:
            self.now += 1.0
            return self.now

    monkeypatch.setattr(vwe.engine, "time", Ticks())
    first = pretrain(CFG.replace(steps=2), tmp_path, shapes, progress=False).metrics
    assert first[-1]["seconds"] == 1.0 and first[-1]["images_per_s"] == 2 * 16
    second = pretrain(CFG.replace(steps=3), tmp_path, shapes, progress=False).metrics
    assert second[-1]["seconds"] == 2.0 and second[-1]["images_per_s"] == 1 * 16
    third = pretrain(CFG.replace(steps=5), tmp_path, shapes, progress=False).metrics  # epoch 1 ends, 2 begins
    assert [m["seconds"] for m in third] == [3.0, 1.0]
