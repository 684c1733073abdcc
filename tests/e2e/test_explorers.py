"""The explorers of notebooks 02 and 06, driven in JupyterLab like a person would.

Each test opens a smoke-profile copy of the notebook, runs all cells, moves the image slider with the
keyboard and clicks other patches, and checks after every move that the title names the new image,
class and patch (against facts written out or computed here, not by `vwe.plots`) and that the PNG on
screen changed to exactly the one the same explorer draws headless in this process for that state.
Screenshots before and after go to test-output/e2e/.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from labdriver import (
    LabServer,
    add_kernelspec,
    add_smoke_notebook,
    assert_no_errors,
    copy_package,
    image_bytes,
    open_notebook,
    run_all,
)
from playwright.sync_api import Locator, Page, expect

from vwe.config import get_config
from vwe.data import Dataset, load_dataset, to_float
from vwe.pretrain import pretrain
from vwe.widgets import ContextExplorer, ReconstructionExplorer

pytestmark = pytest.mark.e2e

N_EXPLORED = 64  # both notebooks explore data.test_images[:64]
# Known facts of the 4x4 grid (docs/design.md §3), written out rather than asked of vwe.
TARGET_FACTS = {0: "(corner): 3 real neighbours, 5 zero patches",
                1: "(edge): 5 real neighbours, 3 zero patches",
                5: "(interior): 8 real neighbours, 0 zero patches"}
FIRST_PICTURE_MS = 20_000  # running notebook 02 up to its explorer's first picture
MSE_RE = re.compile(r"MSE simple ([0-9.e+-]+), context ([0-9.e+-]+)")


@pytest.fixture(scope="module")
def smoke_data() -> Dataset:
    """What `start("smoke")` loads in the notebooks."""
    cfg = get_config("smoke")
    return load_dataset(cfg.dataset, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.data_seed)


@dataclass
class Explorer:
    """An explorer on the page, found by its top-level box's css class."""

    page: Page
    css: str
    output_dir: Path  # where screenshots and, on a failure, the PNGs compared go

    @property
    def root(self) -> Locator:
        return self.page.locator(f".{self.css}")

    @property
    def title(self) -> Locator:
        return self.root.locator(".vwe-title")

    @property
    def figure(self) -> str:
        return f".{self.css} img.vwe-figure"

    def png(self) -> bytes:
        """The PNG the figure shows now."""
        return image_bytes(self.page, self.figure)

    def screenshot(self, name: str) -> Path:
        # The new PNG may still be decoding when its bytes are there: wait until it is painted.
        self.page.evaluate("async (sel) => await document.querySelector(sel).decode()", self.figure)
        path = self.output_dir / f"{name}.png"
        self.root.screenshot(path=path)
        print(f"screenshot: {path}")
        return path


def find_explorer(page: Page, css: str, output_dir: Path) -> Explorer:
    explorer = Explorer(page, css, output_dir)
    expect(explorer.root).to_have_count(1)
    explorer.root.scroll_into_view_if_needed()
    return explorer


def image_name(data: Dataset, i: int) -> str:
    return f"image {i} ({data.classes[int(data.test_labels[i])]})"


def move_slider(explorer: Explorer, steps: int) -> None:
    """Focus the slider's handle and press the arrow key `steps` times, as a keyboard user would."""
    explorer.root.locator(".widget-slider .noUi-handle").focus()
    for _ in range(abs(steps)):
        explorer.page.keyboard.press("ArrowRight" if steps > 0 else "ArrowLeft")


def pick_patch(explorer: Explorer, k: int) -> None:
    explorer.root.locator(f".vwe-patch-picker button[data-value='{k}']").click()


def wait_for_figure(explorer: Explorer, png: bytes, what: str, timeout_ms: int,
                    before: bytes | None = None) -> None:
    """Wait until the PNG on screen is byte for byte `png` (what the explorer draws headless).

    On a timeout the screen's and the expected PNG go to test-output/e2e/, and the message says whether
    the screen still shows `before` (the update never arrived) or a third picture (it was drawn otherwise).
    """
    deadline = time.monotonic() + timeout_ms / 1000
    while (screen := explorer.png()) != png:
        if time.monotonic() > deadline:
            stem = explorer.output_dir / re.sub(r"\W+", "-", f"{explorer.css} {what}")
            stem.with_name(stem.name + "-screen.png").write_bytes(screen)
            stem.with_name(stem.name + "-expected.png").write_bytes(png)
            shows = ("the picture from before it" if screen == before
                     else f"a picture of {len(screen)} bytes, not the {len(png)} expected")
            raise AssertionError(f"after {what} the figure on screen is not the PNG the explorer "
                                 f"draws for this state: it shows {shows} ({stem}-*.png)")
        time.sleep(0.1)


def change_and_check(explorer: Explorer, action: Callable[[], None], title: re.Pattern, png: bytes,
                     what: str, timeout_ms: int) -> str:
    """Do `action`; wait until the title matches `title` and the figure becomes `png`; returns the title."""
    before = explorer.png()
    assert png != before, f"{what} should change the picture: the test drives a useless step"
    action()
    try:
        expect(explorer.title).to_have_text(title, timeout=timeout_ms)
    except AssertionError as e:
        raise AssertionError(f"after {what} the title reads {explorer.title.inner_text()!r}, "
                             f"expected /{title.pattern}/") from e
    # The kernel sends the title before the PNG: wait for the picture to follow.
    wait_for_figure(explorer, png, what, timeout_ms, before)
    assert_no_errors(explorer.page)
    return explorer.title.inner_text()


def drive_context_explorer(page: Page, data: Dataset, output_dir: Path, name: str,
                           timeout_ms: int = FIRST_PICTURE_MS) -> None:
    """Slider 0 -> 3 with the keyboard, then targets 0, 1 and 5 by clicking; each step checked, each
    given `timeout_ms` (the notebook's first picture FIRST_PICTURE_MS, whatever `timeout_ms` says).

    The PNG on screen must be byte for byte the one a headless explorer on the same images draws.
    """
    explorer = find_explorer(page, "vwe-context-explorer", output_dir)
    images, labels = data.test_images[:N_EXPLORED], data.test_labels[:N_EXPLORED]
    reference = ContextExplorer(images, labels, data.classes)  # starts at image 0, target 5

    expect(explorer.title).to_have_text(re.compile(rf"^{re.escape(image_name(data, 0))} - target 5 "))
    wait_for_figure(explorer, reference.png, "running the notebook", FIRST_PICTURE_MS)
    explorer.screenshot(f"{name}-before")
    reference.select(image=3)
    change_and_check(explorer, lambda: move_slider(explorer, 3),
                     re.compile(rf"^{re.escape(image_name(data, 3))} - target 5 \("), reference.png,
                     "moving the image slider to 3", timeout_ms)
    expect(explorer.root.locator(".widget-readout")).to_have_text("3")
    for k in (0, 1, 5):
        reference.select(patch=k)
        change_and_check(explorer, lambda k=k: pick_patch(explorer, k),
                         re.compile(rf"^{re.escape(image_name(data, 3))} - target {k} "
                                    rf"{re.escape(TARGET_FACTS[k])}$"), reference.png,
                         f"clicking target {k}", timeout_ms)
    explorer.screenshot(f"{name}-after")


def test_context_explorer_follows_slider_and_target(lab: LabServer, page: Page, smoke_data: Dataset,
                                                    output_dir: Path, tmp_path: Path) -> None:
    add_smoke_notebook(lab, "02_context", tmp_path / "run")
    open_notebook(page, lab, "02_context.ipynb")
    run_all(page)
    drive_context_explorer(page, smoke_data, output_dir, "02_context")


def test_broken_slider_callback_is_detected(lab: LabServer, page: Page, smoke_data: Dataset,
                                           output_dir: Path, tmp_path: Path) -> None:
    """The same drive against a `vwe` whose slider no longer redraws must fail on the slider step."""
    widgets_py = copy_package(tmp_path / "broken") / "widgets.py"
    source = widgets_py.read_text()
    watch = "for control in (self.image_slider, self.target_picker):"
    assert source.count(watch) == 1, f"vwe/widgets.py changed: update the sabotage of {watch!r} here"
    widgets_py.write_text(source.replace(watch, "for control in (self.target_picker,):"))
    # The same server, another kernel: the venv's python with the broken copy first on its path.
    add_kernelspec(lab, "python3-broken-vwe", {"PYTHONPATH": str(widgets_py.parent.parent)})
    add_smoke_notebook(lab, "02_context", tmp_path / "run", as_name="02_context_broken",
                       kernel="python3-broken-vwe")

    open_notebook(page, lab, "02_context_broken.ipynb")
    run_all(page)
    with pytest.raises(AssertionError, match="after moving the image slider to 3 the title reads"):
        drive_context_explorer(page, smoke_data, output_dir, "02_context-broken", timeout_ms=2_000)


@pytest.fixture(scope="module")
def smoke_models(smoke_data: Dataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Both smoke models pretrained into a run dir the way notebook 06 would (it then just reuses them)."""
    run_dir = tmp_path_factory.mktemp("runs06")
    cfg = get_config("smoke")
    models = {}
    for name, model in (("simple", "patch"), ("context", "context")):
        c = cfg.replace(model=model)
        models[name] = pretrain(c, run_dir / c.run_name, data=smoke_data, progress=False).model.eval()
    return run_dir, models


@torch.no_grad()
def patch_mse(model: torch.nn.Module, image: torch.Tensor, k: int) -> float:
    """MSE of the model's rebuild of patch k, computed without vwe.patches: (3, 32, 32) uint8 -> float."""
    x = to_float(image[None])  # (1, 3, 32, 32)
    row, col = divmod(k, 4)
    truth = x[0, :, 8 * row:8 * row + 8, 8 * col:8 * col + 8]  # (3, 8, 8)
    return float(((model(x)[0, k] - truth) ** 2).mean())


def assert_mse_shown(title: str, models: dict, image: torch.Tensor, k: int) -> None:
    found = MSE_RE.search(title)
    assert found, f"no 'MSE simple .., context ..' in the title {title!r}"
    for shown, name in zip(found.groups(), ("simple", "context"), strict=True):
        expected = patch_mse(models[name], image, k)
        # the title rounds to 4 significant digits
        assert float(shown) == pytest.approx(expected, rel=1e-3), f"{name} MSE of patch {k}: {title!r}"


def test_reconstruction_explorer_follows_slider_and_patch(
        lab: LabServer, page: Page, smoke_data: Dataset, smoke_models: tuple[Path, dict],
        output_dir: Path) -> None:
    run_dir, models = smoke_models
    add_smoke_notebook(lab, "06_reconstructions", run_dir)
    open_notebook(page, lab, "06_reconstructions.ipynb")
    run_all(page)

    explorer = find_explorer(page, "vwe-reconstruction-explorer", output_dir)
    images, labels = smoke_data.test_images[:N_EXPLORED], smoke_data.test_labels[:N_EXPLORED]
    # The same checkpoints' weights here: the PNG on screen must be the one drawn headless.
    reference = ReconstructionExplorer(images, models["simple"], models["context"], labels,
                                       smoke_data.classes)  # starts at image 0, patch 5

    expect(explorer.title).to_have_text(re.compile(rf"^{re.escape(image_name(smoke_data, 0))} - patch 5 - "))
    wait_for_figure(explorer, reference.png, "running the notebook", 30_000)
    assert_mse_shown(explorer.title.inner_text(), models, images[0], 5)
    explorer.screenshot("06_reconstructions-before")

    reference.select(image=2)
    title = change_and_check(explorer, lambda: move_slider(explorer, 2),
                             re.compile(rf"^{re.escape(image_name(smoke_data, 2))} - patch 5 - MSE"),
                             reference.png, "moving the image slider to 2", 30_000)
    assert_mse_shown(title, models, images[2], 5)
    for k in (0, 10):
        reference.select(patch=k)
        title = change_and_check(explorer, lambda k=k: pick_patch(explorer, k),
                                 re.compile(rf"^{re.escape(image_name(smoke_data, 2))} - patch {k} - MSE"),
                                 reference.png, f"clicking patch {k}", 30_000)
        assert_mse_shown(title, models, images[2], k)
    explorer.screenshot("06_reconstructions-after")
