"""Towers (ResNet-32, Conv4), the context encoder, the decoder and the two autoencoders.

Read from the top: the small parts first (blocks, towers, decoder), then the two whole models.
Letters (docs/design.md, Notation): B batch, N = 16 patches, K = 8 neighbours, D = 64 tower features.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vwe.patches import N_NEIGHBOURS, N_PATCHES, PATCH, gather_context, gather_neighbours, patchify

TOWERS = ("resnet32", "conv4")
ENCODINGS = ("shared", "literal")
FEATURES = 64  # D, the tower's output size

# Per-channel statistics of the CIFAR-100 training set, used by the towers to normalise their own
# input. A zero patch stays all-zero in [0, 1] pixel space (docs/design.md §1); only the tower sees it
# shifted.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as a tower's first operation."""

    def __init__(self, mean: tuple[float, ...] = CIFAR100_MEAN, std: tuple[float, ...] = CIFAR100_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


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


def row_conv2d(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv(x)` computed as a convolution down the rows only: (B, C, H, W) -> (B, O, H', W').

    A row of W pixels x C channels is one vector of W*C features (in channels_last memory it already
    is: (B, H, W, C)). The 2-d convolution is then a 1-d convolution over the H rows, from W*C to
    W'*O channels, whose kh taps are banded matrices holding the original kernel's kw taps along
    their diagonals (zero-padded columns simply have no entry). Exact, differentiable in the weight.
    Why: a tower convolution on an 8x8 patch with 16 channels is a matrix product with 16 output
    columns, which keeps the tensor cores mostly idle; here it has 128 (2.7x the multiply-adds,
    most of them by zero).
    """
    b, c, h, w = x.shape
    o, _, kh, kw = conv.weight.shape
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    # the input column each output column reads through each tap: (kw, W'); outside 0..W-1 is padding
    reads = torch.arange(kw, device=x.device)[:, None] * dw + torch.arange(w_out, device=x.device) * sw - pw
    shift = (reads[:, :, None] == torch.arange(w, device=x.device)).to(conv.weight.dtype)  # (kw, W', W)
    weight = torch.einsum("jvu,ocij->vouci", shift, conv.weight).reshape(w_out * o, w * c, kh, 1)
    rows = x.permute(0, 2, 3, 1).reshape(b, h, 1, w * c).permute(0, 3, 1, 2)  # (B, W*C, H, 1)
    y = F.conv2d(rows, weight, None, (sh, 1), (ph, 0), (dh, 1))  # (B, W'*O, H', 1)
    y = y.permute(0, 2, 3, 1).reshape(b, -1, w_out, o).permute(0, 3, 1, 2)  # (B, O, H', W')
    return y if conv.bias is None else y + conv.bias.view(1, o, 1, 1)


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters, same function) that can run in another form by map size: on
    maps of at most `dense_pixels` pixels as one matrix product (`dense_conv2d`), else on maps of at
    most `row_pixels` pixels as a convolution down the rows (`row_conv2d`). 0, the default, never.

    Why: the towers run on 8x8 patches, so their convolutions see 8x8, 4x4 and 2x2 maps with 16 to
    64 channels, where convolution kernels keep the tensor cores mostly idle; as a matrix product
    (B*16 rows of C*H*W) the same sums run at matrix-multiply speed (BENCHMARKS.md). The fast
    training step chooses (`vwe.train_step.StepOptions`); `use_conv_forms` sets it on a model.
    """

    dense_pixels: int = 0
    row_pixels: int = 0

    def form(self, pixels: int) -> str:
        """How `forward` computes a map of `pixels` pixels: "dense", "rows" or "conv" (the library's)."""
        if self.groups == 1 and self.padding_mode == "zeros":
            if pixels <= self.dense_pixels:
                return "dense"
            if pixels <= self.row_pixels:
                return "rows"
        return "conv"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        form = self.form(x.shape[-2] * x.shape[-1])
        if form == "dense":
            return dense_conv2d(x, self)
        if form == "rows":
            return row_conv2d(x, self)
        return super().forward(x)


def use_conv_forms(model: nn.Module, dense_pixels: int, row_pixels: int = 0, subpixel: bool = False) -> None:
    """Choose the form of `model`'s convolutions; the function and the parameters stay the same.

    Tower convolutions on maps of at most `dense_pixels` pixels run as a matrix product, the others
    on maps of at most `row_pixels` as a convolution down the rows (0 turns either off); `subpixel`
    runs the decoder's upsample + first convolution as one convolution on the small map.
    """
    for m in model.modules():
        if isinstance(m, Conv2d):
            m.dense_pixels, m.row_pixels = dense_pixels, row_pixels
        elif isinstance(m, Decoder):
            m.subpixel = subpixel


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual; 1x1 conv + BN projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet32(nn.Module):
    """The ResNet-32 tower of Patacchiola & Storkey (2020): 3 stages x 5 BasicBlocks, 16/32/64 channels.

    (B, 3, H, W) -> (B, 64). On an 8x8 patch the maps go 8x8 -> 4x4 -> 2x2 -> pool; on a 32x32
    image 32x32 -> 16x16 -> 8x8 -> pool. About 0.46 M parameters.
    """

    def __init__(self, blocks_per_stage: int = 5, widths: tuple[int, int, int] = (16, 32, FEATURES)):
        super().__init__()
        self.normalize = Normalize()
        self.stem = nn.Sequential(
            Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2  # 8x8 => 8x8, then 8x8 => 4x4 => 2x2
            blocks = [BasicBlock(cin, cout, stride)]
            blocks += [BasicBlock(cout, cout, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.out_features = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(self.normalize(x)))  # (B, 64, H/4, W/4)
        return x.mean(dim=(2, 3))  # adaptive global average pool: (B, 64)


class Conv4(nn.Module):
    """The Conv4 tower: four conv3x3-BN-ReLU blocks of 8/16/32/64 filters, 2x2 average pooling after
    blocks 1-3, global average pool after block 4. (B, 3, H, W) -> (B, 64). About 25 k parameters.
    """

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, FEATURES)):
        super().__init__()
        self.normalize = Normalize()
        layers, cin = [], 3
        for i, cout in enumerate(widths):
            layers += [Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.AvgPool2d(2))  # 8x8 => 4x4 => 2x2 => 1x1 on a patch
            cin = cout
        self.features = nn.Sequential(*layers)
        self.out_features = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalize(x)).mean(dim=(2, 3))  # (B, 64)


def make_tower(name: str) -> nn.Module:
    """A fresh tower by name: "resnet32" or "conv4"."""
    if name == "resnet32":
        return ResNet32()
    if name == "conv4":
        return Conv4()
    raise ValueError(f"unknown tower {name!r}; choose one of {TOWERS}")


class Upsample2x(nn.Module):
    """Nearest-neighbour 2x upsampling, (B, C, H, W) -> (B, C, 2H, 2W), written as a broadcast.

    The same function as `nn.Upsample(scale_factor=2, mode="nearest")`, but its backward is a sum
    over each 2x2 block; compiled, nn.Upsample's backward is a scatter with atomic adds, which was
    the largest single fused kernel of the H200 profile of the training step (0.375 ms of 8 ms).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)


def _subpixel_taps(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(2, 3, 3) 0/1: [a, i, p] = 1 where, in output phase a, the 3x3 kernel's tap p reads input
    row offset i - 1 of the small map.

    Nearest 2x upsampling then a 3x3 convolution: output row 2r + a reads upsampled rows 2r + a - 1,
    2r + a, 2r + a + 1, which are input rows r + floor((a + p - 1) / 2) for p = 0, 1, 2: rows
    r - 1, r, r for a = 0 and r, r, r + 1 for a = 1. Made on `device` (no host-to-device copy,
    which a CUDA graph could not capture).
    """
    a, i, p = (torch.arange(n, device=device) for n in (2, 3, 3))
    reads = torch.div(a[:, None] + p[None, :] - 1, 2, rounding_mode="floor") + 1  # (2, 3): the row i
    return (reads[:, None, :] == i[None, :, None]).to(dtype)


def subpixel_conv2d(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv(Upsample2x()(x))` for a 3x3, stride 1, padding 1 `conv`, without the upsampled map:
    (B, C, H, W) -> (B, O, 2H, 2W).

    One convolution of the small map with 4*O output channels, one per output phase, then a pixel
    shuffle that puts phase (a, b) of channel o at pixel (2i + a, 2j + b). Exact; the upsampled map
    (4x the input) is neither written nor read, and its backward (a sum over 2x2 blocks) is gone.
    """
    if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.groups != 1:
        raise ValueError(f"subpixel_conv2d needs a 3x3 convolution with stride 1 and padding 1, got {conv}")
    o, c = conv.weight.shape[:2]
    taps = _subpixel_taps(conv.weight.device, conv.weight.dtype)
    weight = torch.einsum("aip,bjq,ocpq->oabcij", taps, taps, conv.weight).reshape(4 * o, c, 3, 3)
    bias = None if conv.bias is None else conv.bias.repeat_interleave(4)
    return F.pixel_shuffle(F.conv2d(x, weight, bias, 1, 1), 2)  # (B, 4*O, H, W) -> (B, O, 2H, 2W)


class Decoder(nn.Module):
    """Patch embedding -> 8x8 patch: two linear layers, reshape, nearest upsample, three convs.

    (B, E) -> (B, 3, 8, 8) in [0, 1]. `subpixel` (off by default; `use_conv_forms`) computes the
    upsample and the first convolution together (`subpixel_conv2d`): the same function.
    """

    subpixel: bool = False

    def __init__(self, in_features: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(in_features, 512), nn.ReLU(),
            nn.Linear(512, 64 * 4 * 4), nn.ReLU(),
        )
        self.up = nn.Sequential(
            Upsample2x(),  # 4x4 => 8x8, nearest
            nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(64, 32, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(32, 3, 3, 1, 1), nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, 64, 4, 4)  # (B, 64, 4, 4)
        if self.subpixel:
            return self.up[2:](subpixel_conv2d(x, self.up[1]))  # (B, 3, 8, 8)
        return self.up(x)  # (B, 3, 8, 8)


def check_images(x: torch.Tensor) -> None:
    """Refuse anything but float images (B, 3, 32, 32), with a hint at the usual slip.

    Only dtype and shape are checked, and the message is built only on failure: a range check
    would cost a host sync every step, and formatting the batch size would make torch.compile
    specialise on it.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a tensor of float images (B, 3, 32, 32), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected float images (B, 3, 32, 32) in [0, 1], {_described(x)}: convert "
                        "with vwe.data.to_float")
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != 32 or x.shape[3] != 32:
        hint = ("channels last? use x.permute(0, 3, 1, 2)" if x.ndim == 4 and x.shape[-1] == 3
                else "a batch of 3-channel 32x32 images (one image: x.unsqueeze(0))")
        raise ValueError(f"expected float images (B, 3, 32, 32) in [0, 1], {_described(x)}: {hint}")


def _described(x: torch.Tensor) -> str:
    return f"got {str(x.dtype).removeprefix('torch.')} {tuple(x.shape)}"


class Autoencoder(nn.Module):
    """What both autoencoders share: decode every patch embedding, MSE loss, image embedding.

    Subclasses define `encode(x)`: (B, 3, 32, 32) in [0, 1] -> (B, 16, E), starting with
    `check_images(x)`; `forward`, `forward_loss` and `image_embedding` all go through it.
    """

    embed_dim: int

    def __init__(self, tower: str | nn.Module, embed_dim_per_tower: int):
        super().__init__()
        self.tower = make_tower(tower) if isinstance(tower, str) else tower
        self.tower_name = tower if isinstance(tower, str) else type(tower).__name__.lower()
        self.embed_dim = embed_dim_per_tower * self.tower.out_features
        self.decoder = Decoder(self.embed_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, 16, E) -> (B, 16, 3, 8, 8)."""
        b, n, e = z.shape
        return self.decoder(z.reshape(b * n, e)).view(b, n, 3, PATCH, PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct every patch: (B, 3, 32, 32) -> (B, 16, 3, 8, 8)."""
        return self.decode(self.encode(x))

    def forward_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared error over all 16 targets of every image (the paper's L2 up to a constant)."""
        recon = self.forward(x)
        return F.mse_loss(recon.float(), patchify(x).float())

    def image_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The 16 patch embeddings concatenated in patch order: (B, 3, 32, 32) -> (B, 16 * E)."""
        return self.encode(x).flatten(1)

    def tower_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The tower's features of the 16 patches themselves, in patch order: (B, 3, 32, 32) -> (B, 16 * D).

        The simple autoencoder's image embedding. For the context autoencoder these are the 1024
        features that its 8192-d embedding repeats into contexts (less the zero patch's).
        """
        check_images(x)
        patches = patchify(x)  # (B, 16, 3, 8, 8)
        return self.tower(patches.flatten(0, 1)).view(len(x), -1)  # (B*16, D) -> (B, 16*D)


class ContextAutoencoder(Autoencoder):
    """The context patch autoencoder: each patch is rebuilt from the tower features of its 8 neighbours.

    encoding="literal" runs the tower on all B*16*8 context patches, as the paper is written (128
    tower passes per image). encoding="shared" (default) runs it once on the 16 patches plus once on
    the zero patch and gathers the features into contexts (17 passes per image). The two
    are equal in eval mode. In train mode BatchNorm's batch statistics differ: the literal form sees
    every patch once per neighbour slot and 44 zero patches per image, the shared form each patch
    once and the zero patch once per batch.
    """

    # A data-parallel run with synchronised BatchNorm sets (has_zero_patch, sum_across_processes)
    # (vwe.distributed.prepare_model): in train mode only rank 0 adds the zero patch to its tower
    # batch and the others receive its feature, so BatchNorm sees the global B*16 + 1 patches once.
    zero_patch_sharing: tuple[bool, Callable[[torch.Tensor], torch.Tensor]] | None = None

    def __init__(self, tower: str | nn.Module = "resnet32", encoding: str = "shared"):
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; choose one of {ENCODINGS}")
        super().__init__(tower, N_NEIGHBOURS)
        self.encoding = encoding

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) -> (B, 16, 8 * D): each target's context features in context order."""
        check_images(x)
        patches = patchify(x)  # (B, 16, 3, 8, 8)
        b, n = patches.shape[:2]
        if self.encoding == "literal":
            context = gather_context(patches)  # (B, 16, 8, 3, 8, 8)
            feats = self.tower(context.flatten(0, 2))  # (B*16*8, D)
            return feats.view(b, n, -1)  # (B, 16, 8*D)
        # One tower call on the 16*B patches and the zero patch together, so BatchNorm in train mode
        # normalises them as one batch (a separate batch of one zero patch would break Conv4's 1x1 BN).
        sharing = self.zero_patch_sharing if self.training else None
        zeros = 1 if sharing is None or sharing[0] else 0
        flat = torch.cat([patches.flatten(0, 1), patches.new_zeros(zeros, *patches.shape[2:])])
        feats = self.tower(flat)  # (B*16 + zeros, D)
        # the zero patch's feature; a process without it sums no rows: zeros, still in the graph
        zero = feats[b * n:].sum(0)  # (D,)
        if sharing is not None:
            zero = sharing[1](zero)  # rank 0's feature on every process
        context = gather_neighbours(feats[:b * n].view(b, n, -1), zero)  # (B, 16, 8, D)
        return context.flatten(2)  # (B, 16, 8*D)


class PatchAutoencoder(Autoencoder):
    """The simple autoencoder baseline: each patch is rebuilt from the tower features of itself."""

    def __init__(self, tower: str | nn.Module = "resnet32"):
        super().__init__(tower, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) -> (B, 16, D)."""
        return self.tower_embedding(x).view(len(x), N_PATCHES, -1)


MODELS = ("context", "patch")


def build_model(model: str = "context", tower: str = "resnet32", encoding: str = "shared") -> Autoencoder:
    """An autoencoder by name: model "context" (with `encoding`) or "patch" (the simple baseline)."""
    if model == "context":
        return ContextAutoencoder(tower, encoding)
    if model == "patch":
        return PatchAutoencoder(tower)
    raise ValueError(f"unknown model {model!r}; choose one of {MODELS}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Classifier(nn.Module):
    """A tower on the whole 32x32 image plus a linear head: the supervised upper bound.

    (B, 3, 32, 32) -> (B, classes) logits.
    """

    def __init__(self, tower: str = "resnet32", num_classes: int = 100):
        super().__init__()
        self.tower = make_tower(tower)
        self.head = nn.Linear(self.tower.out_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.tower(x)  # (B, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
