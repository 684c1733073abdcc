"""Visual words: per-patch embeddings, cosine nearest neighbours, a k-means vocabulary and bags of
words (the kNN classifier built on the neighbours lives with the other evaluations, vwe.evaluate).
The batched loop that runs a model over many images (`batched_features`) lives here too, the
lowest of the modules that extract features: vwe.evaluate and vwe.embed import this one.

word2vec users look at their embeddings through nearest neighbours and a vocabulary; this module
does the same for patches. Every patch of every image is one row: row i*16 + k is patch k of
image i. All functions are batched, chunked so that memory stays bounded for a million rows, and
run on whatever device their inputs live on.
Letters (docs/design.md, Notation): N images (N*16 patch rows), D feature size, Q queries, k neighbours
or words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vwe.checks import check_images
from vwe.data import batches, to_float
from vwe.models import ContextAutoencoder
from vwe.patches import N_PATCHES, patchify

KINDS = ("tower", "context", "pixels")
# Elements of one similarity block (queries x database rows): 2**24 float32 = 64 MB, whatever the
# chunk size, so a large query set cannot blow up memory either.
BLOCK_ELEMENTS = 2**24
INIT_SAMPLE = 20_000  # points k-means++ picks its seeds from (a random subsample, for speed)


# ----------------------------------------------------------------------------- patch rows


@torch.no_grad()
def batched_features(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int,
    device: torch.device,
    out_device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "features",
) -> torch.Tensor:
    """`fn` on uint8 images (N, 3, H, W), a batch at a time in order -> (N, ...) float32.

    The one loop behind every feature extraction (`vwe.evaluate.extract_features`, `vwe.embed.embed`,
    `patch_embeddings`): each batch of `batch_size` images goes to `device` on its own and into `fn`
    as float in [0, 1]; each output moves to `out_device` when one is given (the CPU, to keep a large
    set off the GPU). `fn` runs as it is: eval mode is the caller's to set.
    """
    out = []
    order = batches(len(images), batch_size, shuffle=False)
    for idx in tqdm(order, total=-(-len(images) // batch_size), desc=desc, disable=not progress):
        x = to_float(images[idx].to(device, non_blocking=True))  # (B, 3, H, W)
        feats = fn(x).float()
        out.append(feats if out_device is None else feats.to(out_device))
    return torch.cat(out)


@torch.no_grad()
def patch_embeddings(
    model: nn.Module | None,
    images: torch.Tensor,
    kind: str = "tower",
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    out_device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Features of every patch: (N, 3, 32, 32) uint8 -> (N*16, D) float32 on `device`.

    kind="tower": the tower's 64-d feature of the patch itself (`model.tower`, or `model` when it
    is a bare tower). kind="context": the 512-d context embedding of the patch as a target (what a
    `ContextAutoencoder` encodes from its 8 neighbours; the patch itself is never seen).
    kind="pixels": the 192 raw pixels in [0, 1] (`model` is ignored and may be None).
    The model runs in eval mode; its train/eval flag is restored afterwards. `batch_size` counts
    images; `device` defaults to the model's (the images' for pixels). With a model, `out_device`
    (the CPU) takes each batch's rows as they come, and `progress` shows a bar.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    check_images(images, dtype="uint8", shape=("N", 3, "H", "W"), name="images")
    if kind == "pixels":
        device = torch.device(device or images.device)
        return to_float(patchify(images.to(device))).flatten(2).flatten(0, 1)  # (N*16, 192)
    if model is None:
        raise TypeError(f"kind={kind!r} needs a model; only kind='pixels' works without one")
    if kind == "context" and not isinstance(model, ContextAutoencoder):
        raise TypeError(f"kind='context' needs a ContextAutoencoder, got {type(model).__name__}; "
                        "use kind='tower' for other models")
    tower = getattr(model, "tower", model)

    def rows(x: torch.Tensor) -> torch.Tensor:
        if kind == "tower":
            return tower(patchify(x).flatten(0, 1))  # (B*16, 64): row b*16 + k
        return model.encode(x).flatten(0, 1)  # (B, 16, 512) -> (B*16, 512)

    device = torch.device(device or next(model.parameters()).device)
    was_training = model.training
    model.eval()
    out = batched_features(rows, images, batch_size, device, out_device, progress, "patch embeddings")
    model.train(was_training)
    return out


def row_to_patch(rows: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch rows -> (image index, patch index): row i*16 + k is patch k of image i."""
    rows = torch.as_tensor(rows)
    return rows // N_PATCHES, rows % N_PATCHES


def patch_pixels(images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The pixels of patch rows: images (N, 3, 32, 32), rows (R,) -> (R, 3, 8, 8), images' dtype."""
    rows = torch.as_tensor(rows, device=images.device).reshape(-1)
    if len(rows) and (rows.min() < 0 or rows.max() >= len(images) * N_PATCHES):
        raise ValueError(f"patch rows must lie in [0, {len(images) * N_PATCHES}) for {len(images)} "
                         f"images, got {rows.min().item()}..{rows.max().item()}")
    image, patch = row_to_patch(rows)
    return patchify(images[image])[torch.arange(len(rows), device=images.device), patch]


# ----------------------------------------------------------------------------- nearest neighbours


def _check_matrix(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be a matrix (rows, D), got shape {tuple(x.shape)}")


def _compute_dtype(*xs: torch.Tensor) -> torch.dtype:
    # float64 stays float64 (tests against exact references); anything else is compared in float32.
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


@torch.no_grad()
def nearest_neighbours(
    queries: torch.Tensor,
    database: torch.Tensor,
    k: int = 8,
    chunk: int = 65536,
    exclude_self: bool | torch.Tensor = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most cosine-similar database rows of every query: (Q, D), (N, D) -> sims, idx (Q, k).

    Rows are L2-normalised (a zero row has similarity 0 to everything). The database is read in
    chunks of `chunk` rows and a running top-k is merged chunk by chunk, so memory is bounded by
    one (queries x chunk) block, itself split over queries to at most `BLOCK_ELEMENTS`. The
    database may live on another device than the queries (e.g. a million rows on the CPU); the
    work and the results are on the queries' device. Sims are sorted, highest first.
    exclude_self: True when `queries` is `database` itself (row i never returns i), or a (Q,)
    tensor giving each query's own database row (-1: none).
    """
    _check_matrix(queries, "queries")
    _check_matrix(database, "database")
    if queries.shape[1] != database.shape[1]:
        raise ValueError(f"queries have D={queries.shape[1]} but the database D={database.shape[1]}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 database rows, got {chunk}")
    q_count, n = len(queries), len(database)
    device = queries.device
    self_rows = None
    if isinstance(exclude_self, torch.Tensor):
        self_rows = exclude_self.to(device, torch.long).reshape(-1)
        if len(self_rows) != q_count:
            raise ValueError(f"exclude_self holds {len(self_rows)} rows for {q_count} queries")
    elif exclude_self:
        if q_count != n:
            raise ValueError(f"exclude_self=True means the queries are the database itself, but Q={q_count}"
                             f" != N={n}; pass a (Q,) tensor of each query's database row instead")
        self_rows = torch.arange(q_count, device=device)
    available = n - (1 if self_rows is not None else 0)
    if not 1 <= k <= available:
        raise ValueError(f"k must be in [1, {available}] for a database of {n} rows, got {k}")

    dtype = _compute_dtype(queries, database)
    if q_count == 0:  # the block loop below needs at least one query
        return (torch.empty(0, k, dtype=dtype, device=device),
                torch.empty(0, k, dtype=torch.long, device=device))
    qn = F.normalize(queries.to(dtype), dim=1)  # (Q, D)
    best_s = torch.full((q_count, 0), float("-inf"), dtype=dtype, device=device)  # running top-k
    best_i = torch.zeros((q_count, 0), dtype=torch.long, device=device)
    q_block = max(1, BLOCK_ELEMENTS // min(chunk, n))
    for d0 in range(0, n, chunk):
        db = F.normalize(database[d0:d0 + chunk].to(device, dtype), dim=1)  # (c, D), normalised once
        c = len(db)
        top_s, top_i = [], []
        for q0 in range(0, q_count, q_block):
            s = qn[q0:q0 + q_block] @ db.T  # (b, c) cosine similarities
            if self_rows is not None:
                local = self_rows[q0:q0 + q_block] - d0  # (b,) the query's own row in this chunk
                hit = ((local >= 0) & (local < c)).unsqueeze(1)
                col = local.clamp(0, c - 1).unsqueeze(1)
                # gather/where/scatter rather than boolean indexing: no host sync on a GPU.
                s.scatter_(1, col, torch.where(hit, float("-inf"), s.gather(1, col)))
            ts, ti = s.topk(min(k, c), dim=1)
            top_s.append(ts)
            top_i.append(ti + d0)
        # Merge this chunk's top-k with the running one: at most 2k candidates per query.
        cand_s = torch.cat([best_s, torch.cat(top_s)], dim=1)
        cand_i = torch.cat([best_i, torch.cat(top_i)], dim=1)
        best_s, pos = cand_s.topk(min(k, cand_s.shape[1]), dim=1)
        best_i = cand_i.gather(1, pos)
    return best_s, best_i


# ----------------------------------------------------------------------------- k-means vocabulary


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # (k, D); unit vectors when spherical
    labels: torch.Tensor  # (N,) int64, the word of every row
    inertia: float  # sum of squared row-to-centroid distances (of the normalised rows if spherical)
    iters_run: int  # Lloyd updates done (<= iters)


def _assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int, normalize: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    labels, d2 = [], []
    c2 = (centroids * centroids).sum(1)  # (k,)
    for i in range(0, len(x), chunk):
        xc = x[i:i + chunk].to(centroids.dtype)  # (c, D)
        if normalize:
            xc = F.normalize(xc, dim=1)
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 does not change the argmin, add it after.
        d = torch.addmm(c2, xc, centroids.T, alpha=-2)  # (c, k), one fused pass
        m, lab = d.min(dim=1)  # ties go to the lowest word index (determinism)
        labels.append(lab)
        # einsum, not (xc * xc).sum(1): a 64-wide row reduction is several times slower on the CPU.
        d2.append((m + torch.einsum("cd,cd->c", xc, xc)).clamp_min(0))  # clamp: cancellation < 0
    return torch.cat(labels), torch.cat(d2)


@torch.no_grad()
def assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536, spherical: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest centroid of every row: (N, D), (k, D) -> labels (N,) int64, squared distances (N,).

    spherical=True normalises the rows (and the centroids) first, i.e. the most cosine-similar word.
    """
    _check_matrix(x, "x")
    _check_matrix(centroids, "centroids")
    if x.shape[1] != centroids.shape[1]:
        raise ValueError(f"x has D={x.shape[1]} but the centroids D={centroids.shape[1]}")
    dtype = _compute_dtype(x, centroids)
    c = centroids.to(x.device, dtype)
    return _assign(x, F.normalize(c, dim=1) if spherical else c, chunk, spherical)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeds: (n, D) -> (k, D) rows of x, each next one drawn with probability
    proportional to its squared distance to the seeds so far. Runs on the CPU generator's device.
    """
    n = len(x)
    x2 = torch.einsum("nd,nd->n", x, x)  # (n,) squared norms, once

    def dist2(i: torch.Tensor) -> torch.Tensor:  # (n,) squared distances to row i, as a mat-vec
        return (x2 - 2 * (x @ x[i]) + x2[i]).clamp_min(0)

    seeds = torch.empty(k, dtype=torch.long)
    seeds[0] = torch.randint(n, (1,), generator=generator).item()
    d2 = dist2(seeds[0])  # (n,) to the nearest seed so far
    for j in range(1, k):
        # All remaining mass zero means every point already coincides with a seed (fewer distinct
        # points than k): draw uniformly, the duplicate seed's cluster is handled as an empty one.
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)
        seeds[j] = torch.multinomial(weights, 1, generator=generator).item()
        d2 = torch.minimum(d2, dist2(seeds[j]))
    return x[seeds].clone()


@torch.no_grad()
def kmeans(
    x: torch.Tensor,
    k: int,
    iters: int = 50,
    seed: int = 0,
    chunk: int = 65536,
    tol: float = 1e-4,
    spherical: bool = False,
    init: torch.Tensor | None = None,
    init_sample: int = INIT_SAMPLE,
) -> KMeansResult:
    """Lloyd's k-means on the rows of x (N, D): a vocabulary of k visual words.

    Seeds: k-means++ on a random subsample of `init_sample` rows (seeded torch.Generator; the
    subsample makes seeding O(init_sample * k) instead of O(N * k), and a subsample of 20 k rows
    already covers the data's modes), or the given `init` (k, D). Each iteration assigns every row
    in chunks of `chunk`, re-seeds each empty cluster with the row farthest from its centroid, and
    moves the centroids to their means. Stops after `iters` updates or when an update lowers the
    inertia by less than `tol` times the inertia. spherical=True: cosine k-means (rows and
    centroids normalised). Deterministic for a seed on the CPU (on CUDA the centroid sums use
    atomic adds, so the last bits may differ). With fewer distinct rows than k some words stay
    empty, their centroids copies of others.
    """
    _check_matrix(x, "x")
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] for {n} rows, got {k}")
    if iters < 1 or chunk < 1 or tol < 0 or init_sample < 1:
        raise ValueError(f"need iters >= 1, chunk >= 1, tol >= 0, init_sample >= 1; got {iters}, "
                         f"{chunk}, {tol}, {init_sample}")
    dtype = _compute_dtype(x)
    x = x.to(dtype)
    if spherical:
        x = F.normalize(x, dim=1)
    if init is None:
        gen = torch.Generator().manual_seed(seed)
        sample = torch.randperm(n, generator=gen)[:max(init_sample, k)]
        centroids = kmeans_plus_plus(x[sample.to(x.device)].cpu(), k, gen).to(x.device)
    else:
        if init.shape != (k, x.shape[1]):
            raise ValueError(f"init must be (k, D) = {(k, x.shape[1])}, got {tuple(init.shape)}")
        centroids = init.to(x.device, dtype).clone()
    if spherical:
        centroids = F.normalize(centroids, dim=1)

    labels, d2 = _assign(x, centroids, chunk, normalize=False)
    inertia = d2.sum().item()
    iters_run = 0
    while iters_run < iters:
        iters_run += 1
        counts = torch.bincount(labels, minlength=k)
        empty = (counts == 0).nonzero().squeeze(1)
        if len(empty):
            # The worst-served rows start the empty words: the move that lowers the inertia most.
            far = d2.topk(len(empty)).indices
            labels = labels.clone()
            labels[far] = empty
            counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)  # (k, D)
        means = sums / counts.clamp_min(1).unsqueeze(1).to(dtype)
        centroids = torch.where((counts > 0).unsqueeze(1), means, centroids)  # a word left empty stays
        if spherical:
            centroids = F.normalize(centroids, dim=1)
        labels, d2 = _assign(x, centroids, chunk, normalize=False)
        previous, inertia = inertia, d2.sum().item()
        if not len(empty) and previous - inertia <= tol * previous:
            break
    return KMeansResult(centroids, labels, inertia, iters_run)


def word_exemplars(feats: torch.Tensor, centroids: torch.Tensor, n: int = 8, chunk: int = 65536
                   ) -> torch.Tensor:
    """The n patch rows most cosine-similar to each word's centroid: (N, D), (k, D) -> (k, n) rows."""
    return nearest_neighbours(centroids.to(feats.device), feats, k=n, chunk=chunk)[1]


def bag_of_words(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Word histograms per image: (N_images*16,) words in [0, k) -> (N_images, k), rows summing to 1."""
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or len(labels) % N_PATCHES:
        raise ValueError(f"labels must be one word per patch row, (N_images*{N_PATCHES},), got "
                         f"shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer word indices, got {labels.dtype}")
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"words must lie in [0, {k}), got {labels.min().item()}..{labels.max().item()}")
    n_images = len(labels) // N_PATCHES
    image = torch.arange(len(labels), device=labels.device) // N_PATCHES
    counts = torch.bincount(image * k + labels.long(), minlength=n_images * k)  # (N_images*k,)
    return counts.view(n_images, k).float() / N_PATCHES
