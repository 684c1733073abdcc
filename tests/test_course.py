"""The models notebooks 05-07 study: shipped compact weights (export, sha256, fp16 round trip) and
notebook 04's runs, loaded without ever training behind the reader's back."""

import json

import pytest
import torch
from entry import resolve_and_pretrain

from vwe.config import get_config
from vwe.course import (
    MANIFEST,
    Session,
    export_shipped,
    load_models,
    load_shipped,
    shipped_manifest,
    shipped_steps,
)
from vwe.data import full_batches, make_shapes, project_dir
from vwe.evaluate import extract_features
from vwe.runs import CheckpointError

CFG = get_config("smoke", tower="conv4", n_train=64, n_test=32, batch_size=32, epochs=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = make_shapes(64, 32)
    folder = tmp_path_factory.mktemp("runs")
    return {model: resolve_and_pretrain(CFG.replace(model=model), folder / model, data=data, progress=False)
            for model in ("context", "patch")}, folder, data


def test_export_then_load_is_the_model_in_half_precision(run, tmp_path):
    runs, _, data = run
    entry = export_shipped(runs["context"].run_dir, tmp_path, data.provenance())
    assert entry["file"] == "shapes-context-conv4-aug.pt" and entry["data"]["n_train"] == 64
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["models"]["context"]["sha256"] == entry["sha256"]
    shipped = load_shipped("context", folder=tmp_path)
    assert not shipped.model.training and shipped.metrics == runs["context"].metrics
    original = runs["context"].model.state_dict()
    for name, value in shipped.model.state_dict().items():  # fp16 on disk, fp32 when loaded
        assert value.dtype == original[name].dtype
        assert torch.equal(value, original[name].half().to(value.dtype)), name
    a, b = (extract_features(m, data.test_images) for m in (shipped.model, runs["context"].model))
    assert torch.allclose(a, b, rtol=1e-2, atol=1e-2)
    assert "shapes (64 training images" in shipped.source


def test_a_damaged_shipped_file_is_refused(run, tmp_path):
    runs, _, data = run
    entry = export_shipped(runs["patch"].run_dir, tmp_path, data.provenance())
    path = tmp_path / entry["file"]
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load_shipped("patch", folder=tmp_path)
    with pytest.raises(ValueError, match="no shipped 'context' model"):
        load_shipped("context", folder=tmp_path)
    with pytest.raises(FileNotFoundError, match="no shipped checkpoints"):
        shipped_manifest(tmp_path / "nowhere")


def test_load_models_reads_runs_and_never_trains(run, tmp_path):
    runs, folder, data = run
    session = Session(CFG.replace(dataset="shapes"), torch.device("cpu"), folder, data)
    # the session's run dir holds `<run name>` folders: link the module's runs under those names
    for res in runs.values():
        (folder / res.config.run_name).symlink_to(res.run_dir)
    loaded = load_models(session)  # auto: Shapes -> notebook 04's runs
    assert set(loaded) == {"simple AE", "context AE"}
    for name, model in (("simple AE", "patch"), ("context AE", "context")):
        for (k, v), w in zip(loaded[name].model.state_dict().items(), runs[model].model.state_dict().values(),
                             strict=True):
            assert torch.equal(v, w), k
    empty = Session(CFG.replace(dataset="shapes"), torch.device("cpu"), tmp_path, data)
    with pytest.raises(FileNotFoundError, match="run notebook 04 first"):
        load_models(empty, "run")
    assert not any(tmp_path.iterdir())  # nothing was trained or written
    with pytest.raises(ValueError, match="pretrained on CIFAR-100"):
        load_models(empty, "shipped")
    with pytest.raises(ValueError, match="unknown models 'best'"):
        load_models(empty, "best")


def test_the_shipped_checkpoints_match_their_manifest():
    manifest = shipped_manifest()  # committed with the repository: its absence is a failure
    assert set(manifest["models"]) == {"context", "patch"}
    for model, entry in manifest["models"].items():
        shipped = load_shipped(model)  # checks the sha256, loads with weights_only=True
        assert shipped.config.model == model and shipped.config.dataset == "cifar100"
        cfg, n_train = shipped.config, entry["data"]["n_train"]
        # every image its config asked for: the first n_train, or all of CIFAR-100's 50 000 training
        # images outside the validation split
        assert entry["data"]["archive_md5"] and n_train == (cfg.n_train or 50_000 - cfg.validation)
        # it trained as far as its config asked: a step count, else whole epochs
        assert shipped_steps(entry) == (cfg.steps or cfg.epochs * full_batches(n_train, cfg.batch_size))


def test_the_shipped_table_measured_the_shipped_weights():
    """The README's results (docs/results/shipped-cifar100.json) belong to the models a user gets: the
    weights the table measured are the ones checkpoints/manifest.json ships, file for file."""
    measured = json.loads((project_dir() / "docs" / "results" / "shipped-cifar100.json").read_text())
    shipped = {model: entry["sha256"] for model, entry in shipped_manifest()["models"].items()}
    assert measured["header"].get("weights") == shipped, (
        "docs/results/shipped-cifar100.json measured other weights than checkpoints/manifest.json ships: "
        "measure the shipped models again (scripts/shipped_table.py) and copy its results.json there")
