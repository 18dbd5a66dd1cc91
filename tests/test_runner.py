import json


from recognize import Frame
from recognize.pipeline import Pipeline
from recognize.runner import run_to_folder


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
