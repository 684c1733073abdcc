"""Shared test setup: one torch thread per test process, and the `notebooks` marker.

Small CPU kernels gain little from a second thread, and under `make test` other processes (papermill
kernels, nbval) compete for the same two cores: oversubscribed threads made the suite 3x slower.
"""

import torch

torch.set_num_threads(1)


def pytest_configure(config):
    # tests/test_notebooks.py executes every notebook twice (papermill, then nbval): minutes, not
    # seconds. `-m "not notebooks"` runs everything else.
    config.addinivalue_line("markers", "notebooks: executes the course notebooks (papermill + nbval)")
