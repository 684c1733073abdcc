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
# # 03 · The model: towers, the context encoder, the decoder
#
# What this notebook teaches:
#
# - the two **towers** (ResNet-32 and Conv4) that turn one 8×8 patch into D = 64 numbers, stage by stage;
# - the **context encoder**: the embedding of target patch k is the tower features of its 8 neighbours,
#   concatenated in context order (8 · 64 = 512 numbers);
# - two ways to compute it, **literal** (the paper as written: 128 tower passes per image) and **shared**
#   (17 passes), proven equal in eval mode, and why they differ in train mode (BatchNorm);
# - the **decoder** (512 numbers → an 8×8 patch) and the **simple autoencoder** baseline, whose encoder
#   sees the target patch itself;
# - why the 8192-d image embedding holds only 16 · 64 + 64 distinct numbers.
#
# **Exercises**: 3.1 `shared_encoding` and 3.2 `decode`, written by you and checked in the cell under
# each (`ex.shared_encoding.hint()` for a hint, `.solution()` for the answer); in the student copy an
# exercise not done yet is reported and the notebook goes on with the package's function. The last cell
# shows where they stand.
#
# Time: a few seconds under every profile; nothing is trained here (notebook 04 trains).

# %% tags=["parameters"]
profile = "cpu"  # "smoke" (seconds, CI) | "cpu" (a laptop) | "paper" (CIFAR-100 on a GPU) | "author" (the author's code's recipe, CIFAR-100 on a GPU)
dataset = None  # None: the profile's; or "auto" | "cifar100" | "shapes"
device = None  # None: the profile's ("auto": the GPU when there is one)
run_dir = None  # None: runs/<profile>; checkpoints, figures and results go there

# %%
import copy
import time

import torch
from torch import nn

from vwe import exercises as ex
from vwe.course import start
from vwe.data import to_float
from vwe.models import ContextAutoencoder, Conv4, PatchAutoencoder, ResNet32, count_parameters
from vwe.patches import gather_context, gather_neighbours, neighbour_table, patchify

s = start(profile, dataset=dataset, device=device, run_dir=run_dir)
cfg, data = s.cfg, s.data

# %% [markdown]
# ## 1. The towers
#
# A tower is a small CNN applied to one patch at a time, with the same weights for every patch (the
# "shared weights" of the paper's Figure 2). Both towers come from Patacchiola & Storkey (2020). They were
# designed for 32×32 images; here they see 8×8 patches, so the spatial maps are tiny.
#
# **ResNet-32**: a 3×3 stem, then three stages of 5 residual blocks with 16, 32 and 64 channels; stages 2
# and 3 start with stride 2. Run one dummy patch through it and print the shape after each stage:

# %%
torch.manual_seed(0)
resnet, conv4 = ResNet32().eval(), Conv4().eval()
patch = torch.rand(1, 3, 8, 8)  # one 8x8 RGB patch; only its shape matters here

with torch.no_grad():
    x = resnet.stem(resnet.normalize(patch))
    print(f"{'input patch':<24} {tuple(patch.shape)}")
    print(f"{'stem conv-BN-ReLU':<24} {tuple(x.shape)}")
    for i, stage in enumerate(resnet.stages, 1):
        x = stage(x)  # stage 1: 8x8 => 8x8, stage 2: => 4x4, stage 3: => 2x2
        print(f"{f'stage {i} (5 blocks)':<24} {tuple(x.shape)}")
    feature = x.mean(dim=(2, 3))  # global average pool over the 2x2 map
    print(f"{'global average pool':<24} {tuple(feature.shape)}")
    assert torch.equal(feature, resnet(patch))  # the stage-by-stage walk is the tower's forward

# %% [markdown]
# **Conv4**: four conv3×3-BN-ReLU blocks with 8, 16, 32 and 64 filters, 2×2 average pooling after the
# first three. On an 8×8 patch the third pooling already leaves a single pixel.

# %%
with torch.no_grad():
    x, block = conv4.normalize(patch), 0
    print(f"{'input patch':<24} {tuple(x.shape)}")
    for layer in conv4.features:
        x = layer(x)
        if isinstance(layer, nn.ReLU):
            block += 1
            print(f"{f'block {block} conv-BN-ReLU':<24} {tuple(x.shape)}")
        elif isinstance(layer, nn.AvgPool2d):
            print(f"{'  2x2 average pool':<24} {tuple(x.shape)}")
    feature = x.mean(dim=(2, 3))
    print(f"{'global average pool':<24} {tuple(feature.shape)}")
    assert torch.equal(feature, conv4(patch))

# %% [markdown]
# Parameter counts. ResNet-32 is almost twenty times larger than Conv4; the paper finds it also gives
# the better features (Table 1: 34.08 % against 24.55 %).

# %%
print(f"{'ResNet-32 tower':<18} {count_parameters(resnet):>9,} parameters")
print(f"{'  stem':<18} {count_parameters(resnet.stem):>9,}")
for i, stage in enumerate(resnet.stages, 1):
    print(f"{f'  stage {i}':<18} {count_parameters(stage):>9,}")
print(f"{'Conv4 tower':<18} {count_parameters(conv4):>9,} parameters")

# %% [markdown]
# ## 2. The context encoder, two ways
#
# The embedding of target patch k is the concatenation, in the fixed context order, of the tower outputs
# of its 8 neighbours: 8 · 64 = 512 numbers. A neighbour outside the grid is an all-zero patch.
#
# - **literal** (the paper as written): build the 8 context patches of every target and run the tower on
#   each: 16 targets × 8 slots = **128 tower passes per image**.
# - **shared**: a patch's tower output does not depend on which target it serves, so run the tower once on
#   each of the 16 patches and once on the zero patch, then *gather* the features with the neighbour
#   table: **16 passes per image + 1 per batch** (at most 17 per image, about 8× less work).
#
# ### Exercise 3.1: `shared_encoding`
#
# Write the shared encoding for a tower: one tower call on the B · 16 patches and the zero patch together
# (one batch, as BatchNorm in train mode must see them), then the features gathered into contexts with
# `gather_neighbours(feats, fill)`, notebook 02's gather for any per-patch items: here each patch's 64
# features, with the zero patch's features as the fill. The check runs it with a seeded Conv4 tower in
# eval mode on random patches, compares every number with the literal encoding, and counts the tower's
# calls.

# %% tags=["solution"]
def shared_encoding(tower: nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """(B, 16, 3, 8, 8) -> (B, 16, 8 * D): each target's 8 neighbours' tower features, in slot order."""
    # BEGIN SOLUTION
    B = len(patches)
    zero = patches.new_zeros(1, *patches.shape[2:])  # (1, 3, 8, 8): the zero patch
    feats = tower(torch.cat([patches.flatten(0, 1), zero]))  # (B*16 + 1, D): one call, one batch
    context = gather_neighbours(feats[:-1].view(B, 16, -1), feats[-1])  # (B, 16, 8, D)
    return context.flatten(2)  # (B, 16, 8*D): slot 0's D features, then slot 1's, ...
    # END SOLUTION


# %%
shared_encoding = ex.shared_encoding.check(shared_encoding)

# %% [markdown]
# Now both ways on a few test images, beside the library's two encodings. BatchNorm's running statistics
# of a fresh model are the trivial mean 0 / variance 1; a few forward passes in train mode give them real
# values, so the comparison below is not between identity-like layers.

# %%
torch.manual_seed(0)
shared = ContextAutoencoder("resnet32", encoding="shared")
with torch.no_grad():
    for _ in range(2):
        shared(to_float(data.train_images[:16]))  # train mode: updates the running statistics
shared.eval()
literal = ContextAutoencoder("resnet32", encoding="literal").eval()
literal.load_state_dict(shared.state_dict())  # the same weights, two ways of computing

x = to_float(data.test_images[:4])  # (B, 3, 32, 32), B = 4
B = len(x)
tower = shared.tower
with torch.no_grad():
    patches = patchify(x)  # (B, 16, 3, 8, 8)
    # literal: every target's 8 context patches through the tower
    context_patches = gather_context(patches)  # (B, 16, 8, 3, 8, 8)
    z_literal_inline = tower(context_patches.flatten(0, 2)).view(B, 16, 8 * 64)  # B*128 patches
    # shared: 16 patches + the zero patch through the tower, then gather the features (exercise 3.1)
    z_shared_inline = shared_encoding(tower, patches)  # (B, 16, 512)
    feats = tower(patches.flatten(0, 1)).view(B, 16, 64)  # (B, 16, 64): each patch's features (section 5)
    zero_feat = tower(torch.zeros(1, 3, 8, 8))[0]  # (64,): the tower's output on the zero patch

    z_shared, z_literal = shared.encode(x), literal.encode(x)  # the library's two encodings
print("patches         ", tuple(patches.shape))
print("context patches ", tuple(context_patches.shape))
print("tower features  ", tuple(feats.shape))
print("patch embeddings", tuple(z_shared.shape))
# The inline lines and the library agree (up to float rounding: batch sizes differ).
assert torch.allclose(z_shared_inline, z_shared, atol=1e-5)
assert torch.allclose(z_literal_inline, z_literal, atol=1e-5)

# %% [markdown]
# The two encodings side by side: the largest difference over every number of the batch.

# %% tags=["nbval-ignore-output"]
diff = (z_shared - z_literal).abs().max().item()
print(f"eval mode: max |shared - literal| = {diff:.1e} over {z_shared.numel():,} numbers")
assert diff < 1e-5

# %% [markdown]
# ### The cost argument
#
# Count the patches that reach the tower (a forward hook adds up its batch sizes), then time both on
# the same batch. On a batch this small, fixed per-call costs hide part of the 8× difference in work; with
# the real batches of training (512 images on a GPU) the time ratio approaches the ratio of tower passes.

# %%
def tower_patches(model: ContextAutoencoder, images: torch.Tensor) -> int:
    """How many patches go through the tower when `model` encodes `images`."""
    seen = []
    hook = model.tower.register_forward_hook(lambda mod, inp, out: seen.append(len(inp[0])))
    with torch.no_grad():
        model.encode(images)
    hook.remove()
    return sum(seen)


for name, model in (("literal", literal), ("shared", shared)):
    n = tower_patches(model, x)
    print(f"{name:<8} {n:4d} tower passes for {B} images = {n / B:6.2f} per image")

# %% tags=["nbval-ignore-output"]
batch = x.to(s.device)
for name, model in (("literal", literal), ("shared", shared)):
    model.to(s.device)
    with torch.no_grad():
        model.encode(batch)  # warm-up: first calls allocate and pick kernels
        if s.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(2):
            model.encode(batch)
        if s.device.type == "cuda":
            torch.cuda.synchronize()  # kernels run asynchronously; wait before reading the clock
    ms = (time.perf_counter() - t0) / 2 * 1000
    print(f"{name:<8} {ms:8.1f} ms per batch of {len(batch)} images on {s.device}")
    model.cpu()

# %% [markdown]
# ### Train mode is different: BatchNorm
#
# In eval mode BatchNorm uses its stored running statistics, so a patch's features do not depend on the
# rest of the batch and both encodings agree. In **train mode** BatchNorm normalises with the statistics
# of the current batch, and the two encodings feed the tower *different batches*:
#
# - literal: every patch once per context slot it fills (an interior patch 8 times, a corner patch 3
#   times) plus **44 zero patches per image** (the count below), a third of the batch;
# - shared: every patch exactly once and one zero patch per batch.
#
# So in train mode the two give different features, their gradients differ too, and the two models
# train differently (not just faster). This project trains with `shared` by default; `encoding="literal"`
# is there to follow the paper to the letter.

# %%
table = neighbour_table()  # (16, 8): the patch in each context slot, -1 outside the grid
print("zero patches per image in the literal batch:", int((table < 0).sum()))
print("context slots per image in the literal batch:", table.numel())

# %% tags=["nbval-ignore-output"]
with torch.no_grad():
    # Copies, so that the train-mode passes do not move the running statistics of the models above.
    train_diff = (copy.deepcopy(shared).train().encode(x) - copy.deepcopy(literal).train().encode(x))
print(f"train mode: max |shared - literal| = {train_diff.abs().max().item():.2f}")
assert train_diff.abs().max() > 1e-3

# %% [markdown]
# ## 3. The decoder
#
# The decoder turns one patch embedding back into an 8×8 RGB patch: two linear layers, a reshape to a
# 64 × 4 × 4 map, nearest-neighbour upsampling to 8×8 and three 3×3 convolutions; a sigmoid keeps the
# pixels in [0, 1]. The same decoder runs on all 16 patch embeddings of every image.

# %%
with torch.no_grad():
    h = z_shared.flatten(0, 1)  # (B*16, 512): the decoder sees one patch embedding at a time
    print(f"{'patch embeddings':<22} {tuple(h.shape)}")
    h = shared.decoder.fc(h)
    print(f"{'2 linear + ReLU':<22} {tuple(h.shape)}")
    h = h.view(-1, 64, 4, 4)
    print(f"{'reshape':<22} {tuple(h.shape)}")
    for layer in shared.decoder.up:
        h = layer(h)
        if isinstance(layer, (nn.Upsample, nn.Conv2d)):
            print(f"{type(layer).__name__:<22} {tuple(h.shape)}")
    recon = shared(x)  # the whole model: (B, 3, 32, 32) -> (B, 16, 3, 8, 8)
print(f"{'autoencoder output':<22} {tuple(recon.shape)}")
assert torch.equal(h.view(B, 16, 3, 8, 8), recon)
assert 0 <= recon.min() and recon.max() <= 1  # sigmoid output, like the [0, 1] target pixels

# %% [markdown]
# ### Exercise 3.2: `decode`
#
# The autoencoder runs the same decoder on every patch embedding of every image, and the decoder takes one
# embedding per row. Write `decode(decoder, z)`, (B, 16, E) → (B, 16, 3, 8, 8), each patch back in its
# place. The check runs it with a small decoder on one and on several images, and when a patch lands in
# the wrong place it says whose embedding the patch was made from.

# %% tags=["solution"]
def decode(decoder: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """(B, 16, E) -> (B, 16, 3, 8, 8): the decoder on every patch embedding, each output in its place."""
    # BEGIN SOLUTION
    B, N, E = z.shape
    return decoder(z.reshape(B * N, E)).view(B, N, 3, 8, 8)  # row b * 16 + k is patch k of image b
    # END SOLUTION


# %%
decode = ex.decode.check(decode)

# %%
with torch.no_grad():
    assert torch.allclose(decode(shared.decoder, z_shared), recon, atol=1e-6)  # the same rows, up to rounding
print("decode(decoder, embeddings) gives the autoencoder's output", tuple(recon.shape))

# %% [markdown]
# ## 4. The simple autoencoder
#
# The paper's baseline uses the same tower and decoder family, but each patch is rebuilt from the tower
# features of **itself**: the patch embedding has D = 64 numbers and the decoder takes 64 inputs. Its task
# is much easier (it sees what it must draw); the paper finds its features worse for classification
# (17.81 % against the context model's 34.08 %), and notebook 05 measures whether the models here agree.

# %%
torch.manual_seed(0)
simple = PatchAutoencoder("resnet32").eval()
with torch.no_grad():
    print(f"{'':<16} {'patch emb.':>12} {'output':>18} {'image emb.':>11}")
    for name, model in (("context AE", shared), ("simple AE", simple)):
        out_shape = tuple(model(x).shape)
        print(f"{name:<16} {str(tuple(model.encode(x).shape)):>12} {str(out_shape):>18} "
              f"{model.image_embedding(x).shape[1]:>11}")

print()
for name, model in (("context AE", shared), ("simple AE", simple)):
    print(f"{name:<12} tower {count_parameters(model.tower):>9,} + decoder {count_parameters(model.decoder):>9,}"
          f" = {count_parameters(model):>9,} parameters")

# %% [markdown]
# ## 5. The 8192-d embedding holds 16 · 64 + 64 distinct numbers
#
# The image embedding of the context model concatenates the 16 patch embeddings: 16 · 512 = 8192 numbers.
# But every one of them is a copy of one of **17 tower outputs**: the 16 patches' features and the zero
# patch's. So the 8192-d vector is a *fixed linear rearrangement* `G` (a 0/1 matrix of size 8192 × 1088)
# of 16 · 64 + 64 = 1088 unique numbers, and the zero patch's 64 are the same for every image.
#
# Build `G` from the neighbour table and check it against the model's embedding:

# %%
D = 64
source = torch.where(table < 0, 16, table)  # (16, 8); slot 16 = the zero patch
columns = (source[:, :, None] * D + torch.arange(D)).flatten()  # (8192,): unique number behind each entry
G = torch.zeros(16 * 8 * D, 17 * D)
G[torch.arange(len(columns)), columns] = 1

with torch.no_grad():
    embedding = shared.image_embedding(x)  # (B, 8192)
    unique = torch.cat([feats.flatten(1), zero_feat.expand(B, D)], dim=1)  # (B, 1088)
print("G:", tuple(G.shape), "| ones per row:", G.sum(1).unique().long().tolist())
print("embedding", tuple(embedding.shape), "= unique", tuple(unique.shape), "@ G.T")
assert torch.allclose(embedding, unique @ G.T, atol=1e-5)

# How many times each patch's features are copied = in how many contexts the patch sits.
uses = G.sum(0)[::D].long()  # (17,)
print("copies of each patch's features, on the 4x4 grid:")
print(uses[:16].view(4, 4))
print("copies of the zero patch's features:", int(uses[16]))

# %% [markdown]
# What this means for the linear probe of notebook 05: a linear layer `W` on the 8192-d embedding computes
# exactly what the linear layer `W @ G` computes on the 1088 unique numbers, and the zero patch's 64 are a
# constant, which a bias already covers. A probe on the context model's embedding therefore has the
# capacity of a probe on 1024 image-dependent numbers plus a bias: the same as the simple autoencoder's
# 16 · 64 = 1024-d embedding. Its advantage, where it has one, comes from better features, not more of them.

# %%
W = torch.randn(10, 8192)  # any linear layer on the 8192-d embedding (10 outputs)
assert torch.allclose(embedding @ W.T, unique @ (W @ G).T, rtol=1e-4, atol=1e-3)
print("W:", tuple(W.shape), "on the embedding = W @ G:", tuple((W @ G).shape), "on the unique numbers")

# %% [markdown]
# ## Exercises
#
# Where this notebook's exercises stand (run an exercise's check again after changing it):

# %%
ex.summary("03")
