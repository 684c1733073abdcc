"""The trainers as an entry point calls them: `resolve_and_pretrain` and `resolve_and_train_supervised`
resolve the config first (`vwe.config.resolve`: the data loaded when None, else cut to the config's
sizes, and the device), then call `vwe.pretrain.pretrain` or `vwe.supervised.train_supervised` on it."""

from __future__ import annotations

import vwe.pretrain
import vwe.supervised
from vwe.config import Config, resolve
from vwe.data import Dataset


def resolve_and_pretrain(cfg: Config, run_dir, data: Dataset | None = None, **kwargs
                         ) -> vwe.pretrain.PretrainResult:
    cfg, data, device = resolve(cfg, data)
    return vwe.pretrain.pretrain(cfg, run_dir, data, device, **kwargs)


def resolve_and_train_supervised(cfg: Config, run_dir, data: Dataset | None = None, recipe=None, **kwargs
                                 ) -> vwe.supervised.SupervisedResult:
    cfg, data, device = resolve(cfg, data)
    return vwe.supervised.train_supervised(cfg, run_dir, data, recipe, device, **kwargs)
