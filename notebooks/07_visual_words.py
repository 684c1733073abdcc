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
# # 07 · Visual words: nearest neighbours, a vocabulary, bags of words
#
# The paper borrows word2vec's idea (predict a word from the words around it) but never looks at its
# embeddings the way word2vec users do: which words are *near* a word, and what the vocabulary looks like.
# This notebook does.
#
# What this notebook teaches:
#
# - every patch gets a vector (a "word vector"): row i·16 + k of a feature matrix is patch k of image i;
# - **nearest neighbours** under cosine similarity, side by side for raw pixels, random weights, the simple
#   autoencoder and the context autoencoder (its tower feature, and its context embedding, which never sees
#   the patch itself);
# - a **vocabulary of visual words** by k-means: the patches nearest each word, and how often each is used;
# - two more ways to score features: a **bag of visual words** per image fed to the same linear probe, and
#   **kNN classification** (no training at all), beside the linear probe of notebook 05;
# - an explorer: pick any patch, see its neighbours and its word.
#
# **Exercises**: 7.1 `nearest_word` and 7.2 `update_centroids` (the two steps of k-means) and 7.3
# `knn_predict` (the weighted kNN vote), written by you and checked in the cell under each
# (`ex.nearest_word.hint()` for a hint, `.solution()` for the answer); in the student copy an exercise not
# done yet is reported and the notebook goes on with the package's function. The last cell shows where
# they stand.
#
# Time: `smoke` under a minute; `cpu` a few minutes on a 2-core CPU; `paper` a few minutes on a GPU. It never
# trains an autoencoder: with `models="run"` (the default on Shapes) notebook 04 must have run with the
# same parameters.

# %% tags=["parameters"]
profile = "cpu"  # "smoke" (seconds, CI) | "cpu" (a laptop) | "paper" (CIFAR-100 on a GPU) | "author" (the author's code's recipe, CIFAR-100 on a GPU)
dataset = None  # None: the profile's; or "auto" | "cifar100" | "shapes"
device = None  # None: the profile's ("auto": the GPU when there is one)
run_dir = None  # None: runs/<profile>; checkpoints, figures and results go there
models = "auto"  # "auto": shipped on CIFAR-100, else notebook 04's | "shipped" | "run"

# %%
import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import display

from vwe import exercises as ex
from vwe.course import load_models, start
from vwe.data import to_float
from vwe.evaluate import knn_accuracy, linear_eval, random_weights_model
from vwe.patches import gather_neighbours, patchify
from vwe.plots import save
from vwe.words import (
    assign,
    bag_of_words,
    kmeans,
    nearest_neighbours,
    patch_embeddings,
    patch_pixels,
    word_exemplars,
)
from vwe.words_widgets import WordExplorer, plot_word_frequencies, show_neighbours, show_vocabulary

s = start(profile, dataset=dataset, device=device, run_dir=run_dir)
cfg, data = s.cfg, s.data

# %% [markdown]
# ## 1. The three encoders
#
# The same three models as notebook 05: an untrained ResNet-32 tower (**random weights**, the floor), the
# **simple autoencoder** and the **context autoencoder**, loaded by `load_models` (on CIFAR-100 the
# ones shipped with the repository, else notebook 04's runs; it never trains).

# %% tags=["nbval-ignore-output"]
pretrained = load_models(s, models)
models = {"random weights": random_weights_model(cfg.tower, seed=cfg.seed).to(s.device)}
for name, p in pretrained.items():
    models[name] = p.model
    print(f"{name:<10}: {p.source}")

# %% [markdown]
# ## 2. A patch is a word, its tower feature a word vector
#
# word2vec gives every word of the vocabulary one vector. Here every *patch* of every image gets one: the
# tower's 64 numbers for that 8×8 patch. Cut the images into their 16 patches, run the tower on all of them
# at once, and row i·16 + k is patch k of image i:

# %%
context_model = models["context AE"]
x = to_float(data.train_images[:2]).to(s.device)  # (2, 3, 32, 32)
with torch.no_grad():
    rows = context_model.tower(patchify(x).flatten(0, 1))  # (2, 16, 3, 8, 8) -> (32, 3, 8, 8) -> (32, 64)
print(f"images {tuple(x.shape)} -> patches {tuple(patchify(x).shape)} -> rows {tuple(rows.shape)}")
assert torch.allclose(rows, patch_embeddings(context_model, data.train_images[:2]), atol=1e-5)

# %% [markdown]
# The context autoencoder has a second vector per patch: its **context embedding**, the 8 neighbours' tower
# features in context order (8 · 64 = 512), what the decoder rebuilds the patch from. It describes the
# patch's *surroundings* and never sees the patch itself. It is a rearrangement of the same tower features
# (plus the tower's output on the zero patch, for neighbours outside the image), so we gather it from them
# instead of running the tower again:

# %%
with torch.no_grad():
    zero = context_model.tower(torch.zeros(1, 3, 8, 8, device=s.device))[0]  # (64,) the zero patch's feature
context_rows = gather_neighbours(rows.view(2, 16, 64), zero).flatten(2).flatten(0, 1)  # (2*16, 8*64)
print(f"context embeddings {tuple(context_rows.shape)}")
assert torch.allclose(context_rows, patch_embeddings(context_model, data.train_images[:2], kind="context"),
                      atol=1e-5)

# %% [markdown]
# Now every patch of every image, for five kinds of vector: the 192 raw pixels (3 · 8 · 8, no model at all),
# the tower features of the three models, and the context AE's context embedding. The training patches are
# the database we search and cluster; the test patches are the queries.

# %%
def all_features(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every patch row of `images` under each kind of vector: name -> (N*16, D)."""
    feats = {"raw pixels": patch_embeddings(None, images, kind="pixels", device=s.device)}
    for name, model in models.items():
        feats[name] = patch_embeddings(model, images, batch_size=cfg.eval_batch_size)
    tower = feats["context AE"].view(len(images), 16, -1)  # (N, 16, 64)
    feats["context AE (context)"] = gather_neighbours(tower, zero).flatten(2).flatten(0, 1)  # (N*16, 512)
    return feats


train_feats, test_feats = all_features(data.train_images), all_features(data.test_images)
for name in train_feats:
    print(f"{name:<21} train {tuple(train_feats[name].shape)}  test {tuple(test_feats[name].shape)}")

# %% [markdown]
# ## 3. Nearest neighbours
#
# Similarity is the cosine of the angle between two vectors (both L2-normalised, then a dot product), as
# for word vectors. For a query patch we take the 8 most similar training patches. Written out for one
# query, it is one matrix-vector product and a `topk`:

# %%
kind = "context AE"
query_row = 5  # test image 0, patch 5
sims = F.normalize(train_feats[kind], dim=1) @ F.normalize(test_feats[kind][query_row], dim=0)  # (N*16,)
top = sims.topk(8)
sims_lib, idx_lib = nearest_neighbours(test_feats[kind][query_row:query_row + 1], train_feats[kind], k=8)
assert torch.allclose(top.values, sims_lib[0], atol=1e-5)  # (indices too, up to ties)
print(f"{len(sims)} similarities -> the 8 best rows {tuple(top.indices.shape)}")

# %% [markdown]
# `nearest_neighbours` does the same for many queries against a database read in chunks, keeping a running
# top-k, so a million patch rows fit in memory. We pick query patches with something in them (the test
# patches whose pixels vary the most, one per image) and look at their neighbours under every kind of
# vector. Each row: the query, a gap, then its 8 nearest training patches, best first.

# %%
n_queries = 4
# Spatial variation per channel, averaged over channels: (64, 16, 3, 8, 8) -> (64, 16, 3, 64) -> (64, 16)
pixel_std = to_float(patchify(data.test_images[:64])).flatten(3).std(dim=3).mean(dim=2)
best_patch = pixel_std.argmax(dim=1)  # (64,) the busiest patch of each image
images_picked = pixel_std.max(dim=1).values.argsort(descending=True, stable=True)[:n_queries]
query_rows = (images_picked * 16 + best_patch[images_picked]).to(s.device)  # (Q,)
neighbours = {}
for name in train_feats:
    _, idx = nearest_neighbours(test_feats[name][query_rows], train_feats[name], k=8)  # (Q, 8)
    neighbours[name] = patch_pixels(data.train_images, idx.flatten().cpu()).view(n_queries, 8, 3, 8, 8)
print(f"query rows {query_rows.tolist()}")
fig = show_neighbours(patch_pixels(data.test_images, query_rows.cpu()), neighbours,
                      titles=[f"query: test image {int(i)}, patch {int(r) % 16}"
                              for i, r in zip(images_picked, query_rows, strict=True)])
save(fig, s.figures / "07_neighbours.png")

# %% [markdown]
# What each row can and cannot see:
#
# - **raw pixels** match the same colours in the same places; as a cosine it ignores a vector's length, so
#   a dark and a bright patch of one hue count as the same;
# - **random weights** respond to colour and coarse edges (random convolutions do), but weigh them
#   arbitrarily;
# - the **simple AE** was trained to rebuild the patch from itself, so its features keep what the pixels
#   need: colour and layout;
# - the **context AE** tower was trained to describe a patch so that its *neighbours* can be rebuilt, which
#   should favour structure that continues across patches (an edge, a corner, a stripe) over flat colour;
# - the **context embedding** finds patches whose *surroundings* look alike, whatever the patch itself
#   holds: the visual version of word2vec's "words used in the same contexts".
#
# Judge for yourself whether the trained towers' neighbours look better than the pixels'. Short
# pretraining (the `smoke` and `cpu` profiles) may leave them no better; notebook 05's linear probe puts a
# number on the same question, and the paper's claim is about 200 epochs on CIFAR-100 (`paper` profile).
#
# ## 4. A vocabulary of visual words
#
# word2vec starts from a vocabulary of words; images have none, so we make one: cluster all training patch
# vectors with k-means and call each cluster a **visual word** (Sivic & Zisserman's "Video Google", 2003,
# did this with hand-made SIFT descriptors). We cluster the context AE's tower features with *spherical*
# k-means (vectors normalised, so a word is a direction, the same cosine as the neighbours above), seeded by
# k-means++ (a fixed seed: the same vocabulary every run).
#
# k-means alternates two steps from a first set of k centroids (the words): **assign** every row to its
# nearest centroid, then **update** every centroid to the mean of the rows assigned to it. Neither step can
# raise the *inertia*, the sum of squared distances from every row to its centroid.
#
# ### Exercise 7.1: `nearest_word`
#
# The assignment step: for rows (N, D) and centroids (k, D), each row's nearest centroid by squared
# Euclidean distance, as (N,) int64 word indices; a tie goes to the lowest index. The check compares it
# with `vwe.words.assign` on rows and centroids of very different lengths, on ties, on one row and in
# float32.

# %% tags=["solution"]
def nearest_word(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(N, D) rows, (k, D) centroids -> (N,) the index of each row's nearest centroid (the lowest on a tie)."""
    # BEGIN SOLUTION
    d = ((x[:, None] - centroids[None]) ** 2).sum(-1)  # (N, k) squared distances
    return d.argmin(dim=1)  # the first of equal minima: the lowest word index
    # END SOLUTION


# %%
nearest_word = ex.nearest_word.check(nearest_word)

# %% [markdown]
# ### Exercise 7.2: `update_centroids`
#
# The update step: each word's new centroid is the mean of the rows assigned to it; a word no row chose
# keeps its centroid. The check compares it with the package's step (the one `vwe.words.kmeans` takes) with
# every word chosen, with a word left empty and in float32.

# %% tags=["solution"]
def update_centroids(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(N, D) rows, (N,) their words, (k, D) centroids -> (k, D): each word at the mean of its rows."""
    # BEGIN SOLUTION
    new = centroids.clone()
    for w in range(len(centroids)):
        rows = x[labels == w]
        if len(rows):  # a word no row chose keeps its centroid
            new[w] = rows.mean(dim=0)
    return new
    # END SOLUTION


# %%
update_centroids = ex.update_centroids.check(update_centroids)

# %% [markdown]
# One round of both steps by hand on the context AE's training patch vectors, from the first rows as
# centroids: the inertia must not go up.

# %%
vectors = train_feats["context AE"]  # (N*16, 64)
start_words = vectors[:8].clone()  # 8 words to start from: the first 8 rows
labels = nearest_word(vectors, start_words)


def inertia(words: torch.Tensor, labels: torch.Tensor) -> float:
    """The sum of squared distances from every row to its word, summed in float64."""
    return ((vectors.double() - words.double()[labels]) ** 2).sum().item()


before = inertia(start_words, labels)
moved = update_centroids(vectors, labels, start_words)
after_update = inertia(moved, labels)  # the same rows, their words moved to their means
after_assign = inertia(moved, nearest_word(vectors, moved))  # each row to its nearest word again
# Neither step raises it, up to float32 rounding: the means and the distances the assignment compares
# are float32, off by about 1e-7 relative.
assert after_update <= before * (1 + 1e-6) and after_assign <= after_update * (1 + 1e-6)
print(f"inertia from the first rows as words: {before:.4g} -> {after_update:.4g} after the update "
      f"-> {after_assign:.4g} after the next assignment")

# %% [markdown]
# `vwe.words.kmeans` repeats the two steps until the inertia stops falling, seeded by k-means++, and here in
# its spherical form.

# %% tags=["nbval-ignore-output"]
n_words = {"smoke": 16, "cpu": 64}.get(cfg.profile, 256)
vocab = kmeans(train_feats["context AE"], n_words, seed=cfg.seed, spherical=True)
counts = torch.bincount(vocab.labels, minlength=n_words).cpu()
print(f"{n_words} words from {len(vocab.labels)} patches: {vocab.iters_run} iterations, "
      f"inertia {vocab.inertia:.1f}, words used {int((counts > 0).sum())}")

# %% [markdown]
# Each word shown by the 8 training patches nearest its centroid, with the share of all training patches
# that belong to it:

# %%
exemplars = word_exemplars(train_feats["context AE"], vocab.centroids, n=8).cpu()  # (words, 8) rows
exemplar_pixels = patch_pixels(data.train_images, exemplars.flatten()).view(n_words, 8, 3, 8, 8)
fig = show_vocabulary(exemplar_pixels, counts, ncols=4)
save(fig, s.figures / "07_vocabulary.png")

# %% [markdown]
# Look at what sets one word apart from another: flat colours, edges of a given direction, corners,
# textures? A tower trained briefly mostly sorts by colour; structure shows up in the words with edges.
#
# How often is each word used? Natural-language word frequencies fall off steeply (Zipf's law): a few words
# are everywhere, most are rare. k-means counteracts this: it minimises squared distances, so a dense
# region of patches (say, one background colour) is split into several words instead of forming one huge
# word. Expect a much flatter curve than Zipf's, the most common words a few times the uniform share.

# %%
fig = plot_word_frequencies(counts)
save(fig, s.figures / "07_word_frequencies.png")

# %% [markdown]
# ## 5. Three ways to score the features
#
# Notebook 05 scored each model by the **linear probe** on the image embedding (the 16 patch vectors
# concatenated). Two other readings of the same vectors:
#
# - **kNN classification** trains nothing: a test image takes the classes of its 20 most cosine-similar
#   training images, each vote weighted by exp(similarity / 0.07) (the kNN protocol of InstDisc and DINO);
# - a **bag of visual words** forgets *where* each patch is: an image becomes a histogram over the
#   vocabulary (which words it uses, how often, each row summing to 1), and the same linear probe reads it.
#   Each kind of vector gets its own vocabulary of the same size.
#
# Turning one image's 16 words into its histogram, by hand and with `bag_of_words`:

# %%
words_0 = vocab.labels[:16].cpu()  # the words of training image 0's 16 patches
hist = torch.zeros(n_words)
for w in words_0:
    hist[w] += 1 / 16
assert torch.allclose(hist, bag_of_words(vocab.labels, n_words)[0].cpu())
print(f"16 words -> a histogram over {n_words} words with {int((hist > 0).sum())} non-zero bins, sum {hist.sum():.1f}")

# %% [markdown]
# ### Exercise 7.3: `knn_predict`
#
# Write the weighted kNN vote: each test row's k most cosine-similar training rows vote for their class,
# each with the weight exp(similarity / temperature); the class with the most weight wins, the lowest
# class on a tie. Return the (M,) predicted classes. The check compares it with
# `vwe.evaluate.knn_classify` on rows whose votes the weights decide, on random rows of very different
# lengths, on one test row and on a tie.

# %% tags=["solution"]
def knn_predict(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, k: int,
                temperature: float) -> torch.Tensor:
    """(N, D), (N,), (M, D) -> (M,): each test row's class by the weighted vote of its k nearest rows."""
    # BEGIN SOLUTION
    sims = F.normalize(test, dim=1) @ F.normalize(train, dim=1).T  # (M, N) cosine similarities
    top, idx = sims.topk(k, dim=1)  # (M, k) the k most similar training rows
    votes = torch.zeros(len(test), int(train_labels.max()) + 1, dtype=sims.dtype, device=sims.device)
    weights = ((top - top[:, :1]) / temperature).exp()  # exp(sim / T) / exp(best / T): no overflow at small T
    votes.scatter_add_(1, train_labels[idx], weights)  # (M, classes) summed weights
    return votes.argmax(dim=1)  # the first of equal maxima: the lowest class
    # END SOLUTION


# %%
knn_predict = ex.knn_predict.check(knn_predict)

# %% [markdown]
# Yours (or the package's) on the image vectors of the context AE's tower, beside `knn_accuracy`:

# %% tags=["nbval-ignore-output"]
n_train, n_test = len(data.train_labels), len(data.test_labels)
train_img, test_img = train_feats["context AE"].view(n_train, -1), test_feats["context AE"].view(n_test, -1)
train_y, test_y = data.train_labels.to(s.device), data.test_labels.to(s.device)
mine = 100 * (knn_predict(train_img, train_y, test_img, 20, 0.07) == test_y).float().mean().item()
print(f"kNN (k=20) on the context AE's tower features: yours {mine:.2f} %, "
      f"knn_accuracy {knn_accuracy(train_img, train_y, test_img, test_y, k=20, temperature=0.07):.2f} %")

# %% [markdown]
# Every kind of vector, all three scores. The probes use the profile's settings, as in notebook 05 (mean
# test accuracy over the probe seeds). This cell takes the longest.

# %% tags=["nbval-ignore-output"]
probe = dict(seeds=cfg.probe_seeds, epochs=cfg.probe_epochs, batch_size=cfg.probe_batch_size,
             lr=cfg.probe_lr, num_classes=data.num_classes)
train_y, test_y = data.train_labels.to(s.device), data.test_labels.to(s.device)
n_train, n_test = len(data.train_labels), len(data.test_labels)
rows = []
for name in train_feats:
    train_img, test_img = train_feats[name].view(n_train, -1), test_feats[name].view(n_test, -1)
    words = kmeans(train_feats[name], n_words, seed=cfg.seed, spherical=True)
    test_words = assign(test_feats[name], words.centroids, spherical=True)[0]
    train_bow, test_bow = bag_of_words(words.labels, n_words), bag_of_words(test_words, n_words)
    rows.append({
        "features": name,
        "image dim": train_img.shape[1],
        "linear probe": linear_eval(train_img, train_y, test_img, test_y, **probe).mean,
        "kNN (k=20)": knn_accuracy(train_img, train_y, test_img, test_y, k=20, temperature=0.07),
        f"BoVW probe ({n_words} words)": linear_eval(train_bow, train_y, test_bow, test_y, **probe).mean,
    })
table = pd.DataFrame(rows).round(2)
table.to_csv(s.run_dir / "results_words.csv", index=False)
print(f"top-1 test accuracy (%) on {data.name}, profile {cfg.profile}: {n_train} train / {n_test} test "
      f"images, chance {100 / data.num_classes:.1f} %")
display(table)

# %% [markdown]
# How to read the table:
#
# - **kNN against the linear probe**: kNN needs no training and no hyper-parameters beyond k and the
#   temperature; it rewards features whose *geometry* already groups images by class, while the probe can
#   re-weight dimensions. Features that score well under both are good in a stronger sense.
# - **bag of words against the linear probe**: the histogram throws away where each word sits in the image,
#   and the vocabulary quantises each patch to one of a few directions. What survives is "which kinds of
#   patches does this image contain", a texture-like summary. Where the BoVW score holds up, the model's
#   patch vectors carry class information on their own; where it collapses, the class lived in the layout.
# - Read every row against the chance level printed above the table. Under the `smoke` profile the probes
#   train for a handful of epochs on a few hundred images, so expect little above it; under `cpu` on
#   Shapes, whose classes are decided by shape and not by colour, a few epochs of pretraining may leave
#   every row close to it too; the `paper` profile is where the models should separate.
#
# ## 6. Explore
#
# Pick a training image and a patch: the image with the patch outlined, the patch's 8 nearest training
# patches (under the context AE's tower features, the patch itself left out), and the exemplars of its
# visual word. The title gives the word and its share of all patches.

# %%
explorer = WordExplorer(data.train_images, train_feats["context AE"], vocab.centroids, data.train_labels,
                        data.classes)
display(explorer)

# %% [markdown]
# ## Exercises
#
# Where this notebook's exercises stand (run an exercise's check again after changing it):

# %%
ex.summary("07")
