"""`vwe.words_widgets`: the visual words' figures (mosaics, neighbours, vocabulary, frequencies) and the
word explorer."""

import matplotlib.pyplot as plt
import pytest
import torch

from vwe.data import make_shapes
from vwe.words import kmeans, nearest_neighbours, patch_embeddings
from vwe.words_widgets import WordExplorer, mosaic, plot_word_frequencies, show_neighbours, show_vocabulary


def test_mosaic_places_tiles_row_major_with_gaps():
    tiles = torch.rand(2, 3, 3, 8, 8)
    img = mosaic(tiles, gap=1)
    assert img.shape == (2 * 9 - 1, 3 * 9 - 1, 3)
    torch.testing.assert_close(torch.from_numpy(img[9:17, 18:26]), tiles[1, 2].permute(1, 2, 0))
    assert (img[8] == 1).all() and (img[:, 8] == 1).all()  # white gaps
    split = mosaic(tiles, gap=1, split_after=0)  # 3 more pixels of gap after the first column
    assert split.shape[1] == img.shape[1] + 3
    torch.testing.assert_close(torch.from_numpy(split[:8, 12:20]), tiles[0, 1].permute(1, 2, 0))


def test_figures_have_one_panel_per_query_and_word_column():
    q = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    fig = show_neighbours(q, {"a": torch.rand(3, 5, 3, 8, 8), "b": torch.rand(3, 5, 3, 8, 8)})
    assert len(fig.axes) == 3
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b"]
    with pytest.raises(ValueError, match="neighbours\\['b'\\]"):
        show_neighbours(q, {"a": torch.rand(3, 5, 3, 8, 8), "b": torch.rand(3, 4, 3, 8, 8)})
    counts = torch.tensor([5, 1, 0, 2, 8])
    fig = show_vocabulary(torch.rand(5, 4, 3, 8, 8), counts, ncols=2)
    assert len(fig.axes) == 2
    assert fig.axes[0].get_yticklabels()[0].get_text() == "word 0 (31.2 %)"
    fig = plot_word_frequencies(counts)
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    assert heights == pytest.approx([50.0, 31.25, 12.5, 6.25, 0.0])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["4", "0", "3", "1", "2"]
    plt.close("all")


def test_word_explorer_shows_the_neighbours_and_word_of_the_chosen_patch():
    data = make_shapes(6, 1, seed=1)
    feats = patch_embeddings(None, data.train_images, kind="pixels")  # (96, 192)
    vocab = kmeans(feats, 4, seed=0, spherical=True)
    ex = WordExplorer(data.train_images, feats, vocab.centroids, data.train_labels, data.classes, n=5)
    first_png = ex.png
    ex.select(image=4, patch=9)
    row = 4 * 16 + 9
    assert ex.row == row
    sims, idx = nearest_neighbours(feats, feats, k=5, exclude_self=True)
    assert torch.equal(ex.neighbours, idx[row])
    torch.testing.assert_close(ex.sims, sims[row])
    assert ex.word == int(vocab.labels[row])
    share = 100 * int((vocab.labels == ex.word).sum()) / 96
    cls = data.classes[int(data.train_labels[4])]
    assert ex.title == f"image 4 ({cls}) - patch 9 - word {ex.word} ({share:.1f} % of patches)"
    assert ex.png != first_png and ex.png.startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="one row per patch"):
        WordExplorer(data.train_images, feats[:-1], vocab.centroids)
    with pytest.raises(ValueError, match="patch"):
        ex.select(patch=16)
