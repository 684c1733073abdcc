"""One typed config for data, pretraining and linear evaluation, and the named profiles.

A profile (`smoke`, `cpu`, `paper`) is a `Config` instance; notebooks (papermill parameters), the CLI
and the tests all start from `get_config(profile, **overrides)`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vwe import distributed
from vwe.augment import AugmentConfig, batch_views
from vwe.checks import is_int, is_real
from vwe.data import Dataset, check_dataset_name, load_dataset
from vwe.models import DECODERS, ENCODINGS, MODELS, TOWERS
from vwe.patches import N_PATCHES

PROBE_NORMS = ("standard", "raw")  # standardised with the training features' statistics | as they are
# What identifies a run, declared once (`Config.identity`): both trainers' resume checks and the table's
# finished rows read these.
RUNTIME_FIELDS = ("profile", "device", "compile", "eval_batch_size")  # how a run runs, not what it computes
EXTENT_FIELDS = ("epochs", "minutes", "steps")  # how far a run trains: a resume may ask for more
PROBE_FIELDS = ("probe_epochs", "probe_batch_size", "probe_lr", "probe_seeds", "probe_norm")
# the supervised row: its data, its tower, its seed, and its epochs (they place the lr drops)
SUPERVISED_FIELDS = ("dataset", "n_train", "n_test", "validation", "data_seed", "tower", "epochs", "seed")


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> cuda when available else cpu; anything else must be a valid torch device string."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"invalid device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return dev


def batch_text(images: int, views: int = 1) -> str:
    """A batch in both units: '8 images x 4 views = 512 (context, target) pairs'."""
    shown = f"{images} images" + (f" x {views} views" if views > 1 else "")
    return f"{shown} = {images * views * N_PATCHES} (context, target) pairs"


def _require(name: str, value: object, ok: Callable[[object], bool], what: str) -> None:
    if not ok(value):
        raise TypeError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")


@dataclass(frozen=True)
class Config:
    profile: str = "custom"
    # data
    dataset: str = "auto"  # "auto" | "cifar10" | "cifar100" | "shapes" | "folder:PATH"
    n_train: int | None = None  # training images used (None: all)
    n_test: int | None = None  # test images used (None: all)
    validation: int = 0  # > 0: evaluate on the last `validation` training images instead of the test split
    data_seed: int = 0  # Shapes generation seed; an image folder's split and order
    # model
    model: str = "context"  # "context" (the method) | "patch" (the simple autoencoder)
    tower: str = "resnet32"  # "resnet32" | "conv4"
    encoding: str = "shared"  # "shared" | "literal" | "slots" (context model only; docs/design.md §6)
    decoder: str = "text"  # "text" (docs/design.md §7) | "author" (the author's code, with BatchNorm)
    normalize: bool = True  # the tower standardises its [0, 1] input (False: as the author's code)
    conv4: str = "conv4"  # the table's Conv4 row: "conv4" ([24]'s, pooled) | "conv4-strided" (the author's)
    # pretraining (paper 4.1)
    epochs: int = 200
    batch_size: int = 512  # images per step
    lr: float = 1e-4  # Adam learning rate
    augment: bool = True  # False is the paper's no-augmentation ablation
    views: int = 1  # augmented views of every image in a batch (the author's code: 3)
    original: bool = False  # the un-augmented image too, in the same batch (the author's code: True)
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0  # weights, shuffling and augmentation
    device: str = "auto"  # "auto" (cuda when there is one) | "cpu" | "cuda" | "cuda:N"
    compile: bool = True  # torch.compile the training step on CUDA (ignored on CPU)
    # a time box: train until this much wall time has passed, then checkpoint (inside an epoch if need
    # be) and stop; the same command resumes (None: all the epochs)
    minutes: float | None = None
    # where to stop: train until this many optimisation steps in all, then checkpoint (inside an epoch if
    # need be) and stop; a larger value resumes the run (None: all the epochs). A compute curve's points.
    steps: int | None = None
    # linear evaluation (paper 4.2)
    probe_epochs: int = 100
    probe_batch_size: int = 128
    probe_lr: float = 1e-3  # Adam's default
    probe_seeds: tuple[int, ...] = (0, 1, 2)
    probe_norm: str = "standard"  # "standard": features standardised with training statistics | "raw"
    eval_batch_size: int = 1024  # images per step when extracting features

    def __post_init__(self) -> None:
        check_dataset_name(self.dataset)
        choices = {"model": MODELS, "tower": TOWERS, "encoding": ENCODINGS, "decoder": DECODERS,
                   "conv4": ("conv4", "conv4-strided"), "probe_norm": PROBE_NORMS}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {valid}")
        # Types first: "3" > 0 would raise a bare TypeError, True would pass as 1, 2.5 as a count.
        for name in ("epochs", "batch_size", "probe_epochs", "probe_batch_size", "eval_batch_size",
                     "seed", "data_seed", "validation", "views"):
            _require(name, getattr(self, name), is_int, "an int")
        for name in ("n_train", "n_test", "steps"):
            _require(name, getattr(self, name), lambda v: v is None or is_int(v), "an int or None")
        for name in ("lr", "probe_lr"):
            _require(name, getattr(self, name), is_real, "a number")
        _require("minutes", self.minutes, lambda v: v is None or is_real(v), "a number or None")
        if self.minutes is not None and not 0 < self.minutes < math.inf:
            raise ValueError(f"minutes must be a positive number of minutes or None, got {self.minutes!r}")
        for name in ("augment", "compile", "original", "normalize"):
            _require(name, getattr(self, name), lambda v: isinstance(v, bool), "True or False")
        _require("aug", self.aug, lambda v: isinstance(v, AugmentConfig), "an AugmentConfig")
        _require("probe_seeds", self.probe_seeds,
                 lambda v: isinstance(v, (tuple, list)) and all(map(is_int, v)), "a tuple of ints")
        positive = ("epochs", "batch_size", "views", "lr", "probe_epochs", "probe_batch_size", "probe_lr",
                    "eval_batch_size")
        for name in positive:
            if not getattr(self, name) > 0:  # also refuses nan
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
            if getattr(self, name) == math.inf:
                raise ValueError(f"{name} must be finite, got inf")
        for name, unit in (("n_train", "images"), ("n_test", "images"), ("steps", "steps")):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive number of {unit} or None, got {value!r}")
        if self.validation < 0:
            raise ValueError(f"validation must be >= 0 images (0: the test split), got {self.validation}")
        if not self.probe_seeds:
            raise ValueError("probe_seeds must name at least one seed")
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {self.device!r}")
        resolve_device(self.device)  # validates the spelling

    def replace(self, **overrides) -> Config:
        """A copy with some fields changed; unknown names are refused with the valid ones listed."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            valid = ", ".join(f.name for f in dataclasses.fields(self))
            raise ValueError(f"unknown config field(s) {sorted(unknown)}; valid fields: {valid}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """The inverse of `to_dict` (also of its JSON round trip: lists become tuples again)."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config field(s) {sorted(unknown)}: written by another "
                             "version of vwe? Start a fresh run with this version")
        d = dict(d)
        d["aug"] = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["aug"].items()})
        d["probe_seeds"] = tuple(d["probe_seeds"])
        return cls(**d)

    def identity(self, of: str) -> dict:
        """The fields that make two runs the same run, with their values:

        "pretrain"    every field but how it runs, the probe, and how far it goes (EXTENT_FIELDS: a
                      run may be extended, by epochs or by time boxes)
        "supervised"  SUPERVISED_FIELDS
        "result"      every field but how it runs (a table row's numbers)
        """
        names = {f.name for f in dataclasses.fields(self)}
        keep = {"pretrain": names - set(RUNTIME_FIELDS) - set(PROBE_FIELDS) - set(EXTENT_FIELDS),
                "supervised": set(SUPERVISED_FIELDS), "result": names - set(RUNTIME_FIELDS)}
        if of not in keep:
            raise ValueError(f"unknown identity {of!r}; choose one of {tuple(keep)}")
        return {k: v for k, v in self.to_dict().items() if k in keep[of]}

    @property
    def model_args(self) -> dict:
        """`vwe.models.build_model`'s arguments: build_model(**cfg.model_args)."""
        return {"model": self.model, "tower": self.tower, "encoding": self.encoding,
                "decoder": self.decoder, "normalize": self.normalize}

    @property
    def views_per_image(self) -> int:
        """Views of each image in a batch: the augmented ones, plus the original when asked (or alone,
        without augmentation; `vwe.augment.batch_views`)."""
        views, original = batch_views(self.views, self.original, self.augment)
        return views + original

    @property
    def pairs_per_step(self) -> int:
        """(context, target) pairs in one optimiser step: images x views x 16 targets."""
        return self.batch_size * self.views_per_image * N_PATCHES

    @property
    def batch_text(self) -> str:
        """The pretraining batch in images (and views) and in pairs."""
        return batch_text(self.batch_size, self.views_per_image)

    def cost_text(self, n_train: int) -> str:
        """What pretraining on `n_train` images costs, printed before it starts."""
        steps = n_train // self.batch_size
        return (f"batch {self.batch_text}: {steps:,} steps an epoch, {steps * self.epochs:,} steps and "
                f"{steps * self.epochs * self.pairs_per_step:,} pairs in {self.epochs} epochs")

    @property
    def run_name(self) -> str:
        """Folder name of a pretraining run, e.g. `context-resnet32-aug`."""
        parts = [self.model, self.tower]
        if self.model == "context" and self.encoding != "shared":
            parts.append(self.encoding)
        parts.append("aug" if self.augment else "noaug")
        return "-".join(parts)


# The author's augmentation (`train.py` of mahadev1995/Self-supervised_Learning): RandomResizedCrop(32,
# scale 0.08-1), RandomRotation((0, 180)), ColorJitter(0.8, 0.8, 0.8, 0.2) applied with p 0.8.
AUTHOR_AUG = AugmentConfig(crop_scale=(0.08, 1.0), rotation=(0.0, 180.0), brightness=0.8, contrast=0.8,
                           saturation=0.8, hue=0.2, jitter_p=0.8)

PROFILES: dict[str, Config] = {
    # CI and nbval: every notebook in seconds on a CPU.
    "smoke": Config(profile="smoke", dataset="shapes", n_train=256, n_test=128, epochs=1,
                    batch_size=64, lr=1e-3, device="cpu", probe_epochs=5, probe_seeds=(0, 1, 2),
                    eval_batch_size=256),
    # A laptop or a 2-core machine: the whole course in minutes (each notebook's time, measured:
    # docs/results/course-cpu.json, the README's course table).
    # lr 1e-3 instead of the paper's 1e-4 because a few epochs are far fewer steps than 200 (the
    # paper's 20 k steps).
    "cpu": Config(profile="cpu", dataset="auto", n_train=4000, n_test=1000, epochs=4,
                  batch_size=128, lr=1e-3, probe_epochs=30, eval_batch_size=256),
    # The paper's text on one GPU (docs/design.md §9 and §12): batches of 512 images = 8 192 pairs.
    "paper": Config(profile="paper", dataset="cifar100"),
    # The paper as its author ran it (docs/design.md, The paper as its author ran it): 8 images x
    # (3 augmented views + the original) x 16 targets = 512 pairs a step, 6 250 steps an epoch; the
    # tower once per neighbour slot on [0, 1] pixels, the decoder with BatchNorm; the probe raw, 10
    # epochs (the table adds it on the tower's 1 024 features).
    "author": Config(profile="author", dataset="cifar100", encoding="slots", decoder="author",
                     normalize=False, conv4="conv4-strided", batch_size=8, views=3, original=True,
                     aug=AUTHOR_AUG,
                     probe_norm="raw", probe_epochs=10),
}


def resolve(cfg: Config, data: Dataset | None = None, **sources) -> tuple[Config, Dataset, torch.device]:
    """What an entry point (`vwe.course.start`, the CLI, `vwe.table.run_table`) does once with a config.

    Returns the config with the dataset that "auto" became, the data (loaded, with `sources` the
    loader's other arguments such as `cifar100_md5` and `skip_bad` of `vwe.data.load_dataset`, or
    `data` cut to the config's sizes; on the CPU, where notebooks show it) and the device to train on
    (this process's GPU under torchrun). Resolving the data it returns again changes nothing.
    Library functions take these values as they are and resolve nothing again.
    On CUDA it switches cuDNN's autotuner on for the process: a run's shapes never change, so its
    search pays off.
    """
    device = distributed.local_device(resolve_device(cfg.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if data is None:
        with distributed.main_first():  # one process downloads and caches, the others read
            data = load_dataset(cfg.dataset, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.data_seed,
                                validation=cfg.validation, **sources)
    else:
        data = data.cut(cfg.n_train, cfg.n_test, cfg.validation)
    return cfg.replace(dataset=data.name), data, device


def check_resolved(cfg: Config, data: Dataset) -> None:
    """ValueError unless `data` is what `resolve(cfg)` made: a trainer's one guard on its input."""
    wrong = []
    if cfg.dataset != data.name:
        wrong.append(f"cfg.dataset is {cfg.dataset!r} but the data is {data.name!r}")
    # a split may be smaller than asked (a small image folder), never larger
    for what, asked, got in (("n_train", cfg.n_train, len(data.train_labels)),
                             ("n_test", cfg.n_test, len(data.test_labels))):
        if asked is not None and got > asked:
            wrong.append(f"cfg.{what} is {asked} but the data has {got} images")
    if wrong:
        raise ValueError("; ".join(wrong) + ": pass the config and data that vwe.config.resolve(cfg, data) "
                         "returns")


def get_config(profile: str = "cpu", **overrides) -> Config:
    """The named profile with `overrides` applied (None values are ignored, for CLI convenience)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {tuple(PROFILES)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return PROFILES[profile].replace(**overrides)
