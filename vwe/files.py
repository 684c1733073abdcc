"""Files written whole or not at all (`atomic_write`, and `write_json` for every JSON file), and file
digests: the primitives every writer and checker of the package uses (run folders, caches, results,
shipped checkpoints, archives)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)`, fsync, then rename over `path`: readers see the old file or the new one,
    never half of one. A failure (a full disk, say) leaves `path` untouched and removes the temp file.
    The temp name, `.<name>.tmp<pid>`, is this process's own: two processes never share one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def write_json(path: str | Path, payload: object) -> None:
    """`payload` as indented JSON with a final newline, written whole or not at all (`atomic_write`):
    the one form of every JSON file the package writes (results, records, manifests, configs)."""
    text = json.dumps(payload, indent=2) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes ("sha256", or "md5" for the CIFAR archives), read in 1 MiB
    blocks so that a large archive never sits in memory whole."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
