"""Tests for vwe/augment.py: each op against torchvision or an independent formula, then `augment`."""

import dataclasses
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from vwe.augment import (
    LUMA,
    AugmentConfig,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_params,
    augment,
    batch_views,
    colour_jitter,
    crop_rotate,
    crop_theta,
    grayscale,
    hsv_to_rgb,
    rgb_to_hsv,
    sample_params,
)

IDENTITY = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation=0.0, jitter_p=0.0)
FACTORS = torch.tensor([0.0, 0.3, 0.6, 1.0, 1.4, 2.0], dtype=torch.float64)


def images(b: int = 6, h: int = 9, w: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def per_image(op, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """torchvision's op applied image by image with a Python float: the reference."""
    return torch.stack([op(img, float(v)) for img, v in zip(x, values, strict=True)])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- colour ops


def test_brightness_matches_torchvision():
    x = images()
    expected = per_image(TF.adjust_brightness, x, FACTORS)
    torch.testing.assert_close(adjust_brightness(x, FACTORS), expected, atol=1e-6, rtol=0)


def test_grayscale_is_itu_601_luma():
    rgb = torch.eye(3).view(3, 3, 1, 1)  # pure red, green, blue
    assert grayscale(rgb).flatten().tolist() == pytest.approx([0.299, 0.587, 0.114], abs=1e-7)
    assert sum(LUMA) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    "ours, theirs", [(adjust_contrast, TF.adjust_contrast), (adjust_saturation, TF.adjust_saturation)]
)

def test_blends_match_torchvision_without_red(ours, theirs):
    # torchvision's tensor grey is 0.2989 R + 0.587 G + 0.114 B; ours uses 0.299 for red. With the
    # red channel at 0 both greys are the same, so the blend, mean and clamping must agree exactly.
    x = images()
    x[:, 0] = 0
    expected = per_image(theirs, x, FACTORS)
    torch.testing.assert_close(ours(x, FACTORS), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "ours, theirs, reduce",
    [
        (adjust_contrast, TF.adjust_contrast, lambda r: r.mean(dim=(-2, -1), keepdim=True)),
        (adjust_saturation, TF.adjust_saturation, lambda r: r),
    ],
)
def test_blends_differ_from_torchvision_only_by_the_red_weight(ours, theirs, reduce):
    # blend(x, grey, f) moves by (1 - f) * (grey_ours - grey_tv) = (1 - f) * 1e-4 * R (its mean for
    # contrast); clamping cannot enlarge the gap. A wrong formula breaks this bound at once.
    x = images()
    gap = (ours(x, FACTORS) - per_image(theirs, x, FACTORS)).abs()
    bound = (1 - FACTORS.float()).abs().view(-1, 1, 1, 1) * 1e-4 * reduce(x[:, :1]) + 1e-6
    assert (gap <= bound).all()
    assert gap.max() > 1e-5  # the bound is tight enough to mean something


def test_saturation_keeps_grey_pixels():
    grey = torch.rand(4, 1, 5, 5).expand(4, 3, 5, 5)
    out = adjust_saturation(grey, torch.tensor([0.0, 0.5, 1.5, 2.0]))
    torch.testing.assert_close(out, grey, atol=1e-6, rtol=0)


def test_hsv_of_known_colours():
    # the last, red with half blue, is the red sector's negative side: hue -1/12 of a turn = 11/12
    rgb = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0.25, 0.0],
         [1, 0, 0.5]]
    ).T.reshape(1, 3, 1, 8)
    expected = torch.tensor(
        [[0, 1, 1], [1 / 3, 1, 1], [2 / 3, 1, 1], [1 / 6, 1, 1], [0, 0, 0.5], [0, 0, 0], [1 / 12, 1, 0.5],
         [11 / 12, 1, 1]]
    ).T.reshape(1, 3, 1, 8)
    torch.testing.assert_close(rgb_to_hsv(rgb), expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(hsv_to_rgb(expected), rgb, atol=1e-7, rtol=0)


def test_hsv_round_trip():
    x = images(b=4, h=16, w=16)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("quantised", [False, True])
def test_hue_matches_torchvision(quantised):
    # Both sides do the exact RGB -> HSV -> RGB round trip, torchvision with sector tables and ours
    # with the closed form, so they differ only by float rounding: measured <= 1e-6. Quantised
    # images (4 levels) are full of ties between channels, which pick the hue's sector.
    x = images(b=32, h=6, w=6)
    if quantised:
        x = (x * 4).floor().clamp(max=3) / 3
    shift = torch.linspace(-0.5, 0.5, 32)
    expected = per_image(TF.adjust_hue, x, shift)
    torch.testing.assert_close(adjust_hue(x, shift), expected, atol=1e-5, rtol=0)


def test_hue_third_turn_maps_red_to_green():
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1
    torch.testing.assert_close(adjust_hue(red, torch.tensor([1 / 3])), red.roll(1, dims=1))


def test_colour_jitter_applies_steps_in_order_where_masked():
    x = images()
    b, c, s = FACTORS.flip(0), FACTORS, FACTORS.roll(2)
    h = torch.linspace(-0.4, 0.4, 6)
    apply = torch.tensor([True, False, True, True, False, True])
    out = colour_jitter(x, b, c, s, h, apply)
    chained = adjust_hue(adjust_saturation(adjust_contrast(adjust_brightness(x, b), c), s), h)
    assert torch.equal(out[apply], chained[apply])
    assert torch.equal(out[~apply], x[~apply])
    only_contrast = colour_jitter(x, None, c, None, None, torch.ones(6, dtype=torch.bool))
    assert torch.equal(only_contrast, adjust_contrast(x, c))


@pytest.mark.parametrize(
    "op, values",
    [(adjust_brightness, FACTORS), (adjust_contrast, FACTORS), (adjust_saturation, FACTORS),
     (adjust_hue, torch.linspace(-0.5, 0.5, 6, dtype=torch.float64))],
)
def test_colour_steps_return_pixels_in_zero_one_of_the_images_dtype(op, values):
    # each step clamps what it computes: pixels a step before overshot (here by up to 0.5 on either
    # side; some pixels have all three channels below 0) come out in [0, 1], and float64 factors do
    # not promote float32 images
    x = images() * 2 - 0.5
    out = op(x, values)
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    assert op(x.double(), values).max() == 1 and (op(x, values) == 0).any()


# ---------------------------------------------------------------- geometry


def ones(b: int, value: float = 1.0) -> torch.Tensor:
    return torch.full((b,), value)


def test_crop_rotate_identity():
    x = images(b=3, h=12, w=12)
    out = crop_rotate(x, ones(3), ones(3), ones(3, 0), ones(3, 0), ones(3, 0))
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("angle, k", [(90.0, 1), (-90.0, -1), (180.0, 2)])
def test_quarter_turns_are_rot90(angle, k):
    # positive angles turn counter-clockwise, like torchvision.rotate and torch.rot90(k=1)
    x = images(b=2, h=10, w=10)
    out = crop_rotate(x, ones(2), ones(2), ones(2, 0), ones(2, 0), ones(2, angle))
    torch.testing.assert_close(out, torch.rot90(x, k, dims=(-2, -1)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("h, w", [(12, 12), (10, 14), (15, 9)])
def test_rotation_matches_torchvision(h, w):
    # the whole image of a non-square picture is the crop of ratio W / H; torchvision's tensor rotate
    # with fill=None is one bilinear grid_sample with zero padding about the centre, like ours
    x = images(b=4, h=h, w=w)
    angles = torch.tensor([7.0, -30.0, 45.0, 100.0])
    out = crop_rotate(x, ones(4), ones(4, w / h), ones(4, 0), ones(4, 0), angles)
    expected = torch.stack(
        [TF.rotate(img, float(a), InterpolationMode.BILINEAR) for img, a in zip(x, angles, strict=True)]
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cx, cy", [(-1, -1), (1, -1), (-1, 1), (1, 1)])
def test_quarter_crop_is_bilinear_upsampling(cx, cy):
    # Crop a quarter (cx, cy = +-1 put it in a corner) and resize it x2. F.interpolate clamps at the
    # border of what it is given, grid_sample reads the real neighbours and zeros beyond the image;
    # so the reference upsamples the quarter with one extra row/column on each side taken from the
    # zero-padded image, and drops the two extra output rows/columns on each side.
    H = W = 12
    x = images(b=2, h=H, w=W)
    out = crop_rotate(x, ones(2, 0.25), ones(2), ones(2, cx), ones(2, cy), ones(2, 0))
    top, left = (0 if cy < 0 else H // 2), (0 if cx < 0 else W // 2)
    padded = F.pad(x, (1, 1, 1, 1))[..., top : top + H // 2 + 2, left : left + W // 2 + 2]
    up = F.interpolate(padded, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, up[..., 2 : H + 2, 2 : W + 2], atol=1e-6, rtol=0)


def coordinate_image(b: int, h: int, w: int) -> torch.Tensor:
    """Channels x, y (pixel indices) and 1: bilinear sampling of it returns where it sampled."""
    ys, xs = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    return torch.stack([xs, ys, torch.ones(h, w)]).expand(b, 3, h, w).contiguous()


def expected_source(scale, ratio, cx, cy, angle, h, w):
    """Independent pixel-space derivation of where output pixel (i, j) samples, (B, H, W) x 2."""
    scale, ratio, cx, cy, angle = (t.double().view(-1, 1, 1) for t in (scale, ratio, cx, cy, angle))
    cw = (scale * h * w * ratio).sqrt().clamp(max=w)  # crop size in pixels, clamped to the image
    ch = (scale * h * w / ratio).sqrt().clamp(max=h)
    bx = (w - 1) / 2 + cx * (w - cw) / 2  # crop centre in pixel indices
    by = (h - 1) / 2 + cy * (h - ch) / 2
    v, u = torch.meshgrid(
        torch.arange(h, dtype=torch.float64) - (h - 1) / 2,
        torch.arange(w, dtype=torch.float64) - (w - 1) / 2,
        indexing="ij",
    )
    a = torch.deg2rad(angle)
    # undo a counter-clockwise turn on screen (y points down) about the output's centre
    ur = torch.cos(a) * u - torch.sin(a) * v
    vr = torch.sin(a) * u + torch.cos(a) * v
    return bx + ur * cw / w, by + vr * ch / h


@pytest.mark.parametrize("h, w", [(16, 16), (12, 20)])
def test_crop_rotate_samples_where_the_pixel_space_formula_says(h, w):
    # Bilinear interpolation reproduces a linear function exactly, so the output of the coordinate
    # image IS the sampled location wherever that lies between pixel centres, and is exactly 0
    # where it lies more than a pixel outside the image (zero padding).
    b = 64
    g = gen(1)
    scale, cx, cy = torch.rand(b, generator=g) * 0.9 + 0.1, *(torch.rand(2, b, generator=g) * 2 - 1)
    ratio = torch.exp(torch.randn(b, generator=g))
    angle = torch.rand(b, generator=g) * 360 - 180
    out = crop_rotate(coordinate_image(b, h, w), scale, ratio, cx, cy, angle).double()
    sx, sy = expected_source(scale, ratio, cx, cy, angle, h, w)
    inside = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
    outside = (sx < -1) | (sx > w) | (sy < -1) | (sy > h)
    assert inside.float().mean() > 0.5 and outside.any()
    torch.testing.assert_close(out[:, 0][inside], sx[inside], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[:, 1][inside], sy[inside], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[:, 2][inside], torch.ones_like(sx[inside]), atol=1e-5, rtol=0)
    assert (out.permute(1, 0, 2, 3)[:, outside] == 0).all()


def test_unrotated_crops_stay_inside_the_image():
    # even an extreme ratio is clamped: the crop box never leaves the image, so no sample point
    # (pixel centre of the output) lands beyond the image's border, and every sample takes more
    # than half its weight from real pixels (the constant channel stays above 0.5)
    b, h, w = 200, 10, 10
    g = gen(2)
    ratio = torch.exp(torch.randn(b, generator=g) * 3)
    scale, cx, cy = torch.rand(3, b, generator=g)
    cx, cy = cx * 2 - 1, cy * 2 - 1
    sx, sy = expected_source(scale, ratio, cx, cy, torch.zeros(b), h, w)
    assert sx.min() > -0.5 and sx.max() < w - 0.5 and sy.min() > -0.5 and sy.max() < h - 0.5
    out = crop_rotate(coordinate_image(b, h, w), scale, ratio, cx, cy, torch.zeros(b))
    assert (out[:, 2] > 0.5).all()
    inside = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
    torch.testing.assert_close(out[:, 0].double()[inside], sx[inside], atol=1e-4, rtol=0)


def test_crop_positions_beyond_the_edges_are_clamped_to_them():
    # a quarter-area square crop has half the image's width: cx = -1 puts its centre at -0.5 (in
    # [-1, 1] coordinates), touching the left edge; anything further out is clamped there
    b = 4
    theta = crop_theta(torch.full((b,), 0.25), torch.ones(b), torch.tensor([-3.0, 3.0, -1.0, 1.0]),
                       torch.tensor([3.0, -3.0, 0.5, -0.5]), torch.zeros(b), 10, 10)
    assert theta[:, 0, 2].tolist() == [-0.5, 0.5, -0.5, 0.5]
    assert theta[:, 1, 2].tolist() == [0.5, -0.5, 0.25, -0.25]


def test_crop_rotate_warns_of_nothing():
    # grid_sample and affine_grid warn on every call whose align_corners is left to its default
    x = images(b=2, h=8, w=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crop_rotate(x, ones(2, 0.5), ones(2), ones(2, 0.3), ones(2, -0.3), ones(2, 20.0))


# ---------------------------------------------------------------- sampling and augment


def test_sample_params_ranges_and_rates():
    cfg = AugmentConfig(crop_scale=(0.3, 0.9), rotation=20.0, hue=0.2, jitter_p=0.7)
    p = sample_params(4000, cfg, gen(0), "cpu")
    for name in ("scale", "ratio", "cx", "cy", "angle", "brightness", "hue", "jitter"):
        assert getattr(p, name).shape == (4000,)
    assert 0.3 <= p.scale.min() and p.scale.max() <= 0.9
    assert 3 / 4 - 1e-6 <= p.ratio.min() and p.ratio.max() <= 4 / 3 + 1e-6
    assert p.ratio.log().mean().abs() < 0.01  # log-uniform: 3/4 as likely as 4/3
    assert -1 <= p.cx.min() and p.cx.max() <= 1
    assert -20 <= p.angle.min() and p.angle.max() <= 20 and p.angle.abs().max() > 19
    for factors in (p.brightness, p.contrast, p.saturation):
        assert 0.6 <= factors.min() and factors.max() <= 1.4
    assert -0.2 <= p.hue.min() and p.hue.max() <= 0.2
    assert p.jitter.dtype == torch.bool and abs(p.jitter.float().mean() - 0.7) < 0.03


def test_sample_params_are_the_columns_of_one_uniform_draw():
    # Each parameter is its definition (AugmentConfig) applied to its own column of one (B, 10)
    # uniform draw: crop scale, log ratio, cx, cy, angle, the three factors, hue, jitter. Contrast
    # 1.5 would give a negative lower bound: factors start at 0.
    cfg = AugmentConfig(crop_scale=(0.2, 0.7), crop_ratio=(0.5, 3.0), rotation=(-30.0, 60.0),
                        brightness=0.3, contrast=1.5, saturation=0.6, hue=0.25, jitter_p=0.6)
    g = gen(9)
    p = sample_params(64, cfg, g, "cpu")
    reference = gen(9)
    u = torch.rand(64, 10, generator=reference).double()
    assert torch.equal(g.get_state(), reference.get_state())  # the draw is exactly B x 10 numbers
    expected = {
        "scale": 0.2 + 0.5 * u[:, 0],
        "ratio": torch.exp(math.log(0.5) + math.log(6.0) * u[:, 1]),
        "cx": -1 + 2 * u[:, 2],
        "cy": -1 + 2 * u[:, 3],
        "angle": -30 + 90 * u[:, 4],
        "brightness": 0.7 + 0.6 * u[:, 5],
        "contrast": 2.5 * u[:, 6],
        "saturation": 0.4 + 1.2 * u[:, 7],
        "hue": -0.25 + 0.5 * u[:, 8],
    }
    for name, values in expected.items():
        # float32 arithmetic on numbers below 90: a few ulps, 1e-5 relative at most
        torch.testing.assert_close(getattr(p, name).double(), values, rtol=1e-5, atol=1e-6, msg=name)
    assert torch.equal(p.jitter, u[:, 9] < 0.6)


def test_jitter_is_drawn_with_a_strict_inequality():
    # P(u < p) = p for u uniform in [0, 1); with u <= p, jitter_p = 0 could still jitter (u = 0)
    u = torch.rand(4, 10, generator=gen(1))
    p = sample_params(4, AugmentConfig(jitter_p=u[0, 9].item()), gen(1), "cpu")
    assert not p.jitter[0]
    assert torch.equal(p.jitter, u[:, 9] < u[0, 9])


def test_sample_params_of_an_empty_batch_and_bad_batch_sizes():
    p = sample_params(0, AugmentConfig(), gen(0), "cpu")
    assert p.scale.shape == p.jitter.shape == (0,)
    for batch in (-1, 2.0, True):
        with pytest.raises(ValueError, match=f"batch must be a non-negative int, got {batch!r}"):
            sample_params(batch, AugmentConfig(), gen(0), "cpu")


def test_sample_params_do_not_depend_on_config_for_the_stream():
    # every config consumes the generator the same way, so switching a step off changes nothing else
    a = sample_params(8, AugmentConfig(), gen(3), "cpu")
    b = sample_params(8, dataclasses.replace(AugmentConfig(), rotation=0.0), gen(3), "cpu")
    assert torch.equal(a.scale, b.scale) and torch.equal(a.hue, b.hue)
    assert torch.equal(b.angle, torch.zeros(8))


def test_augment_reproducible_and_per_sample():
    x = images(b=8, h=16, w=16)
    cfg = AugmentConfig()
    first = augment(x, cfg, gen(0))
    assert torch.equal(first, augment(x, cfg, gen(0)))
    assert not torch.allclose(first, augment(x, cfg, gen(1)))
    twins = augment(x[:1].expand(2, -1, -1, -1), cfg, gen(0))
    assert (twins[0] - twins[1]).abs().max() > 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_augment_keeps_shape_dtype_device_and_range(dtype):
    x = images(b=8, h=16, w=16).to(dtype)
    out = augment(x, AugmentConfig(brightness=1.0, contrast=1.0), gen(0))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1


def test_augment_is_apply_params_of_sample_params():
    x = images(b=8, h=16, w=16)
    cfg = AugmentConfig()
    p = sample_params(8, cfg, gen(4), "cpu")
    assert torch.equal(augment(x, cfg, gen(4)), apply_params(x, p, cfg))
    geometry = crop_rotate(x, p.scale, p.ratio, p.cx, p.cy, p.angle).clamp(0, 1)
    jittered = colour_jitter(geometry, p.brightness, p.contrast, p.saturation, p.hue, p.jitter)
    assert torch.equal(apply_params(x, p, cfg), jittered)


def test_no_jitter_is_geometry_only():
    x = images(b=8, h=16, w=16)
    cfg = AugmentConfig(jitter_p=0.0)
    p = sample_params(8, cfg, gen(5), "cpu")
    expected = crop_rotate(x, p.scale, p.ratio, p.cx, p.cy, p.angle).clamp(0, 1)
    assert torch.equal(augment(x, cfg, gen(5)), expected)


@pytest.mark.parametrize(
    "changes", [{"crop_scale": (0.5, 0.5)}, {"crop_ratio": (0.5, 0.5)}, {"rotation": 10.0}]
)
def test_any_one_geometric_step_resamples(changes):
    # the crop-rotate is skipped only when the crop is the whole image AND nothing rotates
    x = images(b=4, h=16, w=16)
    cfg = dataclasses.replace(IDENTITY, **changes)
    p = sample_params(4, cfg, gen(2), "cpu")
    out = augment(x, cfg, gen(2))
    assert torch.equal(out, crop_rotate(x, p.scale, p.ratio, p.cx, p.cy, p.angle).clamp(0, 1))
    assert (out - x).abs().max() > 0.1


@pytest.mark.parametrize("step", ["brightness", "contrast", "saturation", "hue", "jitter_p"])
def test_a_step_the_config_switches_off_is_skipped_whatever_the_params(step):
    # params drawn with every step on; the config given to apply_params decides what runs
    x = images(b=8, h=16, w=16)
    p = sample_params(8, AugmentConfig(), gen(5), "cpu")
    assert p.jitter.any() and (p.brightness != 1).all() and (p.hue != 0).all()
    geometry = crop_rotate(x, p.scale, p.ratio, p.cx, p.cy, p.angle).clamp(0, 1)
    steps = {name: getattr(p, name) for name in ("brightness", "contrast", "saturation", "hue")}
    if step == "jitter_p":
        expected = geometry
    else:
        expected = colour_jitter(geometry, **{**steps, step: None}, apply=p.jitter)
    assert torch.equal(apply_params(x, p, dataclasses.replace(AugmentConfig(), **{step: 0.0})), expected)


def test_the_resampled_image_is_clamped_to_zero_one():
    # pixels that overshoot [0, 1] (as a step before could leave them) are resampled into it
    x = images(b=4, h=16, w=16) * 2 - 0.5
    cfg = dataclasses.replace(IDENTITY, crop_scale=(0.5, 0.9))
    p = sample_params(4, cfg, gen(3), "cpu")
    raw = crop_rotate(x, p.scale, p.ratio, p.cx, p.cy, p.angle)
    assert raw.min() < -0.1 and raw.max() > 1.1
    assert torch.equal(apply_params(x, p, cfg), raw.clamp(0, 1))


@pytest.mark.parametrize("call", ["crop_rotate", "colour_jitter", "apply_params", "augment"])
def test_each_entry_point_names_the_images_it_refuses(call):
    x, cfg, one = torch.zeros(2, 1, 8, 8), AugmentConfig(), torch.ones(2)
    calls = {
        "crop_rotate": lambda: crop_rotate(x, one, one, one, one, one),
        "colour_jitter": lambda: colour_jitter(x, one, one, one, one, one.bool()),
        "apply_params": lambda: apply_params(x, sample_params(2, cfg, gen(0), "cpu"), cfg),
        "augment": lambda: augment(x, cfg, gen(0)),
    }
    message = r"^images must be float images in \[0, 1\] of shape \(B, 3, H, W\), got float32 \(2, 1, 8, 8\)$"
    with pytest.raises(ValueError, match=message):
        calls[call]()


def test_identity_config_returns_input_exactly():
    x = images(b=8, h=16, w=16)
    assert torch.equal(augment(x, IDENTITY, gen(0)), x)
    # the identity crop of a non-square image has the image's own ratio
    wide = images(b=2, h=8, w=12)
    assert torch.equal(augment(wide, dataclasses.replace(IDENTITY, crop_ratio=(1.5, 1.5)), gen(0)), wide)


def test_jitter_only_config_keeps_geometry():
    x = images(b=8, h=16, w=16)
    cfg = dataclasses.replace(IDENTITY, jitter_p=1.0)
    p = sample_params(8, cfg, gen(6), "cpu")
    expected = colour_jitter(x, p.brightness, p.contrast, p.saturation, p.hue, p.jitter)
    assert p.jitter.all() and torch.equal(augment(x, cfg, gen(6)), expected)


@pytest.mark.parametrize(
    "changes",
    [
        {"crop_scale": (0.0, 1.0)},
        {"crop_scale": (0.8, 0.5)},
        {"crop_scale": (0.5, 1.2)},
        {"crop_scale": (0.5,)},
        {"crop_scale": [0.5, 1.0]},
        {"crop_ratio": (4 / 3, 3 / 4)},
        {"crop_ratio": (-1.0, 1.0)},
        {"rotation": -5.0},
        {"rotation": 200.0},
        {"rotation": math.nan},
        {"brightness": -0.1},
        {"contrast": -0.1},
        {"saturation": math.inf},
        {"hue": 0.6},
        {"hue": -0.1},
        {"jitter_p": 1.5},
        {"jitter_p": "0.8"},
    ],
)
def test_bad_configs_raise(changes):
    (name,) = changes
    with pytest.raises(ValueError, match=name):
        AugmentConfig(**changes)


def test_bad_images_raise():
    cfg = AugmentConfig()
    with pytest.raises(TypeError, match="float"):
        augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), cfg, gen(0))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        augment(torch.zeros(2, 1, 8, 8), cfg, gen(0))
    with pytest.raises(ValueError, match="generator"):
        augment(torch.zeros(2, 3, 8, 8, device="meta"), cfg, gen(0))


def test_apply_params_compiles_without_graph_breaks():
    # fullgraph=True fails on any host sync or Python branch on tensor values; the eager backend
    # keeps the test fast and still traces every op through dynamo
    x = images(b=4, h=16, w=16)
    cfg = AugmentConfig()
    p = sample_params(4, cfg, gen(7), "cpu")
    compiled = torch.compile(apply_params, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, p, cfg), apply_params(x, p, cfg), atol=1e-6, rtol=0)


def test_a_batch_holds_the_views_only_when_they_are_augmented():
    assert batch_views(4, True, augmented=True) == (4, True)
    assert batch_views(2, False, augmented=True) == (2, False)
    # without augmentation every view would repeat the image: the image alone, once
    assert batch_views(4, False, augmented=False) == batch_views(3, True, augmented=False) == (0, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_for_the_same_parameters():
    x = images(b=8, h=16, w=16)
    cfg = AugmentConfig()
    p = sample_params(8, cfg, gen(8), "cpu")
    on_gpu = dataclasses.replace(p, **{f.name: getattr(p, f.name).cuda() for f in dataclasses.fields(p)})
    out = apply_params(x.cuda(), on_gpu, cfg)
    torch.testing.assert_close(out.cpu(), apply_params(x, p, cfg), atol=1e-5, rtol=0)
    g = torch.Generator(device="cuda")
    first = augment(x.cuda(), cfg, g.manual_seed(0))
    assert first.is_cuda and torch.equal(first, augment(x.cuda(), cfg, g.manual_seed(0)))


# ----------------------------------------------------------------- a rotation range (the author's)


def test_a_rotation_range_draws_inside_it_and_a_symmetric_one_is_the_scalar():
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    angles = sample_params(4000, AugmentConfig(rotation=(0.0, 180.0)), gen(), "cpu").angle
    assert 0 <= angles.min() < 5 and 175 < angles.max() < 180
    scalar = sample_params(64, AugmentConfig(rotation=15.0), gen(), "cpu")
    pair = sample_params(64, AugmentConfig(rotation=(-15.0, 15.0)), gen(), "cpu")
    assert torch.equal(scalar.angle, pair.angle)


@pytest.mark.parametrize("bad", [(10.0, 5.0), (0.0, 200.0), (-190.0, 0.0), (0.0, 10.0, 20.0)])
def test_a_bad_rotation_range_is_refused(bad):
    with pytest.raises(ValueError, match="rotation"):
        AugmentConfig(rotation=bad)
