"""Time building a visual-word vocabulary: k-means over every patch of 50 000 images.

The paper-sized case is 50 000 CIFAR-100 training images x 16 patches = 800 000 rows of 64-d tower
features. By default the rows are random Gaussian vectors of that shape (`--features random`): no
structure, so k-means never converges early and the figure is the cost of `--iters` full Lloyd
iterations (tol 0). `--features tower` runs an untrained ResNet-32 tower over Shapes images instead
(slow on a CPU: the tower pass costs more than the k-means). Also times one nearest-neighbour search
of `--queries` rows against the whole database.

    python benchmarks/vocabulary.py                          # 800 000 x 64, k 256, 20 iterations, CPU
    python benchmarks/vocabulary.py --images 2000 --features tower --json runs/vocabulary.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from vwe.config import resolve_device
from vwe.data import make_shapes
from vwe.evaluate import random_weights_model
from vwe.patches import N_PATCHES
from vwe.words import INIT_SAMPLE, kmeans, kmeans_plus_plus, nearest_neighbours, patch_embeddings


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels are asynchronous: time what ran, not what was queued


def features(source: str, images: int, dim: int, device: torch.device, seed: int) -> torch.Tensor:
    """(images * 16, dim) rows: Gaussian vectors (source "random"), or random-weight tower features of
    Shapes images ("tower")."""
    if source == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(images * N_PATCHES, dim, generator=gen).to(device)
    data = make_shapes(images, 1, seed=seed)
    model = random_weights_model("resnet32", seed=seed).to(device)
    return patch_embeddings(model, data.train_images, kind="tower", batch_size=512)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--features", choices=("random", "tower"), default="random")
    p.add_argument("--images", type=int, default=50_000, help="images; rows = 16 x images")
    p.add_argument("--dim", type=int, default=64, help="feature size for --features random")
    p.add_argument("--k", type=int, default=256, help="words")
    p.add_argument("--iters", type=int, default=20, help="Lloyd iterations (tol 0: all of them run)")
    p.add_argument("--queries", type=int, default=100, help="rows of the nearest-neighbour search")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    device = resolve_device(args.device)

    t0 = time.perf_counter()
    x = features(args.features, args.images, args.dim, device, args.seed)
    sync(device)
    t_features = time.perf_counter() - t0
    print(f"{args.features} features {tuple(x.shape)} on {device} ({torch.get_num_threads()} CPU threads)"
          f" in {t_features:.1f} s")

    # k-means++ alone, on the same subsample size kmeans uses, to split seeding from the iterations.
    sample = x[:INIT_SAMPLE].cpu()
    t0 = time.perf_counter()
    kmeans_plus_plus(sample, args.k, torch.Generator().manual_seed(args.seed))
    t_init = time.perf_counter() - t0

    t0 = time.perf_counter()
    res = kmeans(x, args.k, iters=args.iters, seed=args.seed, tol=0.0)
    sync(device)
    t_kmeans = time.perf_counter() - t0
    per_iter = max(t_kmeans - t_init, 0.0) / res.iters_run
    print(f"k-means: k {args.k}, {res.iters_run} iterations, {t_kmeans:.1f} s in all "
          f"(k-means++ on {min(INIT_SAMPLE, len(x))} rows {t_init:.2f} s, {per_iter:.2f} s per iteration "
          f"over {len(x)} rows); a 50-iteration vocabulary: about {t_init + 50 * per_iter:.0f} s")

    t0 = time.perf_counter()
    nearest_neighbours(x[:args.queries], x, k=8)
    sync(device)
    t_nn = time.perf_counter() - t0
    print(f"nearest neighbours: {args.queries} queries x {len(x)} rows, top 8, in {t_nn:.2f} s")

    result = {
        "features": args.features, "rows": len(x), "dim": x.shape[1], "k": args.k,
        "iters_run": res.iters_run, "seconds_features": t_features, "seconds_kmeans": t_kmeans,
        "seconds_init": t_init, "seconds_per_iteration": per_iter, "queries": args.queries,
        "seconds_nearest_neighbours": t_nn, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
