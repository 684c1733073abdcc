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
# # 01 · Images as a grid of patches
#
# What this notebook teaches:
#
# - which **data** runs (CIFAR-100, the paper's, or the built-in Shapes), its sizes and class names;
# - the **4×4 grid**: a 32×32 image is cut into 16 patches of 8×8 pixels, numbered row by row;
# - **patchify / unpatchify** as one reshape and one permute, written out by hand and then called from
#   `vwe.patches`, with checks that both agree and that the round trip gives the image back bit for bit;
# - the three **augmentations** of pretraining (random resized crop, rotation, colour jitter), each alone
#   and then combined, built from the pieces of `vwe.augment`.
#
# **Exercises**: 1.1 `patchify` and 1.2 `unpatchify`, written by you. The cell under each exercise checks
# your function against the package's on random images and edge cases, and says what is wrong if
# anything is; `ex.patchify.hint()` gives a hint, `ex.patchify.solution()` the answer. In the student copy
# (`make student` writes it to `student/`) each solution is a stub: its exercise reports "not done yet" and
# the notebook goes on with the package's function, so every later cell still runs. The last cell shows
# where the exercises stand.
#
# Time: a few seconds under every profile (the `paper` profile first reads CIFAR-100 once, about a minute).

# %% tags=["parameters"]
profile = "cpu"  # "smoke" (seconds, CI) | "cpu" (a laptop) | "paper" (CIFAR-100 on a GPU) | "author" (the author's code's recipe, CIFAR-100 on a GPU)
dataset = None  # None: the profile's; or "auto" | "cifar100" | "shapes"
device = None  # None: the profile's ("auto": the GPU when there is one)
run_dir = None  # None: runs/<profile>; checkpoints, figures and results go there

# %%
import torch

from vwe import exercises as ex
from vwe import plots
from vwe.augment import AugmentConfig, apply_params, augment, colour_jitter, crop_rotate, sample_params
from vwe.course import start
from vwe.data import describe, to_float

s = start(profile, dataset=dataset, device=device, run_dir=run_dir)
cfg, data = s.cfg, s.data

# %% [markdown]
# ## 1. The data
#
# Every notebook says which dataset actually ran. The `paper` profile uses CIFAR-100 (50 000 training and
# 10 000 test images of 100 classes); `dataset="auto"` falls back to **Shapes** when CIFAR-100 is neither
# on disk nor downloadable. Shapes is a built-in, offline dataset of 32×32 images of 10 shape classes whose
# colour, position, size, rotation, fill and background all vary within a class, so that only the
# *shape* tells the classes apart. Its numbers are not CIFAR-100 numbers, and no notebook pretends so.
#
# Images are kept as one uint8 tensor (N, 3, 32, 32) per split; models get floats in [0, 1].

# %%
print(describe(data.provenance()))
print("train images:", tuple(data.train_images.shape), data.train_images.dtype)
print("test images: ", tuple(data.test_images.shape), data.test_images.dtype)
print(f"{data.num_classes} classes, the first ten:", ", ".join(data.classes[:10]))

# %% [markdown]
# Sixteen training images with the patch grid drawn on them. The grid lines fall every 8 pixels; the small
# numbers are the patch indices k = 4·row + col, counted row by row from the top left.

# %%
fig = plots.show_images(data.train_images[:16], data.train_labels[:16], data.classes, grid=True)
path = plots.save(fig, s.figures / "01_grid.png")
print("saved", path.relative_to(s.run_dir))

# %% [markdown]
# ## 2. Patchify: one reshape, one permute
#
# A batch (B, 3, 32, 32) becomes (B, 16, 3, 8, 8). Split each spatial axis of 32 pixels into
# (4 patches, 8 pixels), move the two patch axes in front of the channel axis, and merge them into one
# axis of 16 patches. Because row comes before column, patch k sits at row k // 4, column k % 4.
#
# ### Exercise 1.1: `patchify`
#
# Write it. `x.reshape(B, C, 4, 8, 4, 8)` has the axes (B, C, row, y, col, x); one `permute` puts them in
# the order (B, row, col, C, y, x); one more `reshape` merges row and col. Read B and C from `x.shape`:
# the check runs your function on uint8 and float images, on one image and on one-channel images, and
# compares every pixel with `vwe.patches.patchify`.

# %% tags=["solution"]
def patchify(x: torch.Tensor) -> torch.Tensor:
    """(B, C, 32, 32) -> (B, 16, C, 8, 8): patch k is grid row k // 4, column k % 4."""
    # BEGIN SOLUTION
    B, C = x.shape[:2]
    split = x.reshape(B, C, 4, 8, 4, 8)  # (B, C, row, y, col, x): 32 = 4 patches x 8 pixels, twice
    moved = split.permute(0, 2, 4, 1, 3, 5)  # (B, row, col, C, y, x)
    return moved.reshape(B, 16, C, 8, 8)  # row and col merged, row-major
    # END SOLUTION


# %%
patchify = ex.patchify.check(patchify)  # yours when it is right, else vwe.patches.patchify

# %% [markdown]
# ### Exercise 1.2: `unpatchify`
#
# The inverse, (B, 16, C, 8, 8) back to (B, C, 32, 32): undo the steps in reverse order. View the 16
# patches as a 4×4 grid, move the axes back to (B, C, row, y, col, x), and merge each (grid position,
# pixel) pair into one axis of 32.

# %% tags=["solution"]
def unpatchify(p: torch.Tensor) -> torch.Tensor:
    """(B, 16, C, 8, 8) -> (B, C, 32, 32), the inverse of patchify."""
    # BEGIN SOLUTION
    B, _, C = p.shape[:3]
    grid = p.reshape(B, 4, 4, C, 8, 8)  # (B, row, col, C, y, x)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(B, C, 32, 32)  # (B, C, row, y, col, x) -> (B, C, 32, 32)
    # END SOLUTION


# %%
unpatchify = ex.unpatchify.check(unpatchify)

# %% [markdown]
# Whichever functions these are now, yours or the library's (`vwe.patches`, which also checks its input),
# they work on any dtype, so the uint8 round trip is exact, bit for bit; and patch 6 is the square at
# grid row 1, column 2.

# %%
x = data.train_images[:4]  # (B, 3, 32, 32) uint8
patches = patchify(x)
assert torch.equal(unpatchify(patches), x)  # the round trip gives the image back exactly
k = 6
row, col = divmod(k, 4)
assert torch.equal(patches[:, k], x[:, :, 8 * row:8 * row + 8, 8 * col:8 * col + 8])  # patch 6: row 1, col 2
print("patchify:  ", tuple(x.shape), "->", tuple(patches.shape))
print("unpatchify:", tuple(patches.shape), "->", tuple(unpatchify(patches).shape))
print(f"patch {k} is rows {8 * row}..{8 * row + 7}, columns {8 * col}..{8 * col + 7} of the image")

# %% [markdown]
# The 16 patches of the first image, laid out apart. Each is what the tower (notebook 03) sees at a time.

# %%
fig = plots.show_patches(patches[0])
path = plots.save(fig, s.figures / "01_patches.png")

# %% [markdown]
# ## 3. Augmentations, one at a time
#
# The paper augments each image with random cropping, random rotation and colour jitter *before* cutting
# it into patches, but gives no strengths. Ours (`AugmentConfig`, docs/design.md §4) are the usual ones:
# resized crops keeping 50–100 % of the area, rotations within ±15°, and colour jitter (brightness,
# contrast and saturation ±40 %, hue ±0.1 turn) applied to 80 % of the images. Turning augmentation off
# is a setting (`augment=False`), the paper's ablation.
#
# Every augmentation works on a whole batch at once, one random draw per image, with no Python loop over
# images, so it runs on the GPU where the data lives. First draw the parameters for six images:

# %%
aug = cfg.aug
print(aug)
x = to_float(data.train_images[:6])  # (6, 3, 32, 32) float in [0, 1]
generator = torch.Generator().manual_seed(0)
params = sample_params(len(x), aug, generator, x.device)  # one draw of every parameter per image
print("image | crop area | crop w/h | angle (deg) | brightness | hue shift | jitter applied")
for i in range(len(x)):
    print(f"{i:5d} | {params.scale[i]:9.2f} | {params.ratio[i]:8.2f} | {params.angle[i]:11.1f} | "
          f"{params.brightness[i]:10.2f} | {params.hue[i]:9.3f} | {bool(params.jitter[i])}")

# %% [markdown]
# Now apply each kind alone with the building blocks, then all three together with `apply_params`.
# Crop and rotation are one affine map per image (one resampling): a crop alone uses angle 0, a rotation
# alone the whole image. The black corners of a rotated image are zeros, torchvision's default fill.
# The colour jitter alone is applied to every image here, to show it; in training 20 % of the images
# keep their colours.

# %%
none = torch.zeros(len(x))
whole, centre = torch.ones(len(x)), torch.zeros(len(x))
crop_only = crop_rotate(x, params.scale, params.ratio, params.cx, params.cy, none)
rotation_only = crop_rotate(x, whole, whole, centre, centre, params.angle)
jitter_only = colour_jitter(x, params.brightness, params.contrast, params.saturation, params.hue,
                            apply=torch.ones(len(x), dtype=torch.bool))
combined = apply_params(x, params, aug)
for name, batch in (("crop", crop_only), ("rotation", rotation_only), ("colour jitter", jitter_only),
                    ("combined", combined)):
    assert batch.min() >= 0 and batch.max() <= 1  # still valid pixels
    print(f"{name:<14} {tuple(x.shape)} -> {tuple(batch.shape)}")

fig = plots.show_augmentations(x, [crop_only, rotation_only, jitter_only, combined],
                               ["crop", "rotation", "colour jitter", "all three"])
path = plots.save(fig, s.figures / "01_augmentations.png")

# %% [markdown]
# `augment(images, cfg, generator)` is the two steps above in one call, the one the training step uses:
# the same generator state draws the same parameters and gives the same images. And the identity config
# (whole image, no rotation, no jitter) returns the images untouched.

# %%
assert torch.equal(augment(x, aug, torch.Generator().manual_seed(0)), combined)
identity = AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1), rotation=0, jitter_p=0)
assert torch.equal(augment(x, identity, torch.Generator().manual_seed(0)), x)
print("augment == sample_params + apply_params; the identity config changes nothing")

# %% [markdown]
# After augmentation the image is cut into patches exactly as above: every patch of an augmented image
# comes from the same crop, rotation and colours, so neighbouring patches still fit together. That is what
# the context autoencoder needs (notebook 02): a patch is predicted from the patches around it.

# %%
print("augmented batch", tuple(combined.shape), "-> patches", tuple(patchify(combined).shape))

# %% [markdown]
# ## Exercises
#
# Where this notebook's exercises stand (run an exercise's check again after changing it):

# %%
ex.summary("01")
