"""The `shards` output: per-image results in JSONL or Parquet shards (masks as RLE), resumed through the
done journal, read back by the dataset outputs and by `recognize eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recognize import plugins
from recognize.eval.regions import read_frames
from recognize.frame import Drop, Frame
from recognize.outputs.shards import (
    cut_torn_tail,
    read_shards,
    read_span,
    shard_extent,
    shard_files,
)
from recognize.pipeline import Pipeline
from recognize.runner import run_to_folder
from recognize.stage import Stage
from recognize.testing import check_stage

from .conftest import make_frame


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


def test_a_shard_line_that_is_not_a_json_object_is_one_input_error(tmp_path):
    from recognize.errors import InputError

    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "part-00000.jsonl").write_text(make_frame("a").to_json(indent=None) + "\n[1]\n")
    with pytest.raises(InputError, match=r"part-00000.jsonl: not a readable shard \(the line at byte \d+ is not"):
        read_frames(tmp_path)


# -- Parquet shards -------------------------------------------------------------------------------
def parquet_shards(size=2, **params):
    return plugins.get_stage("shards")(frames_per_shard=size, format="parquet", **params)


def varied_frames():
    """Frames with every field a Frame can carry: masks and box-only regions, dropped items, meta,
    region meta, no caption, no Chinese names, an image where nothing was found."""
    frames = [make_frame("a", seed=0), make_frame("sub/b", seed=1, scale=2), make_frame("c", seed=2)]
    frames[0].meta = {"note": "x", "nested": {"k": [1, 2.5, None]}}
    frames[0].regions[0].meta = {"embedding_norm": 0.125}
    frames[0].regions[1].mask_score = 0.875
    frames[1].caption = None
    frames[1].dropped = [Drop(item="region", tag="cat", stage="region_confirm", reason="not confirmed", value=0.2,
                              box=(1.0, 2.0, 30.0, 40.0)), Drop(item="tag", tag="sky", stage="s", reason="r")]
    frames[1].tags[0].index, frames[1].tags[0].source = 17, "ram_plus"
    frames[2].regions, frames[2].tags = [], []
    return frames


@pytest.mark.parametrize("rows_per_group", [1, 2, 1000])
def test_parquet_and_jsonl_shards_give_back_the_very_same_frames(tmp_path, rows_per_group):
    frames = varied_frames()
    read = {}
    for fmt in ("jsonl", "parquet"):
        out = tmp_path / fmt
        stage = plugins.get_stage("shards")(frames_per_shard=2, format=fmt, rows_per_group=rows_per_group)
        spans = []
        for frame in frames:
            stage.write(frame, out)
            spans.append(next(iter(stage.appended(frame, out).items())))
        stage.finish([], out)
        assert [p.suffix for p in shard_files(out)] == [f".{fmt}"] * 2
        read[fmt] = [f.to_json() for f in read_shards(out)]
        handles = {}  # what the runner's ShardFrames reads: the journal's spans
        assert [read_span(out, shard, start, end, handles).to_json() for shard, (start, end) in spans] == read[fmt]
        for reader in handles.values():
            reader.close()
    assert read["parquet"] == read["jsonl"] == [f.to_json() for f in frames]
    decoded = Frame.from_json(read["parquet"][0]).regions[0].mask
    assert decoded is not None and np.array_equal(decoded, frames[0].regions[0].mask)


def test_parquet_shards_have_typed_queryable_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    stage = parquet_shards(size=10)
    frames = varied_frames()
    for frame in frames:
        stage.write(frame, tmp_path)
    stage.finish([], tmp_path)
    (shard,) = shard_files(tmp_path)
    schema = pq.read_schema(shard)
    assert schema.field("name").type == pa.string() and schema.field("source").type == pa.string()
    assert schema.field("width").type == pa.int32() and schema.field("height").type == pa.int32()
    assert schema.field("caption").type == pa.string()
    tag = schema.field("tags").type.value_type
    assert tag.field("name").type == pa.string() and tag.field("score").type == pa.float64()
    region = schema.field("regions").type.value_type
    assert region.field("label").type == pa.string() and region.field("score").type == pa.float64()
    assert region.field("box").type == pa.list_(pa.float64(), 4)
    mask = region.field("mask").type
    assert mask.field("size").type == pa.list_(pa.int32()) and mask.field("counts").type == pa.string()
    table = pq.read_table(shard)
    assert table.column("name").to_pylist() == ["a", "sub/b", "c"]
    assert table.column("width").to_pylist() == [80, 160, 80]
    first = table.column("regions").to_pylist()[0]
    assert [r["label"] for r in first] == ["dog", "ball", "grass"]
    assert first[0]["box"] == [11.0, 16.0, 39.0, 44.0] and first[0]["mask"]["size"] == [60, 80]
    assert first[0]["mask"] == frames[0].model_dump(mode="json")["regions"][0]["mask"]  # the RLE, as in JSON
    assert first[2]["mask"] is None
    assert [t["name"] for t in table.column("tags").to_pylist()[0]] == ["dog", "ball", "grass"]
    assert not list(tmp_path.rglob("*.partial"))


def test_parquet_shards_keep_the_output_contract(tmp_path):
    check_stage(parquet_shards(), varied_frames(), out_dir=tmp_path)
    assert shard_files(tmp_path / "out")


def test_parquet_shards_feed_coco_and_eval_and_resume(test_stages, image_folder, tmp_path):
    out = tmp_path / "out"
    summary = run_to_folder(pipeline(test_stages, parquet_shards(), plugins.get_stage("coco")()), [image_folder],
                            out, quiet=True)
    assert (summary.processed, summary.failed) == (3, 0)
    assert not (out / "frames").exists()
    assert [p.name for p in shard_files(out)] == ["part-00000.parquet", "part-00001.parquet"]
    spans = [next(iter(r["appended"].values())) for r in journal(out)]
    assert {end - start for start, end in spans} == {1}  # a Parquet span is one row
    reference = tmp_path / "reference"
    run_to_folder(pipeline(test_stages, plugins.get_stage("coco")(), plugins.get_stage("json")()), [image_folder],
                  reference, quiet=True)
    assert json.loads((out / "coco.json").read_text()) == json.loads((reference / "coco.json").read_text())
    frames = {f.name: f.to_json() for f in read_frames(out)}  # recognize eval reads the Parquet shards
    assert frames == {f.name: f.to_json() for f in read_frames(reference)}
    again = run_to_folder(pipeline(test_stages, parquet_shards(), plugins.get_stage("coco")()), [image_folder],
                          out, quiet=True)
    assert (again.processed, again.skipped) == (0, 3) and len(shard_files(out)) == 2


def test_a_parquet_shard_left_open_by_a_killed_run_is_redone_and_its_number_never_reused(test_stages, image_folder,
                                                                                        tmp_path):
    out = tmp_path / "out"
    first = parquet_shards(size=2)
    run_to_folder(pipeline(test_stages, first), [image_folder], out, quiet=True)
    # what a kill before the rename leaves: the last shard still a dead run's partial file
    last = shard_files(out)[-1]
    dead = last.with_name(f".{last.name}.999999999.partial")
    last.rename(dead)
    resumed = run_to_folder(pipeline(test_stages, parquet_shards(size=2)), [image_folder], out, quiet=True)
    assert (resumed.processed, resumed.skipped) == (1, 2)
    assert [p.name for p in shard_files(out)] == ["part-00000.parquet", "part-00002.parquet"]
    assert not dead.exists()
    assert sorted(f.name for f in read_shards(out)) == ["black.jpg", "sub/noise.png", "white.png"]


def test_a_parquet_shard_that_fails_to_close_keeps_its_number_from_any_later_shard(tmp_path, monkeypatch):
    import os

    stage = parquet_shards(size=10)
    stage.write(make_frame("a"), tmp_path)

    def disk_gone(*_args):
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(os, "replace", disk_gone)
        with pytest.raises(OSError):
            stage.finish([], tmp_path)
    assert shard_files(tmp_path) == [] and len(list((tmp_path / "shards").glob(".part-00000.parquet.*.partial"))) == 1
    later = parquet_shards(size=10)
    later.write(make_frame("b"), tmp_path)
    later.finish([], tmp_path)
    assert [p.name for p in shard_files(tmp_path)] == ["part-00001.parquet"]  # a record naming 00000 stays dead


class InterruptOnWhite(Stage):
    """Ctrl-C while processing white.png (after black.jpg's frame is in the open shard)."""

    name = "interrupt_on_white"
    kind = "filter"

    def process(self, frames):
        if any("white" in frame.source for frame in frames):
            raise KeyboardInterrupt
        return frames


def test_a_shard_that_fails_to_close_after_a_stop_does_not_hide_why_the_run_stopped(test_stages, image_folder,
                                                                                    tmp_path, monkeypatch):
    import os

    real_replace = os.replace

    def disk_gone_for_shards(source, target):  # the shard's rename into place fails; other writes work
        if str(source).endswith(".partial") and "shards" in str(source):
            raise OSError(5, "Input/output error")
        real_replace(source, target)

    run = Pipeline([test_stages.CenterBox(), InterruptOnWhite()], [parquet_shards(size=10)], batch_size=1)
    monkeypatch.setattr(os, "replace", disk_gone_for_shards)
    with pytest.raises(KeyboardInterrupt):  # not the shard's "cannot close the last shard"
        run_to_folder(run, [image_folder], tmp_path / "out", quiet=True)


def test_shard_extent_is_bytes_or_rows_and_minus_one_when_unreadable(tmp_path):
    stage = parquet_shards(size=10)
    for frame in varied_frames():
        stage.write(frame, tmp_path)
    stage.finish([], tmp_path)
    (shard,) = shard_files(tmp_path)
    assert shard_extent(shard) == 3
    broken = tmp_path / "shards" / "part-00009.parquet"
    broken.write_bytes(shard.read_bytes()[:-100])  # no footer: unreadable
    assert shard_extent(broken) == -1 and shard_extent(tmp_path / "missing.parquet") == -1
    jsonl = tmp_path / "part-00000.jsonl"
    jsonl.write_bytes(b"{}\n")
    assert shard_extent(jsonl) == 3


# -- through the CLI ------------------------------------------------------------------------------
def cli(*args, **env):
    import subprocess
    import sys

    from clihelp import cli_env

    return subprocess.run([sys.executable, "-m", "recognize", "run", *map(str, args), "-q"], env=cli_env(**env),
                          capture_output=True, text=True, timeout=600, check=False)


def shard_recipe(tmp_path, fmt="parquet"):
    path = tmp_path / f"{fmt}.yaml"
    path.write_text("recipe: 1\nsettings: {batch_size: 1}\nstages:\n  - use: brightness\n  - use: center_box\n"
                    "  - use: box_mask\n  - use: die_on\noutputs:\n"
                    f"  - use: shards\n    with: {{format: {fmt}, frames_per_shard: 3, rows_per_group: 2}}\n"
                    "  - use: coco\n")
    return path


def numbered_images(folder, n=12):
    from PIL import Image

    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.full((24, 32, 3), i * 20, np.uint8)).save(folder / f"img{i:02d}.png")
    return folder


def killed_on_img07(tmp_path, background_write):
    """(images, recipe, an uninterrupted run's folder, the folder of a run SIGKILLed on img07)."""
    import signal

    images = numbered_images(tmp_path / "images")
    recipe = shard_recipe(tmp_path)
    whole = tmp_path / "whole"
    assert cli(recipe, images, "-o", whole).returncode == 0
    out = tmp_path / "out"
    killed = cli(recipe, images, "-o", out, TEST_DIE_ON="img07", RECOGNIZE_BACKGROUND_WRITE=background_write)
    assert killed.returncode == -signal.SIGKILL
    return images, recipe, whole, out


@pytest.mark.subprocess
def test_a_killed_parquet_run_resumes_to_the_outputs_of_an_uninterrupted_one(tmp_path):
    # SIGKILL while shard 2 (img06..) is open; each image written before the next one computes (not on the
    # background writer thread, which may still be behind when the process dies: the next test), so that
    # what the dead run left is known exactly
    images, recipe, whole, out = killed_on_img07(tmp_path, "0")
    assert [p.name for p in shard_files(out)] == ["part-00000.parquet", "part-00001.parquet"]
    assert len(list((out / "shards").glob(".part-00002.parquet.*.partial"))) == 1  # unreadable: no footer yet
    assert "img06.png" in {r["name"] for r in journal(out)}  # journaled, but its shard never closed

    again = cli(recipe, images, "-o", out)
    assert again.returncode == 0, again.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["counts"]["skipped"], summary["counts"]["processed"]) == (6, 6)  # img06 was redone
    assert [p.name for p in shard_files(out)] == [f"part-0000{i}.parquet" for i in (0, 1, 3, 4)]
    assert not list((out / "shards").glob("*.partial"))  # the dead run's partial shard was removed
    assert json.loads((out / "coco.json").read_text()) == json.loads((whole / "coco.json").read_text())
    assert [f.to_json() for f in read_shards(out)] == [f.to_json() for f in read_shards(whole)]


@pytest.mark.subprocess
def test_a_run_killed_while_its_writer_thread_is_behind_resumes_to_the_same_outputs(tmp_path):
    """Writing in the background (`RECOGNIZE_BACKGROUND_WRITE=1`, the default where a core is free for it):
    whatever the writer had reached when the process died (not known exactly here), the images it had
    not are neither journaled nor in a closed shard, so the resumed run computes them again."""
    images, recipe, whole, out = killed_on_img07(tmp_path, "1")
    done = {r["name"] for r in journal(out)}
    assert done <= {f"img{i:02d}.png" for i in range(7)}  # never an image after the one it died on
    again = cli(recipe, images, "-o", out)
    assert again.returncode == 0, again.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["skipped"] + summary["counts"]["processed"] == 12
    assert not list((out / "shards").glob("*.partial"))
    assert json.loads((out / "coco.json").read_text()) == json.loads((whole / "coco.json").read_text())
    assert [f.to_json() for f in read_shards(out)] == [f.to_json() for f in read_shards(whole)]


@pytest.mark.subprocess
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_overwrite_removes_the_old_shards(tmp_path, fmt):
    images = numbered_images(tmp_path / "images", n=7)
    recipe = shard_recipe(tmp_path, fmt)
    out = tmp_path / "out"
    assert cli(recipe, images, "-o", out).returncode == 0
    (out / "shards" / "notes.txt").write_text("mine")  # not a shard: left alone
    again = cli(recipe, images, "-o", out, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert [p.name for p in shard_files(out)] == [f"part-0000{i}.{fmt}" for i in range(3)]  # not 00003..00005
    assert (out / "shards" / "notes.txt").read_text() == "mine"
    assert sorted(r["name"] for r in journal(out)) == [f"img{i:02d}.png" for i in range(7)]  # old spans gone
    assert len(list(read_shards(out))) == 7
    assert len(json.loads((out / "coco.json").read_text())["images"]) == 7
