import json
import weakref

import numpy as np
import pytest

from recognize import Frame, Region, Stage, Tag
from recognize.errors import InputError, RecipeError
from recognize.pipeline import Pipeline
from recognize.runner import run_to_folder
from recognize.stage import OutputStage


def make_pipeline(test_stages, **kw):
    from recognize import plugins

    outputs = [plugins.get_stage("annotated_image")()]
    return Pipeline([test_stages.Brightness(), test_stages.CenterBox(), test_stages.BoxMask()], outputs, **kw)


def test_writes_json_per_image_outputs_and_summary(test_stages, image_folder, tmp_path):
    out = tmp_path / "out"
    summary = run_to_folder(make_pipeline(test_stages), [image_folder], out, quiet=True)
    assert (summary.processed, summary.skipped, summary.failed) == (3, 0, 0)
    frame = Frame.from_json((out / "frames" / "sub" / "noise.png.json").read_text())
    assert frame.tag_names == ["dark"] and frame.regions[0].mask.shape == (32, 32)
    assert (out / "frames" / "white.png.annotated.jpg").is_file()
    data = json.loads((out / "summary.json").read_text())
    assert data["counts"] == {"inputs": 3, "processed": 3, "skipped": 0, "failed": 0}
    assert set(data["timings"]) == {"brightness", "center_box", "box_mask"}
    assert not list(out.rglob("*.part"))


def test_bad_images_are_reported_and_skipped(test_stages, image_folder, tmp_path):
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    summary = run_to_folder(make_pipeline(test_stages), [image_folder], tmp_path / "out", quiet=True)
    assert summary.processed == 3 and summary.failed == 1
    assert summary.failures[0]["source"].endswith("broken.jpg")
    assert not (tmp_path / "out" / "frames" / "broken.jpg.json").exists()
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert data["counts"]["failed"] == 1 and "broken.jpg" in data["failures"][0]["source"]


def test_a_stage_error_costs_only_its_image(test_stages, image_folder, tmp_path):
    (image_folder / "boom.png").write_bytes((image_folder / "white.png").read_bytes())
    pipeline = Pipeline([test_stages.Brightness(), test_stages.Explode(on="boom")], batch_size=4)
    summary = run_to_folder(pipeline, [image_folder], tmp_path / "out", quiet=True)
    assert summary.processed == 3 and [f["name"] for f in summary.failures] == ["boom.png"]
    assert "exploded on purpose" in summary.failures[0]["error"]
    # the retried frames were restored before the retry: one tag each, not two
    white = Frame.from_json((tmp_path / "out" / "frames" / "white.png.json").read_text())
    assert white.tag_names == ["bright"] and white.meta["explode_seen"] == 1


def test_rerun_skips_complete_images_and_overwrite_redoes_them(test_stages, image_folder, tmp_path):
    out = tmp_path / "out"
    run_to_folder(make_pipeline(test_stages), [image_folder], out, quiet=True)
    (out / "frames" / "white.png.annotated.jpg").unlink()  # as if the run was killed before this image finished
    (out / "frames" / "black.jpg.json").write_text("{ half written")  # a damaged result means: redo
    again = run_to_folder(make_pipeline(test_stages), [image_folder], out, quiet=True)
    assert (again.processed, again.skipped) == (2, 1)
    assert (out / "frames" / "white.png.annotated.jpg").is_file()
    Frame.from_json((out / "frames" / "black.jpg.json").read_text())
    redo = run_to_folder(make_pipeline(test_stages), [image_folder], out, quiet=True, overwrite=True)
    assert (redo.processed, redo.skipped) == (3, 0)


def test_dataset_outputs_include_resumed_frames(test_stages, image_folder, tmp_path):
    from recognize import plugins

    out = tmp_path / "out"
    pipeline = Pipeline([test_stages.Brightness(), test_stages.CenterBox()], [plugins.get_stage("coco")()])
    run_to_folder(pipeline, [image_folder / "white.png"], out, quiet=True)
    run_to_folder(pipeline, [image_folder], out, quiet=True)
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == 3


def test_failed_write_leaves_no_partial_file(test_stages, image_folder, tmp_path, monkeypatch):
    from recognize.outputs import json_output

    def broken_write(self, frame, out_dir):
        from recognize.atomic import atomic_write

        with atomic_write(out_dir / "frames" / f"{frame.name}.json") as handle:
            handle.write('{"partial": ')
            raise OSError("disk full")

    monkeypatch.setattr(json_output.JsonOutput, "write", broken_write)
    out = tmp_path / "out"
    summary = run_to_folder(Pipeline([test_stages.Brightness()]), [image_folder / "white.png"], out, quiet=True)
    assert summary.failed == 1 and "disk full" in summary.failures[0]["error"]
    assert not (out / "frames" / "white.png.json").exists() and not list(out.rglob("*.part"))


# -- issue 10: one producer per file, bounded memory ------------------------------------------


class MaskProbe(Stage):
    """Adds a full-size mask per image and records how many masks of earlier batches are still alive."""

    name = "mask_probe"
    kind = "segmenter"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.masks: list[weakref.ref] = []
        self.alive: list[int] = []

    def process(self, frames):
        self.alive.append(sum(ref() is not None for ref in self.masks))
        for frame in frames:
            h, w = frame.image.shape[:2]
            mask = np.ones((h, w), dtype=bool)
            self.masks.append(weakref.ref(mask))
            frame.tags.append(Tag(name="thing", score=1.0))
            frame.regions.append(Region(box=(0, 0, w, h), tag="thing", mask=mask))
        return frames


class SeenByFinish(OutputStage):
    """A dataset output that checks what `finish` gets: a re-iterable sequence read from disk."""

    name = "seen_by_finish"

    def finish(self, frames, out_dir):
        self.kind_of = type(frames).__name__
        first = [(f.name, f.regions[0].mask.sum()) for f in frames]
        second = [(f.name, f.regions[0].mask.sum()) for f in frames]
        self.seen = first if first == second else None


def many_images(folder, count):
    from PIL import Image

    folder.mkdir()
    for i in range(count):
        Image.new("RGB", (20, 10), (i, i, i)).save(folder / f"img{i:03d}.png")
    return folder


@pytest.mark.parametrize("background, bound", [("0", 4), ("1", 4 + 1)])
def test_memory_is_bounded_by_the_batch_not_the_dataset(tmp_path, monkeypatch, background, bound):
    """Principle 4: a processed frame (and its mask) is dropped once written; `finish` streams frames
    back from disk, twice if it needs to. Written beside the next batch: one batch waits for the writer
    thread, plus the image it writes (`recognize.engines.background_write`)."""
    monkeypatch.setenv("RECOGNIZE_BACKGROUND_WRITE", background)
    probe, seen = MaskProbe(), SeenByFinish()
    folder = many_images(tmp_path / "in", 24)
    summary = run_to_folder(Pipeline([probe], [seen], batch_size=4), [folder], tmp_path / "out", quiet=True)
    assert summary.processed == 24
    assert len(probe.alive) == 6 and max(probe.alive) <= bound
    assert seen.kind_of == "FrameFiles" and [n for n, _ in seen.seen] == [f"img{i:03d}.png" for i in range(24)]
    assert all(area == 200 for _, area in seen.seen)


class SlowBatches(Stage):
    """A stage whose batches take 0.1 s: time for the writer to work beside it."""

    name = "slow_batches"
    kind = "tagger"

    def process(self, frames):
        import time

        time.sleep(0.1)
        return frames


class SlowWrites(OutputStage):
    """An output that takes 0.05 s per image (drawing a big annotated image, say) and writes no file."""

    name = "slow_writes"

    def write(self, frame, out):
        import time

        time.sleep(0.05)


@pytest.mark.parametrize("background", ["1", "0"])
def test_outputs_written_beside_the_next_batch_equal_those_written_inline(tmp_path, monkeypatch, background):
    """`recognize.engines.background_write`: the same files and journal order either way; the writing that
    ran beside the stages is `overlapped.write`, the waits for it the wall's `write`."""
    from recognize import plugins

    folder = many_images(tmp_path / "in", 6)
    monkeypatch.setenv("RECOGNIZE_BACKGROUND_WRITE", background)
    out = tmp_path / "out"
    summary = run_to_folder(Pipeline([MaskProbe(), SlowBatches()], [plugins.get_stage("json")(), SlowWrites()],
                                     batch_size=2), [folder], out, quiet=True)
    assert summary.processed == 6 and summary.wall["write"] > 0
    if background == "1":  # 6 x 0.05 s of writing, of which at least the first batches' ran beside 0.2 s of stages
        assert summary.overlapped["write"] > 0.05
        assert summary.wall["write"] < 0.3
    else:
        assert "write" not in summary.overlapped and summary.wall["write"] >= 0.3
    names = [json.loads(line)["name"] for line in (out / ".recognize" / "done.jsonl").read_text().splitlines()]
    assert names == [f"img{i:03d}.png" for i in range(6)]  # in input order, as the results became final
    frames = {p.name: json.loads(p.read_text())["regions"] for p in (out / "frames").glob("*.json")}
    assert len(frames) == 6 and all(len(regions) == 1 and regions[0]["mask"] for regions in frames.values())


def test_colliding_results_are_refused_before_anything_is_written(tmp_path):
    """Principle 1: YOLO pairs images/x.jpg with labels/x.txt, so x.jpg beside x.png is refused up
    front naming both; two outputs claiming one dataset file are a recipe error."""
    from recognize import plugins

    folder = tmp_path / "in"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(folder / "x.jpg")
    Image.new("RGB", (8, 8)).save(folder / "x.png")
    yolo = Pipeline([], [plugins.get_stage("yolo")()])
    with pytest.raises(InputError) as info:
        run_to_folder(yolo, [folder], tmp_path / "out", quiet=True)
    assert "x.jpg" in str(info.value) and "x.png" in str(info.value) and "labels" in str(info.value)
    assert not (tmp_path / "out").exists()
    twice = Pipeline([], [plugins.get_stage("coco")(), plugins.get_stage("coco")()])
    with pytest.raises(RecipeError, match=r"outputs\[1\].*outputs\[0\]"):
        run_to_folder(twice, [folder], tmp_path / "out", quiet=True)
    clash = Pipeline([], [plugins.get_stage("coco")(filename="labels"), plugins.get_stage("yolo")()])
    with pytest.raises(RecipeError, match="labels"):
        run_to_folder(clash, [folder], tmp_path / "out", quiet=True)


def test_changed_recipe_or_source_is_redone_and_old_results_do_not_count(test_stages, tmp_path):
    """Principle 2 in process: the journal records source identity and the recipe's fingerprint."""
    folder = many_images(tmp_path / "in", 3)
    out = tmp_path / "out"
    first = run_to_folder(Pipeline([test_stages.Brightness()]), [folder], out, quiet=True)
    assert (first.processed, first.skipped) == (3, 0)
    from PIL import Image

    Image.new("RGB", (30, 10), (250, 250, 250)).save(folder / "img001.png")
    again = run_to_folder(Pipeline([test_stages.Brightness()]), [folder], out, quiet=True)
    assert (again.processed, again.skipped) == (1, 2)
    assert Frame.from_json((out / "frames" / "img001.png.json").read_text()).tag_names == ["bright"]
    with pytest.raises(InputError, match="different recipe"):
        run_to_folder(Pipeline([test_stages.Brightness(cutoff=1)]), [folder], out, quiet=True)


def test_a_refused_output_folder_is_left_untouched(test_stages, image_folder, tmp_path):
    # someone else's folder (a mistyped -o): refused, and nothing in it deleted, not even what looks
    # like a temp file of a killed run (pid 2**22 + 1 is above Linux's pid_max)
    theirs = tmp_path / "theirs"
    (theirs / "deep").mkdir(parents=True)
    (theirs / "notes.txt").write_text("mine")
    temp = theirs / "deep" / f".data.json.{2**22 + 1}.abc123.part"
    temp.write_text("looks like ours")
    with pytest.raises(InputError, match="no readable manifest.json"):
        run_to_folder(Pipeline([test_stages.Brightness()]), [image_folder], theirs, quiet=True)
    assert temp.read_text() == "looks like ours"
