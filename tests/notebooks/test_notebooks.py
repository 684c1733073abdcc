"""The course notebooks, executed and validated.

Every `notebooks/NN_name.ipynb` runs under the smoke profile with papermill (through
`vwe.course.run_all`, the code of `make run-all`) into one temporary run directory, in order, so later
notebooks reuse the checkpoints of earlier ones. Then nbval runs the student's copy of each executed
notebook (`vwe.student`: every solution a stub, as `make student` writes it) in a fresh kernel, in the
same run directory, and compares its text outputs with the course notebook's run: the student's notebook,
going on with the package's functions, must print what the course notebook printed with its solutions,
every exercise's check must say "not done yet" and the last cell count none done (cells tagged
`nbval-ignore-output` excepted, `nbval_sanitize.cfg` beside this file masking addresses, temp paths, timings
and progress bars). One nbval pass so checks both that a rerun prints the same and that the student
notebooks run to their end. nbval runs in a subprocess so that its collection of .ipynb files stays out
of this session: one for all the copies, in order, each still in a kernel of its own (a pytest start
with nbval costs about 3 CPU-seconds, most of it jsonschema's import, and it was paid once per
notebook), its JUnit report telling each notebook's cells apart. Static checks: each pair is in sync,
committed notebooks carry no outputs, a `parameters` cell comes first and `start(` next.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jupytext
import nbformat
import pytest

from vwe import exercises, student
from vwe.course import NOTEBOOK_PATTERN, NotebookError, find_notebooks, main, project_dir, run_all

ROOT = Path(__file__).resolve().parents[2]
SANITIZE = Path(__file__).resolve().parent / "nbval_sanitize.cfg"
NOTEBOOKS = sorted((ROOT / "notebooks").glob(NOTEBOOK_PATTERN))
PARAMETERS = {"profile", "dataset", "device", "run_dir"}  # every notebook's; some add their own
COLOUR = re.compile(r"(\x1b|#x1B)\[[0-9;]*m")
ids = [p.stem for p in NOTEBOOKS]


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def tags(cell: nbformat.NotebookNode) -> list[str]:
    return cell.metadata.get("tags", [])


# ----------------------------------------------------------------------------- static checks


def test_the_course_notebooks_exist():
    numbers = {p.name[:2] for p in NOTEBOOKS}
    assert {"01", "02", "03", "04", "05", "06"} <= numbers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_pair_in_sync(path):
    """The .py (what git diffs) and the .ipynb (what Jupyter opens) hold the same cells and tags."""
    py = path.with_suffix(".py")
    assert py.is_file(), f"{path.name} has no paired {py.name}; run `jupytext --sync {path}`"
    as_cells = [[(c.cell_type, c.source.strip(), tags(c)) for c in jupytext.read(p).cells]
                for p in (path, py)]
    assert as_cells[0] == as_cells[1], f"{path.name} and {py.name} differ; run `jupytext --sync {py}`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_committed_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.kernelspec.name == "python3"
    dirty = [i for i, c in enumerate(code_cells(nb)) if c.outputs or c.execution_count is not None]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_parameters_cell_then_start(path):
    cells = code_cells(nbformat.read(path, as_version=4))
    assert "parameters" in tags(cells[0]), f"{path.name}: the first code cell must be tagged `parameters`"
    assigned = {t.id for node in ast.parse(cells[0].source).body for t in node.targets}
    assert PARAMETERS <= assigned and assigned - PARAMETERS <= {"models"}
    calls = [n.func.id for n in ast.walk(ast.parse(cells[1].source))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "start" in calls, f"{path.name}: the cell after `parameters` must call start(...)"


# Table 1's published numbers, which the prose may quote; any other "12.34 %" or "12.34 ±" in a markdown
# cell is a measurement, which belongs in a cell's output, where it cannot go stale
PAPER_NUMBERS = {"65.32", "7.65", "46.17", "17.81", "30.46", "34.08", "24.55", "42.13", "29.02", "24.07",
                 "20.44"}
MEASURED = re.compile(r"\b(\d+\.\d+)\s?(%|±)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_markdown_states_no_measured_number(path):
    found = [m.group(0) for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"
             for m in MEASURED.finditer(c.source) if m.group(1) not in PAPER_NUMBERS]
    assert not found, f"{path.name}: markdown states measured numbers {found}; print them from a cell"


def test_the_measured_number_pattern():
    text = "ours 16.49 % and 15.48 ± 0.22, the paper's 34.08 %, a 3 % crop, 0.5–1 of the area, lr 1e-3"
    assert [m.group(1) for m in MEASURED.finditer(text)
            if m.group(1) not in PAPER_NUMBERS] == ["16.49", "15.48"]


# ----------------------------------------------------------------------------- the runner


def test_find_notebooks_by_number_name_or_path(tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    for name in ("02_b.ipynb", "01_a.ipynb", "10_c.ipynb", "notes.ipynb"):
        (folder / name).write_text("{}")
    assert [p.name for p in find_notebooks(folder)] == ["01_a.ipynb", "02_b.ipynb", "10_c.ipynb"]
    chosen = find_notebooks(folder, ["10", "01_a", str(folder / "notes.ipynb")])
    assert [p.name for p in chosen] == ["01_a.ipynb", "10_c.ipynb", "notes.ipynb"]
    with pytest.raises(ValueError, match="01_a, 02_b, 10_c"):
        find_notebooks(folder, ["03"])
    with pytest.raises(FileNotFoundError, match="no notebooks"):
        find_notebooks(tmp_path)


def test_project_dir_is_the_checkout():
    assert project_dir() == ROOT


def test_cli_help_and_bad_profile(capsys):
    with pytest.raises(SystemExit) as exit_help:
        main(["--help"])
    assert exit_help.value.code == 0
    assert "--profile" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_bad:
        main(["--profile", "huge"])
    assert exit_bad.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def _tiny_notebook(path: Path, code: str) -> Path:
    params = nbformat.v4.new_code_cell("profile = 'cpu'\ndataset = device = run_dir = None",
                                       metadata={"tags": ["parameters"]})
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(code)])
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.mark.notebooks
def test_run_all_injects_parameters_and_stops_at_a_failing_notebook(tmp_path, capsys):
    good = _tiny_notebook(tmp_path / "02_good.ipynb", "print(profile, dataset, run_dir)")
    bad = _tiny_notebook(tmp_path / "01_bad.ipynb", "raise ValueError(f'boom under {profile}')")
    out = tmp_path / "out"
    timings = run_all("smoke", dataset="shapes", out_dir=out, notebooks=[str(good)])
    assert [(t["notebook"], t["status"]) for t in timings] == [("02_good", "ok")]
    printed = nbformat.read(out / "02_good.ipynb", as_version=4).cells[-1].outputs[0].text
    assert printed == f"smoke shapes {out}\n"
    record = json.loads((out / "course.json").read_text())  # the timings as a results file
    assert record["notebooks"] == timings and record["header"]["profile"] == "smoke"
    assert record["header"]["data"]["dataset"] == "shapes" and record["header"]["machine"]

    (out / "02_good.ipynb").unlink()
    with pytest.raises(NotebookError) as err:  # 01_bad runs first, and stops the run
        run_all("smoke", out_dir=out, notebooks=[str(good), str(bad)])
    assert str(out / "01_bad.ipynb") in str(err.value)
    assert "ValueError: boom under smoke" in str(err.value)
    assert not (out / "02_good.ipynb").exists()
    assert "FAILED" in capsys.readouterr().out.splitlines()[-3]  # the summary names the failure


@pytest.mark.notebooks
def test_run_all_output_is_progress_times_and_real_errors_only(tmp_path, capfd):
    """The kernels' own log (a warning about TCP without encryption at every start, "KeyboardInterrupt
    caught in kernel" at every shutdown) stays out of run-all's output, which the kernels share; a failing
    notebook's cell and error still show."""
    nbs = []
    for name, code in (("01_ok", "print('fine')"), ("02_bad", "raise ValueError('boom')")):
        nb = nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_code_cell("profile = 'cpu'\ndataset = None\ndevice = None\nrun_dir = None",
                                      metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell(code)])
        nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
        nbs.append(str(tmp_path / f"{name}.ipynb"))
    out_dir = tmp_path / "out"
    assert main(["--profile", "smoke", "--out-dir", str(out_dir), "--notebooks", *nbs]) == 1
    out, err = capfd.readouterr()
    assert [line.split()[0] for line in out.splitlines() if line] == [
        "running", "01_ok", "notebook", "-" * 27, "01_ok", "02_bad", "total", "executed"]
    assert err == (f"run-all stopped: {out_dir / '02_bad.ipynb'}: cell [3] raised ValueError: boom\n")


# ----------------------------------------------------------------------------- execution


@pytest.fixture(scope="session")
def executed(tmp_path_factory) -> dict[str, Path | NotebookError]:
    """Every notebook run once under smoke, in order, into one run dir: its executed copy or its error."""
    run_dir = tmp_path_factory.mktemp("notebooks")
    outcome: dict[str, Path | NotebookError] = {}
    for path in NOTEBOOKS:
        try:
            run_all("smoke", out_dir=run_dir, notebooks=[str(path)])
            outcome[path.stem] = run_dir / path.name
        except NotebookError as e:  # keep going: one broken notebook should not hide the others
            outcome[path.stem] = e
    return outcome


def _executed_copy(executed: dict, path: Path) -> Path:
    result = executed[path.stem]
    if isinstance(result, NotebookError):
        pytest.fail(f"{path.name} failed under papermill: {result}", pytrace=False)
    return result


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_executes(executed, path):
    nb = nbformat.read(_executed_copy(executed, path), as_version=4)
    cells = code_cells(nb)
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert all(c.execution_count is not None for c in cells), "papermill skipped cells"
    # The injected parameters reached the notebook: start() printed the smoke profile on Shapes.
    printed = "".join(o.get("text", "") for c in cells[:3] for o in c.outputs)
    assert "profile smoke | dataset shapes | device cpu" in printed


def _stream(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("stream", name="stdout", text=text)


def not_done(e: exercises.Exercise) -> str:
    """What an exercise's check prints on the student's stub."""
    return (f"… Exercise {e.number} `{e.name}`: not done yet. The notebook goes on with {e.uses}. "
            f"ex.{e.name}.hint() gives a hint, ex.{e.name}.solution() the answer.\n")


def none_done(notebook: str) -> str:
    """What a student notebook's last cell (`ex.summary`) prints with every exercise a stub."""
    mine = exercises.of_notebook(notebook)
    width = max(len(e.name) for e in mine)
    return (f"Notebook {notebook}: 0 of {len(mine)} exercises done\n"
            + "".join(f"  · {e.number} {e.name:<{width}}  not done yet\n" for e in mine))


def student_copy(executed_copy: Path, out_dir: Path) -> Path:
    """The student's copy of an executed course notebook (`vwe.student.student_notebook`), holding the
    outputs nbval must find when it runs it: the course run's, except each stub (nothing), the check
    under it (`not_done`) and the last cell (`none_done`)."""
    nb = nbformat.read(executed_copy, as_version=4)
    copy = student.student_notebook(nb, executed_copy.name)
    pairs = [(a, b) for a, b in zip(nb.cells, copy.cells, strict=True) if a.cell_type == "code"]
    for ran, cell in pairs:
        cell.outputs, cell.execution_count = ran.outputs, ran.execution_count
    cells = [cell for _, cell in pairs]
    stubs = [i for i, cell in enumerate(cells) if student.EXERCISE_TAG in tags(cell)]
    mine = exercises.of_notebook(executed_copy.name[:2])
    assert len(stubs) == len(mine), f"{executed_copy.name}: {len(stubs)} stubs for {len(mine)} exercises"
    for i, e in zip(stubs, mine, strict=True):
        cells[i].outputs = []
        cells[i + 1].outputs = [_stream(not_done(e))]
    cells[-1].outputs = [_stream(none_done(executed_copy.name[:2]))]
    out_dir.mkdir(exist_ok=True)
    nbformat.write(copy, out_dir / executed_copy.name)
    return out_dir / executed_copy.name


@pytest.fixture(scope="session")
def nbval_run(executed) -> dict[str, list[str]]:
    """nbval over the student's copy of every executed notebook (`student_copy`, in the run directory's
    student/), in notebook order, in one subprocess: {notebook: the failures of its cells (an empty list
    when all pass)}; a notebook nbval did not report on is absent."""
    copies = [student_copy(p, p.parent / "student") for p in executed.values() if isinstance(p, Path)]
    if not copies:
        return {}
    report = copies[0].parent / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-p", "nbval", "--nbval", "--nbval-current-env",
           "--nbval-sanitize-with", str(SANITIZE), *map(str, copies), "-p", "no:cacheprovider", "-q",
           f"--junitxml={report}", "-o", "junit_family=xunit1"]  # xunit1: each case names its file
    # 900 s a notebook, as when each had a subprocess of its own
    proc = subprocess.run(cmd, cwd=copies[0].parent, capture_output=True, text=True,
                          timeout=900 * len(copies))
    if proc.returncode not in (0, 1) or not report.is_file():  # 1: some cell failed; else nbval broke
        pytest.fail(f"nbval did not run (exit {proc.returncode}):\n{proc.stdout[-8000:]}\n"
                    f"{proc.stderr[-2000:]}", pytrace=False)
    failures: dict[str, list[str]] = {}
    for case in ET.parse(report).iter("testcase"):  # file ".../01_patching.ipynb", name "Cell 3"
        notebook = Path(case.get("file", "")).stem
        found = failures.setdefault(notebook, [])
        for bad in (*case.iter("failure"), *case.iter("error")):
            text = COLOUR.sub("", bad.text or bad.get("message", ""))  # nbval colours; JUnit escapes ESC
            found.append(f"{case.get('name')}: {text}")
    return failures


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_nbval(executed, nbval_run, path):
    """nbval runs the student's copy of the executed notebook and compares every untagged cell's text
    output with the course run's (the exercises' checks: "not done yet")."""
    copy = _executed_copy(executed, path).parent / "student" / path.name
    assert path.stem in nbval_run, f"nbval reported nothing on {copy}"
    failures = nbval_run[path.stem]
    assert not failures, f"nbval failed on {copy}:\n" + "\n".join(failures)[-8000:]


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_nbval_runs_the_notebook_make_student_writes(executed, nbval_run, path, tmp_path):
    """The copy nbval ran is `make student`'s notebook cell for cell (sources, tags), with a stub for
    each of the notebook's exercises."""
    ran = nbformat.read(_executed_copy(executed, path).parent / "student" / path.name, as_version=4)
    written = next(iter(student.write_student(tmp_path, sources=[path])))
    made = nbformat.read(written, as_version=4)
    assert [(c.cell_type, c.source, tags(c)) for c in ran.cells if "injected-parameters" not in tags(c)] == [
        (c.cell_type, c.source, tags(c)) for c in made.cells]
    stubs = [c for c in made.cells if student.EXERCISE_TAG in tags(c)]
    assert len(stubs) == len(exercises.of_notebook(path.name[:2])) > 0
    assert all(student.STUB[1] in c.source for c in stubs)
