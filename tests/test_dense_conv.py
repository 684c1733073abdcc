"""vwe.dense_conv: the dense form of a convolution computes the same values and gradients, applies by
map size, is set on a built model's tower convolutions only, and leaves the model the same function with
the same state_dict."""

import pytest
import torch

from vwe import dense_conv
from vwe.dense_conv import Conv2d, set_dense_pixels
from vwe.models import ContextAutoencoder, build_model

# (in, out, kernel, stride, padding, bias, map size): every small-map convolution of the towers
DENSE_CASES = [(64, 64, 3, 1, 1, False, 2), (32, 32, 3, 1, 1, False, 4), (32, 64, 3, 2, 1, False, 4),
               (32, 64, 1, 2, 0, False, 4), (32, 64, 3, 1, 1, False, 1), (5, 7, 3, 1, 1, True, 3)]


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


@pytest.mark.parametrize("case", DENSE_CASES, ids=lambda v: f"{v[0]}-{v[1]}k{v[2]}s{v[3]}on{v[6]}")
@pytest.mark.parametrize("channels_last", [False, True])
def test_dense_form_equals_the_convolution_values_and_gradients(case, channels_last):
    conv, x = _conv_and_input(case, channels_last)
    ref = _values_and_gradients(conv, x)
    conv.dense_pixels = x.shape[-2] * x.shape[-1]  # this map size and smaller take the form
    got = _values_and_gradients(conv, x)
    assert got[0].shape == ref[0].shape
    for value, expected in zip(got, ref, strict=True):
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


def test_dense_form_applies_by_map_size(monkeypatch):
    calls = []
    original = dense_conv.dense_conv2d
    monkeypatch.setattr(dense_conv, "dense_conv2d",
                        lambda x, c: calls.append("dense_conv2d") or original(x, c))
    conv = Conv2d(4, 4, 3, 1, 1, dense_pixels=16)
    for size in (2, 4, 8, 16):
        conv(torch.randn(1, 4, size, size))
    assert calls == ["dense_conv2d", "dense_conv2d"]  # 8x8 and 16x16 stay plain convolutions
    assert [conv.form(p) for p in (4, 16, 64, 256)] == ["dense", "dense", "conv", "conv"]
    grouped = Conv2d(4, 4, 3, 1, 1, groups=2, dense_pixels=64)  # no groups in the dense form: the library's
    assert grouped.form(4) == "conv"


def test_conv_forms_leave_the_model_the_same_function():
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    sizes, out, states = [], [], []
    for dense_pixels in (0, 16):  # the same seed: the same weights whatever the form
        torch.manual_seed(0)
        model = set_dense_pixels(build_model("context", "resnet32"), dense_pixels).double().train()
        for m in model.modules():
            if isinstance(m, Conv2d):
                m.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[-2] * a[0].shape[-1]))
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        sizes.clear()
        loss = model.forward_loss(x)
        out.append((loss, *torch.autograd.grad(loss, list(model.parameters()))))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    # of the 33 tower convs (stem, 30 in blocks, 2 shortcuts), 20 see a map of <= 4x4 on a patch:
    # stage 2 after its first conv (9), stage 3's first conv and shortcut (2) and the rest of it (9);
    # the other 13 see the 8x8 patch (stem, stage 1, stage 2's first conv and shortcut)
    assert len(sizes) == 33 and sum(p <= 16 for p in sizes) == 20 and sum(p == 64 for p in sizes) == 13
    assert not any(isinstance(m, Conv2d) for m in model.decoder.modules())  # the towers' only
    for got, ref in zip(out[1], out[0], strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    assert model.state_dict().keys() == ContextAutoencoder("resnet32").state_dict().keys()


def test_set_dense_pixels_sets_every_tower_convolution_and_nothing_else():
    torch.manual_seed(0)
    model = build_model("patch", "conv4")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    towers = [m for m in model.tower.modules() if isinstance(m, Conv2d)]
    assert len(towers) == 4 and all(m.dense_pixels == 0 for m in towers)  # built as the library's
    assert set_dense_pixels(model, 16) is model
    assert [m.dense_pixels for m in towers] == [16] * 4
    decoder = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert decoder and not any(isinstance(m, Conv2d) for m in decoder)  # plain nn.Conv2d: untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    set_dense_pixels(model, 0)
    assert [m.form(4) for m in towers] == ["conv"] * 4
