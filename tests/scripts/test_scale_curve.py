"""`scripts/scale_curve.py`: a compute curve whose run folder was lost goes on from the last point's
committed weights, at the steps they had trained, and a run on it resumes from there."""

from __future__ import annotations

import torch
from source_file import load

from vwe.config import get_config
from vwe.course import export_shipped
from vwe.data.shapes import make_shapes
from vwe.engine import steps_done
from vwe.pretrain import pretrain

CFG = get_config("smoke", tower="conv4", n_train=64, n_test=32, batch_size=16, epochs=100, device="cpu")
PER_EPOCH = 64 // 16


def test_a_lost_run_goes_on_from_its_committed_weights_at_their_steps(tmp_path):
    curve = load("scripts/scale_curve.py")
    data = make_shapes(64, 32, seed=CFG.data_seed)
    first = pretrain(CFG.replace(steps=6), tmp_path / "lost", data, progress=False)  # 1.5 epochs
    weights = tmp_path / "weights"
    export_shipped(first.run_dir, weights, data.provenance())

    run_dir = tmp_path / "new-machine"
    went_on = curve.continue_from_weights(weights, CFG, data, torch.device("cpu"), run_dir)  # no checkpoint
    assert went_on["steps"] == 6 and len(went_on["sha256"]) == 64
    cpu = torch.device("cpu")
    assert curve.continue_from_weights(weights, CFG, data, cpu, run_dir) is None  # it has a checkpoint now

    at = pretrain(CFG.replace(steps=6), run_dir, data, progress=False)  # nothing left to train
    assert steps_done(at.metrics, PER_EPOCH) == 6 and at.metrics == first.metrics
    for name, value in first.model.state_dict().items():
        expected = value.half().float() if value.is_floating_point() else value  # fp16 weights
        assert torch.equal(at.model.state_dict()[name], expected), name
    on = pretrain(CFG.replace(steps=9), run_dir, data, progress=False)  # the rest of epoch 2, one of 3
    assert steps_done(on.metrics, PER_EPOCH) == 9 and [m["epoch"] for m in on.metrics][-2:] == [2, 2.25]


def test_a_run_with_a_checkpoint_or_without_weights_is_left_as_it_is(tmp_path):
    curve = load("scripts/scale_curve.py")
    data = make_shapes(64, 32, seed=CFG.data_seed)
    assert curve.continue_from_weights(tmp_path / "none", CFG, data, torch.device("cpu"), tmp_path / "r") \
        is None
    assert not (tmp_path / "r").exists()
