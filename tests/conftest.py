"""Shared test setup: one torch thread per test process (and per child process), the `notebooks` marker,
the pytest-xdist grouping and order of `make test` (`-n 2 --dist loadfile`), the browser tests'
closing lines, and the fixtures that several modules use (`shapes`, `killed_at_epoch_2`).

Small CPU kernels gain little from a second thread, and under `make test` other processes (papermill
kernels, nbval, the other xdist worker) compete for the same two cores: oversubscribed threads made the
suite 3x slower.
"""

import importlib.util
import os
import time
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
# The same for the processes tests start (notebook kernels, CLI runs): an OpenMP team of two threads
# on a busy two-core machine spin-waits for the core it lost, which made pretraining in a kernel 14x
# slower (9 instead of 130 images/s). setdefault: an explicit setting still wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

TESTS = Path(__file__).resolve().parent
E2E = TESTS / "e2e"
SCREENSHOTS = TESTS.parent / "test-output" / "e2e"  # tests/e2e/conftest.py's output_dir
SESSION_START = time.time()  # screenshots newer than this are this run's

# Under pytest-xdist (`make test`: `-n 2 --dist loadfile`) each group below is one unit of work, run
# whole by one worker: a module, named by its file's stem in whichever folder of tests/ it is, so that a
# module-scoped fixture (a trained model, a pretraining run) is built once, and tests/e2e as one, whose
# two files share the session's JupyterLab server and browser
# (pytest_xdist_make_scheduler). The units start in this order, the longest first, so that no worker is
# left with a long one at the end: the notebooks (papermill then nbval, minutes), then the trainings.
# Groups not named here follow in file order.
LONGEST_FIRST = ("test_notebooks", "test_claims", "test_cifar100_learning", "e2e",
                 "test_table", "test_torchrun", "test_faults", "test_cli", "test_fast_step",
                 "test_cifar100_real")


def _load_chromium_check():
    """tests/e2e/chromium.py, read by path: tests/e2e is not on sys.path before its conftest loads."""
    spec = importlib.util.spec_from_file_location("vwe_tests_e2e_chromium", E2E / "chromium.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    # tests/notebooks/test_notebooks.py executes every notebook twice (papermill, then nbval): minutes, not
    # seconds. `-m "not notebooks"` runs everything else.
    config.addinivalue_line("markers", "notebooks: executes the course notebooks (papermill + nbval)")


def group_of(nodeid: str) -> str:
    """The unit of work of a test under xdist: "e2e" for tests/e2e, else its module's name."""
    path = Path(nodeid.split("::", 1)[0])
    return "e2e" if path.parent.name == "e2e" and path.parent.parent.name == "tests" else path.stem


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: without it, never called
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, but with tests/e2e as one unit (its session fixtures start once)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndE2E(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return ModulesAndE2E(config, log)


def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):  # not an xdist worker: the files' order
        return
    # A stable sort: each module's tests stay together and in their order, the groups come in
    # LONGEST_FIRST's order, which `--no-loadscope-reorder` keeps (xdist's default orders the units
    # by their number of tests).
    rank = {group: i for i, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(group_of(item.nodeid), len(rank)))



@pytest.fixture(scope="module")
def shapes(request):
    """The Shapes data set of the smoke-sized runs: 64 training / 32 test images of data seed 0, what
    `load_dataset` gives the CLI for `--n-train 64 --n-test 32`; a module that sets
    `SHAPES = (n_train, n_test)` gets that size. Built once per module, never shared between modules."""
    from vwe.data.shapes import make_shapes

    n_train, n_test = getattr(request.module, "SHAPES", (64, 32))
    return make_shapes(n_train, n_test, seed=0)


@pytest.fixture
def killed_at_epoch_2():
    """`vwe.runs.save_checkpoint` as it is now, but interrupted (KeyboardInterrupt: a Ctrl-C) where it
    would write epoch 2's checkpoint. Patch it in with monkeypatch, then put the real one back to resume."""
    import vwe.runs

    real_save = vwe.runs.save_checkpoint

    def killed(path, state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt
        real_save(path, state)

    return killed


def _runs_e2e(config) -> bool:
    """Whether this run's paths include tests/e2e (what loads its conftest in a run without xdist)."""
    paths = [Path(config.invocation_params.dir, str(arg).split("::")[0]).resolve() for arg in config.args]
    return any(p == E2E or E2E in p.parents or p in E2E.parents for p in paths)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config) -> None:
    # Here rather than in tests/e2e/conftest.py: under xdist only the controlling process writes the
    # summary, and it collects nothing, so it never imports that file.
    if not _runs_e2e(config):
        return
    missing = _load_chromium_check().missing()
    if missing is not None:
        terminalreporter.write_line(f"SKIPPED tests/e2e: browser tests not run, {missing} is not installed; "
                                    "enable them with `bash scripts/install-chromium.sh` or `make e2e`",
                                    yellow=True)
        return
    shots = sorted(p for p in SCREENSHOTS.glob("*.png") if p.stat().st_mtime >= SESSION_START)
    if shots:
        root = TESTS.parent
        terminalreporter.write_line("e2e screenshots: " + " ".join(str(p.relative_to(root)) for p in shots))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # `pytest tests/e2e` on a machine without Chromium collected nothing on purpose: not a failure.
    if (exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and _runs_e2e(session.config)
            and _load_chromium_check().missing() is not None):
        session.exitstatus = pytest.ExitCode.OK

