"""The GPU form of a training step: `FastStep` runs a plain step (`vwe.engine.Step`) faster.

The maths is the plain step's: the same loss, the same optimizer, the same augmentation drawn from
the same generator in the same order. What changes is how it is computed, set by `StepOptions`:

    PLAIN            eager fp32, the plain step itself (the benchmark's baseline)
    bf16             autocast the model to bf16; weights, Adam and the loss stay fp32
    channels_last    NHWC weights, the layout cuDNN's tensor-core kernels want
    compile          torch.compile of augment + forward + loss (backward comes with it)
    cuda_graph       capture the whole step (forward, backward, Adam) once and replay it
    dense_convs      tower convolutions on maps of at most this many pixels (the 4x4 and 2x2 maps
                     of a patch) run as one matrix product each (`vwe.dense_conv`), 0 = never

FastStep makes the step's model ready for these options (channels_last weights, the dense
convolutions set on the model it is given), so a model is built one way whatever the device. The
trainers wrap their step in it on CUDA only (`for_device`, `in_form`; the pretraining step with
`default_options`: all of them, dense_convs=16; BENCHMARKS.md measures each). FastStep computes the
step's loss with its own form of the step's network (`Step.loss(net, ...)`): compiled, in bf16.
Under torchrun the compiled network is the DDP module (not fullgraph) and the CUDA graph is off
(docs/running.md, More than one GPU, says what has been checked there). `vwe.config.resolve`
switches cuDNN's autotuner on for a CUDA process.

Why the graph: a step is hundreds of small kernels (31 convolutions on 8x8, 4x4 and 2x2 maps, their
BatchNorms, the decoder, the augmentation, and the backward of it all), many of which the GPU
finishes as fast as Python can launch them; one replay launches them all. The graph fixes every
address, so:
- the augmentation parameters are drawn eagerly with the step's generator (one small launch) and
  copied into a static buffer that the graph reads; the generator advances exactly as in the plain
  step, so a run is reproducible and resumable the same way on either path;
- warm-up steps (compilation, cuDNN autotuning, Adam's lazy state) run before the capture and
  are then undone, so the first real step starts from the caller's state;
- Adam must be `capturable` (its step count lives on the GPU); its learning rate is baked into
  the graph, and a changed lr raises instead of being silently ignored.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vwe.checks import is_int
from vwe.dense_conv import set_dense_pixels
from vwe.distributed import print0, world
from vwe.engine import Step

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DENSE_PIXELS = 16  # the CUDA default: a patch's 4x4 and 2x2 maps (BENCHMARKS.md)
WARMUP_STEPS = 3  # before a capture: compile, autotune (cuDNN and Triton), create Adam's state
# ops that read a device value on the host: each is a sync, and illegal inside a CUDA graph
SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "_unique2")


class GraphFallbackWarning(UserWarning):
    """The step could not be captured in a CUDA graph and runs without one (slower, same results)."""


@dataclass(frozen=True)
class StepOptions:
    """How a training step runs (the module docstring explains each switch)."""

    bf16: bool = False  # bf16 autocast around the model
    channels_last: bool = False  # convert the model's conv weights to NHWC
    compile: str | None = None  # a torch.compile mode from COMPILE_MODES, None runs eagerly
    cuda_graph: bool = False  # capture and replay the whole step (CUDA, Adam only)
    dense_convs: int = 0  # tower convs on maps of <= this many pixels run as a matrix product

    def __post_init__(self) -> None:
        pixels = self.dense_convs
        if not is_int(pixels) or pixels < 0:
            raise ValueError(f"dense_convs is a number of pixels >= 0 (0: never), got {pixels!r}")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {self.compile!r}; choose None or one of {COMPILE_MODES}")
        if self.cuda_graph and self.compile in ("reduce-overhead", "max-autotune"):
            # those modes capture their own CUDA graphs, which cannot nest inside ours
            raise ValueError(
                f"compile={self.compile!r} makes its own CUDA graphs; with cuda_graph=True use "
                "'default' or 'max-autotune-no-cudagraphs'"
            )

    def describe(self) -> str:
        """A short label such as 'bf16 + channels_last + compile(default) + cuda_graph'."""
        parts = ["bf16" if self.bf16 else "fp32"]
        if self.channels_last:
            parts.append("channels_last")
        if self.compile:
            parts.append(f"compile({self.compile})")
        if self.cuda_graph:
            parts.append("cuda_graph")
        if self.dense_convs:
            parts.append(f"dense_convs({self.dense_convs} px)")
        return " + ".join(parts)


PLAIN = StepOptions()


def default_options(compile: bool = True) -> StepOptions:
    """The fastest options of the pretraining step on CUDA: all of them (`compile=False` drops
    torch.compile only)."""
    return StepOptions(bf16=True, channels_last=True, compile="default" if compile else None, cuda_graph=True,
                       dense_convs=DENSE_PIXELS)


def for_device(options: StepOptions, device: torch.device) -> StepOptions:
    """`options` on CUDA, PLAIN elsewhere: bf16, torch.compile and a CUDA graph are for the GPU; the
    CPU, and so the course, trains with the plain step (each trainer asks here)."""
    return options if device.type == "cuda" else PLAIN


def in_form(step: Step, options: StepOptions) -> Step | FastStep:
    """`step` computed as `options` say: the plain step itself for PLAIN, else a `FastStep` of it."""
    return step if options == PLAIN else FastStep(step, options)


def capture_hazards(fn: Callable[[], object]) -> list[str]:
    """Run `fn()` and name every op in it that would break a CUDA graph capture.

    Two kinds: ops whose tensors span host and device (a host-to-device copy, e.g. a table built
    on the CPU and moved with `.to(device)` every call) and ops that read a device value on the
    host (`.item()`, `nonzero`). 0-d CPU tensors are scalars and do not count. Autograd's
    backward runs under the same check when `fn` calls it. Returns 'op (devices)' strings, in
    order of appearance, without repeats.
    """
    found: list[str] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, Tensor)]
            devices = {t.device.type for t in tensors}
            mixed = {t.device.type for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)}
            if len(mixed) > 1 or name in SYNC_OPS:
                hazard = f"{name} ({', '.join(sorted(devices))})"
                if hazard not in found:
                    found.append(hazard)
            return out

    with Watch():
        fn()
    return found


def _match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give per-parameter optimizer state the memory layout of its parameter.

    Fused Adam treats tensors as flat arrays: a channels_last weight with a contiguous exp_avg (a
    state loaded from a checkpoint, or created before the conversion) is updated against the wrong
    entries, silently (tests/test_fast_step.py shows the fix).
    """
    for p, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, Tensor) and value.shape == p.shape and value.stride() != p.stride():
                state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Adam's `capturable` flag, moving a step count that lives on the host to the device if needed."""
    for group in optimizer.param_groups:
        group["capturable"] = capturable
    if capturable:
        for p, state in optimizer.state.items():
            step = state.get("step")
            if isinstance(step, Tensor) and step.device != p.device:
                state["step"] = step.to(p.device, torch.float32)


def _snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """Remember model and optimizer state; the returned function puts it back in place.

    In place (`copy_`), because a CUDA graph holds the addresses of these very tensors. Adam state
    that did not exist yet is zeroed, which is exactly Adam's lazy initial state (step 0, zero
    moments): the next step behaves as the first.
    """
    tensors = [*model.parameters(), *model.buffers()]
    saved = [t.detach().clone() for t in tensors]
    saved_state = {p: {k: v.clone() for k, v in s.items() if isinstance(v, Tensor)}
                   for p, s in optimizer.state.items()}

    @torch.no_grad()
    def restore() -> None:
        for t, s in zip(tensors, saved, strict=True):
            t.copy_(s)
        for p, state in optimizer.state.items():
            before = saved_state.get(p)
            for key, value in state.items():
                if isinstance(value, Tensor):
                    value.copy_(before[key]) if before is not None else value.zero_()

    return restore


def _in_bf16(net: Callable[..., Tensor], device: torch.device) -> Callable[..., Tensor]:
    """`net` run under bf16 autocast: weights stay fp32, matrix products and convolutions run in bf16."""

    def run(*x: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return net(*x)

    return run


class FastStep:
    """`step` (a `vwe.engine.Step`) computed as `options` say; `options` tells how it actually runs
    (after a fallback from the CUDA graph, without it). Called like the step it wraps.

    Side effects on the step's model and optimizer: the model may be converted to channels_last, its
    tower convolutions run maps of at most `options.dense_convs` pixels as matrix products
    (`vwe.dense_conv.set_dense_pixels`), and Adam's `capturable` flag is set for the graph.
    """

    def __init__(self, step: Step, options: StepOptions):
        model, optimizer, device = step.model, step.optimizer, step.device
        if options.cuda_graph and not isinstance(optimizer, torch.optim.Adam):
            raise ValueError(f"the CUDA-graph step supports torch.optim.Adam/AdamW (their warm-up can be "
                             f"undone exactly), got {type(optimizer).__name__}; pass "
                             "options=StepOptions(..., cuda_graph=False)")
        if options.cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a CUDA device, got {device}")
        # A captured step with DDP's all-reduce in it is unproven: off.
        self.parallel = world() > 1
        if self.parallel and options.cuda_graph:
            options = replace(options, cuda_graph=False)
            print0("note: no CUDA graph under DDP (unproven there); the step runs without it")
        self.step, self.model, self.optimizer, self.device = step, model, optimizer, device
        self.options = options
        # the model made ready for these options: the same parameters, computed in another form
        if options.channels_last:
            model.to(memory_format=torch.channels_last)
        set_dense_pixels(model, options.dense_convs)
        _match_state_layout(optimizer)
        # off until the capture (a checkpoint of a graph run carries True): warm-up and eager steps
        # take Adam's ordinary path, and only the captured one needs the step count on the device
        _set_capturable(optimizer, False)
        # the network this step computes the loss with: the step's own, compiled and in bf16 as asked
        self.net = step.net
        if options.compile and self.parallel:
            # torch.compile's DDP support splits the graph at DDP's gradient buckets, and synchronised
            # BatchNorm breaks it too: no fullgraph here
            self.net = torch.compile(self.net, mode=options.compile)
        if options.bf16:  # the network only: the augmentation before it stays fp32
            self.net = _in_bf16(self.net, device)
        self._forward_loss = self.forward_loss
        if options.compile and not self.parallel:
            # fullgraph: a graph break would silently split the step and cost speed; the generator
            # stays outside (draw), so there is nothing dynamo cannot trace
            self._forward_loss = torch.compile(self.forward_loss, mode=options.compile, fullgraph=True)
        self.graph: torch.cuda.CUDAGraph | None = None

    def draw(self, n: int) -> tuple[Tensor, ...]:
        """The step's augmentation of a global batch of `n` (the only use of its generator)."""
        return self.step.draw(n)

    def forward_loss(self, *inputs: Tensor) -> Tensor:
        """The step's loss computed with this step's network (in bf16 autocast when `options.bf16`)."""
        return self.step.loss(self.net, *inputs)

    def update(self, batch: tuple[Tensor, ...], params: tuple[Tensor, ...]) -> Tensor:
        """Forward, backward and the optimizer on a batch; the loss (graph-owned memory on the graph path)."""
        if self.options.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are dead
        loss = self._forward_loss(*batch, *params)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def __call__(self, *batch: Tensor) -> Tensor:
        batch, params = self.step.local_inputs(*batch)
        if self.options.cuda_graph and self.graph is None:
            self._capture(batch, params)  # may fall back: options.cuda_graph becomes False
        if not self.options.cuda_graph:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.update(batch, params)
            # cudagraph trees reuse their output memory at the next replay
            return loss.clone() if self.options.compile == "reduce-overhead" else loss
        self._check_graph_still_valid(batch[0])
        for static, x in zip(self.static_batch + self.static_params, batch + params, strict=True):
            static.copy_(x)
        self.graph.replay()
        return self.static_loss.clone()  # the next replay overwrites static_loss

    def _check_graph_still_valid(self, images: Tensor) -> None:
        """The graph replays what it captured: refuse, loudly, anything that would differ."""
        if images.shape != self.static_batch[0].shape:
            raise ValueError(f"this CUDA-graph step was captured for batches of shape "
                             f"{tuple(self.static_batch[0].shape)}, got {tuple(images.shape)}; keep the "
                             "batch size fixed (drop_last=True) or make a new step")
        if self.model.training != self.captured_training:
            raise RuntimeError(f"the step was captured with model.training={self.captured_training}; "
                               f"call model.train({self.captured_training}) before stepping")
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        if lrs != self.captured_lrs:
            raise RuntimeError(f"the learning rate changed from {self.captured_lrs} to {lrs}, but the "
                               "CUDA graph has the old one baked in; make a new step after changing it")

    def _capture(self, batch: tuple[Tensor, ...], params: tuple[Tensor, ...]) -> None:
        """Warm up on this batch, undo the warm-up, capture one whole step into `self.graph`.

        If an op of the step cannot be captured (`capture_hazards`), warn and fall back to the
        step without a graph instead: slower, same results.
        """
        # static inputs: the graph reads these addresses at every replay
        self.static_batch = tuple(x.clone() for x in batch)
        self.static_params = tuple(p.clone() for p in params)
        restore = _snapshot(self.model, self.optimizer)
        hazards = capture_hazards(
            lambda: self.forward_loss(*self.static_batch, *self.static_params).backward())
        if hazards:
            restore()
            self.options = replace(self.options, cuda_graph=False)
            warnings.warn(f"the training step cannot be captured in a CUDA graph because of {hazards}; "
                          "running it without the graph (same results, more launch overhead)",
                          GraphFallbackWarning, stacklevel=3)
            return
        side = torch.cuda.Stream(self.device)  # warm-up on a side stream, as the CUDA graph docs ask
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.optimizer.zero_grad(set_to_none=True)
                self.update(self.static_batch, self.static_params)
        torch.cuda.current_stream(self.device).wait_stream(side)
        restore()
        # no grads before the capture: backward then allocates them in the graph's pool, and each
        # replay writes them afresh (no zero_grad needed)
        self.optimizer.zero_grad(set_to_none=True)
        _set_capturable(self.optimizer, True)
        self.captured_training = self.model.training
        self.captured_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_loss = self.update(self.static_batch, self.static_params)
