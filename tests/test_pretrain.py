"""Pretraining on Shapes: learning happens, checkpoints round-trip, a resumed run equals one run.

Faults (kills, damaged or hostile checkpoints, config mismatches, non-finite losses, a full disk)
are injected in tests/faults/test_faults.py.
"""

import json
import shutil

import pytest
import torch
from entry import resolve_and_pretrain

from vwe.augment import AugmentConfig, apply_params, sample_params
from vwe.config import AUTHOR_AUG, get_config
from vwe.data import make_shapes, to_float
from vwe.engine import held_out_sum
from vwe.models import build_model
from vwe.pretrain import PretrainStep, held_out_loss, load_pretrained
from vwe.runs import Run, differences, list_checkpoints

SHAPES = (96, 32)  # the `shapes` fixture's size (tests/conftest.py), data seed 0


def _cfg(**kw):
    base = dict(n_train=64, n_test=32, epochs=3, batch_size=32, tower="conv4", lr=2e-3)
    return get_config("smoke", **{**base, **kw})


@pytest.fixture(scope="module")
def whole(shapes, tmp_path_factory):
    """One uninterrupted 3-epoch run."""
    return resolve_and_pretrain(_cfg(), tmp_path_factory.mktemp("whole"), data=shapes, progress=False)


def test_pretraining_lowers_held_out_loss(shapes, tmp_path):
    # 48 steps of batch 8: few enough for a test, enough for BatchNorm's running statistics (used by
    # the held-out loss in eval mode) to settle.
    cfg = _cfg(n_train=96, epochs=4, batch_size=8, lr=2e-3, augment=False)
    torch.manual_seed(cfg.seed)
    before = held_out_loss(build_model(cfg.model, cfg.tower, cfg.encoding), shapes.test_images)
    res = resolve_and_pretrain(cfg, tmp_path, data=shapes, progress=False)
    assert [m["epoch"] for m in res.metrics] == [1, 2, 3, 4]
    assert res.metrics[-1]["test_loss"] < 0.8 * before, (before, res.metrics)
    assert res.metrics[-1]["train_loss"] < res.metrics[0]["train_loss"]
    assert res.dataset == "shapes"


def test_resume_gives_the_same_weights_as_one_run(shapes, whole, tmp_path):
    resolve_and_pretrain(_cfg(epochs=1), tmp_path, data=shapes, progress=False)
    resumed = resolve_and_pretrain(_cfg(), tmp_path, data=shapes, progress=False)
    ours, theirs = whole.model.state_dict(), resumed.model.state_dict()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    for key in ("epoch", "train_loss", "test_loss"):
        assert [m[key] for m in resumed.metrics] == [m[key] for m in whole.metrics]
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in log] == [1, 2, 3]
    assert [m["test_loss"] for m in log] == [m["test_loss"] for m in whole.metrics]


def test_finished_run_is_reused_and_checkpoints_are_pruned(shapes, whole, tmp_path):
    run = shutil.copytree(whole.run_dir, tmp_path / "run")
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-0003.pt", "checkpoint-0002.pt"]
    mtime = (run / "checkpoint-0003.pt").stat().st_mtime_ns
    again = resolve_and_pretrain(_cfg(), run, data=shapes, progress=False)
    assert (run / "checkpoint-0003.pt").stat().st_mtime_ns == mtime  # nothing retrained
    assert again.checkpoint == run / "checkpoint-0003.pt" and len(again.metrics) == 3
    assert not again.model.training
    model, loaded_cfg, state = load_pretrained(run, "cpu")
    assert loaded_cfg == again.config and state["epoch"] == 3
    assert state["provenance"]["torch"] == str(torch.__version__)
    # The reloaded checkpoint reproduces the logged held-out loss exactly.
    held_out = held_out_loss(model, shapes.test_images, loaded_cfg.eval_batch_size)
    assert held_out == state["metrics"][-1]["test_loss"]


def test_a_field_a_checkpoint_predates_counts_as_its_default():
    cfg = get_config("smoke")
    saved = cfg.to_dict()
    del saved["validation"]  # written before the field existed: such a run used the default
    run = Run(None, "run", cfg, cfg.identity("pretrain"), {}, make_shapes(8, 8), torch.device("cpu"))
    assert differences(run.saved_identity({"config": saved}), cfg.identity("pretrain")) == []
    moved = cfg.replace(validation=8).identity("pretrain")
    assert differences(run.saved_identity({"config": saved}), moved) == ["validation: 0 -> 8"]


def test_held_out_sum_scores_every_row_once_in_eval_mode_and_restores_the_mode():
    # 10 rows in batches of 4: the last, partial batch counts too. Sums of integers below 2**24 are
    # exact in fp32, so the total equals the reference bit for bit.
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(10)
    model = torch.nn.BatchNorm2d(3).train()
    modes = []

    def score(x, y):
        modes.append(model.training)
        return x.sum(dtype=torch.float32) + y.sum()

    total = held_out_sum(model, (images, labels), 4, score)
    assert total.item() == images.sum().item() + labels.sum().item()
    assert modes == [False] * 3 and model.training


def test_batch_larger_than_the_data_is_refused_before_the_run_dir_is_touched(tmp_path, shapes):
    cfg = get_config("smoke", tower="conv4", n_train=64, n_test=32, batch_size=128, epochs=3)
    with pytest.raises(ValueError, match="batch of 128 is more than the 64 training images"):
        resolve_and_pretrain(cfg, tmp_path / "run", data=shapes, progress=False)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------- the author's views in one batch


def images(b: int = 4, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, generator=gen)


def test_the_step_trains_on_the_originals_and_every_augmented_view_in_one_batch():
    x = images()
    torch.manual_seed(0)
    model = build_model("context", "conv4")
    seen = []
    forward_loss = model.forward_loss
    model.forward_loss = lambda batch: seen.append(batch.detach().clone()) or forward_loss(batch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    step = PretrainStep(model, opt, AUTHOR_AUG, gen, views=3, original=True)
    step(x)
    # the reference: the originals, then 3 x 4 draws (view-major) of the same generator
    ref_gen = torch.Generator().manual_seed(1)
    params = sample_params(12, AUTHOR_AUG, ref_gen, "cpu")
    expected = torch.cat([to_float(x), apply_params(to_float(x).repeat(3, 1, 1, 1), params, AUTHOR_AUG)])
    assert len(seen) == 1 and seen[0].shape == (16, 3, 32, 32)
    assert torch.equal(seen[0], expected)
    assert torch.equal(gen.get_state(), ref_gen.get_state())


def test_one_view_without_the_original_is_the_default_step():
    x = images()
    losses = []
    for views in ({}, {"views": 1, "original": False}):
        torch.manual_seed(0)
        model = build_model("context", "conv4")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        step = PretrainStep(model, opt, AugmentConfig(), torch.Generator().manual_seed(1), **views)
        losses.append(step(x))
    assert torch.equal(losses[0], losses[1])


def test_bad_views_are_refused():
    model = build_model("context", "conv4")
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="views"):
        PretrainStep(model, opt, AugmentConfig(), torch.Generator(), views=0)
