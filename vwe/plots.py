"""The course's figures: images on the patch grid, contexts (paper Figure 1), augmentations, loss
curves, reconstructions (paper Figure 5) and the results bar chart.

Every function takes tensors (uint8 in [0, 255] or float in [0, 1]; CPU or GPU), returns the
matplotlib Figure and never calls `plt.show()`: in a notebook the inline backend shows the figure
when the cell ends, and `save` writes it as a PNG. Figures are made with pyplot so that they show
up by themselves in notebooks, except where the explorers' views are asked for with `pyplot=False`
(see `figure`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.patheffects as pe
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vwe.checks import is_int
from vwe.models import MODEL_LABELS
from vwe.patches import GRID, N_PATCHES, OFFSETS, PATCH, neighbour_table, unpatchify

DPI = 120  # saved and rendered figures
IMAGE = GRID * PATCH  # 32 pixels per image side
# One outline colour per role, the same in every figure.
TARGET_COLOUR = "red"
CONTEXT_COLOUR = "gold"
# Readable white text on any background.
_OUTLINE = [pe.withStroke(linewidth=2, foreground="black")]


# ----------------------------------------------------------------------------- inputs and output


def figure(figsize: tuple[float, float], pyplot: bool = True, **kwargs) -> Figure:
    """A new figure of `figsize` inches (kwargs: `Figure`'s, e.g. layout="constrained").

    pyplot=True: pyplot holds it, so a notebook shows it when the cell ends. pyplot=False: nothing
    else holds it, which is what the explorers draw: their callbacks run on the kernel's comm
    threads, possibly beside a cell, and pyplot's list of figures is shared and not thread-safe
    (the end of a cell shows and closes every figure on it).
    """
    return plt.figure(figsize=figsize, **kwargs) if pyplot else Figure(figsize=figsize, **kwargs)


def _as_tensor(x: object, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x.detach().cpu()


def float_pixels(x: object, what: str, shape: tuple[int | None, ...]) -> torch.Tensor:
    """Images as float [0, 1] on the CPU, checked against `shape` (None: any size there)."""
    x = _as_tensor(x, what)
    if x.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, x.shape, strict=True)):
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{what} must have shape {want}, got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float() / 255
    if not x.is_floating_point():
        raise TypeError(f"{what} must be uint8 or float in [0, 1], got {x.dtype}")
    return x.float().clamp(0, 1)


def _hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float -> (H, W, 3) numpy, what `imshow` wants."""
    return image.permute(1, 2, 0).numpy()


def _check_patch_index(k: object, what: str = "target") -> int:
    if not is_int(k) or not 0 <= k < N_PATCHES:
        raise ValueError(f"{what} must be a patch index in 0..{N_PATCHES - 1}, got {k!r}")
    return int(k)


def save(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG at `path` (parents created); returns the path. Closes nothing."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save writes PNG files; give a path ending in .png, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return path


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes: the same figure always gives the same bytes (no timestamp)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _bare(ax: plt.Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _outline(ax: plt.Axes, k: int, colour: str, width: float = 2.5, grow: int = 0) -> None:
    """Box around patch k, `grow` patches wider on every side (1: its 3x3 context)."""
    r, c = divmod(k, GRID)
    x0, y0 = (c - grow) * PATCH - 0.5, (r - grow) * PATCH - 0.5
    size = (2 * grow + 1) * PATCH
    rim = [pe.withStroke(linewidth=width + 1.5, foreground="black")]  # visible on an image of its colour
    ax.add_patch(Rectangle((x0, y0), size, size, fill=False, edgecolor=colour, linewidth=width,
                           clip_on=False, path_effects=rim))


def _draw_grid(ax: plt.Axes, numbers: bool) -> None:
    # Pixel i covers [i - 0.5, i + 0.5] in imshow's coordinates: lines sit between pixels 7 and 8, ...
    for i in range(1, GRID):
        ax.axhline(i * PATCH - 0.5, color="white", linewidth=0.8, alpha=0.9)
        ax.axvline(i * PATCH - 0.5, color="white", linewidth=0.8, alpha=0.9)
    if numbers:
        for k in range(N_PATCHES):
            r, c = divmod(k, GRID)
            # in the patch's top-left corner, to hide as little of it as possible
            ax.text(c * PATCH + 0.2, r * PATCH + 0.1, str(k), color="white", fontsize=5.5,
                    ha="left", va="top", path_effects=_OUTLINE)


# ----------------------------------------------------------------------------- images and patches


def show_images(images: torch.Tensor, labels: torch.Tensor | Sequence[int] | None = None,
                classes: Sequence[str] | None = None, grid: bool = False, ncols: int = 8) -> Figure:
    """A grid of images (n, 3, H, W), titled by class name (or label, or index).

    grid=True draws the 4x4 patch grid on 32x32 images (lines every 8 pixels) and numbers the
    patches 0..15 in row-major order.
    """
    x = float_pixels(images, "images", (None, 3, None, None))
    n = len(x)
    if n == 0:
        raise ValueError("images is empty; pass at least one image")
    if grid and x.shape[-2:] != (IMAGE, IMAGE):
        raise ValueError(f"grid=True needs 32x32 images, got {tuple(x.shape[-2:])}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} images")
    if not is_int(ncols) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.5 * ncols, 1.7 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.remove()  # the empty slots of the last row
            continue
        ax.imshow(_hwc(x[i]), interpolation="nearest")
        _bare(ax)
        if labels is None:
            title = f"#{i}"
        else:
            label = int(labels[i])
            title = classes[label] if classes is not None else f"label {label}"
        ax.set_title(title, fontsize=8)
        if grid:
            _draw_grid(ax, numbers=True)
    fig.tight_layout()
    return fig


def show_patches(patches: torch.Tensor) -> Figure:
    """The 16 patches (16, 3, 8, 8) of one image laid out apart: patchify made visible."""
    p = float_pixels(patches, "patches", (N_PATCHES, 3, PATCH, PATCH))
    fig, axes = plt.subplots(GRID, GRID, figsize=(4, 4.4))
    for k, ax in enumerate(axes.flat):
        ax.imshow(_hwc(p[k]), interpolation="nearest")
        _bare(ax)
        ax.set_title(f"patch {k}", fontsize=8)
    fig.suptitle("patchify: (3, 32, 32) -> (16, 3, 8, 8)", fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- contexts (Figure 1)


def target_kind(k: int) -> str:
    """"corner", "edge" or "interior" for patch k of the 4x4 grid."""
    k = _check_patch_index(k)
    real = int((neighbour_table()[k] >= 0).sum())
    return {3: "corner", 5: "edge", 8: "interior"}[real]


def describe_target(k: int) -> str:
    """E.g. "target 0 (corner): 3 real neighbours, 5 zero patches"."""
    k = _check_patch_index(k)
    real = int((neighbour_table()[k] >= 0).sum())
    return f"target {k} ({target_kind(k)}): {real} real neighbours, {len(OFFSETS) - real} zero patches"


def _zero_patch(ax: plt.Axes, x0: float, y0: float) -> None:
    """A black, hatched square with a "0": a neighbour outside the grid."""
    ax.add_patch(Rectangle((x0, y0), PATCH, PATCH, facecolor="black", edgecolor="0.55",
                           hatch="///", linewidth=0.8, clip_on=False))
    ax.text(x0 + PATCH / 2, y0 + PATCH / 2, "0", color="white", fontsize=11, fontweight="bold",
            ha="center", va="center", path_effects=_OUTLINE)


def show_context(image: torch.Tensor, target: int, title: str | None = None, pyplot: bool = True) -> Figure:
    """The paper's Figure 1 for one image (3, 32, 32) and one target patch 0..15.

    Left: the image with the target outlined in red and its 3x3 context in gold; neighbours that
    fall outside the image are drawn as zero patches. Right: the eight context slots in their fixed
    order (what the encoder sees), zero patches black with a "0", the target's own slot a "?".
    The title defaults to `describe_target(target)`. pyplot: see `figure`.
    """
    x = float_pixels(image, "image", (3, IMAGE, IMAGE))
    k = _check_patch_index(target)
    row = neighbour_table()[k].tolist()
    r, c = divmod(k, GRID)
    fig = figure((8, 4.2), pyplot)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1]})

    left.imshow(_hwc(x), interpolation="nearest")
    _draw_grid(left, numbers=True)
    for (dr, dc), m in zip(OFFSETS, row, strict=True):
        if m < 0:  # outside the grid: the zero patch stands where the neighbour would be
            _zero_patch(left, (c + dc) * PATCH - 0.5, (r + dr) * PATCH - 0.5)
    _outline(left, k, CONTEXT_COLOUR, grow=1)
    _outline(left, k, TARGET_COLOUR)
    # one patch of margin on every side, so zero patches outside the image are visible
    left.set_xlim(-PATCH - 1, IMAGE + PATCH)
    left.set_ylim(IMAGE + PATCH, -PATCH - 1)
    left.axis("off")
    left.set_title("target (red) and its context (gold)", fontsize=9)

    gap = 3  # between slots, in pixels of the patches
    step = PATCH + gap
    patches = x.reshape(3, GRID, PATCH, GRID, PATCH).permute(1, 3, 0, 2, 4)  # (row, col, 3, 8, 8)
    for j, ((dr, dc), m) in enumerate(zip(OFFSETS, row, strict=True)):
        x0, y0 = (dc + 1) * step, (dr + 1) * step
        if m < 0:
            _zero_patch(right, x0, y0)
            name = "zero"
        else:
            right.imshow(_hwc(patches[divmod(m, GRID)]), extent=(x0, x0 + PATCH, y0 + PATCH, y0),
                         interpolation="nearest")
            right.add_patch(Rectangle((x0, y0), PATCH, PATCH, fill=False, edgecolor=CONTEXT_COLOUR,
                                      linewidth=1.5))
            name = f"patch {m}"
        right.text(x0 + PATCH / 2, y0 + PATCH + 0.4, f"slot {j}: {name}", fontsize=7,
                   ha="center", va="top")
    mid = step  # the centre slot
    right.add_patch(Rectangle((mid, mid), PATCH, PATCH, facecolor="0.85", edgecolor=TARGET_COLOUR,
                              linewidth=2))
    right.text(mid + PATCH / 2, mid + PATCH / 2, "?", fontsize=20, ha="center", va="center",
               color=TARGET_COLOUR)
    right.text(mid + PATCH / 2, mid + PATCH + 0.4, f"target {k}", fontsize=7, ha="center", va="top",
               color=TARGET_COLOUR)
    right.set_xlim(-1, 3 * step)
    right.set_ylim(3 * step + 0.5, -1)
    right.set_aspect("equal")
    right.axis("off")
    right.set_title("context slots in fixed order (the encoder's input)", fontsize=9)

    fig.suptitle(describe_target(k) if title is None else title, fontsize=11)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- augmentations, losses


def show_augmentations(images: torch.Tensor, augmented_list: Sequence[torch.Tensor],
                       titles: Sequence[str]) -> Figure:
    """Before/after: the originals (n, 3, H, W) in the first row, then one row per augmentation.

    `augmented_list[i]` has the originals' shape and is labelled `titles[i]`.
    """
    x = float_pixels(images, "images", (None, 3, None, None))
    if len(augmented_list) == 0 or len(augmented_list) != len(titles):
        raise ValueError(f"need one title per augmented batch and at least one batch, got "
                         f"{len(augmented_list)} batches and {len(titles)} titles")
    rows = [x] + [float_pixels(a, f"augmented_list[{i}]", tuple(x.shape))
                  for i, a in enumerate(augmented_list)]
    names = ["original", *titles]
    n = len(x)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 0.6, 1.35 * len(rows)), squeeze=False)
    for i, (batch, name) in enumerate(zip(rows, names, strict=True)):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(_hwc(batch[j]), interpolation="nearest")
            _bare(ax)
            if j == 0:
                ax.set_ylabel(name, fontsize=9, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def plot_losses(metrics_by_name: Mapping[str, Sequence[Mapping[str, float]]]) -> Figure:
    """Train (solid) and held-out (dashed) reconstruction loss per epoch, one colour per model.

    `metrics_by_name` maps a model's name to its metrics log (`PretrainResult.metrics`: dicts with
    epoch, train_loss, test_loss). The y axis is logarithmic.
    """
    if not metrics_by_name:
        raise ValueError("metrics_by_name is empty; pass {name: metrics list} for at least one model")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, metrics) in enumerate(metrics_by_name.items()):
        if not metrics:
            raise ValueError(f"the metrics of {name!r} are empty: that model has no finished epoch")
        missing = {"epoch", "train_loss", "test_loss"} - set(metrics[0])
        if missing:
            raise ValueError(f"the metrics of {name!r} lack {sorted(missing)}; "
                             "pass PretrainResult.metrics (dicts with epoch, train_loss, test_loss)")
        epochs = [m["epoch"] for m in metrics]
        colour = colours[i % len(colours)]
        ax.plot(epochs, [m["train_loss"] for m in metrics], "-o", color=colour, markersize=4,
                label=f"{name} train")
        ax.plot(epochs, [m["test_loss"] for m in metrics], "--s", color=colour, markersize=4,
                label=f"{name} held-out")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("reconstruction MSE")
    ax.set_title("pretraining loss: train (solid) and held-out (dashed)", fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- reconstructions (Figure 5)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


def show_reconstructions(truth: torch.Tensor, simple: torch.Tensor, context: torch.Tensor,
                         labels: Sequence[str] | None = None) -> Figure:
    """The paper's Figure 5: one row per patch, columns ground truth | simple AE | context AE.

    Each input is (n, 3, 8, 8); patches are upscaled nearest, and every reconstruction carries
    its MSE against the ground truth. `labels` (n strings) names the rows, e.g. "image 3, patch 5".
    """
    t = float_pixels(truth, "truth", (None, 3, PATCH, PATCH))
    n = len(t)
    if n == 0:
        raise ValueError("truth is empty; pass at least one patch")
    s = float_pixels(simple, "simple", (n, 3, PATCH, PATCH))
    c = float_pixels(context, "context", (n, 3, PATCH, PATCH))
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} patches")
    fig, axes = plt.subplots(n, 3, figsize=(5, 1.55 * n + 0.4), squeeze=False)
    for i in range(n):
        for j, (column, name) in enumerate(((t, "ground truth"), (s, "simple AE"), (c, "context AE"))):
            ax = axes[i, j]
            ax.imshow(_hwc(column[i]), interpolation="nearest")
            _bare(ax)
            if i == 0:
                ax.set_title(name, fontsize=10)
            if j > 0:
                ax.set_xlabel(f"MSE {_mse(column[i], t[i]):.4f}", fontsize=7, labelpad=2)
            elif labels is not None:
                ax.set_ylabel(labels[i], fontsize=7)
    fig.tight_layout()
    return fig


def show_rebuilt_image(image: torch.Tensor, recon_patches: torch.Tensor, name: str = "context AE") -> Figure:
    """An image (3, 32, 32) next to its patch-by-patch rebuild (16, 3, 8, 8) and the error map.

    The error map is the absolute error averaged over the three channels.
    """
    x = float_pixels(image, "image", (3, IMAGE, IMAGE))
    p = float_pixels(recon_patches, "recon_patches", (N_PATCHES, 3, PATCH, PATCH))
    rebuilt = unpatchify(p.unsqueeze(0))[0]  # (3, 32, 32)
    error = (rebuilt - x).abs().mean(0)  # (32, 32)
    fig, axes = plt.subplots(1, 3, figsize=(8.4, 3.2))
    axes[0].imshow(_hwc(x), interpolation="nearest")
    axes[0].set_title("image", fontsize=10)
    axes[1].imshow(_hwc(rebuilt), interpolation="nearest")
    axes[1].set_title(f"rebuilt by the {name}", fontsize=10)
    shown = axes[2].imshow(error.numpy(), cmap="magma", vmin=0, vmax=max(float(error.max()), 1e-6),
                           interpolation="nearest")
    axes[2].set_title("|error|, mean over RGB", fontsize=10)
    fig.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes[:2]:
        _draw_grid(ax, numbers=False)
    for ax in axes:
        _bare(ax)
    fig.suptitle(f"every patch rebuilt by the {name}: MSE {_mse(rebuilt, x):.4f}", fontsize=11)
    fig.tight_layout()
    return fig


def show_patch_reconstruction(image: torch.Tensor, patch: int, simple: torch.Tensor,
                              context: torch.Tensor, title: str | None = None, pyplot: bool = True) -> Figure:
    """One patch and the whole image, rebuilt by both models (the reconstruction explorer's view).

    image (3, 32, 32); simple and context (16, 3, 8, 8) are every patch of it, rebuilt. Top row:
    the chosen patch, ground truth | simple AE | context AE; bottom row: the whole image and both
    rebuilds, the chosen patch outlined. `title`, if given, goes above it all. pyplot: see `figure`.
    """
    x = float_pixels(image, "image", (3, IMAGE, IMAGE))
    k = _check_patch_index(patch, "patch")
    s = float_pixels(simple, "simple", (N_PATCHES, 3, PATCH, PATCH))
    c = float_pixels(context, "context", (N_PATCHES, 3, PATCH, PATCH))
    r, col = divmod(k, GRID)
    truth = x[:, r * PATCH:(r + 1) * PATCH, col * PATCH:(col + 1) * PATCH]  # (3, 8, 8)
    # constrained layout: tight_layout lets the top row's labels run into the suptitle and row 2
    fig = figure((7.2, 5.6), pyplot, layout="constrained")
    axes = fig.subplots(2, 3)
    for j, (p, name) in enumerate(((truth, "ground truth"), (s[k], "simple AE"), (c[k], "context AE"))):
        axes[0, j].imshow(_hwc(p), interpolation="nearest")
        axes[0, j].set_title(f"patch {k}: {name}", fontsize=9)
        if j > 0:
            axes[0, j].set_xlabel(f"MSE {_mse(p, truth):.4g}", fontsize=8)
    wholes = (x, unpatchify(s.unsqueeze(0))[0], unpatchify(c.unsqueeze(0))[0])  # (3, 32, 32) each
    names = ("image", "simple AE rebuild", "context AE rebuild")
    for j, (whole, name) in enumerate(zip(wholes, names, strict=True)):
        axes[1, j].imshow(_hwc(whole), interpolation="nearest")
        _draw_grid(axes[1, j], numbers=False)
        _outline(axes[1, j], k, TARGET_COLOUR, width=2.5)
        axes[1, j].set_title(name, fontsize=9)
        if j > 0:
            axes[1, j].set_xlabel(f"image MSE {_mse(whole, x):.4g}", fontsize=8)
    for ax in axes.flat:
        _bare(ax)
    if title is not None:
        fig.suptitle(title, fontsize=11)
    return fig


# ----------------------------------------------------------------------------- results


def results_bar_chart(rows: Sequence[Mapping[str, object]], title: str | None = None) -> Figure:
    """Linear-evaluation accuracy, ours beside the paper's, one pair of horizontal bars per method.

    rows: dicts with keys `method` (str), `ours_mean` (top-1 % or None when not run), `ours_std`
    (or None) and `paper` (the published top-1 %, or None). Ours are solid with +-std error bars,
    the paper's lighter and hatched; methods are listed top to bottom in the given order.
    """
    if not rows:
        raise ValueError("rows is empty; pass one dict per method")
    for row in rows:
        missing = {"method", "ours_mean", "ours_std", "paper"} - set(row)
        if missing:
            raise ValueError(f"row {row!r} lacks {sorted(missing)}; each row needs method, "
                             "ours_mean, ours_std and paper (None where there is no number)")
    n = len(rows)
    fig, ax = plt.subplots(figsize=(7, 0.55 * n + 1.4))
    height = 0.38
    legend_names = {"ours": "ours (mean +- std)", "paper": "paper"}
    legend = dict(legend_names)  # popped once used: one legend entry each
    for i, row in enumerate(rows):
        ours, std, paper = row["ours_mean"], row["ours_std"] or 0.0, row["paper"]
        if ours is not None:
            ax.barh(i - height / 2, ours, height, xerr=std, color="tab:blue", capsize=3,
                    label=legend.pop("ours", None))
            ax.text(ours + std + 0.5, i - height / 2, f"{ours:.2f}", va="center", fontsize=7)
        if paper is not None:
            ax.barh(i + height / 2, paper, height, color="tab:orange", alpha=0.45, hatch="//",
                    edgecolor="tab:orange", label=legend.pop("paper", None))
            ax.text(paper + 0.5, i + height / 2, f"{paper:.2f}", va="center", fontsize=7)
    ax.set_yticks(np.arange(n), [str(row["method"]) for row in rows], fontsize=8)
    ax.invert_yaxis()  # first row on top, like the table
    ax.set_xlabel("top-1 accuracy (%), linear evaluation")
    ax.set_xlim(0, max(100.0, *(float(r["ours_mean"] or 0) for r in rows)) * 1.02)
    ax.grid(True, axis="x", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda i: names[i] != legend_names["ours"])  # ours first
    ax.legend([handles[i] for i in order], [names[i] for i in order], fontsize=8, loc="lower right")
    ax.set_title(title or "ours vs the paper (Table 1)", fontsize=10)
    fig.tight_layout()
    return fig



# ----------------------------------------------------------------------------- the scale curve

_MODEL_STYLE = {"context": ("tab:red", MODEL_LABELS["context"]), "patch": ("tab:blue", MODEL_LABELS["patch"])}
_PROFILE_MARKER = {"author": ("o", "-"), "cpu": ("s", "--")}
CURVE_PROBES = {"author": "author's evaluation (tower 1 024-d, raw, 10 ep)",
                "standard": "standardised probe (tower 1 024-d, 30 ep)"}


def plot_scale_curve(points: Sequence[Mapping[str, object]],
                     paper: Mapping[str, float] | None = None) -> Figure:
    """Validation accuracy against pretraining compute, one panel per probe, one line per run (recipe,
    model, pretraining images): the points that `scripts/scale_curve.py` writes (x: (context, target)
    pairs trained on, log scale, reaching to the author's compute; error bars: the probe seeds' std).
    The runs pretrained on the most images are extrapolated to the author's compute along their last
    doublings' slope (dotted, `vwe.curve.trend`), where `paper`'s figures stand, by model (stars: test
    split, on the author's evaluation only; `vwe.table.PAPER_BY_MODEL`)."""
    from vwe import curve

    if not points:
        raise ValueError("no points to plot: run scripts/scale_curve.py first")
    fig, axes = plt.subplots(1, len(CURVE_PROBES), figsize=(12, 4.5), sharex=True, dpi=DPI)
    runs = curve.series(points)
    extrapolated = curve.trended(runs)
    for ax, (probe, title) in zip(axes, CURVE_PROBES.items(), strict=True):
        for s in runs:
            colour, name = _MODEL_STYLE.get(s.model, ("tab:grey", s.model))
            marker, line = _PROFILE_MARKER.get(s.profile, ("^", ":"))
            faint = s not in extrapolated  # the shorter runs, kept as what they are
            ax.errorbar([p["pairs"] for p in s.points], [p[probe]["mean"] for p in s.points],
                        yerr=[p[probe]["std"] for p in s.points], color=colour, marker=marker,
                        linestyle=line, capsize=3, alpha=0.45 if faint else 1.0, markersize=4 if faint else 6,
                        label=f"{name}, {s.label}")
            if not faint:
                t = curve.trend(s, probe)
                ax.plot([t.last_pairs, curve.AUTHOR_PAIRS], [t.last_mean, t.at_author], color=colour,
                        linestyle=":", linewidth=1.2)
                ax.annotate(f"extrapolated: {t.slope:+.2f} points per doubling",
                            (curve.AUTHOR_PAIRS, t.at_author), xytext=(-6, 0), textcoords="offset points",
                            ha="right", va="center", fontsize=7, color=colour)
        if probe == "author":
            for model, acc in (paper or {}).items():
                colour, name = _MODEL_STYLE.get(model, ("tab:grey", model))
                ax.plot([curve.AUTHOR_PAIRS], [acc], marker="*", markersize=13, color=colour,
                        markeredgecolor="black", linestyle="none", label=f"paper, {name} (test split)")
        ax.axvline(curve.AUTHOR_PAIRS, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xscale("log")
        ax.set_xlim(right=curve.AUTHOR_PAIRS * 2)
        ax.set_xlabel("pretraining compute: (context, target) pairs trained on (dashed: the author's)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation top-1 (%)")
    fig.tight_layout()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2,
               fontsize=7, frameon=False)  # below the panels, clear of the curves and their labels
    return fig
