"""The RAM and RAM++ stages keep the plugin contract (recognize.testing) with the tiny fixtures:
parameters, a batch equal to its frames one by one, frames back in order, serialisable tags."""

from __future__ import annotations

import pytest

from recognize.stage import shared_models
from recognize.taggers.ram_stages import Ram, RamPlus
from recognize.testing import check_stage, sample_frames


@pytest.fixture(autouse=True)
def _fresh_models():
    yield
    shared_models.clear()


@pytest.mark.slow
@pytest.mark.parametrize("cls, fixture", [(Ram, "ram_fixture"), (RamPlus, "ram_plus_fixture")])
def test_ram_stages_keep_the_contract(cls, fixture, request):
    folder = request.getfixturevalue(fixture)
    params = {"config": str(folder / "config.json"), "checkpoint": str(folder / "checkpoint.pth"), "device": "cpu",
              "embedding_cache": False, "threshold": 0.0}
    frames = check_stage(lambda: cls(**params), sample_frames())
    assert all(frame.tags for frame in frames)  # threshold 0: every frame is tagged, so tags were compared
