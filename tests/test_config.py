"""Profiles and config validation."""

import pytest

from vwe.config import PROFILES, Config, get_config, resolve_device


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


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
