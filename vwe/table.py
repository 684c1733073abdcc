"""The paper's Table 1, reproduced: every row's run, its evaluation, and the results files.

Rows (DESIGN.md 13): the supervised ResNet-32 (upper bound), random weights (lower bound), the simple
autoencoder, the context autoencoder with ResNet-32 without and with augmentation, and with Conv4.
A pretrained row is `vwe.pretrain.pretrain` (resumable) then linear evaluation of its frozen image
embedding (mean +- sample std over `cfg.probe_seeds`) and a kNN classifier (k = 20, cosine,
temperature 0.07) on the same features; the random row evaluates an untrained tower the same way;
the supervised row is `vwe.supervised.train_supervised`, reported as its test top-1 accuracy (one
run) with kNN on its 64-d tower features.

Each row writes `<out_dir>/<run>/linear_eval.json`. A later run skips a row whose file matches the
row's config and the sha256 of its final checkpoint, and resumes a row that was interrupted.
`run_table` then writes `results.json`, `results.csv`, `results.md` and `results.png` in `out_dir`.

    python -m vwe table --profile paper --dataset cifar100       # the reproduction, on one GPU

Under torchrun every row trains data-parallel (`vwe.distributed`); rank 0 alone extracts the
features, trains the probes and writes the files, so the numbers do not depend on the process count.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vwe import distributed
from vwe.config import Config, resolve_device
from vwe.data import Dataset
from vwe.evaluate import LinearEval, extract_features, linear_eval, random_weights_model
from vwe.pretrain import CHECKPOINT_RE, atomic_write, list_checkpoints, pretrain, provenance, resolve_data
from vwe.supervised import SupervisedRecipe, train_supervised
from vwe.words import knn_accuracy

RESULTS_FILE = "linear_eval.json"  # per row, in its run directory
KNN = {"k": 20, "temperature": 0.07}  # weighted cosine kNN, as in InstDisc and DINO (vwe.words)
# Config fields that do not change a row's numbers: a result computed elsewhere (on another device,
# under another profile name) still counts as finished.
IGNORED_FIELDS = ("profile", "device", "compile", "eval_batch_size")
PAPER_DATASET = "cifar100"  # the paper's numbers are CIFAR-100 top-1; differences only there


@dataclass(frozen=True)
class Row:
    """One line of Table 1: how to produce it and the paper's number."""

    key: str  # --rows name; also names the run directory (see `row_dir`)
    method: str
    backbone: str
    augmentation: str
    paper: float  # published linear-evaluation top-1 on CIFAR-100, percent
    kind: str  # "supervised" | "random" | "pretrained"
    model: str = "context"  # "context" | "patch", pretrained rows only
    tower: str = "resnet32"
    augment: bool = True  # pretraining augmentation, pretrained rows only


ROWS: tuple[Row, ...] = (
    Row("supervised-resnet32", "Supervised (upper bound)", "ResNet-32", "crop + flip", 65.32,
        "supervised"),
    Row("random-resnet32", "Random weights (lower bound)", "ResNet-32", "none", 7.65, "random",
        augment=False),
    # The paper's table gives the simple AE no backbone; ours is the same ResNet-32 tower (DESIGN.md 10).
    Row("patch-resnet32-aug", "Simple autoencoder", "ResNet-32", "aug", 17.81, "pretrained",
        model="patch"),
    Row("context-resnet32-noaug", "Context patch autoencoder", "ResNet-32", "no aug", 30.46,
        "pretrained", augment=False),
    Row("context-resnet32-aug", "Context patch autoencoder", "ResNet-32", "aug", 34.08, "pretrained"),
    Row("context-conv4-aug", "Context patch autoencoder", "Conv4", "aug", 24.55, "pretrained",
        tower="conv4"),
)
ROW_KEYS = tuple(r.key for r in ROWS)


@dataclass
class RowResult:
    key: str
    method: str
    backbone: str
    augmentation: str
    epochs: int  # training epochs behind the number (0: random weights)
    mean: float  # top-1 %, mean over probe seeds (supervised: its one run's test accuracy)
    std: float | None  # sample std over probe seeds; None for the one supervised run
    accs: list[float]  # one per probe seed
    knn: float  # kNN top-1 %, same features
    paper: float
    difference: float | None  # mean - paper; None unless the dataset is CIFAR-100
    seconds: float  # wall time of the run that produced the number
    skipped: bool  # True: read from a finished run's results file
    run_dir: str

    @property
    def label(self) -> str:
        return f"{self.method} ({self.backbone}, {self.augmentation})"


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
    """The config a row runs with: the table's, with the row's model, tower and augmentation."""
    if row.kind == "pretrained":
        return cfg.replace(model=row.model, tower=row.tower, augment=row.augment)
    # Model and augmentation do not apply; fixed so that they never make a finished row look stale.
    return cfg.replace(model="patch", tower=row.tower, augment=False)


def row_dir(out_dir: str | Path, cfg: Config, row: Row) -> Path:
    """Where a row runs. A pretraining run resumes across epoch counts, so its folder is its run name;
    the supervised lr drops sit at fractions of the epochs, so a table with more epochs trains a new
    supervised run in a folder of its own (`supervised-resnet32-30ep`) instead of resuming the old."""
    if row.kind == "pretrained":
        return Path(out_dir) / row_config(cfg, row).run_name
    return Path(out_dir) / (f"{row.key}-{cfg.epochs}ep" if row.kind == "supervised" else row.key)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_fingerprint(data: Dataset) -> str:
    """SHA-256 of both splits' images and labels: a result is tied to the exact data it was computed
    on (the config names a dataset and its size, not its content, which a new version may change)."""
    h = hashlib.sha256()
    for t in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _spec(row: Row, cfg_row: Config, checkpoint: Path | None, fingerprint: str) -> dict:
    """Everything a finished results file must match to be reused (JSON-plain values)."""
    config = {k: v for k, v in cfg_row.to_dict().items() if k not in IGNORED_FIELDS}
    spec = {
        "row": row.key, "config": config, "data_sha256": fingerprint, "knn_protocol": KNN,
        "recipe": dataclasses.asdict(SupervisedRecipe()) if row.kind == "supervised" else None,
        "checkpoint": checkpoint.name if checkpoint else None,
        "checkpoint_sha256": _sha256(checkpoint) if checkpoint else None,
    }
    return json.loads(json.dumps(spec))


def _result(row: Row, saved: dict, skipped: bool, run_dir: Path) -> RowResult:
    dataset = saved["config"]["dataset"]
    return RowResult(
        row.key, row.method, row.backbone, row.augmentation, saved["epochs"], saved["mean"],
        saved["std"], saved["accs"], saved["knn"], row.paper,
        round(saved["mean"] - row.paper, 2) if dataset == PAPER_DATASET else None,
        saved["seconds"], skipped, str(run_dir),
    )


def finished_row(row: Row, cfg: Config, out_dir: str | Path, fingerprint: str) -> RowResult | None:
    """The row's saved result when it matches `cfg` (dataset resolved), the data (its
    `data_fingerprint`) and its checkpoint; else None."""
    run_dir = row_dir(out_dir, cfg, row)
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        return None
    checkpoints = list_checkpoints(run_dir)
    if row.kind != "random" and not checkpoints:
        return None
    spec = _spec(row, row_config(cfg, row), checkpoints[0] if checkpoints else None, fingerprint)
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # unreadable: recompute and overwrite
    if not isinstance(saved, dict) or any(saved.get(k) != v for k, v in spec.items()):
        return None
    return _result(row, saved, True, run_dir)


def _knn(train: torch.Tensor, test: torch.Tensor, data: Dataset) -> float:
    return knn_accuracy(train, data.train_labels.to(train.device), test,
                        data.test_labels.to(test.device), num_classes=data.num_classes, **KNN)


def _probe(train: torch.Tensor, test: torch.Tensor, data: Dataset, cfg: Config) -> LinearEval:
    """`vwe.evaluate.evaluate_model` on features extracted once, since the kNN column needs them too."""
    return linear_eval(train, data.train_labels, test, data.test_labels, seeds=cfg.probe_seeds,
                       epochs=cfg.probe_epochs, batch_size=cfg.probe_batch_size, lr=cfg.probe_lr,
                       num_classes=data.num_classes)


def run_row(row: Row, cfg: Config, data: Dataset, out_dir: str | Path, progress: bool = True,
            fingerprint: str | None = None) -> RowResult:
    """Produce one row: reuse its finished result, or train (resuming) and evaluate it.

    `cfg.dataset` must already be `data.name` (what "auto" resolved to), and `data` cut to
    cfg.n_train / cfg.n_test. `fingerprint` is `data_fingerprint(data)`, computed when not given.
    """
    if cfg.dataset != data.name:
        raise ValueError(f"cfg.dataset is {cfg.dataset!r} but the data is {data.name!r}; "
                         "pass cfg.replace(dataset=data.name)")
    fingerprint = fingerprint or data_fingerprint(data)
    done = finished_row(row, cfg, out_dir, fingerprint)
    if done is not None:
        return done
    t0 = time.perf_counter()
    cfg_row = row_config(cfg, row)
    run_dir = row_dir(out_dir, cfg, row)
    device = resolve_device(cfg.device)
    images = (data.train_images, data.test_images)
    if row.kind == "supervised":
        res = train_supervised(cfg_row, run_dir, data, progress=progress)
        if not distributed.is_main():
            return _result_of_main(row, cfg, out_dir, fingerprint)
        checkpoint, epochs = res.checkpoint, len(res.metrics)
        train, test = (extract_features(res.model.forward_features, x, cfg.eval_batch_size, device)
                       for x in images)  # (N, 64), (M, 64)
        mean, std, accs = res.test_acc, None, [res.test_acc]
    else:
        if row.kind == "random":
            model, checkpoint, epochs = random_weights_model(row.tower, cfg.seed).to(device), None, 0
        else:
            res = pretrain(cfg_row, run_dir, data=data, progress=progress)
            model, checkpoint, epochs = res.model, res.checkpoint, res.metrics[-1]["epoch"]
            if epochs != cfg.epochs:
                raise ValueError(f"{run_dir} holds {epochs} epochs, more than the {cfg.epochs} asked; "
                                 "use another output directory or ask for that many epochs")
        if not distributed.is_main():
            return _result_of_main(row, cfg, out_dir, fingerprint)
        train, test = (extract_features(model, x, cfg.eval_batch_size, device, progress)
                       for x in images)  # (N, dim), (M, dim)
        ev = _probe(train, test, data, cfg_row)
        mean, std, accs = ev.mean, ev.std, ev.accs
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = {
        **_spec(row, cfg_row, checkpoint, fingerprint),
        # the keys `python -m vwe linear-eval` writes, so both files read alike
        "model": row.key, "dataset": data.name, "profile": cfg.profile, "seeds": list(cfg.probe_seeds),
        "probe_epochs": cfg.probe_epochs, "epochs": epochs, "mean": mean, "std": std, "accs": accs,
        "knn": _knn(train, test, data), "seconds": round(time.perf_counter() - t0, 1),
        "provenance": provenance(device),
    }
    text = json.dumps(saved, indent=2) + "\n"
    atomic_write(run_dir / RESULTS_FILE, lambda tmp: tmp.write_text(text))
    distributed.barrier()  # the other processes wait in _result_of_main
    return _result(row, saved, False, run_dir)


def _result_of_main(row: Row, cfg: Config, out_dir: str | Path, fingerprint: str) -> RowResult:
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


def table_header(cfg: Config, data: Dataset, device: torch.device, fingerprint: str) -> dict:
    """What the numbers came from: data, protocol, hardware, software, repository revision."""
    prov = provenance(device)
    return {
        "dataset": data.name, "n_train": len(data.train_labels), "n_test": len(data.test_labels),
        "data_sha256": fingerprint,
        "classes": data.num_classes, "profile": cfg.profile, "device": prov["device"],
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
        "probe_epochs": cfg.probe_epochs, "probe_seeds": list(cfg.probe_seeds), "knn": KNN,
        "torch": prov["torch"], "python": platform.python_version(), "git": prov["git"],
        "time": prov["time"],
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
    cfg, data = resolve_data(cfg, data)
    out_dir = Path(out_dir)
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(data)
    header = table_header(cfg, data, resolve_device(cfg.device), fingerprint)
    say = print if distributed.is_main() else lambda *args, **kwargs: None
    say(f"Table 1 | {data.describe()} | profile {cfg.profile} | device {header['device']} | "
          f"{cfg.epochs} epochs, probe {cfg.probe_epochs} epochs x seeds {list(cfg.probe_seeds)} "
          f"| {len(selected)} rows -> {out_dir}", flush=True)

    # The remaining time is extrapolated from the rows run so far, per epoch x training image still
    # to train (a resumed row has fewer epochs left).
    def work(row: Row) -> int:
        if row.kind == "random":
            return 0
        checkpoints = list_checkpoints(row_dir(out_dir, cfg, row))
        done = int(CHECKPOINT_RE.match(checkpoints[0].name).group(1)) if checkpoints else 0
        return max(cfg.epochs - done, 0) * len(data.train_labels)

    results: dict[str, RowResult] = {}
    spent, done_work = 0.0, 0
    for i, row in enumerate(selected):
        t0, todo = time.perf_counter(), work(row)
        res = run_row(row, cfg, data, out_dir, progress, fingerprint)
        results[row.key] = res
        if res.skipped:
            line = f"[{i + 1}/{len(selected)}] {row.key}: finished result reused"
        else:
            spent += time.perf_counter() - t0
            done_work += todo
            line = f"[{i + 1}/{len(selected)}] {row.key}: done in {_duration(time.perf_counter() - t0)}"
        left = [r for r in selected[i + 1:] if finished_row(r, cfg, out_dir, fingerprint) is None]
        if left and done_work:
            line += f"; about {_duration(spent / done_work * sum(work(r) for r in left))} left"
        std = "" if res.std is None else f" ± {res.std:.2f}"
        say(f"{line} | {res.mean:.2f}{std} % (paper {res.paper:.2f} on CIFAR-100), "
              f"kNN {res.knn:.2f} %", flush=True)
    for row in ROWS:
        if row.key not in results and (done := finished_row(row, cfg, out_dir, fingerprint)) is not None:
            results[row.key] = done
    ordered = [results[r.key] for r in ROWS if r.key in results]
    with distributed.main_first():  # the others return once the files are there
        files = (write_results(header, ordered, out_dir) if distributed.is_main()
                 else {ext: out_dir / f"results.{ext}" for ext in ("json", "csv", "md", "png")})
    return Table(header, ordered, files)


# ----------------------------------------------------------------------------- results files


CSV_COLUMNS = ("key", "method", "backbone", "augmentation", "epochs", "mean", "std", "accs", "knn",
               "paper", "difference", "seconds")


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def results_markdown(header: dict, rows: Sequence[RowResult]) -> str:
    """The table as Markdown: a header line saying what ran, the rows, and how to read them."""
    h = header
    lines = [
        f"# Table 1, reproduced: linear evaluation on {h['dataset']}",
        "",
        f"dataset **{h['dataset']}** ({h['n_train']} train / {h['n_test']} test images, "
        f"{h['classes']} classes, sha256 `{h['data_sha256'][:12]}`) · profile `{h['profile']}` · "
        f"device {h['device']} · "
        f"{h['epochs']} pretraining epochs (batch {h['batch_size']}, lr {h['lr']}) · linear probe "
        f"{h['probe_epochs']} epochs, seeds {', '.join(map(str, h['probe_seeds']))} · "
        f"torch {h['torch']} · python {h['python']} · revision `{h['git']}` · {h['time']}",
        "",
        "| Method | Backbone | Augmentation | Epochs | Ours, top-1 % | kNN % | Paper (CIFAR-100) | "
        "Difference |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ours = _num(r.mean) + ("" if r.std is None else f" ± {r.std:.2f}")
        diff = "—" if r.difference is None else f"{r.difference:+.2f}"
        lines.append(f"| {r.method} | {r.backbone} | {r.augmentation} | {r.epochs} | {ours} | "
                     f"{_num(r.knn)} | {r.paper:.2f} | {diff} |")
    lines += [
        "",
        "Ours: linear-probe test accuracy, mean ± sample std over the probe seeds (the pretrained "
        "model is one run; the seeds vary the probe only). Supervised: test accuracy of one run, "
        "SGD recipe of [24]. kNN: k = 20, cosine, temperature 0.07, on the same frozen features "
        "(supervised: its 64-d tower features).",
    ]
    if h["dataset"] != PAPER_DATASET:
        lines.append(f"The paper's numbers are CIFAR-100 accuracies, shown for reference: on "
                     f"{h['dataset']} no difference is computed.")
    return "\n".join(lines) + "\n"


def write_results(header: dict, rows: Sequence[RowResult], out_dir: str | Path) -> dict[str, Path]:
    """results.json, results.csv, results.md and results.png in `out_dir`; returns their paths."""
    if not rows:
        raise ValueError("no row has a result to write; run at least one row")
    out_dir = Path(out_dir)
    files = {ext: out_dir / f"results.{ext}" for ext in ("json", "csv", "md", "png")}
    payload = {"header": header, "rows": [dataclasses.asdict(r) for r in rows]}
    text = json.dumps(payload, indent=2) + "\n"
    atomic_write(files["json"], lambda tmp: tmp.write_text(text))

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            w.writeheader()
            for r in rows:
                d = dataclasses.asdict(r)
                w.writerow({k: " ".join(f"{a:.2f}" for a in d[k]) if k == "accs" else d[k]
                            for k in CSV_COLUMNS})

    atomic_write(files["csv"], write_csv)
    md = results_markdown(header, rows)
    atomic_write(files["md"], lambda tmp: tmp.write_text(md))

    import matplotlib.pyplot as plt

    from vwe.plots import results_bar_chart, save

    fig = results_bar_chart(
        [{"method": r.label, "ours_mean": r.mean, "ours_std": r.std, "paper": r.paper} for r in rows],
        title=f"ours on {header['dataset']} ({header['profile']}) vs the paper on CIFAR-100",
    )
    save(fig, files["png"])
    plt.close(fig)
    return files
