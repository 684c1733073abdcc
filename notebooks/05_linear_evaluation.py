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
# # 05 · Linear evaluation: how good are the features?
#
# What this notebook teaches:
#
# - the linear evaluation protocol (paper section 4.2): freeze the encoder, compute every image's
#   embedding once, train a single linear layer on them, report top-1 test accuracy over several
#   probe seeds;
# - why the probe **standardises** its features (the paper's raw-feature probe barely trains on the
#   context embedding), and both probes side by side;
# - the baselines every learned feature must be read against: **raw pixels**, and **random weights**,
#   both as the paper's source [24] measures them (an untrained ResNet-32 on the whole image) and on the
#   16 patches;
# - why the context model's 8192-d embedding has no more capacity than its tower's 1024 features;
# - our results beside the paper's Table 1, and which of its claims hold on this run, in numbers;
# - what the author's code does that the paper's text does not say, and the **author's evaluation**
#   (the tower's 1 024 features, raw, 10 probe epochs) that Table 1's numbers really are;
# - where the method shows: probe accuracy against pretraining compute, measured on a validation split.
#
# **Exercises**: 5.1 `standardize`, 5.2 `probe_epoch` and 5.3 `welch_gap`, written by you and checked in
# the cell under each (`ex.standardize.hint()` for a hint, `.solution()` for the answer); in the student
# copy an exercise not done yet is reported and the notebook goes on with the package's function. The last
# cell shows where they stand.
#
# The models studied: on CIFAR-100 (`models="auto"`), the two autoencoders **shipped with the
# repository**, pretrained on real CIFAR-100 at the scale printed below (a 2-core CPU cannot pretrain
# long enough inside the course for the method to show); `models="run"` studies notebook 04's runs
# instead, which is what happens on Shapes.
#
# Time: `smoke` seconds; `cpu` a few minutes on a 2-core CPU (features, then 2 probes x 3 seeds for
# each of 6 feature sets); `paper` and `author` minutes on a GPU.

# %% tags=["parameters"]
profile = "cpu"  # "smoke" (seconds, CI) | "cpu" (a laptop) | "paper" (CIFAR-100 on a GPU) | "author" (the author's code's recipe, CIFAR-100 on a GPU)
dataset = None  # None: the profile's; or "auto" | "cifar100" | "shapes"
device = None  # None: the profile's ("auto": the GPU when there is one)
run_dir = None  # None: runs/<profile>; checkpoints, figures and results go there
models = "auto"  # "auto": shipped on CIFAR-100, else notebook 04's | "shipped" | "run"

# %%
import math
import statistics

import torch
import torch.nn.functional as F
from IPython.display import Markdown, display
from torch import nn

from vwe import exercises as ex
from vwe import table
from vwe.course import load_models, start
from vwe.engine import epochs_reached
from vwe.evaluate import extract_features, linear_probe, random_image_model
from vwe.plots import results_bar_chart, save
from vwe.results import (
    AUTHOR_PROBE,
    CLAIM_PROBES,
    claims,
    load_results,
    rows_of,
    verdict_in_words,
    write_results,
)

s = start(profile, dataset=dataset, device=device, run_dir=run_dir)
cfg, data = s.cfg, s.data
pretrained = load_models(s, models)
for name, p in pretrained.items():
    print(f"{name:<10} {p.source}")

# %% [markdown]
# ## 1. The feature sets
#
# | features | what | dim |
# |---|---|---|
# | raw pixels | the image itself, scaled to [0, 1] | 3 · 32 · 32 = 3072 |
# | random weights ([24]) | an untrained ResNet-32 on the whole image, global pool | 64 |
# | random weights, 16 patches | an untrained tower on each patch, concatenated | 16 · 64 = 1024 |
# | simple autoencoder | its trained tower on each patch | 16 · 64 = 1024 |
# | context autoencoder | each patch's context: the 8 neighbours' tower features | 16 · 8 · 64 = 8192 |
# | context autoencoder, tower | its trained tower on each patch itself | 16 · 64 = 1024 |
#
# Every one of them is computed once, frozen and in eval mode (BatchNorm uses its running statistics,
# no augmentation), in fp32: `extract_features` maps uint8 images (N, 3, 32, 32) to (N, dim).

# %% tags=["nbval-ignore-output"]
simple, context = pretrained["simple AE"].model, pretrained["context AE"].model
# The first two, written out: [24]'s random baseline is an untrained ResNet-32 on the whole image,
# and the simple autoencoder's features are its tower on each patch.
random_image = random_image_model(cfg.tower, seed=cfg.seed).to(s.device)
mine = extract_features(random_image.forward_features, data.test_images[:8], device=s.device)  # (8, 64)
mine_simple = extract_features(simple, data.test_images[:8], device=s.device)  # (8, 1024)

# every row's features, train and test: "embedding", and for the context model also "tower"
feature_sets = table.model_features(simple, context, data, cfg, s.device)
# the same numbers up to fp32 rounding (another batch size may sum in another order)
torch.testing.assert_close(feature_sets["random-resnet32"]["embedding"][1][:8], mine, rtol=1e-4, atol=1e-4)
torch.testing.assert_close(feature_sets["patch-resnet32-aug"]["embedding"][1][:8], mine_simple, rtol=1e-4,
                           atol=1e-4)
for key, features in feature_sets.items():
    for name, (train, test) in features.items():
        print(f"{key + ' ' + name:<34} train {tuple(train.shape)}  test {tuple(test.shape)}  mean row norm "
              f"{train.norm(dim=1).mean():8.1f}")

# %% [markdown]
# ## 2. One probe, written out, raw and standardised
#
# The probe is one `nn.Linear(dim, classes)` trained with Adam at its defaults (lr 1e-3), batch 128, on
# the frozen training features; its score is top-1 accuracy on the test features. The paper feeds it
# the features as they are. Look at the row norms above: the context embedding's are in the hundreds,
# and Adam's lr 1e-3 steps are then far too large for a well-conditioned fit, so the training loss
# stalls, often above chance (ln 100 ≈ 4.6 on CIFAR-100). Linear probes in the field standardise first
# (MAE puts a BatchNorm without affine parameters before the layer): each feature minus its mean,
# divided by its standard deviation, **both computed on the training features only**. `linear_probe`
# does that by default (`norm="standard"`); `norm="raw"` is the paper's probe.
#
# ### Exercise 5.1: `standardize`
#
# Write it: standardise both feature sets, (N, dim) and (M, dim), with each feature's mean and standard
# deviation **on the training features**, and return the pair. A feature that never varies (a context
# embedding's zero-patch slot does not) must come out as zeros, not as nan. The check runs it on features
# of very different scales, with a constant feature, with one test row and in float32, and compares it
# with `vwe.evaluate.standardize`.

# %% tags=["solution"]
def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, dim), (M, dim) -> both standardised with the training features' per-feature mean and sd."""
    # BEGIN SOLUTION
    var, mean = torch.var_mean(train, dim=0)  # (dim,) each: the training features' only
    scale = torch.rsqrt(var + 1e-6)  # a constant feature stays 0 instead of 0 / 0
    return (train - mean) * scale, (test - mean) * scale
    # END SOLUTION


# %%
standardize = ex.standardize.check(standardize)

# %% [markdown]
# The context embedding standardised: each training feature now has mean 0 (and, unless it is constant,
# sd 1); the test features' come out near, not at, those values, since they never informed them. Then
# both probes, one seed, with the training loss and training accuracy of every epoch:

# %% tags=["nbval-ignore-output"]
train_feats, test_feats = feature_sets["context-resnet32-aug"]["embedding"]
train_std, test_std = standardize(train_feats, test_feats)  # exercise 5.1: yours, or the package's
for name, feats in (("training", train_std), ("test", test_std)):
    print(f"{name:<8} features standardised: mean of the feature means {feats.mean(0).mean():+.3f}, "
          f"largest |mean| {feats.mean(0).abs().max():.3f}")
probes = {norm: linear_probe(train_feats, data.train_labels, test_feats, data.test_labels, seed=0,
                             epochs=cfg.probe_epochs, batch_size=cfg.probe_batch_size, lr=cfg.probe_lr,
                             num_classes=data.num_classes, norm=norm)
          for norm in ("raw", "standard")}
for norm, p in probes.items():
    print(f"{norm:<8} test top-1 {p.test_acc:6.2f} %  train top-1 {p.train_acc:6.2f} %  "
          f"loss per epoch: {' '.join(f'{x:.2f}' for x in p.losses[:: max(1, len(p.losses) // 8)])}")

# %% [markdown]
# ### Exercise 5.2: `probe_epoch`
#
# The probe's loop, one epoch: the rows in the order given, `batch_size` at a time, each batch one Adam step
# on the cross-entropy of `layer(x)`; return the mean training loss **per row** (the short last batch
# counts for its rows only). The check trains copies of a small layer for one epoch with yours and with the
# package's, compares the loss and how far every weight moved, with a short last batch, without one and on
# one row.

# %% tags=["solution"]
def probe_epoch(layer: nn.Linear, optimizer: torch.optim.Optimizer, feats: torch.Tensor, labels: torch.Tensor,
                batch_size: int) -> float:
    """One epoch over (N, dim) features and (N,) labels in their order; the mean loss per row."""
    # BEGIN SOLUTION
    total = 0.0
    for i in range(0, len(feats), batch_size):
        x, y = feats[i:i + batch_size], labels[i:i + batch_size]
        loss = F.cross_entropy(layer(x), y)  # logits in: cross_entropy applies log-softmax itself
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(x)  # the batch's mean loss, weighed by its rows
    return total / len(feats)
    # END SOLUTION


# %%
probe_epoch = ex.probe_epoch.check(probe_epoch)

# %% [markdown]
# Your epoch (or the package's) trains the standardised probe of section 2 again, the way `linear_probe`
# does: the layer initialised under seed 0, the rows shuffled anew every epoch by a generator of seed 0.
# It should end where `linear_probe`'s seed-0 run ended.

# %% tags=["nbval-ignore-output"]
with torch.random.fork_rng(devices=[]):  # linear_probe's initialisation, without touching global state
    torch.manual_seed(0)
    layer = nn.Linear(train_std.shape[1], data.num_classes).to(train_std.device)
optimizer = torch.optim.Adam(layer.parameters(), lr=cfg.probe_lr)
shuffle = torch.Generator().manual_seed(0)
train_y = data.train_labels.to(train_std.device)
for _ in range(cfg.probe_epochs):
    order = torch.randperm(len(train_std), generator=shuffle)  # a new order every epoch
    last_loss = probe_epoch(layer, optimizer, train_std[order], train_y[order], cfg.probe_batch_size)
with torch.no_grad():
    test_acc = 100 * (layer(test_std).argmax(1).cpu() == data.test_labels).float().mean().item()
print(f"your epochs: test top-1 {test_acc:.2f} %, last epoch's loss {last_loss:.4f}")
print(f"linear_probe: test top-1 {probes['standard'].test_acc:.2f} %, last epoch's loss "
      f"{probes['standard'].losses[-1]:.4f}")

# %% [markdown]
# ## 3. 8192 against 1024 dimensions
#
# The context model's probe sees 8 times more numbers than the others. Is it a bigger classifier? No: as
# notebook 03 showed, the 8192-d embedding is a fixed rearrangement of 17 tower outputs, the 16 patches'
# 64 features and the zero patch's 64, which are the same for every image (so they only shift the
# probe's bias). The 8192 columns of the feature matrix hold at most 16 · 64 + 64 = 1088 distinct
# columns, and a linear layer on them can do no more than one on the tower's 1024 patch features. The
# two probes still differ in practice, because the repeated columns change how the optimiser moves: so
# the table below reports the tower's 1024 features too.

# %% tags=["nbval-ignore-output"]
distinct = torch.unique(train_feats.T, dim=0)  # identical columns collapse into one
print(f"{train_feats.shape[1]} feature columns, {len(distinct)} distinct (at most 16 * 64 + 64 = 1088)")
assert len(distinct) <= 16 * 64 + 64

# %% [markdown]
# ## 4. Every feature set, both probes, every seed
#
# `vwe.table.evaluate_features` runs the probe once per seed of the profile, with both norms, and a kNN
# classifier on the same features; the numbers are the mean ± standard deviation over the probe seeds
# (the pretrained models are one run each: the seeds vary the probe only). The rows and the paper's
# numbers come from `vwe.table.ROWS`, and the Markdown is what `make paper` writes.

# %% tags=["nbval-ignore-output"]
print(f"probe: {cfg.probe_epochs} epochs, batch {cfg.probe_batch_size}, Adam lr {cfg.probe_lr}, "
      f"seeds {cfg.probe_seeds}")
epochs = {"patch-resnet32-aug": epochs_reached(pretrained["simple AE"].metrics),
          "context-resnet32-aug": epochs_reached(pretrained["context AE"].metrics)}
results = table.model_rows(feature_sets, data, cfg, epochs, s.run_dir)
for r in results:
    print(f"{r.key:<24} standardised {r.mean:6.2f} ± {r.std:.2f} %   raw "
          f"{r.probe('embedding', 'raw')['mean']:6.2f} %")
# Section 2's standardised probe is the seed-0 run of the context row (up to one test image, for
# GPU rounding).
context_row = results[-1]
assert abs(context_row.probes["embedding/standard"]["accs"][0] - probes["standard"].test_acc) \
    <= 100 / len(data.test_labels) + 1e-9

# %% [markdown]
# ## 5. Our results beside the paper's Table 1
#
# The paper's numbers are CIFAR-100 after 200 epochs of pretraining on 50 000 images, probed on raw
# features. Ours ran at the scale in the header line; three of the paper's rows (supervised, context
# without augmentation, Conv4) need more pretraining runs: `make paper` runs them all. On Shapes these
# are **not CIFAR-100 numbers** (other classes, another chance level): compare the order of the rows.

# %% tags=["nbval-ignore-output"]
header = table.table_header(cfg, data, s.device, table.data_fingerprint(data),
                            command=f"notebooks/05_linear_evaluation.ipynb, profile {profile!r}")
header["epochs"] = max(epochs.values())  # the pretrained models', not this notebook's profile
files = write_results(header, results, s.run_dir / "05_results")
display(Markdown(files["md"].read_text()))

# %% [markdown]
# The same as a bar chart (ours with ± std over the seeds, the paper's hatched):

# %%
bars = [{"method": r.label, "ours_mean": r.mean, "ours_std": r.std, "paper": r.paper} for r in results]
fig = results_bar_chart(bars, title=f"linear evaluation: ours on {data.name} ({cfg.profile}) vs the paper "
                                    "on CIFAR-100")
save(fig, s.figures / "05_results.png")

# %% [markdown]
# ## 6. Which of the paper's claims hold here
#
# Each of the paper's claims orders two rows. `vwe.results.claims` measures the gap between them, in
# points and in standard errors of the difference, and gives a verdict by the rule below; the cell prints each verdict with its
# numbers, whatever they are: short pretraining (a few epochs on a few thousand images, against the
# paper's 200 epochs on 50 000) need not reproduce the paper's order, and when it does not, the table
# says so.

# %% tags=["nbval-ignore-output"]
for name, probe in CLAIM_PROBES.items():
    print(f"{name}:")
    for c in claims(results, probe):
        print(f"  {c['claim']:<52} gap {c['gap']:+6.2f} points ({c['gap_in_se']:+.1f} se): {c['holds']}")

# %% [markdown]
# How to read it:
#
# - **Raw pixels** and **random weights** are the floor. A linear probe on pixels already beats chance
#   by far on CIFAR-100, and random convolutions respond to edges and colours: a learned feature earns
#   its place only above both.
# - The **simple autoencoder** rebuilds its patches better than the context model (notebook 04's
#   losses, notebook 06's pictures), yet the paper finds its features far worse for classification
#   (17.81 % against 34.08 %): rebuilding a patch from itself needs no understanding of the image,
#   rebuilding it from its neighbours does. Whether the models here show that order depends on how
#   long they pretrained and on which probe reads them: the cell below words the comparison for each
#   reading from the numbers above.
#
# A gap counts as **significant** by the repository's one rule, `vwe.results.significant`: more than 3
# standard errors of the difference of the two means (Welch) and more than 3 points. A smaller gap says
# nothing about which features are better, whichever mean is higher.
#
# ### Exercise 5.3: `welch_gap`
#
# The gap between two rows, from each one's accuracies over the probe seeds: the higher row's mean minus
# the lower's, in points, and that gap in standard errors of the difference of the means, Welch's: the
# square root of each row's sample variance over its number of seeds, summed. Probes that do not vary at
# all make a gap of infinitely many standard errors. The check compares both numbers with
# `vwe.results.gap`, for equal and unequal numbers of seeds, a negative gap and no spread.

# %% tags=["solution"]
def welch_gap(lower: list[float], higher: list[float]) -> tuple[float, float]:
    """(mean(higher) - mean(lower) in points, that gap in Welch's standard errors of the difference)."""
    # BEGIN SOLUTION
    points = statistics.fmean(higher) - statistics.fmean(lower)
    se = math.sqrt(statistics.variance(lower) / len(lower) + statistics.variance(higher) / len(higher))
    return points, (points / se if se > 0 else math.copysign(math.inf, points))
    # END SOLUTION


# %%
welch_gap = ex.welch_gap.check(welch_gap)

# %% tags=["nbval-ignore-output"]
rows = {r.key: r.probes for r in results}
for name, probe in CLAIM_PROBES.items():
    if probe in rows["patch-resnet32-aug"] and probe in rows["context-resnet32-aug"]:
        points, in_se = welch_gap(rows["patch-resnet32-aug"][probe]["accs"], rows["context-resnet32-aug"][probe]["accs"])
        print(f"{name:<20} context minus simple autoencoder: {points:+.2f} points, {in_se:+.1f} standard errors")

# %% tags=["nbval-ignore-output"]
SIMPLE, CONTEXT = "patch-resnet32-aug", "context-resnet32-aug"
# (reading, the simple AE's probe, the context AE's probe): the simple AE's embedding is its tower on the
# 16 patches, so its one standardised probe faces both of the context model's
READINGS = (("the author's evaluation (tower, raw, 10 epochs)", AUTHOR_PROBE, AUTHOR_PROBE),
            ("the paper's text (embedding, raw)", "embedding/raw", "embedding/raw"),
            ("standardised, the context embedding", "embedding/standard", "embedding/standard"),
            ("standardised, the context tower", "embedding/standard", "tower/standard"))


def verdicts(probes: dict[str, dict]) -> str:
    """Markdown, one line per reading; `probes` maps a row key to that row's probes."""
    return "\n".join(f"- {words}: {verdict_in_words(probes[SIMPLE][a], probes[CONTEXT][b])}"
                      for words, a, b in READINGS if a in probes[SIMPLE] and b in probes[CONTEXT])


display(Markdown(f"**On this run** ({data.name}, {len(data.train_labels)} training and "
                 f"{len(data.test_labels)} test images), simple against context autoencoder:\n\n"
                 + verdicts({r.key: r.probes for r in results})))

# %% [markdown]
# ## 7. The paper as its author ran it
#
# The paper's numbers come from its author's public code (`mahadev1995/Self-supervised_Learning`), which
# settles what the text leaves open and in places does what the text does not say: the batch counts
# (context, target) pairs, every image comes in several views, and the probe reads the tower's 1 024
# features, raw, for 10 epochs. [The paper as its author ran it](../docs/design.md#the-paper-as-its-author-ran-it)
# (docs/design.md) has every point, with the author's source file and the profile field it sets.
#
# Why two of these matter most:
#
# - **Steps per epoch.** The same 200 epochs are 19 400 optimiser steps in the text's reading and
#   1 250 000 in the code's. Any reproduction that follows the text trains 64 times fewer updates.
# - **Which features a probe sees.** Section 3 showed that the 8192-d embedding holds nothing the 1024
#   tower features do not; but a raw probe trains on them very differently (section 2). The paper's
#   34.08 % is a probe on the 1024 tower features, so an 8192-d probe is not like for like.
#
# `vwe.table` therefore adds the **author's evaluation** to every row (the column of that name in
# section 5's table), and `make paper PROFILE=author` runs the code's whole recipe. Here the three
# readings of the same models side by side:

# %% tags=["nbval-ignore-output"]
def print_readings(rows: list) -> None:
    """Every row's author's evaluation, raw-embedding probe and standardised probe, and the paper's."""
    print(f"{'row':<24} {'author: tower, raw, 10 ep':>26} {'text: embedding, raw':>21} "
          f"{'standardised':>14} {'paper':>6}")
    for r in rows:
        readings = r.probe(AUTHOR_PROBE), r.probe("embedding", "raw"), r.probe("embedding", "standard")
        if None in readings:  # a row measured otherwise (the supervised one): not one of these models
            continue
        author, raw, standard = readings
        paper = "—" if r.paper is None else f"{r.paper:.2f}"
        print(f"{r.key:<24} {author['mean']:19.2f} ± {author['std']:4.2f} {raw['mean']:14.2f} ± "
              f"{raw['std']:4.2f} {standard['mean']:8.2f} ± {standard['std']:4.2f} {paper:>6}")


print_readings(results)

# %% [markdown]
# ### The shipped models on the whole test set
#
# This notebook probes the shipped models on the profile's slice of CIFAR-100. They were also measured
# once on all 10 000 test images, with probes trained on more images than the profile's; that
# measurement's results file is committed (`docs/results/shipped-cifar100.json`). The cell reads it,
# prints the scale and the revision it ran at, and words the same comparisons as section 5 from its
# numbers. It applies to the shipped models only: on another dataset, or with `models="run"`, it says
# so and shows nothing. Look at whether the readings agree on which autoencoder is ahead, and how far
# all of them are from the paper's 34.08 against 17.81 (the shipped models' pretraining, printed at the
# top, is far shorter than the paper's).

# %%
if models == "shipped" or (models == "auto" and data.name == "cifar100"):  # load_models' choice
    shipped = load_results("shipped-cifar100")
    h = shipped["header"]
    print(f"shipped models on {h['dataset']}: probes trained on {h['n_train']} images, tested on "
          f"{h['n_test']}; probe seeds {h['probe_seeds']}; git {h['git']}, {h['time']}, {h['device']}")
    shipped_rows = rows_of(shipped)
    print_readings(shipped_rows)
    display(Markdown("**The shipped models on the whole test set**, simple against context autoencoder:"
                     "\n\n" + verdicts({r.key: r.probes for r in shipped_rows})))
else:
    print(f"these are not the shipped models ({data.name}, models={models!r}): no results file to read")

# %% [markdown]
# ## 8. Where the paper's figures come from: accuracy against pretraining compute
#
# Two experiments too long for this notebook, run with `scripts/scale_curve.py` on a 2-core CPU and
# committed with their commands and the machine that measured them, both on a **validation split**
# (the last 5 000 training images; the test split is never read), both probes on the tower's 1 024
# features:
#
# - the 5 000-image curve (`docs/results/scale-curve.json`): the `cpu` and the author's recipe (shared
#   encoding) pretrained on 5 000 images, probes trained on 10 000, after a series of epochs;
# - the compute curve (`docs/results/compute-curve.json`): the author's recipe on every
#   training image outside the validation split, probed as the author evaluates (the probe trains on
#   all 45 000 of them) at doubling step counts, towards the author's checkpoint.
#
# The x axis is compute in (context, target) pairs, the unit in which the recipes' batches are equal,
# on a log scale that reaches the author's compute, where the paper's two figures stand (stars: test
# split). The runs on every training image are carried there along their last doublings' slope
# (dotted): an extrapolation, drawn as one.

# %%
from vwe import curve
from vwe.models import MODEL_LABELS
from vwe.plots import plot_scale_curve
from vwe.report import curve_in_words
from vwe.results import results_dir
from vwe.table import PAPER_BY_MODEL

points = [p for name in ("scale-curve", "compute-curve") if (results_dir() / f"{name}.json").is_file()
          for p in load_results(name)["points"]]
fig = plot_scale_curve(points, PAPER_BY_MODEL)
save(fig, s.figures / "05_scale_curve.png")
for run in curve.series(points):
    print(f"{MODEL_LABELS[run.model]}, {run.label}:")
    for p in run.points:
        print(f"  {p['pairs']:>11,d} pairs   author's evaluation {p['author']['mean']:6.2f} ± "
              f"{p['author']['std']:.2f}   standardised {p['standard']['mean']:6.2f} ± "
              f"{p['standard']['std']:.2f} %")

# %% [markdown]
# What to look for in the curve ([docs/results.md](../docs/results.md) has the table of every point):
#
# - **Do the curves cross?** At each point, which autoencoder is ahead, and does the lead change sides
#   or grow as compute grows? The cell below words every point's comparison by the same rule as
#   section 5, so a steady trend over several points says more than any one point.
# - **Which recipe learns more per pair, and does the data matter?** Compare the recipes at the same
#   number of pairs, and the author's recipe on 5 000 images against the same recipe on 45 000.
# - **Do the two probes agree?** The author's evaluation is raw and short (10 epochs); the standardised
#   probe trains to convergence. Where they order the models differently, the order says as much about
#   the probe as about the features.
# - **How far is the paper?** The cell prints how many doublings of compute separate the largest point
#   from the author's checkpoint, each model's slope per doubling over its last doublings, and where
#   those slopes would reach there: how far a trend has to be carried, and whether it points at the
#   paper's figures.

# %% tags=["nbval-ignore-output"]
by_run: dict[tuple, dict[str, dict]] = {}  # (recipe, pretraining images) -> model -> pairs -> point
for run in curve.series(points):
    if run.encoding == "shared":
        by_run.setdefault((run.profile, run.n_train), {})[run.model] = {p["pairs"]: p for p in run.points}
lines = []
for (profile_name, n_train), by_model in sorted(by_run.items()):
    for pairs in sorted(set(by_model.get("patch", {})) & set(by_model.get("context", {}))):
        simple_p, context_p = by_model["patch"][pairs], by_model["context"][pairs]
        lines.append(f"- `{profile_name}` recipe on {n_train:,} images, {pairs:,d} pairs: author's "
                     f"evaluation: {verdict_in_words(simple_p['author'], context_p['author'])}; standardised: "
                     f"{verdict_in_words(simple_p['standard'], context_p['standard'])}")
largest = max(p["pairs"] for p in points)
gap_words = curve_in_words(points)
display(Markdown("\n".join(lines) + f"\n\nThe author's checkpoint at epoch 120 saw {curve.AUTHOR_PAIRS:,d} "
                 f"pairs, {curve.AUTHOR_PAIRS / largest:.0f} times the largest point here ({largest:,d}): "
                 f"{math.log2(curve.AUTHOR_PAIRS / largest):.1f} doublings of compute away. "
                 + (gap_words or "No run on every training image has two points yet, so no trend is carried "
                    "to the author's compute.")))

# %% [markdown]
# Where do the models this notebook studied sit on these curves? On CIFAR-100 they are the shipped ones:
# the cell finds, for each, the curve point with the same recipe, encoding, pretraining images and
# pairs (`checkpoints/manifest.json` says what each trained), and prints its figures.

# %%
from vwe.config import Config
from vwe.course import shipped_manifest, shipped_steps

if models == "shipped" or (models == "auto" and data.name == "cifar100"):  # load_models' choice
    for model, entry in sorted(shipped_manifest()["models"].items()):
        c, n_train = Config.from_dict(entry["config"]), entry["data"]["n_train"]  # the images it read
        pairs = shipped_steps(entry) * c.pairs_per_step
        at = [p for run in curve.series(points) for p in run.points
              if (run.model, run.profile, run.encoding, run.n_train, p["pairs"])
              == (model, c.profile, c.encoding, n_train, pairs)]
        print(f"shipped {MODEL_LABELS[model]}: {pairs:,d} pairs on {n_train:,d} images, "
              + (f"the curve's point there: author's evaluation {at[0]['author']['mean']:.2f}, standardised "
                 f"{at[0]['standard']['mean']:.2f} % (validation split)" if at else "no curve point there"))
else:
    print(f"these are not the shipped models ({data.name}, models={models!r}): they are not on the curves")

# %% [markdown]
# ## Exercises
#
# Where this notebook's exercises stand (run an exercise's check again after changing it):

# %%
ex.summary("05")
