"""Towers, encoders, decoder and autoencoders: shapes, sizes, the shared == literal proof, gradients."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vwe import distributed
from vwe.data import to_float
from vwe.models import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    ENCODINGS,
    BasicBlock,
    Classifier,
    ContextAutoencoder,
    Conv4,
    Decoder,
    Normalize,
    PatchAutoencoder,
    ResNet32,
    StridedConv4,
    build_model,
    count_parameters,
    make_tower,
)
from vwe.patches import OFFSETS, PATCH, gather_context, gather_neighbours, patchify


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


# ------------------------------------------------------------------- the author's per-slot encoder


def images(b: int = 4, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, generator=gen)


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


# ----------------------------------------------------------- the author's decoder, input and Conv4


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


@pytest.mark.parametrize("tower", ["resnet32", "conv4", "conv4-strided"])
def test_towers_store_their_convolutions_channels_last_and_reload_to_the_same_bits(tower):
    torch.manual_seed(0)
    model = build_model("context", tower)
    convs = [m.weight for m in model.tower.modules() if isinstance(m, nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert any(not w.is_contiguous() for w in convs)  # a 1x1 kernel is stored the same either way
    # the decoder keeps the default layout: its patches have the strides a reader expects
    assert all(m.weight.is_contiguous() for m in model.decoder.modules() if isinstance(m, nn.Conv2d))
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        recon, feats = model(x), model.tower_embedding(x)
    assert recon.is_contiguous()
    # a model loaded from the state dict is built the same way, so it computes the same bits
    torch.manual_seed(1)
    loaded = build_model("context", tower)
    loaded.load_state_dict(model.state_dict())
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), recon) and torch.equal(loaded.tower_embedding(x), feats)
    # and the layout is storage only: the same values as the weights read in the default layout
    for w in convs:
        assert torch.equal(w, w.contiguous())
