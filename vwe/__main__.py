"""Command line: `python -m vwe pretrain | linear-eval | table | embed ...` (`--help` on each).

Started by torchrun (`torchrun --nproc-per-node N -m vwe pretrain ...`), `pretrain` and every row of
`table` train data-parallel over the N processes (`vwe.distributed`); rank 0 alone prints and writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vwe import distributed
from vwe.config import PROBE_NORMS, PROFILES, get_config, resolve, resolve_device
from vwe.data import dataset_type, describe, full_batches
from vwe.data.folder import SKIP_BAD_ENV
from vwe.evaluate import FEATURES
from vwe.models import ENCODINGS, MODELS, TOWERS
from vwe.runs import RunError, profile_dir
from vwe.table import ROW_KEYS


def _data_options(p: argparse.ArgumentParser) -> None:
    """Options of the loaders (`vwe.data.load_dataset`), also read from the environment (notebook
    kernels included)."""
    p.add_argument("--cifar100-md5", metavar="MD5",
                   help="accept a CIFAR-100 archive you verified whose md5 is not the official one "
                        "(same as $VWE_CIFAR100_MD5); the md5 is recorded in every result")
    p.add_argument("--cifar10-md5", metavar="MD5", help="the same for CIFAR-10 ($VWE_CIFAR10_MD5)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help=f"leave out files of an image folder that do not decode, with a warning that "
                        f"counts them, instead of stopping (same as {SKIP_BAD_ENV}=1)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=tuple(PROFILES),
                   help="named settings (default: cpu; linear-eval: the checkpoint's config); the "
                        "options below override them")
    p.add_argument("--dataset", type=dataset_type, metavar="DATASET",
                   help="auto | cifar10 | cifar100 | shapes | folder:PATH (your images, one sub-folder "
                        "per class); auto: CIFAR-100 when present, else Shapes")
    p.add_argument("--n-train", type=int, help="training images used")
    p.add_argument("--n-test", type=int, help="test images used")
    p.add_argument("--validation", type=int, metavar="N",
                   help="evaluate on the last N training images instead of the test split (choose "
                        "settings there, never on the test split)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int)
    _data_options(p)


def _views(p: argparse.ArgumentParser) -> None:
    p.add_argument("--views", type=int, help="augmented views of every image in a batch (author: 3)")
    p.add_argument("--original", action=argparse.BooleanOptionalAction,
                   help="the un-augmented image too, in the same batch (author: yes)")


def _minutes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, metavar="M",
                   help="a time box: train until M minutes of wall time have passed (in table: each "
                        "trained row), then checkpoint, inside an epoch if need be, and stop; the same "
                        "command resumes, bit for bit as if it had not stopped")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vwe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain an autoencoder, checkpointing every epoch (resumes)")
    _common(p)
    p.add_argument("--model", choices=MODELS, help="context (the method) or patch (simple AE)")
    p.add_argument("--tower", choices=TOWERS)
    p.add_argument("--encoding", choices=ENCODINGS)
    p.add_argument("--epochs", type=int)
    _minutes(p)
    p.add_argument("--steps", type=int, metavar="N", help="stop once N optimisation steps are trained in "
                   "all (inside an epoch if need be); a larger N resumes the run")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--no-augment", action="store_true", help="the paper's no-augmentation ablation")
    _views(p)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile on CUDA")
    p.add_argument("--run-dir", type=Path,
                   help="where checkpoints go (default: runs/<profile>/<model>-<tower>-<aug>)")
    p.add_argument("--fresh", action="store_true", help="discard this run directory's checkpoints")
    p.add_argument("--no-sync-bn", action="store_true",
                   help="under torchrun: BatchNorm normalises each process's slice, not the global batch")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("linear-eval", help="linear evaluation of a checkpoint (or of random weights)")
    _common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="a checkpoint file or a run directory")
    src.add_argument("--random-weights", choices=TOWERS, metavar="TOWER",
                     help="the lower bound: an untrained tower (resnet32 or conv4)")
    p.add_argument("--probe-epochs", type=int)
    p.add_argument("--probe-norm", choices=PROBE_NORMS,
                   help="standard: features standardised with the training set's statistics "
                        "(default); raw: the paper's probe")
    p.add_argument("--features", choices=FEATURES, default="embedding",
                   help="embedding: the model's image embedding (default); tower: its tower on the "
                        "16 patches (16 x 64)")
    p.add_argument("--seeds", type=int, nargs="+", help="probe seeds (default: the profile's)")
    p.add_argument("--out", type=Path, help="results JSON (default: beside the checkpoint)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("table", help="the paper's Table 1: every row trained (resuming) and evaluated, "
                       "results.{json,csv,md,png} written; finished rows are reused")
    _common(p)
    p.add_argument("--epochs", type=int, help="pretraining epochs, also the supervised row's")
    _minutes(p)
    p.add_argument("--batch-size", type=int, help="pretraining batch (the supervised row uses 128)")
    p.add_argument("--lr", type=float, help="pretraining Adam lr")
    p.add_argument("--data-seed", type=int, help="Shapes generation seed")
    p.add_argument("--probe-epochs", type=int)
    p.add_argument("--probe-norm", choices=PROBE_NORMS,
                   help="the headline probe (both are run and reported): standard (default) or raw")
    p.add_argument("--encoding", choices=ENCODINGS, help="the context rows' encoder (default shared)")
    _views(p)
    p.add_argument("--seeds", type=int, nargs="+", help="probe seeds (default: the profile's)")
    p.add_argument("--rows", nargs="+", choices=ROW_KEYS, metavar="ROW",
                   help=f"rows to run (default: all): {', '.join(ROW_KEYS)}")
    p.add_argument("--out-dir", type=Path,
                   help="default: runs/<profile>; runs/<profile>-<N>ep for another number of epochs")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile on CUDA")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("embed", help="write a checkpoint's image embeddings (and patch embeddings) of "
                       "any images to a .npy or .pt file")
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint file or a run directory")
    p.add_argument("--images", required=True, metavar="SOURCE",
                   help="a dataset (auto, cifar10, cifar100, shapes, folder:PATH: labels included), a "
                        "folder of images in any layout, or one image file")
    p.add_argument("--out", type=Path, required=True,
                   help="FILE.pt (one dict) or FILE.npy (+ FILE.json with labels, files and provenance, "
                        "FILE.patches.npy with --patches)")
    p.add_argument("--patches", action="store_true", help="also the 16x64 patch embeddings (tower outputs)")
    p.add_argument("--split", choices=("all", "train", "test"), default="all",
                   help="a dataset's split (default: all, train first)")
    p.add_argument("--batch-size", type=int, default=256, help="images per step (default: 256)")
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one) | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true")
    _data_options(p)
    return parser


def cmd_pretrain(a: argparse.Namespace) -> None:
    from vwe.engine import steps_done
    from vwe.pretrain import pretrain

    cfg = get_config(a.profile or "cpu", dataset=a.dataset, n_train=a.n_train, n_test=a.n_test,
                     validation=a.validation, device=a.device, seed=a.seed, model=a.model, tower=a.tower,
                     encoding=a.encoding, epochs=a.epochs, minutes=a.minutes, steps=a.steps,
                     batch_size=a.batch_size, lr=a.lr, views=a.views, original=a.original,
                     augment=False if a.no_augment else None, compile=False if a.no_compile else None)
    cfg, data, device = resolve(cfg, **_sources(a))
    run_dir = a.run_dir or profile_dir(cfg.profile, cfg.epochs) / cfg.run_name
    distributed.print0(f"pretraining {cfg.run_name} ({cfg.profile} profile) on {device}"
        f"{f' x {distributed.world()} processes' if distributed.world() > 1 else ''}: "
        f"{cfg.epochs} epochs{f' or {cfg.minutes} minutes' if cfg.minutes else ''}, lr {cfg.lr}")
    res = pretrain(cfg, run_dir, data, device, fresh=a.fresh, progress=not a.no_progress,
                   sync_bn=not a.no_sync_bn)
    if res.metrics and distributed.is_main():
        first, last = res.metrics[0], res.metrics[-1]
        print(f"dataset {res.dataset}; held-out loss {first['test_loss']:.5f} (epoch {first['epoch']}) -> "
              f"{last['test_loss']:.5f} (epoch {last['epoch']}); {last['images_per_s']:.0f} images/s")
        if last["epoch"] < cfg.epochs:
            done = steps_done(res.metrics, full_batches(len(data.train_labels), cfg.batch_size))
            why = f"step {cfg.steps:,}" if done == cfg.steps else f"the {cfg.minutes}-minute time box"
            print(f"{why} stopped it at epoch {last['epoch']} of {cfg.epochs}; the same command resumes it")
    distributed.print0(f"checkpoint: {res.checkpoint}\nmetrics:    {run_dir / 'metrics.jsonl'}")


def cmd_linear_eval(a: argparse.Namespace) -> None:
    from vwe.evaluate import evaluate_model, random_weights_model
    from vwe.files import write_json
    from vwe.pretrain import load_pretrained
    from vwe.results import ROW_FILE
    from vwe.runs import provenance

    if not distributed.is_main():
        return  # one probe is not worth sharding: under torchrun rank 0 does it all

    overrides = dict(device=a.device, probe_epochs=a.probe_epochs, probe_norm=a.probe_norm,
                     probe_seeds=tuple(a.seeds) if a.seeds else None, dataset=a.dataset,
                     n_train=a.n_train, n_test=a.n_test, validation=a.validation)
    if a.checkpoint:
        model, trained, state = load_pretrained(a.checkpoint)
        # The checkpoint's own config (its data, its profile's probe) unless told otherwise.
        name, cfg = trained.run_name, trained.replace(device="auto")
        if a.profile:
            data_kw = {k: getattr(trained, k) for k in ("dataset", "n_train", "n_test", "data_seed")}
            cfg = get_config(a.profile, **data_kw)
        cfg = cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
        out_dir = a.checkpoint if a.checkpoint.is_dir() else a.checkpoint.parent
    else:
        cfg = get_config(a.profile or "cpu", **overrides)
        model = random_weights_model(a.random_weights, a.seed or 0)
        name = f"random-{a.random_weights}"
        out_dir = profile_dir(cfg.profile) / name
    cfg, data, device = resolve(cfg, **_sources(a))
    model = model.to(device)
    print(f"linear evaluation of {name} ({a.features}, {cfg.probe_norm} probe) on "
          f"{describe(data.provenance())}")
    result = evaluate_model(model, data, cfg, progress=not a.no_progress, features=a.features)
    out = a.out or out_dir / ROW_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"model": name, "dataset": data.name, "data": data.provenance(),
                     "profile": cfg.profile, "features": a.features, "probe_norm": cfg.probe_norm,
                     "mean": result.mean, "std": result.std, "accs": result.accs,
                     "seeds": list(cfg.probe_seeds), "probe_epochs": cfg.probe_epochs,
                     "probe": result.summary(), "provenance": provenance(device)})
    print(f"top-1 accuracy: {result}\nresults: {out}")


def cmd_table(a: argparse.Namespace) -> None:
    from vwe.table import run_table

    cfg = get_config(a.profile or "cpu", dataset=a.dataset, n_train=a.n_train, n_test=a.n_test,
                     validation=a.validation, device=a.device, seed=a.seed, epochs=a.epochs,
                     minutes=a.minutes, batch_size=a.batch_size, lr=a.lr, encoding=a.encoding,
                     probe_norm=a.probe_norm,
                     views=a.views, original=a.original, data_seed=a.data_seed, probe_epochs=a.probe_epochs,
                     probe_seeds=tuple(a.seeds) if a.seeds else None,
                     compile=False if a.no_compile else None)
    out_dir = a.out_dir or profile_dir(cfg.profile, cfg.epochs)
    cfg, data, _ = resolve(cfg, **_sources(a))
    table = run_table(cfg, out_dir, rows=a.rows, data=data, progress=not a.no_progress)
    distributed.print0("\n" + table.files["md"].read_text())
    distributed.print0("results: " + ", ".join(str(p) for p in table.files.values()))


def cmd_embed(a: argparse.Namespace) -> None:
    from vwe.embed import embed_to_file

    result, files = embed_to_file(a.checkpoint, a.images, a.out, patches=a.patches, split=a.split,
                                  batch_size=a.batch_size, device=resolve_device(a.device),
                                  progress=not a.no_progress, **_sources(a))
    shapes = ", ".join(f"{k} {tuple(result[k].shape)}" for k in ("embeddings", "patch_embeddings")
                       if k in result)
    extras = [k for k in ("labels", "files") if k in result]
    print(f"{result['meta']['model']} on {a.images}: {shapes}" + (f", with {' and '.join(extras)}" if extras
                                                                   else ""))
    print("wrote " + ", ".join(str(f) for f in files))


def _sources(a: argparse.Namespace) -> dict:
    """The loader's arguments that `_data_options` sets (`vwe.data.load_dataset`)."""
    return dict(cifar100_md5=a.cifar100_md5, cifar10_md5=a.cifar10_md5, skip_bad=a.skip_bad_images or None)


def main(argv: list[str] | None = None) -> None:
    a = _parser().parse_args(argv)
    try:
        with distributed.launched():  # torchrun's process group, when it started us
            commands = {"pretrain": cmd_pretrain, "linear-eval": cmd_linear_eval, "table": cmd_table,
                        "embed": cmd_embed}
            commands[a.command](a)
    except (ValueError, FileNotFoundError, RunError) as e:  # errors with a message for the user
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
