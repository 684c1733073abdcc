"""`vwe.student`: the student notebooks are the course notebooks with each solution stubbed out, written
deterministically, a student's copy kept (tests/notebooks/test_notebooks.py runs them under nbval)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from vwe import student

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_stub_out_keeps_the_signature_and_docstring():
    source = ('def f(x):\n    """Doc."""\n    # BEGIN SOLUTION\n    y = x + 1\n    return y\n'
              "    # END SOLUTION\n\nprint(f)")
    assert student.stub_out(source) == ('def f(x):\n    """Doc."""\n    # your code here\n'
                                        '    raise NotImplementedError("your code here")\n\nprint(f)')


@pytest.mark.parametrize("source,words", [
    ("def f():\n    return 1", "holds no `# BEGIN SOLUTION`"),
    ("def f():\n    # BEGIN SOLUTION\n    return 1", "never closed"),
    ("def f():\n    # END SOLUTION\n    return 1", "without a `# BEGIN SOLUTION` above it"),
    ("def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION", "a second"),
])
def test_stub_out_refuses_unbalanced_markers(source, words):
    with pytest.raises(student.SolutionError, match=re.escape(words)):
        student.stub_out(source, "03_model.ipynb, cell 7")


def test_markers_outside_a_solution_cell_are_refused():
    cell = nbformat.v4.new_code_cell("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION")
    with pytest.raises(student.SolutionError, match="cell 0: solution markers in a cell not tagged"):
        student.student_notebook(nbformat.v4.new_notebook(cells=[cell]), "x.ipynb")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_student_notebook_is_the_course_one_with_stubs(path):
    course = nbformat.read(path, as_version=4)
    copy_ = student.student_notebook(course, path.name)
    assert len(copy_.cells) == len(course.cells)
    for theirs, mine in zip(course.cells, copy_.cells, strict=True):
        tags = theirs.metadata.get("tags", [])
        if student.SOLUTION_TAG in tags:
            assert "BEGIN SOLUTION" not in mine.source and student.STUB[1] in mine.source
            assert mine.metadata["tags"] == [student.EXERCISE_TAG]
            assert student.defined_functions(mine.source) == student.defined_functions(theirs.source)
        else:
            assert mine.source == theirs.source and mine.metadata == theirs.metadata
    assert "parameters" in copy_.cells[1].metadata["tags"]  # parameters first, start( next, untouched


def test_make_student_writes_deterministically_and_keeps_a_students_work(tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    assert all(student.write_student(first).values())
    assert student.main(["--out-dir", str(second)]) == 0
    assert capsys.readouterr().out.count("wrote ") == len(NOTEBOOKS)
    for path in NOTEBOOKS:
        assert (first / path.name).read_bytes() == (second / path.name).read_bytes()
    mine = second / NOTEBOOKS[0].name
    mine.write_text(mine.read_text().replace("your code here", "my attempt"))
    assert student.main(["--out-dir", str(second)]) == 0
    assert "my attempt" in mine.read_text()  # kept
    assert f"kept  {mine} (yours; --force rewrites it)" in capsys.readouterr().out
    assert student.main(["--out-dir", str(second), "--force"]) == 0
    assert mine.read_bytes() == (first / NOTEBOOKS[0].name).read_bytes()
