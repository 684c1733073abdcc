"""`make lab`: JupyterLab on 127.0.0.1 with a token, and the checker of that against commands that are
reachable by others."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def lab_problems(command: str) -> list[str]:
    """What makes a JupyterLab command line reachable by others: the list is empty when it is safe."""
    problems = []
    ips = [v.strip("'\"") for v in re.findall(r"--(?:ServerApp\.|NotebookApp\.)?ip[= ](\S+)", command)]
    if not ips:
        problems.append("no --ServerApp.ip: Jupyter may listen on every interface")
    problems += [f"listens on {ip}" for ip in ips if ip not in ("127.0.0.1", "localhost")]
    tokens = re.findall(r"--(?:IdentityProvider|ServerApp|NotebookApp)\.token[= ]('[^']*'|\"[^\"]*\"|\S*)",
                        command)
    problems += ["empty token: no authentication" for t in tokens if not t.strip("'\"")]
    for flag in ("disable_check_xsrf=True", "allow_origin='*'", "allow_origin=*", "allow_remote_access=True"):
        if flag in command:
            problems.append(flag)
    return problems


@pytest.mark.parametrize("command", [
    "python -m jupyterlab --ServerApp.ip=0.0.0.0 --IdentityProvider.token=abc",
    "python -m jupyterlab --ServerApp.ip=127.0.0.1 --no-browser --ServerApp.token=''",
    "python -m jupyterlab --IdentityProvider.token=abc",
    "python -m jupyterlab --ip='*' --IdentityProvider.token=abc",
    "python -m jupyterlab --ServerApp.ip=localhost --IdentityProvider.token=\"\"",
])
def test_lab_checker_flags_unsafe_commands(command):
    assert lab_problems(command)


def test_make_lab_binds_localhost_with_a_token():
    out = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    commands = out.stdout.replace("\\\n", " ")
    lab = [line for line in commands.splitlines() if "jupyterlab" in line or "jupyter lab" in line]
    assert len(lab) == 1, out.stdout
    assert lab_problems(lab[0]) == []
    assert re.search(r"--IdentityProvider\.token=\S", lab[0])
