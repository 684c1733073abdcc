"""The mutation score of `make mutants` as a results file, printed with its survivors' count.

    python scripts/mutation_score.py --seconds S --out runs/mutants.json   (make mutants runs it)

Reads mutmut's `mutants/mutmut-cicd-stats.json` (after `mutmut export-cicd-stats`) and writes the
score with the command, revision, date and machine; copied to docs/results/mutants.json,
`python -m vwe.report` renders it into docs/results.md.
"""

import argparse
import json
from pathlib import Path

import torch

from vwe.files import write_json
from vwe.results import measured_on

RUN = ("killed", "survived", "no_tests", "timeout", "suspicious", "segfault")  # the mutants that ran


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stats", type=Path, default=Path("mutants/mutmut-cicd-stats.json"))
    p.add_argument("--seconds", type=float, required=True, help="the mutmut run's wall time")
    p.add_argument("--workers", type=int, required=True, help="mutmut's --max-children")
    p.add_argument("--out", type=Path, default=Path("runs/mutants.json"))
    a = p.parse_args()
    stats = json.loads(a.stats.read_text())
    run = sum(stats[k] for k in RUN)
    header = {"kind": "mutation", "title": "Mutation score of the core (`make mutants`)",
              **measured_on(torch.device("cpu"), "make mutants"), "seconds": round(a.seconds),
              "workers": a.workers}
    score = {"killed": stats["killed"], "survived": stats["survived"], "no_tests": stats["no_tests"],
             "run": run, "score": round(100 * stats["killed"] / run, 1)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, {"header": header, "mutation": score})
    print(f"mutation score: {score['killed']} of {run} mutants killed ({score['score']:.1f} %), "
          f"{score['survived']} survived, {score['no_tests']} without a test; {a.out}")


if __name__ == "__main__":
    main()
