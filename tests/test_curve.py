"""`vwe.curve`: the compute curve's series, slopes per doubling and extrapolation to the author's compute,
against lines whose slope is known exactly; and the figure that draws them."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import pytest

from vwe import curve, report
from vwe.plots import plot_scale_curve
from vwe.table import BY_KEY, PAPER_BY_MODEL

matplotlib.use("Agg")


def point(model: str, pairs: int, author: float, standard: float | None = None, n_train: int = 45_000,
          profile: str = "author") -> dict:
    standard = author + 1 if standard is None else standard
    # the probes train on every image outside the validation split: 45 000
    return {"profile": profile, "model": model, "encoding": "shared", "n_train": n_train,
            "probe_train": 45_000, "pairs": pairs, "author": probe(author, 0.2),
            "standard": probe(standard, 0.3)}


def probe(mean: float, std: float) -> dict:
    """Three seeds whose mean and sample std are `mean` and `std`."""
    return {"mean": mean, "std": std, "accs": [mean - std, mean, mean + std]}


def line(model: str, intercept: float, slope: float, doublings: range, **kw) -> list[dict]:
    """Points on acc = intercept + slope * log2(pairs / 102 400)."""
    return [point(model, 102_400 * 2**k, intercept + slope * k, **kw) for k in doublings]


def test_the_author_trained_384_million_pairs():
    assert curve.AUTHOR_PAIRS == 120 * 6_250 * 512 == 384_000_000


def test_series_group_runs_and_order_their_points_by_compute():
    pts = line("patch", 10, 1, range(3))[::-1] + line("context", 12, 2, range(2)) + \
        line("context", 5, 1, range(2), n_train=5_000)
    runs = curve.series(pts)
    assert [(s.model, s.n_train, len(s.points)) for s in runs] == [
        ("context", 5_000, 2), ("context", 45_000, 2), ("patch", 45_000, 3)]
    assert [p["pairs"] for p in runs[2].points] == [102_400, 204_800, 409_600]
    assert [(s.model, s.n_train) for s in curve.trended(runs)] == [("context", 45_000), ("patch", 45_000)]
    slots = [{**p, "encoding": "slots"} for p in line("context", 9, 1, range(2))]
    one = [point("patch", 102_400, 3.0, n_train=90_000)]
    assert [s.encoding for s in curve.trended(curve.series(pts + slots))] == ["shared", "shared"]
    assert curve.trended(curve.series(one)) == []  # one point: nothing to carry
    few = line("patch", 10, 1, range(3), n_train=5_000)
    cpu = line("patch", 10, 1, range(3), profile="cpu")
    assert curve.trended(curve.series(few + cpu)) == []  # 5 000 images of 10 000, or another recipe


def test_a_straight_line_in_log_compute_has_its_own_slope_and_extrapolation():
    (s,) = curve.series(line("context", 14.0, 0.75, range(6)))
    t = curve.trend(s, "author")
    assert t.slope == pytest.approx(0.75, rel=1e-12)
    assert (t.first_pairs, t.last_pairs) == (102_400 * 2**2, 102_400 * 2**5)  # the last three doublings
    assert t.at_author == pytest.approx(14.0 + 0.75 * math.log2(curve.AUTHOR_PAIRS / 102_400), rel=1e-12)
    assert t.doublings_to_author == pytest.approx(math.log2(384_000_000 / 3_276_800), rel=1e-12)
    assert t.doublings_fitted == pytest.approx(3.0, rel=1e-12)
    assert curve.trend(s, "standard").slope == pytest.approx(0.75, rel=1e-12)  # standard = author + 1


def test_the_slope_reads_the_last_doublings_only():
    # steep early (2 points a doubling), flat over the last three doublings: the slope is the flat part's
    early = line("patch", 10.0, 2.0, range(4))
    late = [point("patch", 102_400 * 2**k, 16.0) for k in range(4, 7)]
    (s,) = curve.series(early + late)
    t = curve.trend(s, "author")
    # fitted: doublings 3..6, i.e. (3, 16), (4, 16), (5, 16), (6, 16) -> slope 0
    assert t.slope == pytest.approx(0.0, abs=1e-12) and t.at_author == pytest.approx(16.0, rel=1e-12)
    assert curve.trend(s, "author", doublings=6).slope > 0.5  # every point: the early climb counts


def test_a_trend_needs_two_points_and_a_known_probe():
    (one,) = curve.series([point("context", 102_400, 10)])
    with pytest.raises(ValueError, match="two points"):
        curve.trend(one, "author")
    (two,) = curve.series(line("context", 10, 1, range(2)))
    with pytest.raises(ValueError, match="unknown probe 'knn'"):
        curve.trend(two, "knn")


def test_the_paper_figures_by_model_are_the_table_rows():
    rows = {"context": BY_KEY["context-resnet32-aug"].paper, "patch": BY_KEY["patch-resnet32-aug"].paper}
    assert PAPER_BY_MODEL == rows == {"context": 34.08, "patch": 17.81}


def test_the_figure_reaches_the_author_compute_with_the_paper_and_the_extrapolations():
    pts = line("context", 14, 0.5, range(4)) + line("patch", 12, 0.25, range(4)) + \
        line("context", 8, 1, range(3), n_train=5_000)
    fig = plot_scale_curve(pts, PAPER_BY_MODEL)
    author, standard = fig.axes
    assert author.get_xlim()[1] >= curve.AUTHOR_PAIRS and author.get_xscale() == "log"
    stars = {tuple(ln.get_ydata()) for ln in author.lines if ln.get_marker() == "*"}
    assert stars == {(v,) for v in PAPER_BY_MODEL.values()}
    assert not [ln for ln in standard.lines if ln.get_marker() == "*"]  # the paper reports one probe
    dotted = [ln for ln in author.lines if ln.get_linestyle() == ":"]
    ends = sorted(y for ln in dotted for y in ln.get_ydata())  # the two long runs only, from their last point
    lift = math.log2(curve.AUTHOR_PAIRS / (102_400 * 8))
    assert ends == pytest.approx(sorted([15.5, 15.5 + 0.5 * lift, 12.75, 12.75 + 0.25 * lift]), rel=1e-12)
    with pytest.raises(ValueError, match="no points"):
        plot_scale_curve([])


# ----------------------------------------------------------------------------- in words (vwe.report)


def curve_payload(points: list[dict]) -> dict:
    header = {"kind": "curve", "title": "A curve", "what": "what ran", "machine": "a CPU",
              "data": {"dataset": "cifar100", "n_train": 45_000, "n_test": 5_000,
                       "evaluated_on": "validation", "archive_md5": "x", "official_archive": False},
              "git": "abc", "time": "2026-12-06", "probe_seeds": "0, 1, 2", "commands": ["python x"]}
    return {"header": header, "points": points}


def with_steps(points: list[dict], encoding: str = "shared", seconds: float = 10.0) -> list[dict]:
    return [{**p, "encoding": encoding, "steps": p["pairs"] // 512, "epoch": p["pairs"] / 512 / 5_625,
             "pretrain_s": seconds * p["pairs"] / 102_400} for p in points]


def test_the_curve_in_words_gives_each_models_slope_and_extrapolation_and_says_what_it_is():
    pts = line("context", 14, 0.5, range(4)) + line("patch", 12, -0.25, range(4))
    words = report.curve_in_words(pts)
    lift = math.log2(curve.AUTHOR_PAIRS / (102_400 * 8))
    assert "up to 0.8 M pairs" in words
    assert "an extrapolation over 8.9 more doublings, not a measurement" in words
    assert (f"context AE +0.50 points per doubling over its last 3 doublings (to {15.5 + 0.5 * lift:.1f} %, "
            "the paper 34.08)") in words
    assert (f"simple AE -0.25 points per doubling over its last 3 doublings (to {11.25 - 0.25 * lift:.1f} %, "
            "the paper 17.81)") in words
    short = report.curve_in_words(line("context", 14, 0.5, range(2)) + line("patch", 12, 1, range(2)))
    assert "+0.50 points per doubling over its last 1 doubling (" in short
    assert report.curve_in_words(line("context", 14, 0.5, range(4))) == ""  # one model: no comparison


def test_the_curve_section_puts_the_encodings_side_by_side_and_the_trends_below():
    shared = with_steps(line("context", 14, 0.5, range(3)) + line("patch", 12, 0.25, range(3)))
    slots = with_steps(line("context", 10, 4.0, range(2)), "slots", seconds=60.0)
    text = "\n".join(report._curve_markdown(curve_payload(shared + slots)))
    # shared leads slots by 4 points at 200 steps (more than 3 points and 3 se at std 0.2), 0.5 at 400;
    # the standardised probe reads author + 1 for both; then each run's pretraining seconds
    assert ("| 200 | 102,400 | **14.00 ± 0.20** | 10.00 ± 0.20 | **15.00 ± 0.30** | 11.00 ± 0.30 | 10 / 60 |"
            in text)
    assert "| 400 | 204,800 | 14.50 ± 0.20 | 14.00 ± 0.20 | 15.50 ± 0.30 | 15.00 ± 0.30 | 20 / 120 |" in text
    encodings = text[text.index("two encodings"):text.index("Each run on every training image")]
    assert "| 800 |" not in encodings  # the slots run stopped at 400 steps: no side by side past it
    assert "| `author` | 45,000 / 45,000 | 0.0356 | 200 | 102,400 |" in text  # epochs to 3 digits
    assert "an **extrapolation**, not a measurement" in text
    assert "| context AE | author's evaluation | 15.00 (409,600) | +0.50 | 2 | 9.9 | " in text
    assert "| simple AE | standardised | 13.50 (409,600) | +0.25 | " in text  # standardised: author + 1
    # the 45 000-image points, both models, every step: 3 rows of the points table
    assert text.count("| `author` | 45,000 / 45,000 |") == 3
    assert "_curve_markdown" not in text


def test_the_encoding_is_chosen_by_accuracy_per_cpu_hour():
    shared = with_steps(line("context", 14, 1.0, range(3)) + line("patch", 12, 0.25, range(3)))
    # slots costs 4x the time: 2 doublings of pairs, worth 2 points to the shared run at 1 point a doubling
    behind = with_steps(line("context", 15.5, 0.0, range(2)), "slots", seconds=40.0)  # +0.5 at 400 steps
    words = report.encoding_in_words(shared + behind)
    assert "At 400 steps (204,800 pairs)" in words and "4.0 times the shared run's pretraining time" in words
    assert "worth +2.00 points at its slope of +1.00 points per doubling, against the slots encoding's " \
        "+0.50" in words
    assert "the **shared encoding**" in words and "slots ahead: same direction, within noise" in words
    ahead = with_steps(line("context", 18.5, 0.0, range(2)), "slots", seconds=40.0)  # +3.5 at 400 steps
    assert "the **slots encoding**" in report.encoding_in_words(shared + ahead)
    assert report.encoding_in_words(shared) == ""  # never side by side: nothing to decide
    # the time is the time to the first common point, which each run trains from step 0 in one go: a
    # later point's time may count only the last of several calls
    partial = [{**p, "pretrain_s": 5.0} if p["steps"] == 400 else p for p in behind]
    words = report.encoding_in_words(shared + partial)
    assert "4.0 times the shared run's pretraining time to reach 200 steps" in words
    assert "not yet been probed" in report.render_encoding(Path("/nonexistent"))
