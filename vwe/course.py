"""The course's entry points: `start` (what every notebook does first), `load_models` (the two
pretrained autoencoders notebooks 05-07 study) and `run_all` (every notebook executed in order by
papermill, which is `make run-all`).

The repository ships compact weights of both autoencoders pretrained on real CIFAR-100
(`checkpoints/`, listed with their sha256, data and scale in `checkpoints/manifest.json`): on
CIFAR-100 notebooks 05-07 study those by default, since the few minutes of pretraining a 2-core CPU
affords in notebook 04 are too little for the method to show (docs/results.md).

    python -m vwe.course --profile cpu --dataset auto     # notebooks -> runs/cpu/NN_name.ipynb
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vwe.config import PROFILES, Config, get_config, resolve
from vwe.data import Dataset, absolute_dataset_name, dataset_type, describe, full_batches, project_dir
from vwe.engine import epochs_reached, steps_done
from vwe.files import atomic_write, write_json
from vwe.models import MODEL_LABELS, Autoencoder
from vwe.pretrain import MANIFEST, load_pretrained
from vwe.results import measured_on
from vwe.runs import latest_checkpoint, profile_dir

NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"  # 01_patching.ipynb ...; a new NN_name notebook joins run_all
# A kernel logs to the stderr it shares with run-all: at every start ipykernel warns that its ZeroMQ
# sockets on 127.0.0.1 are not encrypted, and at shutdown jupyter_client sends SIGINT before the
# shutdown request, which ipykernel can log as "KeyboardInterrupt caught in kernel" at ERROR. Neither
# is a problem of the notebook. A cell's errors, warnings and prints reach the executed notebook (and
# papermill raises on an error) whatever this level: only the kernel application's own log goes.
QUIET_KERNEL = ["--IPKernelApp.log_level=CRITICAL"]


@dataclass
class Session:
    cfg: Config
    device: torch.device
    run_dir: Path  # runs/<profile> unless given: checkpoints, figures, results
    data: Dataset

    @property
    def figures(self) -> Path:
        path = self.run_dir / "figures"
        path.mkdir(parents=True, exist_ok=True)
        return path


def start(profile: str = "cpu", dataset: str | None = None, device: str | None = None,
          run_dir: str | Path | None = None, **overrides) -> Session:
    """Config from the notebook's `parameters` cell, the dataset loaded, and one line saying what runs.

    `dataset` and `device` of None keep the profile's; `run_dir` of None is `runs/<profile>` in the
    repository. The data folder is $VWE_DATA_DIR, else `data/` in the repository.
    """
    cfg, data, dev = resolve(get_config(profile, dataset=dataset, device=device, **overrides))
    run_dir = Path(run_dir) if run_dir is not None else profile_dir(cfg.profile)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"profile {cfg.profile} | dataset {data.name} | device {dev} | run dir {run_dir}")
    # Which images, how many, and their archive md5 (flagged when not the official archive) or folder
    # fingerprint: every notebook's header.
    print(f"data: {describe(data.provenance())}")
    return Session(cfg, dev, run_dir, data)


# ----------------------------------------------------------------------------- the pretrained models

MODEL_NAMES = {label: model for model, label in MODEL_LABELS.items()}  # notebook name -> Config.model
SHIPPED_DIR = "checkpoints"  # in the repository: compact CIFAR-100 weights and their manifest
MODEL_SOURCES = ("auto", "shipped", "run")


@dataclass
class Pretrained:
    """One pretrained autoencoder as the notebooks use it."""

    model: Autoencoder  # eval mode, on the session's device
    config: Config  # the config it was trained with
    metrics: list[dict]  # per epoch, as pretrain logged them (held-out loss on the data it ran on)
    source: str  # where it came from, in words (file, data, scale)


def shipped_manifest(folder: str | Path | None = None) -> dict:
    """checkpoints/manifest.json: {"models": {model: {"file", "sha256", "config", "metrics", ...}}, ...}."""
    path = Path(folder or project_dir() / SHIPPED_DIR) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no shipped checkpoints: {path} is missing (a clone of the repository "
                                "has it); use models='run' to study notebook 04's runs instead")
    return json.loads(path.read_text())


def shipped_steps(entry: dict) -> int:
    """The steps a shipped model trained, from its manifest entry's metrics (`vwe.engine.steps_done`), or
    from the checkpoint dict `vwe.pretrain.load_weights` makes of it."""
    return steps_done(entry["metrics"], full_batches(entry["data"]["n_train"], entry["config"]["batch_size"]))


def load_shipped(model: str, device: torch.device | str = "cpu", folder: str | Path | None = None
                 ) -> Pretrained:
    """A shipped autoencoder ("context" or "patch"): its file's sha256 checked against the manifest,
    loaded with `weights_only=True`, its fp16 weights back in fp32, in eval mode (`load_pretrained`)."""
    folder = Path(folder or project_dir() / SHIPPED_DIR)
    manifest = shipped_manifest(folder)
    entry = manifest["models"].get(model)
    if entry is None:
        raise ValueError(f"no shipped {model!r} model; the manifest lists {sorted(manifest['models'])}")
    net, cfg, state = load_pretrained(folder / entry["file"], device)
    data, metrics = state["data"], state["metrics"]
    steps = shipped_steps(state)  # the state holds the manifest entry's config, data and metrics
    recipe = f"the {cfg.profile} recipe" + (f" ({cfg.encoding} encoding)" if cfg.model == "context" else "")
    source = (f"shipped {entry['file']}: {cfg.run_name} pretrained with {recipe} on "
              f"{data['dataset']} ({data['n_train']} training images, archive md5 {data['archive_md5']}), "
              f"{epochs_reached(metrics):g} epochs of batch {cfg.batch_text}, lr {cfg.lr}: {steps:,} steps, "
              f"{steps * cfg.pairs_per_step:,} pairs")
    return Pretrained(net, cfg, state["metrics"], source)


def export_shipped(run_dir: str | Path, folder: str | Path | None = None, data: dict | None = None) -> dict:
    """Write the newest checkpoint of `run_dir` as compact weights for the repository: the model's
    state in fp16 (half the bytes; the notebooks load it back in fp32), no optimizer, plus its
    manifest entry (sha256, config, data, metrics, provenance). `data` is the run's
    `Dataset.provenance()` where its checkpoint predates recording it. Returns the entry."""
    folder = Path(folder or project_dir() / SHIPPED_DIR)
    found = latest_checkpoint(run_dir)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir} to export")
    path, state = found
    cfg = Config.from_dict(state["config"])
    buf = io.BytesIO()
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}, buf)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{cfg.dataset}-{cfg.run_name}.pt"
    atomic_write(folder / name, lambda tmp: tmp.write_bytes(buf.getvalue()))
    entry = {"file": name, "sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "config": state["config"],
             "data": data or state.get("data") or {"dataset": cfg.dataset, "n_train": cfg.n_train,
                                                   "archive_md5": None},
             "metrics": state["metrics"], "provenance": state.get("provenance"), "from": path.name}
    try:
        manifest = shipped_manifest(folder)
    except FileNotFoundError:
        manifest = {"about": "compact weights of the course's autoencoders (fp16 state dicts), "
                             "loaded by vwe.course.load_shipped", "models": {}}
    manifest["models"][cfg.model] = entry
    write_json(folder / MANIFEST, manifest)
    return entry


def load_models(s: Session, models: str = "auto") -> dict[str, Pretrained]:
    """The two autoencoders notebooks 05-07 study, {"simple AE": ..., "context AE": ...}, in eval mode.

    models="shipped": the CIFAR-100 weights committed in checkpoints/; "run": notebook 04's runs in
    the session's run dir (a clear error naming what makes them when one is missing: nothing is
    trained behind the reader's back); "auto": shipped when the session's data is CIFAR-100, else run.
    """
    if models not in MODEL_SOURCES:
        raise ValueError(f"unknown models {models!r}; choose one of {MODEL_SOURCES}")
    if models == "auto":
        models = "shipped" if s.data.name == "cifar100" else "run"
    if models == "shipped" and s.data.name != "cifar100":
        raise ValueError(f"the shipped models were pretrained on CIFAR-100, this session's data is "
                         f"{s.data.name}: use models='run' (notebook 04's runs) or dataset='cifar100'")
    loaded = {}
    for name, model in MODEL_NAMES.items():
        if models == "shipped":
            loaded[name] = load_shipped(model, s.device)
            continue
        run_dir = s.run_dir / s.cfg.replace(model=model).run_name
        try:
            net, trained, state = load_pretrained(run_dir, s.device)
        except FileNotFoundError as e:  # no run directory, or one without a checkpoint
            raise FileNotFoundError(
                f"no pretrained {name} in {run_dir}: run notebook 04 first with the same parameters "
                f"(or `make run-all PROFILE={s.cfg.profile}`, or `python -m vwe pretrain --profile "
                f"{s.cfg.profile} --model {model} --run-dir {run_dir}`)") from e
        loaded[name] = Pretrained(net, trained, state["metrics"],
                                  f"notebook 04's run {run_dir.name} ({len(state['metrics'])} epochs)")
    return loaded


# ----------------------------------------------------------------------------- run_all


class NotebookError(RuntimeError):
    """A notebook failed under papermill; the message names the executed copy and the failing cell."""


def find_notebooks(folder: str | Path | None = None, names: Sequence[str] | None = None) -> list[Path]:
    """The course's notebooks `NN_name.ipynb` in `folder` (default: notebooks/), in order.

    `names` keeps a subset, each given as "03", "03_model", "03_model.ipynb" or the path of any
    notebook file; the result is sorted by file name, which is the course order.
    """
    folder = Path(folder) if folder is not None else project_dir() / "notebooks"
    found = sorted(folder.glob(NOTEBOOK_PATTERN))
    if names is None:
        if not found:
            raise FileNotFoundError(f"no notebooks matching {NOTEBOOK_PATTERN} in {folder}")
        return found
    chosen = []
    for name in names:
        if Path(name).suffix == ".ipynb" and Path(name).is_file():
            match = [Path(name)]
        else:
            stem = Path(name).stem
            match = [p for p in found if p.stem == stem or p.stem[:2] == stem]
        if not match:
            valid = ", ".join(p.stem for p in found) or "none found"
            raise ValueError(f"no notebook {name!r} in {folder}; choose from {valid} (or their numbers), "
                             "or give the path of an .ipynb file")
        chosen += [p for p in match if p not in chosen]
    return sorted(chosen, key=lambda p: p.name)


def _cell_error(output: Path, exc: Exception) -> str:
    """The failing cell's error as papermill reports it: `ename: evalue` and the cell's number."""
    ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", str(exc))
    cell = getattr(exc, "exec_count", None)
    where = f"cell [{cell}]" if cell is not None else "a cell"
    return f"{output}: {where} raised {ename}: {evalue}"


def run_all(profile: str = "cpu", dataset: str | None = None, device: str | None = None,
            out_dir: str | Path | None = None, notebooks: Sequence[str] | None = None,
            progress: bool = False) -> list[dict]:
    """Execute every notebook in order with papermill; executed copies go to `out_dir`/NN_name.ipynb.

    The notebooks get the parameters profile, dataset, device and run_dir = `out_dir` (default
    `runs/<profile>`), so later notebooks reuse the checkpoints of earlier ones. Prints one line per
    notebook and a summary table; returns [{"notebook", "seconds", "status"}]. The first failing
    notebook stops the run (after the summary) with NotebookError naming the executed copy and the
    failing cell's error.
    """
    import papermill  # the notebooks extra; imported here so that `start` does not need it

    get_config(profile, dataset=dataset, device=device)  # bad parameters fail before any kernel starts
    if dataset is not None:
        dataset = absolute_dataset_name(dataset)  # the kernels run in notebooks/
    paths = find_notebooks(names=notebooks)
    out_dir = Path(out_dir) if out_dir is not None else profile_dir(profile)
    out_dir = out_dir.resolve()  # the kernels run in notebooks/, so a relative path would move
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"profile": profile, "dataset": dataset, "device": device, "run_dir": str(out_dir)}
    print(f"running {len(paths)} notebooks | profile {profile} | dataset {dataset or 'profile default'}"
          f" | out dir {out_dir}", flush=True)
    timings = []
    for path in paths:
        output = out_dir / path.name
        t0 = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(path), str(output), parameters=params, kernel_name="python3",
                cwd=str(path.parent),  # where JupyterLab would start the kernel
                progress_bar=progress, log_output=False, extra_arguments=QUIET_KERNEL,
            )
        except papermill.PapermillExecutionError as e:
            timings.append({"notebook": path.stem, "seconds": round(time.perf_counter() - t0, 1),
                            "status": "FAILED"})
            _print_summary(timings, out_dir)
            raise NotebookError(_cell_error(output, e)) from e
        timings.append({"notebook": path.stem, "seconds": round(time.perf_counter() - t0, 1),
                        "status": "ok"})
        print(f"{path.stem:<28} {timings[-1]['seconds']:8.1f} s", flush=True)
    _print_summary(timings, out_dir)
    _write_timings(timings, get_config(profile, dataset=dataset, device=device), out_dir)
    return timings


def _write_timings(timings: list[dict], cfg: Config, out_dir: Path) -> None:
    """out_dir/course.json: each notebook's wall time, with the data, machine, revision, date and command
    (a results file: committed as docs/results/course-<profile>.json, the README's course table reads it)."""
    _, data, device = resolve(cfg)  # the notebooks' data, from the cache they left
    header = {"kind": "course",
              "title": f"The course on the `{cfg.profile}` profile: each notebook's wall time",
              "profile": cfg.profile, "data": data.provenance(), **measured_on(device)}
    write_json(out_dir / "course.json", {"header": header, "notebooks": timings})


def _print_summary(timings: list[dict], out_dir: Path) -> None:
    width = max(len(t["notebook"]) for t in timings) + 2
    print(f"\n{'notebook':<{width}} {'wall time':>10}  status\n{'-' * (width + 19)}")
    for t in timings:
        print(f"{t['notebook']:<{width}} {t['seconds']:8.1f} s  {t['status']}")
    total = sum(t["seconds"] for t in timings)
    print(f"{'total':<{width}} {total:8.1f} s\nexecuted notebooks, figures and results in {out_dir}",
          flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vwe.course",
        description="Execute the course notebooks in order with papermill (make run-all).",
    )
    parser.add_argument("--profile", default="cpu", choices=tuple(PROFILES),
                        help="smoke (seconds), cpu (a laptop, default), paper (the text, one GPU) or "
                             "author (the author's code, one GPU)")
    parser.add_argument("--dataset", type=dataset_type, metavar="DATASET",
                        help="auto | cifar10 | cifar100 | shapes | folder:PATH (default: the profile's); "
                             "auto is CIFAR-100 when present, else Shapes")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the profile's)")
    parser.add_argument("--out-dir", type=Path,
                        help="executed notebooks, checkpoints, figures, results (default: runs/<profile>)")
    parser.add_argument("--notebooks", nargs="+", metavar="NN",
                        help="run only these, e.g. 03 04 or 05_linear_evaluation (default: all)")
    parser.add_argument("--progress", action="store_true", help="papermill's per-cell progress bar")
    a = parser.parse_args(argv)
    try:
        run_all(a.profile, a.dataset, a.device, a.out_dir, a.notebooks, a.progress)
    except (NotebookError, ValueError, FileNotFoundError) as e:
        print(f"run-all stopped: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
