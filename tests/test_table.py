"""Table 1 machinery on a tiny config: files, columns, paper numbers, reuse of finished rows, resume
(the supervised baseline's pieces are tested in test_supervised.py)."""

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch

import vwe.runs
import vwe.table
from vwe.__main__ import main
from vwe.config import get_config
from vwe.data import describe, make_shapes
from vwe.evaluate import extract_features, knn_accuracy, linear_eval, random_weights_model
from vwe.models import Classifier, build_model
from vwe.pretrain import load_pretrained
from vwe.results import AUTHOR_PROBE, AUTHOR_PROBE_EPOCHS, CSV_COLUMNS
from vwe.runs import load_checkpoint, profile_dir
from vwe.supervised import accuracy
from vwe.table import (
    ROW_KEYS,
    ROWS,
    data_fingerprint,
    row_config,
    run_table,
    select_rows,
)

# Paper Table 1 (linear evaluation on CIFAR-100, percent), typed in from the paper; None: our extra rows.
PAPER = {
    "supervised-resnet32": 65.32, "random-resnet32": 7.65, "random-resnet32-patches": None, "pixels": None,
    "patch-resnet32-aug": 17.81, "context-resnet32-noaug": 30.46, "context-resnet32-aug": 34.08,
    "context-conv4-aug": 24.55,
}
UNTRAINED = ("random-resnet32", "random-resnet32-patches", "pixels")
DIMS = {"supervised-resnet32": 64, "random-resnet32": 64, "random-resnet32-patches": 1024, "pixels": 3072,
        "patch-resnet32-aug": 1024, "context-resnet32-noaug": 8192, "context-resnet32-aug": 8192,
        "context-conv4-aug": 8192}
BY_KEY = {r.key: r for r in ROWS}
N_TRAIN, N_TEST = 128, 64
CFG = get_config("smoke", n_train=N_TRAIN, n_test=N_TEST, epochs=1, batch_size=64, probe_epochs=2,
                 probe_seeds=(0, 1), eval_batch_size=128)


@pytest.fixture(scope="module")
def data():
    return make_shapes(N_TRAIN, N_TEST, seed=0)


@pytest.fixture(scope="module")
def table(tmp_path_factory, data):
    """The whole table once, every row, 1 epoch."""
    out = tmp_path_factory.mktemp("table")
    return run_table(CFG, out, data=data, progress=False), out


def checkpoint_times(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("*/checkpoint-*.pt")}


# ----------------------------------------------------------------------------- rows


def test_rows_are_the_papers():
    assert {r.key: r.paper for r in ROWS} == PAPER
    for row in ROWS:
        if row.kind == "pretrained":  # the run directory is the pretraining run's usual name
            assert row_config(CFG, row).run_name == row.key


def test_select_rows_keeps_table_order_and_refuses_unknown_names():
    assert [r.key for r in select_rows(["context-conv4-aug", "random-resnet32"])] == [
        "random-resnet32", "context-conv4-aug"]
    assert [r.key for r in select_rows(None)] == list(ROW_KEYS)
    with pytest.raises(ValueError, match="unknown row.*'nope'.*choose from"):
        select_rows(["nope"])


# ----------------------------------------------------------------------------- the table's files


def test_files_and_columns(table):
    result, out = table
    assert set(result.files) == {"json", "csv", "md", "png"}
    assert result.files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(result.files["json"].read_text())
    assert [r["key"] for r in saved["rows"]] == list(ROW_KEYS)
    header = saved["header"]
    assert header["dataset"] == "shapes" and header["profile"] == "smoke" and header["device"] == "cpu"
    assert header["epochs"] == 1 and header["n_train"] == N_TRAIN and header["n_test"] == N_TEST
    assert header["torch"] == torch.__version__ and header["python"].count(".") == 2
    assert header["git"] and header["data_sha256"] == data_fingerprint(make_shapes(N_TRAIN, N_TEST, seed=0))
    assert describe(header) == f"shapes: {N_TRAIN} train / {N_TEST} test images, generated"
    with open(result.files["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    for r, s in zip(rows, saved["rows"], strict=True):
        assert r["key"] == s["key"] and (float(r["paper"]) if r["paper"] else None) == PAPER[s["key"]]
        assert float(r["mean"]) == pytest.approx(s["mean"])
        assert float(r["raw_mean"]) == pytest.approx(s["probes"]["embedding/raw"]["mean"])
        assert (r["tower_mean"] != "") == s["key"].startswith("context")
    md = result.files["md"].read_text()
    for row in ROWS:
        assert f"| {row.method} | {row.backbone} | {row.augmentation} |" in md
        assert row.paper is None or f"{row.paper:.2f}" in md
    assert "shapes" in md and torch.__version__ in md


def test_numbers_paper_and_difference(table, data):
    result, _ = table
    for r in result.rows:
        assert r.paper == PAPER[r.key]
        assert r.difference is None  # Shapes: the paper's CIFAR-100 numbers are not comparable
        assert not r.skipped
        if Path(r.run_dir).name.startswith(("context", "patch")):  # kNN on the checkpoint's embedding
            model = load_pretrained(r.run_dir)[0]
            train, test = (extract_features(model, x, 128) for x in (data.train_images, data.test_images))
            assert r.knn == pytest.approx(knn_accuracy(train, data.train_labels, test, data.test_labels, k=20,
                                                       temperature=0.07), abs=1e-9)
        assert r.dim == DIMS[r.key]
        # every row is probed on standardised and on raw features; context rows also on their tower
        # and every row gets the author's evaluation (raw, AUTHOR_PROBE_EPOCHS, whatever the profile's)
        kinds = {"embedding/standard", "embedding/raw", AUTHOR_PROBE}
        tower = {"tower/standard", "tower/raw"} if r.key.startswith("context") else set()
        assert set(r.probes) == kinds | tower
        for name, probe in r.probes.items():  # the probe's training curve is kept, one entry per epoch
            epochs = AUTHOR_PROBE_EPOCHS if name == AUTHOR_PROBE else 2
            assert [e["epoch"] for e in probe["epochs"]] == list(range(1, epochs + 1))
            assert 0 <= probe["train_acc"] <= 100
            assert probe["final_loss"] == pytest.approx(probe["epochs"][-1]["loss"])
        if r.key == "supervised-resnet32":
            assert r.std is None and r.accs == [r.mean] and r.epochs == 1
        else:
            assert len(r.accs) == 2 and r.mean == pytest.approx(statistics.fmean(r.accs))
            assert r.std == pytest.approx(statistics.stdev(r.accs))
            assert r.accs == r.probes["embedding/standard"]["accs"]  # the headline is the default probe
            assert r.epochs == (0 if r.key in UNTRAINED else 1)


def _whole_image_features(images: torch.Tensor) -> torch.Tensor:
    """[24]'s random baseline, built here from its parts: an untrained ResNet-32 seeded like the
    table's, in eval mode, on whole images normalised to [0, 1]."""
    torch.manual_seed(CFG.seed)
    tower = Classifier("resnet32").eval().tower
    with torch.no_grad():
        return tower(images.float() / 255)


@pytest.mark.parametrize("key", ["random-resnet32", "random-resnet32-patches", "pixels"])
def test_untrained_rows_equal_an_independent_evaluation(table, data, key):
    result, _ = table
    row = next(r for r in result.rows if r.key == key)
    if key == "random-resnet32":
        train, test = (_whole_image_features(x) for x in (data.train_images, data.test_images))
    elif key == "pixels":
        train, test = (x.float().flatten(1) / 255 for x in (data.train_images, data.test_images))
    else:
        model = random_weights_model("resnet32", CFG.seed)
        train, test = (extract_features(model, x, 128) for x in (data.train_images, data.test_images))
    for norm in ("standard", "raw"):
        ev = linear_eval(train, data.train_labels, test, data.test_labels, seeds=(0, 1), epochs=2,
                         num_classes=10, norm=norm)
        assert row.probes[f"embedding/{norm}"]["accs"] == pytest.approx(ev.accs, abs=1e-9)
    # the author's evaluation: the same features (these rows have no tower of their own), raw, 10 epochs
    ev = linear_eval(train, data.train_labels, test, data.test_labels, seeds=(0, 1),
                     epochs=AUTHOR_PROBE_EPOCHS, num_classes=10, norm="raw")
    assert row.probes[AUTHOR_PROBE]["accs"] == pytest.approx(ev.accs, abs=1e-9)
    assert row.knn == pytest.approx(knn_accuracy(train, data.train_labels, test, data.test_labels, k=20,
                                                 temperature=0.07))


def test_supervised_row_is_the_checkpoints_test_accuracy(table, data):
    result, out = table
    row = next(r for r in result.rows if r.key == "supervised-resnet32")
    state = load_checkpoint(out / "supervised-resnet32-1ep" / "checkpoint-0001.pt")
    model = Classifier("resnet32", 10)
    model.load_state_dict(state["model"])
    assert row.mean == accuracy(model, data.test_images, data.test_labels) == state["metrics"][-1]["test_acc"]


def test_difference_is_computed_on_cifar100():
    saved = {"config": {"dataset": "cifar100"}, "epochs": 200, "mean": 40.0, "std": 0.5,
             "accs": [40.0], "knn": 30.0, "seconds": 1.0, "dim": 8192, "probes": {}}
    r = vwe.table._row_from_file(BY_KEY["context-resnet32-aug"], saved, False, Path("x"))
    assert r.difference == pytest.approx(40.0 - 34.08)
    no_paper_row = vwe.table._row_from_file(BY_KEY["pixels"], saved, False, Path("x"))
    assert no_paper_row.difference is None
    # like for like: with the author's evaluation the difference is its accuracy against the paper's
    author = {**saved, "probes": {AUTHOR_PROBE: {"mean": 33.0, "std": 0.1, "accs": [33.0]}}}
    r = vwe.table._row_from_file(BY_KEY["context-resnet32-aug"], author, False, Path("x"))
    assert r.mean == 40.0 and r.difference == pytest.approx(33.0 - 34.08)
    supervised = vwe.table._row_from_file(BY_KEY["supervised-resnet32"], author, False, Path("x"))
    assert supervised.difference == pytest.approx(40.0 - 65.32)  # [24]'s own head, not a probe


# ----------------------------------------------------------------------------- reuse and resume


def test_second_run_trains_nothing(table, data, tmp_path, monkeypatch):
    _, out = table
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)  # copy2 keeps the mtimes
    before = checkpoint_times(copy)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished row was run again")

    for name in ("pretrain", "train_supervised", "linear_eval"):
        monkeypatch.setattr(vwe.table, name, refuse)
    again = run_table(CFG, copy, data=data, progress=False)
    assert all(r.skipped for r in again.rows) and len(again.rows) == len(ROWS)
    assert checkpoint_times(copy) == before


def test_changed_probe_reevaluates_without_retraining(table, data, tmp_path):
    _, out = table
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = checkpoint_times(copy)
    cfg = CFG.replace(probe_epochs=1)
    again = run_table(cfg, copy, rows=["context-conv4-aug"], data=data, progress=False)
    # The other rows were evaluated with 2 probe epochs: not results of this config.
    assert [r.key for r in again.rows] == ["context-conv4-aug"] and not again.rows[0].skipped
    assert checkpoint_times(copy) == before
    assert json.loads((copy / "context-conv4-aug" / "linear_eval.json").read_text())["probe_epochs"] == 1


def test_more_epochs_train_a_new_supervised_run(table, data, tmp_path):
    _, out = table
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = checkpoint_times(copy)
    again = run_table(CFG.replace(epochs=2), copy, rows=["supervised-resnet32"], data=data, progress=False)
    assert again.rows[0].epochs == 2 and not again.rows[0].skipped
    assert (copy / "supervised-resnet32-2ep" / "checkpoint-0002.pt").is_file()
    assert {k: v for k, v in checkpoint_times(copy).items() if k in before} == before  # 1-epoch run kept


def test_changed_checkpoint_is_not_reused(table, data, tmp_path):
    _, out = table
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    path = copy / "context-conv4-aug" / "checkpoint-0001.pt"
    state = load_checkpoint(path)
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    vwe.runs.save_checkpoint(path, state)
    cfg, sha = CFG.replace(dataset="shapes"), data_fingerprint(data)
    assert vwe.table.finished_row(BY_KEY["context-conv4-aug"], cfg, copy, sha) is None
    assert vwe.table.finished_row(BY_KEY["context-resnet32-aug"], cfg, copy, sha) is not None


def test_changed_data_is_not_reused(table, tmp_path):
    # Same config, other images: what a new version of the Shapes generator would do.
    _, out = table
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    other = make_shapes(N_TRAIN, N_TEST, seed=5)
    assert data_fingerprint(other) != data_fingerprint(make_shapes(N_TRAIN, N_TEST, seed=0))
    again = run_table(CFG, copy, rows=["random-resnet32"], data=other, progress=False)
    assert [r.key for r in again.rows] == ["random-resnet32"] and not again.rows[0].skipped


def test_interrupted_row_resumes(data, tmp_path, monkeypatch, killed_at_epoch_2):
    cfg = CFG.replace(epochs=2)
    real_save = vwe.runs.save_checkpoint
    monkeypatch.setattr(vwe.runs, "save_checkpoint", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_table(cfg, tmp_path, rows=["context-conv4-aug"], data=data, progress=False)
    run = tmp_path / "context-conv4-aug"
    first = (run / "checkpoint-0001.pt").stat().st_mtime_ns
    assert not (run / "linear_eval.json").exists() and not (run / "checkpoint-0002.pt").exists()

    monkeypatch.setattr(vwe.runs, "save_checkpoint", real_save)
    result = run_table(cfg, tmp_path, rows=["context-conv4-aug"], data=data, progress=False)
    assert result.rows[0].epochs == 2 and not result.rows[0].skipped
    assert (run / "checkpoint-0001.pt").stat().st_mtime_ns == first  # resumed, not restarted
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]


# ----------------------------------------------------------------------------- command line


def test_cli_table(tmp_path, capsys):
    args = ["table", "--profile", "smoke", "--n-train", "32", "--n-test", "16", "--probe-epochs", "1",
            "--seeds", "0", "--out-dir", str(tmp_path), "--no-progress", "--rows"]
    main([*args, "random-resnet32"])
    out = capsys.readouterr().out
    assert "| Random weights (lower bound) | ResNet-32 | none |" in out
    assert (tmp_path / "results.md").is_file()
    assert (tmp_path / "random-resnet32" / "linear_eval.json").is_file()
    with pytest.raises(SystemExit) as exit_:
        main([*args, "nope"])
    assert exit_.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_a_table_with_other_epochs_gets_its_own_folder():
    # the course trains runs/cpu/<run> for the profile's 4 epochs; a 30-epoch table must not reuse them
    runs = Path(__file__).resolve().parent.parent / "runs"  # the project's runs/, wherever it starts
    assert profile_dir("cpu", get_config("cpu").epochs) == runs / "cpu"
    assert profile_dir("cpu", 30) == runs / "cpu-30ep"
    assert profile_dir("paper", get_config("paper").epochs) == runs / "paper"


# ----------------------------------------------------------------------------- the model rows, resumable


def test_model_rows_measured_one_at_a_time_are_model_rows_and_resume(data, tmp_path, monkeypatch):
    """`measure_model_rows` equals `model_rows` of `model_features` row for row; run again it evaluates
    nothing; a row whose file is lost, or whose weights are others, is evaluated again, and it alone."""
    torch.manual_seed(0)
    simple, context = (build_model(m).eval() for m in ("patch", "context"))
    device, epochs = torch.device("cpu"), {"patch-resnet32-aug": 1.0, "context-resnet32-aug": 1.0}
    weights = {"patch": "a" * 64, "context": "b" * 64}
    expected = vwe.table.model_rows(vwe.table.model_features(simple, context, data, CFG, device), data, CFG,
                                    epochs, tmp_path)
    first = vwe.table.measure_model_rows(simple, context, data, CFG, device, epochs, weights, tmp_path,
                                         progress=False)
    assert [r.key for r in first] == list(vwe.table.MODEL_ROWS) and not any(r.skipped for r in first)
    for got, want in zip(first, expected, strict=True):
        assert (got.mean, got.accs, got.knn, got.probes) == (want.mean, want.accs, want.knn, want.probes)

    evaluated = []
    real = vwe.table.evaluate_features
    monkeypatch.setattr(vwe.table, "evaluate_features", lambda f, d, c: evaluated.append(1) or real(f, d, c))
    again = vwe.table.measure_model_rows(simple, context, data, CFG, device, epochs, weights, tmp_path,
                                         progress=False)
    assert not evaluated and all(r.skipped for r in again)
    assert [r.probes for r in again] == [r.probes for r in first]

    (tmp_path / "pixels" / "linear_eval.json").unlink()
    other = vwe.table.measure_model_rows(simple, context, data, CFG, device, epochs,
                                         {**weights, "context": "c" * 64}, tmp_path, progress=False)
    assert [r.key for r in other if not r.skipped] == ["pixels", "context-resnet32-aug"]
    assert len(evaluated) == 2
