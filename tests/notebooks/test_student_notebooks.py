"""The student notebooks, as `make student` writes them, executed headless under the smoke profile with
every exercise still a stub: each runs to its end without an error, each check says "not done yet"
(the notebook going on with the package's function), and the last cell counts none of them done.

They run with papermill (through `vwe.course.run_all`, as `make run-all` runs the course notebooks) into
one run directory, in order, so that 05-07 find notebook 04's runs; nbval is not run on them (their checks
print the same lines every time, but the course notebooks' nbval already covers the cells they share).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from vwe import exercises, student
from vwe.course import NotebookError, run_all

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> tuple[Path, NotebookError | None]:
    """The student notebooks as `write_student` writes them, run in order under smoke by one `run_all`
    (which stops at a failing notebook): the run directory of their executed copies, and the error."""
    written = student.write_student(tmp_path_factory.mktemp("student"))
    run_dir = tmp_path_factory.mktemp("runs")
    try:
        run_all("smoke", out_dir=run_dir, notebooks=[str(path) for path in written])
    except NotebookError as e:
        return run_dir, e
    return run_dir, None


def _text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_student_notebook_runs_with_every_exercise_not_done(executed, path):
    run_dir, error = executed
    copy = run_dir / path.name
    if error is not None and (str(copy) in str(error) or not copy.exists()):
        pytest.fail(f"the student copy of {path.name} did not run to its end: {error}", pytrace=False)
    cells = [c for c in nbformat.read(copy, as_version=4).cells if c.cell_type == "code"]
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert all(c.execution_count is not None for c in cells), "papermill skipped cells"
    mine = exercises.of_notebook(path.name[:2])
    stubs = [i for i, c in enumerate(cells) if student.EXERCISE_TAG in c.metadata.get("tags", [])]
    assert len(stubs) == len(mine)
    for i, e in zip(stubs, mine, strict=True):
        assert _text(cells[i]) == ""  # defining the stub runs nothing
        assert _text(cells[i + 1]) == (f"… Exercise {e.number} `{e.name}`: not done yet. The notebook goes "
                                       f"on with {e.uses}. ex.{e.name}.hint() gives a hint, "
                                       f"ex.{e.name}.solution() the answer.\n")
    width = max(len(e.name) for e in mine)
    assert _text(cells[-1]) == (f"Notebook {path.name[:2]}: 0 of {len(mine)} exercises done\n"
                                + "".join(f"  · {e.number} {e.name:<{width}}  not done yet\n" for e in mine))
