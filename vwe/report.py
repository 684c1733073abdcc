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
import sys
from collections.abc import Sequence
from pathlib import Path

from vwe.data import describe
from vwe.data.dataset import project_dir
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
    verdict_in_words,
)
from vwe.table import MODEL_ROWS


def _curve_markdown(payload: dict) -> list[str]:
    """A scale curve's points as a table: per recipe and pretraining epoch, both models, both probes;
    bold marks the model that is significantly ahead (`significant`)."""
    h, points = payload["header"], payload["points"]
    models, probes = ("context", "patch"), ("author", "standard")
    probe_names = {"author": "author's eval", "standard": "standardised"}
    lines = ["| recipe | epoch | steps | pairs | " + " | ".join(
                 f"{MODEL_LABELS[m]}, {probe_names[p]}" for p in probes for m in models) + " |",
             "|---|---:|---:|---:|" + "---:|" * (len(models) * len(probes))]
    by = {(p["profile"], p["epoch"], p["model"]): p for p in points}
    for profile, epoch in sorted({(p["profile"], p["epoch"]) for p in points}):
        pair = [by.get((profile, epoch, m)) for m in models]
        if None in pair:
            continue
        cells = []
        for probe in probes:
            a, b = (p[probe] for p in pair)
            for mine, other in ((a, b), (b, a)):
                cell = probe_cell(mine)
                cells.append(f"**{cell}**" if significant(other, mine) else cell)
        lines.append(f"| `{profile}` | {epoch} | {pair[0]['steps']:,} | {pair[0]['pairs']:,} | "
                     + " | ".join(cells) + " |")
    return [f"# {h['title']}", "", h["what"], "", f"Measured on {h['machine']}, data {describe(h['data'])}, "
            f"revision `{h['git']}`, {h['time']}. Commands:", "",
            *(f"    {c}" for c in h["commands"]), "", *lines, "",
            f"Validation top-1 %, mean ± sample std over probe seeds {', '.join(map(str, h['probe_seeds']))} "
            f"(each model is one pretraining run). Bold: the model ahead by more than {SIGNIFICANT_SE:g} "
            f"standard errors and {SIGNIFICANT_POINTS:g} points."]


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


GLANCE_FILE = "shipped-cifar100"  # the README's results: the models the course ships, every test image


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
    lines += ["", f"Top-1 %, mean ± std over probe seeds. At this scale, {first}; {second}. The paper's gap "
              f"({num(context.paper)} against {num(simple.paper)}) comes from far longer "
              "pretraining: the author's checkpoint of epoch 120, 6 250 steps of 512 pairs an epoch on "
              "50 000 images."]
    return "\n".join(lines)


COURSE_FILE = "course-cpu"  # the course's notebook times on the `cpu` profile (`make run-all`)


def render_course(folder: Path | None = None) -> str:
    """The README's course timings: each notebook's wall time from COURSE_FILE."""
    return "\n".join(_course_lines(load_results(COURSE_FILE, folder)))


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
                   help="write nothing; exit 1 if docs/results.md or README.md is not what renders now")
    args = p.parse_args(argv)
    root = project_dir()
    readme = root / "README.md"
    targets = {root / "docs" / "results.md": render_results_md(),
               readme: render_readme(readme.read_text(), {"results": render_glance(),
                                                          "course": render_course()})}
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
