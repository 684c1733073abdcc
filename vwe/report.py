"""The docs rendered from the committed results files (`docs/results/*.json`, `vwe.results`):
docs/results.md, every file a section, and the README's blocks between their markers.

    python -m vwe.report            # renders docs/results.md and the README's blocks
    python -m vwe.report --check    # fails when either differs from what the files render to

so a figure in the docs changes only by measuring again or rendering again. Each file's header says
its kind (`vwe.results.KINDS`), which picks its renderer here.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from vwe import curve
from vwe.config import Config
from vwe.course import shipped_manifest, shipped_steps
from vwe.data import describe
from vwe.data.cifar import CIFAR100
from vwe.data.dataset import project_dir
from vwe.engine import epochs_reached
from vwe.files import atomic_write
from vwe.models import MODEL_LABELS
from vwe.results import (
    AUTHOR_PROBE,
    SIGNIFICANT_POINTS,
    SIGNIFICANT_SE,
    load_results,
    num,
    probe_cell,
    results_dir,
    results_markdown,
    rows_of,
    significant,
    verdict,
    verdict_in_words,
)
from vwe.table import MODEL_ROWS, PAPER_BY_MODEL

PROBE_NAMES = {"author": "author's evaluation", "standard": "standardised"}


def _leading_cells(first: dict, second: dict) -> list[str]:
    """Both probes of two points, each cell bold where it is significantly ahead of the other's."""
    cells = []
    for probe in curve.PROBES:
        a, b = first[probe], second[probe]
        for mine, other in ((a, b), (b, a)):
            cells.append(f"**{probe_cell(mine)}**" if significant(other, mine) else probe_cell(mine))
    return cells


def _curve_points(points: list[dict]) -> list[str]:
    """Every step count at which both models were probed with the shared encoding: both probes each."""
    models = ("context", "patch")
    lines = ["| recipe | pretrained / probe images | epochs | steps | pairs | " + " | ".join(
                 f"{MODEL_LABELS[m]}, {PROBE_NAMES[p]}" for p in curve.PROBES for m in models) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * (len(models) * len(curve.PROBES))]
    by = {(p["profile"], p["n_train"], p["probe_train"], p["steps"], p["model"]): p for p in points
          if p.get("encoding", "shared") == "shared"}
    for profile, n_train, probe_train, steps in sorted({k[:4] for k in by}):
        pair = [by.get((profile, n_train, probe_train, steps, m)) for m in models]
        if None not in pair:
            lines.append(f"| `{profile}` | {n_train:,} / {probe_train:,} | {pair[0]['epoch']:.3g} | "
                         f"{steps:,} | {pair[0]['pairs']:,} | " + " | ".join(_leading_cells(*pair)) + " |")
    return lines


def _encoding_pairs(points: list[dict]) -> list[tuple[dict, dict]]:
    """The context autoencoder's (shared, slots) points of the author's recipe at every step count both
    encodings reached, by steps."""
    by = {(p["encoding"], p["steps"]): p for p in points
          if p["model"] == "context" and p["profile"] == "author"}
    return [(by["shared", s], by["slots", s]) for s in sorted(s for (e, s) in by if e == "slots")
            if ("shared", s) in by]


def _encodings(points: list[dict]) -> list[str]:
    """The context autoencoder's encodings side by side at the steps where both were probed."""
    pairs = _encoding_pairs(points)
    if not pairs:
        return []
    lines = ["", "The context autoencoder's two encodings on the same data, seeds and steps (bold: ahead by "
             "the rule above); pretraining seconds are those of each run up to the point, the runs sharing "
             "the machine:", "",
             "| steps | pairs | " + " | ".join(f"{e}, {PROBE_NAMES[p]}" for p in curve.PROBES
                                            for e in ("shared", "slots"))
             + " | pretraining s, shared / slots |",
             "|---:|---:|" + "---:|" * (2 * len(curve.PROBES)) + "---:|"]
    for shared, slots in pairs:
        cells = " | ".join(_leading_cells(shared, slots))
        lines.append(f"| {shared['steps']:,} | {shared['pairs']:,} | {cells} | {shared['pretrain_s']:,.0f} / "
                     f"{slots['pretrain_s']:,.0f} |")
    return lines


def encoding_in_words(points: list[dict]) -> str:
    """Which encoding the long runs use, decided from the curve's points by accuracy per CPU-hour: at the
    most steps both encodings reached, the slots encoding's lead on the author's evaluation against what
    the shared encoding gains in the same CPU time (its slope per doubling times the doublings of pairs
    the slots encoding's extra time buys). "" when the two were never probed at the same steps.

    The time is the pretraining time to the first steps both reached: each run trains to its first
    point from step 0, while a later point's time adds up several time-boxed calls, which the points
    of the committed curve measured before `vwe.engine.fit` kept every call's seconds count only in part."""
    pairs = _encoding_pairs(points)
    shared_runs = [r for r in curve.trended(curve.series(points)) if r.model == "context"]
    if not pairs or not shared_runs:
        return ""
    timed = pairs[0]
    shared, slots = pairs[-1]
    cost = timed[1]["pretrain_s"] / timed[0]["pretrain_s"]
    lead = slots["author"]["mean"] - shared["author"]["mean"]
    slope = curve.trend(shared_runs[0], "author").slope
    bought = slope * math.log2(cost)  # what the shared encoding gains in the slots encoding's time
    choice = "slots" if lead > bought else "shared"
    counts = verdict(shared["author"], slots["author"])
    return (f"At {shared['steps']:,} steps ({shared['pairs']:,} pairs) on the validation split, the "
            f"context autoencoder's author's evaluation reads {probe_cell(shared['author'])} with the shared "
            f"encoding and {probe_cell(slots['author'])} with the author's slots encoding (slots ahead: "
            f"{counts}; "
            f"standardised probe {probe_cell(shared['standard'])} against {probe_cell(slots['standard'])}); "
            f"the slots run took {cost:.1f} times the shared run's pretraining time to reach "
            f"{timed[0]['steps']:,} steps on this CPU (the two sharing the machine). In that time the "
            f"shared encoding trains {math.log2(cost):.1f} more "
            f"doublings of pairs, worth {bought:+.2f} points at its slope of {slope:+.2f} points per "
            f"doubling, against the slots encoding's {lead:+.2f}: per CPU-hour the **{choice} encoding** "
            "learns more, and the long runs and the shipped models use it.")


def _trends(points: list[dict]) -> list[str]:
    """The longest runs' slopes per doubling and where those lines reach at the author's compute."""
    runs = curve.trended(curve.series(points))
    if not runs:
        return []
    lines = ["", "Each run on every training image: its slope over its last doublings of compute (at most "
             f"{curve.SLOPE_DOUBLINGS}; least squares on log2 of the pairs), and the line through its last "
             f"point carried to the author's {curve.AUTHOR_PAIRS:,} pairs: an **extrapolation**, not a "
             "measurement.", "",
             "| model | probe | last point (pairs) | points per doubling | over doublings | doublings to go "
             "| extrapolated | paper (test split) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in runs:
        for probe in curve.PROBES:
            t = curve.trend(s, probe)
            paper = num(PAPER_BY_MODEL.get(s.model)) if probe == "author" else "—"
            lines.append(f"| {MODEL_LABELS[s.model]} | {PROBE_NAMES[probe]} | {t.last_mean:.2f} "
                         f"({t.last_pairs:,}) | {t.slope:+.2f} | {t.doublings_fitted:.0f} | "
                         f"{t.doublings_to_author:.1f} | "
                         f"{t.at_author:.2f} | {paper} |")
    return lines


def _curve_markdown(payload: dict) -> list[str]:
    """A compute curve: what ran, the points of both models by step count, the encodings side by side
    where both ran, and the longest runs' trends (`vwe.curve`)."""
    h, points = payload["header"], payload["points"]
    seeds = h["probe_seeds"]
    seeds = seeds if isinstance(seeds, str) else ", ".join(map(str, seeds))
    return [f"# {h['title']}", "", h["what"], "", f"Measured on {h['machine']}, data {describe(h['data'])}, "
            f"revision `{h['git']}`, {h['time']}. Commands:", "",
            *(f"    {c}" for c in h["commands"]), "", *_curve_points(points), "",
            f"Validation top-1 %, mean ± sample std over probe seeds {seeds} (each model is one "
            f"pretraining run). Bold: the model ahead by more than {SIGNIFICANT_SE:g} standard errors and "
            f"{SIGNIFICANT_POINTS:g} points.", *_encodings(points), *_trends(points)]


def _course_lines(payload: dict) -> list[str]:
    """A course run's notebook times: what ran where, then one table row of seconds."""
    h, notebooks = payload["header"], payload["notebooks"]
    data, total = h["data"], sum(n["seconds"] for n in notebooks)
    return [
        f"Each notebook's wall time on the `{h['profile']}` profile, {data['dataset']} "
        f"({data['n_train']:,} / {data['n_test']:,} images), {h['machine']}, revision `{h['git']}`, "
        f"{h['time'][:10]}, `{h['command']}`:", "",
        "| " + " | ".join(n["notebook"][:2] for n in notebooks) + " | all |",
        "|" + "---:|" * (len(notebooks) + 1),
        "| " + " | ".join(f"{n['seconds']:.0f} s" for n in notebooks) + f" | {total / 60:.1f} min |",
    ]


def _mutation_lines(payload: dict) -> list[str]:
    """`make mutants`' score: the mutants killed of those run, what ran where."""
    h, m = payload["header"], payload["mutation"]
    return [f"{m['killed']:,} of {m['run']:,} mutants killed ({m['score']:.1f} %), {m['survived']} survived, "
            f"{m['no_tests']} without a test; `{h['command']}` ({h['workers']} mutmut workers) in "
            f"{h['seconds']} s on {h['machine']}, revision `{h['git']}`, {h['time'][:10]}. Every survivor "
            "and why it cannot change a result: [testing.md](testing.md#mutation-score)."]


def _table_section(payload: dict) -> list[str]:
    h = payload["header"]
    return results_markdown(h, rows_of(payload), h.get("title")).splitlines()


# a results file's kind -> its section of docs/results.md, as lines (the first its title)
RENDERERS = {
    "table": _table_section,
    "curve": _curve_markdown,
    "course": lambda payload: [f"# {payload['header']['title']}", "", *_course_lines(payload)],
    "mutation": lambda payload: [f"# {payload['header']['title']}", "", *_mutation_lines(payload)],
}


def render_results_md(folder: Path | None = None) -> str:
    """docs/results.md: every committed results file, a table each, newest measurement first."""
    folder = folder or results_dir()
    payloads = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    if not payloads:
        raise FileNotFoundError(f"no results file in {folder}")
    order = sorted(payloads, key=lambda n: payloads[n]["header"]["time"], reverse=True)
    out = ["# Results", "",
           "Every figure here is rendered from a results file in [`results/`](results/) (`python -m "
           "vwe.report` renders this page; a test checks it is current). Each section says what was "
           "measured, on which data and machine, at which revision and with which command.", ""]
    for name in order:
        payload = payloads[name]
        kind = payload["header"]["kind"]
        if kind not in RENDERERS:
            raise ValueError(f"{name}.json is a results file of unknown kind {kind!r}: {sorted(RENDERERS)}")
        body = RENDERERS[kind](payload)
        # one level down: each file is a section of this page
        out += ["#" + body[0], f"*File: [`results/{name}.json`](results/{name}.json)*", *body[1:], ""]
    return "\n".join(out).rstrip("\n") + "\n"


CURVE_FILE = "compute-curve"  # the validation curve of the author's recipe towards the author's compute
GLANCE_FILE = "shipped-cifar100"  # the README's results: the models the course ships, every test image


def curve_in_words(points: list[dict]) -> str:
    """What the longest runs of a compute curve say about the paper's figures, in one computed sentence:
    each model's slope on the author's evaluation and where it would reach at the author's compute,
    said to be an extrapolation."""
    runs = {s.model: s for s in curve.trended(curve.series(points))}
    if set(runs) != {"context", "patch"}:
        return ""
    trends = {m: curve.trend(s, "author") for m, s in runs.items()}
    reach = max(t.last_pairs for t in trends.values())
    parts = [f"the {MODEL_LABELS[m]} {t.slope:+.2f} points per doubling over its last "
             f"{t.doublings_fitted:.0f} doubling{'s' if round(t.doublings_fitted) != 1 else ''} (to "
             f"{t.at_author:.1f} %, the paper {num(PAPER_BY_MODEL[m])})" for m, t in sorted(trends.items())]
    return (f"On the validation curve up to {reach / 1e6:.1f} M pairs (CIFAR-100, CPU; "
            f"[results.md](docs/results.md)), the author's evaluation moves by {' and '.join(parts)} when "
            f"carried to the author's {curve.AUTHOR_PAIRS / 1e6:.0f} M pairs: an extrapolation over "
            f"{min(t.doublings_to_author for t in trends.values()):.1f} more doublings, not a measurement.")


def render_glance(folder: Path | None = None) -> str:
    """The README's "results at a glance": the rows of GLANCE_FILE that the shipped models fill
    (`vwe.table.MODEL_ROWS`) and the verdict, computed (`vwe.results.verdict_in_words`)."""
    payload = load_results(GLANCE_FILE, folder)
    h, by_key = payload["header"], {r.key: r for r in rows_of(payload)}
    lines = [f"The shipped autoencoders (`checkpoints/`) and the untrained baselines, probed on "
             f"{h['n_train']:,} {h['dataset']} training images and scored on {h['n_test']:,} test images "
             f"({h['machine']}; revision `{h['git']}`, {h['time'][:10]}):", "",
             "| row | dim | author's evaluation (tower, raw, 10 ep) | standardised probe | paper |",
             "|---|---:|---:|---:|---:|"]
    for key in MODEL_ROWS:
        r = by_key[key]
        lines.append(f"| {r.method} | {r.dim} | {probe_cell(r.probe(AUTHOR_PROBE))} | "
                     f"{probe_cell(r.probe('embedding', 'standard'))} | {num(r.paper)} |")
    simple, context = by_key["patch-resnet32-aug"], by_key["context-resnet32-aug"]
    first, second = (f"on the {name} " + verdict_in_words(simple.probe(*probe), context.probe(*probe))
                     for name, probe in (("author's evaluation", (AUTHOR_PROBE,)),
                                         ("standardised probe", ("embedding", "standard"))))
    lines += ["", f"Top-1 %, mean ± std over probe seeds. At this scale, {first}; {second}."]
    if (folder or results_dir()).joinpath(f"{CURVE_FILE}.json").is_file():
        lines[-1] += " " + curve_in_words(load_results(CURVE_FILE, folder)["points"])
    return "\n".join(lines)


COURSE_FILE = "course-cpu"  # the course's notebook times on the `cpu` profile (`make run-all`)


def render_encoding(folder: Path | None = None) -> str:
    """docs/design.md's word on the encoding the long runs use, from CURVE_FILE (or that it is unmeasured)."""
    path = (folder or results_dir()) / f"{CURVE_FILE}.json"
    words = encoding_in_words(load_results(CURVE_FILE, folder)["points"]) if path.is_file() else ""
    return words or ("The two encodings have not yet been probed at the same steps here "
                     "(`scripts/scale_curve.py --encoding slots`); until they are, the long runs use the "
                     "shared encoding for its eight times smaller tower work.")


def render_course(folder: Path | None = None) -> str:
    """The README's course timings: each notebook's wall time from COURSE_FILE."""
    return "\n".join(_course_lines(load_results(COURSE_FILE, folder)))


DEVICE_WORDS = {"cpu": "a CPU", "cuda": "a GPU"}


def shipped_in_words(folder: Path | None = None) -> str:
    """The shipped autoencoders as `checkpoints/manifest.json` (or `folder`'s) describes them: the data,
    the recipe, and the steps and pairs each one trained, from its metrics (`vwe.engine.steps_done`)."""
    models = shipped_manifest(folder)["models"]
    device = models["context"]["provenance"]["device"]
    cfg, data = Config.from_dict(models["context"]["config"]), models["context"]["data"]
    held_out = f" (the last {cfg.validation:,} held out as a validation split)" if cfg.validation else ""
    dataset = CIFAR100.title if data["dataset"] == CIFAR100.name else data["dataset"]

    def trained(model: str) -> str:
        entry = models[model]
        steps = shipped_steps(entry)
        return (f"{steps:,} steps ({steps * cfg.pairs_per_step / 1e6:.2f} M pairs, "
                f"{epochs_reached(entry['metrics']):g} epochs)")

    return (f"the context and the simple autoencoder, ResNet-32, pretrained on the first {data['n_train']:,} "
            f"{dataset} training images{held_out} with the `{cfg.profile}` recipe **with the {cfg.encoding} "
            f"encoding**: "
            f"batch {cfg.batch_text}, Adam lr {cfg.lr:g}; the context autoencoder {trained('context')}, "
            f"the simple one {trained('patch')}; trained on {DEVICE_WORDS.get(device, device)} at revision "
            f"`{models['context']['provenance']['git']}`")


def render_readme(text: str, blocks: dict[str, str]) -> str:
    """`text` (the README) with each of `blocks` ({"results": ...}) between its markers
    `<!-- NAME:begin -->` and `<!-- NAME:end -->`."""
    for name, block in blocks.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        start, stop = text.find(begin), text.find(end)
        if start < 0 or stop < start:
            raise ValueError(f"README.md needs the lines {begin} and {end}, in that order")
        text = text[: start + len(begin)] + "\n" + block + "\n" + text[stop:]
    return text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if docs/results.md, README.md or docs/design.md is not what "
                   "renders now")
    args = p.parse_args(argv)
    root = project_dir()
    readme, design = root / "README.md", root / "docs" / "design.md"
    shipped = shipped_in_words()
    targets = {root / "docs" / "results.md": render_results_md(),
               readme: render_readme(readme.read_text(), {
                   "results": render_glance(), "course": render_course(),
                   "shipped": f"On CIFAR-100, notebooks 05–07 study the two autoencoders **shipped in "
                              f"`checkpoints/`**: {shipped}."}),
               design: render_readme(design.read_text(), {
                   "encoding": render_encoding(),
                   "shipped": f"`checkpoints/` holds the two autoencoders of the course: {shipped}."})}
    stale = [path for path, text in targets.items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(root)} differs from what docs/results/ renders: run "
                  "`python -m vwe.report` and commit the result", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        atomic_write(path, lambda tmp, text=targets[path]: tmp.write_text(text))
        print(f"rendered {path.relative_to(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
