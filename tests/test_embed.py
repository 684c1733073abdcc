"""`vwe embed`: the file's embeddings are the model's `image_embedding` (and tower outputs per patch) of
the same images, in both formats; and the command line end to end on a folder of your own images."""

from __future__ import annotations

import json
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from entry import resolve_and_pretrain
from torchvision.io import write_png

from vwe.__main__ import main
from vwe.config import get_config
from vwe.data import make_shapes, to_float
from vwe.data.folder import SKIP_BAD_ENV
from vwe.embed import embed_to_file, load_embeddings, load_images
from vwe.patches import patchify
from vwe.pretrain import load_pretrained

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")
SHAPES = make_shapes(64, 32, seed=0)  # what load_dataset("shapes") gives the smoke config below


@pytest.fixture(scope="module", params=["context", "patch"])
def run(request, tmp_path_factory):
    """A one-epoch Conv4 run of each model on Shapes: (run dir, model)."""
    cfg = get_config("smoke", model=request.param, tower="conv4", n_train=64, n_test=32, batch_size=32)
    run_dir = tmp_path_factory.mktemp(request.param)
    res = resolve_and_pretrain(cfg, run_dir, data=SHAPES, progress=False)
    return run_dir, res.model


def reference(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """image_embedding (N, E) and the tower on each patch (N, 16, 64), computed here directly."""
    model.eval()
    with torch.no_grad():
        x = to_float(images)
        return model.image_embedding(x), model.tower(patchify(x).flatten(0, 1)).view(len(x), 16, -1)


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_embed_round_trip_equals_image_embedding(run, tmp_path, suffix):
    run_dir, model = run
    out = tmp_path / f"emb{suffix}"
    result, files = embed_to_file(run_dir, "shapes", out, patches=True, split="test", device="cpu",
                                  progress=False)
    back = load_embeddings(out)
    emb, patches = reference(model, SHAPES.test_images)
    dim = {"context": 8192, "patch": 1024}[load_pretrained(run_dir, "cpu")[1].model]
    assert back["embeddings"].shape == (32, dim) and back["embeddings"].dtype == torch.float32
    torch.testing.assert_close(back["embeddings"], emb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(back["patch_embeddings"], patches, rtol=1e-5, atol=1e-6)
    assert torch.equal(back["labels"], SHAPES.test_labels) and back["classes"] == SHAPES.classes
    assert back["meta"]["source"]["dataset"] == "shapes" and back["meta"]["source"]["n_test"] == 32
    assert "files" not in back  # Shapes images have no file names
    if suffix == ".npy":
        assert [f.name for f in files] == ["emb.npy", "emb.patches.npy", "emb.json"]
        assert np.load(out).shape == (32, dim)
        assert json.loads((tmp_path / "emb.json").read_text())["labels"] == SHAPES.test_labels.tolist()


def test_a_folder_of_files_gives_file_names_and_no_labels(run, tmp_path):
    run_dir, model = run
    (tmp_path / "pics").mkdir()
    for i in range(3):
        write_png(SHAPES.train_images[i], str(tmp_path / "pics" / f"p{i}.png"))
    result, _ = embed_to_file(run_dir, str(tmp_path / "pics"), tmp_path / "e.pt", device="cpu",
                              progress=False)
    assert result["files"] == ["p0.png", "p1.png", "p2.png"] and "labels" not in result
    torch.testing.assert_close(result["embeddings"], reference(model, SHAPES.train_images[:3])[0],
                               rtol=1e-5, atol=1e-6)
    assert "patch_embeddings" not in load_embeddings(tmp_path / "e.pt")
    with pytest.raises(ValueError, match="suffix"):
        embed_to_file(run_dir, "shapes", tmp_path / "e.csv")
    (tmp_path / "pics" / "x.txt").write_text("no")
    with pytest.raises(ValueError, match="x.txt"):
        load_images(str(tmp_path / "pics"), progress=False)
    assert len(load_images(str(tmp_path / "pics"), skip_bad=True, progress=False).images) == 3


def test_cli_pretrain_then_embed_on_a_folder_of_your_own(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VWE_DATA_DIR", str(tmp_path / "data"))  # the folder's cache goes there, not in data/
    gen = torch.Generator().manual_seed(0)
    for c, name in enumerate(("bright", "dark", "stripes")):
        for i in range(30):  # 40x48 images: the loader resizes and crops them to 32x32
            img = torch.randint(0, 80, (3, 40, 48), generator=gen, dtype=torch.uint8) + 80 * c
            (tmp_path / "imgs" / name).mkdir(parents=True, exist_ok=True)
            write_png(img.to(torch.uint8), str(tmp_path / "imgs" / name / f"{i:02d}.png"))
    dataset, run = f"folder:{tmp_path / 'imgs'}", tmp_path / "run"
    main(["pretrain", "--profile", "smoke", "--dataset", dataset, "--tower", "conv4", "--run-dir", str(run),
          "--no-progress"])
    printed = capsys.readouterr().out
    assert f"dataset folder:{(tmp_path / 'imgs').resolve()}" in printed
    model, cfg, _ = load_pretrained(run, "cpu")
    assert cfg.dataset == f"folder:{(tmp_path / 'imgs').resolve()}"
    out = tmp_path / "emb.npy"
    main(["embed", "--checkpoint", str(run), "--images", dataset, "--out", str(out), "--patches",
          "--no-progress"])
    assert "wrote" in capsys.readouterr().out
    assert len(list((tmp_path / "data" / "folders").glob("*.pt"))) == 1  # decoded once, cached once
    back = load_embeddings(out)
    assert back["embeddings"].shape == (90, 8192) and back["patch_embeddings"].shape == (90, 16, 64)
    assert len(back["files"]) == 90 and back["classes"] == ["bright", "dark", "stripes"]
    assert [f.split("/")[0] for f in back["files"]] == [back["classes"][y] for y in back["labels"]]
    assert back["meta"]["source"]["content_sha256"] and back["meta"]["trained_on"] == cfg.dataset


@pytest.mark.parametrize("as_dataset", [True, False], ids=["folder-dataset", "plain-folder"])
def test_an_explicit_skip_bad_false_wins_over_the_environment(tmp_path, monkeypatch, as_dataset):
    """$VWE_SKIP_BAD_IMAGES is the default of `skip_bad` (None), never an override of an explicit False,
    for a folder dataset as for a plain folder."""
    monkeypatch.setenv("VWE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv(SKIP_BAD_ENV, "1")
    gen = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        for i in range(4):
            (tmp_path / "imgs" / name).mkdir(parents=True, exist_ok=True)
            write_png(torch.randint(0, 256, (3, 32, 32), generator=gen, dtype=torch.uint8),
                      str(tmp_path / "imgs" / name / f"{i}.png"))
    (tmp_path / "imgs" / "a" / "notes.txt").write_text("not an image")
    source = f"folder:{tmp_path / 'imgs'}" if as_dataset else str(tmp_path / "imgs")
    with pytest.raises(ValueError, match="a/notes.txt"):
        load_images(source, skip_bad=False, progress=False)
    with pytest.warns(UserWarning, match="skipped 1 file") if as_dataset else nullcontext():
        images = load_images(source, progress=False)  # None: the environment's default, skip
    assert len(images.images) == 8
