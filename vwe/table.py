"""The paper's Table 1, reproduced: every row's run, its evaluation, and the results files.

Rows (docs/design.md §13): the supervised ResNet-32 (upper bound), random weights (lower bound, as [24]
measures it: an untrained ResNet-32 on the whole image, 64-d), the simple autoencoder, the context
autoencoder with ResNet-32 without and with augmentation, and with Conv4; and two rows the paper
does not have: random weights on the 16 patches (1024-d, the same features as the simple
autoencoder's) and a linear probe on the 3 072 raw pixels, which every learned feature is read against.

A pretrained row is `vwe.pretrain.pretrain` (resumable) then linear evaluation of its frozen image
embedding (mean +- sample std over `cfg.probe_seeds`) and a kNN classifier (k = 20, cosine,
temperature 0.07) on the same features. Every row is probed twice, on standardised features (the
default, `cfg.probe_norm`) and on raw ones (the paper's probe); a context row also on the 1024-d
tower embedding of its 16 patches. The supervised row is `vwe.supervised.train_supervised`, reported
as its test top-1 accuracy (one run), with the probes and kNN on its 64-d tower features.

Each row writes `<out_dir>/<run>/linear_eval.json` (`vwe.results.ROW_FILE`). A later run skips a row
whose file matches the row's config and the sha256 of its final checkpoint, and resumes a row that was
interrupted. `run_table` then writes `vwe.results.results_files` (results.json, .csv, .md, .png) in
`out_dir`.

    python -m vwe table --profile paper --dataset cifar100       # the reproduction, on one GPU

Under torchrun every row trains data-parallel (`vwe.distributed`); rank 0 alone extracts the
features, trains the probes and writes the files, so the numbers do not depend on the process count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vwe import distributed
from vwe.config import PROBE_NORMS, Config, check_resolved, resolve
from vwe.data import Dataset, describe
from vwe.engine import epochs_reached
from vwe.evaluate import (
    knn_accuracy,
    linear_eval,
    pixel_features,
    probe_settings,
    random_image_model,
    random_weights_model,
    split_features,
)
from vwe.files import file_digest, write_json
from vwe.pretrain import pretrain
from vwe.results import (
    AUTHOR_PROBE,
    AUTHOR_PROBE_EPOCHS,
    PAPER_DATASET,
    ROW_FILE,
    RowResult,
    measured_on,
    results_files,
    write_results,
)
from vwe.runs import epochs_saved, list_checkpoints, provenance
from vwe.supervised import SupervisedRecipe, train_supervised

KNN = {"k": 20, "temperature": 0.07}  # weighted cosine kNN, as in InstDisc and DINO (vwe.words)


@dataclass(frozen=True)
class Row:
    """One line of Table 1: how to produce it and the paper's number."""

    key: str  # --rows name; also names the run directory (see `row_dir`)
    method: str
    backbone: str
    augmentation: str
    paper: float | None  # published linear-evaluation top-1 on CIFAR-100, percent (None: not in the paper)
    kind: str  # "supervised" | "random-image" | "random" | "pixels" | "pretrained"
    model: str = "context"  # "context" | "patch", pretrained rows only
    tower: str = "resnet32"
    augment: bool = True  # pretraining augmentation, pretrained rows only

    @property
    def trained(self) -> bool:
        """Whether the row trains a model (and so has checkpoints), unlike the untrained baselines."""
        return self.kind in ("supervised", "pretrained")


ROWS: tuple[Row, ...] = (
    Row("supervised-resnet32", "Supervised (upper bound)", "ResNet-32", "crop + flip", 65.32,
        "supervised"),
    # [24] probes a random ResNet-32 on the whole 32x32 image (64-d): the row the paper's 7.65 is.
    Row("random-resnet32", "Random weights (lower bound)", "ResNet-32", "none", 7.65, "random-image",
        augment=False),
    Row("random-resnet32-patches", "Random weights, 16 patches (extra)", "ResNet-32", "none", None,
        "random", augment=False),
    Row("pixels", "Raw pixels (extra)", "-", "none", None, "pixels", augment=False),
    # The paper's table gives the simple AE no backbone; ours is the same ResNet-32 tower
    # (docs/design.md §10).
    Row("patch-resnet32-aug", "Simple autoencoder", "ResNet-32", "aug", 17.81, "pretrained",
        model="patch"),
    Row("context-resnet32-noaug", "Context patch autoencoder", "ResNet-32", "no aug", 30.46,
        "pretrained", augment=False),
    Row("context-resnet32-aug", "Context patch autoencoder", "ResNet-32", "aug", 34.08, "pretrained"),
    Row("context-conv4-aug", "Context patch autoencoder", "Conv4", "aug", 24.55, "pretrained",
        tower="conv4"),
)
ROW_KEYS = tuple(r.key for r in ROWS)
BY_KEY = {r.key: r for r in ROWS}
# the paper's figure for each autoencoder with the ResNet-32 tower and augmentation, by model
PAPER_BY_MODEL = {model: BY_KEY[f"{model}-resnet32-aug"].paper for model in ("context", "patch")}


@dataclass
class Table:
    header: dict
    rows: list[RowResult]
    files: dict[str, Path]  # "json" | "csv" | "md" | "png" -> path


# ----------------------------------------------------------------------------- one row


def select_rows(keys: Sequence[str] | None = None) -> list[Row]:
    """The rows named by `keys` (None: all), in table order."""
    if keys is None:
        return list(ROWS)
    unknown = [k for k in keys if k not in ROW_KEYS]
    if unknown or not keys:
        raise ValueError(f"unknown row(s) {unknown}; choose from {ROW_KEYS}")
    return [r for r in ROWS if r.key in keys]


def row_config(cfg: Config, row: Row) -> Config:
    """The config a row runs with: the table's, with the row's model, tower and augmentation (the
    Conv4 row's tower is the config's form of Conv4, `cfg.conv4`)."""
    if row.kind == "pretrained":
        tower = cfg.conv4 if row.tower == "conv4" else row.tower
        return cfg.replace(model=row.model, tower=tower, augment=row.augment)
    # Model and augmentation do not apply; fixed so that they never make a finished row look stale.
    return cfg.replace(model="patch", tower=row.tower, augment=False)


def row_dir(out_dir: str | Path, cfg: Config, row: Row) -> Path:
    """Where a row runs. A pretraining run resumes across epoch counts, so its folder is its run name;
    the supervised lr drops sit at fractions of the epochs, so a table with more epochs trains a new
    supervised run in a folder of its own (`supervised-resnet32-30ep`) instead of resuming the old."""
    if row.kind == "pretrained":
        return Path(out_dir) / row_config(cfg, row).run_name
    return Path(out_dir) / (f"{row.key}-{cfg.epochs}ep" if row.kind == "supervised" else row.key)


def data_fingerprint(data: Dataset) -> str:
    """SHA-256 of both splits' images and labels: a result is tied to the exact data it was computed
    on (the config names a dataset and its size, not its content, which a new version may change)."""
    h = hashlib.sha256()
    for t in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _spec(row: Row, cfg_row: Config, checkpoint: Path | None, fingerprint: str) -> dict:
    """Everything a finished results file must match to be reused (JSON-plain values)."""
    spec = {
        "row": row.key, "config": cfg_row.identity("result"), "data_sha256": fingerprint, "knn_protocol": KNN,
        "recipe": dataclasses.asdict(SupervisedRecipe()) if row.kind == "supervised" else None,
        "checkpoint": checkpoint.name if checkpoint else None,
        "checkpoint_sha256": file_digest(checkpoint) if checkpoint else None,
    }
    return json.loads(json.dumps(spec))


def row_from_evaluation(row: Row, evaluation: dict, dataset: str, epochs: float, seconds: float,
                        run_dir: str | Path, skipped: bool = False) -> RowResult:
    """A table line from `evaluate_features`' output (or a row's file, which holds it): the paper's
    number beside it, and their difference where the data is the paper's (CIFAR-100) and the paper
    has the row."""
    compared = dataset == PAPER_DATASET and row.paper is not None
    e = evaluation
    # like for like: the paper's pretrained and random rows are the author's evaluation, its
    # supervised row [24]'s own head
    author = e["probes"].get(AUTHOR_PROBE)
    ours = author["mean"] if author is not None and row.kind != "supervised" else e["mean"]
    return RowResult(
        key=row.key, method=row.method, backbone=row.backbone, augmentation=row.augmentation, epochs=epochs,
        mean=e["mean"], std=e["std"], accs=e["accs"], knn=e["knn"], paper=row.paper,
        difference=round(ours - row.paper, 2) if compared else None, seconds=seconds, skipped=skipped,
        run_dir=str(run_dir), dim=e["dim"], probes=e["probes"],
    )


def _row_from_file(row: Row, saved: dict, skipped: bool, run_dir: Path) -> RowResult:
    """A table line from the row's file in its run folder (`vwe.results.ROW_FILE`, `run_row` writes it)."""
    return row_from_evaluation(row, saved, saved["config"]["dataset"], saved["epochs"], saved["seconds"],
                               run_dir, skipped)


def finished_row(row: Row, cfg: Config, out_dir: str | Path, fingerprint: str) -> RowResult | None:
    """The row's saved result when it matches `cfg` (dataset resolved), the data (its
    `data_fingerprint`) and its checkpoint; else None."""
    run_dir = row_dir(out_dir, cfg, row)
    path = run_dir / ROW_FILE
    if not path.is_file():
        return None
    checkpoints = list_checkpoints(run_dir)
    if row.trained and not checkpoints:
        return None
    spec = _spec(row, row_config(cfg, row), checkpoints[0] if checkpoints else None, fingerprint)
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # unreadable: recompute and overwrite
    if not isinstance(saved, dict) or any(saved.get(k) != v for k, v in spec.items()):
        return None
    return _row_from_file(row, saved, True, run_dir)


def _knn(train: torch.Tensor, test: torch.Tensor, data: Dataset) -> float:
    return knn_accuracy(train, data.train_labels.to(train.device), test,
                        data.test_labels.to(test.device), num_classes=data.num_classes, **KNN)


def _probes(train: torch.Tensor, test: torch.Tensor, data: Dataset, cfg: Config, features: str) -> dict:
    """`vwe.evaluate.evaluate_model`'s probe with every norm, on features extracted once (the kNN
    column needs them too): {"<features>/<norm>": summary}."""
    settings = probe_settings(cfg, data.num_classes)
    return {f"{features}/{norm}": linear_eval(train, data.train_labels, test, data.test_labels,
                                              **{**settings, "norm": norm}).summary()
            for norm in PROBE_NORMS}


# "embedding" | "tower" -> (train (N, dim), test (M, dim))
Features = dict[str, tuple[torch.Tensor, torch.Tensor]]


def row_features(row: Row, data: Dataset, cfg: Config, device: torch.device, model: nn.Module | None = None,
                 progress: bool = True) -> Features:
    """The features a row is evaluated on, computed once for its probes and its kNN column: "embedding"
    (the headline's), and for a context autoencoder also "tower", its tower on the 16 patches themselves.
    `model` is the row's trained model (a supervised or pretrained row); the baselines build theirs."""
    def both(source, features: str = "embedding") -> tuple[torch.Tensor, torch.Tensor]:
        return split_features(source, data, cfg.eval_batch_size, device, progress, features)

    if row.kind == "pixels":
        return {"embedding": tuple(pixel_features(x) for x in (data.train_images, data.test_images))}
    if row.kind == "random-image":  # [24]'s lower bound: an untrained ResNet-32 on the whole image
        return {"embedding": both(random_image_model(row.tower, cfg.seed).to(device).forward_features)}
    if row.kind == "random":
        return {"embedding": both(random_weights_model(row.tower, cfg.seed).to(device))}
    if model is None:
        raise ValueError(f"row {row.key} evaluates a trained model: pass it as `model`")
    if row.kind == "supervised":
        return {"embedding": both(model.forward_features)}  # its 64-d tower features
    if row.model == "context":
        return {"embedding": both(model), "tower": both(model, "tower")}
    return {"embedding": both(model)}


def evaluate_features(features: Features, data: Dataset, cfg: Config, test_acc: float | None = None) -> dict:
    """A row's evaluation on its `row_features`: every probe (each norm, seeds of `cfg`), the author's
    evaluation ("author": the tower features, raw, AUTHOR_PROBE_EPOCHS epochs), the kNN column, and the
    headline (`test_acc` for the supervised row's own head)."""
    probes = {}
    for name, (train, test) in features.items():
        probes.update(_probes(train, test, data, cfg, name))
    # The author's evaluation (`Linear Evaluation CIFAR 100.ipynb`): what the paper's numbers are. A
    # simple AE's or a random tower's embedding already is its 16 x 64 tower features.
    train, test = features.get("tower", features["embedding"])
    settings = {**probe_settings(cfg, data.num_classes), "norm": "raw", "epochs": AUTHOR_PROBE_EPOCHS}
    probes[AUTHOR_PROBE] = linear_eval(train, data.train_labels, test, data.test_labels, **settings).summary()
    train, test = features["embedding"]
    headline = probes[f"embedding/{cfg.probe_norm}"]
    mean, std, accs = ((test_acc, None, [test_acc]) if test_acc is not None
                       else (headline["mean"], headline["std"], headline["accs"]))
    return {"mean": mean, "std": std, "accs": accs, "dim": train.shape[1], "probes": probes,
            "knn": _knn(train, test, data)}


def run_row(row: Row, cfg: Config, data: Dataset, device: torch.device, out_dir: str | Path,
            progress: bool = True, fingerprint: str | None = None) -> RowResult:
    """Produce one row: reuse its finished result, or train (resuming) and evaluate it.

    `cfg`, `data` and `device` as `vwe.config.resolve` makes them. `fingerprint` is
    `data_fingerprint(data)`, computed when not given.
    """
    check_resolved(cfg, data)
    fingerprint = fingerprint or data_fingerprint(data)
    done = finished_row(row, cfg, out_dir, fingerprint)
    if done is not None:
        return done
    t0 = time.perf_counter()
    cfg_row = row_config(cfg, row)
    run_dir = row_dir(out_dir, cfg, row)
    res, test_acc = None, None
    if row.kind == "supervised":
        res = train_supervised(cfg_row, run_dir, data, device=device, progress=progress)
        test_acc = res.test_acc
    elif row.kind == "pretrained":
        # a run folder holding more epochs than asked is refused by `vwe.runs.check_resumable`
        res = pretrain(cfg_row, run_dir, data, device, progress=progress)
    model, checkpoint = (None, None) if res is None else (res.model, res.checkpoint)
    epochs = 0 if res is None else epochs_reached(res.metrics)
    if not distributed.is_main():  # rank 0 alone evaluates and writes; the others read its result
        return _row_from_main(row, cfg, out_dir, fingerprint)
    features = row_features(row, data, cfg, device, model, progress)
    evaluation = evaluate_features(features, data, cfg_row, test_acc)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = {
        **_spec(row, cfg_row, checkpoint, fingerprint),
        # the keys `python -m vwe linear-eval` writes, so both files read alike
        "model": row.key, "dataset": data.name, "data": data.provenance(), "profile": cfg.profile,
        "seeds": list(cfg.probe_seeds), "probe_epochs": cfg.probe_epochs, "probe_norm": cfg.probe_norm,
        "epochs": epochs, **evaluation, "seconds": round(time.perf_counter() - t0, 1),
        "provenance": provenance(device),
    }
    write_json(run_dir / ROW_FILE, saved)
    distributed.barrier()  # the other processes wait in _row_from_main
    return _row_from_file(row, saved, False, run_dir)


# The rows a pair of trained autoencoders (simple, context) fills, with the untrained baselines.
MODEL_ROWS = ("random-resnet32", "random-resnet32-patches", "pixels", "patch-resnet32-aug",
              "context-resnet32-aug")


def model_features(simple: nn.Module, context: nn.Module, data: Dataset, cfg: Config, device: torch.device,
                   progress: bool = False) -> dict[str, Features]:
    """`row_features` of every MODEL_ROWS row, for a trained simple and context autoencoder (notebook 05,
    `scripts/shipped_table.py`, `scripts/gpu_reproduce.py`)."""
    models = {"patch-resnet32-aug": simple, "context-resnet32-aug": context}
    return {key: row_features(BY_KEY[key], data, cfg, device, models.get(key), progress)
            for key in MODEL_ROWS}


def model_rows(features: dict[str, Features], data: Dataset, cfg: Config, epochs: dict[str, float],
               run_dir: str | Path) -> list[RowResult]:
    """Every MODEL_ROWS row evaluated on its `model_features` as `run_row` evaluates it; `epochs` gives
    each trained row's pretraining epochs, as its metrics say (`vwe.engine.epochs_reached`)."""
    return [row_from_evaluation(BY_KEY[key], evaluate_features(features[key], data, cfg), data.name,
                                epochs.get(key, 0), 0.0, run_dir)
            for key in MODEL_ROWS]


def measure_model_rows(simple: nn.Module, context: nn.Module, data: Dataset, cfg: Config,
                       device: torch.device, epochs: dict[str, float], weights: dict[str, str],
                       out_dir: str | Path, progress: bool = True) -> list[RowResult]:
    """`model_rows` of `model_features`, one row at a time, each row's evaluation kept in
    `<out_dir>/<row>/linear_eval.json` as soon as it is done: a measurement stopped midway goes on from
    its first unfinished row. A saved row is reused only when it matches the data (`data_fingerprint`),
    the probes' settings and, for a trained row, the sha256 of its model's weights (`weights`:
    {"patch": ..., "context": ...}); its `seconds` are the row's own features and probes."""
    fingerprint = data_fingerprint(data)
    models = {"patch-resnet32-aug": simple, "context-resnet32-aug": context}
    rows = []
    for key in MODEL_ROWS:
        row, path = BY_KEY[key], Path(out_dir) / key / ROW_FILE
        spec = json.loads(json.dumps({
            "row": key, "data_sha256": fingerprint, "seed": cfg.seed, "knn_protocol": KNN,
            "probe": probe_settings(cfg, data.num_classes), "author_probe_epochs": AUTHOR_PROBE_EPOCHS,
            "weights_sha256": weights[row.model] if key in models else None}))
        saved = json.loads(path.read_text()) if path.is_file() else None
        reused = isinstance(saved, dict) and saved.get("spec") == spec
        if not reused:
            t0 = time.perf_counter()
            evaluation = evaluate_features(row_features(row, data, cfg, device, models.get(key), progress),
                                           data, cfg)
            saved = {"spec": spec, **evaluation, "seconds": round(time.perf_counter() - t0, 1)}
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, saved)
        rows.append(row_from_evaluation(row, saved, data.name, epochs.get(key, 0), saved["seconds"],
                                        path.parent, skipped=reused))
    return rows


def _row_from_main(row: Row, cfg: Config, out_dir: str | Path, fingerprint: str) -> RowResult:
    """On a process other than rank 0: wait for rank 0 to evaluate the row, then read its result."""
    distributed.barrier()
    return finished_row(row, cfg, out_dir, fingerprint)


# ----------------------------------------------------------------------------- the table


def _duration(seconds: float) -> str:
    """12s, 5m03s, 2h07m."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def table_header(cfg: Config, data: Dataset, device: torch.device, fingerprint: str,
                 command: str | None = None) -> dict:
    """What the numbers came from: data, protocol, and `measured_on` (hardware, software, revision,
    time, the command: by default this process's command line)."""
    return {
        **data.provenance(), "data_sha256": fingerprint,
        "classes": data.num_classes, "profile": cfg.profile,
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "views_per_image": cfg.views_per_image,
        "pairs_per_step": cfg.pairs_per_step, "lr": cfg.lr, "seed": cfg.seed,
        "encoding": cfg.encoding, "probe_epochs": cfg.probe_epochs, "probe_seeds": list(cfg.probe_seeds),
        "probe_norm": cfg.probe_norm, "knn": KNN, **measured_on(device, command),
    }


def run_table(
    cfg: Config,
    out_dir: str | Path,
    rows: Sequence[str] | None = None,
    data: Dataset | None = None,
    progress: bool = True,
) -> Table:
    """Run (or reuse) the selected rows with `cfg`'s protocol and write the results files.

    The results files list the selected rows plus every other row whose finished result in
    `out_dir` matches `cfg`, so running the rows one at a time still builds the whole table.
    """
    selected = select_rows(rows)
    cfg, data, device = resolve(cfg, data)
    out_dir = Path(out_dir)
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(data)
    header = table_header(cfg, data, device, fingerprint)
    distributed.print0(f"Table 1 | {describe(header)} | profile {cfg.profile} | device {header['device']} | "
          f"{cfg.epochs} epochs, probe {cfg.probe_epochs} epochs x seeds {list(cfg.probe_seeds)} "
          f"| {len(selected)} rows -> {out_dir}")
    distributed.print0(f"  each pretrained row: {cfg.cost_text(len(data.train_labels))}")

    # The remaining time is extrapolated from the rows run so far, per epoch x training image still
    # to train (a resumed row has fewer epochs left), each row's work counted once, before it runs.
    def work(row: Row) -> int:
        if not row.trained or finished_row(row, cfg, out_dir, fingerprint) is not None:
            return 0
        return max(cfg.epochs - epochs_saved(row_dir(out_dir, cfg, row)), 0) * len(data.train_labels)

    todo = {row.key: work(row) for row in selected}
    lines: dict[str, RowResult] = {}
    spent, done_work = 0.0, 0
    for i, row in enumerate(selected):
        t0 = time.perf_counter()
        res = run_row(row, cfg, data, device, out_dir, progress, fingerprint)
        lines[row.key] = res
        if res.skipped:
            line = f"[{i + 1}/{len(selected)}] {row.key}: finished result reused"
        else:
            spent += time.perf_counter() - t0
            done_work += todo[row.key]
            line = f"[{i + 1}/{len(selected)}] {row.key}: done in {_duration(time.perf_counter() - t0)}"
        left = sum(todo[r.key] for r in selected[i + 1:])
        if left and done_work:
            line += f"; about {_duration(spent / done_work * left)} left"
        std = "" if res.std is None else f" ± {res.std:.2f}"
        paper = "not in the paper" if res.paper is None else f"paper {res.paper:.2f} on CIFAR-100"
        distributed.print0(f"{line} | {res.mean:.2f}{std} % ({paper}), kNN {res.knn:.2f} %")
    for row in ROWS:
        if row.key not in lines and (done := finished_row(row, cfg, out_dir, fingerprint)) is not None:
            lines[row.key] = done
    ordered = [lines[r.key] for r in ROWS if r.key in lines]
    with distributed.main_first():  # the others return once the files are there
        files = write_results(header, ordered, out_dir) if distributed.is_main() else results_files(out_dir)
    return Table(header, ordered, files)
