"""Figures of visual words (neighbour rows, the vocabulary, word frequencies) and `WordExplorer`.

The figures lay many 8x8 patches out as one mosaic per axes (one `imshow`, not one axes per
patch), so a vocabulary of 256 words draws in well under a second. The explorer follows the
conventions of `vwe.widgets` (image slider, patch picker, PNG figure, `vwe-title` text).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vwe.patches import GRID, N_PATCHES, PATCH, patchify
from vwe.plots import figure, float_pixels
from vwe.widgets import _Explorer
from vwe.words import assign, nearest_neighbours, patch_pixels, word_exemplars

GAP = 1  # pixels of white between tiles


TILE = (3, PATCH, PATCH)  # one patch's pixels, the last dimensions of every tile array


def mosaic(tiles: torch.Tensor, gap: int = GAP, split_after: int | None = None) -> np.ndarray:
    """Tiles (R, C, 3, P, P) -> one (H, W, 3) image, white gaps between tiles.

    split_after=j widens the gap after column j (to set a query apart from its neighbours).
    """
    tiles = float_pixels(tiles, "tiles", (None, None, *TILE))  # (rows, cols, 3, 8, 8)
    r, c, _, p, _ = tiles.shape
    extra = 3 * gap if split_after is not None else 0
    out = np.ones((r * (p + gap) - gap, c * (p + gap) - gap + extra, 3), dtype=np.float32)
    for i in range(r):
        for j in range(c):
            x0 = j * (p + gap) + (extra if split_after is not None and j > split_after else 0)
            y0 = i * (p + gap)
            out[y0:y0 + p, x0:x0 + p] = tiles[i, j].permute(1, 2, 0).numpy()
    return out


def _row_labels(ax: plt.Axes, names: Sequence[str], p: int = PATCH, gap: int = GAP) -> None:
    ax.set_yticks([i * (p + gap) + (p - 1) / 2 for i in range(len(names))], list(names), fontsize=8)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)


def show_neighbours(queries: torch.Tensor, neighbours: Mapping[str, torch.Tensor],
                    titles: Sequence[str] | None = None) -> Figure:
    """Query patches and their nearest neighbours under several features.

    queries (Q, 3, 8, 8); neighbours maps a feature name to (Q, k, 3, 8, 8) patches, best first.
    One panel per query: a row per feature, the query then its k neighbours.
    """
    q = float_pixels(queries, "queries", (None, *TILE))  # (Q, 3, 8, 8)
    if not neighbours:
        raise ValueError("need the neighbours of at least one feature, got none")
    n = {name: float_pixels(v, f"neighbours[{name!r}]", (None, None, *TILE))  # (Q, k, 3, 8, 8)
         for name, v in neighbours.items()}
    k = next(iter(n.values())).shape[1]
    for name, v in n.items():
        if v.shape[:2] != (len(q), k):
            raise ValueError(f"neighbours[{name!r}] must be (Q, k) = {(len(q), k)} patches, "
                             f"got {tuple(v.shape[:2])}")
    fig, axes = plt.subplots(len(q), 1, figsize=(1.6 + 0.42 * (k + 1), 0.5 + 0.45 * len(n) * len(q)),
                             squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        rows = torch.stack([torch.cat([q[i:i + 1], v[i]]) for v in n.values()])  # (F, 1 + k, 3, 8, 8)
        ax.imshow(mosaic(rows, split_after=0), interpolation="nearest")
        _row_labels(ax, list(n))
        ax.set_title(titles[i] if titles else f"query {i} | its {k} nearest neighbours", fontsize=9)
    fig.tight_layout()
    return fig


def show_vocabulary(exemplars: torch.Tensor, counts: torch.Tensor | None = None, ncols: int = 4,
                    words: Sequence[int] | None = None) -> Figure:
    """The vocabulary: one row of exemplar patches per word, in `ncols` columns of words.

    exemplars (W, n, 3, 8, 8): the patches nearest each word's centroid; counts (all words,)
    patches per word (labels give each word's share); words: the word ids of the rows (default
    0..W-1).
    """
    ex = float_pixels(exemplars, "exemplars", (None, None, *TILE))  # (words, n, 3, 8, 8)
    words = list(range(len(ex))) if words is None else [int(w) for w in words]
    if len(words) != len(ex):
        raise ValueError(f"{len(words)} word ids for {len(ex)} rows of exemplars")
    total = None if counts is None else float(counts.sum())
    names = [f"word {w}" + ("" if total is None else f" ({100 * float(counts[w]) / total:.1f} %)")
             for w in words]
    ncols = max(1, min(ncols, len(ex)))
    per_col = -(-len(ex) // ncols)
    fig, axes = plt.subplots(1, ncols, figsize=(ncols * (1.4 + 0.3 * ex.shape[1]), 0.6 + 0.3 * per_col),
                             squeeze=False)
    for c, ax in enumerate(axes[0]):
        part = ex[c * per_col:(c + 1) * per_col]
        if len(part) < per_col:  # pad the last column with white rows to keep one scale
            part = torch.cat([part, torch.ones(per_col - len(part), *part.shape[1:])])
        ax.imshow(mosaic(part), interpolation="nearest")
        _row_labels(ax, names[c * per_col:(c + 1) * per_col])
    fig.suptitle(f"{len(ex)} visual words: the {ex.shape[1]} patches nearest each centroid", fontsize=10)
    fig.tight_layout()
    return fig


def plot_word_frequencies(counts: torch.Tensor) -> Figure:
    """Share of patches per word, sorted from the most to the least used, against a flat vocabulary."""
    counts = torch.as_tensor(counts).detach().cpu()
    if counts.dim() != 1 or len(counts) == 0 or (counts < 0).any():
        raise ValueError(f"counts must be (k,) non-negative patch counts, got shape {tuple(counts.shape)}")
    share = 100 * counts.double() / counts.sum()
    order = share.argsort(descending=True, stable=True)
    k = len(counts)
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.16 * k), 3))
    ax.bar(range(k), share[order].numpy(), color="tab:blue")
    ax.axhline(100 / k, color="black", linestyle="--", linewidth=1, label=f"uniform ({100 / k:.2g} %)")
    if k <= 64:
        ax.set_xticks(range(k), [str(int(w)) for w in order], fontsize=6, rotation=90)
    ax.set_xlabel("word (sorted by frequency)")
    ax.set_ylabel("% of patches")
    ax.set_xlim(-0.7, k - 0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def show_word_view(image: torch.Tensor, patch: int, neighbours: torch.Tensor, sims: torch.Tensor,
                   exemplars: torch.Tensor, word: int, pyplot: bool = True) -> Figure:
    """The explorer's view: the image with one patch outlined; the patch and its nearest neighbours;
    the exemplars of its word. image (3, 32, 32); neighbours (n, 3, 8, 8) with sims (n,);
    exemplars (m, 3, 8, 8). pyplot: see `vwe.plots.figure`.
    """
    tiles = float_pixels(patchify(image.unsqueeze(0))[0], "image", (N_PATCHES, *TILE))  # (16, 3, 8, 8)
    query = tiles[patch]  # (3, 8, 8)
    nb = float_pixels(neighbours, "neighbours", (None, *TILE))  # (n, 3, 8, 8)
    ex = float_pixels(exemplars, "exemplars", (None, *TILE))  # (m, 3, 8, 8)
    fig = figure((8.5, 2.6), pyplot)
    grid = fig.add_gridspec(2, 2, width_ratios=(1, 3.6))
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(mosaic(tiles.view(GRID, GRID, 3, PATCH, PATCH), gap=0), interpolation="nearest")
    r, c = divmod(patch, GRID)
    ax.add_patch(Rectangle((c * PATCH - 0.5, r * PATCH - 0.5), PATCH, PATCH, fill=False, edgecolor="red",
                           linewidth=2.5, clip_on=False))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"patch {patch}", fontsize=9)
    rows = ((torch.cat([query[None], nb]), f"nearest (cos {float(sims.min()):.3f}..{float(sims.max()):.3f})"),
            (torch.cat([query[None], ex]), f"word {word} exemplars"))
    for i, (tiles, name) in enumerate(rows):
        ax = fig.add_subplot(grid[i, 1])
        ax.imshow(mosaic(tiles[None], split_after=0), interpolation="nearest")
        _row_labels(ax, [""])
        ax.set_title(name, fontsize=9, loc="left")
    fig.tight_layout()
    return fig


class WordExplorer(_Explorer):
    """Pick an image and a patch; see its nearest patches and the exemplars of its visual word.

    images uint8 (N, 3, 32, 32); feats (N*16, D) their patch embeddings (row i*16 + k is patch k of
    image i, as `vwe.words.patch_embeddings` gives them); centroids (W, D) a vocabulary, whose word
    for each patch is the nearest centroid (by cosine when spherical). Neighbours are searched among
    all N*16 patches except the chosen one. State for tests: `row`, `neighbours` (n rows), `sims`,
    `word`, `title`, e.g. "image 3 (square) - patch 5 - word 12 (4.1 % of patches)".
    """

    css_class = "vwe-word-explorer"

    def __init__(self, images: torch.Tensor, feats: torch.Tensor, centroids: torch.Tensor,
                 labels: torch.Tensor | Sequence[int] | None = None, classes: Sequence[str] | None = None,
                 spherical: bool = True, n: int = 8, image: int = 0, patch: int = 5):
        super().__init__(images, labels, classes, image, patch, "patch")
        if feats.dim() != 2 or len(feats) != len(self.images) * N_PATCHES:
            raise ValueError(f"feats must be one row per patch, ({len(self.images) * N_PATCHES}, D), "
                             f"got {tuple(feats.shape)}")
        if not 1 <= n < len(feats):
            raise ValueError(f"n must be in [1, {len(feats) - 1}], got {n}")
        self.patch_picker = self.target_picker
        self.feats, self.n = feats, n
        self.words = assign(feats, centroids, spherical=spherical)[0].cpu()  # (N*16,)
        self.counts = torch.bincount(self.words, minlength=len(centroids))
        self.exemplars = word_exemplars(feats, centroids, n).cpu()  # (W, n) rows
        self.redraw()
        self._watch()

    def redraw(self) -> None:
        i, k = self.image_slider.value, self.target_picker.value
        self.row = i * N_PATCHES + k
        sims, idx = nearest_neighbours(self.feats[self.row:self.row + 1], self.feats, k=self.n,
                                       exclude_self=torch.tensor([self.row]))
        self.sims, self.neighbours = sims[0].cpu(), idx[0].cpu()
        self.word = int(self.words[self.row])
        fig = show_word_view(self.images[i], k, patch_pixels(self.images, self.neighbours), self.sims,
                             patch_pixels(self.images, self.exemplars[self.word]), self.word, pyplot=False)
        share = 100 * float(self.counts[self.word]) / len(self.words)
        title = f"{self.image_name(i)} - patch {k} - word {self.word} ({share:.1f} % of patches)"
        fig.suptitle(title, fontsize=10)
        self._show(fig, title)
