"""Whether the browser tests can run here, without importing Playwright: Debian's Chromium and the
playwright package. Read by tests/conftest.py (the run's summary line) and tests/e2e/conftest.py."""

from __future__ import annotations

import importlib.util
import os

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None


def find_chromium() -> str | None:
    """Path of Debian's Chromium, or None when it is not installed."""
    return next((p for p in CHROMIUM_PATHS if os.access(p, os.X_OK)), None)


def missing() -> str | None:
    """What the browser tests lack here, in words, or None when they can run."""
    if not HAVE_PLAYWRIGHT:
        return "the playwright package"
    if find_chromium() is None:
        return "Chromium (/usr/bin/chromium)"
    return None
