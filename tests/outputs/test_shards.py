"""The `shards` output: per-image results in JSONL shards (masks as RLE), resumed through the done
journal, read back by the dataset outputs and by `recognize eval`."""

from __future__ import annotations

import json

from recognize import plugins
from recognize.eval.regions import read_frames
from recognize.frame import Frame
from recognize.outputs.shards import cut_torn_tail, read_shards, shard_files
from recognize.pipeline import Pipeline
from recognize.runner import run_to_folder


def pipeline(test_stages, *outputs):
    return Pipeline([test_stages.Brightness(), test_stages.Explode(on="boom"), test_stages.CenterBox(),
                     test_stages.BoxMask()], list(outputs), batch_size=2)


def shards(size=2):
    return plugins.get_stage("shards")(frames_per_shard=size)


def journal(out):
    return [json.loads(line) for line in (out / ".recognize" / "done.jsonl").read_text().splitlines()]


def test_shards_hold_every_frame_with_rle_masks_and_no_per_image_files(test_stages, image_folder, tmp_path):
    (image_folder / "boom.png").write_bytes((image_folder / "white.png").read_bytes())
    out = tmp_path / "out"
    summary = run_to_folder(pipeline(test_stages, shards(), plugins.get_stage("coco")()), [image_folder], out,
                            quiet=True)
    assert (summary.processed, summary.failed) == (3, 1)
    assert not (out / "frames").exists()
    assert [p.name for p in shard_files(out)] == ["part-00000.jsonl", "part-00001.jsonl"]
    lines = [json.loads(x) for p in shard_files(out) for x in p.read_text().splitlines()]
    assert sorted(x["name"] for x in lines) == ["black.jpg", "sub/noise.png", "white.png"]
    assert all(set(r["mask"]) == {"size", "counts"} for x in lines for r in x["regions"])
    failed = [r for r in journal(out) if r.get("error")]
    assert [r["name"] for r in failed] == ["boom.png"] and "exploded on purpose" in failed[0]["error"]
    # coco read its frames back from the shards: same file as a run with per-image JSON files
    reference = tmp_path / "reference"
    run_to_folder(pipeline(test_stages, plugins.get_stage("coco")()), [image_folder], reference, quiet=True)
    assert json.loads((out / "coco.json").read_text()) == json.loads((reference / "coco.json").read_text())
    # recognize eval reads the shards
    assert sorted(f.name for f in read_frames(out)) == ["black.jpg", "sub/noise.png", "white.png"]


def test_resume_from_shards_by_identity_and_a_torn_line_is_redone(test_stages, image_folder, tmp_path):
    out = tmp_path / "out"
    run_to_folder(pipeline(test_stages, shards(size=10)), [image_folder], out, quiet=True)
    again = run_to_folder(pipeline(test_stages, shards(size=10)), [image_folder], out, quiet=True)
    assert (again.processed, again.skipped) == (0, 3) and len(shard_files(out)) == 1
    shard = shard_files(out)[0]
    shard.write_bytes(shard.read_bytes()[:-20])  # a run killed while writing its last line
    resumed = run_to_folder(pipeline(test_stages, shards(size=10)), [image_folder], out, quiet=True)
    assert (resumed.processed, resumed.skipped) == (1, 2) and len(shard_files(out)) == 2
    assert all(s.read_bytes().endswith(b"\n") for s in shard_files(out))  # the torn line was cut off
    frames = list(read_shards(out))
    assert sorted(f.name for f in frames) == ["black.jpg", "sub/noise.png", "white.png"]
    assert all(isinstance(f, Frame) and f.regions for f in frames)


def test_yolo_reads_the_shards_and_json_adds_per_image_files(test_stages, image_folder, tmp_path):
    out = tmp_path / "out"
    yolo = plugins.get_stage("yolo")()
    run_to_folder(pipeline(test_stages, shards(), yolo, plugins.get_stage("json")()), [image_folder], out, quiet=True)
    assert (out / "frames" / "white.png.json").is_file() and len(shard_files(out)) == 2
    assert (out / "classes.txt").read_text().split() == ["bright", "dark"]
    labels = sorted(p.name for p in out.rglob("*.txt") if p.name != "classes.txt")
    assert len(labels) == 3


def test_cut_torn_tail_keeps_whole_lines_only(tmp_path):
    shard = tmp_path / "part-00000.jsonl"
    shard.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c"')
    assert cut_torn_tail(shard) == 4 and shard.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    assert cut_torn_tail(shard) == 0 and shard.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    shard.write_bytes(b'{"only torn')
    assert cut_torn_tail(shard) == 11 and shard.read_bytes() == b""
