"""Fixtures of the browser tests: Debian's Chromium through Playwright, one private JupyterLab per run.

Without Chromium (or Playwright) the test files here are not collected at all, and the run ends with one
line saying so and how to enable them (tests/conftest.py prints it, and the screenshots' paths: under
pytest-xdist only the controlling process writes the summary, and it never imports this file).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from chromium import find_chromium, missing

if missing() is None:
    from labdriver import CHROMIUM_ARGS, REPO, LabServer, start_lab
    from playwright.sync_api import Browser, Page, sync_playwright

    CHROMIUM = find_chromium()
    OUTPUT_DIR = REPO / "test-output" / "e2e"  # gitignored; screenshots a person can look at
else:
    # Not collected rather than skipped one by one: a single clear line instead of one per test.
    collect_ignore_glob = ["test_*.py"]

CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where the screenshots go (test-output/e2e at the repo root)."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    return OUTPUT_DIR


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    # Playwright drives the system Chromium; `playwright install` would download browsers (offline: fails).
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """One fresh JupyterLab for the whole run: no kernel session or workspace survives from elsewhere."""
    server = start_lab(tmp_path_factory.mktemp("lab"))
    yield server
    server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed  # for the `page` fixture's failure screenshot
    return report


@pytest.fixture
def page(browser: Browser, lab: LabServer, output_dir: Path,
         request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context on the lab; a screenshot if the test failed; its kernels shut down after."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    yield page
    if request.node.stash.get(CALL_FAILED, False):
        path = output_dir / f"{request.node.name}-failure.png"
        page.screenshot(path=path, full_page=True)
        print(f"failure screenshot: {path}")
    context.close()
    lab.shutdown_kernels()
