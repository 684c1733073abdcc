"""Profiles and config validation."""

import dataclasses

import pytest
import torch

from vwe.config import (
    AUTHOR_AUG,
    PROBE_FIELDS,
    PROFILES,
    RUNTIME_FIELDS,
    SUPERVISED_FIELDS,
    Config,
    batch_text,
    check_resolved,
    get_config,
    resolve,
    resolve_device,
)
from vwe.data import make_shapes
from vwe.table import ROWS, row_config


def test_profiles_follow_the_design():
    paper = PROFILES["paper"]
    assert (paper.dataset, paper.epochs, paper.batch_size, paper.lr) == ("cifar100", 200, 512, 1e-4)
    assert (paper.probe_epochs, paper.probe_batch_size, paper.probe_lr) == (100, 128, 1e-3)
    assert paper.probe_seeds == (0, 1, 2) and paper.n_train is None
    smoke = PROFILES["smoke"]
    assert smoke.dataset == "shapes" and smoke.epochs == 1 and smoke.n_train <= 512
    assert PROFILES["cpu"].dataset == "auto"


def test_overrides_and_round_trip():
    cfg = get_config("smoke", tower="conv4", epochs=None, augment=False)
    assert cfg.tower == "conv4" and cfg.epochs == PROFILES["smoke"].epochs
    assert cfg.run_name == "context-conv4-noaug"
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(tower="vit"), "resnet32"),
        (dict(encoding="fast"), "shared"),
        (dict(dataset="imagenet"), "cifar100"),
        (dict(batch_size=0), "batch_size must be > 0"),
        (dict(lr=-1.0), "lr must be > 0"),
        (dict(epochs=0), "epochs must be > 0"),
        (dict(device="tpu"), "cuda"),
        (dict(colour=1), "valid fields"),
    ],
)
def test_bad_settings_are_refused_with_the_choices(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_config("smoke", **overrides)


def test_unknown_profile():
    with pytest.raises(ValueError, match="smoke"):
        get_config("fast")


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    # "auto" on either kind of machine, whichever this one is
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_what_identifies_a_run_is_declared_once_on_the_fields():
    names = {f.name for f in dataclasses.fields(Config)}
    assert set(RUNTIME_FIELDS) | set(PROBE_FIELDS) | set(SUPERVISED_FIELDS) <= names  # no stale name
    cfg = get_config("smoke")
    pretrain = cfg.identity("pretrain")
    assert set(pretrain) == names - set(RUNTIME_FIELDS) - set(PROBE_FIELDS) - {"epochs", "minutes", "steps"}
    assert set(cfg.identity("supervised")) == set(SUPERVISED_FIELDS)
    assert set(cfg.identity("result")) == names - set(RUNTIME_FIELDS)
    # how a run runs never changes what it is; what it computes does
    assert cfg.replace(device="cuda", compile=False, probe_epochs=7).identity("pretrain") == pretrain
    assert cfg.replace(epochs=9, minutes=2.5).identity("pretrain") == pretrain  # a resume may go further
    assert cfg.replace(minutes=2.5).identity("result") != cfg.identity("result")  # but trains other weights
    assert cfg.replace(lr=0.5).identity("pretrain") != pretrain
    assert cfg.replace(lr=0.5).identity("supervised") == cfg.identity("supervised")
    with pytest.raises(ValueError, match="unknown identity"):
        cfg.identity("table")


def test_resolve_cuts_the_data_once_and_the_trainers_refuse_data_it_did_not_make():
    cfg = get_config("smoke", dataset="auto", n_train=32, n_test=16, device="cpu")
    shapes = make_shapes(64, 32)
    resolved, data, device = resolve(cfg, shapes)
    assert (resolved.dataset, device.type) == ("shapes", "cpu")
    assert (len(data.train_labels), len(data.test_labels)) == (32, 16)
    check_resolved(resolved, data)
    with pytest.raises(ValueError, match="cfg.dataset is 'auto' but the data is 'shapes'"):
        check_resolved(cfg, data)
    with pytest.raises(ValueError, match="cfg.n_train is 32 but the data has 64 images"):
        check_resolved(resolved, shapes)


@pytest.mark.parametrize("overrides, error, message", [
    (dict(batch_size=32.0), TypeError, "batch_size must be an int"),
    (dict(epochs="3"), TypeError, "epochs must be an int"),
    (dict(epochs=True), TypeError, "epochs must be an int"),
    (dict(n_train=0), ValueError, "n_train must be a positive number"),
    (dict(lr=float("nan")), ValueError, "lr must be > 0"),
    (dict(lr=float("inf")), ValueError, "lr must be finite"),
    (dict(lr="1e-3"), TypeError, "lr must be a number"),
    (dict(augment="no"), TypeError, "augment must be True or False"),
    (dict(probe_seeds=(0, 1.5)), TypeError, "probe_seeds must be a tuple of ints"),
    (dict(device=0), TypeError, "device must be a string"),
])
def test_config_refuses_wrong_types_and_values(overrides, error, message):
    with pytest.raises(error, match=message):
        get_config("smoke", **overrides)


# ---------------------------------------------------------------------------- the author's profile


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
