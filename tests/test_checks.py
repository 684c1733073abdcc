"""vwe.checks: ints that are not bools, and the one image check every module calls with its own terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vwe.checks import check_images, is_int, is_real


def test_is_int_and_is_real_refuse_bools():
    assert [is_int(v) for v in (3, np.int64(3), True, np.bool_(True), 3.0, "3", None)] == [
        True, True, False, False, False, False, False]
    assert [is_real(v) for v in (3, 2.5, np.float32(2.5), False, "2.5", 1j)] == [
        True, True, True, False, False, False]


def test_check_images_passes_what_it_asks_for():
    check_images(torch.rand(2, 3, 32, 32))
    check_images(torch.rand(2, 3, 32, 32, dtype=torch.float64))
    check_images(torch.zeros(5, 3, 32, 32, dtype=torch.uint8), dtype="uint8", name="images")
    check_images(torch.zeros(1, 7, 12, 12, dtype=torch.int64), dtype="any", shape=("B", "C", "H", "W"))
    check_images(torch.rand(4, 3, 9, 5), shape=("B", 3, "H", "W"))  # letters take any size


def test_check_images_says_what_was_wrong_and_what_to_do():
    # what vwe.train_step's TrainStep._check asks of a training batch
    batch = dict(dtype="uint8", shape=("B", 3, 32, 32), name="a training batch")
    cases = [
        (torch.rand(2, 3, 32, 32), batch, TypeError,
         r"^a training batch must be uint8 images of shape \(B, 3, 32, 32\), got float32 \(2, 3, 32, 32\): "
         r"pass the uint8 images a Dataset holds$"),
        ([1, 2], batch, TypeError, r"got list, not a torch.Tensor: pass a tensor$"),
        (torch.zeros(2, 3, 28, 28, dtype=torch.uint8), batch, ValueError, r"got uint8 \(2, 3, 28, 28\)$"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), {}, TypeError,
         r"^x must be float images in \[0, 1\] of shape \(B, 3, 32, 32\), got uint8 \(2, 3, 32, 32\): "
         r"convert with vwe.data.to_float$"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.int64), {}, TypeError, r"got int64 \(2, 3, 32, 32\)$"),
        (torch.rand(2, 32, 32, 3), {}, ValueError, r"channels last\? use x.permute\(0, 3, 1, 2\)$"),
        (torch.rand(3, 32, 32), {}, ValueError, r"one image\? use x.unsqueeze\(0\)$"),
        (torch.rand(2, 3, 32, 32).numpy(), {}, TypeError, r"got ndarray, not a torch.Tensor: torch.from_"),
        (torch.rand(2, 3, 32, 32), dict(dtype="uint8", fix="like Dataset.test_images"), TypeError,
         r"float32 \(2, 3, 32, 32\): like Dataset.test_images$"),
        (torch.rand(2, 3, 8), dict(dtype="any", shape=("B", "C", "H", "W"), name="y"), ValueError,
         r"^y must be images of shape \(B, C, H, W\), got float32 \(2, 3, 8\): one image"),
    ]
    for x, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            check_images(x, **kwargs)
    with pytest.raises(ValueError, match="unknown image dtype 'int'"):
        check_images(torch.rand(2, 3, 32, 32), dtype="int")
