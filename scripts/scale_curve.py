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
from vwe.data import load_dataset
from vwe.engine import steps_done
from vwe.evaluate import extract_features, linear_eval
from vwe.files import atomic_write, write_json
from vwe.pretrain import pretrain
from vwe.results import command, machine
from vwe.runs import provenance

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
    per_epoch = len(pretrain_data.train_labels) // cfg.batch_size
    run_dir = out / f"{args.profile}-{cfg.run_name}"
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
        if steps_done(res.metrics, per_epoch) < steps:
            print(f"the time box stopped {run_dir.name} at step {steps_done(res.metrics, per_epoch):,} of "
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
                 "command": command()}
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
    points = [p for out in args.out for p in load_points(out)]
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
