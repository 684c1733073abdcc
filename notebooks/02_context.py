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
# # 02 · Targets and contexts: a CBOW for patches
#
# What this notebook teaches:
#
# - the **CBOW analogy**: word2vec predicts a word from the words around it; the context autoencoder
#   predicts a patch from the patches around it;
# - the **context** of a target patch: its 8 neighbours in a fixed, positional order, and the **zero
#   patches** that stand in for neighbours outside the image (corners have 3 real neighbours, edges 5,
#   interior patches 8);
# - the **neighbour table** that encodes all of this, and `gather_context`, which builds every context
#   of a batch at once, checked against a plain loop and against the table;
# - an interactive **explorer** to look at the context of any image and target (the paper's Figure 1).
#
# **Exercises**: 2.1 `neighbour_table` and 2.2 `gather_context`, written by you and checked in the cell
# under each (`ex.neighbour_table.hint()` for a hint, `.solution()` for the answer); in the student copy an
# exercise not done yet is reported and the notebook goes on with the package's function. The last cell
# shows where they stand.
#
# Time: a few seconds under every profile.

# %% tags=["parameters"]
profile = "cpu"  # "smoke" (seconds, CI) | "cpu" (a laptop) | "paper" (CIFAR-100 on a GPU) | "author" (the author's code's recipe, CIFAR-100 on a GPU)
dataset = None  # None: the profile's; or "auto" | "cifar100" | "shapes"
device = None  # None: the profile's ("auto": the GPU when there is one)
run_dir = None  # None: runs/<profile>; checkpoints, figures and results go there

# %%
import torch
from IPython.display import display

from vwe import exercises as ex
from vwe import plots
from vwe.course import start
from vwe.data import to_float
from vwe.patches import OFFSETS, patchify
from vwe.widgets import ContextExplorer

s = start(profile, dataset=dataset, device=device, run_dir=run_dir)
cfg, data = s.cfg, s.data

# %% [markdown]
# ## 1. From words to patches
#
# **word2vec's CBOW** ("continuous bag of words") learns word vectors with a guessing game: hide one word
# of a sentence and predict it from the words in a small window around it. *The cat ___ on the mat*:
# the words around the gap say a lot about what fits in it, and a model that gets good at the game has
# to learn what words mean. The vectors it learns on the way are the word embeddings.
#
# The paper plays the same game with images. The image is cut into a 4×4 grid of patches (notebook 01),
# each patch in turn is the hidden **target**, and its **context** is the 8 patches around it. An encoder
# turns the context into an embedding, a decoder has to paint the missing patch from it, and the loss is
# the pixel error. The encoder's features are what we keep: the "visual word embeddings".
#
# One difference to CBOW matters. CBOW *averages* the word vectors of its window, so word order is lost
# (hence "bag of words"). Here the 8 context features are *concatenated* in a fixed order, like the
# positions of a fixed window: slot 0 is always the neighbour above-left, slot 7 always the one
# below-right. The decoder learns which slot sits where, so that order must never change.
#
# ## 2. The context order and the zero patches
#
# Slot j of a context holds the neighbour at offset (drow, dcol) = `OFFSETS[j]` from the target:

# %%
for j, (dr, dc) in enumerate(OFFSETS):
    where = {-1: "above", 0: "", 1: "below"}[dr] + {-1: " left", 0: "", 1: " right"}[dc]
    print(f"slot {j}: (drow, dcol) = ({dr:+d}, {dc:+d})  {where.strip()}")

# %% [markdown]
# A target on the border of the grid lacks some neighbours. The paper fills their slots with **zero
# patches**: 8×8 patches of all-zero pixels (black). The number of zero patches tells where a target
# sits: a **corner** (3 real neighbours, 5 zero patches), an **edge** (5 real, 3 zero) or the
# **interior** (8 real, none). Here is the paper's Figure 1 for one image, one target of each kind:

# %%
image_index = 0
image = data.test_images[image_index]  # (3, 32, 32) uint8
for target in (0, 2, 5):  # a corner, an edge, an interior target
    fig = plots.show_context(image, target)
    path = plots.save(fig, s.figures / f"02_context_{plots.target_kind(target)}.png")

# %% [markdown]
# ## 3. The neighbour table
#
# All of this fits in one small table, computed once: row k lists the patch index in each of target k's
# 8 slots, and -1 where the slot is a zero patch: the whole definition of a context, for pixels or for
# features.
#
# ### Exercise 2.1: `neighbour_table`
#
# Write it. Target k sits at grid row k // 4, column k % 4; its neighbour in slot j sits at the offset
# `OFFSETS[j]` from it, and is patch 4 · row + column when that row and column lie inside the grid
# (0 to 3), else -1. The check compares every entry with `vwe.patches.neighbour_table`.

# %% tags=["solution"]
def neighbour_table() -> torch.Tensor:
    """(16, 8) int64: entry [k, j] is the patch in context slot j of target k, -1 outside the grid."""
    # BEGIN SOLUTION
    table = torch.full((16, 8), -1, dtype=torch.long)  # -1 unless a neighbour exists
    for k in range(16):
        row, col = divmod(k, 4)
        for j, (dr, dc) in enumerate(OFFSETS):
            r, c = row + dr, col + dc
            if 0 <= r < 4 and 0 <= c < 4:
                table[k, j] = 4 * r + c
    return table
    # END SOLUTION


# %%
neighbour_table = ex.neighbour_table.check(neighbour_table)

# %%
table = neighbour_table()  # (16, 8) long, -1 = outside the grid
print("target  kind      " + " ".join(f"{f'({dr:+d},{dc:+d})':>7}" for dr, dc in OFFSETS) + "   real")
for k in range(16):
    cells = " ".join(f"{'-1' if m < 0 else str(m):>7}" for m in table[k].tolist())
    print(f"{k:6d}  {plots.target_kind(k):<8}  {cells}   {int((table[k] >= 0).sum()):4d}")

# %% [markdown]
# Read a few rows: target 0 (top-left corner) has only patches 1, 4 and 5 around it, in slots 4
# (right), 6 (below) and 7 (below-right); target 5 (interior) has all eight, 0 1 2 / 4 6 / 8 9 10, which
# is just the 3×3 block around it read row by row without its centre. Counting the real neighbours
# gives the three kinds of target: 4 corners, 8 edges and 4 interior patches.

# %%
real = (table >= 0).sum(dim=1)  # (16,) real neighbours per target
for kind, count in (("corner", 3), ("edge", 5), ("interior", 8)):
    targets = [k for k in range(16) if plots.target_kind(k) == kind]
    assert all(real[k] == count for k in targets)
    print(f"{kind:<8}: targets {targets}, {count} real neighbours, {8 - count} zero patches")

# %% [markdown]
# ## 4. Gathering every context at once
#
# `gather_context` turns a batch of patches (B, 16, 3, 8, 8) into every target's context
# (B, 16, 8, 3, 8, 8) without a loop. The table says how: slot j of target k holds patch `table[k, j]`
# of the same image, and a zero patch where the table says -1.
#
# ### Exercise 2.2: `gather_context`
#
# Write it, without a loop over the targets. One way: append one zero patch to every image as patch 16,
# point every -1 of the table at it, and index the patch axis once. The check runs your function on float
# and uint8 patches, on one image and on a batch, and compares every slot with
# `vwe.patches.gather_context`.

# %% tags=["solution"]
def gather_context(patches: torch.Tensor) -> torch.Tensor:
    """(B, 16, C, 8, 8) -> (B, 16, 8, C, 8, 8): every target's 8 neighbours, zero patches outside the grid."""
    # BEGIN SOLUTION
    with_zero = torch.cat([patches, torch.zeros_like(patches[:, :1])], dim=1)  # (B, 17, C, 8, 8): patch 16 = zeros
    table = neighbour_table()  # (16, 8), -1 outside the grid
    return with_zero[:, torch.where(table < 0, 16, table)]  # every -1 read as patch 16
    # END SOLUTION


# %%
gather_context = ex.gather_context.check(gather_context)

# %% [markdown]
# The library's `vwe.patches.gather_context` does the same without an index: it frames the 4x4 grid of
# patches with a border of zero patches (6x6) and, for each of the 8 slot offsets, takes the 4x4 window
# shifted by that offset, so window j holds slot j of every target at once. (Slices, not an index: their
# gradient is a plain sum, which a GPU computes faster than the scatter an index's gradient needs.)
# Whichever function runs here, yours or the library's, it is checked once more against the slowest,
# plainest way to do it, a loop over the 8 slots of every target with the offsets and bounds written out
# by hand.

# %%
x = to_float(data.test_images[:8])  # (B, 3, 32, 32)
patches = patchify(x)  # (B, 16, 3, 8, 8)
context = gather_context(patches)  # (B, 16, 8, 3, 8, 8)
print("patches", tuple(patches.shape), "-> contexts", tuple(context.shape))

for k in range(16):
    row, col = divmod(k, 4)
    by_hand = torch.zeros(len(x), 8, 3, 8, 8)  # zero patches unless a neighbour exists
    for j, (dr, dc) in enumerate(OFFSETS):
        r, c = row + dr, col + dc
        if 0 <= r < 4 and 0 <= c < 4:
            by_hand[:, j] = patches[:, 4 * r + c]
    assert torch.equal(context[:, k], by_hand), k
print("gather_context equals the hand-written loop for all 16 targets")
zeros_per_target = (context.flatten(3).abs().sum(dim=3) == 0)[0].sum(dim=1)  # all-zero slots, image 0
print("zero slots per target (image 0):", zeros_per_target.tolist())

# %% [markdown]
# (An image can also contain a genuinely black patch, which would count as a zero slot in the last line;
# for the model the two are the same input, which is the paper's choice.)
#
# The encoder of notebook 03 runs a small CNN, the *tower*, on each of the 8 context patches and
# concatenates the 8 outputs in slot order: 8 · 64 = 512 numbers, the target's embedding. A zero patch
# gives the same tower output wherever it appears, so the embedding also tells the decoder where the
# target sits in the image.
#
# ## 5. Explore
#
# Pick an image with the slider and a target with the buttons (laid out like the 4×4 grid). The title says
# which kind of target it is and how many zero patches its context has.

# %% tags=["nbval-ignore-output"]
explorer = ContextExplorer(data.test_images[:64], data.test_labels[:64], data.classes)
display(explorer)

# %% [markdown]
# ## Exercises
#
# Where this notebook's exercises stand (run an exercise's check again after changing it):

# %%
ex.summary("02")
