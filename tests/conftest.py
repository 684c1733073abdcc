"""Shared test setup: one torch thread per test process.

Small CPU kernels gain little from a second thread, and under `make test` other processes (papermill
kernels, nbval) compete for the same two cores: oversubscribed threads made the suite 3x slower.
"""

import torch

torch.set_num_threads(1)
