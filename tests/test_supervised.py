"""`vwe.supervised`: the supervised row's accuracy is computed in fp32, as every other row's features."""

from __future__ import annotations

import pytest
import torch

from vwe.data import make_shapes, to_float
from vwe.models import Classifier
from vwe.supervised import accuracy


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
