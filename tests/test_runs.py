"""`vwe.runs`: a checkpoint's SHA-256 footer is checked, and a file whose footer is damaged is refused
rather than loaded unverified; the epochs a run folder holds are read from its newest checkpoint's name;
a run's position is its global step, from which its epochs and its checkpoints' names derive."""

from __future__ import annotations

import io

import pytest
import torch

from vwe.config import get_config
from vwe.data.shapes import make_shapes
from vwe.runs import (
    FOOTER_MAGIC,
    FOOTER_SIZE,
    CheckpointError,
    ConfigMismatchError,
    check_resumable,
    checkpoint_name,
    epoch_and_step,
    epochs_begun,
    epochs_saved,
    fractional_epochs,
    list_checkpoints,
    load_checkpoint,
    open_run,
    save_checkpoint,
    saved_global_step,
)

STATE = {"model": {"w": torch.arange(6.0)}, "optimizer": {}, "config": {}, "epoch": 1, "metrics": []}


def test_a_checkpoint_round_trips_through_its_footer(tmp_path):
    path = tmp_path / "checkpoint-0001.pt"
    save_checkpoint(path, STATE)
    assert path.read_bytes()[-FOOTER_SIZE:-32] == FOOTER_MAGIC
    assert torch.equal(load_checkpoint(path)["model"]["w"], STATE["model"]["w"])


@pytest.mark.parametrize("damage", ["magic", "cut"])
def test_a_damaged_footer_is_refused_not_loaded_unverified(tmp_path, damage):
    path = tmp_path / "checkpoint-0001.pt"
    save_checkpoint(path, STATE)
    blob = bytearray(path.read_bytes())
    if damage == "magic":  # one flipped byte in the marker: the file no longer says it has a footer
        blob[-FOOTER_SIZE + 3] ^= 0xFF
    else:  # a copy cut inside the footer: torch.load ignores the bytes after its zip and would load it
        del blob[-10:]
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="footer"):
        load_checkpoint(path)


def test_a_plain_torch_file_without_a_footer_still_loads(tmp_path):
    """Files written before the footer (and torch.save's own) end at their zip: they load, unverified."""
    path = tmp_path / "checkpoint-0001.pt"
    buf = io.BytesIO()
    torch.save(STATE, buf)
    path.write_bytes(buf.getvalue())
    assert load_checkpoint(path)["epoch"] == 1


def test_the_newest_checkpoint_names_the_whole_epochs_a_run_folder_holds(tmp_path):
    assert epochs_saved(tmp_path) == 0
    for name in ("checkpoint-0002.pt", "checkpoint-0003.pt", ".checkpoint-0009.pt.tmp12", "notes.pt"):
        (tmp_path / name).touch()
    assert epochs_saved(tmp_path) == 3
    (tmp_path / "checkpoint-0003-000002.pt").touch()  # 2 steps into epoch 4: still 3 whole epochs
    assert list_checkpoints(tmp_path)[0].name == "checkpoint-0003-000002.pt" and epochs_saved(tmp_path) == 3
    (tmp_path / "checkpoint-10000.pt").touch()  # past 9999 epochs the name grows a digit
    assert epochs_saved(tmp_path) == 10000


PER_EPOCH = 4  # steps an epoch in the tests below


@pytest.mark.parametrize(("global_step", "epoch", "step", "name"), [
    (7, 1, 3, "checkpoint-0001-000003.pt"),  # one step before an epoch's end
    (8, 2, 0, "checkpoint-0002.pt"),  # at an epoch's end
    (9, 2, 1, "checkpoint-0002-000001.pt"),  # one step after
    (4 * 10_000 + 2, 10_000, 2, "checkpoint-10000-000002.pt"),
])
def test_the_epoch_the_step_and_the_name_derive_from_the_global_step(tmp_path, global_step, epoch, step,
                                                                     name):
    assert epoch_and_step(global_step, PER_EPOCH) == (epoch, step)
    assert checkpoint_name(global_step, PER_EPOCH) == name
    assert epochs_begun(global_step, PER_EPOCH) == epoch + (step > 0)  # one stopped inside counts as begun
    (tmp_path / name).touch()
    assert epochs_saved(tmp_path) == epoch  # the name reads back as the whole epochs it holds


def test_the_fractional_epoch_is_whole_at_an_epochs_end_and_floored_inside_one():
    assert fractional_epochs(8, PER_EPOCH) == 2 and isinstance(fractional_epochs(8, PER_EPOCH), int)
    assert fractional_epochs(9, PER_EPOCH) == 2.25
    assert fractional_epochs(2, 3) == 0.6666  # floored: 0.6667 would round up
    assert fractional_epochs(2999, 3000) == 0.9996  # never the whole epoch it stopped inside


def test_checkpoints_are_listed_in_the_order_of_their_global_steps(tmp_path):
    for global_step in (9, 8, 7, 12, 3):
        (tmp_path / checkpoint_name(global_step, PER_EPOCH)).touch()
    listed = [p.name for p in list_checkpoints(tmp_path)]
    assert listed == [checkpoint_name(g, PER_EPOCH) for g in (12, 9, 8, 7, 3)]


def test_a_checkpoint_without_a_global_step_derives_it_from_its_epoch_and_step():
    """Checkpoints written before "global_step" hold the whole epochs and the steps into the next."""
    assert saved_global_step({"epoch": 2}, PER_EPOCH) == 8
    assert saved_global_step({"epoch": 2, "step": 1}, PER_EPOCH) == 9
    assert saved_global_step({"epoch": 0, "step": 3}, PER_EPOCH) == 3
    assert saved_global_step({"global_step": 9, "epoch": 2, "step": 1}, PER_EPOCH) == 9
    assert saved_global_step({"global_step": 9, "epoch": 0}, PER_EPOCH) == 9  # the global step decides


@pytest.mark.parametrize("state", [{"epoch": 2, "step": 1}, {"global_step": 9, "epoch": 2, "step": 1}])
def test_a_checkpoint_stopped_inside_an_epoch_has_begun_it(tmp_path, state):
    key = {"seed": 0}
    state = {**state, "rng": {}}
    check_resumable(state, tmp_path / "c.pt", key, key, 3, PER_EPOCH, tmp_path)  # inside epoch 3 of 3
    with pytest.raises(ConfigMismatchError, match="holds 3 epochs"):
        check_resumable(state, tmp_path / "c.pt", key, key, 2, PER_EPOCH, tmp_path)


def test_a_run_saves_its_global_step_and_names_the_file_from_it(tmp_path):
    cfg = get_config("smoke", tower="conv4", n_train=64, n_test=32, batch_size=16, epochs=3)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with open_run(tmp_path, "run", cfg, cfg.identity("pretrain"), make_shapes(64, 32),
                  torch.device("cpu")) as run:
        assert run.steps_per_epoch == PER_EPOCH and run.global_step == 0
        run.save(4, model, optimizer, torch.ones(4))  # an epoch's end: its losses are not kept
        assert run.checkpoint.name == "checkpoint-0001.pt" and run.epoch_losses is None
        with pytest.raises(ValueError, match="give their losses"):
            run.save(5, model, optimizer)
        run.save(5, model, optimizer, torch.ones(1))
        assert run.checkpoint.name == "checkpoint-0001-000001.pt" and run.global_step == 5
    state = load_checkpoint(run.checkpoint)
    assert (state["global_step"], state["epoch"], state["step"]) == (5, 1, 1)
    assert "step" not in load_checkpoint(tmp_path / "checkpoint-0001.pt")
    with open_run(tmp_path, "run", cfg, cfg.identity("pretrain"), make_shapes(64, 32),
                  torch.device("cpu"), batch_size=32) as halved:
        assert halved.steps_per_epoch == 2  # another batch, another epoch length
