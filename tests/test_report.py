"""`vwe.report`: the results files rendered into README.md and docs/results.md, the committed docs being
exactly what the committed results files render to, and the renderer chosen by a file's kind."""

import json

import pytest

from vwe.course import shipped_manifest
from vwe.report import main, render_readme, render_results_md, shipped_in_words
from vwe.results import KINDS, results_dir


def test_render_readme_replaces_only_between_the_markers():
    text = "intro\n<!-- results:begin -->\nold\n<!-- results:end -->\noutro\n"
    new = {"results": "new"}
    assert render_readme(text, new) == "intro\n<!-- results:begin -->\nnew\n<!-- results:end -->\noutro\n"
    assert render_readme(render_readme(text, new), new) == render_readme(text, new)
    with pytest.raises(ValueError, match="course:begin"):
        render_readme(text, {"course": "new"})


def test_committed_docs_are_what_the_results_files_render(capsys):
    """A figure in README.md or docs/results.md changes only with its results file: re-render and commit
    (`python -m vwe.report`) after measuring."""
    assert main(["--check"]) == 0, capsys.readouterr().err


def test_every_results_file_says_its_kind_and_an_unknown_kind_is_refused(tmp_path):
    """The renderer is chosen by the header's kind, never by which keys a payload happens to have."""
    committed = {}
    for path in sorted(results_dir().glob("*.json")):
        payload = json.loads(path.read_text())
        kind = payload["header"]["kind"]
        assert KINDS[kind] in payload, path.name  # the kind names where its figures are
        committed[path.stem] = payload
    assert {p["header"]["kind"] for p in committed.values()} == set(KINDS)
    table = committed["shipped-cifar100"]
    table["header"]["kind"] = "poster"
    (tmp_path / "odd.json").write_text(json.dumps(table))
    with pytest.raises(ValueError, match="unknown kind 'poster'"):
        render_results_md(tmp_path)


def test_the_shipped_models_in_words_are_their_manifests(tmp_path):
    """The README's and docs/design.md's sentence on the shipped models is read off the manifest: the
    data, and the steps each model trained counted from its own metrics (epochs, then steps into one)."""
    manifest = shipped_manifest()
    context, simple = manifest["models"]["context"], manifest["models"]["patch"]
    for entry in (context, simple):
        entry["config"].update(n_train=45_000, validation=5_000)
        entry["data"]["n_train"] = 45_000
    context["metrics"] = [{"epoch": 1}, {"epoch": 4.5511, "steps": 3_100, "steps_per_epoch": 5_625}]
    simple["metrics"] = [{"epoch": 1}, {"epoch": 2}]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    words = shipped_in_words(tmp_path)
    assert ("the first 45,000 CIFAR-100 training images (the last 5,000 held out as a validation split)"
            in words)
    assert "the context autoencoder 25,600 steps (13.11 M pairs, 4.5511 epochs)" in words
    assert "the simple one 11,250 steps (5.76 M pairs, 2 epochs)" in words
    assert f"at revision `{context['provenance']['git']}`" in words
