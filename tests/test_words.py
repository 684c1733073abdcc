"""Visual words: patch rows, nearest neighbours vs brute force, k-means, bags of words, kNN (their figures
and explorer, `vwe.words_widgets`, in test_words_widgets.py)."""

import pytest
import torch
import torch.nn.functional as F

import vwe.words as words
from vwe.data import make_shapes, to_float
from vwe.evaluate import knn_accuracy, knn_classify  # built on nearest_neighbours, tested beside it
from vwe.models import ContextAutoencoder, PatchAutoencoder
from vwe.patches import patchify
from vwe.words import (
    assign,
    bag_of_words,
    kmeans,
    nearest_neighbours,
    patch_embeddings,
    patch_pixels,
    row_to_patch,
    word_exemplars,
)


def blobs(n_per: int, centres: torch.Tensor, std: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around `centres` (C, D): points (C*n_per, D) and their blob labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centres)).repeat_interleave(n_per)
    x = centres[labels] + std * torch.randn(len(labels), centres.shape[1], generator=gen)
    return x, labels


def one_to_one(found: torch.Tensor, truth: torch.Tensor, k: int) -> bool:
    """True when every found cluster is exactly one true cluster (purity 1 both ways)."""
    table = torch.zeros(k, k, dtype=torch.long).index_put_((found, truth), torch.ones_like(found),
                                                            accumulate=True)
    return bool(((table > 0).sum(0) == 1).all() and ((table > 0).sum(1) == 1).all())


CENTRES = 10.0 * torch.eye(6, 8)  # 6 blobs in 8-D, pairwise distance 14 against a std of 0.5


# ----------------------------------------------------------------------------- k-means


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_recovers_planted_blobs(seed):
    x, truth = blobs(50, CENTRES, 0.5, seed=10 + seed)
    res = kmeans(x, 6, seed=seed)
    assert one_to_one(res.labels, truth, 6)
    # Each centroid is the mean of its blob, and the inertia the sum of squared distances to them.
    means = torch.stack([x[res.labels == j].mean(0) for j in range(6)])
    torch.testing.assert_close(res.centroids, means)
    assert res.inertia == pytest.approx(((x - means[res.labels]) ** 2).sum().item(), rel=1e-5)
    assert res.iters_run < 50  # converged on tol, not on the iteration cap


def test_kmeans_labels_are_the_nearest_centroids():
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    res = kmeans(x, 7, seed=0, iters=3)
    assert torch.equal(res.labels, torch.cdist(x, res.centroids).argmin(1))
    assert torch.equal(assign(x, res.centroids, chunk=16)[0], res.labels)


def test_kmeans_is_deterministic_for_a_seed():
    x = torch.randn(2000, 16, generator=torch.Generator().manual_seed(3))
    a, b = kmeans(x, 8, seed=5, chunk=300), kmeans(x, 8, seed=5, chunk=300)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
    assert a.inertia == b.inertia and a.iters_run == b.iters_run
    # Structureless data: another seed lands in another local optimum.
    assert not torch.equal(a.centroids, kmeans(x, 8, seed=6, chunk=300).centroids)


def test_kmeans_chunk_size_does_not_change_the_result():
    x, _ = blobs(40, CENTRES, 2.0, seed=4)
    a, b = kmeans(x, 6, seed=0, chunk=7), kmeans(x, 6, seed=0, chunk=100_000)
    assert torch.equal(a.labels, b.labels)
    torch.testing.assert_close(a.centroids, b.centroids)


def test_kmeans_reseeds_an_empty_cluster_with_the_farthest_point():
    x, truth = blobs(40, CENTRES[:3], 0.5, seed=1)
    # Word 2 starts far from every point, so the first assignment leaves it empty, and blob 2 is
    # served by word 0 or 1. Plain Lloyd would keep word 2 empty forever (or divide by zero).
    init = torch.stack([CENTRES[0], CENTRES[1], torch.full((8,), 1000.0)])
    assert (assign(x, init)[0] == 2).sum() == 0
    res = kmeans(x, 3, init=init)
    assert torch.bincount(res.labels, minlength=3).min() > 0
    assert one_to_one(res.labels, truth, 3)
    assert res.centroids.abs().max() < 20


def test_kmeans_with_fewer_distinct_points_than_words():
    base = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    x = base.repeat(10, 1)  # 30 rows, 3 distinct
    res = kmeans(x, 5, seed=0)
    assert torch.isfinite(res.centroids).all()
    assert res.inertia == 0.0
    torch.testing.assert_close(res.centroids[res.labels], x)  # every row sits on its centroid
    # With as many words as distinct points, k-means++ never picks a duplicate (zero weight).
    res = kmeans(x, 3, seed=0)
    assert sorted(torch.bincount(res.labels).tolist()) == [10, 10, 10] and res.inertia == 0.0


def test_spherical_kmeans_clusters_directions_whatever_the_length():
    directions = F.normalize(torch.randn(4, 6, generator=torch.Generator().manual_seed(0)) * 5, dim=1)
    x, truth = blobs(40, directions, 0.03, seed=2)
    x = x * torch.rand(len(x), 1, generator=torch.Generator().manual_seed(1)).mul(10).add(0.1)
    res = kmeans(x, 4, seed=0, spherical=True)
    assert one_to_one(res.labels, truth, 4)
    torch.testing.assert_close(res.centroids.norm(dim=1), torch.ones(4))


def test_kmeans_rejects_bad_arguments():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="k must be"):
        kmeans(x, 11)
    with pytest.raises(ValueError, match="matrix"):
        kmeans(torch.randn(10), 2)
    with pytest.raises(ValueError, match="init"):
        kmeans(x, 2, init=torch.zeros(3, 3))


# ----------------------------------------------------------------------------- nearest neighbours


def brute_force(q: torch.Tensor, db: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (F.normalize(q, dim=1) @ F.normalize(db, dim=1).T).topk(k, dim=1)


def test_a_query_in_the_database_finds_itself():
    db = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    rows = torch.tensor([0, 7, 123, 499])
    sims, idx = nearest_neighbours(db[rows] * 3.0, db, k=4, chunk=64)  # scale: cosine ignores it
    assert torch.equal(idx[:, 0], rows)
    torch.testing.assert_close(sims[:, 0], torch.ones(4))
    assert (sims[:, 1:] < 1 - 1e-4).all()


@pytest.mark.parametrize("chunk", [1, 7, 64, 499, 500, 10_000])
def test_chunked_search_equals_brute_force(chunk):
    gen = torch.Generator().manual_seed(1)
    db, q = torch.randn(500, 12, generator=gen, dtype=torch.float64), torch.randn(30, 12, generator=gen,
                                                                                   dtype=torch.float64)
    sims, idx = nearest_neighbours(q, db, k=9, chunk=chunk)
    ref_s, ref_i = brute_force(q, db, 9)
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(sims, ref_s)


def test_query_blocks_equal_brute_force(monkeypatch):
    monkeypatch.setattr(words, "BLOCK_ELEMENTS", 100)  # 100 // 50 = 2 queries per block
    gen = torch.Generator().manual_seed(2)
    db, q = torch.randn(200, 8, generator=gen, dtype=torch.float64), torch.randn(25, 8, generator=gen,
                                                                                  dtype=torch.float64)
    sims, idx = nearest_neighbours(q, db, k=5, chunk=50)
    assert torch.equal(idx, brute_force(q, db, 5)[1])


def test_exclude_self_skips_only_the_query_row():
    db = torch.randn(300, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref_s, ref_i = brute_force(db, db, 6)
    assert torch.equal(ref_i[:, 0], torch.arange(300))
    sims, idx = nearest_neighbours(db, db, k=5, chunk=32, exclude_self=True)
    assert torch.equal(idx, ref_i[:, 1:])
    # A (Q,) tensor of each query's own row; -1 excludes nothing.
    rows = torch.tensor([5, 170, -1])  # in the first chunk, in a later one, none
    sims, idx = nearest_neighbours(db[[5, 170, 40]], db, k=3, chunk=32, exclude_self=rows)
    assert torch.equal(idx[:2], ref_i[[5, 170], 1:4]) and torch.equal(idx[2], ref_i[40, :3])
    sims, idx = nearest_neighbours(db[:0], db, k=3)  # no queries, no work
    assert sims.shape == idx.shape == (0, 3)


def test_nearest_neighbours_rejects_bad_arguments():
    db = torch.randn(10, 4)
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbours(db, db, k=10, exclude_self=True)
    with pytest.raises(ValueError, match="D="):
        nearest_neighbours(torch.randn(2, 3), db)
    with pytest.raises(ValueError, match="queries are the database"):
        nearest_neighbours(db[:3], db, k=2, exclude_self=True)


def test_word_exemplars_belong_to_their_word():
    x, _ = blobs(30, CENTRES[:4], 0.5, seed=5)
    res = kmeans(x, 4, seed=0, spherical=True)
    ex = word_exemplars(x, res.centroids, n=6)  # (4, 6)
    assert ex.shape == (4, 6)
    assert torch.equal(res.labels[ex], torch.arange(4).unsqueeze(1).expand(4, 6))


# ----------------------------------------------------------------------------- bag of words


def test_bag_of_words_counts():
    labels = torch.tensor([0] * 16 + [1, 1, 2, 2, 2, 2] + [3] * 10)  # 2 images, 4 words
    bow = bag_of_words(labels, 4)
    expected = torch.tensor([[16, 0, 0, 0], [0, 2, 4, 10]]) / 16
    assert torch.equal(bow, expected)
    torch.testing.assert_close(bow.sum(1), torch.ones(2))


def test_bag_of_words_rejects_bad_input():
    with pytest.raises(ValueError, match="one word per patch"):
        bag_of_words(torch.zeros(15, dtype=torch.long), 4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        bag_of_words(torch.full((16,), 4), 4)
    with pytest.raises(TypeError, match="integer"):
        bag_of_words(torch.zeros(16), 4)


# ----------------------------------------------------------------------------- kNN


def reference_knn(train, train_labels, test, k, temperature, num_classes):
    """Per-query loop: full similarity row, top-k, a dict of weighted votes."""
    preds = []
    for q in test:
        sims = F.normalize(train, dim=1) @ F.normalize(q, dim=0)
        top_s, top_i = sims.topk(k)
        votes = [0.0] * num_classes
        for s, i in zip(top_s.tolist(), top_i.tolist(), strict=True):
            votes[int(train_labels[i])] += float(torch.tensor(s / temperature, dtype=torch.float64).exp())
        preds.append(max(range(num_classes), key=lambda c: (votes[c], -c)))
    return torch.tensor(preds)


def test_knn_matches_an_independent_loop():
    gen = torch.Generator().manual_seed(6)
    train, test = torch.randn(200, 8, generator=gen, dtype=torch.float64), torch.randn(40, 8, generator=gen,
                                                                                        dtype=torch.float64)
    labels = torch.randint(5, (200,), generator=gen)
    pred = knn_classify(train, labels, test, k=15, temperature=0.5, num_classes=5, chunk=33)
    assert torch.equal(pred, reference_knn(train, labels, test, 15, 0.5, 5))


def test_knn_at_tiny_temperature_is_one_nearest_neighbour():
    gen = torch.Generator().manual_seed(7)
    train, test = torch.randn(300, 8, generator=gen), torch.randn(50, 8, generator=gen)
    labels = torch.randint(4, (300,), generator=gen)
    nearest = nearest_neighbours(test, train, k=1)[1][:, 0]
    assert torch.equal(knn_classify(train, labels, test, k=20, temperature=1e-6), labels[nearest])


def test_knn_is_near_perfect_on_separable_data():
    centres = 4.0 * torch.eye(4, 16)
    train, train_y = blobs(500, centres, 1.0, seed=8)
    test, test_y = blobs(500, centres, 1.0, seed=9)
    assert knn_accuracy(train, train_y, test, test_y) > 95


def test_knn_is_at_chance_on_shuffled_labels():
    # Structureless features: on 4 blobs, shuffled labels leave each blob a random local majority
    # that the vote amplifies, so the accuracy would be a 4-sample statistic (seen from 23 to 34 %).
    gen = torch.Generator().manual_seed(0)
    train, test = torch.randn(2000, 16, generator=gen), torch.randn(2000, 16, generator=gen)
    train_y = torch.arange(4).repeat(500)[torch.randperm(2000, generator=gen)]
    test_y = torch.arange(4).repeat(500)
    # Chance is 25 %; 2000 independent test points put one standard deviation near 1 %.
    acc = knn_accuracy(train, train_y, test, test_y)
    assert abs(acc - 25) < 5


def test_knn_rejects_bad_arguments():
    x = torch.randn(30, 4)
    with pytest.raises(ValueError, match="train_labels"):
        knn_classify(x, torch.zeros(29, dtype=torch.long), x)
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(x, torch.zeros(30, dtype=torch.long), x, temperature=0)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        knn_classify(x, torch.full((30,), 2), x, num_classes=2)
    with pytest.raises(ValueError, match="test_labels"):
        knn_accuracy(x, torch.zeros(30, dtype=torch.long), x, torch.zeros(3, dtype=torch.long))


# ----------------------------------------------------------------------------- patch rows


@pytest.fixture(scope="module")
def images():
    return make_shapes(3, 1, seed=0).train_images  # (3, 3, 32, 32) uint8


def test_patch_embeddings_row_order(images):
    torch.manual_seed(0)
    model = PatchAutoencoder("resnet32").train()
    feats = patch_embeddings(model, images, kind="tower", batch_size=2)
    assert feats.shape == (3 * 16, 64) and feats.dtype == torch.float32
    assert model.training  # the caller's mode is restored
    model.eval()
    patches = patchify(to_float(images))  # (3, 16, 3, 8, 8)
    with torch.no_grad():
        for i, k in [(0, 0), (0, 5), (1, 15), (2, 10)]:
            torch.testing.assert_close(feats[i * 16 + k], model.tower(patches[i, k:k + 1])[0],
                                       atol=1e-5, rtol=1e-4)


def test_context_embeddings_are_the_encoder_output(images):
    torch.manual_seed(0)
    model = ContextAutoencoder("conv4").eval()
    feats = patch_embeddings(model, images, kind="context")
    assert feats.shape == (3 * 16, 512)
    with torch.no_grad():
        torch.testing.assert_close(feats.view(3, 16, 512), model.encode(to_float(images)),
                                   atol=1e-5, rtol=1e-4)
    with pytest.raises(TypeError, match="ContextAutoencoder"):
        patch_embeddings(PatchAutoencoder("conv4"), images, kind="context")
    with pytest.raises(ValueError, match="unknown kind"):
        patch_embeddings(model, images, kind="words")


def test_pixel_rows_and_patch_pixels_are_the_grid_cells(images):
    feats = patch_embeddings(None, images, kind="pixels")
    assert feats.shape == (3 * 16, 192)
    rows = torch.tensor([0, 5, 16 + 15, 32 + 6])
    image, patch = row_to_patch(rows)
    assert image.tolist() == [0, 0, 1, 2] and patch.tolist() == [0, 5, 15, 6]
    cells = torch.stack([images[i, :, 8 * (k // 4):8 * (k // 4) + 8, 8 * (k % 4):8 * (k % 4) + 8]
                         for i, k in zip(image.tolist(), patch.tolist(), strict=True)])
    assert torch.equal(patch_pixels(images, rows), cells)
    assert torch.equal(feats[rows], to_float(cells).flatten(1))
    with pytest.raises(ValueError, match="patch rows"):
        patch_pixels(images, torch.tensor([48]))
