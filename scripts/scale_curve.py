"""Probe accuracy against pretraining compute, on a validation split: where the method shows.

One run per (profile, model) pretrains on the training images outside a validation split (the last
V training images; the test split is never read) and is probed when it has trained each of `--steps`
optimisation steps, as the author evaluates: the probes train on every image pretraining may see and
are scored on the validation images. The probes are the author's evaluation (the tower's 1 024
features, raw, 10 epochs) and the standardised probe on the same features, each over probe seeds
0, 1, 2, ... until the standard error of its mean is under `--max-se` points (or `--max-seeds`).
Everything resumes: the pretraining from its checkpoint (bit for bit), the points from
`points.jsonl`, so a cut run loses at most the steps since its last checkpoint. `--minutes` is a time
box for the whole command: it checkpoints and stops, and the same command goes on.

    python scripts/scale_curve.py --profile author --model context --steps 200,400,800 --minutes 60
    python scripts/scale_curve.py --export docs/results/compute-curve.json --out runs/ctx --out runs/simple
    python scripts/scale_curve.py --plot docs/scale-curve.png --out docs/results/scale-curve.json \\
        --out docs/results/compute-curve.json   # the figure from every results file

Writes `OUT/<profile>-<model>-<tower>/` (the run) and one JSON line per point to `OUT/points.jsonl`;
with `--weights DIR` each point's model also goes to DIR as the compact fp16 weights the course ships
(`vwe.course.export_shipped`, a manifest with its sha256 and the steps it saw), to commit;
`--export` turns the points into a results file (`vwe.results`: what ran, where, and every point).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from vwe.config import get_config, resolve
from vwe.course import export_shipped
from vwe.data import full_batches, load_dataset
from vwe.engine import steps_done
from vwe.evaluate import extract_features, linear_eval
from vwe.files import atomic_write, write_json
from vwe.models import build_model
from vwe.pretrain import MANIFEST, load_weights, pretrain
from vwe.results import command, machine
from vwe.runs import latest_checkpoint, open_run, provenance

PROBES = {"author": dict(norm="raw", epochs=10), "standard": dict(norm="standard", epochs=30)}
STEPS = ",".join(str(200 * 2**k) for k in range(8))  # 200 ... 25 600 steps: 0.1 M to 13.1 M pairs of 512


def read_points(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def load_points(source: str) -> list[dict]:
    """The points of a run folder's points.jsonl, or of a committed results file (a .json)."""
    path = Path(source)
    if path.suffix == ".json":
        return json.loads(path.read_text())["points"]
    return read_points(path / "points.jsonl")


def standard_error(accs: list[float]) -> float:
    return statistics.stdev(accs) / math.sqrt(len(accs)) if len(accs) > 1 else math.inf


def probe_point(model, data, batch_size: int, max_se: float, max_seeds: int) -> dict:
    """Both probes on the tower's 16 x 64 features of the training and validation images, each over
    seeds 0, 1, 2, ... until its mean's standard error is under `max_se` (at most `max_seeds`)."""
    device = next(model.parameters()).device
    train, val = (extract_features(model, x, batch_size, device, features="tower")
                  for x in (data.train_images, data.test_images))
    out = {}
    for name, probe in PROBES.items():
        accs: list[float] = []
        while len(accs) < 3 or (standard_error(accs) >= max_se and len(accs) < max_seeds):
            ev = linear_eval(train, data.train_labels, val, data.test_labels, seeds=(len(accs),),
                             num_classes=data.num_classes, **probe)
            accs += ev.accs
        out[name] = {"mean": statistics.fmean(accs), "std": statistics.stdev(accs),
                     "se": standard_error(accs), "accs": accs}
    return out


def continue_from_weights(weights: Path, cfg, data, device, run_dir: Path) -> dict | None:
    """A run folder that was lost (a new machine) goes on from the last point's committed weights:
    its model, a fresh Adam and fresh random streams (seeded with the seed plus the steps), at the steps
    those weights had trained, checkpointed so that the curve resumes from there. Returns where it went
    on from ({"steps", "sha256"}), or None when the folder has a checkpoint or there are no weights."""
    if latest_checkpoint(run_dir) is not None or not (weights / MANIFEST).is_file():
        return None
    entry = json.loads((weights / MANIFEST).read_text())["models"].get(cfg.model)
    if entry is None:
        return None
    state = load_weights(weights / entry["file"], device)
    per_epoch = full_batches(len(data.train_labels), cfg.batch_size)
    done = steps_done(state["metrics"], per_epoch)
    model = build_model(**cfg.model_args).to(device)
    model.load_state_dict(state["model"])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    with open_run(run_dir, cfg.run_name, cfg, cfg.identity("pretrain"), data, device) as run:
        run.shuffle_gen.manual_seed(cfg.seed + done)
        run.aug_gen.manual_seed(cfg.seed + 1 + done)
        run.metrics = state["metrics"]
        # the stopped epoch's losses are gone: each step is given their mean, so its mean is kept
        losses = torch.full((done % per_epoch,), state["metrics"][-1]["train_loss"])
        run.save(done, model, optimizer, losses)
    print(f"{run_dir.name}: no checkpoint, so it goes on from {weights / entry['file']} at step {done:,} "
          "with a fresh optimizer and fresh random streams", flush=True)
    return {"steps": done, "sha256": entry["sha256"]}


def run_curve(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    deadline = None if args.minutes is None else time.monotonic() + 60 * args.minutes
    if len(args.out) > 1:
        raise SystemExit("one --out for a run; several are for --plot and --export")
    out = Path(args.out[0])
    out.mkdir(parents=True, exist_ok=True)
    points_file = out / "points.jsonl"
    # The held-out loss of every point on the first 1 000 validation images: the probes use all of them.
    cfg = get_config(args.profile, dataset=args.dataset, model=args.model, tower=args.tower,
                     encoding=args.encoding, n_train=args.n_train, n_test=min(1000, args.validation),
                     validation=args.validation, device=args.device, epochs=10_000)
    # the probes train on every image outside the validation split (pretraining sees the first n_train)
    data = load_dataset(cfg.dataset, validation=cfg.validation, seed=cfg.data_seed)
    cfg, pretrain_data, device = resolve(cfg, data)
    per_epoch = full_batches(len(pretrain_data.train_labels), cfg.batch_size)
    run_dir = out / f"{args.profile}-{cfg.run_name}"
    restart_file = out / "continued.json"  # where a lost run folder went on from committed weights
    if args.weights and (went_on := continue_from_weights(args.weights, cfg, pretrain_data, device, run_dir)):
        write_json(restart_file, went_on)
    continued = json.loads(restart_file.read_text()) if restart_file.is_file() else None
    print(f"{run_dir.name}: pretraining on {len(pretrain_data.train_labels):,} images, probes trained on "
          f"{len(data.train_labels):,}, validated on {len(data.test_labels):,}; batch {cfg.batch_text}, "
          f"{per_epoch:,} steps an epoch", flush=True)
    for steps in sorted(int(s) for s in args.steps.split(",")):
        key = {"profile": args.profile, "model": args.model, "tower": args.tower, "encoding": cfg.encoding,
               "steps": steps, "n_train": len(pretrain_data.train_labels),
               "probe_train": len(data.train_labels), "validation": len(data.test_labels)}
        if any(all(p.get(k) == v for k, v in key.items()) for p in read_points(points_file)):
            continue
        left = None if deadline is None else (deadline - time.monotonic()) / 60
        if left is not None and left <= 0:
            break
        res = pretrain(cfg.replace(steps=steps, minutes=left), run_dir, pretrain_data, device,
                       progress=args.progress)
        reached = steps_done(res.metrics, per_epoch)
        if reached > steps:  # went on from weights past this point
            print(f"{run_dir.name} is past step {steps:,} with no point measured there: skipped", flush=True)
            continue
        if reached < steps:
            print(f"the time box stopped {run_dir.name} at step {reached:,} of "
                  f"{steps:,}; the same command goes on from there", flush=True)
            return
        t0 = time.perf_counter()
        probes = probe_point(res.model, data, cfg.eval_batch_size, args.max_se, args.max_seeds)
        point = {**key, "epoch": round(steps / per_epoch, 4), "images": steps * cfg.batch_size,
                 "views": steps * cfg.batch_size * cfg.views_per_image, "pairs": steps * cfg.pairs_per_step,
                 "pretrain_s": round(sum(m["seconds"] for m in res.metrics), 1),
                 "probe_s": round(time.perf_counter() - t0, 1), "val_loss": res.metrics[-1]["test_loss"],
                 "device": str(device), "threads": args.threads, **probes,
                 **{k: v for k, v in provenance(device).items() if k in ("git", "time")},
                 "command": command(), **({"continued_from": continued} if continued else {})}
        if args.weights:
            entry = export_shipped(run_dir, args.weights, data.provenance())
            point["weights"] = {"file": entry["file"], "sha256": entry["sha256"]}
        points = read_points(points_file) + [point]
        text = "".join(json.dumps(p) + "\n" for p in points)
        atomic_write(points_file, lambda tmp, text=text: tmp.write_text(text))
        print(json.dumps(point), flush=True)


def export(args: argparse.Namespace) -> None:
    """The points of every OUT (`--out`, repeatable) as one results file, with the commands and the
    machine that made them."""
    # every source's points, a later source's point replacing an earlier one of the same run and steps
    same = ("profile", "model", "tower", "encoding", "steps", "n_train", "probe_train", "validation")
    points = list({tuple(p.get(k) for k in same): p for out in args.out for p in load_points(out)}.values())
    if not points:
        raise SystemExit(f"no points in {', '.join(args.out)}: run the curve first")
    first = points[0]
    data = load_dataset(args.dataset, validation=first["validation"])
    header = {
        "kind": "curve",
        "title": "Where the paper's figures come from: validation accuracy against pretraining compute",
        "what": (
            "The context and the simple autoencoder (ResNet-32, augmentation, the author's recipe) "
            f"pretrained on the {first['n_train']:,} training images outside a validation split of the "
            f"last {first['validation']:,}, probed when they had trained each listed number of steps, as "
            f"the author evaluates: the probes train on those {first['probe_train']:,} images and are "
            "scored on the validation images, which pretraining never saw. Both probes read the tower's "
            "1 024 features: the author's evaluation (raw, 10 epochs) and the standardised probe (30 "
            "epochs). The context autoencoder ran with the shared encoding (the tower once on the 16 "
            "patches and the zero patch) and, at the first points, with the author's slots encoding (the "
            "tower once per neighbour slot) on the same data, seeds and steps."
        ),
        "data": data.provenance(), "machine": args.machine or machine(),
        "git": " ".join(sorted({p["git"] for p in points})), "time": max(p["time"] for p in points),
        "probe_seeds": "0, 1, 2, ... until the standard error of each probe's mean is under "
                       f"{args.max_se} points (at most {args.max_seeds} seeds)",
        "commands": args.commands or sorted({p["command"] for p in points if "command" in p}),
    }
    write_json(args.export, {"header": header, "points": points})
    print(f"wrote {args.export} ({len(points)} points)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="cpu")
    p.add_argument("--model", default="context", choices=("context", "patch"))
    p.add_argument("--tower", default="resnet32")
    p.add_argument("--dataset", default="cifar100")
    p.add_argument("--encoding", default="shared", help="the context model's encoding (shared: 8x less "
                   "tower work than the author's per-slot calls, the same function in eval mode)")
    p.add_argument("--n-train", type=int, help="pretraining images (the first N; default: every image "
                   "outside the validation split)")
    p.add_argument("--validation", type=int, default=5_000, help="the last V training images")
    p.add_argument("--steps", default=STEPS, help="the steps at which to probe, comma-separated")
    p.add_argument("--minutes", type=float, help="a time box for the whole command: checkpoint and stop")
    p.add_argument("--max-se", type=float, default=0.3, help="probe seeds are added until the standard "
                   "error of each probe's mean is under this many points")
    p.add_argument("--max-seeds", type=int, default=10)
    p.add_argument("--weights", type=Path, help="write each point's model here as fp16 weights to commit")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", action="append", help="the run folder and its points.jsonl (default runs/scale); "
                   "with --plot or --export, repeat it to read several, or name committed results files")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--plot", metavar="PNG", help="draw the figure from OUT/points.jsonl and stop")
    p.add_argument("--export", metavar="JSON", help="write OUT/points.jsonl as a results file and stop")
    p.add_argument("--machine", help="with --export: the machine the points were measured on, in words "
                   "(default: this one)")
    p.add_argument("--commands", nargs="*", default=[],
                   help="with --export: the commands that measured the points, recorded in the file")
    args = p.parse_args()
    args.out = args.out or ["runs/scale"]
    if args.export:
        export(args)
        return
    if args.plot:
        from vwe.plots import plot_scale_curve
        from vwe.table import PAPER_BY_MODEL

        fig = plot_scale_curve([p for out in args.out for p in load_points(out)], PAPER_BY_MODEL)
        fig.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"wrote {args.plot}")
        return
    run_curve(args)


if __name__ == "__main__":
    main()
