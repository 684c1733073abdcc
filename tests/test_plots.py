"""The figures: what each one draws (axes, titles, the pixels shown), PNG output, errors on bad input."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from vwe import plots
from vwe.patches import patchify, unpatchify

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)


def shown(ax) -> np.ndarray:
    """The pixels of the (first) image an axes shows, (H, W, 3)."""
    return np.asarray(ax.images[0].get_array())


def hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).numpy()


def test_save_writes_png_and_creates_folders(tmp_path):
    fig = plots.show_patches(torch.rand(16, 3, 8, 8))
    path = plots.save(fig, tmp_path / "a" / "b" / "patches.png")
    assert path == tmp_path / "a" / "b" / "patches.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_save_refuses_other_formats(tmp_path):
    fig = plots.show_patches(torch.rand(16, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\.png"):
        plots.save(fig, tmp_path / "patches.pdf")


def test_png_bytes_are_deterministic():
    fig = plots.show_patches(torch.rand(16, 3, 8, 8))
    first = plots.png_bytes(fig)
    assert first[:8] == PNG_SIGNATURE
    assert plots.png_bytes(fig) == first


def test_show_images_titles_pixels_and_grid(images):
    labels = torch.tensor([0, 2, 1, 2, 0])
    fig = plots.show_images(images[:5], labels, ["disk", "ring", "star"], grid=True, ncols=4)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 5  # the three empty slots of the second row are removed
    assert [ax.get_title() for ax in fig.axes] == ["disk", "star", "ring", "star", "disk"]
    np.testing.assert_allclose(shown(fig.axes[1]), hwc(images[1].float() / 255))
    ax = fig.axes[0]
    # 3 horizontal + 3 vertical grid lines between the 8-pixel patches, and the 16 patch numbers
    assert sorted({line.get_ydata()[0] for line in ax.lines if line.get_ydata()[0] == line.get_ydata()[1]}) \
        == [7.5, 15.5, 23.5]
    assert len(ax.lines) == 6
    assert sorted(int(t.get_text()) for t in ax.texts) == list(range(16))


def test_show_images_without_labels_or_grid(images):
    fig = plots.show_images(images[:3].float() / 255)
    assert [ax.get_title() for ax in fig.axes] == ["#0", "#1", "#2"]
    assert all(not ax.lines and not ax.texts for ax in fig.axes)
    fig = plots.show_images(images[:2], labels=[4, 7])
    assert [ax.get_title() for ax in fig.axes] == ["label 4", "label 7"]


@pytest.mark.parametrize("bad", [torch.rand(3, 32, 32), torch.rand(2, 1, 32, 32)])
def test_show_images_bad_shapes(bad):
    with pytest.raises(ValueError, match="shape"):
        plots.show_images(bad)


def test_show_images_bad_arguments(images):
    with pytest.raises(ValueError, match="labels has 2 entries for 3"):
        plots.show_images(images[:3], labels=[0, 1])
    with pytest.raises(ValueError, match="32x32"):
        plots.show_images(torch.rand(2, 3, 16, 16), grid=True)
    with pytest.raises(TypeError, match="uint8 or float"):
        plots.show_images(images[:2].long())
    with pytest.raises(ValueError, match="empty"):
        plots.show_images(images[:0])


def test_show_patches_shows_each_patch(images):
    p = patchify(images[:1])[0]  # (16, 3, 8, 8)
    fig = plots.show_patches(p)
    assert len(fig.axes) == 16
    assert [ax.get_title() for ax in fig.axes] == [f"patch {k}" for k in range(16)]
    for k in (0, 6, 15):
        r, c = divmod(k, 4)
        block = images[0, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8]  # patch k cut straight from the image
        np.testing.assert_allclose(shown(fig.axes[k]), hwc(block / 255))


def test_show_patches_bad_shape():
    with pytest.raises(ValueError, match=r"\(16, 3, 8, 8\)"):
        plots.show_patches(torch.rand(15, 3, 8, 8))


def test_target_kind_and_description_against_row_col():
    for k in range(16):
        r, c = divmod(k, 4)
        border = (r in (0, 3)) + (c in (0, 3))  # independent of the neighbour table
        kind = ("interior", "edge", "corner")[border]
        real = {"corner": 3, "edge": 5, "interior": 8}[kind]
        assert plots.target_kind(k) == kind
        want = f"target {k} ({kind}): {real} real neighbours, {8 - real} zero patches"
        assert plots.describe_target(k) == want
    with pytest.raises(ValueError, match="0..15"):
        plots.target_kind(16)


@pytest.mark.parametrize("target, zeros", [(0, 5), (1, 3), (5, 0), (15, 5)])
def test_show_context(images, target, zeros):
    fig = plots.show_context(images[0], target)
    assert len(fig.axes) == 2
    assert fig._suptitle.get_text() == plots.describe_target(target)
    left, right = fig.axes
    # every zero patch is drawn with a "0" in both panels; the slot labels list the context in order
    assert sum(t.get_text() == "0" for t in right.texts) == zeros
    assert sum(t.get_text() == "0" for t in left.texts) == zeros + 1  # + the number of patch 0
    slots = [t.get_text() for t in right.texts if t.get_text().startswith("slot")]
    assert len(slots) == 8 and sum(s.endswith("zero") for s in slots) == zeros
    assert len(right.images) == 8 - zeros  # one picture per real neighbour
    assert any(t.get_text() == "?" for t in right.texts)


def test_show_context_shows_the_right_neighbour(images):
    fig = plots.show_context(images[1], 5)  # interior: slot 0 is patch 0, slot 7 is patch 10
    right = fig.axes[1]
    np.testing.assert_allclose(np.asarray(right.images[0].get_array()), hwc(images[1, :, :8, :8] / 255))
    np.testing.assert_allclose(np.asarray(right.images[7].get_array()), hwc(images[1, :, 16:24, 16:24] / 255))


def test_show_context_bad_input(images):
    with pytest.raises(ValueError, match="0..15"):
        plots.show_context(images[0], 16)
    with pytest.raises(ValueError, match="0..15"):
        plots.show_context(images[0], True)
    with pytest.raises(ValueError, match=r"\(3, 32, 32\)"):
        plots.show_context(images[:1], 0)


def test_show_augmentations_rows(images):
    x = images[:4].float() / 255
    fig = plots.show_augmentations(x, [x.flip(-1), 1 - x], ["flip", "invert"])
    assert len(fig.axes) == 3 * 4
    assert [fig.axes[i * 4].get_ylabel() for i in range(3)] == ["original", "flip", "invert"]
    np.testing.assert_allclose(shown(fig.axes[4 + 2]), hwc(x[2].flip(-1)))


def test_show_augmentations_bad_input(images):
    x = images[:4].float() / 255
    with pytest.raises(ValueError, match="one title per"):
        plots.show_augmentations(x, [x], ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        plots.show_augmentations(x, [x[:3]], ["short"])


def test_plot_losses_draws_every_curve():
    a = [{"epoch": e, "train_loss": 1 / e, "test_loss": 2 / e} for e in (1, 2, 3)]
    b = [{"epoch": 1, "train_loss": 0.5, "test_loss": 0.6}]
    fig = plots.plot_losses({"context AE": a, "simple AE": b})
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax.lines}
    assert set(lines) == {"context AE train", "context AE held-out", "simple AE train", "simple AE held-out"}
    assert list(lines["context AE held-out"].get_ydata()) == [2.0, 1.0, 2 / 3]
    assert lines["context AE train"].get_linestyle() == "-"
    assert lines["context AE held-out"].get_linestyle() == "--"
    assert lines["context AE train"].get_color() == lines["context AE held-out"].get_color()
    assert lines["context AE train"].get_color() != lines["simple AE train"].get_color()


def test_plot_losses_bad_input():
    with pytest.raises(ValueError, match="empty"):
        plots.plot_losses({})
    with pytest.raises(ValueError, match="no finished epoch"):
        plots.plot_losses({"a": []})
    with pytest.raises(ValueError, match="test_loss"):
        plots.plot_losses({"a": [{"epoch": 1, "train_loss": 1.0}]})


def test_show_reconstructions_columns_and_mse():
    g = torch.Generator().manual_seed(1)
    truth, simple, context = (torch.rand(3, 3, 8, 8, generator=g) for _ in range(3))
    fig = plots.show_reconstructions(truth, simple, context, labels=["a", "b", "c"])
    assert len(fig.axes) == 9
    assert [ax.get_title() for ax in fig.axes[:3]] == ["ground truth", "simple AE", "context AE"]
    assert [fig.axes[3 * i].get_ylabel() for i in range(3)] == ["a", "b", "c"]
    for i in range(3):
        mse_s = float(((simple[i] - truth[i]) ** 2).mean())
        mse_c = float(((context[i] - truth[i]) ** 2).mean())
        assert fig.axes[3 * i + 1].get_xlabel() == f"MSE {mse_s:.4f}"
        assert fig.axes[3 * i + 2].get_xlabel() == f"MSE {mse_c:.4f}"
    np.testing.assert_allclose(shown(fig.axes[5]), hwc(context[1]))


def test_show_reconstructions_bad_shapes():
    t = torch.rand(3, 3, 8, 8)
    with pytest.raises(ValueError, match=r"simple must have shape \(3, 3, 8, 8\)"):
        plots.show_reconstructions(t, t[:2], t)
    with pytest.raises(ValueError, match="shape"):
        plots.show_reconstructions(torch.rand(3, 3, 16, 16), t, t)


def test_show_rebuilt_image(images):
    x = images[2].float() / 255
    recon = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    fig = plots.show_rebuilt_image(x, recon)
    assert len(fig.axes) == 4  # image, rebuild, error map and its colour bar
    rebuilt = unpatchify(recon.unsqueeze(0))[0]
    np.testing.assert_allclose(shown(fig.axes[1]), hwc(rebuilt))
    np.testing.assert_allclose(shown(fig.axes[2]), (rebuilt - x).abs().mean(0).numpy(), rtol=1e-6)
    assert fig._suptitle.get_text().endswith(f"MSE {float(((rebuilt - x) ** 2).mean()):.4f}")
    with pytest.raises(ValueError, match="recon_patches"):
        plots.show_rebuilt_image(x, recon[:8])


def test_show_patch_reconstruction(images):
    g = torch.Generator().manual_seed(3)
    s, c = torch.rand(16, 3, 8, 8, generator=g), torch.rand(16, 3, 8, 8, generator=g)
    fig = plots.show_patch_reconstruction(images[0], 6, s, c)
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:3]] == [
        "patch 6: ground truth", "patch 6: simple AE", "patch 6: context AE"]
    np.testing.assert_allclose(shown(fig.axes[0]), hwc(images[0, :, 8:16, 16:24] / 255))
    np.testing.assert_allclose(shown(fig.axes[2]), hwc(c[6]))
    with pytest.raises(ValueError, match="patch must be"):
        plots.show_patch_reconstruction(images[0], -1, s, c)


def test_results_bar_chart():
    rows = [
        {"method": "supervised", "ours_mean": None, "ours_std": None, "paper": 65.32},
        {"method": "random weights", "ours_mean": 12.0, "ours_std": 0.5, "paper": 7.65},
        {"method": "context AE", "ours_mean": 30.0, "ours_std": 1.0, "paper": 34.08},
    ]
    fig = plots.results_bar_chart(rows, title="shapes, smoke")
    (ax,) = fig.axes
    assert ax.get_title() == "shapes, smoke"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["supervised", "random weights", "context AE"]
    bars = [b for container in ax.containers if hasattr(container, "patches") for b in container.patches]
    widths = sorted(round(b.get_width(), 2) for b in bars)
    assert widths == [7.65, 12.0, 30.0, 34.08, 65.32]  # 2 of ours (one not run) + 3 of the paper's
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ours (mean +- std)", "paper"]


def test_results_bar_chart_bad_rows():
    with pytest.raises(ValueError, match="empty"):
        plots.results_bar_chart([])
    with pytest.raises(ValueError, match="ours_std"):
        plots.results_bar_chart([{"method": "x", "ours_mean": 1.0, "paper": 2.0}])
