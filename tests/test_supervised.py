"""`vwe.supervised`: the supervised baseline's pieces (crop + flip, lr schedule, exact resume, learning),
and its accuracy computed in fp32, as every other row's features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from entry import resolve_and_train_supervised

import vwe.runs
from vwe.config import get_config
from vwe.data import make_shapes, to_float
from vwe.models import Classifier
from vwe.runs import ConfigMismatchError
from vwe.supervised import SupervisedRecipe, accuracy, crop_flip, draw_crop_flip, lr_at

# The tiny config of the table's tests (test_table.py); the supervised runs below are cut from it, on
# 128 training / 64 test Shapes (the `shapes` fixture, tests/conftest.py).
CFG = get_config("smoke", n_train=128, n_test=64, epochs=1, batch_size=64, probe_epochs=2,
                 probe_seeds=(0, 1), eval_batch_size=128)
SHAPES = (128, 64)


def reference_accuracy(model, images, labels, batch_size: int) -> float:
    """Top-1 % from fp32 logits of the same batches, no autocast anywhere."""
    with torch.no_grad():
        hits = sum(int((model(to_float(images[i:i + batch_size])).argmax(1)
                        == labels[i:i + batch_size]).sum())
                   for i in range(0, len(images), batch_size))
    return 100.0 * hits / len(images)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_accuracy_is_in_fp32_like_every_other_row(device, monkeypatch):
    """The table's rows share one precision: no reduced-precision autocast around the supervised
    row's held-out accuracy (on CUDA it was bf16, while the probes read fp32 features)."""
    requested = []
    real = torch.autocast

    def watch(device_type, dtype=None, enabled=True, **kwargs):
        requested.append(dtype)
        return real(device_type, dtype=dtype, enabled=enabled, **kwargs)

    monkeypatch.setattr(torch, "autocast", watch)
    data = make_shapes(64, 48, seed=0)
    torch.manual_seed(0)
    model = Classifier("conv4", data.num_classes).to(device).eval()
    images, labels = data.test_images.to(device), data.test_labels.to(device)
    got = accuracy(model, images, labels, batch_size=16)
    assert [d for d in requested if d not in (None, torch.float32)] == []
    # the same fp32 computation on the same batches: equal exactly
    assert got == reference_accuracy(model, images, labels, 16)


# ----------------------------------------------------------------------------- the supervised baseline


def test_lr_schedule_matches_multisteplr():
    recipe = SupervisedRecipe()
    for epochs in (1, 3, 15, 200):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=recipe.lr)
        milestones = [int(m * epochs) for m in recipe.milestones]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
        for epoch in range(1, epochs + 1):
            assert lr_at(epoch, epochs, recipe) == pytest.approx(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    assert [lr_at(e, 200, recipe) for e in (100, 101, 150, 151)] == pytest.approx([0.1, 0.01, 0.01, 0.001])


def test_crop_flip_gives_one_of_the_padded_crops():
    x = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    out = crop_flip(x, 4, *draw_crop_flip(len(x), 4, torch.Generator().manual_seed(0)))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (4, 4, 4, 4))
    seen = set()
    for i in range(len(x)):  # the per-image reference: every crop offset, flipped or not
        found = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                 if torch.equal(out[i], (lambda c: c.flip(2) if flip else c)(
                     padded[i, :, dy:dy + 32, dx:dx + 32]))]
        assert len(found) == 1
        seen.add(found[0])
    assert {s[2] for s in seen} == {False, True}
    assert {s[0] for s in seen} == set(range(9)) and {s[1] for s in seen} == set(range(9))


def test_supervised_resume_equals_an_uninterrupted_run(shapes, tmp_path, monkeypatch, killed_at_epoch_2):
    cfg = CFG.replace(tower="conv4", epochs=2)
    recipe = SupervisedRecipe(batch_size=32)
    straight = resolve_and_train_supervised(cfg, tmp_path / "straight", shapes, recipe, progress=False)
    real_save = vwe.runs.save_checkpoint
    monkeypatch.setattr(vwe.runs, "save_checkpoint", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        resolve_and_train_supervised(cfg, tmp_path / "resumed", shapes, recipe, progress=False)
    monkeypatch.setattr(vwe.runs, "save_checkpoint", real_save)
    resumed = resolve_and_train_supervised(cfg, tmp_path / "resumed", shapes, recipe, progress=False)
    assert [m["epoch"] for m in resumed.metrics] == [1, 2]
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k
    assert resumed.test_acc == straight.test_acc

    mtime = resumed.checkpoint.stat().st_mtime_ns  # complete: a rerun trains nothing
    again = resolve_and_train_supervised(cfg, tmp_path / "resumed", shapes, recipe, progress=False)
    assert again.test_acc == straight.test_acc
    assert resumed.checkpoint.stat().st_mtime_ns == mtime
    with pytest.raises(ConfigMismatchError, match="epochs: 2 -> 3"):
        resolve_and_train_supervised(cfg.replace(epochs=3), tmp_path / "resumed", shapes, recipe,
                                     progress=False)


def test_supervised_learns(tmp_path):
    cfg = CFG.replace(tower="conv4", epochs=6, n_train=None, n_test=None)
    shapes = make_shapes(256, 64, seed=1)
    res = resolve_and_train_supervised(cfg, tmp_path, shapes, SupervisedRecipe(batch_size=32), progress=False)
    losses = [m["train_loss"] for m in res.metrics]
    assert losses[0] > 2.3 and losses[-1] < losses[0] - 0.1  # from about ln(10) = 2.30 downwards
    assert [m["lr"] for m in res.metrics] == pytest.approx([0.1] * 3 + [0.01] + [0.001] * 2)


def test_supervised_refuses_a_batch_larger_than_the_data(shapes, tmp_path):
    with pytest.raises(ValueError, match="batch of 128 is more than the 64 training images"):
        resolve_and_train_supervised(CFG.replace(n_train=64), tmp_path, shapes, progress=False)
