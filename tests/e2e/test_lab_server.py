"""The test server is locked down: loopback only, and nothing answers without the token."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
from labdriver import LabServer, http_status

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("endpoint", ["api/contents", "api/kernels"])
def test_api_refuses_requests_without_the_right_token(lab: LabServer, endpoint: str) -> None:
    bare = f"{lab.base}/{endpoint}"
    assert http_status(bare) in (401, 403)
    assert http_status(f"{bare}?token=not-{lab.token}") in (401, 403)
    assert http_status(bare, {"Authorization": f"token {lab.token[::-1]}"}) in (401, 403)
    assert http_status(bare, {"Authorization": f"token {lab.token}"}) == 200
    assert http_status(lab.url(endpoint)) == 200


def test_contents_with_token_lists_the_server_root(lab: LabServer) -> None:
    (lab.root / "marker.txt").write_text("here")
    with urllib.request.urlopen(lab.url("api/contents")) as response:
        listing = json.load(response)
    assert listing["type"] == "directory"
    assert "marker.txt" in {item["name"] for item in listing["content"]}


def outside_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def test_server_listens_on_loopback_only(lab: LabServer) -> None:
    address = outside_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex((address, lab.port)) != 0, f"JupyterLab answers on {address}:{lab.port}"
    assert http_status(lab.url("api/status")) == 200  # while it does answer on loopback
