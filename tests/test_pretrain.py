"""Pretraining on Shapes: learning happens, checkpoints round-trip, interrupted runs resume exactly."""

import json

import pytest
import torch

from vwe.config import get_config
from vwe.data import make_shapes
from vwe.pretrain import (
    ConfigMismatchError,
    NonFiniteLossError,
    evaluate,
    list_checkpoints,
    load_pretrained,
    pretrain,
)


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(512, 256, seed=0)


def _cfg(**kw):
    base = dict(n_train=128, n_test=128, epochs=2, batch_size=32, tower="conv4", lr=2e-3)
    return get_config("smoke", **{**base, **kw})


def test_pretraining_lowers_held_out_loss(shapes, tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(n_train=256, epochs=3, augment=False)
    res = pretrain(cfg, tmp_path, data=shapes, progress=False)
    before = evaluate(load_untrained(cfg), shapes.test_images[:128])
    losses = [m["test_loss"] for m in res.metrics]
    assert len(losses) == 4
    assert losses[-1] < 0.8 * before, (before, losses)
    assert res.dataset == "shapes"


def load_untrained(cfg):
    from vwe.models import build_model

    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, cfg.tower, cfg.encoding)


def test_resume_gives_the_same_weights_as_one_run(shapes, tmp_path):
    cfg = _cfg(epochs=3)
    whole = pretrain(cfg, tmp_path / "whole", data=shapes, progress=False)
    pretrain(cfg.replace(epochs=1), tmp_path / "split", data=shapes, progress=False)
    resumed = pretrain(cfg, tmp_path / "split", data=shapes, progress=False)
    ours, theirs = whole.model.state_dict(), resumed.model.state_dict()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    for key in ("epoch", "train_loss", "test_loss"):
        assert [m[key] for m in resumed.metrics] == [m[key] for m in whole.metrics]
    log = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in log] == [1, 2, 3]
    assert [m["test_loss"] for m in log] == [m["test_loss"] for m in whole.metrics]


def test_finished_run_is_reused_and_checkpoints_are_pruned(shapes, tmp_path):
    cfg = _cfg(epochs=3)
    pretrain(cfg, tmp_path, data=shapes, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-0003.pt", "checkpoint-0002.pt"]
    mtime = (tmp_path / "checkpoint-0003.pt").stat().st_mtime_ns
    again = pretrain(cfg, tmp_path, data=shapes, progress=False)
    assert (tmp_path / "checkpoint-0003.pt").stat().st_mtime_ns == mtime  # nothing retrained
    assert len(again.metrics) == 3
    model, loaded_cfg, state = load_pretrained(tmp_path, "cpu")
    assert loaded_cfg.tower == "conv4" and state["epoch"] == 3
    assert state["provenance"]["torch"] == str(torch.__version__)
    # The reloaded checkpoint reproduces the logged held-out loss exactly.
    assert evaluate(model, shapes.test_images[:128], cfg.eval_batch_size) == state["metrics"][-1]["test_loss"]


def test_resume_with_another_config_is_refused_unless_fresh(shapes, tmp_path):
    pretrain(_cfg(epochs=1), tmp_path, data=shapes, progress=False)
    with pytest.raises(ConfigMismatchError, match=r"tower: 'conv4' -> 'resnet32'"):
        pretrain(_cfg(epochs=1, tower="resnet32"), tmp_path, data=shapes, progress=False)
    res = pretrain(_cfg(epochs=1, tower="resnet32", n_train=64, batch_size=32), tmp_path, data=shapes,
                   fresh=True, progress=False)
    assert res.config.tower == "resnet32"


def test_non_finite_loss_stops_with_epoch_and_step(shapes, tmp_path):
    cfg = _cfg(epochs=3, lr=1e30, augment=False)  # an absurd learning rate blows the weights up
    with pytest.raises(NonFiniteLossError, match=r"epoch \d+, step \d+"):
        pretrain(cfg, tmp_path, data=shapes, progress=False)
