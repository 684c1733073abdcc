"""Towers (ResNet-32, Conv4), the context encoder, the decoder and the two autoencoders.

Read from the top: the small parts first (blocks, towers, decoder), then the two whole models.
Letters (docs/design.md, Notation): B batch, N = 16 patches, K = 8 neighbours, D = 64 tower features.

The towers' convolutions are `vwe.dense_conv.Conv2d`: `nn.Conv2d` as built here, which the GPU training
step sets to run maps of a few pixels as one matrix product (`vwe.dense_conv.set_dense_pixels`). The
parameters, and so the checkpoints, are `nn.Conv2d`'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vwe import distributed
from vwe.checks import check_images
from vwe.dense_conv import Conv2d
from vwe.patches import N_NEIGHBOURS, N_PATCHES, PATCH, gather_context, gather_neighbours, patchify

TOWERS = ("resnet32", "conv4", "conv4-strided")
DECODERS = ("text", "author")  # the paper's text (docs/design.md §7) | the author's code
ENCODINGS = ("shared", "literal", "slots")
TOWER_DIM = 64  # D, the size of a tower's features

# Per-channel statistics of the CIFAR-100 training set, used by the towers to normalise their own
# input. A zero patch stays all-zero in [0, 1] pixel space (docs/design.md §1); only the tower sees it
# shifted.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def channels_last(tower: nn.Module) -> None:
    """Store `tower`'s convolution weights channels_last (NHWC), as every tower here is built, on every
    device. oneDNN's CPU convolutions run faster in that layout, in training and in feature extraction
    (BENCHMARKS.md, "The CPU's layout"), and the tower's maps come out channels_last too. cuDNN's
    tensor-core kernels want it as well. The decoder keeps the default layout: it gained nothing
    measurable, and its patches come out as a student expects them. The values are the same, only
    their order in memory differs; `load_state_dict` copies into this layout, so a reloaded model
    computes exactly what it computed when its run logged its scores."""
    tower.to(memory_format=torch.channels_last)


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as a tower's first operation."""

    def __init__(self, mean: tuple[float, ...] = CIFAR100_MEAN, std: tuple[float, ...] = CIFAR100_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


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

    def __init__(self, blocks_per_stage: int = 5, widths: tuple[int, int, int] = (16, 32, TOWER_DIM),
                 normalize: bool = True):
        super().__init__()
        self.normalize = Normalize() if normalize else nn.Identity()  # the author's code: [0, 1] pixels
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
        channels_last(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(self.normalize(x)))  # (B, 64, H/4, W/4)
        return x.mean(dim=(2, 3))  # adaptive global average pool: (B, 64)


class Conv4(nn.Module):
    """The Conv4 tower: four conv3x3-BN-ReLU blocks of 8/16/32/64 filters, 2x2 average pooling after
    blocks 1-3, global average pool after block 4. (B, 3, H, W) -> (B, 64). About 25 k parameters.
    """

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, TOWER_DIM), normalize: bool = True):
        super().__init__()
        self.normalize = Normalize() if normalize else nn.Identity()
        layers, cin = [], 3
        for i, cout in enumerate(widths):
            conv = Conv2d(cin, cout, 3, 1, 1, bias=False)
            layers += [conv, nn.BatchNorm2d(cout), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.AvgPool2d(2))  # 8x8 => 4x4 => 2x2 => 1x1 on a patch
            cin = cout
        self.features = nn.Sequential(*layers)
        self.out_features = widths[-1]
        channels_last(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalize(x)).mean(dim=(2, 3))  # (B, 64)


class StridedConv4(nn.Module):
    """The Conv4 of the author's code (`models/conv4.py`): four conv3x3-BN-ReLU blocks of 8/16/32/64
    filters with strides 2, 2, 4, 2 and no pooling. (B, 3, 8, 8) -> (B, 64): 8x8 => 4x4 => 2x2 =>
    1x1 => 1x1, flattened. On a larger input the map is averaged to one pixel. About 25 k parameters.
    """

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, TOWER_DIM),
                 strides: tuple[int, ...] = (2, 2, 4, 2), normalize: bool = True):
        super().__init__()
        self.normalize = Normalize() if normalize else nn.Identity()
        layers, cin = [], 3
        for cout, stride in zip(widths, strides, strict=True):
            conv = Conv2d(cin, cout, 3, stride, 1, bias=False)
            layers += [conv, nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.out_features = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # normal(0, sqrt(2 / (k * k * C_out))), as the author's code
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        channels_last(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalize(x)).mean(dim=(2, 3))  # (B, 64)


def make_tower(name: str, normalize: bool = True) -> nn.Module:
    """A fresh tower by name (one of TOWERS); `normalize=False` feeds it the [0, 1] pixels as they are."""
    if name == "resnet32":
        return ResNet32(normalize=normalize)
    if name == "conv4":
        return Conv4(normalize=normalize)
    if name == "conv4-strided":
        return StridedConv4(normalize=normalize)
    raise ValueError(f"unknown tower {name!r}; choose one of {TOWERS}")


class Decoder(nn.Module):
    """Patch embedding -> 8x8 patch: two linear layers, reshape, nearest upsample, three convs.

    (B, E) -> (B, 3, 8, 8) in [0, 1]. style="text" is docs/design.md §7 (hidden 512, convs 64 -> 64
    -> 32 -> 3, no BatchNorm); style="author" is the author's code (`models/ConvPatchAE.py`,
    `models/ResnetAE.py`): hidden 512 for the context model and 128 for the simple one, convs 64 ->
    32 -> 16 -> 3 with BatchNorm after the first two.
    """

    def __init__(self, in_features: int, style: str = "text"):
        super().__init__()
        if style not in DECODERS:
            raise ValueError(f"unknown decoder {style!r}; choose one of {DECODERS}")
        hidden = 128 if style == "author" and in_features == TOWER_DIM else 512
        self.fc = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(),
            nn.Linear(hidden, 64 * 4 * 4), nn.ReLU(),
        )
        if style == "text":
            convs = [nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(), nn.Conv2d(64, 32, 3, 1, 1), nn.ReLU(),
                     nn.Conv2d(32, 3, 3, 1, 1)]
        else:
            convs = [nn.Conv2d(64, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(),
                     nn.Conv2d(32, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 3, 3, 1, 1)]
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),  # 4x4 => 8x8
            *convs, nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, 64, 4, 4)  # (B, 64, 4, 4)
        return self.up(x)  # (B, 3, 8, 8)


class Autoencoder(nn.Module):
    """What both autoencoders share: decode every patch embedding, MSE loss, image embedding.

    Subclasses define `encode(x)`: (B, 3, 32, 32) in [0, 1] -> (B, 16, E), starting with
    `check_images(x)`; `forward`, `forward_loss` and `image_embedding` all go through it.
    """

    embed_dim: int

    def __init__(self, tower: str | nn.Module, embed_dim_per_tower: int, decoder: str = "text",
                 normalize: bool = True):
        super().__init__()
        self.tower = make_tower(tower, normalize) if isinstance(tower, str) else tower
        self.embed_dim = embed_dim_per_tower * self.tower.out_features
        self.decoder = Decoder(self.embed_dim, decoder)

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
    tower passes per image). encoding="slots" does the same work as 8 tower calls, one per neighbour
    slot on its B*16 patches, as the author's code does (`models/ResnetPatchAE.py`). encoding="shared"
    (default) runs it once on the 16 patches plus once on the zero patch and gathers the features
    into contexts (17 passes per image). The three are equal in eval mode. In train mode BatchNorm's
    batch statistics differ: the literal form sees every patch once per neighbour slot and 44 zero
    patches per image in one batch, the slots form the same patches as 8 batches (each slot's own
    statistics, zero patches included), the shared form each patch once and the zero patch once per
    batch.

    `sync_zero_patch=True` is for a data-parallel run (`vwe.distributed`) with synchronised
    BatchNorm: the shared form's zero patch is then one per global batch, as one process has it
    (`tower_with_zero_patch`).
    """

    def __init__(self, tower: str | nn.Module = "resnet32", encoding: str = "shared", decoder: str = "text",
                 normalize: bool = True, sync_zero_patch: bool = False):
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; choose one of {ENCODINGS}")
        super().__init__(tower, N_NEIGHBOURS, decoder, normalize)
        self.encoding, self.sync_zero_patch = encoding, sync_zero_patch

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) -> (B, 16, 8 * D): each target's context features in context order."""
        check_images(x)
        patches = patchify(x)  # (B, 16, 3, 8, 8)
        b, n = patches.shape[:2]
        if self.encoding == "literal":
            context = gather_context(patches)  # (B, 16, 8, 3, 8, 8)
            feats = self.tower(context.flatten(0, 2))  # (B*16*8, D)
            return feats.view(b, n, -1)  # (B, 16, 8*D)
        if self.encoding == "slots":
            context = gather_context(patches)  # (B, 16, 8, 3, 8, 8)
            feats = [self.tower(context[:, :, k].flatten(0, 1)) for k in range(N_NEIGHBOURS)]  # 8 x (B*16, D)
            return torch.cat(feats, dim=1).view(b, n, -1)  # (B, 16, 8*D), slot by slot
        feats, zero = self.tower_with_zero_patch(patches.flatten(0, 1))  # (B*16, D), (D,)
        context = gather_neighbours(feats.view(b, n, -1), zero)  # (B, 16, 8, D)
        return context.flatten(2)  # (B, 16, 8*D)

    def tower_with_zero_patch(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tower on (M, 3, 8, 8) patches and on the zero patch: (M, D) and the zero patch's (D,).

        One tower call on both together, so BatchNorm in train mode normalises them as one batch (a
        separate batch of one zero patch would break Conv4's 1x1 BatchNorm). With `sync_zero_patch`,
        training data-parallel, only rank 0 adds the zero patch and the others receive its feature,
        so synchronised BatchNorm sees the global B*16 + 1 patches once, as one process would.
        """
        if not (self.sync_zero_patch and self.training):
            feats = self.tower(torch.cat([flat, flat.new_zeros(1, *flat.shape[1:])]))  # (M + 1, D)
            return feats[:-1], feats[-1]
        zeros = 1 if distributed.is_main() else 0
        feats = self.tower(torch.cat([flat, flat.new_zeros(zeros, *flat.shape[1:])]))  # (M + zeros, D)
        # a process without the zero patch sums no rows: zeros, still in the graph
        return feats[:len(flat)], distributed.all_reduce_sum(feats[len(flat):].sum(0))


class PatchAutoencoder(Autoencoder):
    """The simple autoencoder baseline: each patch is rebuilt from the tower features of itself."""

    def __init__(self, tower: str | nn.Module = "resnet32", decoder: str = "text", normalize: bool = True):
        super().__init__(tower, 1, decoder, normalize)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) -> (B, 16, D)."""
        return self.tower_embedding(x).view(len(x), N_PATCHES, -1)


MODELS = ("context", "patch")
MODEL_LABELS = {"patch": "simple AE", "context": "context AE"}  # how figures and tables name each model


def build_model(model: str = "context", tower: str = "resnet32", encoding: str = "shared",
                decoder: str = "text", normalize: bool = True, sync_zero_patch: bool = False) -> Autoencoder:
    """An autoencoder by name: model "context" (with `encoding` and `sync_zero_patch`) or "patch" (the
    simple baseline), `decoder` one of DECODERS, `normalize=False` for towers that see the [0, 1]
    pixels as they are."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {MODELS}")
    net = make_tower(tower, normalize)
    if model == "context":
        return ContextAutoencoder(net, encoding, decoder, sync_zero_patch=sync_zero_patch)
    return PatchAutoencoder(net, decoder)


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
