"""A compute curve read as the paper is: probe accuracy against (context, target) pairs trained on.

`scripts/scale_curve.py` measures the points (one per model and pretraining step count, both probes,
on a validation split); this module says what they show: the series they form, each series' slope
in points per doubling of compute over its last doublings, and where that slope would reach at the
author's compute, labelled as the extrapolation it is. The figure (`vwe.plots.plot_scale_curve`),
the results page and notebook 05 read these, so every sentence about the curve is computed here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vwe.patches import N_PATCHES

# The author's checkpoint that the paper's Table 1 reads: epoch 120 of 6 250 steps of 8 images x
# (3 views + the original) x 16 targets (mahadev1995/Self-supervised_Learning, train.py).
AUTHOR_EPOCHS, AUTHOR_STEPS_PER_EPOCH, AUTHOR_PAIRS_PER_STEP = 120, 6_250, 8 * 4 * N_PATCHES
AUTHOR_PAIRS = AUTHOR_EPOCHS * AUTHOR_STEPS_PER_EPOCH * AUTHOR_PAIRS_PER_STEP
SLOPE_DOUBLINGS = 3  # a series' slope is fitted over its last points spanning this many doublings
PROBES = ("author", "standard")


@dataclass(frozen=True)
class Series:
    """One pretraining run's points: a recipe, a model, an encoding, its pretraining images."""

    profile: str
    model: str
    encoding: str
    n_train: int
    probe_train: int
    points: tuple[Mapping[str, object], ...]  # by pairs, ascending

    @property
    def label(self) -> str:
        encoding = "" if self.encoding == "shared" else f", {self.encoding} encoding"
        return (f"{self.profile} recipe{encoding}, pretrained on {self.n_train:,} images, probe on "
                f"{self.probe_train:,}")


def series(points: Sequence[Mapping[str, object]]) -> list[Series]:
    """The points grouped by run (profile, model, encoding, pretraining and probe images), each
    series' points ordered by the pairs trained on; series in a stable order."""
    groups: dict[tuple, list[Mapping[str, object]]] = {}
    for p in points:
        key = (str(p["profile"]), str(p["model"]), str(p.get("encoding", "shared")), int(p["n_train"]),
               int(p["probe_train"]))
        groups.setdefault(key, []).append(p)
    return [Series(*key, tuple(sorted(pts, key=lambda p: p["pairs"]))) for key, pts in sorted(groups.items())]


@dataclass(frozen=True)
class Trend:
    """A series' trend for one probe: the slope over its last doublings and its extrapolation."""

    slope: float  # accuracy points per doubling of pairs, least squares over the fitted points
    first_pairs: int  # the fitted points' range
    last_pairs: int
    last_mean: float  # the last point's accuracy
    at_author: float  # the line through the last point with `slope`, read at AUTHOR_PAIRS

    @property
    def doublings_fitted(self) -> float:
        """How many doublings of compute the fitted points span (at most the `doublings` asked)."""
        return math.log2(self.last_pairs / self.first_pairs)

    @property
    def doublings_to_author(self) -> float:
        return math.log2(AUTHOR_PAIRS / self.last_pairs)


def trend(s: Series, probe: str, doublings: float = SLOPE_DOUBLINGS) -> Trend:
    """The slope of `probe`'s mean accuracy against log2(pairs) over the series' last points spanning
    `doublings` doublings (at least two points), and the extrapolation of that line from the last
    point to the author's compute. ValueError on a series of fewer than two points."""
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose one of {PROBES}")
    if len(s.points) < 2:
        raise ValueError(f"{s.label}: a slope needs two points or more, the series has {len(s.points)}")
    last = s.points[-1]
    fitted = [p for p in s.points if math.log2(last["pairs"] / p["pairs"]) <= doublings + 1e-9]
    if len(fitted) < 2:
        fitted = list(s.points[-2:])
    xs = [math.log2(p["pairs"]) for p in fitted]
    ys = [p[probe]["mean"] for p in fitted]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    end = last[probe]["mean"]
    return Trend(slope, int(fitted[0]["pairs"]), int(last["pairs"]), end,
                 end + slope * math.log2(AUTHOR_PAIRS / last["pairs"]))


def trended(all_series: Sequence[Series]) -> list[Series]:
    """The series whose trend is carried to the author's compute: the author's recipe with the shared
    encoding, of two points or more, pretrained on every image its probe trains on (all the split
    allows, as the author's run saw all of its training set). A run on a few thousand images would
    reach the author's compute only by repeating them tens of thousands of times: not carried."""
    return [s for s in all_series if s.profile == "author" and s.encoding == "shared"
            and s.n_train == s.probe_train and len(s.points) >= 2]
