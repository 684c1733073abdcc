"""Probe accuracy against pretraining compute, on a validation split: where the method shows.

One run per (profile, model) pretrains on the first N training images and is probed after each
epoch in `--epochs` on the last V training images (a validation split: the test split is never
read). The probes are the author's evaluation (the tower's 1 024 features, raw, 10 epochs) and the
standardised probe on the same features. Everything resumes: the pretraining from its checkpoint
(bit for bit), the points from `points.jsonl`, so a cut run loses at most the epoch in progress.

    python scripts/scale_curve.py --profile cpu --model context --epochs 1,2,4,8
    python scripts/scale_curve.py --plot docs/scale-curve.png   # the figure from every points file
    python scripts/scale_curve.py --export docs/results/scale-curve.json   # the results file

Writes `OUT/<profile>-<model>-<tower>/` (the run) and one JSON line per point to `OUT/points.jsonl`;
`--export` turns them into a results file (`vwe.results`: what ran, where, and every point).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vwe.config import get_config, resolve
from vwe.data import load_dataset
from vwe.evaluate import extract_features, linear_eval
from vwe.files import atomic_write, write_json
from vwe.pretrain import pretrain
from vwe.results import command, machine
from vwe.runs import provenance

PROBES = {"author": dict(norm="raw", epochs=10), "standard": dict(norm="standard", epochs=30)}


def read_points(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def probe_point(model, data, seeds: tuple[int, ...], batch_size: int) -> dict:
    """Both probes on the tower's 16 x 64 features of the training and validation images."""
    device = next(model.parameters()).device
    train, val = (extract_features(model, x, batch_size, device, features="tower")
                  for x in (data.train_images, data.test_images))
    out = {}
    for name, probe in PROBES.items():
        ev = linear_eval(train, data.train_labels, val, data.test_labels, seeds=seeds,
                         num_classes=data.num_classes, **probe)
        out[name] = {"mean": ev.mean, "std": ev.std, "accs": ev.accs}
    return out


def run_curve(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    points_file = out / "points.jsonl"
    # The held-out loss of every epoch on the first 1 000 validation images: the probes use all of them.
    cfg = get_config(args.profile, dataset=args.dataset, model=args.model, tower=args.tower,
                     encoding=args.encoding, n_train=args.n_train, n_test=min(1000, args.validation),
                     validation=args.validation, device=args.device)
    # the probe trains on the first --probe-train images (pretraining sees the first --n-train of them)
    data = load_dataset(cfg.dataset, n_train=max(args.probe_train, args.n_train), validation=cfg.validation,
                        seed=cfg.data_seed)
    cfg, pretrain_data, device = resolve(cfg, data)
    run_dir = out / f"{args.profile}-{cfg.run_name}"
    print(f"{run_dir.name}: pretraining on {cfg.n_train} images, probes trained on {len(data.train_labels)}, "
          f"validated on {len(data.test_labels)}; batch {cfg.batch_size} images x {cfg.views_per_image} "
          f"views = {cfg.pairs_per_step} (context, target) pairs a step", flush=True)
    for epochs in sorted(int(e) for e in args.epochs.split(",")):
        key = {"profile": args.profile, "model": args.model, "tower": args.tower, "encoding": cfg.encoding,
               "epoch": epochs, "n_train": cfg.n_train, "probe_train": len(data.train_labels),
               "validation": len(data.test_labels)}
        if any(all(p.get(k) == v for k, v in key.items()) for p in read_points(points_file)):
            continue
        res = pretrain(cfg.replace(epochs=epochs), run_dir, pretrain_data, device, progress=args.progress)
        t0 = time.perf_counter()
        probes = probe_point(res.model, data, tuple(args.seeds), cfg.eval_batch_size)
        last = res.metrics[-1]
        steps = epochs * (cfg.n_train // cfg.batch_size)
        point = {**key, "steps": steps, "images": steps * cfg.batch_size,
                 "views": steps * cfg.batch_size * cfg.views_per_image,
                 "pairs": steps * cfg.pairs_per_step,
                 "pretrain_s": round(sum(m["seconds"] for m in res.metrics), 1),
                 "probe_s": round(time.perf_counter() - t0, 1), "val_loss": last["test_loss"],
                 "device": str(device), "threads": args.threads, **probes,
                 **{k: v for k, v in provenance(device).items() if k in ("git", "time")},
                 "command": command()}
        points = read_points(points_file) + [point]
        text = "".join(json.dumps(p) + "\n" for p in points)
        atomic_write(points_file, lambda tmp, text=text: tmp.write_text(text))
        print(json.dumps(point))


def export(args: argparse.Namespace) -> None:
    """OUT/points.jsonl as a results file: the points, with the commands and machine that made them."""
    points = read_points(Path(args.out) / "points.jsonl")
    if not points:
        raise SystemExit(f"no points in {args.out}/points.jsonl: run the curve first")
    first = points[0]
    data = load_dataset(args.dataset, n_train=first["probe_train"], validation=first["validation"])
    header = {
        "kind": "curve",
        "title": "Where the method shows: validation accuracy against pretraining compute",
        "what": (
            "The context and the simple autoencoder (ResNet-32, augmentation) pretrained on the first "
            f"{first['n_train']:,} training images with each recipe, probed after each listed epoch on a "
            f"validation split: the probes train on the first {first['probe_train']:,} training images "
            f"and are scored on the last {first['validation']:,}, which pretraining never saw. Both probes "
            "read the tower's 1 024 features: the author's evaluation (raw, 10 epochs) and the "
            "standardised probe (30 epochs). ![the curve](scale-curve.png)"
        ),
        "data": data.provenance(), "machine": args.machine or machine(),
        "git": " ".join(sorted({p["git"] for p in points})), "time": max(p["time"] for p in points),
        "probe_seeds": args.seeds,
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
    p.add_argument("--n-train", type=int, default=5_000, help="pretraining images (the first N)")
    p.add_argument("--probe-train", type=int, default=10_000,
                   help="the probes' training images (the first N)")
    p.add_argument("--validation", type=int, default=5_000, help="the last V training images")
    p.add_argument("--epochs", default="2,4,8,16", help="the epochs at which to probe, comma-separated")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="probe seeds")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default="runs/scale")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--plot", metavar="PNG", help="draw the figure from OUT/points.jsonl and stop")
    p.add_argument("--export", metavar="JSON", help="write OUT/points.jsonl as a results file and stop")
    p.add_argument("--machine", help="with --export: the machine the points were measured on, in words "
                   "(default: this one)")
    p.add_argument("--commands", nargs="*", default=[],
                   help="with --export: the commands that measured the points, recorded in the file")
    args = p.parse_args()
    if args.export:
        export(args)
        return
    if args.plot:
        from vwe.plots import plot_scale_curve

        fig = plot_scale_curve(read_points(Path(args.out) / "points.jsonl"))
        fig.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"wrote {args.plot}")
        return
    run_curve(args)


if __name__ == "__main__":
    main()
