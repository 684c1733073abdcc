"""The towers' convolution: `nn.Conv2d` that on small maps computes the same sums as one matrix product.

The towers (`vwe.models`) are built of `Conv2d`, which computes as the library's convolution until
`set_dense_pixels` says otherwise: the GPU training step does (`vwe.fast_step.FastStep`, with
`StepOptions.dense_convs`), when it makes the model ready for its device. Why that pays on a GPU and
by how much is measured in BENCHMARKS.md ("Run 2: the levers tried after run 1"); the CPU, and so
the course, keeps the library's convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def dense_conv2d(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv(x)` computed as one matrix product: (B, C, H, W) -> (B, O, H', W').

    On a map of a few pixels a convolution is a small dense linear map from the C*H*W inputs to the
    O*H'*W' outputs. Its matrix is the convolution of the identity basis (row i: the output for an
    input that is 1 at position i, 0 elsewhere), which is exact and differentiable in the weight; the
    product with it sums the same weight x input terms as the convolution, plus zeros. Rows and
    columns are in (H, W, C) order, so a channels_last input and output need no copy.
    """
    b, c, h, w = x.shape
    d = c * h * w
    basis = torch.eye(d, dtype=x.dtype, device=x.device).view(d, h, w, c).permute(0, 3, 1, 2)
    matrix = F.conv2d(basis, conv.weight, None, conv.stride, conv.padding, conv.dilation)  # (d, O, H', W')
    o, h2, w2 = matrix.shape[1:]
    y = x.permute(0, 2, 3, 1).reshape(b, d) @ matrix.permute(0, 2, 3, 1).reshape(d, o * h2 * w2)
    y = y.view(b, h2, w2, o).permute(0, 3, 1, 2)  # (B, O, H', W'), channels_last strides
    return y if conv.bias is None else y + conv.bias.view(1, o, 1, 1)


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters, same function) that on maps of at most `dense_pixels` pixels
    runs as one matrix product (`dense_conv2d`); 0, the default, never (`set_dense_pixels` sets it on a
    whole model).

    Why: the towers run on 8x8 patches, so their convolutions see 8x8, 4x4 and 2x2 maps with 16 to
    64 channels, where convolution kernels keep the tensor cores mostly idle; as a matrix product
    (B*16 rows of C*H*W) the same sums run at matrix-multiply speed (BENCHMARKS.md). No parameter or
    buffer is added: the state_dict is `nn.Conv2d`'s.
    """

    def __init__(self, *args, dense_pixels: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.dense_pixels = dense_pixels

    def form(self, pixels: int) -> str:
        """How `forward` computes a map of `pixels` pixels: "dense" or "conv" (the library's)."""
        if self.groups == 1 and self.padding_mode == "zeros" and pixels <= self.dense_pixels:
            return "dense"
        return "conv"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form(x.shape[-2] * x.shape[-1]) == "dense":
            return dense_conv2d(x, self)
        return super().forward(x)


def set_dense_pixels(model: nn.Module, pixels: int) -> nn.Module:
    """Every `Conv2d` of `model` (the towers' convolutions; the decoder's are plain `nn.Conv2d`) runs
    maps of at most `pixels` pixels as one matrix product, 0: none. Parameters, buffers and so
    checkpoints are untouched. Returns `model`."""
    for m in model.modules():
        if isinstance(m, Conv2d):
            m.dense_pixels = pixels
    return model
