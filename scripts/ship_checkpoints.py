"""Export finished pretraining runs as the compact weights the course ships in checkpoints/.

    VWE_CIFAR100_MD5=<md5 of a verified copy> python scripts/ship_checkpoints.py RUN_DIR [RUN_DIR ...]

Each run's newest checkpoint becomes `checkpoints/<dataset>-<run name>.pt` (its model state in fp16,
no optimizer) with an entry in `checkpoints/manifest.json`: the file's sha256, the run's config,
metrics and provenance, and the data it was trained on (loaded again here, so that the archive's md5
is the one this machine verified). `vwe.course.load_shipped` refuses a file whose sha256 differs.
"""

import argparse
import json
from pathlib import Path

from vwe.config import Config, resolve
from vwe.course import SHIPPED_DIR, export_shipped, project_dir
from vwe.runs import latest_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="pretraining run directories")
    parser.add_argument("--out", type=Path, default=project_dir() / SHIPPED_DIR)
    a = parser.parse_args()
    for run in a.runs:
        found = latest_checkpoint(run)
        if found is None:
            raise SystemExit(f"error: no checkpoint in {run}")
        cfg = Config.from_dict(found[1]["config"])
        _, data, _ = resolve(cfg)
        entry = export_shipped(run, a.out, data.provenance())
        print(json.dumps({k: entry[k] for k in ("file", "sha256", "data", "from")}))


if __name__ == "__main__":
    main()
