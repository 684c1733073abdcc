"""Where the time of one training step goes: the GPU kernels of the compiled step, heaviest first.

    python benchmarks/profile_step.py --device cuda [--batch-size 512] [--steps 10] [--top 30]
    python benchmarks/profile_step.py --device cuda --by-shape     (which layer is each kernel)
    python benchmarks/profile_step.py --device cuda --supervised   (the supervised baseline's step)

The step is `FastStep` with the CUDA defaults minus the CUDA graph (a replayed graph shows
up as one opaque launch), on random uint8 images: context autoencoder, ResNet-32 tower, Adam,
augmentation on, as `benchmarks/throughput.py` times it. Prints torch.profiler's table of device
time per kernel name over `--steps` steps after warm-up, and the share of the few largest groups
(convolutions, batch norm and its fused neighbours, Adam, the rest), the figures that say which
lever to pull next (BENCHMARKS.md).

`--by-shape` profiles the eager bf16 step instead (compiled code hides which layer launched a
kernel) and lists the convolutions and matrix products by input shape, e.g. the decoder's
[8192, 64, 8, 8] against the tower's [8193, 16, 8, 8]: the way to name the layer behind a kernel.

`--supervised` profiles the supervised baseline's step instead (`vwe.supervised`, batch 128 unless
`--batch-size` says otherwise, compiled, no CUDA graph). Both modes first time `--steps` steps
without the profiler: wall time per step against the kernels' time per step says whether the step
waits on the host (launches, Python) or on the GPU.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile

from vwe.augment import AugmentConfig
from vwe.fast_step import FastStep, StepOptions, default_options, for_device
from vwe.models import Classifier, build_model
from vwe.pretrain import PretrainStep
from vwe.supervised import SupervisedRecipe, SupervisedStep

# kernel name fragments -> group, first match wins (cuDNN/cuBLAS names and inductor's triton_*)
GROUPS = (("convolution / matmul", r"conv|gemm|xmma|cutlass|sm90|wgrad|dgrad|implicit|winograd|cudnn"),
          ("optimizer (fused Adam)", r"adam|multi_tensor|foreach"),
          ("fused elementwise / reductions (triton)", r"triton"),
          ("copies and layout", r"copy|transpose|nchw|nhwc|memcpy|memset|cat"))


def group(name: str) -> str:
    lowered = name.lower()
    return next((g for g, pattern in GROUPS if re.search(pattern, lowered)), "other")


def make_step(a: argparse.Namespace, device: torch.device) -> tuple[Callable[[int], object], str]:
    """A function of the step number that runs one training step on random data, and its label."""
    torch.manual_seed(0)
    gen = torch.Generator(device=device).manual_seed(1)
    images = torch.randint(0, 256, (a.batch_size * 4, 3, 32, 32), dtype=torch.uint8, device=device)
    batch = lambda i: slice((i % 4) * a.batch_size, (i % 4 + 1) * a.batch_size)  # noqa: E731
    if a.supervised:
        recipe = SupervisedRecipe()
        model = Classifier("resnet32", 100).to(device).train()
        optimizer = recipe.optimizer(model.parameters())  # as train_supervised makes it
        labels = torch.randint(0, 100, (len(images),), device=device)
        step = SupervisedStep(model, optimizer, recipe.pad, gen)
        cuda = device.type == "cuda"  # as train_supervised: compiled and autocast on CUDA only
        if cuda:
            step = FastStep(step, StepOptions(bf16=True, channels_last=True,
                                              compile=None if a.by_shape else "default"))
        label = (f"supervised ResNet-32, SGD, {'compiled' if cuda and not a.by_shape else 'eager'} "
                 f"{'bf16' if cuda else 'fp32'}")
        return (lambda i: step(images[batch(i)], labels[batch(i)])), label
    options = replace(for_device(default_options(), device), cuda_graph=False)
    if a.by_shape:
        options = replace(options, compile=None)
    model = build_model("context", "resnet32").to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step = FastStep(PretrainStep(model, optimizer, AugmentConfig(), gen), options)
    return (lambda i: step(images[batch(i)])), options.describe()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--batch-size", type=int, help="default: 512, or 128 with --supervised")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--by-shape", action="store_true",
                   help="eager bf16 step, convolutions and matrix products grouped by input shape")
    p.add_argument("--supervised", action="store_true", help="the supervised baseline's step instead")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA GPU here; use --device cpu")
    a.batch_size = a.batch_size or (SupervisedRecipe().batch_size if a.supervised else 512)
    if min(a.batch_size, a.steps) < 1 or a.warmup < 0:
        p.error("--batch-size and --steps must be >= 1, --warmup >= 0")
    device = torch.device(a.device)
    run, label = make_step(a, device)
    for i in range(a.warmup):
        run(i)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for i in range(a.steps):
        run(i)
    sync()
    wall_ms = (time.perf_counter() - start) / a.steps * 1000
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=a.by_shape) as prof:
        for i in range(a.steps):
            run(i)
        sync()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"{label} | batch {a.batch_size} | {a.steps} steps | {torch.__version__} | "
          f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    print(f"wall time per step, without the profiler: {wall_ms:.2f} ms "
          f"({a.batch_size / wall_ms * 1000:,.0f} images/s)")
    if a.by_shape:
        events = [e for e in prof.key_averages(group_by_input_shape=True)
                  if re.fullmatch(r"aten::(convolution|convolution_backward|mm|addmm)", e.key)]
        events.sort(key=lambda e: -(e.device_time_total if device.type == "cuda" else e.cpu_time_total))
        print(f"{'op':<34} {'calls':>5} {'ms/step':>8}  input shapes")
        for e in events[:a.top]:
            total = e.device_time_total if device.type == "cuda" else e.cpu_time_total
            print(f"{e.key:<34} {e.count // a.steps:>5} {total / a.steps / 1000:>8.3f}  {e.input_shapes}")
        return
    print(prof.key_averages().table(sort_by=sort, row_limit=a.top, max_name_column_width=90))
    if device.type == "cuda":
        totals: dict[str, float] = defaultdict(float)
        for event in prof.key_averages():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                totals[group(event.key)] += event.self_device_time_total
        whole = sum(totals.values()) or 1.0
        kernel_ms = whole / a.steps / 1000
        print(f"\ndevice time per step: {kernel_ms:.2f} ms "
              f"({a.batch_size * a.steps / (whole / 1e6):,.0f} images/s if kernels ran back to back); "
              f"the GPU is busy {100 * min(1.0, kernel_ms / wall_ms):.0f} % of the wall time"
              + (": the step waits on the host (launches, Python), which a CUDA graph removes"
                 if kernel_ms < 0.7 * wall_ms else ""))
        for name, us in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<42} {us / a.steps / 1000:7.3f} ms/step  {100 * us / whole:5.1f} %")


if __name__ == "__main__":
    main(sys.argv[1:])
