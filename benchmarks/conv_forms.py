"""Every convolution of the training step, timed in each form that computes the same sums.

    python benchmarks/conv_forms.py --device cuda [--batch-size 512] [--json runs/conv-forms-cuda.json]
    python benchmarks/conv_forms.py --device cpu                (small sizes, about 20 s)

The step's convolutions (context autoencoder, ResNet-32 tower, shared encoding, batch B) are found
by running the model once with hooks, and grouped by shape: the tower's 8x8, 4x4 and 2x2 maps of
B*16 + 1 patches and the decoder's 8x8 maps of B*16 targets. Each group is timed, forward and
backward (gradients of the input and the weight), in every form `vwe.dense_conv` has for it:

    conv      the library convolution (cuDNN on CUDA), what `StepOptions()` runs
    dense     one matrix product with the convolution of the identity basis (`dense_conv2d`)

Timing: on CUDA each form's forward + backward is captured once in a CUDA graph and replayed
(the training step runs in one, so launch gaps would only blur the comparison), bf16 autocast and
channels_last as in the fast step; on the CPU it runs eagerly in fp32. Median of repeats, warm-up
excluded. Per group the table gives ms per call, the calls per step, and ms per step for the form
`default_options()` picks on the device and for the fastest; the last line sums both over the step: what
choosing the fastest form per layer would save, before inductor's fusions around them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vwe.dense_conv import Conv2d, dense_conv2d, set_dense_pixels
from vwe.fast_step import default_options, for_device
from vwe.files import atomic_write
from vwe.models import ContextAutoencoder, build_model

FORMS = ("conv", "dense")
DENSE_ENTRIES = 1 << 21  # a larger dense matrix (inputs x outputs) costs 10x+ the convolution's work


@dataclass(frozen=True)
class ConvCall:
    """One convolution shape of the step: the layer, its input, how often a step runs it."""

    names: tuple[str, ...]  # the modules with this shape, e.g. ("tower.stages.0.0.conv1", ...)
    conv: nn.Conv2d  # the first of them (shapes and hyper-parameters are what matter)
    shape: tuple[int, ...]  # input (N, C, H, W)

    @property
    def label(self) -> str:
        n, c, h, w = self.shape
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        return f"{self.names[0].split('.')[0]} {c}->{self.conv.out_channels} {k}x{k}/{s} on {h}x{w}"


def step_convs(model: ContextAutoencoder, batch_size: int, device: torch.device) -> list[ConvCall]:
    """The convolutions one forward of `model` on `batch_size` images runs, grouped by shape."""
    seen: dict[tuple, list] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            def hook(m, args, name=name):
                key = (tuple(args[0].shape), m.in_channels, m.out_channels, m.kernel_size, m.stride,
                       m.padding, m.bias is not None)
                seen.setdefault(key, [m, []])[1].append(name)
            hooks.append(m.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(torch.rand(batch_size, 3, 32, 32, device=device))
    for h in hooks:
        h.remove()
    return [ConvCall(tuple(names), m, key[0]) for key, (m, names) in seen.items()]


def forms_of(call: ConvCall) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Form name -> function of the input (N, C, H, W) computing the same output."""
    conv = call.conv
    forms = {"conv": lambda x: F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)}
    n, c, h, w = call.shape
    if (c * h * w) * (conv.out_channels * h * w) <= DENSE_ENTRIES:
        forms["dense"] = lambda x: dense_conv2d(x, conv)
    return forms


def default_form(call: ConvCall) -> str:
    """The form the model runs `call` in (as the training step sets it: `dense_convs`)."""
    if isinstance(call.conv, Conv2d):  # the tower's; the decoder's other convs are plain nn.Conv2d
        return call.conv.form(call.shape[2] * call.shape[3])
    return "conv"


def time_form(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, conv: nn.Conv2d,
              repeats: int, iters: int) -> list[float]:
    """Seconds per forward + backward of `fn` on `x`, one figure per repeat."""
    device = x.device
    x = x.detach().requires_grad_(True)

    def forward() -> torch.Tensor:
        # bf16 on CUDA as in the fast step; no cast cache, which a CUDA-graph capture must not keep
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda", cache_enabled=False):
            return fn(x)

    grad = torch.randn_like(forward())  # in the output's dtype

    def once() -> None:
        torch.autograd.backward(forward(), grad, inputs=[x, conv.weight])

    if device.type == "cuda":
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up: cuDNN's search, the gradient buffers
                once()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            once()
        run = graph.replay
    else:
        once()
        run = once
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append((time.perf_counter() - start) / iters)
    return seconds


def measure(device: torch.device, batch_size: int, repeats: int, iters: int) -> list[dict]:
    """One row per convolution shape of the step: ms per call of each form, per step, the best."""
    torch.manual_seed(0)
    options = for_device(default_options(), device)
    model = build_model("context", "resnet32").to(device).train()
    set_dense_pixels(model, options.dense_convs)  # as FastStep does
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model.to(memory_format=layout)
    rows = []
    for call in step_convs(model, batch_size, device):
        shape = call.shape
        x = torch.randn(shape, device=device).contiguous(memory_format=layout)
        ms = {name: 1000 * statistics.median(time_form(fn, x, call.conv, repeats, iters))
              for name, fn in forms_of(call).items()}
        best = min(ms, key=ms.get)
        default = default_form(call)
        count = len(call.names)
        rows.append({"layer": call.label, "input": list(shape), "calls_per_step": count,
                     "modules": list(call.names), "ms_per_call": ms, "default": default, "best": best,
                     "default_ms_per_step": count * ms[default], "best_ms_per_step": count * ms[best]})
        print(f"{call.label}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()), flush=True)
    return rows


def report(rows: list[dict]) -> str:
    head = ["layer", "calls/step", *(f"{f} ms" for f in FORMS), "default", "best", "default ms/step",
            "best ms/step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["layer"], str(r["calls_per_step"]),
                 *(f"{r['ms_per_call'][f]:.3f}" if f in r["ms_per_call"] else "" for f in FORMS),
                 r["default"], r["best"], f"{r['default_ms_per_step']:.2f}", f"{r['best_ms_per_step']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    default, best = (sum(r[k] for r in rows) for k in ("default_ms_per_step", "best_ms_per_step"))
    lines.append(f"\nconvolutions, forward + backward, per step: {default:.2f} ms with the default forms, "
                 f"{best:.2f} ms with the fastest form of each ({default - best:.2f} ms less)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), required=True)
    p.add_argument("--batch-size", type=int, help="images per step (default: 512 on CUDA, 8 on the CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iters", type=int, help="calls per repeat (default: 20 on CUDA, 2 on the CPU)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--json", type=Path, help="write the rows here as JSON")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA GPU here; use --device cpu")
    cuda = a.device == "cuda"
    batch_size, iters = a.batch_size or (512 if cuda else 8), a.iters or (20 if cuda else 2)
    if min(batch_size, iters, a.repeats, a.threads) < 1:
        p.error("--batch-size, --iters, --repeats and --threads must be >= 1")
    if cuda:
        torch.backends.cudnn.benchmark = True  # as `vwe.config.resolve` sets it for a CUDA process
    else:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    what = (torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} thread(s)")
    print(f"{what}, torch {torch.__version__}, batch {batch_size} images", flush=True)
    rows = measure(device, batch_size, a.repeats, iters)
    print("\n" + report(rows))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"device": what, "torch": torch.__version__, "batch_size": batch_size,
                           "argv": argv if argv is not None else sys.argv[1:], "rows": rows}, indent=2) + "\n"
        atomic_write(a.json, lambda tmp: tmp.write_text(text))
        print(f"wrote {a.json}")
    return rows


if __name__ == "__main__":
    main()
