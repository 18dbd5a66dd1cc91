"""Tags given with images: merging, sidecars, captions files."""

from __future__ import annotations

import json

import pytest

from recognize.data_engine import (
    CaptionsFile,
    merge_tags,
    read_sidecar,
    vocabulary_index,
)
from recognize.errors import RecognizeError
from recognize.frame import Tag

# -- merging and captions --------------------------------------------------------------------


def test_merge_tags_is_a_case_insensitive_union():
    predicted = [Tag(name="dog", score=0.9, index=3, source="ram"), Tag(name="grass", score=0.8, source="ram")]
    merged, added = merge_tags(predicted, ["Dog", " red   ball ", "frisbee", "", "frisbee"], "merge_tags",
                               vocabulary=["cat", "Frisbee", "dog"])
    assert [t.name for t in merged] == ["dog", "grass", "red ball", "Frisbee"]
    assert added == ["red ball", "Frisbee"]
    assert merged[0].score == 0.9  # predicted tags are untouched
    assert merged[3].index == 1 and merged[3].source == "merge_tags" and merged[2].index is None
    # a prebuilt index (one per run, not per image) merges the same
    again = merge_tags(predicted, ["Dog", " red   ball ", "frisbee", "", "frisbee"], "merge_tags",
                       vocabulary=vocabulary_index(["cat", "Frisbee", "dog"]))
    assert again == (merged, added)


VOCAB = ["dog", "hot dog", "hot", "man", "person", "bus", "berry", "t-shirt", "glass", "glasses", "knife",
         "ice cream", "cream", "sofa", "tomato", "box"]


def test_read_sidecar_txt_and_json(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"")
    assert read_sidecar(image) is None
    (tmp_path / "a.txt").write_text("dog, red ball\ngrass\n\n", encoding="utf-8")
    given = read_sidecar(image)
    assert given.tags == ["dog", "red ball", "grass"] and given.origin.endswith("a.txt")
    (tmp_path / "a.json").write_text(json.dumps({"tags": "cat, sky", "caption": "a cat under the sky"}))
    given = read_sidecar(image)
    assert given.tags == ["dog", "red ball", "grass", "cat", "sky"]
    assert given.captions == ["a cat under the sky"]
    (tmp_path / "a.txt").unlink()
    (tmp_path / "a.json").write_text(json.dumps(["tree", "house"]))
    assert read_sidecar(image).tags == ["tree", "house"]
    (tmp_path / "a.json").write_text("{broken")
    with pytest.raises(RecognizeError, match="a.json: not valid JSON"):
        read_sidecar(image)
    (tmp_path / "a.json").write_text(json.dumps({"tags": [1, 2]}))
    with pytest.raises(RecognizeError, match="tags must be"):
        read_sidecar(image)


def test_captions_file_matches_by_path_and_name(tmp_path):
    (tmp_path / "img" / "sub").mkdir(parents=True)
    lines = [
        {"image": "img/a.jpg", "caption": "a dog"},
        {"image": "img/a.jpg", "caption": "a dog on grass", "tags": ["ball"]},
        {"file_name": "b.png", "captions": ["two cats", "cats"]},
        {"image": str(tmp_path / "img" / "sub" / "c.jpg"), "text": "a bus"},
    ]
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    captions = CaptionsFile(path)
    assert len(captions) == 3
    a = captions.find(str(tmp_path / "img" / "a.jpg"), "a")
    assert a.captions == ["a dog", "a dog on grass"] and a.tags == ["ball"]
    assert captions.find(str(tmp_path / "elsewhere" / "b.png"), "b").captions == ["two cats", "cats"]
    assert captions.find(str(tmp_path / "img" / "sub" / "c.jpg"), "sub/c").captions == ["a bus"]
    assert captions.find(str(tmp_path / "img" / "d.jpg"), "d") is None


def test_captions_file_errors_name_the_line(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "x"}\nnot json\n', encoding="utf-8")
    with pytest.raises(RecognizeError, match=r"captions.jsonl:2: not a JSON object"):
        CaptionsFile(path)
    path.write_text('{"caption": "x"}\n', encoding="utf-8")
    with pytest.raises(RecognizeError, match=r"captions.jsonl:1: no image name"):
        CaptionsFile(path)
    with pytest.raises(RecognizeError, match="no such captions file"):
        CaptionsFile(tmp_path / "missing.jsonl")
