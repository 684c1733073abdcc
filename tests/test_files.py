"""`vwe.files`: a file written whole or not at all, the one JSON form, and digests against hashlib."""

import hashlib
import json
import os

import pytest

from vwe.files import atomic_write, file_digest, write_json


def test_atomic_write_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert path.read_text() == "old"  # readers still see the old file while the new one is written
        tmp.write_text("new")

    atomic_write(path, write)
    assert path.read_text() == "new"
    assert seen == [tmp_path / f".out.txt.tmp{os.getpid()}"]  # this process's own temp name, beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_removes_the_temp_file(tmp_path, error):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def write(tmp):
        tmp.write_text("half of the ne")
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, write)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_write_json_is_indented_json_with_a_final_newline(tmp_path):
    payload = {"header": {"kind": "curve", "seeds": [0, 1, 2]}, "points": [{"acc": 17.18, "ok": True}]}
    path = tmp_path / "results.json"
    write_json(path, payload)
    text = path.read_text()
    assert json.loads(text) == payload
    assert text == json.dumps(payload, indent=2) + "\n"
    write_json(str(path), [1])  # a str path too, over the old file
    assert path.read_text() == "[\n  1\n]\n"


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_file_digest_equals_hashlib_across_block_boundaries(tmp_path, algorithm):
    blob = bytes(range(256)) * ((3 << 20) // 256) + b"tail"  # 3 MiB and 4 bytes: several 1 MiB blocks
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    assert file_digest(path, algorithm) == hashlib.new(algorithm, blob).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_digest(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
