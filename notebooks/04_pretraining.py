# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Pretraining the context autoencoder and the simple autoencoder
#
# What this notebook teaches:
#
# - the pretraining recipe (Adam, the MSE over all 16 targets, augmentation per sample on the training
#   device) and the numbers it implies, printed before anything runs: steps per epoch, total steps,
#   images seen;
# - one training step written out, checked against the library's step;
# - training both models with `vwe.pretrain.pretrain`, on the GPU when there is one, with a checkpoint
#   every epoch that is **reused** when this notebook (or 05, 06) runs again;
# - reading the loss curves (train and held-out) and the throughput;
# - a reproducibility check: the reloaded checkpoint gives exactly the logged held-out loss.
#
# **Exercises**: 4.1 `reconstruction_loss` and 4.2 `train_step`, written by you and checked in the cell
# under each (`ex.train_step.hint()` for a hint, `.solution()` for the answer); in the student copy an
# exercise not done yet is reported and the notebook goes on with the package's function. The last cell
# shows where they stand.
#
# Time: `smoke` seconds; `cpu` (4 epochs on 4 000 images) minutes per model on a 2-core CPU, seconds on
# a GPU; `paper` (200 epochs on 50 000 images) minutes per model on one GPU, plus compilation
# (BENCHMARKS.md has the measured throughput; section 6 prints this run's). A second run reuses the
# checkpoints and takes seconds.

# %% tags=["parameters"]
profile = "cpu"  # "smoke" (seconds, CI) | "cpu" (a laptop) | "paper" (CIFAR-100 on a GPU) | "author" (the author's code's recipe, CIFAR-100 on a GPU)
dataset = None  # None: the profile's; or "auto" | "cifar100" | "shapes"
device = None  # None: the profile's ("auto": the GPU when there is one)
run_dir = None  # None: runs/<profile>; checkpoints, figures and results go there

# %%
import copy

import pandas as pd
import torch
from torch import nn

from vwe import exercises as ex
from vwe.augment import augment
from vwe.course import start
from vwe.data import describe, to_float
from vwe.models import build_model
from vwe.patches import patchify
from vwe.plots import plot_losses, save
from vwe.pretrain import PretrainStep, held_out_loss, load_pretrained, pretrain
from vwe.runs import list_checkpoints, load_checkpoint

s = start(profile, dataset=dataset, device=device, run_dir=run_dir)
cfg, data = s.cfg, s.data

# %% [markdown]
# ## 1. The recipe and what it implies
#
# The paper (section 4.1): Adam with learning rate 1e-4, batch 512, 200 epochs on the 50 000 CIFAR-100
# training images, the mean squared error between every reconstructed patch and the true one. The
# `paper` profile follows the text; `cpu` and `smoke` shrink the data and the epochs, and raise the
# learning rate to 1e-3 because a few epochs are far fewer steps. Augmentation (random resized crop,
# rotation, colour jitter) is applied per sample to the float batch on the training device, before
# patching.
#
# A batch has two units: **images** and **(context, target) pairs**, 16 of them per image (or per view
# of an image). The text's "batch size of 512" reads as 512 images = 8 192 pairs; the author's code
# (the `author` profile, notebook 05 section 7) means 512 pairs: 8 images x 4 views (3 augmented and
# the original) x 16 targets, so 6 250 steps an epoch instead of 97. Every batch below is printed in
# both units.
#
# Both models get the same recipe; only the encoder differs. Each has its own run directory under the
# run dir, named after the model, its tower and the augmentation setting.

# %%
configs = {"context AE": cfg.replace(model="context"), "simple AE": cfg.replace(model="patch")}
n_train = len(data.train_labels)
print(describe(data.provenance()))
print(f"epochs {cfg.epochs} | batch {cfg.batch_text} | Adam lr {cfg.lr} | augmentation {cfg.augment}")
print(cfg.aug)
print()
for name, c in configs.items():
    steps = n_train // c.batch_size  # the last, short batch is dropped
    print(f"{name:<11} run {c.run_name:<22} {steps:5d} steps/epoch x {c.epochs} epochs = "
          f"{steps * c.epochs:6d} steps, {steps * c.batch_size * c.epochs:8,d} images seen, "
          f"{steps * c.pairs_per_step * c.epochs:10,d} pairs")

# %% [markdown]
# ## 2. One training step, written out
#
# A step takes a uint8 batch that already lives on the training device, converts it to [0, 1] floats,
# augments it, reconstructs all 16 patches of every image and takes one Adam step on the MSE. First its
# two pieces, by you.
#
# ### Exercise 4.1: `reconstruction_loss`
#
# The loss: the mean squared error between every reconstructed patch and the true one, over all 16
# targets of every image. `recon` is what the autoencoder returns, (B, 16, 3, 8, 8); `images` the batch
# it saw, (B, 3, 32, 32). Return the loss as a tensor (the step calls `backward()` on it). The check
# compares it with the package's loss on random reconstructions, in float64 and float32, for one image
# and several.

# %% tags=["solution"]
def reconstruction_loss(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The MSE over all 16 targets: recon (B, 16, C, 8, 8), images (B, C, 32, 32) -> a 0-d tensor."""
    # BEGIN SOLUTION
    targets = patchify(images)  # (B, 16, C, 8, 8): every patch is a target
    return ((recon - targets) ** 2).mean()  # over every number of every target of every image
    # END SOLUTION


# %%
reconstruction_loss = ex.reconstruction_loss.check(reconstruction_loss)

# %% [markdown]
# ### Exercise 4.2: `train_step`
#
# One step on a float batch `x`: clear the gradients of the step before, compute the loss (your
# `reconstruction_loss(model(x), x)`, or `model.forward_loss(x)`, the same number), backpropagate, update
# the weights, and return the loss the gradients came from. The check trains copies of a small context
# autoencoder for two steps with yours and with the package's step, and compares each step's loss and
# how far every weight moved.

# %% tags=["solution"]
def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> torch.Tensor:
    """One optimisation step on the float batch x (B, 3, 32, 32); returns the loss (a 0-d tensor)."""
    # BEGIN SOLUTION
    optimizer.zero_grad()  # the previous step's gradients would add up with this one's
    loss = reconstruction_loss(model(x), x)
    loss.backward()
    optimizer.step()
    return loss.detach()
    # END SOLUTION


# %%
train_step = ex.train_step.check(train_step)

# %% [markdown]
# Now the step by hand on a copy of a fresh model, then `PretrainStep` (the step `pretrain` trains with, in
# `vwe/pretrain.py`) on another copy with the same random generator state: the two losses must be equal, and
# the weights end up where the library's step puts them (up to rounding, if your loss sums in another
# order).

# %%
torch.manual_seed(cfg.seed)
model = build_model("context", cfg.tower, cfg.encoding)
by_hand, by_library = copy.deepcopy(model), copy.deepcopy(model)
images = data.train_images[:4]  # (B, 3, 32, 32) uint8, a small batch to keep this quick

gen = torch.Generator().manual_seed(1)
opt = torch.optim.Adam(by_hand.parameters(), lr=cfg.lr)
x = augment(to_float(images), cfg.aug, gen)  # (B, 3, 32, 32) float, one crop/rotation/jitter each
loss = train_step(by_hand, opt, x)  # MSE over (B, 16, 3, 8, 8), one Adam step

step = PretrainStep(by_library, torch.optim.Adam(by_library.parameters(), lr=cfg.lr), cfg.aug,
                    torch.Generator().manual_seed(1))
library_loss = step(images)
assert torch.allclose(loss, library_loss)
apart = max((a - b).abs().max().item() for a, b in zip(by_hand.parameters(), by_library.parameters(), strict=True))
print(f"train_step and PretrainStep: losses {loss.item():.6f} and {library_loss.item():.6f}, "
      f"updated weights at most {apart:.1e} apart")

# %% [markdown]
# ## 3. Pretrain the context autoencoder
#
# `pretrain(config, run_dir, data, device)` runs the visible epoch loop of `vwe/engine.py` (`fit`): one
# `train_one_epoch` and one `held_out_loss` per epoch, a checkpoint after every epoch (written
# atomically: a kill never leaves half a file) and one line per epoch in `metrics.jsonl`.
#
# **Checkpoints are reused.** When the run directory already holds a finished run with the same config,
# `pretrain` trains nothing and loads it; an interrupted run resumes from its newest checkpoint. So this
# cell takes seconds the second time, and notebooks 05 and 06 call the same function to get the models
# this notebook trained. A run directory holding a run with *another* config raises
# `ConfigMismatchError`: pick another `run_dir`, or pass `fresh=True` to start over.
#
# The progress bar shows the epochs (and the steps of the current one), with the latest losses and the
# throughput in images per second.

# %% tags=["nbval-ignore-output"]
context = pretrain(configs["context AE"], s.run_dir / configs["context AE"].run_name, data, s.device)

# %% [markdown]
# ## 4. Pretrain the simple autoencoder
#
# The same recipe for the baseline whose encoder sees the target patch itself.

# %% tags=["nbval-ignore-output"]
simple = pretrain(configs["simple AE"], s.run_dir / configs["simple AE"].run_name, data, s.device)

# %% [markdown]
# What each run left behind (the last two checkpoints are kept: the newest and one to fall back on):

# %%
runs = {"context AE": context, "simple AE": simple}
for name, r in runs.items():
    kept = [p.name for p in list_checkpoints(r.run_dir)]  # newest first
    logs = [f for f in ("metrics.jsonl", "config.json") if (r.run_dir / f).is_file()]
    print(f"{name:<11} {len(r.metrics)} epochs | checkpoint {r.checkpoint.relative_to(s.run_dir)}")
    print(f"{'':<11} files: {', '.join(kept + logs)}")

# %% [markdown]
# ## 5. Loss curves
#
# Train loss (solid) and held-out loss on the test images (dashed), per epoch. Two things to look for:
# both curves should still fall at the end (more epochs would help; the `paper` profile runs 200), and
# the held-out loss should track the train loss (the autoencoders do not overfit the pixels). And the
# simple autoencoder should reach the lower loss: rebuilding a patch from itself is much easier than
# from its neighbours (the line under the plot says whether it does here). Under `smoke` (one epoch)
# each curve is a single point.

# %%
fig = plot_losses({name: r.metrics for name, r in runs.items()})
save(fig, s.figures / "04_losses.png")

# %% tags=["nbval-ignore-output"]
final = {name: r.metrics[-1]["test_loss"] for name, r in runs.items()}
lower, higher = sorted(final, key=final.get)
print(f"final held-out loss: {lower} {final[lower]:.5f}, {higher} {final[higher]:.5f}: the {lower} is lower, "
      + ("as expected" if lower == "simple AE" else "not yet the expected order"))

# %% [markdown]
# ## 6. Throughput
#
# Images per second of training (augmentation, forward, backward, Adam), per epoch, from the metrics log.
# The first epoch on a GPU includes `torch.compile`'s compilation.

# %% tags=["nbval-ignore-output"]
table = pd.DataFrame([{"model": name, **m} for name, r in runs.items() for m in r.metrics])
print(f"device: {s.device}")
table.rename(columns={"seconds": "train s", "images_per_s": "images/s"}).round(4)

# %% [markdown]
# ## 7. What is in a checkpoint
#
# One dict: the model and optimizer states, the config, the epoch, the metrics so far, the random
# generator states (so a resumed run continues the same random sequence) and the provenance (git
# revision, torch version, device). It is loaded with `weights_only=True`: tensors and plain containers
# only, no code runs.

# %%
state = load_checkpoint(context.checkpoint)
print("keys:", sorted(state))
print("epoch:", state["epoch"], "| config run name:", configs["context AE"].run_name)
print("provenance fields:", sorted(state["provenance"]))

# %% [markdown]
# ## 8. Reproducibility check
#
# Reload the saved checkpoint with `load_pretrained` (a fresh model, weights from the file, eval mode) and
# recompute the held-out loss: it must equal the loss logged at the end of training.

# %% tags=["nbval-ignore-output"]
test_images = data.test_images.to(s.device)
for name, r in runs.items():
    model, loaded_cfg, _ = load_pretrained(r.checkpoint, s.device)
    assert loaded_cfg == r.config  # the checkpoint records the config it was trained with
    logged = r.metrics[-1]["test_loss"]
    recomputed = held_out_loss(model, test_images, cfg.eval_batch_size)
    print(f"{name:<11} held-out MSE logged {logged:.6f} | recomputed from {r.checkpoint.name} {recomputed:.6f}")
    assert abs(recomputed - logged) <= 1e-5 * logged

# %% [markdown]
# ## Exercises
#
# Where this notebook's exercises stand (run an exercise's check again after changing it):

# %%
ex.summary("04")
