"""benchmarks/throughput.py: the FLOP count against a hand count, a tiny CPU run end to end (table and
JSON), robustness to a failing variant, and argument errors. benchmarks/conv_forms.py: it finds every
convolution of the step, its forms compute the same function, and a tiny CPU run end to end.
benchmarks/profile_step.py: a tiny CPU run of each of its modes."""


import json
from pathlib import Path

import pytest
import torch
from source_file import load

from vwe.augment import AugmentConfig, augment
from vwe.data import to_float
from vwe.dense_conv import set_dense_pixels
from vwe.models import ENCODINGS, ContextAutoencoder, build_model

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark(name: str):
    return load(f"benchmarks/{name}.py")


throughput, conv_forms = load_benchmark("throughput"), load_benchmark("conv_forms")
profile_step = load_benchmark("profile_step")

TINY = ["--device", "cpu", "--batch-size", "2", "--steps", "1", "--repeats", "1", "--warmup", "1",
        "--images", "8", "--eval-train", "8", "--eval-test", "4", "--eval-batch-size", "4",
        "--probe-epochs", "1"]


@pytest.fixture(autouse=True)
def keep_one_thread():
    # the benchmarks set torch's thread count from their --threads (tests/conftest.py's one thread after)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conv_flops(cin: int, cout: int, k: int, pixels: int) -> int:
    return 2 * cin * cout * k * k * pixels  # a multiply-add is 2 FLOPs, per output pixel


def resnet32_patch_flops() -> int:
    """ResNet-32 forward on one 8x8 patch, layer by layer (docs/design.md §5)."""
    total = conv_flops(3, 16, 3, 64)  # stem
    total += 10 * conv_flops(16, 16, 3, 64)  # stage 1: 5 blocks x 2 convs at 8x8
    for cin, cout, pixels in ((16, 32, 16), (32, 64, 4)):  # stages 2 and 3 start with stride 2
        total += conv_flops(cin, cout, 3, pixels) + conv_flops(cout, cout, 3, pixels)
        total += conv_flops(cin, cout, 1, pixels)  # the projection shortcut
        total += 8 * conv_flops(cout, cout, 3, pixels)  # 4 more blocks
    return total


def decoder_patch_flops() -> int:
    """Decoder forward on one 512-d patch embedding (docs/design.md §7)."""
    linears = 2 * 512 * 512 + 2 * 512 * 64 * 16
    return linears + conv_flops(64, 64, 3, 64) + conv_flops(64, 32, 3, 64) + conv_flops(32, 3, 3, 64)


def test_cost_per_image_matches_the_hand_count():
    cost = throughput.cost_per_image()
    assert cost["tower"]["forward_flop"] == 16 * resnet32_patch_flops()
    assert cost["decoder"]["forward_flop"] == 16 * decoder_patch_flops()
    # backward: a gradient for the input and one for the weights, each as costly as the forward,
    # except the stem's input gradient (the pixels need none)
    stem = 16 * conv_flops(3, 16, 3, 64)
    assert cost["tower"]["flop"] == 3 * cost["tower"]["forward_flop"] - stem
    assert cost["decoder"]["flop"] == 3 * cost["decoder"]["forward_flop"]
    # the decoder's 8x8x64 convolutions cost about as much as the whole tower
    assert decoder_patch_flops() == pytest.approx(resnet32_patch_flops(), rel=0.02)
    for part in ("tower", "decoder"):
        assert 0 < 2 * cost[part]["saved_bytes"] < cost[part]["unfused_bytes"]
    bound = cost["h100_bound_images_per_s"]
    assert bound["compute"] == pytest.approx(throughput.H100_FLOPS / cost["total"]["flop"])


def hand_written_loss(encoding: str, steps: int) -> float:
    """The loss of the `steps`-th step of a TINY run's fp32 training variant, as a plain loop: the same
    seeds, images, batch order, augmentation draws and Adam (lr 1e-4) as `throughput.bench_step`."""
    images = throughput.random_images(8, torch.device("cpu"))
    torch.manual_seed(0)
    model = ContextAutoencoder("resnet32", encoding).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    aug_gen = torch.Generator().manual_seed(1)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    for i in range(steps):
        x = augment(to_float(images[order[2 * i:2 * i + 2]]), AugmentConfig(), aug_gen)
        loss = model.forward_loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def test_tiny_cpu_run_prints_the_tables_and_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    results = throughput.main([*TINY, "--json", str(path)])
    printed = capsys.readouterr().out
    saved = json.loads(path.read_text())
    assert saved["config"] == json.loads(json.dumps(results["config"])) and saved["config"]["batch_size"] == 2
    rows = {r["variant"]: r for r in saved["train"]}
    assert list(rows) == ["literal-fp32", "shared-fp32", "shared-bf16", "fast"]
    assert rows["literal-fp32"]["vs_literal_fp32"] == 1.0
    assert rows["fast"]["images_per_s"] == rows["shared-fp32"]["images_per_s"]  # the CPU default
    for name, row in rows.items():
        assert row["images_per_s"] > 0, name
        assert row["step_ms"] == pytest.approx(1000 * 2 / row["images_per_s"])
        assert f"| {name} |" in printed
    assert rows["shared-bf16"]["options"] == "bf16 + channels_last"
    # the loss of the last timed step (warm-up 1 + 1 step) is the plain step's, written out by hand;
    # on the CPU "fast" is that same step; bf16 within its rounding (2**-8 per rounding, a few deep)
    for name, encoding in (("literal-fp32", "literal"), ("shared-fp32", "shared"), ("fast", "shared")):
        assert rows[name]["final_loss"] == hand_written_loss(encoding, steps=2), name
    shared = rows["shared-fp32"]["final_loss"]
    assert rows["shared-bf16"]["final_loss"] == pytest.approx(shared, rel=2e-2)
    features, probe = saved["evaluation"]
    assert features["images"] == 12
    assert features["projected_60000_images_s"] == pytest.approx(features["seconds"] * 60_000 / 12)
    assert probe["projected_100_epochs_50000_images_s"] == pytest.approx(probe["seconds"] * 100 * 50_000 / 8)
    env = saved["environment"]
    assert env["torch"] == torch.__version__ and env["command"].startswith("python benchmarks/throughput.py")
    assert "--batch-size 2" in env["command"] and env["git"]
    assert saved["goals"] == []  # the goals are about an H100
    assert saved["complete"] is True


def test_a_run_stopped_half_way_keeps_what_it_measured(tmp_path, monkeypatch, capsys):
    def stopped(cfg, device):
        raise KeyboardInterrupt  # as a time limit's signal would, after the training rows

    monkeypatch.setattr(throughput, "bench_evaluation", stopped)
    path = tmp_path / "bench.json"
    with pytest.raises(KeyboardInterrupt):
        throughput.main([*TINY, "--variants", "shared-fp32,fast", "--json", str(path)])
    saved = json.loads(path.read_text())
    assert saved["complete"] is False and "evaluation" not in saved
    assert [r["variant"] for r in saved["train"]] == ["shared-fp32", "fast"]
    assert saved["augment"][0]["images_per_s"] > 0
    assert "shared-fp32: " in capsys.readouterr().out  # printed when measured, not at the end


def test_a_failing_variant_is_reported_and_the_others_still_run(monkeypatch):
    real = throughput.bench_step

    def flaky(name, cfg, images):
        if name == "shared-fp32":
            raise RuntimeError("out of memory (pretend)")
        return real(name, cfg, images)

    monkeypatch.setattr(throughput, "bench_step", flaky)
    cfg, _ = throughput.parse_args([*TINY, "--variants", "literal-fp32,shared-fp32,fast"])
    rows = {r["variant"]: r for r in throughput.bench_variants(cfg, throughput.random_images(8, "cpu"))}
    assert rows["shared-fp32"]["error"] == "RuntimeError: out of memory (pretend)"
    assert rows["shared-fp32"]["note"] == rows["shared-fp32"]["error"]
    assert rows["literal-fp32"]["images_per_s"] > 0 and rows["literal-fp32"]["vs_literal_fp32"] == 1.0
    assert rows["fast"]["error"] == rows["shared-fp32"]["error"]  # on the CPU, shared-fp32's row


def test_markdown_table():
    rows = [{"a": "x", "b": 1234.5}, {"a": "y", "b": None}]
    assert throughput.markdown(rows, [("name", "a", "s"), ("value", "b", ",.0f")]) == (
        "| name | value |\n|---|---:|\n| x | 1,234 |\n| y | - |")


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu"], "invalid choice"),
    (["--device", "cpu", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--device", "cpu", "--images", "4", "--batch-size", "8"], "larger than --images"),
    (["--device", "cpu", "--variants", "fastest"], "unknown variant 'fastest'"),
    (["--device", "cpu", "--variants", "shared-bf16-compiled"], "CUDA only"),
])
def test_bad_arguments_are_refused(args, message, capsys):
    with pytest.raises(SystemExit):
        throughput.parse_args(args)
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused(capsys):
    with pytest.raises(SystemExit):
        throughput.parse_args(["--device", "cuda"])
    assert "no CUDA GPU" in capsys.readouterr().err


def test_every_variant_name_has_a_setup():
    for name in throughput.VARIANTS:
        encoding, options = throughput.variant_setup(name, torch.device("cuda"))
        assert encoding in ENCODINGS
    assert throughput.variant_setup("author-slots", torch.device("cuda"))[0] == "slots"
    assert set(throughput.DEFAULTS["cuda"].variants) <= set(throughput.VARIANTS)
    assert throughput.variant_setup("fast", torch.device("cuda"))[1].describe().endswith("dense_convs(16 px)")


# ------------------------------------------------------------------ conv_forms.py


def test_conv_forms_finds_every_convolution_of_the_step_and_the_default_forms():
    model = ContextAutoencoder("resnet32")
    calls = conv_forms.step_convs(model, 2, torch.device("cpu"))
    assert sum(len(c.names) for c in calls) == 33 + 3  # the tower's convs and the decoder's
    assert all(c.shape[0] == 2 * 16 + 1 for c in calls if c.names[0].startswith("tower"))  # + zero patch
    by_label = {c.label: c for c in calls}
    assert len(by_label["tower 16->16 3x3/1 on 8x8"].names) == 10  # stage 1
    assert len(by_label["tower 64->64 3x3/1 on 2x2"].names) == 9  # stage 3 after its first conv
    assert {conv_forms.default_form(c) for c in calls} == {"conv"}  # the CPU default
    torch.manual_seed(0)
    dense = conv_forms.step_convs(set_dense_pixels(build_model("context", "resnet32"), 16), 2,
                                  torch.device("cpu"))
    forms = {c.label: conv_forms.default_form(c) for c in dense}
    assert forms["tower 32->32 3x3/1 on 4x4"] == "dense" and forms["tower 16->16 3x3/1 on 8x8"] == "conv"
    assert forms["decoder 64->64 3x3/1 on 8x8"] == forms["decoder 64->32 3x3/1 on 8x8"] == "conv"


def test_every_form_of_every_convolution_computes_the_same_output():
    model = ContextAutoencoder("resnet32").double()
    for call in conv_forms.step_convs(model, 1, torch.device("cpu")):
        n, c, h, w = call.shape
        x = torch.randn(2, c, h, w)
        forms = conv_forms.forms_of(call)
        assert set(forms) == ({"conv", "dense"} if c * h * w * call.conv.out_channels * h * w <= 1 << 21
                              else {"conv"})
        expected = forms["conv"](x.double())
        for name, fn in forms.items():
            torch.testing.assert_close(fn(x.double()), expected, rtol=1e-10, atol=1e-10, msg=name)


def test_conv_forms_runs_on_the_cpu_and_writes_its_table(tmp_path, capsys):
    path = tmp_path / "forms.json"
    rows = conv_forms.main(["--device", "cpu", "--batch-size", "1", "--iters", "1", "--repeats", "1",
                            "--json", str(path)])
    out = capsys.readouterr().out
    assert "| layer | calls/step |" in out and "ms less)" in out
    saved = json.loads(path.read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and len(rows) == 11
    for r in rows:
        assert r["best"] in r["ms_per_call"] and r["best_ms_per_step"] <= r["default_ms_per_step"]
        assert all(ms > 0 for ms in r["ms_per_call"].values())


# ------------------------------------------------------------------ profile_step.py


@pytest.mark.parametrize("mode, label", [
    ([], "fp32 | batch 2"),
    (["--supervised"], "supervised ResNet-32, SGD, eager fp32 | batch 2"),
    (["--supervised", "--by-shape"], "eager fp32 | batch 2"),
])
def test_profile_step_runs_each_mode_on_the_cpu(mode, label, capsys):
    profile_step.main(["--device", "cpu", "--batch-size", "2", "--steps", "1", "--warmup", "1", "--top", "3",
                       *mode])
    out = capsys.readouterr().out
    assert label in out and "wall time per step, without the profiler:" in out
    assert ("input shapes" in out) == ("--by-shape" in mode)
    if "--supervised" in mode and "--by-shape" in mode:
        assert "[2, 16, 32, 32]" in out  # whole images: the supervised tower's stage-1 maps
