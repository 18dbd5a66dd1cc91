"""The `tags_jsonl` output: one JSON line per image with its final tags and what was dropped."""

from __future__ import annotations

import json

from recognize import plugins
from recognize.frame import Drop, Tag
from recognize.outputs.tags_jsonl import TagsJsonl


def test_tags_jsonl_lines(tmp_path, frame_factory):
    a, b = frame_factory("a"), frame_factory("sub/b", seed=1)
    a.dropped.append(Drop(item="tag", tag="cat", stage="region_confirm", reason="all regions rejected", value=0.1))
    b.tags.append(Tag(name="frisbee", source="merge_tags"))
    b.caption = None
    assert plugins.get_stage("tags_jsonl") is TagsJsonl
    TagsJsonl().finish([a, b], tmp_path)
    first, second = (json.loads(line) for line in (tmp_path / "tags.jsonl").read_text(encoding="utf-8").splitlines())
    assert first["image"] == "a.jpg" and second["image"] == "sub/b.jpg"
    assert first["tags"] == ["dog", "ball", "grass"] and (first["width"], first["height"]) == (80, 60)
    assert first["tag_details"][0] == {"name": "dog", "name_zh": "狗", "score": 0.93}
    assert first["regions"] == 3 and first["caption"] == "a dog next to a ball on the grass"
    assert first["dropped"] == [{"item": "tag", "tag": "cat", "stage": "region_confirm",
                                 "reason": "all regions rejected", "value": 0.1}]
    assert second["tag_details"][-1] == {"name": "frisbee", "source": "merge_tags"} and "caption" not in second


def test_tags_jsonl_image_root_and_options(tmp_path, frame_factory):
    frame = frame_factory("a")
    TagsJsonl(filename="clean.jsonl", image_root="/data", include_dropped=False).finish([frame], tmp_path)
    line = json.loads((tmp_path / "clean.jsonl").read_text())
    assert line["image"] == "in/a.jpg" and "dropped" not in line
