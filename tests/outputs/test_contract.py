"""Every built-in output keeps the plugin contract (recognize.testing): parameters, files whole or
absent after a crash, the same bytes when written again, frames left untouched."""

from __future__ import annotations

import pytest

from recognize import plugins
from recognize.data_engine.reasons import REASON_NOT_CONFIRMED
from recognize.frame import Drop
from recognize.testing import check_stage

from .conftest import make_frame

BUILTIN_OUTPUTS = ["json", "annotated_image", "coco", "yolo", "tags_jsonl", "data_engine_report", "shards"]


def frames():
    made = [make_frame("a", seed=0), make_frame("b", seed=1, scale=2), make_frame("c", seed=2)]
    made[2].regions = []  # an image where nothing was found
    made[1].dropped = [Drop(item="region", tag="cat", stage="region_confirm", reason=REASON_NOT_CONFIRMED,
                            value=0.2, box=(1.0, 2.0, 30.0, 40.0))]
    return made


@pytest.mark.parametrize("name", BUILTIN_OUTPUTS)
def test_builtin_outputs_keep_the_contract(name, tmp_path):
    stage_cls = plugins.get_stage(name)
    check_stage(stage_cls, frames(), out_dir=tmp_path)
    assert any(tmp_path.joinpath("out").rglob("*")), "the output wrote nothing to check"


def test_every_builtin_output_is_checked():
    builtin = {name for name, cls in plugins.output_stages().items() if cls.__module__.startswith("recognize.")}
    assert builtin == set(BUILTIN_OUTPUTS)
