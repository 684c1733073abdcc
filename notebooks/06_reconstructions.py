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
# # 06 · Reconstructions: what the two autoencoders paint
#
# What this notebook teaches:
#
# - how to **load the pretrained models**: on CIFAR-100 the two shipped with the repository (pretrained
#   on real CIFAR-100 at the scale printed below), else notebook 04's runs;
# - the paper's **Figure 5**: test patches next to their reconstructions by the simple autoencoder (which
#   sees the patch) and the context autoencoder (which sees only the 8 patches around it);
# - the paper's observation: the simple autoencoder **rebuilds better**, yet its features are **worse**
#   for classification, because copying a patch needs no understanding of the image (notebook 05
#   measures the features of the models here);
# - a whole test image **rebuilt patch by patch from contexts**, and where the errors sit;
# - an interactive **explorer** of any test image and patch.
#
# **Exercises**: 6.1 `error_per_position` and 6.2 `errors_by_kind`, written by you and checked in the cell
# under each (`ex.error_per_position.hint()` for a hint, `.solution()` for the answer); in the student copy
# an exercise not done yet is reported and the notebook goes on with the package's function. The last cell
# shows where they stand.
#
# Time: seconds. With `models="run"` (the default on Shapes) notebook 04 must have run with the same
# parameters: this notebook says so, and how, when its checkpoints are missing; it never trains.

# %% tags=["parameters"]
profile = "cpu"  # "smoke" (seconds, CI) | "cpu" (a laptop) | "paper" (CIFAR-100 on a GPU) | "author" (the author's code's recipe, CIFAR-100 on a GPU)
dataset = None  # None: the profile's; or "auto" | "cifar100" | "shapes"
device = None  # None: the profile's ("auto": the GPU when there is one)
run_dir = None  # None: runs/<profile>; checkpoints, figures and results go there
models = "auto"  # "auto": shipped on CIFAR-100, else notebook 04's | "shipped" | "run"

# %%
import torch
from IPython.display import Markdown, display

from vwe import exercises as ex
from vwe import plots
from vwe.course import load_models, start
from vwe.data import batches, to_float
from vwe.patches import patchify
from vwe.pretrain import held_out_loss
from vwe.widgets import ReconstructionExplorer

s = start(profile, dataset=dataset, device=device, run_dir=run_dir)
cfg, data = s.cfg, s.data

# %% [markdown]
# ## 1. The two pretrained models
#
# `load_models` returns both autoencoders in eval mode: on CIFAR-100 (`models="auto"`) the compact
# weights shipped in `checkpoints/` (their sha256 checked), otherwise notebook 04's runs from the same
# run directory (`context-resnet32-aug` and `patch-resnet32-aug`). It never trains: a missing run is an
# error that names the notebook or command that makes it.

# %% tags=["nbval-ignore-output"]
runs = load_models(s, models)
for name, run in runs.items():
    print(f"{name:<10}: {run.source}")
simple, context = runs["simple AE"].model, runs["context AE"].model

# %% [markdown]
# Under the `smoke` profile both models had one epoch on 256 Shapes images: they are barely trained, and
# the reconstructions below are blurry guesses, mostly the average colour around. That is expected; on
# CIFAR-100 the shipped models show real reconstructions.
#
# ## 2. The paper's Figure 5
#
# Both models rebuild all 16 patches of every image: (B, 3, 32, 32) → (B, 16, 3, 8, 8). For a few test
# images we pick one patch each, of every kind (interior, edge, corner), and put the ground truth beside
# the two reconstructions. Each reconstruction carries its mean squared error.

# %%
n = 8
x = to_float(data.test_images[:n]).to(s.device)  # (n, 3, 32, 32)
with torch.no_grad():
    simple_recon = simple(x).cpu()  # (n, 16, 3, 8, 8)
    context_recon = context(x).cpu()  # (n, 16, 3, 8, 8)
truth = patchify(x.cpu())  # (n, 16, 3, 8, 8)

images = torch.arange(n)
chosen = torch.tensor([5, 6, 9, 10, 1, 7, 0, 15])  # 4 interior, 2 edge, 2 corner patches
labels = [f"image {i}, patch {k}\n({plots.target_kind(k)})" for i, k in enumerate(chosen.tolist())]
fig = plots.show_reconstructions(truth[images, chosen], simple_recon[images, chosen],
                                 context_recon[images, chosen], labels=labels)
path = plots.save(fig, s.figures / "06_figure5.png")
print("saved", path.relative_to(s.run_dir))

# %% [markdown]
# The simple autoencoder sees the very patch it has to paint: its task is compression through a
# 64-number bottleneck. The context autoencoder never sees the target: it has to *guess* it from the 8
# neighbours, like guessing a hidden word from the words around it. Where the target holds something
# its neighbours do not announce (the tip of a shape, a stripe ending), the guess must fail.
#
# ## 3. How well each model rebuilds the test set
#
# The mean squared error over every patch of every test image (the held-out loss of notebook 04), and the
# same error per position in the grid, averaged over the test images.
#
# ### Exercise 6.1: `error_per_position`
#
# Write the error per position: from the reconstructions (B, 16, 3, 8, 8) of a batch of images
# (B, 3, 32, 32), the squared error of each of the 16 grid positions, averaged over the images and over
# each patch's 3 · 8 · 8 numbers: a tensor (16,). Their mean is the test MSE. The check compares it with
# the package's on random reconstructions, for one image and several, in float64 and float32.

# %% tags=["solution"]
def error_per_position(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(B, 16, 3, 8, 8) reconstructions of (B, 3, 32, 32) images -> (16,) mean squared error per position."""
    # BEGIN SOLUTION
    err = (recon - patchify(images)) ** 2  # (B, 16, 3, 8, 8)
    return err.mean(dim=(0, 2, 3, 4))  # over the images and each patch's 3 * 8 * 8 numbers
    # END SOLUTION


# %%
error_per_position = ex.error_per_position.check(error_per_position)

# %% tags=["nbval-ignore-output"]
test_images = data.test_images.to(s.device)
per_patch = {}
for name, model in (("simple AE", simple), ("context AE", context)):
    total = torch.zeros(16)
    with torch.no_grad():
        for idx in batches(len(test_images), cfg.eval_batch_size, shuffle=False, device=s.device):
            xb = to_float(test_images[idx])  # (B, 3, 32, 32)
            total += error_per_position(model(xb), xb).cpu() * len(xb)  # (16,) summed over images
    per_patch[name] = total / len(test_images)
    mse = per_patch[name].mean().item()
    # the same number through the library's held-out loss (`vwe.pretrain.held_out_loss`)
    assert abs(mse - held_out_loss(model, test_images, cfg.eval_batch_size)) <= 1e-4 * mse
    logged = runs[name].metrics[-1]["test_loss"]
    print(f"{name:<10}: test MSE {mse:.5f} (logged at the end of its pretraining, on the test images it "
          f"was trained beside: {logged:.5f})")

for name, errors in per_patch.items():
    print(f"\n{name}: test MSE per patch position, x 1000")
    for row in errors.view(4, 4).tolist():
        print("   " + "  ".join(f"{1000 * e:6.2f}" for e in row))

# %% [markdown]
# Two things to look for. Trained long enough, the simple autoencoder's error should be far lower, as in
# the paper: copying is easier than guessing. And for the context model, corner targets (3 real
# neighbours, 5 zero patches) should be the hardest to guess: they have the least context. After a
# short pretraining either may not show yet; the cell below reads both from the numbers above.
#
# ### Exercise 6.2: `errors_by_kind`
#
# Write it: from the 16 errors per position, the mean error of the **corner** positions (3 real
# neighbours), of the **edge** positions (5) and of the **interior** ones (8), as a dict
# `{"corner": ..., "edge": ..., "interior": ...}`. `plots.target_kind(k)` names the kind of position k.
# The check compares it with the package's on random errors, on 0, 1, ..., 15 and in float32.

# %% tags=["solution"]
def errors_by_kind(errors: torch.Tensor) -> dict[str, float]:
    """(16,) errors per grid position -> the mean over each kind: {"corner": ..., "edge": ..., "interior": ...}."""
    # BEGIN SOLUTION
    kinds = [plots.target_kind(k) for k in range(16)]  # "corner", "edge" or "interior"
    return {kind: errors[[k for k in range(16) if kinds[k] == kind]].mean().item()
            for kind in ("corner", "edge", "interior")}
    # END SOLUTION


# %%
errors_by_kind = ex.errors_by_kind.check(errors_by_kind)

# %% tags=["nbval-ignore-output"]
mse = {name: errors.mean().item() for name, errors in per_patch.items()}
easier, harder = sorted(mse, key=mse.get)
by_kind = errors_by_kind(per_patch["context AE"])  # the context model's mean error per kind of position
hardest = max(by_kind, key=by_kind.get)
order = "as in the paper" if easier == "simple AE" else "not the paper's order"
display(Markdown(
    f"- The **{easier}** rebuilds the test patches better: test MSE {mse[easier]:.5f} against "
    f"{mse[harder]:.5f}, {mse[harder] / mse[easier]:.1f} times lower ({order}).\n"
    f"- The context model's hardest targets are the **{hardest}** patches (mean MSE x 1000: "
    + ", ".join(f"{kind} {1000 * e:.2f}" for kind, e in by_kind.items()) + ")."))

# %% [markdown]
# The paper finds the opposite ranking for the *features*: a linear classifier on the context
# autoencoder's embeddings is far more accurate than on the simple autoencoder's (34.08 % against
# 17.81 % on CIFAR-100); notebook 05 measures whether the models here agree, and on which probe. The
# paper's reason: a low reconstruction error only says that a patch was copied well; to guess a patch
# from its surroundings, the context model has to learn what images are made of, and that is what a
# classifier can use.
#
# ## 4. A whole image rebuilt from contexts
#
# Every patch of one test image, each predicted by the context autoencoder from its own 8 neighbours
# only, put back together with `unpatchify`, beside the simple autoencoder's rebuild. The error maps
# show where the guesses fail.

# %%
for name, recon in (("context AE", context_recon), ("simple AE", simple_recon)):
    fig = plots.show_rebuilt_image(x[0].cpu(), recon[0], name)
    path = plots.save(fig, s.figures / f"06_rebuilt_{name.split()[0]}.png")

# %% [markdown]
# ## 5. Explore
#
# Pick a test image with the slider and a patch with the buttons (laid out like the 4×4 grid). The top row
# shows the patch and both reconstructions, the bottom row the whole image rebuilt by each model with the
# patch outlined; the title gives each model's error on that patch.

# %% tags=["nbval-ignore-output"]
explorer = ReconstructionExplorer(data.test_images[:64], simple, context, data.test_labels[:64], data.classes)
display(explorer)

# %% [markdown]
# ## Exercises
#
# Where this notebook's exercises stand (run an exercise's check again after changing it):

# %%
ex.summary("06")
