"""Towers, encoders, decoder and autoencoders: shapes, sizes, the shared == literal proof, gradients."""

import pytest
import torch

from vwe.models import (
    Classifier,
    ContextAutoencoder,
    Conv4,
    PatchAutoencoder,
    ResNet32,
    build_model,
    count_parameters,
    make_tower,
)
from vwe.patches import gather_context, patchify


@pytest.mark.parametrize("tower", [ResNet32, Conv4])
@pytest.mark.parametrize("size", [8, 32])
def test_tower_output_shape(tower, size):
    assert tower()(torch.rand(5, 3, size, size)).shape == (5, 64)


def test_parameter_counts():
    # ResNet-32 of Patacchiola & Storkey: about 0.47 M; Conv4: about 25 k.
    assert 0.45e6 < count_parameters(ResNet32()) < 0.48e6
    assert 24e3 < count_parameters(Conv4()) < 26e3


@pytest.mark.parametrize("tower", ["resnet32", "conv4"])
def test_shared_encoding_equals_literal_in_eval_mode(tower):
    torch.manual_seed(0)
    shared = ContextAutoencoder(tower, "shared")
    literal = ContextAutoencoder(tower, "literal")
    literal.load_state_dict(shared.state_dict())
    # Non-trivial BatchNorm statistics, so the check cannot pass on an identity-like tower.
    shared.train()
    with torch.no_grad():
        for _ in range(3):
            shared(torch.rand(8, 3, 32, 32))
    literal.load_state_dict(shared.state_dict())
    shared.eval(), literal.eval()
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        a, b = shared.encode(x), literal.encode(x)
        assert a.shape == b.shape == (6, 16, 512)
        assert (a - b).abs().max() < 1e-5
        assert (shared(x) - literal(x)).abs().max() < 1e-5


def test_literal_encoding_is_the_tower_on_each_context_patch():
    torch.manual_seed(1)
    m = ContextAutoencoder("conv4", "literal").eval()
    x = torch.rand(2, 3, 32, 32)
    ctx = gather_context(patchify(x))  # (2, 16, 8, 3, 8, 8)
    with torch.no_grad():
        z = m.encode(x)
        for k in (0, 5, 15):
            expected = torch.cat([m.tower(ctx[:, k, j]) for j in range(8)], dim=1)
            assert torch.allclose(z[:, k], expected, atol=1e-6)


def test_autoencoder_shapes():
    x = torch.rand(3, 3, 32, 32)
    ctx, simple = ContextAutoencoder(), PatchAutoencoder()
    assert ctx.encode(x).shape == (3, 16, 512)
    assert ctx(x).shape == (3, 16, 3, 8, 8)
    assert ctx.image_embedding(x).shape == (3, 8192)
    assert simple.encode(x).shape == (3, 16, 64)
    assert simple(x).shape == (3, 16, 3, 8, 8)
    assert simple.image_embedding(x).shape == (3, 1024)
    out = ctx(x)
    assert out.min() >= 0 and out.max() <= 1  # sigmoid output, like the [0, 1] targets


@pytest.mark.parametrize("model", ["context", "patch"])
@pytest.mark.parametrize("tower", ["resnet32", "conv4"])
def test_every_parameter_gets_a_finite_gradient(model, tower):
    torch.manual_seed(0)
    m = build_model(model, tower)
    m.forward_loss(torch.rand(4, 3, 32, 32)).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_loss_is_mse_against_patches():
    torch.manual_seed(0)
    m = PatchAutoencoder("conv4").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m.forward_loss(x), ((m(x) - patchify(x)) ** 2).mean())


def test_classifier_and_bad_names():
    assert Classifier("resnet32", 7)(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="resnet32"):
        make_tower("resnet50")
    with pytest.raises(ValueError, match="shared"):
        ContextAutoencoder("conv4", "fast")
    with pytest.raises(ValueError, match="context"):
        build_model("vae")
