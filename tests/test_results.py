"""Results as data (`vwe.results`): when a gap counts, the paper's claims, the results files' round trip
(their rendering, `vwe.report`, in test_report.py)."""

import dataclasses
import json
import math
import statistics

import pytest

from vwe.results import (
    SIGNIFICANT_POINTS,
    SIGNIFICANT_SE,
    claims,
    gap,
    load_results,
    results_files,
    rows_of,
    significant,
    verdict,
    verdict_in_words,
    write_results,
)
from vwe.table import ROWS, row_from_evaluation

BY_KEY = {r.key: r for r in ROWS}


def summary(accs: list[float]) -> dict:
    return {"mean": statistics.fmean(accs), "std": statistics.stdev(accs), "accs": accs}


def test_gap_is_welchs_standard_error_of_the_difference():
    lower, higher = summary([10.0, 11.0, 12.0]), summary([15.0, 17.0, 19.0, 21.0])
    points, in_se = gap(lower, higher)
    assert points == pytest.approx(18.0 - 11.0)
    # s1^2 / n1 + s2^2 / n2 written out: 1^2 / 3 + (sqrt(20 / 3))^2 / 4
    assert in_se == pytest.approx(7.0 / math.sqrt(1 / 3 + 20 / 3 / 4))
    assert gap(higher, lower) == (pytest.approx(-points), pytest.approx(-in_se))


def test_a_gap_counts_past_both_bounds_only():
    lo = {"mean": 10.0, "std": 0.3, "accs": [0.0] * 3}  # the difference's standard error: 0.245
    # past both bounds
    assert significant(lo, {**lo, "mean": 10.0 + SIGNIFICANT_POINTS + 0.01})
    # many standard errors but not enough points: another CPU's rounding could make it
    assert not significant(lo, {**lo, "mean": 10.0 + SIGNIFICANT_POINTS - 0.01})
    # enough points but not enough standard errors
    wide = {"mean": 10.0, "std": 3.0, "accs": [0.0] * 3}
    assert gap(wide, {**wide, "mean": 14.0})[1] < SIGNIFICANT_SE
    assert not significant(wide, {**wide, "mean": 14.0})
    # a 3.5-point gap of just under 3 standard errors does not count; just over, it does
    exact = {**lo, "std": 3.5 / SIGNIFICANT_SE / math.sqrt(2 / 3)}
    assert gap(exact, {**exact, "mean": 13.5})[1] == pytest.approx(SIGNIFICANT_SE)
    assert not significant(exact, {**exact, "mean": 13.5 - 1e-6})
    assert significant(exact, {**exact, "mean": 13.5 + 1e-6})
    assert not significant({**lo, "mean": 20.0}, lo)  # behind never counts


def test_verdicts():
    lo = {"mean": 10.0, "std": 0.0, "accs": [10.0] * 3}
    assert verdict(lo, {**lo, "mean": 14.0}) == "yes"
    assert verdict(lo, {**lo, "mean": 11.0}) == "same direction, within noise"
    assert verdict(lo, {**lo, "mean": 9.0}) == "no"
    assert verdict(lo, lo) == "no"


def test_the_verdict_in_words_says_who_leads_by_how_much_and_whether_it_counts():
    simple = {"mean": 10.0, "std": 0.0, "accs": [10.0] * 3}
    spread = {"mean": 14.0, "std": math.sqrt(3.0), "accs": [14.0] * 3}  # the difference's se: 1 point
    noisy = {"mean": 10.0, "std": 3.0, "accs": [10.0] * 3}  # with itself: se sqrt(6), 5 points = 2.04 se
    short = (f"short of the {SIGNIFICANT_POINTS:g} points and {SIGNIFICANT_SE:g} standard errors a gap "
             "needs to count")
    assert verdict_in_words(simple, spread) == ("the context autoencoder leads the simple one by 4.00 "
                                                "points (4.0 standard errors), a gap that counts")
    assert verdict_in_words(spread, simple) == ("the context autoencoder trails the simple one by 4.00 "
                                                "points (4.0 standard errors), a gap that counts")
    assert verdict_in_words(simple, {**spread, "mean": 11.0}) == (
        f"the context autoencoder leads the simple one by 1.00 points (1.0 standard errors), {short}")
    assert verdict_in_words({**spread, "mean": 11.0}, simple) == (
        f"the context autoencoder trails the simple one by 1.00 points (1.0 standard errors), {short}")
    assert verdict_in_words(noisy, {**noisy, "mean": 15.0}) == (
        f"the context autoencoder leads the simple one by 5.00 points (2.0 standard errors), {short}")
    assert verdict_in_words(simple, simple) == "the context autoencoder and the simple one score the same"


def _row(key: str, mean: float, std: float, n: int = 3):
    probe = {"mean": mean, "std": std, "accs": [mean] * n}
    evaluation = {"mean": mean, "std": std, "accs": [mean] * n, "knn": 0.0, "dim": 1,
                  "probes": {"embedding/standard": probe}}
    return row_from_evaluation(BY_KEY[key], evaluation, "cifar100", 1, 0.0, "x")


def test_claims_read_the_rows_they_name():
    rows = [_row("random-resnet32", 10.0, 0.5), _row("patch-resnet32-aug", 11.5, 1.0),
            _row("context-resnet32-aug", 16.0, 0.2), _row("context-conv4-aug", 17.0, 0.1)]
    found = {c["claim"]: c for c in claims(rows)}
    assert set(found) == {"random weights < simple autoencoder", "random weights < context autoencoder",
                          "simple autoencoder < context autoencoder", "ResNet-32 beats Conv4 as the tower"}
    low_simple = found["random weights < simple autoencoder"]
    assert low_simple["gap"] == pytest.approx(1.5)
    assert low_simple["gap_in_se"] == pytest.approx(1.5 / math.sqrt(0.25 / 3 + 1.0 / 3))
    assert low_simple["holds"] == "same direction, within noise"
    assert found["random weights < context autoencoder"]["holds"] == "yes"  # 6 points, 20 se
    assert found["simple autoencoder < context autoencoder"]["holds"] == "yes"  # 4.5 points, 7.6 se
    assert found["ResNet-32 beats Conv4 as the tower"]["gap"] == pytest.approx(-1.0)
    assert found["ResNet-32 beats Conv4 as the tower"]["holds"] == "no"
    assert claims(rows, "embedding/raw") == []  # no such probe in these rows


def test_results_file_round_trip(tmp_path):
    rows = [_row("random-resnet32", 10.0, 0.5), _row("context-resnet32-aug", 16.0, 0.2)]
    header = {"dataset": "cifar100", "n_train": 4, "n_test": 2, "classes": 100, "data_sha256": "0" * 64,
              "profile": "cpu", "device": "cpu", "epochs": 1, "batch_size": 8, "views_per_image": 4,
              "lr": 1e-4, "probe_epochs": 2, "probe_seeds": [0, 1, 2], "torch": "x", "python": "3",
              "git": "abc", "time": "t", "machine": "2-core test CPU", "command": "python -m vwe table"}
    files = write_results(header, rows, tmp_path)
    assert files == results_files(tmp_path) and all(p.is_file() for p in files.values())
    payload = json.loads(files["json"].read_text())
    assert payload["header"] == {"kind": "table", **header}
    assert rows_of(payload) == rows
    assert payload["claims"]["standardised"] == claims(rows)
    assert "machine: 2-core test CPU" in files["md"].read_text()
    assert [dataclasses.asdict(r) for r in rows_of(payload)] == payload["rows"]


def test_load_results_names_the_files_it_has(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no results file .*b\.json.*\['a'\]"):
        load_results("b", tmp_path)
