"""Batched per-sample augmentations for pretraining: random resized crop, rotation, colour jitter.

Every function takes a whole batch (B, 3, H, W) of float pixels in [0, 1] on any device, with one
random parameter per sample, and is built from plain tensor ops: no per-image Python loop, no host
sync (`.item()`, Python branches on tensor values), no data-dependent shapes, so that it runs on the
GPU where the dataset lives and under `torch.compile` / CUDA graphs (think airbench).

Geometry: crop and rotation are ONE affine map per sample, applied with a single `grid_sample`.
Colour: brightness, contrast, saturation and hue follow torchvision's definitions, in a fixed order.

    params = sample_params(B, cfg, generator, images.device)   # B draws of every parameter
    out = apply_params(images, params, cfg)                     # (B, 3, H, W) -> (B, 3, H, W)
    out = augment(images, cfg, generator)                       # the two lines above in one

Dynamo cannot trace a `torch.Generator` argument, so under `torch.compile` the draw in
`sample_params` is one graph break; `apply_params` compiles whole (`fullgraph=True`).
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from vwe.checks import check_images, is_int, is_real

# ITU-R 601-2 luma. torchvision's tensor kernels use 0.2989 for red (MATLAB's rounding, sum 0.9999);
# with weights that sum to 1 a grey pixel is a fixed point of the saturation blend.
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the pretraining augmentations (docs/design.md §4).

    The identity config `AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1), rotation=0,
    jitter_p=0)` returns a square image bit for bit; callers that want no augmentation at all may
    also simply not call `augment`. The ratio is in pixels, like torchvision's: on a non-square
    image, ratio (1, 1) crops a square (clamped to the image).
    """

    crop_scale: tuple[float, float] = (0.5, 1.0)  # fraction of the image area kept, in (0, 1]
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop width / height, sampled log-uniformly
    # degrees, uniform in [-rotation, rotation], or in [low, high] for a (low, high) pair (the author's
    # code: (0, 180)); positive = counter-clockwise
    rotation: float | tuple[float, float] = 15.0
    brightness: float = 0.4  # factor uniform in [max(0, 1 - x), 1 + x]
    contrast: float = 0.4  # same
    saturation: float = 0.4  # same
    hue: float = 0.1  # shift uniform in [-x, x], in fractions of a full turn, x <= 0.5
    jitter_p: float = 0.8  # probability that a sample gets the colour jitter at all

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("crop_") and not (isinstance(value, tuple) and len(value) == 2):
                raise ValueError(f"AugmentConfig.{f.name} must be a (low, high) tuple, got {value!r}")
            for x in value if isinstance(value, tuple) else (value,):
                if not is_real(x) or not math.isfinite(x):
                    raise ValueError(f"AugmentConfig.{f.name} must be finite numbers, got {value!r}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"AugmentConfig.crop_scale needs 0 < low <= high <= 1, got {(lo, hi)}")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"AugmentConfig.crop_ratio needs 0 < low <= high, got {(lo, hi)}")
        if isinstance(self.rotation, tuple):
            if len(self.rotation) != 2 or not -180 <= self.rotation[0] <= self.rotation[1] <= 180:
                raise ValueError(f"AugmentConfig.rotation as a (low, high) range needs -180 <= low <= high "
                                 f"<= 180 degrees, got {self.rotation}")
        elif not 0 <= self.rotation <= 180:
            raise ValueError(f"AugmentConfig.rotation must be in [0, 180] degrees, got {self.rotation}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"AugmentConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"AugmentConfig.hue must be in [0, 0.5] (of a turn), got {self.hue}")
        if not 0 <= self.jitter_p <= 1:
            raise ValueError(f"AugmentConfig.jitter_p must be a probability in [0, 1], got {self.jitter_p}")


    @property
    def rotation_range(self) -> tuple[float, float]:
        """(low, high) degrees of the uniform rotation angle."""
        r = self.rotation
        return r if isinstance(r, tuple) else (-r, r)


@dataclass(frozen=True)
class AugmentParams:
    """One draw of every augmentation parameter per sample; each field is (B,)."""

    scale: Tensor  # crop area / image area
    ratio: Tensor  # crop width / height
    cx: Tensor  # crop position in [-1, 1]: -1 touches the left edge, 0 centred, 1 the right edge
    cy: Tensor  # same, -1 top, 1 bottom
    angle: Tensor  # degrees, counter-clockwise
    brightness: Tensor  # multiplicative factors
    contrast: Tensor
    saturation: Tensor
    hue: Tensor  # shift, fraction of a turn
    jitter: Tensor  # bool, apply the colour jitter to this sample


def _per_sample(x: Tensor, images: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1) in the images' dtype, to broadcast over channels and pixels."""
    return x.to(images.dtype).view(-1, 1, 1, 1)


def sample_params(
    batch: int, cfg: AugmentConfig, generator: torch.Generator, device: torch.device | str
) -> AugmentParams:
    """Draw every parameter for `batch` samples on `device` (the generator must live there too).

    All draws come from one (B, 10) uniform tensor, whatever the config, so the generator advances
    the same way for every config and one kernel launch makes them all.
    """
    if not is_int(batch) or batch < 0:
        raise ValueError(f"batch must be a non-negative int, got {batch!r}")
    device = torch.device(device)
    if generator.device.type != device.type:
        raise ValueError(
            f"generator lives on {generator.device} but the images on {device}; "
            f"make it with torch.Generator(device={str(device)!r})"
        )
    u = torch.rand(batch, 10, generator=generator, device=device)  # (B, 10) in [0, 1)

    def uniform(column: int, lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * u[:, column]

    def factor(column: int, strength: float) -> Tensor:
        return uniform(column, max(0.0, 1.0 - strength), 1.0 + strength)

    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    return AugmentParams(
        scale=uniform(0, *cfg.crop_scale),
        # log-uniform like torchvision, so that 3/4 and 4/3 are equally likely
        ratio=torch.exp(uniform(1, log_lo, log_hi)),
        cx=uniform(2, -1.0, 1.0),
        cy=uniform(3, -1.0, 1.0),
        angle=uniform(4, *cfg.rotation_range),
        brightness=factor(5, cfg.brightness),
        contrast=factor(6, cfg.contrast),
        saturation=factor(7, cfg.saturation),
        hue=uniform(8, -cfg.hue, cfg.hue),
        jitter=u[:, 9] < cfg.jitter_p,
    )


def crop_theta(
    scale: Tensor, ratio: Tensor, cx: Tensor, cy: Tensor, angle_deg: Tensor, height: int, width: int
) -> Tensor:
    """Per-sample crop-then-rotate as `affine_grid` matrices: (B,) x 5 -> (B, 2, 3).

    theta maps an output location p, in normalised coordinates (x right, y down, [-1, 1]), to the
    input location it samples: p -> S R^-1 p + c, where R rotates the resized crop about its centre
    (in pixel units, hence the H/W factors for non-square images), S is the crop's size as a
    fraction of the image and c the crop's centre.
    """
    area = scale * (height * width)  # in pixels
    # a box too long for the image (extreme ratio) is clamped to it instead of torchvision's retries
    fw = (torch.sqrt(area * ratio) / width).clamp(max=1.0)
    fh = (torch.sqrt(area / ratio) / height).clamp(max=1.0)
    # cx in [-1, 1] spans the room left beside the box, so the box always lies inside the image
    centre_x = cx.clamp(-1.0, 1.0) * (1.0 - fw)
    centre_y = cy.clamp(-1.0, 1.0) * (1.0 - fh)
    rad = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(rad), torch.sin(rad)
    # with y pointing down, turning counter-clockwise has the inverse [[cos, -sin], [sin, cos]]
    row_x = torch.stack([fw * cos, -fw * sin * (height / width), centre_x], dim=-1)  # (B, 3)
    row_y = torch.stack([fh * sin * (width / height), fh * cos, centre_y], dim=-1)  # (B, 3)
    return torch.stack([row_x, row_y], dim=1)  # (B, 2, 3)


def crop_rotate(
    images: Tensor, scale: Tensor, ratio: Tensor, cx: Tensor, cy: Tensor, angle_deg: Tensor
) -> Tensor:
    """Random-resized-crop then rotate, as one bilinear resampling: (B, 3, H, W) -> (B, 3, H, W).

    The crop covers `scale` of the image area with width/height `ratio`, placed by cx, cy in
    [-1, 1] (see AugmentParams), is resized back to H x W, and rotated by `angle_deg` degrees
    counter-clockwise (torchvision's convention). Because it is one map, the corners a rotation
    brings in show the image around the crop where there is one, and zeros (torchvision's default
    fill) only beyond the image's border; torchvision's crop-then-rotate would fill them all with 0.
    Zero padding also means that an output pixel whose sample falls within half a pixel of the
    image's border blends with that zero (torchvision's resize would repeat the edge pixel): only
    crops flush with the border see it, on their outer row or column.
    """
    check_images(images, shape=("B", 3, "H", "W"), name="images")
    B, _, H, W = images.shape
    theta = crop_theta(scale, ratio, cx, cy, angle_deg, H, W).to(images.dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, [B, 3, H, W], align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def grayscale(images: Tensor) -> Tensor:
    """Luma: (B, 3, H, W) -> (B, 1, H, W)."""
    r, g, b = images.unbind(dim=1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """factor * images + (1 - factor) * other, clamped; factor 0 gives `other`, 1 the images."""
    f = _per_sample(factor, images)
    return (f * images + (1 - f) * other).clamp(0.0, 1.0)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """Multiply every pixel of sample i by factor[i]: (B, 3, H, W), (B,) -> (B, 3, H, W)."""
    return (images * _per_sample(factor, images)).clamp(0.0, 1.0)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Blend sample i with the mean of its grey image: (B, 3, H, W), (B,) -> (B, 3, H, W)."""
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return _blend(images, mean, factor)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Blend sample i with its grey image: (B, 3, H, W), (B,) -> (B, 3, H, W)."""
    return _blend(images, grayscale(images), factor)


def rgb_to_hsv(images: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 3, H, W) hue in [0, 1), saturation, value."""
    r, g, b = images.unbind(dim=1)  # (B, H, W) each
    value = images.amax(dim=1)
    chroma = value - images.amin(dim=1)
    # grey pixels have chroma 0 (and black ones value 0): divide by 1 there, the result is 0 anyway
    saturation = chroma / torch.where(value > 0, value, torch.ones_like(value))
    c = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    # the sector of the hexagon is decided by the largest channel, red first on ties
    hue = torch.where(value == r, (g - b) / c, torch.where(value == g, (b - r) / c + 2, (r - g) / c + 4))
    hue = torch.remainder(hue / 6, 1.0)
    return torch.stack([hue, saturation, value], dim=1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """(B, 3, H, W) hue in [0, 1), saturation, value -> (B, 3, H, W) RGB in [0, 1]."""
    hue, saturation, value = hsv.unbind(dim=1)  # (B, H, W) each
    # closed form without sector tables: channel n in (R, G, B) = (5, 3, 1) drops from v to
    # v (1 - s) as k = (n + 6 h) mod 6 goes from 0 to 1, and rises back from k = 3 to 4
    # (arange, not torch.tensor([5, 3, 1]): no host-to-device copy, which CUDA graphs forbid)
    n = torch.arange(5, 0, -2, dtype=hsv.dtype, device=hsv.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6 * hue.unsqueeze(1), 6)  # (B, 3, H, W)
    ramp = torch.minimum(k, 4 - k).clamp(0.0, 1.0)
    return value.unsqueeze(1) * (1 - saturation.unsqueeze(1) * ramp)


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of sample i by shift[i] turns: (B, 3, H, W), (B,) -> (B, 3, H, W)."""
    hue, saturation, value = rgb_to_hsv(images).unbind(dim=1)
    hue = torch.remainder(hue + shift.to(images.dtype).view(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack([hue, saturation, value], dim=1)).clamp(0.0, 1.0)


def colour_jitter(
    images: Tensor,
    brightness: Tensor | None,
    contrast: Tensor | None,
    saturation: Tensor | None,
    hue: Tensor | None,
    apply: Tensor,
) -> Tensor:
    """Brightness, contrast, saturation, hue, on the samples where `apply` is true.

    (B, 3, H, W), (B,) x 5 -> (B, 3, H, W). A step given as None is skipped. The order is fixed
    (torchvision's ColorJitter shuffles it per call): a fixed order keeps the whole batch one
    static graph, and the four steps stay distinct augmentations either way. Every sample is
    computed and `torch.where` picks, so shapes never depend on how many samples were drawn.
    """
    check_images(images, shape=("B", 3, "H", "W"), name="images")
    out = images
    if brightness is not None:
        out = adjust_brightness(out, brightness)
    if contrast is not None:
        out = adjust_contrast(out, contrast)
    if saturation is not None:
        out = adjust_saturation(out, saturation)
    if hue is not None:
        out = adjust_hue(out, hue)
    return torch.where(apply.view(-1, 1, 1, 1), out, images)


def apply_params(images: Tensor, params: AugmentParams, cfg: AugmentConfig) -> Tensor:
    """Augment with given parameters: (B, 3, H, W) -> (B, 3, H, W).

    Steps that `cfg` switches off are skipped (a branch on the config and the static shape, never
    on tensor values), so the identity config is exact, not a resampling that is only close to it.
    """
    check_images(images, shape=("B", 3, "H", "W"), name="images")
    H, W = images.shape[-2:]
    whole_image = cfg.crop_scale == (1, 1) and cfg.crop_ratio == (W / H, W / H)
    out = images
    if not (whole_image and cfg.rotation_range == (0, 0)):
        # bilinear weights sum to 1 only up to rounding: keep the promise of [0, 1]
        out = crop_rotate(out, params.scale, params.ratio, params.cx, params.cy, params.angle).clamp(0.0, 1.0)
    if cfg.jitter_p > 0:
        out = colour_jitter(
            out,
            params.brightness if cfg.brightness > 0 else None,
            params.contrast if cfg.contrast > 0 else None,
            params.saturation if cfg.saturation > 0 else None,
            params.hue if cfg.hue > 0 else None,
            params.jitter,
        )
    return out


def augment(images: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """(B, 3, H, W) float in [0, 1] -> (B, 3, H, W) float in [0, 1], same device and dtype.

    Every sample gets its own crop, rotation and colour jitter, drawn from `generator`, which must
    live on the images' device: the same generator state gives the same output.
    """
    check_images(images, shape=("B", 3, "H", "W"), name="images")
    params = sample_params(images.shape[0], cfg, generator, images.device)
    return apply_params(images, params, cfg)


def batch_views(views: int, original: bool, augmented: bool) -> tuple[int, bool]:
    """What a pretraining batch holds of each image: (augmented views, whether the image itself too).

    Without augmentation every view would be the same image, so the batch is the images alone
    (0, True): one view each. `Config.views_per_image` and `vwe.pretrain.PretrainStep` both read this.
    """
    return (views, original) if augmented else (0, True)
