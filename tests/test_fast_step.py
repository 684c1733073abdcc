"""The training step: the plain step against a hand-written one, the fast options against the plain
step (same draws, same Adam, loss and gradients within bf16 tolerance), the undo of a warm-up, and
the checks that keep a CUDA graph capturable. Tests marked `cuda` run on a GPU machine only."""

import copy
import functools
from dataclasses import fields, replace

import pytest
import torch
import torch.nn.functional as F

from vwe import dense_conv
from vwe.augment import AugmentConfig, AugmentParams, apply_params, augment, sample_params
from vwe.data import to_float
from vwe.dense_conv import Conv2d, set_dense_pixels
from vwe.fast_step import (
    PLAIN,
    FastStep,
    GraphFallbackWarning,
    StepOptions,
    _match_state_layout,
    _snapshot,
    capture_hazards,
    default_options,
    for_device,
)
from vwe.models import Classifier, build_model
from vwe.pretrain import PretrainStep
from vwe.supervised import SupervisedStep

LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
AUG = AugmentConfig()
# what the CPU can run of the CUDA default
FAST_CPU = StepOptions(bf16=True, channels_last=True, dense_convs=16)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def batch(b: int = 4, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, generator=gen).to(device)


def fresh(tower: str = "conv4", seed: int = 0, device: str = "cpu", fused: bool = False):
    """The context model of a seed, with the library's convolutions until a FastStep sets its form."""
    torch.manual_seed(seed)
    model = build_model("context", tower).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS, fused=fused)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().float().flatten() for t in tensors])


def adam_first_step(w0: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Adam's first update, by its formula: the bias-corrected moments are g and g^2."""
    return w0 - LR * g / (g.abs() + EPS)


def make_train_step(model, optimizer, aug, gen, options: StepOptions | None = None):
    """The plain step (`options` PLAIN), else the plain step in a FastStep (default: the model's
    device's fastest options), as the trainers build it."""
    step = PretrainStep(model, optimizer, aug, gen)
    options = for_device(default_options(), step.device) if options is None else options
    return step if options == PLAIN else FastStep(step, options)


def run(options: StepOptions, model, optimizer, images, seed: int = 1, aug=AUG, steps=1):
    """`steps` steps on `images`; returns (losses, the generator after them)."""
    gen = torch.Generator(device=images.device).manual_seed(seed)
    step = make_train_step(model, optimizer, aug, gen, options)
    return [step(images) for _ in range(steps)], gen


# ---------------------------------------------------------------- the plain step is the reference


def test_plain_step_equals_the_step_written_by_hand():
    images = batch()
    model, opt = fresh()
    ref_model = copy.deepcopy(model)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=LR, betas=BETAS, eps=EPS)
    ref_gen = torch.Generator().manual_seed(1)
    ref_losses = []
    for _ in range(2):
        loss = ref_model.forward_loss(augment(to_float(images), AugmentConfig(), ref_gen))
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        ref_losses.append(loss.detach())
    losses, gen = run(PLAIN, model, opt, images, steps=2)
    assert torch.equal(torch.stack(losses), torch.stack(ref_losses))
    assert torch.equal(flat(model.state_dict().values()), flat(ref_model.state_dict().values()))
    assert torch.equal(gen.get_state(), ref_gen.get_state())
    assert losses[0].shape == () and losses[0].dtype == torch.float32 and not losses[0].requires_grad


def test_no_augmentation_trains_on_the_raw_pixels():
    images = batch()
    model, opt = fresh()
    expected = copy.deepcopy(model).forward_loss(to_float(images))
    losses, gen = run(PLAIN, model, opt, images, aug=None)
    assert torch.equal(losses[0], expected.detach())
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(1).get_state())  # never drawn


# ---------------------------------------------------------------- fast options against the plain step


def record_inputs(model, into: list) -> None:
    """Make `model.forward_loss` keep a copy of every batch it is given."""
    forward_loss = model.forward_loss

    def recording(x: torch.Tensor) -> torch.Tensor:
        into.append(x.detach().clone())
        return forward_loss(x)

    model.forward_loss = recording


@pytest.mark.parametrize("options", [PLAIN, FAST_CPU], ids=["plain", "bf16+channels_last"])
def test_step_augments_with_the_generator_like_augment_does(options):
    images = batch()
    model, opt = fresh()
    seen = []
    record_inputs(model, seen)
    _, gen = run(options, model, opt, images, steps=2)
    ref_gen = torch.Generator().manual_seed(1)
    expected = [augment(to_float(images), AugmentConfig(), ref_gen) for _ in range(2)]
    assert len(seen) == 2 and all(torch.equal(a, b) for a, b in zip(seen, expected, strict=True))
    assert torch.equal(gen.get_state(), ref_gen.get_state())


def test_compiled_step_traces_as_one_graph_and_matches_eager(monkeypatch):
    # fullgraph=True raises on any graph break. torch.compile's "eager" backend checks the tracing
    # without the minutes of code generation, and runs the traced ops with the same kernels in the
    # same order as the eager step: the same numbers, bit for bit, on any machine.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    images = batch()
    results = []
    for options in (FAST_CPU, replace(FAST_CPU, compile="default")):
        model, opt = fresh()
        losses, _ = run(options, model, opt, images, steps=2)
        results.append((torch.stack(losses), flat(model.parameters())))
    assert torch.equal(results[1][0], results[0][0])
    assert torch.equal(results[1][1], results[0][1])


def test_compiled_supervised_step_traces_as_one_graph_and_matches_the_plain_step(monkeypatch):
    # What train_supervised runs on CUDA (crop, flip, the classifier, cross-entropy in one fullgraph
    # compile), checked on the CPU as above: traced without a graph break, the same numbers bit for bit.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    images, labels = batch(8), torch.arange(8) % 10
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = Classifier("conv4", 10)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = SupervisedStep(model, opt, pad=4, aug_gen=torch.Generator().manual_seed(1))
        if compiled:
            step = FastStep(step, StepOptions(compile="default"))
        losses = torch.stack([step(images, labels) for _ in range(2)])
        results.append((losses, flat(model.parameters())))
    assert torch.equal(results[1][0], results[0][0])
    assert torch.equal(results[1][1], results[0][1])


def float64_gradients(dense_pixels: int, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The loss and every parameter's gradient of the Conv4 context model in float64, train mode."""
    model, _ = fresh()
    set_dense_pixels(model, dense_pixels).double()
    loss = model.forward_loss(x)
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


# The dense form computes the same sums in another order. Compared in float64 (rounding u = 2**-53
# ~ 1.1e-16), because BatchNorm's backward subtracts nearly equal terms: in fp32 that cancellation
# turns the order's rounding into relative differences of ~3e-3 in the first layer's gradient
# (measured), which depend on the CPU's vector width. The same amplification (3e-3 / 2**-24 ~ 4e4)
# in float64 gives ~5e-12; DENSE_RTOL = 1e-9 leaves a factor of 200 above it (measured here: 3e-15),
# and a form that is wrong by as little as a 1e-6 scale already errs by 5e-9.
DENSE_RTOL = 1e-9


def dense_form_error(monkeypatch, form=None) -> tuple[float, float]:
    """(relative loss difference, largest relative gradient difference) of the dense form against
    the library's convolution, with `form` standing in for `vwe.dense_conv.dense_conv2d` when given."""
    if form is not None:
        monkeypatch.setattr(dense_conv, "dense_conv2d", form)
    x = to_float(batch()).double()
    loss, grads = float64_gradients(0, x)
    dense_loss, dense_grads = float64_gradients(16, x)
    worst = max(((g - r).norm() / r.norm()).item() for g, r in zip(dense_grads, grads, strict=True))
    return ((dense_loss - loss).abs() / loss).item(), worst


def test_the_dense_form_gives_the_plain_forms_loss_and_gradients(monkeypatch):
    loss_error, grad_error = dense_form_error(monkeypatch)
    assert loss_error <= 1e-12 and grad_error <= DENSE_RTOL, (loss_error, grad_error)


def _swapped_tap(x, conv):
    w = conv.weight.clone()
    w[..., 0, 0], w[..., 0, 1] = conv.weight[..., 0, 1], conv.weight[..., 0, 0]
    return F.conv2d(x, w, conv.bias, conv.stride, conv.padding)


WRONG_FORMS = {
    "swapped tap": _swapped_tap,
    "transposed map": lambda x, conv: conv._conv_forward(x.transpose(-1, -2), conv.weight, conv.bias),
    "1e-6 scale": lambda x, conv: conv._conv_forward(x, conv.weight, conv.bias) * (1 + 1e-6),
}


@pytest.mark.parametrize("wrong", WRONG_FORMS, ids=list(WRONG_FORMS))
def test_the_dense_form_check_catches_a_wrong_form(monkeypatch, wrong):
    _, grad_error = dense_form_error(monkeypatch, WRONG_FORMS[wrong])
    assert grad_error > DENSE_RTOL


# The fast step without bf16: channels_last and the dense convolutions sum the same terms in another
# order, so it differs from the plain fp32 step by rounding alone. fp32 rounds at u = 2**-24 ~ 6e-8;
# BatchNorm's backward amplifies that by up to ~4e4 (DENSE_RTOL's comment) to ~2.4e-3 in the worst
# tensor, so the whole gradient's relative difference stays below FP32_GRAD_RTOL. A gradient 1 % off
# (1e-2) or a wrong layout (O(1) in the tower) lies far above it. The loss, a mean over 12 288 squared
# errors of a sigmoid decoder, is the better conditioned: ~35 layers of a few roundings each.
FP32_FAST = StepOptions(channels_last=True, dense_convs=16)
FP32_GRAD_RTOL = 4e4 * 2**-24
FP32_LOSS_RTOL = 1e-5


def one_step_gradients(options: StepOptions, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and the flat gradient of one step of the ResNet-32 context model from the same start."""
    model, opt = fresh("resnet32")
    losses, _ = run(options, model, opt, images)
    return losses[0], flat(p.grad for p in model.parameters())


def test_fast_step_in_fp32_equals_the_plain_step_up_to_rounding():
    images = batch(8)
    loss, grad = one_step_gradients(PLAIN, images)
    fast_loss, fast_grad = one_step_gradients(FP32_FAST, images)
    torch.testing.assert_close(fast_loss, loss, rtol=FP32_LOSS_RTOL, atol=0)
    error = ((fast_grad - grad).norm() / grad.norm()).item()
    assert error < FP32_GRAD_RTOL, error


def test_the_dense_bf16_step_traces_as_one_graph():
    # The compiled step is `torch.compile(step.forward_loss, fullgraph=True)`, which raises on any
    # graph break; the eager backend checks the tracing without the minutes of code generation. Its
    # loss is the plain fp32 step's within bf16's rounding (8 bits: 2**-8 ~ 4e-3 relative per
    # rounding, a few roundings deep in a mean).
    images = batch()
    model, opt = fresh()
    plain = make_train_step(model, opt, AUG, torch.Generator().manual_seed(1), PLAIN)
    loss = plain.forward_loss(images, *plain.draw(len(images)))
    model, opt = fresh()
    fast_step = make_train_step(model, opt, AUG, torch.Generator().manual_seed(1),
                                StepOptions(bf16=True, channels_last=True, dense_convs=16))
    traced = torch.compile(fast_step.forward_loss, backend="eager", fullgraph=True)
    params = fast_step.draw(len(images))
    traced_loss = traced(images, *params)
    assert model.tower.features[4].form(16) == "dense"  # Conv4's second conv, on the 4x4 map: set by FastStep
    assert torch.equal(traced_loss, fast_step.forward_loss(images, *params))  # the eager kernels, in order
    # a coarse check only: bf16's error hides a wrong layout or a 1 % gradient scale, which
    # test_fast_step_in_fp32_equals_the_plain_step_up_to_rounding catches
    torch.testing.assert_close(traced_loss, loss, rtol=2e-2, atol=0)


def test_bf16_loss_and_gradients_match_fp32_within_bf16_tolerance():
    images = batch(8)
    grads = {}
    for name, options in (("plain", PLAIN), ("fast", FAST_CPU)):
        model, opt = fresh("resnet32")
        losses, _ = run(options, model, opt, images)
        grads[name] = [p.grad for p in model.parameters()]
        grads[name + " loss"] = losses[0]
        grads[name + " names"] = [n for n, _ in model.named_parameters()]
    # coarse, as bf16 allows; the fp32 form of the same step is checked at fp32's rounding above
    torch.testing.assert_close(grads["fast loss"], grads["plain loss"], rtol=1e-3, atol=0)
    g_fast, g_plain = flat(grads["fast"]), flat(grads["plain"])
    # bf16 keeps 8 bits of mantissa; through 31 conv layers and BatchNorm's mean subtraction the
    # small tower gradients of an untrained net carry ~10 % noise, the output layers far less
    assert torch.nn.functional.cosine_similarity(g_fast, g_plain, dim=0) > 0.99
    assert (g_fast - g_plain).norm() / g_plain.norm() < 0.2
    # The output layer's gradient is a few bf16 roundings (2**-8 ~ 0.4 % each) from the loss: within
    # 5 % in norm. Not element by element: an entry near zero has no relative accuracy at all, and
    # which entries are near zero depends on the CPU's kernels (one of 864 missed atol=1e-5 by 6 %
    # with ATEN_CPU_CAPABILITY=default).
    last = grads["plain names"].index("decoder.up.5.weight")
    g_last, ref_last = grads["fast"][last].float(), grads["plain"][last]
    assert (g_last - ref_last).norm() < 0.05 * ref_last.norm()


@pytest.mark.parametrize("options", [PLAIN, FAST_CPU], ids=["plain", "bf16+channels_last"])
def test_step_is_exactly_adams_first_update_of_its_own_gradients(options):
    images = batch()
    model, opt = fresh(fused=True)  # fused, as pretrain uses on CUDA
    before = [p.detach().clone() for p in model.parameters()]
    run(options, model, opt, images)
    for w0, p in zip(before, model.parameters(), strict=True):
        # exact up to fp32 rounding: sqrt(g * g) and |g| may differ by an ulp, and w0 - update rounds
        # to an ulp of the weight (2**-23 relative; 1.2e-7 for a BatchNorm weight of 1). A wrong step
        # (another lr, no bias correction, a second step) is off by ~lr = 1e-3.
        torch.testing.assert_close(p.detach(), adam_first_step(w0, p.grad), rtol=2 * 2**-23, atol=1e-9)
        assert opt.state[p]["step"].item() == 1


def test_one_fast_and_one_plain_step_give_weights_within_tolerance():
    images = batch(8)
    w0 = flat(fresh("resnet32")[0].parameters())
    updates = {}
    for name, options in (("plain", PLAIN), ("fast", FAST_CPU)):
        model, opt = fresh("resnet32")
        run(options, model, opt, images)
        w1, grad = flat(model.parameters()), flat(p.grad for p in model.parameters())
        # each step is exactly Adam's first update of its own gradients: one step, at this lr, bias
        # corrected (rounding as in test_step_is_exactly_adams_first_update_of_its_own_gradients)
        torch.testing.assert_close(w1, adam_first_step(w0, grad), rtol=2 * 2**-23, atol=1e-9)
        updates[name] = w1 - w0
    # Adam's first step moves every weight by lr * sign(g) (less where |g| ~ eps): the two agree
    # where the gradient's sign does, which bf16 keeps for most weights
    assert torch.nn.functional.cosine_similarity(updates["fast"], updates["plain"], dim=0) > 0.8


def test_channels_last_converts_weights_and_moves_resumed_adam_state_along():
    images = batch()
    model, opt = fresh(fused=True)
    run(PLAIN, model, opt, images)  # Adam state now exists, in the contiguous layout
    state_before = {p: {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()}
    w1 = [p.detach().clone() for p in model.parameters()]
    run(FAST_CPU, model, opt, images, seed=2)
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    for p, w in zip(model.parameters(), w1, strict=True):
        m0, v0 = state_before[p]["exp_avg"], state_before[p]["exp_avg_sq"]
        g = p.grad.float()
        m = BETAS[0] * m0 + (1 - BETAS[0]) * g
        v = BETAS[1] * v0 + (1 - BETAS[1]) * g * g
        expected = w - LR * (m / (1 - BETAS[0] ** 2)) / ((v / (1 - BETAS[1] ** 2)).sqrt() + EPS)
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)


def test_match_state_layout_keeps_values():
    p = torch.nn.Parameter(torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last))
    opt = torch.optim.Adam([p])
    opt.state[p]["exp_avg"] = torch.randn(4, 3, 3, 3)
    values = opt.state[p]["exp_avg"].clone()
    _match_state_layout(opt)
    assert opt.state[p]["exp_avg"].stride() == p.stride()
    assert torch.equal(opt.state[p]["exp_avg"], values)


# ---------------------------------------------------------------- undoing a warm-up


def test_snapshot_restore_undoes_steps_and_restarts_adam_exactly():
    images = batch()
    model, opt = fresh(fused=True)
    twin, twin_opt = fresh(fused=True)
    state = copy.deepcopy(model.state_dict())
    restore = _snapshot(model, opt)
    run(PLAIN, model, opt, images, steps=3)  # a warm-up: weights, BatchNorm statistics, Adam state move
    assert not torch.equal(flat(model.state_dict().values()), flat(state.values()))
    restore()
    assert torch.equal(flat(model.state_dict().values()), flat(state.values()))
    # Adam's state after the undo (zeros, step 0) must act as no state at all: the next step equals
    # the first step of an optimizer that never ran
    losses, _ = run(PLAIN, model, opt, images, seed=5)
    twin_losses, _ = run(PLAIN, twin, twin_opt, images, seed=5)
    assert torch.equal(losses[0], twin_losses[0])
    assert torch.equal(flat(model.state_dict().values()), flat(twin.state_dict().values()))


# ---------------------------------------------------------------- capture safety


def test_capture_hazards_names_host_transfers_and_syncs_but_not_scalars():
    x = torch.ones(3, device="meta")
    assert capture_hazards(lambda: x + torch.arange(3).to("meta")) == ["_to_copy (cpu, meta)"]
    assert capture_hazards(lambda: torch.ones(3).sum().item()) == ["_local_scalar_dense (cpu)"]
    assert capture_hazards(lambda: torch.ones(3).nonzero()) == ["nonzero (cpu)"]
    assert capture_hazards(lambda: x * torch.tensor(2.0)) == []  # a 0-d host tensor is a scalar
    assert capture_hazards(lambda: torch.ones(3, device="meta").exp()) == []


def test_augmentation_makes_nothing_on_the_host():
    # The meta device stands in for the GPU: a tensor made on the host in the step shows up as a
    # host/meta mix. The draw stays outside (it is eager by design); applying it must be clean.
    params = sample_params(4, AugmentConfig(), torch.Generator().manual_seed(0), "cpu")
    meta = AugmentParams(*(getattr(params, f.name).to("meta") for f in fields(params)))
    images = torch.empty(4, 3, 32, 32, dtype=torch.uint8, device="meta")
    assert capture_hazards(lambda: apply_params(to_float(images), meta, AugmentConfig())) == []


@pytest.mark.parametrize("encoding, dense_pixels", [("shared", 0), ("literal", 0), ("shared", 16)],
                         ids=["shared", "literal", "dense"])
def test_model_forward_and_backward_make_nothing_on_the_host(encoding, dense_pixels):
    # every form of the convolutions builds its matrices on the device
    model = set_dense_pixels(build_model("context", "resnet32", encoding), dense_pixels).to("meta")
    images = torch.empty(2, 3, 32, 32, device="meta")
    assert capture_hazards(lambda: model.forward_loss(images).backward()) == []


# ---------------------------------------------------------------- options and errors


def test_default_options_and_the_device_rule():
    fastest = StepOptions(bf16=True, channels_last=True, compile="default", cuda_graph=True, dense_convs=16)
    assert default_options() == fastest
    assert default_options(compile=False).compile is None
    assert fastest.describe() == "bf16 + channels_last + compile(default) + cuda_graph + dense_convs(16 px)"
    assert for_device(fastest, torch.device("cpu")) == PLAIN  # the CPU runs the plain step
    assert for_device(fastest, torch.device("cuda", 0)) == fastest
    assert PLAIN.describe() == "fp32"
    assert StepOptions(dense_convs=4).describe() == "fp32 + dense_convs(4 px)"


def test_fast_step_sets_the_form_of_the_towers_convolutions_its_options_ask_for():
    """The dense convolutions are chosen once, in the options: FastStep sets them on the model it is
    given, whatever form the model had."""
    model, opt = fresh()
    convs = [m for m in model.modules() if isinstance(m, Conv2d)]
    assert len(convs) == 4 and {m.form(16) for m in convs} == {"conv"}  # built as the library's
    gen = torch.Generator().manual_seed(0)
    make_train_step(model, opt, None, gen, FAST_CPU)
    assert [m.dense_pixels for m in convs] == [FAST_CPU.dense_convs] * 4
    make_train_step(model, opt, None, gen, replace(FAST_CPU, dense_convs=0))
    assert {m.form(4) for m in convs} == {"conv"}


def test_bad_options_and_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown compile mode"):
        StepOptions(compile="fast")
    with pytest.raises(ValueError, match="dense_convs is a number of pixels"):
        StepOptions(dense_convs=-1)
    with pytest.raises(ValueError, match="makes its own CUDA graphs"):
        StepOptions(compile="reduce-overhead", cuda_graph=True)
    model, opt = fresh()
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_train_step(model, opt, None, gen, StepOptions(cuda_graph=True))
    on_meta = build_model("context", "conv4").to("meta")  # a model on another device than the generator
    with pytest.raises(ValueError, match="generator lives on cpu but the model on meta"):
        PretrainStep(on_meta, torch.optim.Adam(on_meta.parameters()), AugmentConfig(), gen)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="supports torch.optim.Adam"):
        make_train_step(model, sgd, None, gen, StepOptions(cuda_graph=True))
    step = make_train_step(model, opt, AugmentConfig(), gen)
    with pytest.raises(TypeError, match="uint8"):
        step(to_float(batch()))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        step(batch()[:, :, :16])


# ---------------------------------------------------------------- on a GPU: the CUDA default


@cuda
def test_cuda_default_step_matches_plain_fp32_within_bf16_tolerance():
    images = batch(64, device="cuda")
    w0 = flat(fresh("resnet32", device="cuda")[0].parameters())
    out = {}
    eager_bf16 = StepOptions(bf16=True, channels_last=True)  # bf16 alone: its error is the yardstick
    fast = default_options()
    for name, options in (("plain", PLAIN), ("bf16", eager_bf16), ("fast", fast)):
        model, opt = fresh("resnet32", device="cuda", fused=True)
        losses, gen = run(options, model, opt, images)
        out[name] = (losses[0], flat(p.grad for p in model.parameters()), flat(model.parameters()),
                     gen.get_state(), [opt.state[p]["step"].item() for p in model.parameters()])
    (l_f, g_f, w_f, s_f, steps_f), (l_p, g_p, w_p, s_p, _) = out["fast"], out["plain"]
    torch.testing.assert_close(l_f, l_p, rtol=1e-2, atol=0)
    # Through 31 bf16 conv layers and BatchNorm's mean subtraction, an untrained tower's small
    # gradients carry ~10 % noise (measured on an H200: cosine 0.9895 to fp32 for this batch). The
    # fast step (compile, CUDA graph, dense small convs) must add nothing beyond bf16's own error.
    bf16_error = ((out["bf16"][1] - g_p).norm() / g_p.norm()).item()
    fast_error = ((g_f - g_p).norm() / g_p.norm()).item()
    assert fast_error < 0.2 and fast_error < 2 * bf16_error, (fast_error, bf16_error)
    assert torch.nn.functional.cosine_similarity(g_f, g_p, dim=0) > 0.98
    assert torch.equal(s_f, s_p)
    assert steps_f == [1.0] * len(steps_f)  # the warm-up was undone: this was Adam's first step
    # and the weights moved by exactly that step of the graph's own gradients, at this lr: the weight's
    # rounding (2**-23) and 1e-3 lr for the fused kernel's own order of operations, where a step at
    # another lr, without bias correction or a second one errs by ~lr
    for w, g in ((w_f, g_f), (w_p, g_p)):
        torch.testing.assert_close(w, adam_first_step(w0, g), rtol=2 * 2**-23, atol=1e-3 * LR)


@cuda
def test_cuda_graph_replays_equal_the_same_step_without_graph():
    images = [batch(32, seed=s, device="cuda") for s in range(3)]
    results = []
    for graph in (False, True):
        model, opt = fresh("conv4", device="cuda", fused=True)
        options = StepOptions(bf16=True, channels_last=True, cuda_graph=graph)
        gen = torch.Generator(device="cuda").manual_seed(1)
        step = make_train_step(model, opt, AugmentConfig(), gen, options)
        losses = torch.stack([step(x) for x in images])
        assert step.options.cuda_graph == graph, "the capture fell back: see the warning"
        results.append((losses, flat(model.parameters())))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-3, atol=0)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=3 * LR)
    assert (results[1][0][0] != results[1][0][1]).item()  # returned losses are copies, not graph memory


@cuda
def test_cuda_graph_refuses_what_it_cannot_replay():
    model, opt = fresh("conv4", device="cuda", fused=True)
    step = make_train_step(model, opt, None, torch.Generator(device="cuda"),
                           StepOptions(bf16=True, cuda_graph=True))
    step(batch(8, device="cuda"))
    with pytest.raises(ValueError, match="captured for batches of shape"):
        step(batch(4, device="cuda"))
    opt.param_groups[0]["lr"] = 1e-2
    with pytest.raises(RuntimeError, match="learning rate changed"):
        step(batch(8, device="cuda"))


@cuda
def test_cuda_graph_falls_back_with_a_warning_when_the_step_cannot_be_captured():
    images = batch(8, device="cuda")
    out = {}
    variants = (("eager", StepOptions(bf16=True)), ("graph", StepOptions(bf16=True, cuda_graph=True)))
    for name, options in variants:
        model, opt = fresh("conv4", device="cuda", fused=True)
        forward_loss = model.forward_loss
        # a host sync in the forward: uncapturable by construction
        model.forward_loss = lambda x, f=forward_loss: f(x) + 0 * x.sum().item()
        gen = torch.Generator(device="cuda").manual_seed(1)
        step = make_train_step(model, opt, AugmentConfig(), gen, options)
        if name == "graph":
            with pytest.warns(GraphFallbackWarning, match="_local_scalar_dense"):
                losses = [step(images), step(images)]
            assert not step.options.cuda_graph
        else:
            losses = [step(images), step(images)]
        out[name] = (torch.stack(losses), flat(model.parameters()), gen.get_state())
    torch.testing.assert_close(out["graph"][0], out["eager"][0], rtol=1e-3, atol=0)
    torch.testing.assert_close(out["graph"][1], out["eager"][1], rtol=0, atol=3 * LR)
    assert torch.equal(out["graph"][2], out["eager"][2])  # the fallback drew once per step, too
