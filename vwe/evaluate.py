"""Linear evaluation (paper 4.2): frozen features, one linear layer, top-1 accuracy over seeds.

Features are computed once, in fp32, and kept in memory; a probe is `nn.Linear(dim, classes)` trained
with Adam at its defaults (lr 1e-3), batch 128. By default the probe first standardises every
feature with the mean and std of the *training* features (a BatchNorm without affine parameters in
front of the layer, as MAE's linear probe): the context embedding's rows have norms in the hundreds,
where Adam at lr 1e-3 on raw features barely trains. `norm="raw"` is the paper's probe on the raw
features. Feature sources besides a model's embedding: the 3 072 raw pixels (the floor every learned
feature is read against) and the random-weights baselines, an untrained tower on the 16 patches or,
as [24] runs it, on the whole image. A weighted kNN classifier on the same features is the table's
second column.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vwe.config import PROBE_NORMS
from vwe.data import batches, to_float
from vwe.models import Classifier, PatchAutoencoder
from vwe.words import batched_features, nearest_neighbours

FEATURES = ("embedding", "tower")  # a model's image embedding | its tower on the 16 patches


@torch.no_grad()
def extract_features(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    progress: bool = False,
    features: str = "embedding",
) -> torch.Tensor:
    """Image embeddings of `images` (N, 3, 32, 32) uint8 -> (N, dim) float32 on `device`.

    `model` is an autoencoder (in eval mode; `features` picks its `image_embedding` or its
    `tower_embedding`) or any function of a float batch in [0, 1]. `device` defaults to the model's.
    The forward runs in fp32: accuracies are reported on fp32 features.
    """
    if features not in FEATURES:
        raise ValueError(f"unknown features {features!r}; choose one of {FEATURES}")
    if isinstance(model, nn.Module):
        model.eval()
        if hasattr(model, "image_embedding"):
            fn = model.image_embedding if features == "embedding" else model.tower_embedding
        else:
            fn = model
        device = device or next(model.parameters()).device
    else:
        fn, device = model, device or images.device
    return batched_features(fn, images, batch_size, torch.device(device), progress=progress)


def split_features(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], data, batch_size: int = 1024,
                   device: str | torch.device | None = None, progress: bool = False,
                   features: str = "embedding") -> tuple[torch.Tensor, torch.Tensor]:
    """`extract_features` of both splits of `data` (a `vwe.data.Dataset`): train (N, dim), test (M, dim)."""
    return tuple(extract_features(model, x, batch_size, device, progress, features)
                 for x in (data.train_images, data.test_images))


def pixel_features(images: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """The raw-pixel baseline's features: (N, 3, 32, 32) uint8 -> (N, 3072) float32 in [0, 1]."""
    return torch.cat([to_float(images[i:i + batch_size]).flatten(1)
                      for i in range(0, len(images), batch_size)])


def standardize(train: torch.Tensor, test: torch.Tensor, eps: float = 1e-6
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both (N, dim) and (M, dim) feature sets standardised with the *training* set's per-dimension
    mean and (sample) variance: `nn.BatchNorm1d(dim, affine=False, eps=eps)` in eval mode once its
    running statistics are those of the training features. The test features never inform them.
    """
    var, mean = torch.var_mean(train, dim=0)  # (dim,), (dim,)
    scale = torch.rsqrt(var + eps)  # a constant feature (a zero patch's slot) stays near 0, not inf
    return (train - mean) * scale, (test - mean) * scale


@dataclass
class ProbeResult:
    test_acc: float  # top-1, percent
    train_acc: float  # top-1 on the training features after the last epoch, percent
    losses: list[float]  # mean training loss per epoch
    seed: int
    train_accs: list[float] | None = None  # running top-1 on the training batches per epoch, percent
    norm: str = "standard"


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
    norm: str = "standard",
) -> ProbeResult:
    """Train one linear layer on frozen features and report top-1 accuracy.

    train_feats: (N, dim), train_labels: (N,), test_feats: (M, dim), test_labels: (M,), all on one
    device. The seed fixes the layer's initialisation and the shuffling. `norm="standard"`
    standardises the features first (`standardize`), `"raw"` probes them as they are (the paper).
    The training loss and running training accuracy of every epoch are kept, so that an
    under-trained probe shows.
    """
    if norm not in PROBE_NORMS:
        raise ValueError(f"unknown probe norm {norm!r}; choose one of {PROBE_NORMS}")
    if train_feats.dim() != 2 or test_feats.dim() != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"features must be (N, dim) and (M, dim) with one dim, got "
                         f"{tuple(train_feats.shape)} and {tuple(test_feats.shape)}")
    if len(train_feats) != len(train_labels) or len(test_feats) != len(test_labels):
        raise ValueError("each feature matrix needs one label per row")
    if epochs <= 0 or batch_size <= 0 or lr <= 0:
        raise ValueError(f"epochs, batch_size and lr must be > 0, got {epochs}, {batch_size}, {lr}")
    device = train_feats.device
    train_labels, test_labels = train_labels.to(device), test_labels.to(device)
    if norm == "standard":
        train_feats, test_feats = standardize(train_feats, test_feats)
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    with torch.random.fork_rng(devices=[]):  # seed the layer's init without touching global state
        torch.manual_seed(seed)
        layer = nn.Linear(train_feats.shape[1], num_classes).to(device)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(train_feats)
    losses, train_accs = [], []
    for _ in range(epochs):
        total = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for idx in batches(n, batch_size, shuffle=True, generator=gen, device=device):
            logits = layer(train_feats[idx])
            loss = F.cross_entropy(logits, train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == train_labels[idx]).sum()
        losses.append(total.item() / n)  # one sync per epoch, not per step
        train_accs.append(100.0 * correct.item() / n)
    with torch.no_grad():
        return ProbeResult(_accuracy(layer, test_feats, test_labels),
                           _accuracy(layer, train_feats, train_labels), losses, seed, train_accs, norm)


@dataclass
class LinearEval:
    mean: float  # mean test accuracy over seeds, percent
    std: float  # sample standard deviation over seeds (0 for one seed)
    accs: list[float]
    runs: list[ProbeResult]

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f} % (seeds: {', '.join(f'{a:.2f}' for a in self.accs)})"

    def summary(self) -> dict:
        """What a results file keeps of it: the accuracies, and how far the probe trained (its loss and
        running training accuracy per epoch, averaged over the seeds)."""
        runs = self.runs
        return {"mean": self.mean, "std": self.std, "accs": self.accs, "norm": runs[0].norm,
                "train_acc": statistics.fmean(r.train_acc for r in runs),
                "final_loss": statistics.fmean(r.losses[-1] for r in runs),
                "epochs": [{"epoch": i + 1, "loss": statistics.fmean(r.losses[i] for r in runs),
                            "train_acc": statistics.fmean(r.train_accs[i] for r in runs)}
                           for i in range(len(runs[0].losses))]}


def linear_eval(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    seeds: tuple[int, ...] = (0, 1, 2),
    progress: bool = False,
    **probe_kwargs,
) -> LinearEval:
    """`linear_probe` once per seed (a progress bar over them with `progress`); mean and sample std of
    the test accuracy."""
    runs = [linear_probe(train_feats, train_labels, test_feats, test_labels, seed=s, **probe_kwargs)
            for s in tqdm(seeds, desc="probe seeds", disable=not progress, leave=False)]
    accs = [r.test_acc for r in runs]
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return LinearEval(statistics.fmean(accs), std, accs, runs)


def random_weights_model(tower: str = "resnet32", seed: int = 0) -> PatchAutoencoder:
    """An untrained tower whose 16 patch features (16 * 64 = 1024-d) are the embedding."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PatchAutoencoder(tower).eval()


def random_image_model(tower: str = "resnet32", seed: int = 0) -> Classifier:
    """The lower bound as [24] measures it: an untrained tower on the whole 32x32 image; its
    `forward_features` is (B, 3, 32, 32) -> (B, 64). Eval mode: BatchNorm uses its initial statistics."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Classifier(tower).eval()


def probe_settings(cfg, num_classes: int) -> dict:
    """`linear_eval`'s keyword arguments from a `vwe.config.Config`."""
    return dict(seeds=cfg.probe_seeds, epochs=cfg.probe_epochs, batch_size=cfg.probe_batch_size,
                lr=cfg.probe_lr, num_classes=num_classes, norm=cfg.probe_norm)


def evaluate_model(model: nn.Module, data, cfg, progress: bool = True, features: str = "embedding"
                   ) -> LinearEval:
    """Features of `data` (a `vwe.data.Dataset`) from `model`, then `linear_eval` with cfg's probe
    settings."""
    device = next(model.parameters()).device
    train, test = split_features(model, data, cfg.eval_batch_size, device, progress, features)
    return linear_eval(train, data.train_labels, test, data.test_labels,
                       **probe_settings(cfg, data.num_classes), progress=progress)


# ----------------------------------------------------------------------------- kNN evaluation


@torch.no_grad()
def knn_classify(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 65536,
) -> torch.Tensor:
    """Weighted kNN labels of test rows: (N, D), (N,), (M, D) -> (M,) int64 on test_feats' device.

    The k most cosine-similar training rows vote for their class with weight exp(sim / temperature),
    as in the kNN evaluation of self-supervised features (Wu et al. 2018, InstDisc; DINO). Ties
    between classes go to the lowest class index.
    """
    if train_labels.shape != train_feats.shape[:1]:
        raise ValueError(f"train_labels must be (N,) = ({len(train_feats)},), "
                         f"got {tuple(train_labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    labels = train_labels.to(test_feats.device, torch.long)
    num_classes = num_classes or int(labels.max()) + 1
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"train labels must lie in [0, {num_classes}), got "
                         f"{labels.min().item()}..{labels.max().item()}")
    sims, idx = nearest_neighbours(test_feats, train_feats, k=k, chunk=chunk)  # (M, k) each
    # exp((sim - best) / T) has the same argmax per row as exp(sim / T) and cannot overflow at small T.
    weights = ((sims - sims[:, :1]) / temperature).exp()  # (M, k)
    votes = torch.zeros(len(test_feats), num_classes, dtype=weights.dtype, device=weights.device)
    votes.scatter_add_(1, labels[idx], weights)  # (M, classes)
    return votes.argmax(dim=1)


def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 65536,
) -> float:
    """Top-1 accuracy (percent) of `knn_classify` on the test rows."""
    if test_labels.shape != test_feats.shape[:1]:
        raise ValueError(f"test_labels must be (M,) = ({len(test_feats)},), got {tuple(test_labels.shape)}")
    pred = knn_classify(train_feats, train_labels, test_feats, k, temperature, num_classes, chunk)
    return 100.0 * (pred == test_labels.to(pred.device)).float().mean().item()
