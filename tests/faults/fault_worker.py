"""`python -m vwe ...` with a fault injected, run as a subprocess by tests/faults/test_faults.py
and tests/torchrun/test_torchrun.py.

    python tests/faults/fault_worker.py pretrain --profile smoke ... --run-dir DIR

The environment picks the fault; the package itself is never changed, only patched here:

- VWE_FAULT_KILL_STEP=N: SIGKILL this process right after its N-th training step (counted over
  the whole process from 1), i.e. mid-epoch with updated weights that no checkpoint holds.
- VWE_FAULT_KILL_SAVE=N: SIGKILL inside the N-th checkpoint write, once half of the file's bytes
  are on disk, before the rename.
- VWE_FAULT_KILL_METRICS=N: SIGKILL just before the N-th rename onto metrics.jsonl (the first is
  the rewrite at start-up), i.e. between a checkpoint and its metrics line.
- VWE_FAULT_THREADS=N: torch threads, so results match the test process bit for bit.
- VWE_FAULT_RANK=R: under torchrun, only the process of that RANK is killed (default: any).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch


def _kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _countdown(name: str):
    """A function that returns True on its N-th call, N from the environment (never if unset), in
    the process that VWE_FAULT_RANK names (every process if unset)."""
    chosen = os.environ.get("VWE_FAULT_RANK", os.environ.get("RANK", "0")) == os.environ.get("RANK", "0")
    left = [int(os.environ.get(name, "0")) if chosen else 0]

    def tick() -> bool:
        left[0] -= 1
        return left[0] == 0

    return tick


def _patch_steps() -> None:
    import vwe.pretrain

    tick = _countdown("VWE_FAULT_KILL_STEP")

    class KillingStep(vwe.pretrain.PretrainStep):
        def __call__(self, images: torch.Tensor) -> torch.Tensor:
            loss = super().__call__(images)
            if tick():
                _kill()
            return loss

    vwe.pretrain.PretrainStep = KillingStep


def _patch_checkpoint_writes() -> None:
    tick = _countdown("VWE_FAULT_KILL_SAVE")
    real_open = open

    def opening(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" not in mode or not Path(str(file)).name.startswith(".checkpoint-") or not tick():
            return f

        class HalfThenDie:
            """The file object torch's bytes are written to: half reach the disk, then SIGKILL."""

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, data) -> int:
                data = bytes(data)
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                _kill()
                return len(data)

        return HalfThenDie()

    import vwe.runs

    vwe.runs.open = opening  # module-level name lookup: only vwe.runs sees this open


def _patch_metrics_renames() -> None:
    tick = _countdown("VWE_FAULT_KILL_METRICS")
    real_replace = os.replace

    def replacing(src, dst, *args, **kwargs):
        if Path(dst).name == "metrics.jsonl" and tick():
            _kill()
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replacing


def main() -> None:
    torch.set_num_threads(int(os.environ.get("VWE_FAULT_THREADS", "1")))
    _patch_steps()
    _patch_checkpoint_writes()
    _patch_metrics_renames()
    from vwe.__main__ import main as vwe_main

    vwe_main(sys.argv[1:])


if __name__ == "__main__":
    main()
