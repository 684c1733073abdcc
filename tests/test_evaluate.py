"""Linear evaluation: the probe learns separable features, stays at chance on shuffled labels."""

import pytest
import torch

from vwe.evaluate import extract_features, linear_eval, linear_probe, random_weights_model
from vwe.models import ContextAutoencoder


def _separable(n=600, dim=32, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    labels = torch.arange(n) % classes
    feats = centres[labels] + 0.3 * torch.randn(n, dim, generator=g)
    return feats, labels


def test_probe_is_near_perfect_on_linearly_separable_features():
    x, y = _separable()
    res = linear_probe(x[:400], y[:400], x[400:], y[400:], seed=0, epochs=100)
    assert res.test_acc > 97 and res.train_acc > 97
    assert res.losses[-1] < res.losses[0]


def test_probe_is_at_chance_on_shuffled_labels():
    x, y = _separable(n=2000, classes=5)
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    res = linear_probe(x[:1500], shuffled[:1500], x[1500:], shuffled[1500:], seed=0, epochs=10)
    assert abs(res.test_acc - 20.0) < 7  # 5 classes: chance is 20 %, 500 test points


def test_probe_is_deterministic_for_a_seed_and_eval_reports_mean_and_std():
    x, y = _separable(n=300)
    a = linear_probe(x[:200], y[:200], x[200:], y[200:], seed=3, epochs=3)
    b = linear_probe(x[:200], y[:200], x[200:], y[200:], seed=3, epochs=3)
    assert a.losses == b.losses and a.test_acc == b.test_acc
    ev = linear_eval(x[:200], y[:200], x[200:], y[200:], seeds=(0, 1, 2), epochs=2)
    assert len(ev.accs) == 3
    assert ev.mean == pytest.approx(sum(ev.accs) / 3)
    assert ev.std == pytest.approx(torch.tensor(ev.accs).std().item())


def test_extract_features_matches_image_embedding_in_batches():
    torch.manual_seed(0)
    model = ContextAutoencoder("conv4").eval()
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    feats = extract_features(model, images, batch_size=4)
    assert feats.shape == (10, 8192) and feats.dtype == torch.float32
    with torch.no_grad():
        expected = model.image_embedding(images.float() / 255)
    assert torch.allclose(feats, expected, atol=1e-5)


def test_random_weights_model_is_reproducible_and_1024_d():
    a, b = random_weights_model("resnet32", seed=0), random_weights_model("resnet32", seed=0)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), k
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert extract_features(a, images).shape == (2, 1024)


def test_probe_refuses_mismatched_inputs():
    x, y = _separable(n=50)
    with pytest.raises(ValueError, match="one label per row"):
        linear_probe(x, y[:10], x, y)
    with pytest.raises(ValueError, match="dim"):
        linear_probe(x, y, x[:, :3], y)
