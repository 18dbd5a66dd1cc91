"""The done journal read through its index on disk (`recognize.run_journal`)."""

from __future__ import annotations

import json

from recognize.run_journal import DoneJournal


def record(name: str, **extra) -> dict:
    return {"name": name, "recipe": "r1", **extra}


def journal_lines(out, *lines: str) -> None:
    path = out / ".recognize" / "done.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")


def test_the_last_line_for_a_name_wins(tmp_path):
    journal_lines(tmp_path, *(json.dumps(r) + "\n" for r in
                              [record("a", n=1), record("b", n=1), record("a", n=2), record("a", error="boom")]))
    journal = DoneJournal(tmp_path).read()
    assert journal.get("a") == record("a", error="boom")  # a failure after a success counts: redo it
    assert journal.get("b") == record("b", n=1)
    assert journal.get("c") is None and "c" not in journal
    journal.close()


def test_a_torn_last_line_and_garbage_are_ignored(tmp_path):
    journal_lines(tmp_path, json.dumps(record("a")) + "\n", "not json\n", '["a list"]\n', '{"name": 3}\n',
                  '{"name": "b", "rec')
    journal = DoneJournal(tmp_path).read()
    assert journal.get("a") == record("a") and journal.get("b") is None
    assert journal.has_records()
    journal.close()
    journal_lines(tmp_path, '{"name": "b", "rec')
    assert not DoneJournal(tmp_path).has_records()


def test_a_resumed_run_appends_after_a_torn_line_on_a_line_of_its_own(tmp_path):
    journal_lines(tmp_path, json.dumps(record("a")) + "\n", '{"name": "b", "rec')
    journal = DoneJournal(tmp_path).read()
    journal.append(record("b", n=2))
    journal.append(record("c"))
    assert journal.get("b") == record("b", n=2) and journal.get("c") == record("c")
    journal.close()
    lines = (tmp_path / ".recognize" / "done.jsonl").read_text().splitlines()
    assert lines == [json.dumps(record("a")), '{"name": "b", "rec', json.dumps(record("b", n=2)), json.dumps(record("c"))]
    again = DoneJournal(tmp_path).read()  # what the next run sees: the index it left, and the same records
    assert [again.get(n) for n in "abc"] == [record("a"), record("b", n=2), record("c")]
    again.close()


def test_the_index_follows_the_journal_it_was_built_from(tmp_path):
    journal = DoneJournal(tmp_path)
    for i in range(2500):  # past a commit of the index
        journal.append(record(f"img{i}", n=i))
    journal.close()
    assert (tmp_path / ".recognize" / "done.index.sqlite").exists()
    path = tmp_path / ".recognize" / "done.jsonl"
    with path.open("a") as more:  # lines the index has not seen (another run, a kill before a commit)
        more.write(json.dumps(record("img7", n=-7)) + "\n" + json.dumps(record("late")) + "\n")
    journal = DoneJournal(tmp_path).read()
    assert journal.get("img7") == record("img7", n=-7) and journal.get("late") == record("late")
    assert journal.get("img2499") == record("img2499", n=2499)
    journal.close()
    # a different journal in its place (restored from a backup, copied from another run): indexed again
    path.write_text(json.dumps(record("other")) + "\n")
    journal = DoneJournal(tmp_path).read()
    assert journal.get("other") == record("other") and journal.get("img1") is None
    journal.close()


def test_a_damaged_index_is_rebuilt_and_no_journal_means_no_files(tmp_path):
    empty = tmp_path / "empty"
    journal = DoneJournal(empty).read()
    assert journal.get("a") is None and not journal.has_records()
    journal.close()
    assert not empty.exists()  # reading writes nothing: a run that cannot start leaves no folder
    journal_lines(tmp_path, json.dumps(record("a")) + "\n")
    DoneJournal(tmp_path).read().close()
    (tmp_path / ".recognize" / "done.index.sqlite").write_bytes(b"not a database, not at all" * 100)
    journal = DoneJournal(tmp_path).read()
    assert journal.get("a") == record("a")
    journal.close()


def test_reset_forgets_every_record_and_the_next_append_starts_afresh(tmp_path):
    journal = DoneJournal(tmp_path)
    journal.append(record("a"))
    journal.reset()
    assert journal.get("a") is None and not journal.has_records()
    assert not (tmp_path / ".recognize" / "done.jsonl").exists()
    assert not (tmp_path / ".recognize" / "done.index.sqlite").exists()
    journal.append(record("b"))
    journal.close()
    again = DoneJournal(tmp_path).read()
    assert again.get("a") is None and again.get("b") == record("b")
    again.close()
