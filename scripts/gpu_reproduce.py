"""One prepared reproduction for one CUDA GPU and a job of at most 10 minutes: CIFAR-100, the steps'
speed, time-boxed pretraining and the probes, every result in one folder of at most 8 files.

    python scripts/gpu_reproduce.py --parts 'upload/cifar-100-python.tar.gz.part-*' --md5 MD5 --out OUT
    python scripts/gpu_reproduce.py --dry-run --device cpu --out /tmp/rehearsal     (Shapes, seconds)

The parts, most informative first, each inside the total budget (--minutes, default 8):
  1. data: the archive joined from its parts (`split -b 60M` pieces: a folder or a glob, name order)
     and its md5 checked (the official one, or --md5 / $VWE_CIFAR100_MD5);
  2. timings: the author's step (8 images x 4 views = 512 pairs, CUDA graph, `author` profile) and
     the text's (512 images = 8 192 pairs, `paper` profile), `benchmarks/throughput.py`'s `bench_step`;
  3. the context autoencoder, the author's recipe, time-boxed (`Config.minutes`) and checkpointed;
  4. the simple autoencoder (model `patch`), the same recipe and box;
  5. the probes, `vwe.table.model_rows`': the author's evaluation (tower 1 024-d, raw, 10 epochs) and the
     standardised probe over 3 seeds on all test images, beside the random-weights and pixel rows;
  6. if time is left: the context autoencoder with the text's recipe, as far as the box allows, probed.
The output folder is rewritten (atomically) after every part, so a job cut short still returns every
finished part: results.json (`write_results`' payload), reproduce.json (plan, timings, per-epoch
metrics, checkpoints), manifest.json with the two autoencoders' fp16 weights (`vwe.course.export_shipped`:
sha256, config, metrics) and each run's full checkpoint (`<run>.checkpoint.pt`; copy it back into a
run directory under the name reproduce.json gives to resume it with the same recipe).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from vwe import results, table
from vwe.config import Config, get_config, resolve
from vwe.course import export_shipped
from vwe.data.cifar import CIFAR100_ARCHIVE, CIFAR100_MD5, CIFAR100_MD5_ENV
from vwe.data.dataset import data_dir, project_dir
from vwe.engine import epochs_reached
from vwe.files import atomic_write, file_digest, write_json
from vwe.pretrain import pretrain
from vwe.runs import list_checkpoints

MAX_FILES, MAX_BYTES = 8, 16 * 2**20  # what one job brings back
# Shares of the total budget. The data, the timings and the probes run to their end (their time is
# measured, not boxed); the two author-recipe runs are boxed, and the text's recipe gets what is left
# after a reserve for its probes.
SHARES = {"context": 0.28, "patch": 0.28, "probes": 0.15, "paper probes": 0.06, "end": 0.06}
MIN_BOX = 0.01  # minutes: a box never shorter (a boxed run trains at least one step anyway)
DRY_MINUTES = 0.3  # --dry-run's budget: every part, the text's recipe included, in seconds
MIN_PAPER_SHARE = 0.06  # of the budget, below which the text's recipe is skipped: too few steps to say much
TIMED = {"cuda": {"steps": 100, "repeats": 3, "warmup": 3}, "cpu": {"steps": 1, "repeats": 1, "warmup": 0}}


def load_throughput():
    """benchmarks/throughput.py, which times a step: `bench_step(variant, BenchConfig, images)`."""
    path = project_dir() / "benchmarks" / "throughput.py"
    spec = importlib.util.spec_from_file_location("throughput", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["throughput"] = module  # its dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- 1. data


def join_parts(parts: str, archive: Path) -> None:
    """`archive` from the pieces `split` made: a folder (its `*.part-*` files) or a glob, in name order."""
    folder = Path(parts)
    pieces = sorted(folder.glob("*.part-*")) if folder.is_dir() else sorted(map(Path, glob.glob(parts)))
    if not pieces:
        raise SystemExit(f"error: no parts in {parts!r} (a folder of *.part-* files or a glob)")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, out, 2**24)

    archive.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(archive, write)
    print(f"joined {len(pieces)} parts ({', '.join(p.name for p in pieces)}) into {archive}", flush=True)


def check_archive(archive: Path, md5: str | None) -> str:
    """The archive's md5 if it is the official one or the one named (--md5, else $VWE_CIFAR100_MD5)."""
    accepted = {CIFAR100_MD5, *filter(None, [md5, os.environ.get(CIFAR100_MD5_ENV)])}
    found = file_digest(archive, "md5")
    if found not in accepted:
        raise SystemExit(f"error: {archive} has md5 {found}, none of {sorted(accepted)}; give the md5 of "
                         "your verified copy with --md5")
    return found


# ----------------------------------------------------------------------------- the output folder


class Output:
    """The output folder: the files a job brings back, rewritten after every part (atomically)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.record: dict = {"parts": {}}

    def write_json(self, name: str, payload: dict) -> None:
        write_json(self.folder / name, payload)

    def part(self, name: str, seconds: float, **what) -> None:
        self.record["parts"][name] = {"seconds": round(seconds, 1), **what}
        self.write_json("reproduce.json", self.record)
        self.check()

    def copy_checkpoint(self, label: str, run_dir: Path) -> dict:
        """The run's newest checkpoint as `<label>.checkpoint.pt`, and the name to resume it under;
        left behind (and said so) when it is larger than a job brings back."""
        newest = list_checkpoints(run_dir)[0]
        if newest.stat().st_size > MAX_BYTES:
            print(f"{label}: {newest.name} is {newest.stat().st_size / 2**20:.1f} MiB, over 16 MiB: not "
                  "copied", flush=True)
            return {"file": None, "resume_as": newest.name, "bytes": newest.stat().st_size}
        target = self.folder / f"{label}.checkpoint.pt"
        atomic_write(target, lambda tmp: shutil.copyfile(newest, tmp))
        return {"file": target.name, "resume_as": newest.name, "sha256": file_digest(target)}

    def check(self) -> None:
        """SystemExit when the folder holds more files, or larger ones, than a job brings back."""
        files = [p for p in self.folder.iterdir() if p.is_file()]
        big = [f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in files
               if p.stat().st_size > MAX_BYTES]
        if len(files) > MAX_FILES or big:
            raise SystemExit(f"error: {self.folder} holds {len(files)} files (at most {MAX_FILES}) "
                             f"and files over 16 MiB: {big}")


# ----------------------------------------------------------------------------- the plan


def recipes(a: argparse.Namespace) -> dict[str, Config]:
    """The three runs' configs, without their time boxes: the author's recipe for both autoencoders
    (the simple one with the shared tower, its only form) and the text's for the context one."""
    sizes = dict(device=a.device, dataset="cifar100")
    if a.dry_run:  # Shapes, a few dozen images, the Conv4 tower: every part in seconds on a CPU
        sizes = dict(device=a.device, dataset="shapes", n_train=64, n_test=32, eval_batch_size=64,
                     tower="conv4")
    author = get_config("author", **sizes, probe_norm="standard")
    paper = get_config("paper", **sizes, probe_norm="standard", probe_epochs=author.probe_epochs)
    if a.dry_run:
        paper = paper.replace(batch_size=16)
    return {"context": author, "patch": author.replace(model="patch", encoding="shared"),
            "paper": paper}


def plan_text(cfgs: dict[str, Config], n_train: int, budget: dict[str, float], total: float,
              step_ms: dict[str, float] | None = None) -> str:
    """The parts with their minutes, and once the steps are timed (`step_ms` per run) the steps and
    pairs each time box buys."""
    lines = [f"plan: {total:g} minutes in all; data and step timings first (not boxed)"]
    for name, cfg in cfgs.items():
        line = (f"  {name:8s} {cfg.run_name} ({cfg.profile} recipe): batch {cfg.batch_text}, "
                f"{n_train // cfg.batch_size:,} steps an epoch; time box {budget[name]:.2f} min")
        if step_ms:
            steps = int(budget[name] * 60_000 / step_ms[name])
            line += f" = about {steps:,} steps, {steps * cfg.pairs_per_step:,} pairs"
        lines.append(line)
    probe = cfgs["context"]
    lines.append(f"  probes   about {budget['probes']:.2f} min (+ {budget['paper probes']:.2f} for the "
                 f"text's recipe): the author's evaluation and the standardised probe, {probe.probe_epochs} "
                 f"epochs, seeds {list(probe.probe_seeds)}; {budget['end']:.2f} min left for the files")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", help="the archive's pieces: a folder of *.part-* files or a glob")
    p.add_argument("--md5", help=f"the md5 of a verified copy (besides the official {CIFAR100_MD5})")
    p.add_argument("--minutes", type=float, help=f"the total budget (default 8; --dry-run {DRY_MINUTES})")
    p.add_argument("--out", type=Path, default=project_dir() / "runs" / "gpu-reproduce" / "out")
    p.add_argument("--work", type=Path, help="run directories (default: a temporary folder)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true", help="Shapes, tiny sizes, seconds per part")
    a = p.parse_args(argv)
    total = a.minutes or (DRY_MINUTES if a.dry_run else 8.0)
    start = time.monotonic()

    def left() -> float:
        return total - (time.monotonic() - start) / 60

    out = Output(a.out)
    work = a.work or Path(tempfile.mkdtemp(prefix="vwe-reproduce-"))
    cfgs = recipes(a)
    budget = {k: v * total for k, v in SHARES.items()}

    # 1. data
    t0 = time.perf_counter()
    md5 = None
    if not a.dry_run:
        archive = data_dir() / CIFAR100_ARCHIVE
        if a.parts:
            join_parts(a.parts, archive)
        md5 = check_archive(archive, a.md5)
    # the loader checks the archive against the md5 found above (a verified copy's, or the official one)
    cfg, data, device = resolve(cfgs["context"], **({} if md5 is None else {"cifar100_md5": md5}))
    n_train = len(data.train_labels)
    budget["paper"] = total - sum(budget.values())  # at most: what the data and timings leave of it
    print(plan_text(cfgs, n_train, budget, total), flush=True)
    out.record.update(plan={"minutes": total, "budget": budget, "device": str(device),
                            "recipes": {k: c.to_dict() for k, c in cfgs.items()}})
    out.part("data", time.perf_counter() - t0, dataset=data.provenance(), archive_md5=md5)

    # 2. the two steps' speed
    t0 = time.perf_counter()
    throughput = load_throughput()
    timed = TIMED["cuda" if device.type == "cuda" else "cpu"]
    images = throughput.random_images(max(cfgs["paper"].batch_size * 4, 64), device)
    bench = throughput.BenchConfig(device.type, batch_size=cfgs["paper"].batch_size, images=len(images),
                                   eval_train=0, eval_test=0, eval_batch_size=0, probe_epochs=0, threads=None,
                                   variants=(), **timed)
    timings = {name: throughput.bench_step(variant, bench, images)
               for name, variant in (("author step", "author-slots"), ("text step", "fast"))}
    for name, t in timings.items():
        print(f"{name}: {t['pairs_per_step']} pairs a step, {t['step_ms']:.2f} ms a step, "
              f"{t['images_per_s']:,.0f} images/s, {t['pairs_per_s']:,.0f} pairs/s "
              f"(warm-up {t['warmup_s']:.1f} s)", flush=True)
    out.part("timings", time.perf_counter() - t0, timings=timings)
    step_ms = {"context": timings["author step"]["step_ms"], "patch": timings["author step"]["step_ms"],
               "paper": timings["text step"]["step_ms"]}
    budget["paper"] = max(left() - sum(v for k, v in budget.items() if k != "paper"), 0.0)
    print(plan_text(cfgs, n_train, budget, total, step_ms), flush=True)

    # 3, 4. the author's recipe, both autoencoders, time-boxed
    trained = {}
    for name in ("context", "patch"):
        t0 = time.perf_counter()
        reserve = budget["probes"] + (budget["patch"] if name == "context" else 0.0)
        minutes = max(min(budget[name], left() - reserve), MIN_BOX)
        res = pretrain(cfgs[name].replace(minutes=minutes), work / name, data, device, progress=False)
        trained[name] = res
        entry = export_shipped(res.run_dir, out.folder, data.provenance())
        print(f"{name}: {epochs_reached(res.metrics)} epochs in {minutes:.2f} min, held-out loss "
              f"{res.metrics[-1]['test_loss']:.5f}; fp16 {entry['file']} sha256 {entry['sha256'][:12]}",
              flush=True)
        out.part(name, time.perf_counter() - t0, minutes=minutes, metrics=res.metrics,
                 checkpoint=out.copy_checkpoint(name, res.run_dir),
                 fp16={"file": entry["file"], "sha256": entry["sha256"]})

    # 5. the probes of both, beside the untrained baselines
    t0 = time.perf_counter()
    probe_cfg = cfgs["context"]
    header = table.table_header(probe_cfg, data, device, table.data_fingerprint(data))
    # the epochs each time box reached (fractional when it stopped inside one)
    reached = {k: epochs_reached(r.metrics) for k, r in trained.items()}
    header.update(profile=f"gpu-reproduce ({probe_cfg.profile} recipe, time-boxed)",
                  epochs=reached["context"], epochs_reached=reached)
    epochs = {"patch-resnet32-aug": reached["patch"], "context-resnet32-aug": reached["context"]}
    features = table.model_features(trained["patch"].model, trained["context"].model, data, probe_cfg, device)
    rows = table.model_rows(features, data, probe_cfg, epochs, work)
    write_results(out, header, rows)
    out.part("probes", time.perf_counter() - t0)

    # 6. the text's recipe, if time is left
    minutes = max(left() - budget["paper probes"] - budget["end"], MIN_BOX)
    if minutes < MIN_PAPER_SHARE * total and not a.dry_run:  # the rehearsal runs every part
        print(f"the text's recipe skipped: {left():.2f} min left", flush=True)
    else:
        t0 = time.perf_counter()
        res = pretrain(cfgs["paper"].replace(minutes=minutes), work / "paper", data, device, progress=False)
        paper_row = next(r for r in table.ROWS if r.key == "context-resnet32-aug")
        features = table.row_features(paper_row, data, probe_cfg, device, res.model, progress=False)
        evaluation = table.evaluate_features(features, data, probe_cfg)
        row = table.row_from_evaluation(paper_row, evaluation, data.name, epochs_reached(res.metrics),
                                        time.perf_counter() - t0, work / "paper")
        rows.append(dataclasses.replace(row, key="context-resnet32-aug-text-recipe",
                                        method="Context patch autoencoder (the text's recipe)"))
        header["epochs_reached"]["paper"] = epochs_reached(res.metrics)
        write_results(out, header, rows)
        out.part("paper", time.perf_counter() - t0, minutes=minutes, metrics=res.metrics,
                 checkpoint=out.copy_checkpoint("paper", res.run_dir))

    print(results.results_markdown(header, rows))
    print(f"{(time.monotonic() - start) / 60:.2f} min in all; files in {out.folder}: "
          + ", ".join(sorted(p.name for p in out.folder.iterdir())), flush=True)
    return out.folder


def write_results(out: Output, header: dict, rows: list) -> None:
    """The results file (`vwe.results.results_json`) into the output folder; no csv, md or png: the
    folder's files are counted, and the docs render from the JSON."""
    text = results.results_json(header, rows)
    atomic_write(results.results_files(out.folder)["json"], lambda t: t.write_text(text))
    out.record["results_sha256"] = hashlib.sha256(text.encode()).hexdigest()


if __name__ == "__main__":
    main()
