"""What every notebook does first: resolve its parameters into a config, a device and a run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vwe.config import Config, get_config, resolve_device
from vwe.data import Dataset, load_dataset


@dataclass
class Session:
    cfg: Config
    device: torch.device
    run_dir: Path  # runs/<profile> unless given: checkpoints, figures, results
    data: Dataset

    @property
    def figures(self) -> Path:
        path = self.run_dir / "figures"
        path.mkdir(parents=True, exist_ok=True)
        return path


def start(profile: str = "cpu", dataset: str | None = None, device: str | None = None,
          run_dir: str | Path | None = None, **overrides) -> Session:
    """Config from the notebook's `parameters` cell, the dataset loaded, and one line saying what runs.

    `dataset` and `device` of None keep the profile's; `run_dir` of None is `runs/<profile>`.
    """
    cfg = get_config(profile, dataset=dataset, device=device, **overrides)
    data = load_dataset(cfg.dataset, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.data_seed)
    cfg = cfg.replace(dataset=data.name)  # what "auto" resolved to
    dev = resolve_device(cfg.device)
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / cfg.profile
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"profile {cfg.profile} | dataset {data.name} | device {dev} | run dir {run_dir}")
    return Session(cfg, dev, run_dir, data)
