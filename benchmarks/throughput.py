"""Throughput of pretraining and of linear evaluation, for each variant of the training step.

    python benchmarks/throughput.py --device cuda --json runs/bench-h100.json
    python benchmarks/throughput.py --device cpu --json runs/bench-cpu.json     (small sizes, 1-2 min)

Every training variant is the context autoencoder with the ResNet-32 tower, Adam (lr 1e-4, fused on
CUDA, as `vwe.pretrain` makes it), augmentation on, on random uint8 images resident on the device
(the speed does not depend on the content), in a loop like `vwe.engine.train_one_epoch`:

    literal-fp32          the paper as written: 128 tower passes per image, eager fp32 (the baseline)
    shared-fp32           17 tower passes per image, eager fp32 (the CPU default)
    shared-bf16           + bf16 autocast and channels_last, eager
    shared-bf16-compiled  + torch.compile of augment + forward + loss (CUDA only)
    fast-conv             + the whole step in one CUDA graph (CUDA only; the default before dense_convs)
    fast-dense2x2         + the 2x2-map tower convolutions as matrix products (CUDA only)
    fast                  the trainers' step (`FastStep`, `default_options`): on CUDA the 4x4- and 2x2-map
                          convolutions as matrix products (dense_convs 16 px); on the CPU the same
                          step as shared-fp32 (not re-measured)
    fast-autotune         opt-in: fast with compile mode max-autotune-no-cudagraphs (CUDA only)
    author-slots          opt-in: the `author` profile's step: 8 images x 4 views = 512 pairs a step,
                          the tower once per neighbour slot, the author's decoder and augmentation,
                          with the default options on the device (the CUDA graph
                          on CUDA); its batch is the profile's whatever --batch-size says
    author-shared         opt-in: the same with the shared encoding (8x less tower work)

Warm-up steps run first and are not timed (compilation and graph capture happen there); each
repeat is timed between device synchronisations, and the median repeat is reported. Also timed:
the augmentation alone, `vwe.evaluate.extract_features` on train + test images and
`vwe.evaluate.linear_probe` (100 epochs on CUDA; fewer on the CPU, projected linearly to 100).
`cost_per_image` counts FLOPs and bytes per image of the tower and the decoder, device-free.
Results go to stdout as markdown tables and to --json with the environment (device, torch, date,
command line, git revision).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from vwe.augment import AugmentConfig, AugmentParams, apply_params, sample_params
from vwe.config import get_config
from vwe.data import to_float
from vwe.evaluate import extract_features, linear_probe
from vwe.fast_step import PLAIN, FastStep, GraphFallbackWarning, StepOptions, default_options, for_device
from vwe.files import atomic_write
from vwe.models import ContextAutoencoder, Decoder, ResNet32, build_model
from vwe.patches import N_PATCHES, PATCH
from vwe.pretrain import PretrainStep

PAPER_IMAGES, PAPER_EPOCHS = 50_000, 200  # CIFAR-100's training set, the paper's schedule
BF16_BYTES = 2  # activations in the fast step
# The goals for one H100 (checked only on CUDA)
GOAL_IMAGES_PER_S, GOAL_SPEEDUP, GOAL_FEATURES_S, GOAL_PROBE_S = 120_000, 90, 10.0, 60.0
# H100 SXM5 datasheet: dense bf16 tensor-core peak and HBM3 bandwidth (PCIe: 756 TFLOP/s, 2.0 TB/s)
H100_FLOPS, H100_BYTES_PER_S = 989e12, 3.35e12


@dataclass(frozen=True)
class BenchConfig:
    device: str  # "cpu" | "cuda"
    batch_size: int  # images per training step
    steps: int  # timed steps per repeat
    repeats: int  # timed repeats; the median is reported
    warmup: int  # untimed steps before (compile, CUDA graph capture, cuDNN autotuning)
    images: int  # training images resident on the device
    eval_train: int  # images for feature extraction and the probe's training set
    eval_test: int  # images for feature extraction and the probe's test set
    eval_batch_size: int  # images per feature-extraction batch
    probe_epochs: int  # linear-probe epochs (projected to 100 when fewer)
    threads: int | None  # torch CPU threads; None keeps torch's default (one per core)
    variants: tuple[str, ...]  # training-step variants to time


DEFAULTS = {
    "cuda": BenchConfig("cuda", batch_size=512, steps=20, repeats=3, warmup=3, images=PAPER_IMAGES,
                        eval_train=PAPER_IMAGES, eval_test=10_000, eval_batch_size=1024, probe_epochs=100,
                        threads=None,
                        # the four; the variants measured in BENCHMARKS.md's run 1
                        # (shared-bf16-compiled, fast-conv) and fast-dense2x2 are opt-in: each
                        # compilation costs about a minute
                        variants=("literal-fp32", "shared-fp32", "shared-bf16", "fast")),
    # one thread: on a shared 2-core machine two OpenMP threads competing with other processes ran
    # 5-50x slower than one (measured); pass --threads 2 on an idle machine
    "cpu": BenchConfig("cpu", batch_size=16, steps=3, repeats=3, warmup=1, images=1024, eval_train=500,
                       eval_test=100, eval_batch_size=100, probe_epochs=2, threads=1,
                       variants=("literal-fp32", "shared-fp32", "shared-bf16", "fast")),
}


VARIANTS = ("literal-fp32", "shared-fp32", "shared-bf16", "shared-bf16-compiled", "fast-conv",
            "fast-dense2x2", "fast", "fast-autotune", "author-slots", "author-shared")


def variant_setup(name: str, device: torch.device) -> tuple[str, StepOptions]:
    """(encoding, step options) of a training-step variant."""
    cuda = device.type == "cuda"
    fastest = for_device(default_options(), device)
    setups = {
        "literal-fp32": ("literal", PLAIN),
        "shared-fp32": ("shared", PLAIN),
        "shared-bf16": ("shared", StepOptions(bf16=True, channels_last=True)),
        "shared-bf16-compiled": ("shared", StepOptions(bf16=True, channels_last=True, compile="default")),
        "fast-conv": ("shared", replace(fastest, dense_convs=0)),
        "fast-dense2x2": ("shared", replace(fastest, dense_convs=4)),
        "fast": ("shared", fastest),
        "fast-autotune": ("shared", replace(fastest, compile="max-autotune-no-cudagraphs")),
        "author-slots": ("slots", fastest),
        "author-shared": ("shared", fastest),
    }
    if name not in setups:
        raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")
    if not cuda and name in ("shared-bf16-compiled", "fast-conv", "fast-dense2x2", "fast-autotune"):
        raise ValueError(f"variant {name!r} is CUDA only (torch.compile on a 2-core CPU takes minutes)")
    return setups[name]


# ----------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of `fn()` between two device synchronisations (so queued GPU work is counted)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    """CUDA: peak allocated since `reset_peak`. CPU: the process's peak RSS so far (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_images(n: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """(n, 3, 32, 32) uint8 on `device`: CIFAR-sized content-free data."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen).to(device)


def bench_step(name: str, cfg: BenchConfig, images: torch.Tensor) -> dict:
    """Time one training-step variant; a row of the results table."""
    device = images.device
    encoding, options = variant_setup(name, device)
    recipe = get_config("author", encoding=encoding) if name.startswith("author") else None
    reset_peak(device)
    torch.manual_seed(0)
    if recipe is None:
        model = build_model("context", "resnet32", encoding).to(device).train()
        aug, views, b, per_image = AugmentConfig(), {}, cfg.batch_size, 1
    else:
        model = build_model(**recipe.model_args).to(device).train()
        aug, views, b = recipe.aug, {"views": recipe.views, "original": recipe.original}, recipe.batch_size
        per_image = recipe.views_per_image
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    aug_gen = torch.Generator(device=device).manual_seed(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step = PretrainStep(model, optimizer, aug, aug_gen, **views)
        if options != PLAIN:  # the plain step is the baseline; every other variant is a FastStep
            step = FastStep(step, options)
        usable = len(images) // b * b  # drop_last, as train_one_epoch does
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0)).to(device)
        losses = torch.zeros(cfg.steps, device=device)
        cursor = 0

        def run(steps: int) -> None:
            nonlocal cursor
            for i in range(steps):
                idx = order[cursor:cursor + b]
                cursor = (cursor + b) % usable
                losses[i % cfg.steps] = step(images[idx])

        compile_s = timed(lambda: run(cfg.warmup), device)
        seconds = [timed(lambda: run(cfg.steps), device) for _ in range(cfg.repeats)]
    per_s = [cfg.steps * b / s for s in seconds]
    ips = statistics.median(per_s)
    steps_per_epoch = PAPER_IMAGES // b
    return {
        "variant": name, "encoding": encoding, "options": getattr(step, "options", PLAIN).describe(),
        "batch_size": b, "pairs_per_step": b * per_image * N_PATCHES, "images_per_s": ips,
        "pairs_per_s": ips * per_image * N_PATCHES, "step_ms": 1000 * b / ips,
        "repeats_images_per_s": per_s,
        "warmup_s": compile_s, "paper_200_epochs_h": PAPER_EPOCHS * steps_per_epoch * b / ips / 3600,
        "peak_mib": peak_mib(device), "final_loss": losses[-1].item(),
        "warnings": [str(w.message) for w in caught],
        "note": "; ".join(str(w.message) for w in caught if issubclass(w.category, GraphFallbackWarning))
        or None,
    }


def bench_augment(cfg: BenchConfig, images: torch.Tensor) -> list[dict]:
    """The augmentation alone (draw + apply), eager and, on CUDA, compiled."""
    device = images.device
    aug, b = AugmentConfig(), cfg.batch_size
    gen = torch.Generator(device=device).manual_seed(0)
    x = images[:b]

    def apply(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return apply_params(to_float(x), AugmentParams(*params), aug)

    def draw() -> tuple[torch.Tensor, ...]:
        params = sample_params(b, aug, gen, device)
        return tuple(getattr(params, f.name) for f in dataclasses.fields(params))

    forms = [("augment (eager)", apply)]
    if device.type == "cuda":
        forms.append(("augment (compiled)", torch.compile(apply, fullgraph=True)))
    n = max(cfg.steps * 5, 10)  # it is cheap: more calls for a stable figure
    rows = []
    for label, fn in forms:
        timed(lambda fn=fn: [fn(x, *draw()) for _ in range(cfg.warmup + 1)], device)
        seconds = statistics.median(timed(lambda fn=fn: [fn(x, *draw()) for _ in range(n)], device)
                                    for _ in range(cfg.repeats))
        rows.append({"what": label, "images": n * b, "seconds": seconds, "images_per_s": n * b / seconds})
    return rows


def bench_evaluation(cfg: BenchConfig, device: torch.device) -> list[dict]:
    """Feature extraction of train + test images, then one linear probe on them."""
    n_train, n_test = cfg.eval_train, cfg.eval_test
    train, test = random_images(n_train, device, seed=1), random_images(n_test, device, seed=2)
    gen = torch.Generator().manual_seed(0)
    train_labels = torch.randint(0, 100, (n_train,), generator=gen).to(device)
    test_labels = torch.randint(0, 100, (n_test,), generator=gen).to(device)
    torch.manual_seed(0)
    model = ContextAutoencoder("resnet32").to(device).eval()  # as `load_pretrained` returns it

    reset_peak(device)
    extract_features(model, train[:cfg.eval_batch_size], cfg.eval_batch_size, device)  # warm-up
    feats = {}

    def extract() -> None:
        feats["train"] = extract_features(model, train, cfg.eval_batch_size, device)
        feats["test"] = extract_features(model, test, cfg.eval_batch_size, device)

    seconds = statistics.median(timed(extract, device) for _ in range(cfg.repeats))
    n = n_train + n_test
    rows = [{"what": f"features ({n} images, {feats['train'].shape[1]}-d)", "images": n,
             "seconds": seconds, "images_per_s": n / seconds,
             "projected_60000_images_s": seconds * 60_000 / n, "peak_mib": peak_mib(device)}]

    probe = dict(batch_size=128, lr=1e-3, num_classes=100, seed=0)
    linear_probe(feats["train"][:1024], train_labels[:1024], feats["test"][:256], test_labels[:256],
                 epochs=1, **probe)  # warm-up
    reset_peak(device)
    seconds = timed(lambda: linear_probe(feats["train"], train_labels, feats["test"], test_labels,
                                         epochs=cfg.probe_epochs, **probe), device)
    rows.append({"what": f"linear probe ({cfg.probe_epochs} epochs on {n_train} x "
                         f"{feats['train'].shape[1]})", "images": n_train * cfg.probe_epochs,
                 "seconds": seconds, "images_per_s": n_train * cfg.probe_epochs / seconds,
                 "projected_100_epochs_50000_images_s": seconds * 100 / cfg.probe_epochs
                 * PAPER_IMAGES / n_train, "peak_mib": peak_mib(device)})
    return rows


# ----------------------------------------------------------------------------- cost model


class _Traffic(TorchDispatchMode):
    """Counts the elements every op reads and writes (views move nothing and are skipped)."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not getattr(func, "is_view", False):
            self.elements += sum(t.numel() for t in tree_leaves((args, kwargs, out))
                                 if isinstance(t, torch.Tensor))
        return out


def _counts(module: torch.nn.Module, x: torch.Tensor) -> dict:
    """Forward FLOPs, all FLOPs, saved and moved elements of forward + backward of `module` on `x`."""
    module.zero_grad(set_to_none=True)  # every count starts alike (accumulating into old grads costs more)
    params = {p.data_ptr() for p in module.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.numel()
        return t

    forward, backward, traffic = FlopCounterMode(display=False), FlopCounterMode(display=False), _Traffic()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), forward, traffic:
        loss = module(x).float().square().mean()
    with backward, traffic:
        loss.backward()
    fwd = forward.get_total_flops()
    return {"forward_flop": fwd, "flop": fwd + backward.get_total_flops(),
            "saved_bytes": BF16_BYTES * sum(saved.values()), "unfused_bytes": BF16_BYTES * traffic.elements}


def _per_image(module: torch.nn.Module, make_input: Callable[[int], torch.Tensor]) -> dict:
    """`_counts` per image: the slope between batches of 2 and 4 images, so that what a step pays
    once (weights, their gradients) drops out, as it nearly does at batch 512. (Not from 1 image:
    some CPU kernels take another path for a batch of one.)"""
    two, four = _counts(module, make_input(2)), _counts(module, make_input(4))
    return {k: (four[k] - two[k]) / 2 for k in two}


def cost_per_image() -> dict:
    """FLOPs and bytes per image of one training step's tower and decoder, with an H100 bound.

    flop: forward + backward (2 per multiply-add), counted by `FlopCounterMode` (convolutions and
    matmuls only). unfused_bytes: every op reads its inputs and writes its outputs once, in bf16: a
    step with no fusion at all. saved_bytes: the activations autograd keeps for the backward, in
    bf16; a fused step must still write and read them, so 2 x saved_bytes is a floor on traffic.
    The tower runs on the 16 patches of every image (the zero patch, once per batch, adds 1/16 B
    of that); the decoder on 16 patch embeddings of 512.
    """
    torch.manual_seed(0)
    tower = ResNet32().train()
    decoder = Decoder(8 * tower.out_features).train()
    parts = {
        "tower": _per_image(tower, lambda b: torch.rand(b * N_PATCHES, 3, PATCH, PATCH)),  # (B*16, 3, 8, 8)
        "decoder": _per_image(decoder, lambda b: torch.randn(b * N_PATCHES, decoder.fc[0].in_features,
                                                             requires_grad=True)),  # (B*16, 512)
    }
    total = {k: parts["tower"][k] + parts["decoder"][k] for k in parts["tower"]}
    return {**parts, "total": total, "h100_bound_images_per_s": {
        "compute": H100_FLOPS / total["flop"],
        "memory_fused_floor": H100_BYTES_PER_S / (2 * total["saved_bytes"]),
        "memory_unfused": H100_BYTES_PER_S / total["unfused_bytes"]}}


# ----------------------------------------------------------------------------- report


def _cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                platform.processor() or "unknown model")


def environment(device: torch.device, argv: list[str]) -> dict:
    """Where and how the numbers were made."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=root,
                                  timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        rev += "+uncommitted"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{os.cpu_count()}-core {platform.machine()} CPU ({_cpu_model()})"
    return {
        "device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": rev,
        "command": shlex.join(["python", "benchmarks/throughput.py", *argv]),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def markdown(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A markdown table of `rows`: columns are (header, key, format)."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |",
             "|" + "|".join("---" if f == "s" else "---:" for _, _, f in columns) + "|"]
    for row in rows:
        cells = [("-" if row.get(k) is None else format(row[k], f)) for _, k, f in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(results: dict) -> list[dict]:
    """The issue's four targets against what was measured (CUDA only)."""
    steps = {r["variant"]: r for r in results["train"]}
    fast, speedup = steps.get("fast", {}).get("images_per_s"), steps.get("fast", {}).get("vs_literal_fp32")
    features, probe = results["evaluation"]
    checks = [("fast step, images/s", fast, GOAL_IMAGES_PER_S, ">="),
              ("fast / literal fp32", speedup, GOAL_SPEEDUP, ">="),
              ("features of 60 000 images, s", features["projected_60000_images_s"], GOAL_FEATURES_S, "<"),
              ("100-epoch probe, s", probe["projected_100_epochs_50000_images_s"], GOAL_PROBE_S, "<")]
    return [{"goal": g, "measured": m, "target": f"{op} {t:g}",
             "met": None if m is None else (m >= t if op == ">=" else m < t)} for g, m, t, op in checks]


def report(results: dict) -> str:
    env, cfg = results["environment"], results["config"]
    load = ", ".join(f"{x:.1f}" for x in env["load_average"])
    out = [f"{env['device']} | torch {env['torch']} | git {env['git']} | {env['date']} | "
           f"{env['threads']} CPU threads, load average {load}",
           f"batch {cfg['batch_size']}, {cfg['steps']} steps x {cfg['repeats']} repeats (median), "
           f"{cfg['warmup']} warm-up steps, {cfg['images']} resident images", "",
           markdown(results["train"], [
               ("variant", "variant", "s"), ("batch (pairs)", "pairs_per_step", ",d"),
               ("images/s", "images_per_s", ",.0f"), ("pairs/s", "pairs_per_s", ",.0f"),
               ("x literal fp32", "vs_literal_fp32", ".2f"), ("step ms", "step_ms", ".1f"),
               ("200 epochs on 50k, h", "paper_200_epochs_h", ".2f"), ("peak MiB", "peak_mib", ",.0f"),
               ("warm-up s", "warmup_s", ".1f"), ("how", "options", "s"), ("note", "note", "s")]),
           "", markdown(results["augment"] + results["evaluation"], [
               ("what", "what", "s"), ("images/s", "images_per_s", ",.0f"), ("seconds", "seconds", ".2f"),
               ("60k features, s", "projected_60000_images_s", ".2f"),
               ("100-epoch probe on 50k, s", "projected_100_epochs_50000_images_s", ".1f")])]
    c = results["cost"]
    out += ["", "per image (forward + backward): " + ", ".join(
        f"{part} {c[part]['flop'] / 1e6:.0f} MFLOP, saved {c[part]['saved_bytes'] / 1e6:.2f} MB, "
        f"unfused {c[part]['unfused_bytes'] / 1e6:.1f} MB" for part in ("tower", "decoder")),
        "H100 bound, images/s: "
        + ", ".join(f"{k} {v:,.0f}" for k, v in c["h100_bound_images_per_s"].items())]
    if results["goals"]:
        out += ["", markdown(results["goals"], [("goal", "goal", "s"), ("measured", "measured", ",.2f"),
                                                ("target", "target", "s"), ("met", "met", "")])]
    if cfg["device"] == "cpu":
        out += ["", "CPU run: small sizes; the probe ran fewer epochs and is projected linearly to 100; "
                "peak MiB is the process's RSS high-water mark so far"]
    return "\n".join(out)


def bench_variants(cfg: BenchConfig, images: torch.Tensor,
                   done: Callable[[list[dict]], None] = lambda rows: None) -> list[dict]:
    """Every training-step variant of `cfg`, each against literal-fp32; a failure becomes its row's error.

    Each row is printed as soon as it is measured and passed to `done` with those before it, so a
    run stopped half-way (a time limit) keeps what it measured.
    """
    device = images.device
    train = []
    for name in cfg.variants:
        if name == "fast" and device.type == "cpu":
            continue  # the same step as shared-fp32; added below from its measurement
        try:
            row = bench_step(name, cfg, images)
        except Exception as e:  # one variant failing (OOM, a compile error) must not lose the others
            error = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
            row = {"variant": name, "error": error, "note": error}
        train.append(row)
        measured = f"{row['images_per_s']:,.0f} images/s, warm-up {row['warmup_s']:.1f} s" \
            if "images_per_s" in row else row["error"]
        print(f"{name}: {measured} ({row.get('options', '')})", flush=True)
        done(train)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cpu" and "fast" in cfg.variants:
        shared = next((r for r in train if r["variant"] == "shared-fp32"), None)
        if shared:
            note = shared.get("error") or "the CPU default is shared-fp32 (same row)"
            train.append({**shared, "variant": "fast", "note": note})
    base = next((r.get("images_per_s") for r in train if r["variant"] == "literal-fp32"), None)
    for row in train:
        if base and row.get("images_per_s"):
            row["vs_literal_fp32"] = row["images_per_s"] / base
    return train


def run(cfg: BenchConfig, argv: list[str], save: Callable[[dict], None] = lambda results: None) -> dict:
    """Every measurement of `cfg`; `save(results so far)` is called after each part (a partial
    JSON file survives a run that is stopped)."""
    device = torch.device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # for every variant, so the baseline is fair too
    env = environment(device, argv)  # before the work: the load average of the machine as found
    images = random_images(cfg.images, device)
    results = {"environment": env, "config": dataclasses.asdict(cfg), "complete": False}
    results["train"] = bench_variants(cfg, images, lambda rows: save({**results, "train": rows}))
    for part, measure in (("augment", lambda: bench_augment(cfg, images)),
                          ("evaluation", lambda: bench_evaluation(cfg, device)), ("cost", cost_per_image)):
        results[part] = measure()
        save(results)
    results["goals"] = goals(results) if device.type == "cuda" else []
    results["complete"] = True
    save(results)
    return results


def parse_args(argv: list[str]) -> tuple[BenchConfig, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True)
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    for name in ("batch-size", "steps", "repeats", "warmup", "images", "eval-train", "eval-test",
                 "eval-batch-size", "probe-epochs", "threads"):
        parser.add_argument(f"--{name}", type=int, help="default: per device, see DEFAULTS")
    parser.add_argument("--variants", help=f"comma-separated training-step variants: {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA GPU here; use --device cpu")
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(BenchConfig)
                 if f.name not in ("device", "variants") and getattr(args, f.name) is not None}
    for name, value in overrides.items():
        if value < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'warmup' else '>= 1'}, "
                         f"got {value}")
    if args.variants:
        overrides["variants"] = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    cfg = dataclasses.replace(DEFAULTS[args.device], **overrides)
    if cfg.batch_size > cfg.images:
        parser.error(f"--batch-size {cfg.batch_size} is larger than --images {cfg.images}")
    for name in cfg.variants:
        try:
            variant_setup(name, torch.device(cfg.device))
        except ValueError as e:
            parser.error(str(e))
    return cfg, args.json


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    cfg, json_path = parse_args(argv)

    def save(results: dict) -> None:
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(results, indent=2) + "\n"
            atomic_write(json_path, lambda tmp: tmp.write_text(text))  # a reader never sees half a file

    results = run(cfg, argv, save)
    print("\n" + report(results))
    if json_path:
        print(f"\nwrote {json_path}")
    return results


if __name__ == "__main__":
    main()
