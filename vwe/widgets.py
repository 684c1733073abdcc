"""ipywidgets explorers for the notebooks: any image's context (notebook 02) and reconstructions
(notebook 06).

Each explorer is a plain object holding its controls (`image_slider`, `target_picker`), the last
matplotlib `figure` it drew and its `title` text, so a test can drive it without a browser: set a
control's value and the observer redraws. `widget` is the box to display; a bare explorer on a
cell's last line displays it too. The figure is shown as PNG bytes in an `ipywidgets.Image` and
the title as text in an `HTML` with the css class `vwe-title`, which a browser test can read.

A control's callback may run on the kernel's main thread or on a subshell's: JupyterLab 4 hands
comm messages to ipykernel 7's subshells, and a comm's first message, sent before its subshell
exists, to the main thread. Two redraws can therefore meet: an explorer redraws one at a time, and
draws its figures outside pyplot (`vwe.plots.figure`).
"""

from __future__ import annotations

import html
import threading
from collections.abc import Sequence

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure
from torch import nn

from vwe import plots
from vwe.checks import check_images, is_int
from vwe.data import to_float
from vwe.patches import N_PATCHES, patchify


def _check_images(images: object) -> torch.Tensor:
    check_images(images, dtype="uint8", shape=("N", 3, 32, 32), name="images",
                 fix="pass uint8 images like Dataset.test_images")
    if len(images) == 0:
        raise ValueError("images is empty; pass at least one image (N, 3, 32, 32)")
    return images.cpu()


def _check_labels(labels: object, classes: Sequence[str] | None, n: int) -> list[int] | None:
    if labels is None:
        if classes is not None:
            raise ValueError("classes were given without labels; pass the images' labels too")
        return None
    labels = [int(y) for y in labels]
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} images")
    if classes is not None and not all(0 <= y < len(classes) for y in labels):
        raise ValueError(f"labels must index classes (0..{len(classes) - 1})")
    return labels


def _patch_buttons(value: int) -> widgets.ToggleButtons:
    """16 buttons 0..15 that wrap into the 4x4 grid they stand for."""
    # 4 buttons of 44 px plus 2 px margins each side fit in 200 px, a fifth does not
    picker = widgets.ToggleButtons(
        options=[(str(k), k) for k in range(N_PATCHES)], value=value,
        style={"button_width": "44px"}, layout=widgets.Layout(width="200px"),
    )
    picker.add_class("vwe-patch-picker")
    return picker


class _Explorer:
    """What both explorers share: image slider, patch picker, title, PNG figure, error output."""

    css_class: str

    def __init__(self, images: torch.Tensor, labels: object, classes: Sequence[str] | None,
                 image: int, patch: int, patch_name: str):
        self.images = _check_images(images)
        self.labels = _check_labels(labels, classes, len(self.images))
        self.classes = list(classes) if classes is not None else None
        self._check_index(image, "image", len(self.images))
        self._check_index(patch, patch_name, N_PATCHES)
        self.image_slider = widgets.IntSlider(value=image, min=0, max=len(self.images) - 1,
                                              description="image", continuous_update=False)
        self.target_picker = _patch_buttons(patch)
        self.title = ""
        self.figure: Figure | None = None
        self.png = b""
        self.title_html = widgets.HTML()
        self.title_html.add_class("vwe-title")
        # flex-start: a flex box would stretch the picture to its width and blur the text
        self.image_widget = widgets.Image(format="png", layout=widgets.Layout(align_self="flex-start"))
        self.image_widget.add_class("vwe-figure")
        # Errors in a redraw triggered from the browser land here, visible under the figure
        # (in a kernel, Output shows and swallows them; headless they propagate to the caller).
        self.errors = widgets.Output()
        picker = widgets.VBox([widgets.Label(patch_name), self.target_picker])
        self.widget = widgets.VBox([
            widgets.HBox([self.image_slider, picker]),
            self.title_html, self.image_widget, self.errors,
        ])
        self.widget.add_class(self.css_class)
        self._drawing = threading.RLock()  # one redraw at a time, whichever thread asks

    @staticmethod
    def _check_index(value: object, what: str, n: int) -> int:
        if not is_int(value) or not 0 <= value < n:
            raise ValueError(f"{what} must be an int in 0..{n - 1}, got {value!r}")
        return int(value)  # a NumPy integer too: the sliders' traits take Python ints only

    def _watch(self) -> None:
        for control in (self.image_slider, self.target_picker):
            control.observe(self._on_change, names="value")

    def _on_change(self, change: dict) -> None:
        with self._drawing:
            self.errors.clear_output()  # an error shown earlier is stale once a redraw is asked for
            with self.errors:
                self.redraw()

    def select(self, image: int | None = None, patch: int | None = None) -> None:
        """Move the controls (which redraws), refusing indices outside the data or the grid."""
        if image is not None:
            self.image_slider.value = self._check_index(image, "image", len(self.images))
        if patch is not None:
            self.target_picker.value = self._check_index(patch, "patch", N_PATCHES)

    def image_name(self, i: int) -> str:
        """E.g. "image 3 (square)", or "image 3" without labels."""
        if self.labels is None:
            return f"image {i}"
        label = self.labels[i]
        return f"image {i} ({self.classes[label] if self.classes is not None else f'label {label}'})"

    def _show(self, fig: Figure, title: str) -> None:
        """Put `fig` (a figure outside pyplot) on screen as PNG under `title`."""
        self.title = title
        self.title_html.value = f"<b>{html.escape(title)}</b>"
        self.png = plots.png_bytes(fig)
        self.image_widget.value = self.png
        self.figure = fig

    def redraw(self) -> None:
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs) -> dict:
        return self.widget._repr_mimebundle_(**kwargs)


class ContextExplorer(_Explorer):
    """Pick an image and a target patch; see the target, its 8-slot context and the zero patches.

    images: uint8 (N, 3, 32, 32); labels (N,) and classes name each image in the title, e.g.
    "image 3 (square) - target 5 (interior): 8 real neighbours, 0 zero patches".
    """

    css_class = "vwe-context-explorer"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | Sequence[int] | None = None,
                 classes: Sequence[str] | None = None, image: int = 0, target: int = 5):
        super().__init__(images, labels, classes, image, target, "target")
        self.redraw()
        self._watch()

    def redraw(self) -> None:
        i, k = self.image_slider.value, self.target_picker.value
        title = f"{self.image_name(i)} - {plots.describe_target(k)}"
        self._show(plots.show_context(self.images[i], k, title, pyplot=False), title)


class ReconstructionExplorer(_Explorer):
    """Pick an image and a patch; see it rebuilt by the simple and the context autoencoder.

    Both models rebuild all 16 patches of an image when the image changes (eval mode, no
    gradients; each model's train/eval mode is restored afterwards), so picking another patch only
    redraws. The title gives the patch's MSE for both models, e.g.
    "image 3 (square) - patch 5 - MSE simple 0.01234, context 0.04567".
    """

    css_class = "vwe-reconstruction-explorer"

    def __init__(self, images: torch.Tensor, simple_model: nn.Module, context_model: nn.Module,
                 labels: torch.Tensor | Sequence[int] | None = None,
                 classes: Sequence[str] | None = None, image: int = 0, patch: int = 5):
        for name, model in (("simple_model", simple_model), ("context_model", context_model)):
            if not isinstance(model, nn.Module):
                raise TypeError(f"{name} must be an autoencoder (nn.Module), got {type(model).__name__}")
        super().__init__(images, labels, classes, image, patch, "patch")
        self.patch_picker = self.target_picker  # the same control under the name this explorer uses
        self.models = {"simple": simple_model, "context": context_model}
        self.recon: dict[str, torch.Tensor] = {}  # name -> (16, 3, 8, 8) for `recon_image`
        self.recon_image: int | None = None
        self.mse: dict[str, float] = {}
        self.redraw()
        self._watch()

    @torch.no_grad()
    def _reconstruct(self, i: int) -> None:
        """Rebuild every patch of image i with both models: (1, 3, 32, 32) -> (16, 3, 8, 8) each."""
        for name, model in self.models.items():
            was_training = model.training
            model.eval()  # BatchNorm with its running statistics: the image alone is no batch
            try:
                device = next(model.parameters()).device
                x = to_float(self.images[i:i + 1]).to(device)  # (1, 3, 32, 32)
                self.recon[name] = model(x)[0].float().cpu()  # (16, 3, 8, 8)
            finally:
                model.train(was_training)
        self.recon_image = i

    def redraw(self) -> None:
        i, k = self.image_slider.value, self.target_picker.value
        if self.recon_image != i:
            self._reconstruct(i)
        truth = patchify(to_float(self.images[i:i + 1]))[0, k]  # (3, 8, 8)
        self.mse = {name: float(((r[k] - truth) ** 2).mean()) for name, r in self.recon.items()}
        title = (f"{self.image_name(i)} - patch {k} - MSE simple {self.mse['simple']:.4g}, "
                 f"context {self.mse['context']:.4g}")
        # The title goes above the figure as text (`title_html`), not into the figure as well.
        fig = plots.show_patch_reconstruction(self.images[i], k, self.recon["simple"], self.recon["context"],
                                              pyplot=False)
        self._show(fig, title)
