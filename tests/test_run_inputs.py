"""A run's inputs and claims on disk (`recognize.run_inputs`): the same answers as in memory, and a
driver whose memory does not grow with the number of inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from recognize import plugins
from recognize.errors import InputError
from recognize.images import expand_inputs
from recognize.run_inputs import RunInputs
from recognize.runner import check_claims


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path, format="PNG")
    return path


@pytest.fixture
def tricky_inputs(tmp_path):
    """Inputs whose names collide in every way `expand_inputs` resolves: one file given twice, one
    name from two folders, a renamed file meeting a file that has that name itself, URLs, a list
    file, a manifest with chosen names, a nested folder whose order differs from a walk's."""
    a, b = tmp_path / "a", tmp_path / "b"
    for path in ["x.png", "x-2.png", "sub/y.png", "sub.png", "sub/deeper/z.jpg", "é%.png", "README.txt"]:
        image(a / path) if path.endswith(("png", "jpg")) else (a / path).write_text("no image")
    image(b / "x.png")
    image(b / "noext")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n{b / 'x.png'}\nb/x.png\nhttp://example.com/p/x.png?s=1\n\n")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(row) for row in [
        {"path": "a/x.png"}, {"path": str(b / "noext"), "name": "x.png"}, {"url": "http://example.com/q/x.png"},
        {"path": "a", "name": "ignored-for-folders"}]) + "\n")
    return [a, str(b / "*.png"), b / "x.png", listing, manifest, "http://example.com/p/x.png?s=1", a / "x.png"]


def test_the_table_holds_exactly_what_expand_inputs_returns(tricky_inputs, tmp_path):
    expected = expand_inputs(tricky_inputs, exclude=tmp_path / "out")
    assert len({name for _, name in expected}) == len(expected) == 10, expected
    with RunInputs.expand(tricky_inputs, exclude=tmp_path / "out") as table:
        assert list(table) == expected and len(table) == len(expected)
        assert list(table) == expected  # again: iteration reads the table, it is not used up
        assert [(f.source, f.name) for f in table.frames()] == [(str(p), n) for p, n in expected]
        path, name = expected[3]
        assert table.source_of(name) == path
        assert table.mark_todo(i % 3 == 0 for i in range(len(table))) == len(expected[::3])
        assert list(table.todo()) == expected[::3]
        entries = table.entries("finished", ((Path("/o") / n, str(p), n, i) for i, (p, n) in enumerate(expected)))
        assert len(entries) == len(expected) and entries[2] == ("/o/" + expected[2][1], str(expected[2][0]),
                                                                expected[2][1], 2)
        assert list(entries[3:6]) == [tuple(e) for e in list(entries)[3:6]] and entries[-1][3] == len(expected) - 1
        assert len(entries[5:2]) == 0 and list(entries[1:][1:3]) == list(entries)[2:4]
        scratch = table.path
        assert scratch.exists()
    assert not scratch.exists() and not scratch.parent.exists()


def test_the_table_refuses_what_expand_inputs_refuses(tmp_path):
    image(tmp_path / "out" / "frames" / "old.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("# nothing\n")
    for bad in [[tmp_path / "nope"], [tmp_path / "empty"], [tmp_path / "empty.txt"], [tmp_path / "out"]]:
        with pytest.raises(InputError) as in_memory:
            expand_inputs(bad, exclude=tmp_path / "out")
        with pytest.raises(InputError) as on_disk:
            RunInputs.expand(bad, exclude=tmp_path / "out")
        assert str(on_disk.value) == str(in_memory.value)


@pytest.mark.parametrize("layout", [["x.jpg", "x.png"], ["a/x.jpg", "a/x.png", "b.jpg"]])
def test_claims_on_disk_refuse_the_same_runs_with_the_same_message(tmp_path, layout):
    folder = tmp_path / "in"
    for path in layout:
        image(folder / path)
    out = tmp_path / "out"
    outputs = [plugins.get_stage("yolo")(), plugins.get_stage("json")()]
    with pytest.raises(InputError) as in_memory:
        check_claims((_frame(p, n) for p, n in expand_inputs([folder])), outputs, out)
    with RunInputs.expand([folder]) as table, pytest.raises(InputError) as on_disk:
        check_claims(table.frames(), outputs, out, owner=table.claim_map("files", out),
                     folders=table.claim_map("folders", out))
    assert str(on_disk.value) == str(in_memory.value) and "would both write" in str(on_disk.value)


def test_a_file_where_another_input_needs_a_folder_is_refused_on_disk_too(tmp_path):
    """`x.png` (json: frames/x.png.json) beside a folder `x.png.json/` (frames/x.png.json/y.png.json)."""
    folder = tmp_path / "in"
    image(folder / "x.png")
    image(folder / "x.png.json" / "y.png")
    out = tmp_path / "out"
    with RunInputs.expand([folder]) as table, pytest.raises(InputError, match="would both write") as on_disk:
        check_claims(table.frames(), [plugins.get_stage("json")()], out, owner=table.claim_map("files", out),
                     folders=table.claim_map("folders", out))
    with pytest.raises(InputError) as in_memory:
        check_claims((_frame(p, n) for p, n in expand_inputs([folder])), [plugins.get_stage("json")()], out)
    assert str(on_disk.value) == str(in_memory.value)


def _frame(path, name):
    from recognize.frame import Frame

    return Frame(source=str(path), name=name)


def test_a_killed_runs_scratch_table_is_removed_by_the_next_run(tmp_path):
    image(tmp_path / "in" / "x.png")
    gone = tmp_path / "tmp" / f"recognize-run-{2**22 + 1}-abc"  # above Linux's pid_max: no such process
    alive = tmp_path / "tmp" / f"recognize-run-{os.getpid()}-def"
    for folder in (gone, alive):
        folder.mkdir(parents=True)
        (folder / "inputs.sqlite").write_bytes(b"x" * 100)
    (tmp_path / "tmp" / "recognize-run-notes.txt").write_text("not ours")
    with RunInputs.expand([tmp_path / "in"], directory=tmp_path / "tmp") as table:
        assert list(table) == [(tmp_path / "in" / "x.png", "x.png")]
    assert not gone.exists() and alive.exists() and (tmp_path / "tmp" / "recognize-run-notes.txt").exists()
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == sorted([alive.name, "recognize-run-notes.txt"])


def test_a_scratch_table_that_cannot_be_created_leaves_no_folder(tmp_path, monkeypatch):
    import sqlite3

    from recognize import run_inputs
    from recognize.errors import RecognizeError

    image(tmp_path / "in" / "x.png")
    (tmp_path / "tmp").mkdir()
    real_connect = sqlite3.connect

    def full_disk(*args, **kwargs):  # the connection opens; the first write finds the disk full
        db = real_connect(*args, **kwargs)
        db.execute("PRAGMA max_page_count = 1")
        return db

    monkeypatch.setattr(run_inputs.sqlite3, "connect", full_disk)
    with pytest.raises(RecognizeError, match="the disk may be full"):
        RunInputs.expand([tmp_path / "in"], directory=tmp_path / "tmp")
    assert list((tmp_path / "tmp").iterdir()) == []
