"""The command line end to end: pretrain a smoke run, evaluate its checkpoint, clear errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

from vwe.config import get_config, resolve
from vwe.evaluate import extract_features, linear_eval
from vwe.pretrain import load_pretrained

ROOT = Path(__file__).resolve().parents[1]


def vwe(*args, cwd=ROOT):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vwe", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_help_lists_the_commands():
    out = vwe("--help")
    assert out.returncode == 0
    for command in ("pretrain", "linear-eval", "embed"):
        assert command in out.stdout
    pretrain_help = vwe("pretrain", "--help").stdout  # one process: each start imports torch (seconds)
    for flag in ("--dataset", "--epochs", "--batch-size", "--seed", "--device", "--encoding", "--no-augment"):
        assert flag in pretrain_help


def test_pretrain_then_linear_eval(tmp_path):
    run = tmp_path / "run"
    out = vwe("pretrain", "--profile", "smoke", "--tower", "conv4", "--run-dir", str(run), "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "dataset shapes" in out.stdout and str(run / "checkpoint-0001.pt") in out.stdout
    out = vwe("linear-eval", "--profile", "smoke", "--checkpoint", str(run), "--probe-epochs", "2",
              "--no-progress")
    assert out.returncode == 0, out.stderr
    result = json.loads((run / "linear_eval.json").read_text())
    assert result["dataset"] == "shapes" and result["seeds"] == [0, 1, 2]
    assert result["data"] == {"dataset": "shapes", "n_train": 256, "n_test": 128, "evaluated_on": "test",
                              "archive_md5": None, "official_archive": None}  # which images, from what
    # the same evaluation from the library's parts: the checkpoint's embedding of the smoke data's two
    # splits, probed 2 epochs on seeds 0, 1, 2 (test accuracies; one process thread, as the command's)
    model, trained, _ = load_pretrained(run)
    cfg, data, _ = resolve(get_config("smoke", device="cpu", dataset=trained.dataset, n_train=trained.n_train,
                                      n_test=trained.n_test, data_seed=trained.data_seed))
    train, test = (extract_features(model, x) for x in (data.train_images, data.test_images))
    expected = linear_eval(train, data.train_labels, test, data.test_labels, seeds=(0, 1, 2), epochs=2,
                           num_classes=data.num_classes)
    assert result["accs"] == expected.accs and result["mean"] == expected.mean
    assert result["probe_norm"] == "standard" and len(result["probe"]["epochs"]) == 2
    assert result["data"]["n_train"] == 256 and result["data"]["archive_md5"] is None
    # without --profile, the checkpoint's own config decides: the smoke run's 5 probe epochs and its
    # data; the raw probe and a validation split carved from the training images on request
    out = vwe("linear-eval", "--checkpoint", str(run), "--probe-norm", "raw", "--validation", "56",
              "--seeds", "0", "--features", "tower", "--out", str(tmp_path / "raw.json"), "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "256 train / 56 validation (held-out training) images" in out.stdout  # Shapes: drawn on top
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert raw["probe_norm"] == "raw" and raw["features"] == "tower" and raw["probe_epochs"] == 5
    assert raw["data"]["evaluated_on"] == "validation" and raw["profile"] == "smoke"


def test_bad_input_gives_a_clear_error(tmp_path):
    out = vwe("pretrain", "--profile", "smoke", "--batch-size", "0", "--run-dir", str(tmp_path))
    assert out.returncode != 0 and "batch_size must be > 0" in out.stderr
    out = vwe("linear-eval", "--profile", "smoke", "--checkpoint", str(tmp_path / "nothing"))
    assert out.returncode != 0 and "no checkpoint" in out.stderr


def test_pretrain_with_another_number_of_epochs_gets_a_folder_of_its_own(monkeypatch):
    """`--epochs 30` on the cpu profile (4 epochs) must not resume, or refuse to shorten, the course's
    own run in runs/cpu: it trains in runs/cpu-30ep, as `table` does."""
    from types import SimpleNamespace

    import vwe.pretrain
    from vwe.__main__ import main
    from vwe.runs import profile_dir

    seen = {}

    def fake_pretrain(cfg, run_dir, *args, **kwargs):
        seen["run_dir"] = Path(run_dir)
        return SimpleNamespace(metrics=[], checkpoint=None, dataset="shapes")

    monkeypatch.setattr(vwe.pretrain, "pretrain", fake_pretrain)
    main(["pretrain", "--profile", "cpu", "--dataset", "shapes", "--n-train", "64", "--n-test", "32",
          "--epochs", "30", "--no-progress"])
    assert seen["run_dir"].parent == profile_dir("cpu", 30) != profile_dir("cpu")
    main(["pretrain", "--profile", "cpu", "--dataset", "shapes", "--n-train", "64", "--n-test", "32",
          "--no-progress"])
    assert seen["run_dir"].parent == profile_dir("cpu")


def test_linear_eval_and_embed_read_the_shipped_weights(tmp_path, capsys):
    """checkpoints/*.pt are compact weights with their config in the manifest beside them, not run
    checkpoints: `load_pretrained` (so `vwe linear-eval` and `vwe embed`) reads both kinds."""
    import torch
    from torchvision.io import write_png

    from vwe.__main__ import main
    from vwe.course import load_shipped

    shipped = load_shipped("context")
    path = ROOT / "checkpoints" / "cifar100-context-resnet32-aug.pt"
    model, cfg, state = load_pretrained(path)
    assert cfg == shipped.config and state["metrics"] == shipped.metrics
    theirs = shipped.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    image = torch.randint(0, 256, (3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    write_png(image, str(tmp_path / "one.png"))
    main(["embed", "--checkpoint", str(path), "--images", str(tmp_path / "one.png"), "--out",
          str(tmp_path / "emb.pt"), "--device", "cpu", "--no-progress"])
    assert "wrote" in capsys.readouterr().out
    with torch.no_grad():
        expected = shipped.model.image_embedding(image[None].float() / 255)
    assert torch.equal(torch.load(tmp_path / "emb.pt", weights_only=True)["embeddings"], expected)
