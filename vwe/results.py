"""Measured results as data: the committed results files under `docs/results/` and what reads them.

Each file is one measurement (a table's rows with every probe seed's figure, or a curve's points) with
the command that produced it, the revision, the date, the machine and the data (name, size, md5).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from vwe.data.dataset import project_dir


def results_dir() -> Path:
    """`docs/results/` of the checkout: where the committed results files live."""
    return project_dir() / "docs" / "results"


def load_results(name: str) -> dict:
    """The committed results file `docs/results/<name>.json` (a `write_results` payload: "header",
    "rows", "claims")."""
    path = results_dir() / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in results_dir().glob("*.json"))
        raise FileNotFoundError(f"no results file {path}; the committed ones are {known}")
    return json.loads(path.read_text())


def significant(lower: dict, higher: dict) -> bool:
    """Whether `higher` is ahead of `lower` (probe summaries {"mean", "std", "accs"}) by more than 3
    standard errors of the difference of the means (Welch) and more than 3 points."""
    gap = higher["mean"] - lower["mean"]
    se = math.sqrt(lower["std"] ** 2 / len(lower["accs"]) + higher["std"] ** 2 / len(higher["accs"]))
    return gap > 3 * se and gap > 3
