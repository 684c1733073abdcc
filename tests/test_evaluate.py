"""Linear evaluation: the probe learns separable features; on labels it can only memorise, the probe and
the kNN classifier report training accuracy ~100 % and test accuracy at chance."""

import inspect
import math

import pytest
import torch

from vwe.evaluate import (
    extract_features,
    knn_accuracy,
    linear_eval,
    linear_probe,
    pixel_features,
    random_image_model,
    random_weights_model,
    standardize,
)
from vwe.models import ContextAutoencoder, build_model


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


def _memorisable(n: int = 256, dim: int = 512, classes: int = 5, seed: int = 0):
    """(train features, train labels, test features, test labels), n rows each: Gaussian features with
    more dimensions than rows, and labels drawn independently of them. A linear layer can fit any
    labels of n <= dim points in general position, so it learns the training labels by heart; nothing
    it learns says anything about a test label."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(2 * n, dim, generator=g)
    labels = torch.randint(0, classes, (2 * n,), generator=g)
    return feats[:n], labels[:n], feats[n:], labels[n:]


def chance_band(m: int, classes: int, sigmas: float = 5.0) -> tuple[float, float]:
    """Where a test accuracy (percent) on `m` labels drawn uniformly, independently of the classifier,
    lies: whatever it predicts, each of its answers is right with probability p = 1 / classes, so the
    number right is Binomial(m, p). Mean +- `sigmas` standard deviations (5: outside with probability
    < 6e-7 in the normal approximation)."""
    p = 1 / classes
    half = sigmas * math.sqrt(p * (1 - p) / m)
    return 100 * (p - half), 100 * (p + half)


def test_probe_reports_the_test_accuracy_not_the_training_one():
    # Training labels the probe memorises, test labels it cannot know: the training accuracy is ~100 %
    # and the test accuracy chance. A probe that reports its training accuracy as the test accuracy,
    # or that trains on the test set, reports far above chance.
    train, train_y, test, test_y = _memorisable()
    res = linear_probe(train, train_y, test, test_y, seed=0, epochs=100, num_classes=5)
    low, high = chance_band(len(test_y), 5)
    assert res.train_acc == 100.0 and res.train_accs[-1] == 100.0
    assert low < res.test_acc < high, (res.test_acc, low, high)


def test_linear_eval_means_the_test_accuracies_over_seeds():
    train, train_y, test, test_y = _memorisable(seed=1)
    ev = linear_eval(train, train_y, test, test_y, seeds=(0, 1, 2), epochs=100, num_classes=5)
    low, high = chance_band(len(test_y), 5)  # each seed's accuracy lies in it, so does their mean
    assert all(r.train_acc == 100.0 for r in ev.runs)
    assert ev.accs == [r.test_acc for r in ev.runs] and low < ev.mean < high, (ev.accs, low, high)


def test_knn_reports_the_test_accuracy_not_the_training_one():
    # kNN on the training rows themselves finds each row as its own nearest neighbour (cosine 1; the
    # cosine of two independent Gaussian rows is ~N(0, 1/dim), below 0.2 here, so each other vote
    # weighs < exp(-0.8 / 0.07) ~ 1e-5 of its own): 100 %. On the test rows: chance.
    train, train_y, test, test_y = _memorisable(seed=2)
    assert knn_accuracy(train, train_y, train, train_y, k=20, temperature=0.07) == 100.0
    low, high = chance_band(len(test_y), 5)
    acc = knn_accuracy(train, train_y, test, test_y, k=20, temperature=0.07, num_classes=5)
    assert low < acc < high, (acc, low, high)


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
    with pytest.raises(ValueError, match="dim"):  # either matrix alone not 2-d
        linear_probe(x[:, 0], y, x, y)


# ----------------------------------------------------------------------------- standardised probe


def test_standardize_is_batchnorm_without_affine_on_the_training_features():
    g = torch.Generator().manual_seed(0)
    train = 200 * torch.randn(500, 16, generator=g) + 7
    train[:, 3] = 2.5  # a constant feature (a border target's zero-patch slot)
    test = 200 * torch.randn(100, 16, generator=g)
    bn = torch.nn.BatchNorm1d(16, affine=False, eps=1e-6, momentum=None)  # momentum None: exact average
    bn.train()
    bn(train)
    bn.eval()
    with torch.no_grad():
        expected_train, expected_test = bn(train), bn(test)
    got_train, got_test = standardize(train, test)
    assert torch.allclose(got_train, expected_train, atol=1e-4, rtol=1e-4)
    assert torch.allclose(got_test, expected_test, atol=1e-4, rtol=1e-4)
    assert got_train[:, 3].abs().max() < 1e-2  # constant: near zero, never inf or nan
    # the test features never inform the statistics
    assert torch.equal(standardize(train, 10 * test)[0], got_train)


def test_standardised_probe_trains_where_the_raw_one_stalls():
    # Features with row norms in the hundreds (like the 8192-d context embedding): Adam at 1e-3 on the
    # raw features overshoots; the standardised probe learns the same linear rule.
    x, y = _separable(n=1200, dim=64, classes=10)
    x = 300 * x + 500
    std = linear_probe(x[:900], y[:900], x[900:], y[900:], epochs=10, norm="standard")
    raw = linear_probe(x[:900], y[:900], x[900:], y[900:], epochs=10, norm="raw")
    assert std.norm == "standard" and raw.norm == "raw"
    assert std.test_acc > 95 and std.test_acc > raw.test_acc + 10
    assert std.losses[-1] < raw.losses[-1]


def test_probe_records_its_training_curve():
    x, y = _separable(n=400)
    res = linear_probe(x[:300], y[:300], x[300:], y[300:], seed=0, epochs=40)
    assert len(res.losses) == len(res.train_accs) == 40
    assert res.train_accs[-1] > res.train_accs[0] and res.losses[-1] < res.losses[0]
    assert all(0 <= a <= 100 for a in res.train_accs)
    with pytest.raises(ValueError, match="unknown probe norm 'bn'"):
        linear_probe(x, y, x, y, norm="bn")


def test_pixel_features_are_the_pixels_in_zero_one():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    feats = pixel_features(images, batch_size=2)
    assert feats.shape == (5, 3072) and feats.dtype == torch.float32
    assert torch.equal(feats, images.reshape(5, -1).float() / 255)


def test_random_image_model_is_the_whole_image_tower():
    a, b = random_image_model("resnet32", seed=4), random_image_model("resnet32", seed=4)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    fa = extract_features(a.forward_features, images)
    assert fa.shape == (3, 64) and torch.equal(fa, extract_features(b.forward_features, images))
    assert not a.training


def test_tower_embedding_is_the_patch_features_the_context_embedding_repeats():
    torch.manual_seed(0)
    model = ContextAutoencoder("conv4").eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    tower = extract_features(model, images, features="tower").view(4, 16, 64)  # (B, 16, D)
    context = extract_features(model, images).view(4, 16, 8, 64)  # (B, 16, K, D)
    # target 5 = (row 1, col 1): its context slot 0 is (-1, -1) = patch 0, slot 7 is (1, 1) = patch 10
    assert torch.allclose(context[:, 5, 0], tower[:, 0], atol=1e-5)
    assert torch.allclose(context[:, 5, 7], tower[:, 10], atol=1e-5)
    patch = random_weights_model("conv4", seed=0)
    assert torch.equal(extract_features(patch, images, features="tower"), extract_features(patch, images))
    with pytest.raises(ValueError, match="unknown features"):
        extract_features(model, images, features="pixels")


def test_probe_defaults_are_the_papers():
    # the module docstring's probe: Adam at lr 1e-3, batch 128, 100 epochs, standardised features
    defaults = {k: p.default for k, p in inspect.signature(linear_probe).parameters.items()}
    assert (defaults["epochs"], defaults["batch_size"], defaults["lr"]) == (100, 128, 1e-3)
    assert defaults["norm"] == "standard"
    assert inspect.signature(linear_eval).parameters["progress"].default is False


@pytest.mark.parametrize("num_classes", [5, None])
def test_probe_records_the_epochs_mean_loss_and_accuracy(num_classes):
    # At lr 1e-30 the layer keeps its seeded initial weights, so the first epoch's mean loss over its
    # three batches (128, 128, 44 rows) is the cross-entropy of that layer on all 300 training rows.
    # Without num_classes the labels' largest, 4, makes it 5 classes.
    x, y = _separable(n=300)
    res = linear_probe(x, y, x[:10], y[:10], seed=3, epochs=1, lr=1e-30, num_classes=num_classes)
    torch.manual_seed(3)
    layer = torch.nn.Linear(32, 5)
    with torch.no_grad():
        logits = layer(standardize(x, x)[0])
    assert res.seed == 3 and len(res.losses) == 1
    assert res.losses[0] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    assert res.train_accs[0] == res.train_acc == 100 * int((logits.argmax(1) == y).sum()) / 300


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}])
def test_probe_refuses_each_non_positive_setting(bad):
    x, y = _separable(n=20)
    linear_probe(x, y, x, y, epochs=1, batch_size=1, lr=1e-3)  # the smallest valid settings run
    with pytest.raises(ValueError, match="must be > 0"):
        linear_probe(x, y, x, y, **{"epochs": 1, "batch_size": 1, "lr": 1e-3, **bad})


def test_probe_defaults_train_100_epochs_in_batches_of_128_silently(capsys):
    x, y = _separable(n=200, dim=4)
    assert len(linear_probe(x, y, x, y, batch_size=200).losses) == 100
    default = linear_probe(x, y, x, y, epochs=1)
    assert default == linear_probe(x, y, x, y, epochs=1, batch_size=128)
    assert default.losses != linear_probe(x, y, x, y, epochs=1, batch_size=129).losses  # batches tell
    linear_eval(x, y, x, y, seeds=(0, 1), epochs=1)
    assert capsys.readouterr().err == ""  # no progress bar unless asked
    linear_eval(x, y, x, y, seeds=(0, 1), epochs=1, progress=True)
    assert "probe seeds" in capsys.readouterr().err


def test_probe_is_adam_on_batches_of_a_seeded_permutation():
    # The probe written out as a plain loop: the layer initialised under the seed, Adam at lr, and
    # each epoch the rows in the order of the next permutation of a generator seeded alike.
    x, y = _separable(n=150, dim=8)
    seed, epochs, batch, lr = 4, 2, 64, 0.05
    res = linear_probe(x, y, x, y, seed=seed, epochs=epochs, batch_size=batch, lr=lr, norm="raw")
    torch.manual_seed(seed)
    layer = torch.nn.Linear(8, 5)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(150, generator=order).split(batch):
            loss = torch.nn.functional.cross_entropy(layer(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / 150)
    # the same float operations in the same order, summed in float32 instead of float64
    assert res.losses == pytest.approx(losses, rel=1e-6)


def test_linear_eval_runs_one_probe_per_seed_with_the_settings_given():
    x, y = _separable(n=150, dim=8)
    ev = linear_eval(x, y, x[:50], y[:50], seeds=(5, 7), epochs=2, batch_size=32, norm="raw")
    assert [r.seed for r in ev.runs] == [5, 7]
    for run, seed in zip(ev.runs, (5, 7), strict=True):
        assert len(run.losses) == 2 and run.norm == "raw"
        assert run == linear_probe(x, y, x[:50], y[:50], seed=seed, epochs=2, batch_size=32, norm="raw")
    a, b = ev.accs
    assert ev.mean == pytest.approx((a + b) / 2) and ev.std == pytest.approx(abs(a - b) / math.sqrt(2))
    assert a != b  # the two seeds' probes differ, so the std above is not 0 by accident
    one = linear_eval(x, y, x[:50], y[:50], seeds=(5,), epochs=2, batch_size=32, norm="raw")
    assert one.accs == [a] and one.mean == a and one.std == 0.0  # one seed: no spread, not an error


def _votes_data():
    """Unit rows at chosen cosines to the single test row e0 = (1, 0, 0): (train, labels, test).

    Class 1: 10 rows at cosine 0.99. Class 0: 11 rows at 0.9899. Class 2: 5 rows at 0.5.
    With k = 20 and T = 0.07 the 10 class-1 rows (weight 1 each) outvote the 10 nearest class-0
    rows (exp(-1e-4 / 0.07) = 0.9986 each): class 1. With k = 21 the eleventh class-0 row tips it.
    """
    def at(cos: float, n: int) -> torch.Tensor:
        return torch.tensor([[cos, math.sqrt(1 - cos * cos), 0.0]], dtype=torch.float64).expand(n, 3)

    train = torch.cat([at(0.99, 10), at(0.9899, 11), at(0.5, 5)])
    labels = torch.tensor([1] * 10 + [0] * 11 + [2] * 5)
    return train, labels, torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)


def test_knn_defaults_are_20_neighbours_at_temperature_0_07():
    train, labels, test = _votes_data()
    one = torch.tensor([1])
    assert knn_accuracy(train, labels, test, one) == 100.0
    assert knn_accuracy(train, labels, test, one, k=21) == 0.0  # the data tells k = 20 from 21
    # temperature: one class-1 row at cosine 1 against two class-0 rows at 0.9 and 17 class-2 rows at
    # -1 (20 rows in all). At T = 0.07 the pair weighs 2 exp(-0.1 / 0.07) = 0.48 and the 17 rows
    # 17 exp(-2 / 0.07) ~ 0, both < 1; at T = 1.07 they weigh 1.82 and 17 exp(-2 / 1.07) = 2.63
    near = torch.tensor([[1.0, 0.0, 0.0], [0.9, math.sqrt(0.19), 0.0], [0.9, -math.sqrt(0.19), 0.0]])
    far = torch.tensor([[-1.0, 0.0, 0.0]]).expand(17, 3)
    train, labels = torch.cat([near, far]), torch.tensor([1, 0, 0] + [2] * 17)
    test = torch.tensor([[1.0, 0.0, 0.0]])
    assert knn_accuracy(train, labels, test, one) == 100.0
    assert knn_accuracy(train, labels, test, one, temperature=1.07) == 0.0


def test_knn_accuracy_checks_labels_against_the_classes_given():
    train, labels, test = _votes_data()  # labels 0..2
    assert knn_accuracy(train, labels, test, torch.tensor([1]), num_classes=3) == 100.0
    with pytest.raises(ValueError, match=r"train labels must lie in \[0, 2\), got 0..2"):
        knn_accuracy(train, labels, test, torch.tensor([1]), num_classes=2)


def test_extract_features_wants_uint8_images():
    with pytest.raises(TypeError, match="uint8"):
        extract_features(build_model("patch", "conv4"), torch.rand(4, 3, 32, 32), batch_size=4)
