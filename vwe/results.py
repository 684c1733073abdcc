"""Measured results as data: the committed results files under `docs/results/` and what reads them.

Each file is one measurement (a table's rows with every probe seed's figure, or a curve's points) with
the command that produced it, the revision, the date, the machine and the data (name, size, md5).
"""

from __future__ import annotations

import json
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
