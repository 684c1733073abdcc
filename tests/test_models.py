"""Towers, encoders, decoder and autoencoders: shapes, sizes, the shared == literal proof, gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vwe import distributed
from vwe.models import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    ENCODINGS,
    BasicBlock,
    Classifier,
    ContextAutoencoder,
    Conv4,
    Normalize,
    PatchAutoencoder,
    ResNet32,
    StridedConv4,
    build_model,
    count_parameters,
    make_tower,
)
from vwe.patches import gather_context, gather_neighbours, patchify


@pytest.mark.parametrize("tower", [ResNet32, Conv4, StridedConv4])
@pytest.mark.parametrize("size", [8, 32])
def test_tower_output_shape(tower, size):
    assert tower()(torch.rand(5, 3, size, size)).shape == (5, 64)


def test_strided_conv4_averages_its_last_map():
    # on a 64x64 image the last map is 2x2 (strides 2, 2, 4, 2), so the average is over 4 pixels
    torch.manual_seed(0)
    tower = StridedConv4().eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        maps = tower.features(tower.normalize(x))
        assert maps.shape == (3, 64, 2, 2)
        torch.testing.assert_close(tower(x), F.adaptive_avg_pool2d(maps, 1).flatten(1))


def test_normalize_standardises_each_channel_with_cifar100_statistics():
    x = torch.rand(2, 3, 4, 4)
    stats = enumerate(zip(CIFAR100_MEAN, CIFAR100_STD, strict=True))
    expected = torch.stack([(x[:, c] - m) / s for c, (m, s) in stats], dim=1)
    torch.testing.assert_close(Normalize()(x), expected)


@pytest.mark.parametrize("cin, cout, stride", [(8, 8, 1), (8, 16, 2)])
def test_basic_block_adds_the_shortcut_to_the_residual(cin, cout, stride):
    torch.manual_seed(0)
    block = BasicBlock(cin, cout, stride).eval()
    x = torch.randn(2, cin, 8, 8)
    with torch.no_grad():
        residual = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
        shortcut = x if stride == 1 else block.shortcut[1](block.shortcut[0](x))
        torch.testing.assert_close(block(x), F.relu(residual + shortcut))


def test_parameter_counts():
    # ResNet-32 of Patacchiola & Storkey: about 0.47 M; Conv4: about 25 k.
    assert 0.45e6 < count_parameters(ResNet32()) < 0.48e6
    assert 24e3 < count_parameters(Conv4()) < 26e3


def trained_statistics(tower: str) -> dict:
    """A context model's state after a few train-mode passes: BatchNorm statistics far from 0 and 1,
    so that an eval-mode comparison cannot pass on an identity-like tower."""
    torch.manual_seed(0)
    m = ContextAutoencoder(tower).double().train()
    with torch.no_grad():
        for _ in range(2):
            m(torch.rand(4, 3, 32, 32, dtype=torch.float64))
    return m.state_dict()


def encode_with_gradients(m: nn.Module, x: torch.Tensor, weights: torch.Tensor) -> list[torch.Tensor]:
    """encode(x) and the gradients of a loss that tells every output apart, for each tower parameter."""
    z = m.encode(x)
    return [z, *torch.autograd.grad((z * weights).sum(), list(m.tower.parameters()))]


@pytest.mark.parametrize("tower", ["resnet32", "conv4"])
def test_the_three_encodings_agree_in_eval_mode_with_their_gradients(tower):
    # float64: the three orders of the same sums differ by rounding only, ~1e-15 of their size
    state = trained_statistics(tower)
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    weights = torch.randn(1, 16, 512, dtype=torch.float64)  # a loss that tells every output apart
    results = {}
    for encoding in ENCODINGS:
        m = ContextAutoencoder(tower, encoding).double()
        m.load_state_dict(state)
        results[encoding] = encode_with_gradients(m.eval(), x, weights)
    for encoding in ("literal", "slots"):
        for ours, ref in zip(results[encoding], results["shared"], strict=True):
            torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12, msg=encoding)


def test_each_encoding_normalises_its_own_batch_in_train_mode():
    # In train mode BatchNorm uses the statistics of what one tower call sees: the literal form's
    # B*16*8 context patches, the slots form's B*16 patches of one slot at a time, the shared form's
    # B*16 patches plus one zero patch. Each encoding is checked against that batch, written out.
    state = trained_statistics("conv4")
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    patches = patchify(x)  # (2, 16, 3, 8, 8)
    context = gather_context(patches)  # (2, 16, 8, 3, 8, 8)
    got = {}
    for encoding in ENCODINGS:
        m = ContextAutoencoder("conv4", encoding).double()
        m.load_state_dict(state)
        m.train()
        with torch.no_grad():
            got[encoding] = m.encode(x)
            tower = m.tower
            if encoding == "literal":
                expected = tower(context.flatten(0, 2)).view(2, 16, 512)
            elif encoding == "slots":
                expected = torch.stack([tower(context[:, :, k].flatten(0, 1)).view(2, 16, 64)
                                        for k in range(8)], dim=2).flatten(2)
            else:
                feats = tower(torch.cat([patches.flatten(0, 1), torch.zeros(1, 3, 8, 8, dtype=x.dtype)]))
                expected = gather_neighbours(feats[:-1].view(2, 16, 64), feats[-1]).flatten(2)
        torch.testing.assert_close(got[encoding], expected, rtol=1e-9, atol=1e-12, msg=encoding)
    # the three batches differ, so each comparison above tells the encodings apart
    for a, b in (("shared", "literal"), ("shared", "slots"), ("literal", "slots")):
        assert (got[a] - got[b]).abs().max() > 1e-3, (a, b)


class PlainTower(nn.Module):
    """A tower without BatchNorm: each patch's features depend on that patch alone, in any mode."""

    out_features = 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 3 * 3, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))  # (M, 3, 8, 8) -> (M, 6)


def test_without_batchnorm_the_three_encodings_agree_in_train_mode():
    torch.manual_seed(0)
    tower = PlainTower().double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    weights = torch.randn(2, 16, 8 * 6, dtype=torch.float64)
    results = {e: encode_with_gradients(ContextAutoencoder(tower, e).train(), x, weights) for e in ENCODINGS}
    for encoding in ("literal", "slots"):
        for ours, ref in zip(results[encoding], results["shared"], strict=True):
            torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12, msg=encoding)


def test_the_synchronised_zero_patch_is_rank_zeros_alone(monkeypatch):
    # sync_zero_patch, training: rank 0 adds the zero patch to its batch, the other ranks add none
    # and receive its feature through the all-reduce. In one process that is the plain form.
    torch.manual_seed(0)
    m = ContextAutoencoder("conv4", sync_zero_patch=True).double().train()
    flat = patchify(torch.rand(2, 3, 32, 32, dtype=torch.float64)).flatten(0, 1)  # (32, 3, 8, 8)
    with torch.no_grad():
        alone = m.tower(torch.cat([flat, torch.zeros(1, 3, 8, 8, dtype=flat.dtype)]))  # (33, 64)
        for got, expected in zip(m.tower_with_zero_patch(flat), (alone[:-1], alone[-1]), strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
        # rank 1 of 2: its batch is its own patches only; the zero feature is what rank 0 sends
        sent = torch.full((64,), 0.5, dtype=flat.dtype)
        monkeypatch.setattr(distributed, "is_main", lambda: False)
        monkeypatch.setattr(distributed, "all_reduce_sum", lambda x: x + sent)
        feats, zero = m.tower_with_zero_patch(flat)
        torch.testing.assert_close(feats, m.tower(flat), rtol=0, atol=0)
        torch.testing.assert_close(zero, sent, rtol=0, atol=0)
        # without the option, or in eval mode, every rank runs its own zero patch
        for sync, training in ((False, True), (True, False)):
            m.sync_zero_patch = sync
            m.train(training)
            mine = m.tower(torch.cat([flat, torch.zeros(1, 3, 8, 8, dtype=flat.dtype)]))
            for got, expected in zip(m.tower_with_zero_patch(flat), (mine[:-1], mine[-1]), strict=True):
                torch.testing.assert_close(got, expected, rtol=0, atol=0)


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


@pytest.mark.parametrize("model", ["context", "patch"])
def test_models_refuse_images_they_cannot_read(model):
    ae = build_model(model, "conv4")
    cases = [
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError,
         r"x must be float images in \[0, 1\] of shape \(B, 3, 32, 32\), got uint8 \(2, 3, 32, 32\): "
         r"convert with vwe.data.to_float"),
        (torch.rand(2, 1, 32, 32), ValueError, r"got float32 \(2, 1, 32, 32\)"),
        (torch.rand(2, 3, 28, 28), ValueError, r"got float32 \(2, 3, 28, 28\)"),
        (torch.rand(2, 32, 32, 3), ValueError, r"channels last\? use x.permute\(0, 3, 1, 2\)"),
        (torch.rand(3, 32, 32), ValueError, r"x.unsqueeze\(0\)"),
        (torch.rand(2, 3, 32, 32).numpy(), TypeError, "got ndarray"),
    ]
    for method in (ae.encode, ae.forward, ae.forward_loss, ae.image_embedding):
        for x, error, message in cases:
            with pytest.raises(error, match=message):
                method(x)
