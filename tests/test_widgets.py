"""The explorers driven headless: moving a control redraws the right thing, bad indices are refused."""

import matplotlib

matplotlib.use("Agg")

import re
import threading

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure

from vwe.data import make_shapes
from vwe.models import build_model
from vwe.widgets import ContextExplorer, ReconstructionExplorer
from vwe.words import kmeans, patch_embeddings
from vwe.words_widgets import WordExplorer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data():
    return make_shapes(4, 6, seed=0)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    # conv4 keeps the untrained models small; train mode on purpose: the explorer must use eval mode
    return build_model("patch", "conv4").train(), build_model("context", "conv4").train()


def test_context_explorer_follows_its_controls(data):
    ex = ContextExplorer(data.test_images, data.test_labels, data.classes)
    name0 = data.classes[int(data.test_labels[0])]
    assert ex.title == f"image 0 ({name0}) - target 5 (interior): 8 real neighbours, 0 zero patches"
    assert ex.png[:8] == PNG_SIGNATURE and ex.image_widget.value == ex.png
    assert isinstance(ex.figure, Figure) and ex.figure._suptitle.get_text() == ex.title
    assert ex.title in ex.title_html.value
    pngs = [ex.png]

    ex.image_slider.value = 3
    name3 = data.classes[int(data.test_labels[3])]
    assert ex.title == f"image 3 ({name3}) - target 5 (interior): 8 real neighbours, 0 zero patches"
    pngs.append(ex.png)
    for target, kind, real in ((0, "corner", 3), (1, "edge", 5), (5, "interior", 8)):
        ex.target_picker.value = target
        assert ex.title == (f"image 3 ({name3}) - target {target} ({kind}): "
                            f"{real} real neighbours, {8 - real} zero patches")
        assert ex.title in ex.title_html.value
        pngs.append(ex.png)
    # every move drew a new picture; back at target 5 of image 3 the same picture as before
    assert len(set(pngs[:-1])) == len(pngs) - 1
    assert pngs[-1] == pngs[1]


def test_two_threads_redraw_an_explorer_in_turn(data):
    """In JupyterLab two controls' messages can reach the kernel on two threads: the redraws they ask
    for run one after the other, and the explorer ends on the state both asked for."""
    ex = ContextExplorer(data.test_images, data.test_labels, data.classes)
    draw, inside, calls, met = ex.redraw, [], [], threading.Event()

    def redraw() -> None:
        if inside:  # a redraw starts while another is still drawing
            met.set()
        inside.append(1)
        calls.append(1)
        try:
            if len(calls) == 1:
                met.wait(timeout=2)  # the first holds on long enough for the second to come in beside it
            draw()
        finally:
            inside.pop()

    ex.redraw = redraw
    threads = [threading.Thread(target=ex.select, kwargs=kw) for kw in ({"patch": 0}, {"image": 3})]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 2
    assert not met.is_set(), "two redraws of one explorer ran at the same time"
    fresh = ContextExplorer(data.test_images, data.test_labels, data.classes, image=3, target=0)
    assert (ex.title, ex.png) == (fresh.title, fresh.png)


def explorers(data, models):
    """One of each explorer on the same images."""
    feats = patch_embeddings(None, data.test_images, kind="pixels")  # (6 * 16, 192)
    return [ContextExplorer(data.test_images), ReconstructionExplorer(data.test_images, *models),
            WordExplorer(data.test_images, feats, kmeans(feats, 3, seed=0).centroids, n=3)]


def test_the_explorers_draw_outside_pyplot(data, models):
    """A cell ending on the main thread shows and closes every figure pyplot holds: an explorer
    drawing on a comm thread meanwhile must hold none of its figures there."""
    held = []
    for ex in explorers(data, models):
        show = ex._show

        def spy(fig, title, show=show):
            held.append(fig in [plt.figure(n) for n in plt.get_fignums()])
            show(fig, title)

        ex._show = spy
        ex.select(image=2, patch=0)  # two redraws: the image, then the patch
    assert held == [False] * 6


def test_context_explorer_widget_and_display(data):
    ex = ContextExplorer(data.test_images[:2], image=1, target=0)
    assert ex.title == "image 1 - target 0 (corner): 3 real neighbours, 5 zero patches"
    assert "vwe-context-explorer" in ex.widget._dom_classes
    assert "vwe-title" in ex.title_html._dom_classes
    assert ex.image_slider.max == 1 and ex.target_picker.options[-1] == ("15", 15)
    bundle = ex._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == ex.widget.model_id


def test_context_explorer_refuses_bad_input(data):
    ex = ContextExplorer(data.test_images, data.test_labels, data.classes)
    with pytest.raises(ValueError, match=r"image must be an int in 0..5"):
        ex.select(image=6)
    with pytest.raises(ValueError, match=r"patch must be an int in 0..15"):
        ex.select(patch=16)
    with pytest.raises(ValueError, match="target must be"):
        ContextExplorer(data.test_images, target=-1)
    with pytest.raises(TypeError, match="uint8"):
        ContextExplorer(data.test_images.float())
    with pytest.raises(ValueError, match="shape"):
        ContextExplorer(data.test_images[:, :, :16])
    with pytest.raises(ValueError, match="images is empty"):
        ContextExplorer(data.test_images[:0])
    with pytest.raises(ValueError, match="labels has 5 entries for 6 images"):
        ContextExplorer(data.test_images, data.test_labels[:5])
    with pytest.raises(ValueError, match="without labels"):
        ContextExplorer(data.test_images, classes=data.classes)
    ex.select(image=2, patch=12)
    assert ex.title.startswith("image 2 (") and "target 12 (corner)" in ex.title


def reference_mse(model, images, i, k):
    """The patch's MSE computed without the explorer: eval mode, pixels sliced from the image."""
    model.eval()
    with torch.no_grad():
        out = model(images[i:i + 1].float() / 255)[0, k]  # (3, 8, 8)
    model.train()
    r, c = divmod(k, 4)
    truth = images[i, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8].float() / 255
    return float(((out - truth) ** 2).mean())


def shown_mse(title):
    m = re.search(r"MSE simple (\S+), context (\S+)$", title)
    return float(m.group(1)), float(m.group(2))


def test_reconstruction_explorer_mse_and_caching(data, models):
    simple, context = models
    calls = {"simple": 0, "context": 0}
    hooks = [m.register_forward_hook(lambda *_, n=n: calls.__setitem__(n, calls[n] + 1))
             for n, m in (("simple", simple), ("context", context))]
    try:
        ex = ReconstructionExplorer(data.test_images, simple, context, data.test_labels, data.classes)
        assert calls == {"simple": 1, "context": 1}
        assert simple.training and context.training  # the callers' modes are restored
        pngs = [ex.png]
        for i, k in ((0, 5), (0, 0), (0, 13), (2, 13), (2, 6)):
            before, image_before = dict(calls), ex.image_slider.value
            ex.select(image=i, patch=k)
            # the models run when the image changes, never for a patch change
            ran = int(i != image_before)
            assert calls == {"simple": before["simple"] + ran, "context": before["context"] + ran}
            name = data.classes[int(data.test_labels[i])]
            assert ex.title.startswith(f"image {i} ({name}) - patch {k} - MSE simple ")
            want = [reference_mse(m, data.test_images, i, k) for m in (simple, context)]
            assert ex.mse["simple"] == pytest.approx(want[0], rel=1e-5)
            assert ex.mse["context"] == pytest.approx(want[1], rel=1e-5)
            assert shown_mse(ex.title) == tuple(float(f"{w:.4g}") for w in want)
            pngs.append(ex.png)
    finally:
        for h in hooks:
            h.remove()
    assert ex.recon_image == 2 and ex.recon["context"].shape == (16, 3, 8, 8)
    assert len(set(pngs[1:])) == 5 and pngs[0] == pngs[1]  # (0, 5) is where it started
    assert ex.patch_picker is ex.target_picker
    assert "vwe-reconstruction-explorer" in ex.widget._dom_classes
    # The title is shown once: as the widget's text, not also as the figure's title.
    assert ex.title in ex.title_html.value and ex.figure._suptitle is None


def test_reconstruction_explorer_refuses_bad_input(data, models):
    simple, context = models
    ex = ReconstructionExplorer(data.test_images[:2], simple, context)
    assert ex.title.startswith("image 0 - patch 5 - MSE simple ")
    with pytest.raises(ValueError, match=r"image must be an int in 0..1"):
        ex.select(image=2)
    with pytest.raises(ValueError, match="patch must be"):
        ex.select(patch=-1)
    with pytest.raises(TypeError, match="simple_model"):
        ReconstructionExplorer(data.test_images, "patch", context)
    with pytest.raises(ValueError, match="patch must be"):
        ReconstructionExplorer(data.test_images, simple, context, patch=16)
