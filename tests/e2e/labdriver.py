"""JupyterLab under test: a private server on loopback, smoke-profile notebook copies, and a page driver.

The server runs the project's interpreter (`python -m jupyterlab`, so the venv's ipykernel is the
`python3` kernel) with fresh config, data, runtime and home directories, a random token and a temp
root holding only the notebooks a test opens. The page helpers wait on what a person sees: the
status bar's "| Idle", cell prompts, rendered outputs.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook
from playwright.sync_api import Page

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

# User settings of the fresh profile: no news toast, no update check, and every cell attached to the DOM
# (the default windowing leaves off-screen cells out of reach of DOM queries).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

IDLE = re.compile(r"\| Idle$")  # the status bar's kernel item: "Python 3 (ipykernel) | Idle"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colours in kernel tracebacks
STDERR = ".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']"
CELL_ERRORS_JS = """() => {
    const notebook = window.jupyterapp.shell.currentWidget?.content;
    if (!notebook?.model?.cells) throw new Error('the current tab is not a notebook');
    const errors = [];
    for (const cell of notebook.model.cells) {
        if (cell.type !== 'code') continue;
        for (const out of cell.outputs.toJSON())
            if (out.output_type === 'error') errors.push(out.traceback.join('\\n') || out.ename);
    }
    return errors;
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    """A running JupyterLab: `url(path)` adds the token; `stop()` ends it and its kernels."""

    root: Path  # what the file browser shows: the notebook copies
    port: int
    token: str
    process: subprocess.Popen
    log: Path
    env: dict[str, str] = field(repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}?token={self.token}"

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def shutdown_kernels(self) -> None:
        """End every kernel session (one test's notebook must not keep computing into the next)."""
        with urllib.request.urlopen(self.url("api/sessions"), timeout=10) as response:
            sessions = json.load(response)
        for session in sessions:
            request = urllib.request.Request(self.url(f"api/sessions/{session['id']}"), method="DELETE")
            urllib.request.urlopen(request, timeout=30).close()

    def stop(self) -> None:
        # SIGTERM lets the server shut its kernels down; kill only if it hangs.
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_lab(workdir: Path, timeout: float = 60.0) -> LabServer:
    """Start JupyterLab on 127.0.0.1 with a random token, everything private under `workdir`.

    The kernels import `vwe` as installed in the venv (`pip install -e .`): the root holds only notebooks.
    """
    dirs = {name: workdir / name for name in ("root", "home", "config", "data", "runtime")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    settings = dirs["config"] / "lab" / "user-settings"
    for rel, values in LAB_SETTINGS.items():
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(values))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
    # The python3 kernelspec still comes from sys.prefix/share/jupyter, which JUPYTER_DATA_DIR does not hide.
    env.update(HOME=str(dirs["home"]), JUPYTER_CONFIG_DIR=str(dirs["config"]),
               JUPYTER_DATA_DIR=str(dirs["data"]), JUPYTER_RUNTIME_DIR=str(dirs["runtime"]))
    env.pop("PYTHONPATH", None)  # only a kernelspec's own env may put another `vwe` first

    port, token = free_port(), secrets.token_hex(24)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={dirs['root']}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--ServerApp.terminals_enabled=False"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = workdir / "jupyterlab.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(cmd, env=env, cwd=dirs["root"], stdout=log_file,
                                   stderr=subprocess.STDOUT)
    server = LabServer(dirs["root"], port, token, process, log, env)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {process.returncode}:\n{server.log_tail()}")
        if http_status(server.url("api/status")) == 200:
            return server
        time.sleep(0.2)
    server.stop()
    raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s:\n{server.log_tail()}")


def http_status(url: str, headers: dict[str, str] | None = None) -> int | None:
    """HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def add_smoke_notebook(server: LabServer, name: str, run_dir: Path, as_name: str | None = None,
                       kernel: str | None = None) -> Path:
    """Copy notebooks/<name>.ipynb into the server root with profile "smoke" and `run_dir` injected.

    Papermill's own injection: an `injected-parameters` cell right after the `parameters` cell.
    `as_name` renames the copy; `kernel` names another kernelspec (see `add_kernelspec`).
    """
    src = NOTEBOOKS / f"{name}.ipynb"
    if not src.exists():
        raise FileNotFoundError(f"{src} is missing; create it with `jupytext --sync notebooks/{name}.py`")
    nb = load_notebook_node(str(src))  # as papermill reads it: every cell has a `tags` list
    if not any("parameters" in c.metadata.get("tags", []) for c in nb.cells):
        raise ValueError(f"{src} has no cell tagged 'parameters' (see notebook conventions)")
    nb = parameterize_notebook(nb, {"profile": "smoke", "run_dir": str(run_dir)})
    if kernel is not None:
        nb.metadata.kernelspec.update(name=kernel, display_name=kernel)
    dest = server.root / f"{as_name or name}.ipynb"
    nbformat.write(nb, dest)
    return dest


def add_kernelspec(server: LabServer, name: str, env: dict[str, str]) -> None:
    """A kernelspec in the server's private data dir: this interpreter's ipykernel with extra `env`."""
    spec_dir = Path(server.env["JUPYTER_DATA_DIR"]) / "kernels" / name
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": name, "language": "python", "env": env}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


def copy_package(dest: Path) -> Path:
    """A copy of the `vwe` package under `dest` (for a kernel PYTHONPATH); returns the package dir."""
    target = dest / "vwe"
    shutil.copytree(REPO / "vwe", target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


# ---------------------------------------------------------------- driving a notebook in the page


def open_notebook(page: Page, server: LabServer, filename: str, timeout_ms: int = 120_000) -> None:
    """Open a notebook and wait until its kernel reports Idle in the status bar.

    Each step may take `timeout_ms`, the page load included (Playwright's own default is 30 s): under
    `make test` the other pytest-xdist worker trains on one of the two cores meanwhile, and on a busy
    machine (load 7) loading JupyterLab's page took over 30 s and starting a kernel over 60 s.
    """
    start = time.monotonic()
    # `reset`: an empty workspace, or JupyterLab would reopen the notebooks of earlier tests beside it.
    page.goto(server.url(f"lab/tree/{filename}") + "&reset", timeout=timeout_ms)
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=timeout_ms)
    page.locator(".jp-Notebook").first.wait_for(timeout=timeout_ms)
    wait_idle(page, timeout_ms)
    tabs = page.locator(".jp-NotebookPanel").count()
    assert tabs == 1, f"{tabs} notebooks open after opening {filename}: the page would mix their cells"
    print(f"opened {filename}, kernel idle, in {time.monotonic() - start:.1f} s")


def wait_idle(page: Page, timeout_ms: int) -> None:
    page.locator("#jp-main-statusbar").get_by_text(IDLE).first.wait_for(timeout=timeout_ms)


def run_all(page: Page, timeout_ms: int = 120_000) -> None:
    """Run all cells (the "Run > Run All Cells" command) and wait until every code cell has executed.

    Fails at once with the traceback text when a cell shows an error, instead of waiting for the
    cells that run-all skips after it.
    """
    start = time.monotonic()
    # Not awaited (the command's promise ends with the run): the loop below watches and times out.
    page.evaluate("() => { window.jupyterapp.commands.execute('runmenu:run-all'); }")
    deadline = start + timeout_ms / 1000
    prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt")
    while time.monotonic() < deadline:
        assert_no_errors(page)
        texts = prompts.all_inner_texts()
        # "[ ]:" not yet run, "[*]:" queued or running, "[7]:" done
        if texts and all(t.strip().strip("[]:").isdigit() for t in texts):
            wait_idle(page, timeout_ms)
            assert_no_errors(page)
            print(f"ran {len(texts)} code cells in {time.monotonic() - start:.1f} s")
            return
        time.sleep(0.25)
    raise TimeoutError(f"cells still running after {timeout_ms / 1000:.0f} s; prompts: {texts}")


def assert_no_errors(page: Page) -> None:
    """No cell has an error output and nothing on the page shows a traceback on stderr.

    The second check also covers the explorers' own Output widget, where a failing redraw lands.
    """
    errors = [ANSI.sub("", t) for t in page.evaluate(CELL_ERRORS_JS)]
    errors += [t for t in page.locator(STDERR).all_inner_texts() if "Traceback" in t or "Error" in t]
    assert not errors, "a cell shows an error:\n" + "\n---\n".join(errors)


def image_bytes(page: Page, img_selector: str) -> bytes:
    """The bytes an <img> shows (data: or blob: URL alike: blob URLs change on every update)."""
    b64 = page.evaluate(
        """async (sel) => {
            const img = document.querySelector(sel);
            if (!img) throw new Error('no image at ' + sel);
            const blob = await (await fetch(img.src)).blob();
            return await new Promise((done) => {
                const reader = new FileReader();
                reader.onload = () => done(reader.result.split(',')[1]);
                reader.readAsDataURL(blob);
            });
        }""",
        img_selector,
    )
    return base64.b64decode(b64)
