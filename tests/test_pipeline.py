import numpy as np
import pytest
from PIL import Image

from recognize import Frame
from recognize.errors import ImageError
from recognize.pipeline import Pipeline


def test_call_on_arrays_pil_and_paths(test_stages, image_folder):
    pipeline = Pipeline([test_stages.Brightness(), test_stages.CenterBox()])
    frames = pipeline([np.full((10, 10, 3), 250, np.uint8), Image.new("L", (5, 5), 0), image_folder / "white.png"])
    assert [f.tag_names for f in frames] == [["bright"], ["dark"], ["bright"]]
    assert frames[2].width == 60 and frames[2].height == 40
    assert frames[2].regions[0].box == (15.0, 10.0, 45.0, 30.0)
    single = pipeline(np.zeros((4, 4, 3), np.uint8))
    assert len(single) == 1 and single[0].tag_names == ["dark"]


def test_run_streams_in_input_order(test_stages, image_folder):
    pipeline = Pipeline([test_stages.Brightness()], batch_size=2)
    frames = list(pipeline.run([image_folder]))
    assert [(f.name, f.tag_names) for f in frames] == [("black.jpg", ["dark"]), ("sub/noise.png", ["dark"]),
                                                            ("white.png", ["bright"])]
    assert set(pipeline.timings) == {"brightness"}


def test_dataset_stage_sees_every_frame(test_stages, image_folder):
    pipeline = Pipeline([test_stages.Brightness(), test_stages.CountDataset()], batch_size=1)
    frames = list(pipeline.run([image_folder]))
    assert [f.meta["dataset_size"] for f in frames] == [3, 3, 3]


def test_pipeline_defaults_fill_unset_params_only(test_stages):
    explicit = test_stages.Brightness(device="cuda")
    default = test_stages.Brightness()
    Pipeline([explicit, default], device="mps", batch_size=4)
    assert explicit.params.device == "cuda"
    assert default.params.device == "mps"
    assert default.params.batch_size == 8  # a stage's own forward-pass cap is not overridden


def test_output_stages_given_as_stages_move_to_outputs(test_stages):
    from recognize import plugins

    json_stage = plugins.get_stage("json")()
    pipeline = Pipeline([test_stages.Brightness(), json_stage])
    assert pipeline.stages[0].name == "brightness" and pipeline.outputs == [json_stage]


def test_bad_path_raises_image_error(test_stages, tmp_path):
    (tmp_path / "x.jpg").write_text("no")
    with pytest.raises(ImageError, match="x.jpg"):
        Pipeline([test_stages.Brightness()])(tmp_path / "x.jpg")


def test_frames_pass_through(test_stages):
    frame = Frame.from_array(np.full((3, 3, 3), 200, np.uint8), source="mem")
    out = Pipeline([test_stages.Brightness()])(frame)
    assert out[0] is frame and frame.tag_names == ["bright"]


def test_no_stages_returns_the_frames(image_folder):
    frames = list(Pipeline([]).run([image_folder]))
    assert [f.name for f in frames] == ["black.jpg", "sub/noise.png", "white.png"] and all(not f.tags for f in frames)


def test_run_delegates_to_the_local_engine_and_times_through_its_timer(test_stages, image_folder):
    pipeline = Pipeline([test_stages.Brightness(), test_stages.CountDataset()], batch_size=2)
    list(pipeline.run([image_folder]))
    assert set(pipeline.timer.stages) == {"brightness", "count_dataset"} and pipeline.timings is pipeline.timer.stages
    assert "load" in pipeline.timer.phases  # library runs decode lazily, inside the stage that reads pixels
