"""Towers, encoders, decoder and autoencoders: shapes, sizes, the shared == literal proof, gradients."""

import pytest
import torch

from vwe import models
from vwe.models import (
    Classifier,
    ContextAutoencoder,
    Conv2d,
    Conv4,
    PatchAutoencoder,
    ResNet32,
    Upsample2x,
    build_model,
    count_parameters,
    make_tower,
    subpixel_conv2d,
    use_conv_forms,
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


# (in, out, kernel, stride, padding, bias, map size): every small-map convolution of the towers
DENSE_CASES = [(64, 64, 3, 1, 1, False, 2), (32, 32, 3, 1, 1, False, 4), (32, 64, 3, 2, 1, False, 4),
               (32, 64, 1, 2, 0, False, 4), (32, 64, 3, 1, 1, False, 1), (5, 7, 3, 1, 1, True, 3)]


# every 8x8-map convolution of the ResNet-32 tower (stem, stage 1, stage 2's first conv and
# shortcut), one of Conv4, and an odd one with a bias on a non-square map
ROW_CASES = [(3, 16, 3, 1, 1, False, 8), (16, 16, 3, 1, 1, False, 8), (16, 32, 3, 2, 1, False, 8),
             (16, 32, 1, 2, 0, False, 8), (8, 16, 3, 1, 1, False, 4), (5, 7, 3, 2, 1, True, (5, 6))]


def _values_and_gradients(conv: Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """conv(x) and the gradients of a random projection of it w.r.t. x, weight (and bias)."""
    xi = x.clone().requires_grad_(True)
    y = conv(xi)
    w = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return (y, *torch.autograd.grad((y * w).sum(), (xi, *conv.parameters())))


def _conv_and_input(case, channels_last):
    cin, cout, k, stride, pad, bias, size = case
    h, w = size if isinstance(size, tuple) else (size, size)
    torch.manual_seed(0)
    conv = Conv2d(cin, cout, k, stride, pad, bias=bias).double()
    x = torch.randn(6, cin, h, w, dtype=torch.float64)
    return conv, x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("form, case", [("dense_pixels", c) for c in DENSE_CASES]
                         + [("row_pixels", c) for c in ROW_CASES],
                         ids=lambda v: f"{v[0]}-{v[1]}k{v[2]}s{v[3]}on{v[6]}" if isinstance(v, tuple) else v)
@pytest.mark.parametrize("channels_last", [False, True])
def test_each_conv_form_equals_the_convolution_values_and_gradients(form, case, channels_last):
    conv, x = _conv_and_input(case, channels_last)
    ref = _values_and_gradients(conv, x)
    setattr(conv, form, x.shape[-2] * x.shape[-1])  # this map size and smaller take the form
    got = _values_and_gradients(conv, x)
    assert got[0].shape == ref[0].shape
    for value, expected in zip(got, ref, strict=True):
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


def test_each_conv_form_applies_by_map_size_dense_first(monkeypatch):
    calls = []
    for form in ("dense_conv2d", "row_conv2d"):
        original = getattr(models, form)
        monkeypatch.setattr(models, form, lambda x, c, form=form, f=original: calls.append(form) or f(x, c))
    conv = Conv2d(4, 4, 3, 1, 1)
    conv.dense_pixels, conv.row_pixels = 16, 64
    for size in (2, 4, 8, 16):
        conv(torch.randn(1, 4, size, size))
    assert calls == ["dense_conv2d", "dense_conv2d", "row_conv2d"]  # 16x16 stays a plain convolution
    assert [conv.form(p) for p in (4, 16, 64, 256)] == ["dense", "dense", "rows", "conv"]
    grouped = Conv2d(4, 4, 3, 1, 1, groups=2)  # neither form handles groups: the library's conv
    grouped.dense_pixels = grouped.row_pixels = 64
    assert grouped.form(4) == "conv"


def test_subpixel_conv_equals_upsample_then_conv_values_and_gradients():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, 1, 1).double()
    x = torch.randn(3, 6, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, 8, 6, dtype=torch.float64)
    out = [f(x) for f in (lambda x: conv(Upsample2x()(x)), lambda x: subpixel_conv2d(x, conv))]
    assert out[1].shape == out[0].shape == (3, 5, 8, 6)
    grads = [torch.autograd.grad((y * w).sum(), (x, *conv.parameters())) for y in out]
    for got, expected in zip((out[1], *grads[1]), (out[0], *grads[0]), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="3x3 convolution with stride 1"):
        subpixel_conv2d(x, torch.nn.Conv2d(6, 5, 3, 2, 1))


def test_conv_forms_leave_the_model_the_same_function():
    torch.manual_seed(0)
    model = ContextAutoencoder("resnet32").double().train()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    sizes = []
    for m in model.modules():
        if isinstance(m, Conv2d):
            m.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[-2] * args[0].shape[-1]))
    out = []
    for forms in ((0, 0, False), (16, 0, False), (16, 64, True)):
        use_conv_forms(model, *forms)
        sizes.clear()
        loss = model.forward_loss(x)
        out.append((loss, *torch.autograd.grad(loss, list(model.parameters()))))
    # of the 33 tower convs (stem, 30 in blocks, 2 shortcuts), 20 see a map of <= 4x4 on a patch:
    # stage 2 after its first conv (9), stage 3's first conv and shortcut (2) and the rest of it (9);
    # the other 13 see the 8x8 patch (stem, stage 1, stage 2's first conv and shortcut)
    assert len(sizes) == 33 and sum(p <= 16 for p in sizes) == 20 and sum(p == 64 for p in sizes) == 13
    assert model.decoder.subpixel
    for forms in out[1:]:
        for got, ref in zip(forms, out[0], strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    assert model.state_dict().keys() == ContextAutoencoder("resnet32").state_dict().keys()


def test_upsample2x_equals_nearest_interpolation_values_and_gradients():
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, 8, 8, dtype=torch.float64)
    ours, ref = Upsample2x()(x), torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    assert torch.equal(ours, ref)
    grads = [torch.autograd.grad((y * w).sum(), x)[0] for y in (ours, ref)]
    torch.testing.assert_close(*grads, rtol=1e-14, atol=1e-14)  # sums of 4 terms, in another order
