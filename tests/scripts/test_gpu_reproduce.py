"""scripts/gpu_reproduce.py rehearsed on the CPU (`--dry-run`: Shapes, Conv4, seconds per part): the
files a GPU job would bring back, their number and sizes, the results file's rows, the fp16 weights'
sha256, and the archive's parts joined and md5-checked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from source_file import load

from vwe.course import load_shipped
from vwe.runs import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
gpu_reproduce = load("scripts/gpu_reproduce.py")

MODEL_ROWS = ["random-resnet32", "random-resnet32-patches", "pixels", "patch-resnet32-aug",
              "context-resnet32-aug"]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    gpu_reproduce.main(["--dry-run", "--device", "cpu", "--out", str(out),
                        "--work", str(tmp_path_factory.mktemp("work"))])
    return out


def test_the_dry_run_leaves_every_part_in_at_most_8_files_of_at_most_16_mib(rehearsal):
    names = sorted(p.name for p in rehearsal.iterdir())
    assert names == sorted(["results.json", "reproduce.json", "manifest.json", "context.checkpoint.pt",
                            "patch.checkpoint.pt", "paper.checkpoint.pt", "shapes-context-conv4-slots-aug.pt",
                            "shapes-patch-conv4-aug.pt"])
    assert all((rehearsal / n).stat().st_size <= 16 * 2**20 for n in names)
    record = json.loads((rehearsal / "reproduce.json").read_text())
    assert list(record["parts"]) == ["data", "timings", "context", "patch", "probes", "paper"]
    timings = record["parts"]["timings"]["timings"]
    assert timings["author step"]["pairs_per_step"] == 512  # 8 images x 4 views x 16 targets
    assert timings["text step"]["pairs_per_step"] == 16 * 16  # the dry run's 16 images


def test_the_results_file_has_the_table_rows_and_each_box_s_epochs(rehearsal):
    results = json.loads((rehearsal / "results.json").read_text())
    record = json.loads((rehearsal / "reproduce.json").read_text())
    assert [r["key"] for r in results["rows"]] == [*MODEL_ROWS, "context-resnet32-aug-text-recipe"]
    for row in results["rows"]:
        assert len(row["accs"]) == 3 and {"author", "embedding/standard"} <= set(row["probes"])
    for name in ("context", "patch", "paper"):
        metrics = record["parts"][name]["metrics"]
        assert results["header"]["epochs_reached"][name] == metrics[-1]["epoch"] > 0
    # a box that stopped inside an epoch says how far: a fraction and its steps
    for m in (m for part in ("context", "patch", "paper") for m in record["parts"][part]["metrics"]):
        assert m["epoch"] == int(m["epoch"]) or 0 < m["steps"] < m["steps_per_epoch"]


def test_fp16_weights_match_their_sha256_and_the_checkpoints_resume(rehearsal):
    manifest = json.loads((rehearsal / "manifest.json").read_text())
    assert sorted(manifest["models"]) == ["context", "patch"]
    for model, entry in manifest["models"].items():
        assert hashlib.sha256((rehearsal / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
        shipped = load_shipped(model, folder=rehearsal)  # checks the sha256 and loads the fp16 weights
        state = load_checkpoint(rehearsal / f"{model}.checkpoint.pt")
        for k, v in shipped.model.state_dict().items():
            assert torch.equal(v, state["model"][k].half().to(v.dtype)), k
    record = json.loads((rehearsal / "reproduce.json").read_text())
    for part in ("context", "patch", "paper"):
        copy = record["parts"][part]["checkpoint"]
        assert hashlib.sha256((rehearsal / copy["file"]).read_bytes()).hexdigest() == copy["sha256"]
        assert copy["resume_as"].startswith("checkpoint-")


def test_parts_are_joined_in_name_order_and_the_md5_is_checked(tmp_path, monkeypatch):
    blob = bytes(range(256)) * 1000
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, suffix in enumerate(("aa", "ab", "ac")):
        (parts / f"cifar-100-python.tar.gz.part-{suffix}").write_bytes(blob[i * 100_000:(i + 1) * 100_000])
    archive = tmp_path / "data" / "cifar-100-python.tar.gz"
    monkeypatch.delenv(gpu_reproduce.CIFAR100_MD5_ENV, raising=False)
    for source in (str(parts), str(parts / "*.part-*")):  # a folder or a glob
        gpu_reproduce.join_parts(source, archive)
        assert archive.read_bytes() == blob
    with pytest.raises(SystemExit, match="none of"):
        gpu_reproduce.check_archive(archive, None)  # neither the official md5 nor a named one
    md5 = hashlib.md5(blob).hexdigest()
    assert gpu_reproduce.check_archive(archive, md5) == md5
    assert gpu_reproduce.CIFAR100_MD5_ENV not in gpu_reproduce.os.environ  # passed to the loader instead
    monkeypatch.setenv(gpu_reproduce.CIFAR100_MD5_ENV, md5)  # or named in the environment
    assert gpu_reproduce.check_archive(archive, None) == md5
