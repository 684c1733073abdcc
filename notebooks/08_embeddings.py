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
# # 08 · Embeddings out: your images in, vectors out
#
# The point of self-supervised pretraining is the vectors it gives images nobody labelled. This notebook
# takes a pretrained checkpoint, writes the embeddings of a folder of image files to a file, reads the file
# back and searches it: which images does the model find nearest to a query image?
#
# What this notebook teaches:
#
# - `python -m vwe embed` (here its function, `embed_to_file`): any images in, one **image embedding** per
#   image out (`model.image_embedding`, 8192 numbers for the context autoencoder), and optionally the
#   16×64 **patch embeddings** (the tower's output on each patch, notebook 07's word vectors);
# - the file: `.npy` (+ a `.json` with the file names and where everything came from) or `.pt`;
# - **nearest images** by cosine similarity, and how often they share the query's class, beside raw pixels.
#
# **Exercises**: 8.1 `nearest_images` and 8.2 `class_agreement`, written by you and checked in the cell
# under each (`ex.nearest_images.hint()` for a hint, `.solution()` for the answer); in the student copy an
# exercise not done yet is reported and the notebook goes on with the package's function. The last cell
# shows where they stand.
#
# Time: seconds when notebook 04 has run (its checkpoint is reused); otherwise it pretrains the context
# autoencoder first (seconds under `smoke`, minutes under `cpu`).

# %% tags=["parameters"]
profile = "cpu"  # "smoke" (seconds, CI) | "cpu" (a laptop) | "paper" (CIFAR-100 on a GPU) | "author" (the author's code's recipe, CIFAR-100 on a GPU)
dataset = None  # None: the profile's; or "auto" | "cifar10" | "cifar100" | "shapes" | "folder:PATH"
device = None  # None: the profile's ("auto": the GPU when there is one)
run_dir = None  # None: runs/<profile>; checkpoints, figures and results go there

# %%
import torch
import torch.nn.functional as F
from PIL import Image

from vwe import exercises as ex
from vwe.course import start
from vwe.data import to_float
from vwe.embed import embed_to_file, load_embeddings
from vwe.plots import save, show_images
from vwe.pretrain import pretrain

s = start(profile, dataset=dataset, device=device, run_dir=run_dir)
cfg, data = s.cfg, s.data

# %% [markdown]
# ## 1. A checkpoint
#
# The context autoencoder of notebook 04, from the same run directory (trained here when 04 has not run).

# %% tags=["nbval-ignore-output"]
run = pretrain(cfg.replace(model="context"), s.run_dir / cfg.replace(model="context").run_name, data, s.device)

# %%
print(f"checkpoint {run.checkpoint.name} of {run.config.run_name}, {len(run.metrics)} epoch(s) on {run.dataset}")

# %% [markdown]
# ## 2. Your images, as files
#
# Any folder of JPEG, PNG, GIF or WebP files will do; each image is resized (shorter side to 32 pixels)
# and centre-cropped to 32×32. To have some here, we write a few test images as PNG files, one
# sub-folder per class, as a folder of your own photos might be sorted.

# %%
n_images = {"smoke": 40}.get(cfg.profile, 200)
my_images = s.run_dir / "08_my_images"
for i in range(n_images):
    path = my_images / data.classes[int(data.test_labels[i])] / f"{i:03d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.test_images[i].permute(1, 2, 0).numpy()).save(path)  # (3, 32, 32) -> (32, 32, 3)
print(f"{n_images} PNG files in {len(list(my_images.iterdir()))} folders under {my_images.name}/")

# %% [markdown]
# ## 3. Embeddings out
#
# On the command line this is
#
#     python -m vwe embed --checkpoint runs/<profile>/context-resnet32-aug --images runs/<profile>/08_my_images \
#         --out runs/<profile>/08_embeddings.npy --patches
#
# (`--images` also takes a dataset, such as `shapes` or `folder:PATH` with class sub-folders, and then
# writes its labels too). The same from Python:

# %%
out = s.run_dir / "08_embeddings.npy"
result, written = embed_to_file(run.run_dir, str(my_images), out, patches=True, device=str(s.device),
                                progress=False)
print("wrote", ", ".join(p.name for p in written))

# %% [markdown]
# Read the file back. The embeddings are exactly what `model.image_embedding` gives for the same images,
# and the patch embeddings the tower's output on each of the 16 patches:

# %%
emb = load_embeddings(out)
print(f"embeddings {tuple(emb['embeddings'].shape)}, patch embeddings {tuple(emb['patch_embeddings'].shape)}")
print("first files:", emb["files"][:3])
order = [int(f.split("/")[1][:3]) for f in emb["files"]]  # file i.png is test image i
with torch.no_grad():
    direct = run.model.eval().image_embedding(to_float(data.test_images[order]).to(s.device)).cpu()
assert torch.allclose(emb["embeddings"], direct, atol=1e-4)

# %% [markdown]
# ## 4. Nearest images
#
# Normalise every embedding to length 1; the dot products with the query's are then cosine similarities.
#
# ### Exercise 8.1: `nearest_images`
#
# Write it: the indices of the k images most cosine-similar to image `query`, the query itself left out,
# the most similar first. The check compares it with `vwe.words.nearest_neighbours` on embeddings of very
# different lengths, for several queries and k, in float32 and on a collection of two images.

# %% tags=["solution"]
def nearest_images(embeddings: torch.Tensor, query: int, k: int) -> torch.Tensor:
    """(N, E) embeddings -> (k,) the images most cosine-similar to image `query`, itself left out, best first."""
    # BEGIN SOLUTION
    unit = F.normalize(embeddings, dim=1)  # (N, E), each row of length 1
    sims = unit @ unit[query]  # (N,) cosine similarity to the query
    sims[query] = -2.0  # below any cosine: never its own neighbour
    return sims.topk(k).indices
    # END SOLUTION


# %%
nearest_images = ex.nearest_images.check(nearest_images)

# %% [markdown]
# The 5 most similar images to the first one, best first:

# %%
query = 0
top = nearest_images(emb["embeddings"], query, 5)  # (5,)
unit = F.normalize(emb["embeddings"], dim=1)
sims = unit[top] @ unit[query]  # (5,) their cosine similarity to the query
classes = [f.split("/")[0] for f in emb["files"]]  # the sub-folder each file sits in
for sim, i in zip(sims, top, strict=True):
    print(f"{sim:.3f}  {emb['files'][i]}")
# show_images titles each image by classes[label]: give each its own title
titles = [f"query: {classes[query]}"] + [f"{sim:.2f} {classes[i]}" for sim, i in zip(sims, top, strict=True)]
pixels = data.test_images[order]
fig = show_images(pixels[[query, *top.tolist()]], labels=list(range(6)), classes=titles, ncols=6)
save(fig, s.figures / "08_nearest.png")

# %% [markdown]
# How often do the 5 nearest share the query's class, over every query? The same for raw pixels (3072
# numbers per image) is the bar to clear. Under `smoke` the model has had one epoch: expect both near the
# chance level of 1 in the number of classes; under `cpu` and `paper` the embeddings should pull ahead.
#
# ### Exercise 8.2: `class_agreement`
#
# Write it: over every image, the share (in %) of its k nearest other images (by cosine similarity) that
# share its label. The check compares it with the package's, for k of 1, 3 and 5 and in float32.

# %% tags=["solution"]
def class_agreement(embeddings: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """(N, E) embeddings, (N,) labels -> the share (%) of each image's k nearest others with its label."""
    # BEGIN SOLUTION
    unit = F.normalize(embeddings, dim=1)
    sims = unit @ unit.T  # (N, N)
    sims.fill_diagonal_(-2.0)  # an image is not its own neighbour
    nearest = sims.topk(k, dim=1).indices  # (N, k)
    return 100 * (labels[nearest] == labels[:, None]).float().mean().item()
    # END SOLUTION


# %%
class_agreement = ex.class_agreement.check(class_agreement)

# %%
label = torch.tensor([sorted(set(classes)).index(c) for c in classes])  # each file's folder as a number
print(f"top-5 class agreement: embeddings {class_agreement(emb['embeddings'], label, 5):.1f} %, "
      f"raw pixels {class_agreement(to_float(pixels).flatten(1), label, 5):.1f} %, "
      f"chance {100 / len(set(classes)):.1f} %")

# %% [markdown]
# ## Exercises
#
# Where this notebook's exercises stand (run an exercise's check again after changing it):

# %%
ex.summary("08")
