"""Results as data: a table's rows, the paper's claims and when a gap counts, and the files they go to.

A measurement is one JSON file: a header saying what ran (its `kind`, with the command, revision,
date, machine and data), then its figures. `write_results` writes a table's (every row with each
probe seed's figure, then the claims); `make paper`, notebook 05 and the scripts write theirs into
their run folder. The measurements the docs show are such files committed under `docs/results/`,
which `load_results` reads and `vwe.report` renders into the docs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vwe.config import batch_text
from vwe.data import describe
from vwe.data.dataset import project_dir
from vwe.files import atomic_write
from vwe.runs import provenance

# The author's linear evaluation, the source of the paper's numbers: the tower's 16 x 64 = 1 024
# features, raw, 10 probe epochs (docs/design.md, The paper as its author ran it).
AUTHOR_PROBE = "author"
AUTHOR_PROBE_EPOCHS = 10
PAPER_DATASET = "cifar100"  # the paper's numbers are CIFAR-100 top-1; differences only there


@dataclass
class RowResult:
    """One line of a results table: a row's numbers beside the paper's."""

    key: str
    method: str
    backbone: str
    augmentation: str
    epochs: float  # training epochs behind the number (0: random weights; a clock-stopped run: 1.5...)
    mean: float  # top-1 %, mean over probe seeds (supervised: its one run's test accuracy)
    std: float | None  # sample std over probe seeds; None for the one supervised run
    accs: list[float]  # one per probe seed
    knn: float  # kNN top-1 %, same features
    paper: float | None
    difference: float | None  # ours (author's evaluation) - paper; None off CIFAR-100 or not in the paper
    seconds: float  # wall time of the run that produced the number
    skipped: bool  # True: read from a finished run's results file
    run_dir: str
    dim: int = 0  # feature size of the headline probe
    # "<features>/<norm>" -> {"mean", "std", "accs", "train_acc", "final_loss"}: every probe of the row;
    # features "embedding" (the headline's) or "tower" (context rows: the 16 patches' 1024-d)
    probes: dict = dataclasses.field(default_factory=dict)

    def probe(self, features: str, norm: str | None = None) -> dict | None:
        """The probe "<features>/<norm>", or `probe(AUTHOR_PROBE)` for the author's evaluation."""
        return self.probes.get(features if norm is None else f"{features}/{norm}")

    @property
    def label(self) -> str:
        return f"{self.method} ({self.backbone}, {self.augmentation})"


def rows_of(payload: dict) -> list[RowResult]:
    """The rows of a results file (`write_results`' JSON, e.g. `load_results(name)`)."""
    return [RowResult(**r) for r in payload["rows"]]


# ----------------------------------------------------------------------------- when a gap counts

# A gap between two probes counts when it exceeds both bounds: 3 standard errors of the difference of
# the two means over the probe seeds (Welch: sqrt(s1^2 / n1 + s2^2 / n2)), so that the seeds' noise
# cannot explain it, and 3 points, so that another CPU's rounding, which trains another model from the
# same seed, cannot either (tests/claims/test_claims.py measures how far that moves a result).
SIGNIFICANT_SE = 3.0
SIGNIFICANT_POINTS = 3.0


def gap(lower: dict, higher: dict) -> tuple[float, float]:
    """(higher - lower in points, that gap in standard errors of the difference) for two probe
    summaries {"mean", "std", "accs"}; infinite standard errors when neither varies over its seeds."""
    diff = higher["mean"] - lower["mean"]
    se = math.sqrt(lower["std"] ** 2 / len(lower["accs"]) + higher["std"] ** 2 / len(higher["accs"]))
    return diff, (diff / se if se > 0 else math.copysign(math.inf, diff))


def significant(lower: dict, higher: dict) -> bool:
    """Whether `higher` beats `lower` by a gap that counts (SIGNIFICANT_SE and SIGNIFICANT_POINTS)."""
    diff, in_se = gap(lower, higher)
    return in_se > SIGNIFICANT_SE and diff > SIGNIFICANT_POINTS


def verdict(lower: dict, higher: dict) -> str:
    """"yes" when `higher` is significantly ahead, "same direction, within noise" when ahead but not
    significantly, else "no"."""
    if significant(lower, higher):
        return "yes"
    return "same direction, within noise" if higher["mean"] > lower["mean"] else "no"


def verdict_in_words(simple: dict, context: dict) -> str:
    """The context autoencoder against the simple one on one probe (summaries {"mean", "std", "accs"}),
    as a clause: which leads, by how many points and standard errors, and whether the gap counts
    (`verdict`, `significant`). The rendered results (`vwe.report`) and notebook 05 word their
    comparisons with it."""
    diff, in_se = gap(simple, context)
    if diff == 0:
        return "the context autoencoder and the simple one score the same"
    size = f"{abs(diff):.2f} points ({abs(in_se):.1f} standard errors)"
    ahead = verdict(simple, context) != "no"
    counts = significant(simple, context) if ahead else significant(context, simple)
    return (f"the context autoencoder {'leads' if ahead else 'trails'} the simple one by {size}, "
            + ("a gap that counts" if counts else f"short of the {SIGNIFICANT_POINTS:g} points and "
               f"{SIGNIFICANT_SE:g} standard errors a gap needs to count"))


# ----------------------------------------------------------------------------- the paper's claims

# (the claim, the row that should be lower, the row that should be higher)
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("random weights < simple autoencoder", "random-resnet32", "patch-resnet32-aug"),
    ("random weights < context autoencoder", "random-resnet32", "context-resnet32-aug"),
    ("random 16-patch tower < context autoencoder (extra)", "random-resnet32-patches",
     "context-resnet32-aug"),
    ("raw pixels < context autoencoder (extra)", "pixels", "context-resnet32-aug"),
    ("simple autoencoder < context autoencoder", "patch-resnet32-aug", "context-resnet32-aug"),
    ("augmentation helps the context autoencoder", "context-resnet32-noaug", "context-resnet32-aug"),
    ("ResNet-32 beats Conv4 as the tower", "context-conv4-aug", "context-resnet32-aug"),
)


def claims(rows: Sequence[RowResult], probe: str = "embedding/standard") -> list[dict]:
    """Each claim whose two rows are in `rows`, measured with `probe`: the gap (higher - lower, points),
    the gap in standard errors of the difference, and the `verdict`."""
    by_key = {r.key: r for r in rows}
    out = []
    for claim, low, high in CLAIMS:
        if low not in by_key or high not in by_key:
            continue
        lo, hi = by_key[low].probes.get(probe), by_key[high].probes.get(probe)
        if lo is None or hi is None:
            continue
        diff, in_se = gap(lo, hi)
        out.append({"claim": claim, "lower": low, "higher": high, "gap": diff, "gap_in_se": in_se,
                    "holds": verdict(lo, hi)})
    return out


CLAIM_PROBES = {"author's evaluation": AUTHOR_PROBE, "standardised": "embedding/standard",
                "raw": "embedding/raw"}


def claims_markdown(rows: Sequence[RowResult]) -> list[str]:
    """The claims as Markdown table lines, each with every probe of CLAIM_PROBES the rows have."""
    found = {name: {c["claim"]: c for c in claims(rows, probe)} for name, probe in CLAIM_PROBES.items()}
    found = {name: by_claim for name, by_claim in found.items() if by_claim}
    if not found:
        return []
    names = list(found)
    lines = ["| Claim | " + " | ".join(f"Gap, {n} (points, se) | Holds ({n})?" for n in names) + " |",
             "|---|" + "---:|---|" * len(names)]
    for claim, *_ in CLAIMS:
        if not any(claim in by_claim for by_claim in found.values()):
            continue
        cells = []
        for n in names:
            c = found[n].get(claim)
            cells += ["—", "—"] if c is None else [f"{c['gap']:+.2f} ({c['gap_in_se']:.1f})", c["holds"]]
        lines.append(f"| {claim} | " + " | ".join(cells) + " |")
    return lines


# ----------------------------------------------------------------------------- one results file


CSV_COLUMNS = ("key", "method", "backbone", "augmentation", "epochs", "dim", "mean", "std", "accs",
               "author_mean", "author_std", "raw_mean", "raw_std", "tower_mean", "tower_std",
               "tower_raw_mean", "tower_raw_std", "knn",
               "paper", "difference", "seconds")


def num(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def probe_cell(probe: dict | None) -> str:
    """A probe's 'mean ± std' for a table cell, '—' where the row has no such probe."""
    return "—" if probe is None else f"{probe['mean']:.2f} ± {probe['std']:.2f}"


def _csv_row(r: RowResult) -> dict:
    d = dataclasses.asdict(r)
    d["accs"] = " ".join(f"{a:.2f}" for a in r.accs)
    for column, (features, norm) in {"author": (AUTHOR_PROBE, None), "raw": ("embedding", "raw"),
                                     "tower": ("tower", "standard"), "tower_raw": ("tower", "raw")}.items():
        probe = r.probe(features, norm) or {}
        d[f"{column}_mean"], d[f"{column}_std"] = probe.get("mean"), probe.get("std")
    return {k: d[k] for k in CSV_COLUMNS}


def header_line(h: dict) -> str:
    """What a results file's numbers came from, in one Markdown paragraph."""
    line = (f"data **{describe(h)}** ({h['classes']} classes, sha256 `{h['data_sha256'][:12]}`) · "
            f"profile `{h['profile']}` · device {h['device']} · {h['epochs']} pretraining epochs "
            f"(batch {batch_text(h['batch_size'], h.get('views_per_image', 1))}, lr {h['lr']}) · "
            f"linear probe {h['probe_epochs']} epochs, seeds {', '.join(map(str, h['probe_seeds']))} · "
            f"torch {h['torch']} · python {h['python']} · revision `{h['git']}` · {h['time']}")
    if h.get("machine"):
        line += f" · machine: {h['machine']}"
    if h.get("command"):
        line += f" · command: `{h['command']}`"
    return line


def results_markdown(header: dict, rows: Sequence[RowResult], title: str | None = None) -> str:
    """The table as Markdown: a header line saying what ran, the rows, how to read them, the claims."""
    h = header
    split = "validation (held-out training)" if h.get("evaluated_on") == "validation" else "test"
    title = title or f"Table 1, reproduced: linear evaluation on {h['dataset']}"
    lines = [
        f"# {title}",
        "",
        *([h["what"], ""] if h.get("what") else []),
        header_line(h),
        "",
        "| Method | Backbone | Augmentation | Epochs | Dim | Ours, top-1 % | Author's evaluation | "
        "Raw-feature probe | Tower 16x64, std. | Tower 16x64, raw | kNN % | Paper (CIFAR-100) | Difference |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ours = num(r.mean) + ("" if r.std is None else f" ± {r.std:.2f}")
        diff = "—" if r.difference is None else f"{r.difference:+.2f}"
        lines.append(f"| {r.method} | {r.backbone} | {r.augmentation} | {r.epochs} | {r.dim} | {ours} | "
                     f"{probe_cell(r.probe(AUTHOR_PROBE))} | "
                     f"{probe_cell(r.probe('embedding', 'raw'))} | "
                     f"{probe_cell(r.probe('tower', 'standard'))} | "
                     f"{probe_cell(r.probe('tower', 'raw'))} | {num(r.knn)} | {num(r.paper)} | {diff} |")
    norm = h.get("probe_norm", "standard")
    lines += [
        "",
        f"Ours: linear-probe {split} accuracy on {'standardised' if norm == 'standard' else 'raw'} "
        "features (each dimension scaled with the training features' mean and std), mean ± sample "
        "std over the probe seeds (the pretrained model is one run; the seeds vary the probe only). "
        f"Author's evaluation: what the paper's numbers are, the tower on the 16 patches (1024-d; "
        f"a supervised or random-image row: its own features), raw, {AUTHOR_PROBE_EPOCHS} probe "
        "epochs; the Difference column compares it with the paper. "
        "Raw-feature probe: the same probe as ours on the features as they are, the paper's text. Tower "
        "16x64: a context row's tower on the 16 patches themselves (1024-d) beside its 8192-d "
        "context embedding. Supervised: test accuracy of its own head, one run, SGD recipe of [24] "
        "(its probes and kNN use its 64-d tower features). kNN: k = 20, cosine, temperature 0.07, on "
        "the headline features. Rows marked (extra) are not in the paper. No setting was chosen on "
        "the test split.",
    ]
    claim_lines = claims_markdown(rows)
    if claim_lines:
        lines += ["", f"The paper's claims on these rows: the gap in points and in standard errors of the "
                  f"difference (se); 'yes' needs more than {SIGNIFICANT_SE:g} se and {SIGNIFICANT_POINTS:g} "
                  "points.", "", *claim_lines]
    if h["dataset"] != PAPER_DATASET:
        lines += ["", f"The paper's numbers are CIFAR-100 accuracies, shown for reference: on "
                  f"{h['dataset']} no difference is computed."]
    return "\n".join(lines) + "\n"


def results_json(header: dict, rows: Sequence[RowResult]) -> str:
    """A results file's text: the header, every row with each probe seed's figure, the claims."""
    if not rows:
        raise ValueError("no row has a result to write; run at least one row")
    payload = {"header": {"kind": "table", **header}, "rows": [dataclasses.asdict(r) for r in rows],
               "claims": {name: claims(rows, probe) for name, probe in CLAIM_PROBES.items()}}
    return json.dumps(payload, indent=2) + "\n"


ROW_FILE = "linear_eval.json"  # one row's evaluation, in its run folder (a table's row, `vwe linear-eval`)


def results_files(out_dir: str | Path) -> dict[str, Path]:
    """The files of a results table in `out_dir`: "json" | "csv" | "md" | "png" -> results.<ext>."""
    return {ext: Path(out_dir) / f"results.{ext}" for ext in ("json", "csv", "md", "png")}


def write_results(header: dict, rows: Sequence[RowResult], out_dir: str | Path) -> dict[str, Path]:
    """The `results_files` in `out_dir`: the JSON (`results_json`), a CSV, the Markdown and a bar
    chart; returns their paths."""
    text = results_json(header, rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = results_files(out_dir)
    atomic_write(files["json"], lambda tmp: tmp.write_text(text))

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            w.writeheader()
            w.writerows(_csv_row(r) for r in rows)

    atomic_write(files["csv"], write_csv)
    md = results_markdown(header, rows)
    atomic_write(files["md"], lambda tmp: tmp.write_text(md))

    import matplotlib.pyplot as plt

    from vwe.plots import results_bar_chart, save

    fig = results_bar_chart(
        [{"method": r.label, "ours_mean": r.mean, "ours_std": r.std, "paper": r.paper} for r in rows],
        title=f"ours on {header['dataset']} ({header['profile']}) vs the paper on CIFAR-100",
    )
    save(fig, files["png"])
    plt.close(fig)
    return files


# ----------------------------------------------------------------------------- what ran, where


def machine(device_name: str = "cpu") -> str:
    """This machine in words: its CPU model and core count, and the GPU when one ran the work."""
    cpu = platform.machine() or "unknown architecture"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    text = f"{os.cpu_count()}-core {cpu}"
    return text if device_name == "cpu" else f"{device_name}, host {text}"


def command() -> str:
    """The command line that started this process, as a shell would take it back."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    argv[0] = Path(argv[0]).name  # the interpreter's name, not this machine's path to it
    return shlex.join(argv)


def measured_on(device: torch.device, command_line: str | None = None) -> dict:
    """What every results file records of where and when it was measured: the device and machine, the
    revision, torch and python, the time, and the command (default: this process's)."""
    prov = provenance(device)
    return {"device": prov["device"], "machine": machine(prov["device"]), "git": prov["git"],
            "torch": prov["torch"], "python": platform.python_version(), "time": prov["time"],
            "command": command_line or command()}


# ----------------------------------------------------------------------------- the committed files


def results_dir() -> Path:
    """`docs/results/` of the checkout: where the committed results files live."""
    return project_dir() / "docs" / "results"


# What a results file holds, named by its header's "kind": the figures' key beside the header
KINDS = {"table": "rows", "curve": "points", "course": "notebooks", "mutation": "mutation"}


def load_results(name: str, folder: Path | None = None) -> dict:
    """The committed results file `docs/results/<name>.json`: its "header" (with its `kind`, one of
    KINDS) and its figures (a table's "rows" and "claims", a curve's "points", ...)."""
    folder = folder or results_dir()
    path = folder / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.json"))
        raise FileNotFoundError(f"no results file {path}; the committed ones are {known}")
    return json.loads(path.read_text())
