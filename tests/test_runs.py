"""`vwe.runs`: a checkpoint's SHA-256 footer is checked, and a file whose footer is damaged is refused
rather than loaded unverified; the epochs a run folder holds are read from its newest checkpoint's name."""

from __future__ import annotations

import io

import pytest
import torch

from vwe.runs import (
    FOOTER_MAGIC,
    FOOTER_SIZE,
    CheckpointError,
    epochs_saved,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
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
