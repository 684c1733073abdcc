"""Shapes, the built-in offline dataset of tests and CI: 32x32 images of 10 shape classes, generated
procedurally in seconds from a seed as a `Dataset`.

Each shape is an implicit function on a rotated, scaled coordinate grid; images are rendered in batches
of tensors, at 2x and averaged down so that edges are anti-aliased.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vwe.checks import is_int
from vwe.data.dataset import Dataset

SHAPE_CLASSES = (
    "disk", "ring", "square", "frame", "triangle", "cross", "star", "crescent", "bars", "dots",
)
SHAPES_TRAIN, SHAPES_TEST = 10_000, 2_000  # default split sizes (images)


# The shapes: each takes local coordinates u, v (B, S, S) in units of the shape's radius; True is inside.

def _disk(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u * u + v * v < 1.0


def _ring(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r2 = u * u + v * v
    return (r2 < 1.0) & (r2 > 0.55**2)


def _square(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.maximum(u.abs(), v.abs()) < 0.8


def _frame(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    m = torch.maximum(u.abs(), v.abs())
    return (m < 0.85) & (m > 0.52)


def _triangle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Equilateral, circumradius 1.15: inside all three edges, whose normals point at 30/150/270 deg.
    inside = torch.ones_like(u, dtype=torch.bool)
    for deg in (30.0, 150.0, 270.0):
        a = math.radians(deg)
        inside &= u * math.cos(a) + v * math.sin(a) < 0.575
    return inside


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    au, av = u.abs(), v.abs()
    return ((au < 0.27) & (av < 0.95)) | ((av < 0.27) & (au < 0.95))


def _star(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Fold the angle into one half-spike [0, pi/5]; inside means below the edge running from
    # the tip (1.05, 0) to the inner corner at radius 0.45, angle pi/5.
    half = math.pi / 5
    phi = torch.remainder(torch.atan2(v, u) + half, 2 * half) - half
    r = torch.sqrt(u * u + v * v)
    x, y = r * torch.cos(phi.abs()), r * torch.sin(phi.abs())
    tip_x, in_x, in_y = 1.05, 0.45 * math.cos(half), 0.45 * math.sin(half)
    # Cross product sign: the origin (inside) lies on the positive side of the tip->corner edge.
    return (in_x - tip_x) * y - in_y * (x - tip_x) > 0


def _crescent(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * u + v * v < 1.0) & ((u - 0.45) ** 2 + v * v > 0.8**2)


def _bars(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    au = u.abs()
    return (au > 0.18) & (au < 0.55) & (v.abs() < 0.9)


def _dots(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    inside = torch.zeros_like(u, dtype=torch.bool)
    for deg in (90.0, 210.0, 330.0):
        a = math.radians(deg)
        inside |= (u - 0.62 * math.cos(a)) ** 2 + (v - 0.62 * math.sin(a)) ** 2 < 0.32**2
    return inside


_SHAPE_FNS = (_disk, _ring, _square, _frame, _triangle, _cross, _star, _crescent, _bars, _dots)

_SUPER = 64  # render at 2x and average 2x2 blocks: anti-aliased 32x32 edges
_CHUNK = 1024  # images rendered at once: bounds memory (~17 MB per (B, 64, 64) float tensor)


def _far_colour(gen: torch.Generator, ref: torch.Tensor, min_dist: float = 0.45) -> torch.Tensor:
    """Random RGB colours (B, 3) at least about `min_dist` from `ref`, so the shape stays visible."""
    c = torch.rand(ref.shape, generator=gen)
    # Too close: shift every channel by 0.5 away from the reference instead (distance 0.87).
    shifted = torch.where(ref > 0.5, ref - 0.5, ref + 0.5)
    close = (c - ref).norm(dim=1, keepdim=True) < min_dist
    return torch.where(close, shifted, c)


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres in [-1, 1] as y (1, size, 1) and x (1, 1, size); y grows down like rows."""
    t = (torch.arange(size) + 0.5) / size * 2 - 1
    return t.view(1, size, 1), t.view(1, 1, size)


# Pose ranges of a Shapes image, in units of the half-width (16 px) and radians.
SHAPES_SCALE = (0.5, 0.8)
SHAPES_ROTATION = math.pi / 6
SHAPES_JITTER = 0.2


def _render(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Labels (B,) -> images (B, 3, 32, 32) uint8, every random choice drawn from `gen`."""
    B, S = len(labels), _SUPER

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=gen)

    def uniform(lo: float, hi: float) -> torch.Tensor:  # (B, 1, 1) for broadcasting on (B, S, S)
        return lo + (hi - lo) * rand(B, 1, 1)

    y, x = _grid(S)  # (1, S, 1), (1, 1, S)

    # Pose: radius 0.5-0.8 of the half-width (8-13 px), mild stretch, rotation within +-ROTATION
    # and the centre within +-JITTER of the middle. Wider ranges (any rotation, any position) made
    # the classes so pose-dependent that no linear probe on the position-ordered patch features, not
    # even of a supervised tower, got far above chance on a few thousand images.
    scale, stretch = uniform(*SHAPES_SCALE), uniform(0.85, 1.18)
    angle = uniform(-SHAPES_ROTATION, SHAPES_ROTATION)
    cx, cy = (2 * rand(B, 1, 1) - 1) * SHAPES_JITTER, (2 * rand(B, 1, 1) - 1) * SHAPES_JITTER
    dx, dy = x - cx, y - cy  # (B, S, S)
    u = (torch.cos(angle) * dx + torch.sin(angle) * dy) / (scale * stretch)
    v = (-torch.sin(angle) * dx + torch.cos(angle) * dy) * stretch / scale

    mask = torch.zeros(B, S, S, dtype=torch.bool)
    for c, fn in enumerate(_SHAPE_FNS):
        idx = (labels == c).nonzero().squeeze(1)
        mask[idx] = fn(u[idx], v[idx])

    # Fill: solid, striped or two-tone, in the shape's own coordinates so fills rotate too.
    alpha = uniform(0, 2 * math.pi)
    axis = u * torch.cos(alpha) + v * torch.sin(alpha)  # (B, S, S)
    stripes = torch.sin(2 * math.pi * uniform(1.2, 2.0) * axis + uniform(0, 2 * math.pi)) > 0
    fill = torch.randint(0, 3, (B, 1, 1), generator=gen)
    second = torch.where(fill == 0, False, torch.where(fill == 1, stripes, axis > 0))
    # Only edges and stripes need the 2x grid: keep each fill colour's coverage of every
    # 32x32 pixel and composite over a background drawn at 32x32 directly (3x less work).
    cover1 = F.avg_pool2d((mask & ~second).unsqueeze(1).float(), 2)  # (B, 1, 32, 32)
    cover2 = F.avg_pool2d((mask & second).unsqueeze(1).float(), 2)  # (B, 1, 32, 32)

    # Background: plain, gradient, smooth noise or grating around a base colour bg1.
    y, x = _grid(32)
    bg1, bg2 = rand(B, 3), rand(B, 3)
    bg2 = (bg1 + 0.7 * (bg2 - 0.5)).clamp(0, 1)  # second colour near the first
    beta = uniform(0, 2 * math.pi).unsqueeze(1)  # (B, 1, 1, 1)
    along = (x * torch.cos(beta) + y * torch.sin(beta)) / math.sqrt(2)  # (B, 1, 32, 32)
    gradient = 0.5 + 0.5 * along
    noise = F.interpolate(torch.randn(B, 1, 5, 5, generator=gen), size=(32, 32),
                          mode="bilinear", align_corners=False)
    grating = 0.5 + 0.5 * torch.sin(2 * math.pi * (2 + 3 * rand(B, 1, 1, 1)) * along)
    kind = torch.randint(0, 4, (B, 1, 1, 1), generator=gen)
    mix = torch.where(kind == 0, 0.0, torch.where(
        kind == 1, gradient, torch.where(kind == 2, (0.5 + 0.35 * noise).clamp(0, 1), grating)))
    a, b = bg1[:, :, None, None], bg2[:, :, None, None]
    background = a + (b - a) * mix  # (B, 3, 32, 32)

    fg1, fg2 = _far_colour(gen, bg1), _far_colour(gen, bg1)  # (B, 3) each
    image = (cover1 * fg1[:, :, None, None] + cover2 * fg2[:, :, None, None]
             + (1 - cover1 - cover2) * background)  # (B, 3, 32, 32)
    image = image + 0.02 * torch.randn(image.shape, generator=gen)  # sensor-like pixel noise
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def _shapes_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # Balanced: every class n // C or n // C + 1 times, in random order.
    labels = torch.arange(n) % len(SHAPE_CLASSES)
    labels = labels[torch.randperm(n, generator=gen)]
    images = torch.cat([_render(labels[i:i + _CHUNK], gen) for i in range(0, n, _CHUNK)])
    return images, labels


def make_shapes(n_train: int, n_test: int, seed: int = 0) -> Dataset:
    """The built-in Shapes dataset: (N, 3, 32, 32) uint8 images of 10 shape classes.

    Colour, position, scale, stretch, rotation, fill (solid, striped, two-tone) and background
    (plain, gradient, noise, grating) vary within every class; only the shape decides the label.
    Deterministic for a seed; train and test come from disjoint seed streams (2s and 2s + 1).
    """
    for what, n in (("n_train", n_train), ("n_test", n_test)):
        if not is_int(n) or n < 1:
            raise ValueError(f"make_shapes needs {what} >= 1 (an int), got {n!r}")
    train_images, train_labels = _shapes_split(n_train, 2 * seed)
    test_images, test_labels = _shapes_split(n_test, 2 * seed + 1)
    return Dataset("shapes", train_images, train_labels, test_images, test_labels,
                   list(SHAPE_CLASSES))

