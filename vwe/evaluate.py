"""Linear evaluation (paper 4.2): frozen features, one linear layer, top-1 accuracy over seeds.

Features are computed once and cached in memory; a probe is `nn.Linear(dim, classes)` trained with
Adam at its defaults (lr 1e-3), batch 128. The random-weights baseline runs an untrained tower
through the same pipeline.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vwe.data import batches, to_float
from vwe.models import PatchAutoencoder


@torch.no_grad()
def extract_features(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Image embeddings of `images` (N, 3, 32, 32) uint8 -> (N, dim) float32 on `device`.

    `model` is an autoencoder (its `image_embedding` is used, in eval mode) or any function of a
    float batch in [0, 1]. `device` defaults to the model's.
    """
    if isinstance(model, nn.Module):
        model.eval()
        fn = model.image_embedding if hasattr(model, "image_embedding") else model
        device = device or next(model.parameters()).device
    else:
        fn, device = model, device or images.device
    device = torch.device(device)
    out = []
    order = batches(len(images), batch_size, shuffle=False)
    for idx in tqdm(order, total=-(-len(images) // batch_size), desc="features", disable=not progress):
        x = to_float(images[idx].to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(fn(x).float())
    return torch.cat(out)


@dataclass
class ProbeResult:
    test_acc: float  # top-1, percent
    train_acc: float  # top-1 on the training features, percent
    losses: list[float]  # mean training loss per epoch
    seed: int


def _accuracy(layer: nn.Linear, feats: torch.Tensor, labels: torch.Tensor, batch: int = 4096) -> float:
    correct = sum((layer(feats[i:i + batch]).argmax(1) == labels[i:i + batch]).sum()
                  for i in range(0, len(feats), batch))
    return 100.0 * float(correct) / len(feats)


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    seed: int = 0,
    epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-3,
    num_classes: int | None = None,
    progress: bool = False,
) -> ProbeResult:
    """Train one linear layer on frozen features and report top-1 accuracy.

    train_feats: (N, dim), train_labels: (N,), test_feats: (M, dim), test_labels: (M,), all on one
    device. The seed fixes the layer's initialisation and the shuffling.
    """
    if train_feats.dim() != 2 or test_feats.dim() != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"features must be (N, dim) and (M, dim) with one dim, got "
                         f"{tuple(train_feats.shape)} and {tuple(test_feats.shape)}")
    if len(train_feats) != len(train_labels) or len(test_feats) != len(test_labels):
        raise ValueError("each feature matrix needs one label per row")
    if epochs <= 0 or batch_size <= 0 or lr <= 0:
        raise ValueError(f"epochs, batch_size and lr must be > 0, got {epochs}, {batch_size}, {lr}")
    device = train_feats.device
    train_labels, test_labels = train_labels.to(device), test_labels.to(device)
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    with torch.random.fork_rng(devices=[]):  # seed the layer's init without touching global state
        torch.manual_seed(seed)
        layer = nn.Linear(train_feats.shape[1], num_classes).to(device)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(train_feats)
    losses = []
    for _ in tqdm(range(epochs), desc=f"probe seed {seed}", disable=not progress, leave=False):
        total = torch.zeros((), device=device)
        for idx in batches(n, batch_size, shuffle=True, generator=gen, device=device):
            loss = F.cross_entropy(layer(train_feats[idx]), train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
        losses.append(total.item() / n)  # one sync per epoch, not per step
    with torch.no_grad():
        return ProbeResult(_accuracy(layer, test_feats, test_labels),
                           _accuracy(layer, train_feats, train_labels), losses, seed)


@dataclass
class LinearEval:
    mean: float  # mean test accuracy over seeds, percent
    std: float  # sample standard deviation over seeds (0 for one seed)
    accs: list[float]
    runs: list[ProbeResult]

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f} % (seeds: {', '.join(f'{a:.2f}' for a in self.accs)})"


def linear_eval(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    seeds: tuple[int, ...] = (0, 1, 2),
    **probe_kwargs,
) -> LinearEval:
    """`linear_probe` once per seed; mean and sample std of the test accuracy."""
    runs = [linear_probe(train_feats, train_labels, test_feats, test_labels, seed=s, **probe_kwargs)
            for s in seeds]
    accs = [r.test_acc for r in runs]
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return LinearEval(statistics.fmean(accs), std, accs, runs)


def random_weights_model(tower: str = "resnet32", seed: int = 0) -> PatchAutoencoder:
    """The lower bound: an untrained tower whose 16 patch features (16 * 64 = 1024-d) are the embedding."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PatchAutoencoder(tower).eval()


def evaluate_model(model: nn.Module, data, cfg, progress: bool = True) -> LinearEval:
    """Features of `data` (a `vwe.data.Dataset`) from `model`, then `linear_eval` with cfg's probe
    settings."""
    device = next(model.parameters()).device
    train = extract_features(model, data.train_images, cfg.eval_batch_size, device, progress)
    test = extract_features(model, data.test_images, cfg.eval_batch_size, device, progress)
    return linear_eval(train, data.train_labels, test, data.test_labels, seeds=cfg.probe_seeds,
                       epochs=cfg.probe_epochs, batch_size=cfg.probe_batch_size, lr=cfg.probe_lr,
                       num_classes=data.num_classes, progress=progress)
