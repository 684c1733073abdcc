"""The paper as its author ran it (docs/design.md, The paper as its author ran it): the `author`
profile, views in one batch, the per-slot encoder, the author's decoder and Conv4, the rotation range.

Each part is checked against an independent construction: the views against `augment`'s draws, the
slot patches against the author's own recipe (pad the image with one zero patch, slide an 8x8
window), the decoders' sizes against their layer formulas.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vwe.augment import AugmentConfig, apply_params, sample_params
from vwe.config import AUTHOR_AUG, batch_text, get_config
from vwe.data import to_float
from vwe.models import Decoder, StridedConv4, build_model
from vwe.patches import OFFSETS, PATCH
from vwe.pretrain import PretrainStep
from vwe.table import ROWS, row_config


def images(b: int = 4, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, generator=gen)


# ----------------------------------------------------------------------------- the profile


def test_the_author_profile_is_the_authors_code():
    cfg = get_config("author")
    assert (cfg.batch_size, cfg.views, cfg.original, cfg.views_per_image) == (8, 3, True, 4)
    assert cfg.pairs_per_step == 512 == 8 * 4 * 16  # the comment in the author's train.py
    assert 50_000 // cfg.batch_size == 6_250  # optimiser steps an epoch
    assert (cfg.encoding, cfg.decoder, cfg.normalize) == ("slots", "author", False)
    assert (cfg.lr, cfg.epochs) == (1e-4, 200)
    # the table's Conv4 row is the author's strided Conv4 under this profile, [24]'s pooled one otherwise
    conv4_row = next(r for r in ROWS if r.key == "context-conv4-aug")
    assert row_config(cfg, conv4_row).tower == "conv4-strided"
    assert row_config(get_config("paper"), conv4_row).tower == "conv4"
    assert (cfg.probe_norm, cfg.probe_epochs, cfg.probe_batch_size, cfg.probe_lr) == ("raw", 10, 128, 1e-3)
    aug = cfg.aug
    assert aug == AUTHOR_AUG and aug.crop_scale == (0.08, 1.0) and aug.rotation_range == (0.0, 180.0)
    assert (aug.brightness, aug.contrast, aug.saturation, aug.hue, aug.jitter_p) == (0.8, 0.8, 0.8, 0.2, 0.8)
    # the text's reading, for contrast: 512 images = 8 192 pairs, 97 steps an epoch
    paper = get_config("paper")
    assert paper.pairs_per_step == 8192 and 50_000 // paper.batch_size == 97
    assert cfg.batch_text == "8 images x 4 views = 512 (context, target) pairs"
    assert paper.batch_text == batch_text(512) == "512 images = 8192 (context, target) pairs"
    assert "6,250 steps an epoch, 1,250,000 steps" in cfg.cost_text(50_000)


def test_views_count_only_with_augmentation():
    cfg = get_config("cpu", views=3, original=True)
    assert cfg.views_per_image == 4 and cfg.pairs_per_step == 128 * 4 * 16
    assert cfg.replace(augment=False).views_per_image == 1


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_views_must_be_a_positive_count(bad):
    with pytest.raises((TypeError, ValueError), match="views"):
        get_config("cpu", views=bad)


def test_the_profile_round_trips_through_a_checkpoint_dict():
    cfg = get_config("author")
    back = type(cfg).from_dict(cfg.to_dict())
    assert back == cfg and back.aug.rotation == (0.0, 180.0)


# ----------------------------------------------------------------------------- views in one batch


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


# ----------------------------------------------------------------------------- the per-slot encoder


def slot_patches_by_padding(x: torch.Tensor, k: int) -> torch.Tensor:
    """The author's construction: pad the image with one zero patch on each side (48 x 48) and take,
    for each of the 16 targets, the 8x8 window at context offset k. (B, 3, 32, 32) -> (B*16, 3, 8, 8)."""
    padded = F.pad(x, (PATCH, PATCH, PATCH, PATCH))  # (B, 3, 48, 48), zero patches around
    dr, dc = OFFSETS[k]
    out = []
    for i in range(4):
        for j in range(4):
            r, c = (i + 1 + dr) * PATCH, (j + 1 + dc) * PATCH
            out.append(padded[:, :, r:r + PATCH, c:c + PATCH])
    return torch.stack(out, dim=1).flatten(0, 1)


def test_slots_calls_the_tower_once_per_slot_on_that_slots_patches():
    x = to_float(images(2))
    model = build_model("context", "conv4", "slots").train()
    calls = []
    model.tower.register_forward_hook(lambda m, inp, out: calls.append(inp[0].detach().clone()))
    model.encode(x)
    assert len(calls) == 8  # one tower call per neighbour slot: BatchNorm statistics per slot
    for k, batch in enumerate(calls):
        assert torch.equal(batch, slot_patches_by_padding(x, k)), f"slot {k}"


def test_slots_in_train_mode_is_each_slots_own_batchnorm():
    x = to_float(images(2))
    model = build_model("context", "conv4", "slots").train()
    ref = copy.deepcopy(model)
    got = model.encode(x).view(2, 16, 8, -1)  # (B, 16, 8, D)
    for k in range(8):
        expected = ref.tower(slot_patches_by_padding(x, k)).view(2, 16, -1)
        torch.testing.assert_close(got[:, :, k], expected, rtol=0, atol=0)
    # BatchNorm over one slot's batch is not BatchNorm over all of them: the literal form differs
    literal = build_model("context", "conv4", "literal").train()
    literal.load_state_dict(ref.state_dict())
    assert not torch.allclose(literal.encode(x), got.flatten(2), atol=1e-3)


def test_the_three_encodings_are_one_function_in_eval_mode():
    x = to_float(images(3)).double()
    models = {e: build_model("context", "resnet32", e).double().eval()
              for e in ("shared", "literal", "slots")}
    for m in models.values():
        m.load_state_dict(models["shared"].state_dict())
    ref = models["shared"].encode(x)
    for name in ("literal", "slots"):
        torch.testing.assert_close(models[name].encode(x), ref, rtol=1e-12, atol=1e-12, msg=name)


# ----------------------------------------------------------------------------- decoder, input, Conv4


def linear(i: int, o: int) -> int:
    return i * o + o


def conv3(i: int, o: int) -> int:
    return i * o * 9 + o


def test_the_authors_decoders_have_the_authors_layers():
    up = conv3(64, 32) + 2 * 32 + conv3(32, 16) + 2 * 16 + conv3(16, 3)  # BatchNorm: weight and bias
    context = Decoder(512, "author")
    simple = Decoder(64, "author")
    assert sum(p.numel() for p in context.parameters()) == linear(512, 512) + linear(512, 1024) + up
    assert sum(p.numel() for p in simple.parameters()) == linear(64, 128) + linear(128, 1024) + up
    assert sum(isinstance(m, nn.BatchNorm2d) for m in context.modules()) == 2
    text = Decoder(512, "text")
    assert sum(p.numel() for p in text.parameters()) == (linear(512, 512) + linear(512, 1024) + conv3(64, 64)
                                                         + conv3(64, 32) + conv3(32, 3))
    out = context(torch.randn(5, 512))
    assert out.shape == (5, 3, 8, 8) and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="decoder"):
        Decoder(512, "mae")


def test_towers_without_normalisation_see_the_pixels_as_they_are():
    torch.manual_seed(0)
    plain = build_model("patch", "resnet32", normalize=False).eval()
    normed = build_model("patch", "resnet32").eval()
    normed.load_state_dict(plain.state_dict())  # the same weights: Normalize has no saved state
    assert isinstance(plain.tower.normalize, nn.Identity)
    x = to_float(images(2))
    patches = x.unfold(2, 8, 8).unfold(3, 8, 8).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 8, 8)
    unnormalised = normed.tower.stages(normed.tower.stem(patches)).mean((2, 3))
    torch.testing.assert_close(plain.tower(patches), unnormalised)
    assert not torch.allclose(plain.tower(patches), normed.tower(patches))


def test_the_strided_conv4_maps_a_patch_to_one_pixel_without_pooling():
    tower = StridedConv4().eval()
    sizes = []
    for m in tower.features:
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
    out = tower(torch.rand(3, 3, 8, 8))
    assert out.shape == (3, 64) and sizes == [(4, 4), (2, 2), (1, 1), (1, 1)]
    assert not any(isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)) for m in tower.modules())
    assert [m.stride for m in tower.features if isinstance(m, nn.Conv2d)] == [(2, 2), (2, 2), (4, 4), (2, 2)]
    model = build_model("context", "conv4-strided", decoder="author")
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 16, 3, 8, 8)


# ----------------------------------------------------------------------------- rotation range


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
