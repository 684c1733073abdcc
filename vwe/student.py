"""The student notebooks: every course notebook with its solutions replaced by stubs and its outputs
cleared, in student/ (`make student`, `python -m vwe.student`).

A solution lives once, in its course notebook (notebooks/NN_name.py and the paired .ipynb): in a code
cell tagged `solution`, between a `# BEGIN SOLUTION` line and an `# END SOLUTION` line inside the
function the exercise asks for. The student's copy keeps the cell, the function's signature and its
docstring; the lines between the markers become a stub that raises NotImplementedError, which the
exercise's check reports as "not done yet" before the notebook goes on with the package's function
(`vwe.exercises`). The cell's tag becomes `exercise`.

A student notebook that exists is the student's work: it is never overwritten unless asked (`--force`).
"""

from __future__ import annotations

import argparse
import ast
import copy
import sys
from collections.abc import Sequence
from pathlib import Path

import nbformat

from vwe.course import find_notebooks
from vwe.data import project_dir

SOLUTION_TAG = "solution"  # a course notebook's cell holding a solution
EXERCISE_TAG = "exercise"  # the same cell in the student's copy, holding the stub
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
STUB = ("# your code here", 'raise NotImplementedError("your code here")')
STUDENT_DIR = "student"  # beside notebooks/, git-ignored


class SolutionError(ValueError):
    """A course notebook's solution markers are missing, unbalanced or outside a `solution` cell."""


def _tags(cell: nbformat.NotebookNode) -> list[str]:
    return cell.metadata.get("tags", [])


def _is_marker(line: str) -> bool:
    return line.strip() in (BEGIN, END)


def stub_out(source: str, where: str = "a cell") -> str:
    """A solution cell's source with each marked block replaced by the stub, at the block's indent."""
    out, inside, blocks = [], False, 0
    for line in source.splitlines():
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise SolutionError(f"{where}: a second `{BEGIN}` before `{END}`")
            inside, blocks = True, blocks + 1
            indent = line[:len(line) - len(line.lstrip())]
            out += [indent + stub for stub in STUB]
        elif marker == END:
            if not inside:
                raise SolutionError(f"{where}: `{END}` without a `{BEGIN}` above it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise SolutionError(f"{where}: `{BEGIN}` is never closed by `{END}`")
    if not blocks:
        raise SolutionError(f"{where} is tagged `{SOLUTION_TAG}` but holds no `{BEGIN}` ... `{END}` block: "
                            "mark the lines the student writes")
    return "\n".join(out)


def solution_cells(nb: nbformat.NotebookNode, name: str = "a notebook") -> list[nbformat.NotebookNode]:
    """The `solution` cells of a course notebook, after checking that no other cell holds markers."""
    found = []
    for i, cell in enumerate(nb.cells):
        tagged = SOLUTION_TAG in _tags(cell)
        if any(map(_is_marker, cell.source.splitlines())) and not (tagged and cell.cell_type == "code"):
            raise SolutionError(f"{name}, cell {i}: solution markers in a cell not tagged `{SOLUTION_TAG}`: "
                                "tag it, or the student's copy would show the solution")
        if tagged:
            found.append(cell)
    return found


def defined_functions(source: str) -> list[str]:
    """The names of the functions a cell defines at its top level."""
    return [node.name for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)]


def solutions(path: str | Path) -> dict[str, str]:
    """{function name: its solution cell's source without the marker lines} of a course notebook."""
    found = {}
    for cell in solution_cells(nbformat.read(path, as_version=4), Path(path).name):
        text = "\n".join(line for line in cell.source.splitlines() if not _is_marker(line))
        found.update(dict.fromkeys(defined_functions(text), text))
    return found


def student_notebook(nb: nbformat.NotebookNode, name: str = "a notebook") -> nbformat.NotebookNode:
    """The student's copy of a course notebook: each solution stubbed out and tagged `exercise`, every
    code cell without outputs or execution count. The course notebook itself is not changed."""
    student = copy.deepcopy(nb)
    solution_cells(student, name)  # refuses markers outside solution cells
    for i, cell in enumerate(student.cells):
        if cell.cell_type != "code":
            continue
        if SOLUTION_TAG in _tags(cell):
            cell.source = stub_out(cell.source, f"{name}, cell {i}")
            cell.metadata["tags"] = [EXERCISE_TAG if t == SOLUTION_TAG else t for t in _tags(cell)]
        cell.outputs, cell.execution_count = [], None
    return student


def write_student(out_dir: str | Path | None = None, sources: Sequence[Path] | None = None,
                  force: bool = False) -> dict[Path, bool]:
    """Write the student notebooks into `out_dir` (default: student/ in the checkout), one for each course
    notebook of `sources` (default: all of notebooks/). Returns {path: whether it was written}: a student
    notebook that exists is kept (it holds the student's work) unless `force`."""
    out_dir = Path(out_dir) if out_dir is not None else project_dir() / STUDENT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for source in sources if sources is not None else find_notebooks():
        target = out_dir / source.name
        written[target] = force or not target.exists()
        if written[target]:
            nbformat.write(student_notebook(nbformat.read(source, as_version=4), source.name), target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vwe.student",
        description="Write the student notebooks, each solution replaced by its stub (make student).")
    parser.add_argument("--out-dir", type=Path, help=f"where (default: {STUDENT_DIR}/ in the checkout)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite the student notebooks that exist (the work in them is lost)")
    a = parser.parse_args(argv)
    try:
        written = write_student(a.out_dir, force=a.force)
    except (SolutionError, FileNotFoundError) as e:
        print(f"student notebooks not written: {e}", file=sys.stderr)
        return 1
    for path, fresh in written.items():
        print(f"wrote {path}" if fresh else f"kept  {path} (yours; --force rewrites it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
