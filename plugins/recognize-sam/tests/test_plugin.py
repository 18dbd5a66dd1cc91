"""The distribution is found the way a third-party plugin is: through the `recognize` entry point."""

from __future__ import annotations

from importlib import metadata

from recognize import plugins
from recognize_sam import Sam


def test_entry_point_is_published():
    (entry,) = [e for e in metadata.entry_points(group="recognize") if e.name == "sam"]
    assert entry.value == "recognize_sam.plugin" and entry.dist.name == "recognize-sam"


def test_stage_and_model_cards_are_registered():
    plugins.reset()
    assert plugins.get_stage("sam") is Sam and Sam.kind == "segmenter"
    cards = plugins.model_cards()
    expected = {
        "sam_vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "sam_vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "sam_vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    }
    for name, url in expected.items():
        (file,) = cards[name].files
        assert file.url == url and file.filename == url.rsplit("/", 1)[1]
    info = next(i for i in plugins.plugin_infos() if i.name == "recognize-sam")
    assert info.stages == ["sam"] and sorted(info.models) == sorted(expected) and not info.builtin


def test_stage_declares_the_checkpoint_it_needs():
    assert [(r.card, r.filename) for r in Sam().model_files()] == [("sam_vit_h", "sam_vit_h_4b8939.pth")]
    assert Sam(checkpoint="/weights/sam.pth").model_files() == []  # a local file: nothing to download
    assert Sam(weights="random").model_files() == []
