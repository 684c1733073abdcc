"""`scripts/ship_checkpoints.py --weights`: a compute-curve point's compact weights become the shipped
models byte for byte, with their manifest entries, and `load_shipped` loads them; a file that is not
the one its manifest names is refused and nothing is copied."""

from __future__ import annotations

import json

import pytest
import torch
from source_file import load

from vwe.config import get_config
from vwe.course import export_shipped, load_shipped, shipped_manifest
from vwe.data.shapes import make_shapes
from vwe.pretrain import MANIFEST, pretrain

CFG = get_config("smoke", tower="conv4", n_train=64, n_test=32, batch_size=16, epochs=1, device="cpu")


def test_curve_weights_ship_as_they_are_beside_the_other_model(tmp_path):
    ship = load("scripts/ship_checkpoints.py")
    data = make_shapes(64, 32, seed=CFG.data_seed)
    out = tmp_path / "checkpoints"
    simple = pretrain(CFG.replace(model="patch"), tmp_path / "simple", data, progress=False)
    export_shipped(simple.run_dir, out, data.provenance())  # the simple model shipped before
    context = pretrain(CFG.replace(model="context", steps=3), tmp_path / "context", data, progress=False)
    curve = tmp_path / "curve"
    source = export_shipped(context.run_dir, curve, data.provenance())

    ship.copy_weights(curve, out)
    assert (out / source["file"]).read_bytes() == (curve / source["file"]).read_bytes()
    models = shipped_manifest(out)["models"]
    assert models["context"] == json.loads(json.dumps(source)) and set(models) == {"patch", "context"}
    loaded = load_shipped("context", folder=out)
    for name, value in context.model.state_dict().items():
        expected = value.half().float() if value.is_floating_point() else value  # fp16 weights
        assert torch.equal(loaded.model.state_dict()[name], expected), name
    assert "3 steps" in loaded.source


def test_a_file_that_is_not_its_manifests_is_refused(tmp_path):
    ship = load("scripts/ship_checkpoints.py")
    curve, out = tmp_path / "curve", tmp_path / "checkpoints"
    curve.mkdir()
    (curve / "weights.pt").write_bytes(b"not the weights")
    entry = {"file": "weights.pt", "sha256": "0" * 64}
    (curve / MANIFEST).write_text(json.dumps({"about": "test", "models": {"context": entry}}))
    with pytest.raises(SystemExit, match="is not the file its manifest names"):
        ship.copy_weights(curve, out)
    assert not out.exists()
