"""The shipped autoencoders' table on real CIFAR-100, in both readings of the paper.

    VWE_CIFAR100_MD5=<md5 of a verified copy> python scripts/shipped_table.py \
        --n-train 50000 --n-test 10000 --out runs/shipped-table

Loads the two shipped models (`checkpoints/`, sha256 checked), extracts the features of every row they
fill (`vwe.table.MODEL_ROWS`: [24]'s random ResNet-32, the random 16-patch tower, raw pixels, the simple
and the context autoencoder) on the first N training and M test images, and probes each with the
author's evaluation (tower 1 024-d, raw, 10 epochs), the text's raw probe and the standardised one
(the `cpu` profile's 30 epochs x seeds 0, 1, 2). Each row is kept in OUT as it finishes
(`vwe.table.measure_model_rows`), so the same command stopped midway goes on from the next row. Writes
results.{json,csv,md,png} like `make paper`; its results.json, copied to
docs/results/shipped-cifar100.json, is what the README's results show.
"""

import argparse
import time
from pathlib import Path

import torch

from vwe import table
from vwe.config import get_config, resolve
from vwe.course import Pretrained, load_shipped, shipped_manifest, shipped_steps
from vwe.engine import epochs_reached
from vwe.results import write_results


def shipped_what(context: Pretrained, entry: dict, n_probe: int, n_test: int) -> str:
    """The measurement in one sentence: which models, pretrained how (the epochs and steps the context
    model's manifest entry says it reached), probed on what."""
    cfg = context.config
    return (f"The two autoencoders in `checkpoints/` (ResNet-32, pretrained on the first "
            f"{entry['data']['n_train']:,} training images with the `{cfg.profile}` recipe and the "
            f"{cfg.encoding} encoding: {epochs_reached(context.metrics):g} epochs, {shipped_steps(entry):,} "
            f"steps of {cfg.pairs_per_step} pairs) beside the untrained baselines, "
            f"probed on the features of the first {n_probe:,} training images and scored on {n_test:,} "
            "test images.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=50_000, help="the probes' training images (the first N; "
                   "all 50 000 by default, as the author's evaluation trains its probe)")
    p.add_argument("--n-test", type=int, default=10_000, help="test images (the first M)")
    p.add_argument("--profile", default="cpu", help="whose probe settings (epochs, seeds)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("runs/shipped-table"))
    a = p.parse_args()
    t0 = time.perf_counter()
    cfg, data, device = resolve(get_config(a.profile, dataset="cifar100", n_train=a.n_train, n_test=a.n_test,
                                           device=a.device))
    simple, context = (load_shipped(m, device) for m in ("patch", "context"))
    for m in (simple, context):
        print(m.source, flush=True)
    epochs = {"patch-resnet32-aug": epochs_reached(simple.metrics),
              "context-resnet32-aug": epochs_reached(context.metrics)}
    shipped = shipped_manifest()["models"]
    weights = {m: shipped[m]["sha256"] for m in ("patch", "context")}
    rows = table.measure_model_rows(simple.model, context.model, data, cfg, device, epochs, weights, a.out)
    header = table.table_header(cfg, data, device, table.data_fingerprint(data))
    header.update(epochs=max(epochs.values()), batch_size=context.config.batch_size,
                  views_per_image=context.config.views_per_image,
                  pairs_per_step=context.config.pairs_per_step, lr=context.config.lr,
                  profile=f"shipped ({context.config.profile} recipe)",
                  title=f"The shipped autoencoders on {data.name}, both readings of the paper",
                  what=shipped_what(context, shipped["context"], len(data.train_labels),
                                    len(data.test_labels)),
                  # the weights measured (load_shipped checked each file against this sha256): a test
                  # holds the results file to the models checkpoints/manifest.json ships
                  weights=weights)
    files = write_results(header, rows, a.out)
    print(files["md"].read_text())
    print(f"{time.perf_counter() - t0:.0f} s; torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
