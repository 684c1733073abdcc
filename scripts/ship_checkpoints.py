"""Make finished pretraining runs, or the compact weights of a compute-curve point, the course's models
in checkpoints/.

    VWE_CIFAR100_MD5=<md5 of a verified copy> python scripts/ship_checkpoints.py RUN_DIR [RUN_DIR ...]
    python scripts/ship_checkpoints.py --weights checkpoints/curve/context checkpoints/curve/patch

A run's newest checkpoint becomes `checkpoints/<dataset>-<run name>.pt` (its model state in fp16,
no optimizer) with an entry in `checkpoints/manifest.json`: the file's sha256, the run's config,
metrics and provenance, and the data it was trained on (loaded again here, so that the archive's md5
is the one this machine verified). `--weights` copies folders that already hold such files and their
manifest (`scripts/scale_curve.py --weights` writes them at every point): the same bytes, checked
against their sha256, and the same entries. `vwe.course.load_shipped` refuses a file whose sha256
differs.
"""

import argparse
import json
import shutil
from pathlib import Path

from vwe.config import Config, resolve
from vwe.course import SHIPPED_DIR, export_shipped, project_dir, shipped_manifest
from vwe.files import file_digest, write_json
from vwe.pretrain import MANIFEST
from vwe.runs import latest_checkpoint


def copy_weights(source: Path, out: Path) -> list[dict]:
    """Every model of `source`'s manifest into `out`: its file copied and checked, its entry set."""
    given = shipped_manifest(source)
    entries = given["models"]
    try:
        manifest = shipped_manifest(out)
    except FileNotFoundError:
        manifest = {"about": given["about"], "models": {}}
    for entry in entries.values():
        if file_digest(source / entry["file"]) != entry["sha256"]:
            raise SystemExit(f"error: {source / entry['file']} is not the file its manifest names "
                             f"(sha256 {entry['sha256']}): nothing copied")
    out.mkdir(parents=True, exist_ok=True)
    for model, entry in entries.items():
        shutil.copyfile(source / entry["file"], out / entry["file"])
        manifest["models"][model] = entry
    write_json(out / MANIFEST, manifest)
    return list(entries.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="pretraining run directories")
    parser.add_argument("--weights", nargs="*", type=Path, default=[],
                        help="folders of compact weights with their manifest.json, copied as they are")
    parser.add_argument("--out", type=Path, default=project_dir() / SHIPPED_DIR)
    a = parser.parse_args()
    if not a.runs and not a.weights:
        parser.error("name run directories or --weights folders to ship")
    for run in a.runs:
        found = latest_checkpoint(run)
        if found is None:
            raise SystemExit(f"error: no checkpoint in {run}")
        cfg = Config.from_dict(found[1]["config"])
        _, data, _ = resolve(cfg)
        entry = export_shipped(run, a.out, data.provenance())
        print(json.dumps({k: entry[k] for k in ("file", "sha256", "data", "from")}))
    for folder in a.weights:
        for entry in copy_weights(folder, a.out):
            print(json.dumps({k: entry[k] for k in ("file", "sha256", "data", "from")}))


if __name__ == "__main__":
    main()
