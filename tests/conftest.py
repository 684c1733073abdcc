"""Shared test setup: one torch thread per test process (and per child process), the `notebooks` marker.

Small CPU kernels gain little from a second thread, and under `make test` other processes (papermill
kernels, nbval) compete for the same two cores: oversubscribed threads made the suite 3x slower.
"""

import os

import torch

torch.set_num_threads(1)
# The same for the processes tests start (notebook kernels, CLI runs): an OpenMP team of two threads
# on a busy two-core machine spin-waits for the core it lost, which made pretraining in a kernel 14x
# slower (9 instead of 130 images/s). setdefault: an explicit setting still wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    # tests/test_notebooks.py executes every notebook twice (papermill, then nbval): minutes, not
    # seconds. `-m "not notebooks"` runs everything else.
    config.addinivalue_line("markers", "notebooks: executes the course notebooks (papermill + nbval)")
