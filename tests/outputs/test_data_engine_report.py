"""The `data_engine_report` output: per-tag kept / dropped counts and reasons, as JSON and Markdown."""

from __future__ import annotations

import json

from recognize import plugins
from recognize.frame import Drop, Frame, Region, Tag
from recognize.outputs.data_engine_report import DataEngineReport, build_report


def frames() -> list[Frame]:
    a = Frame(source="/d/a.jpg", name="a", width=10, height=10, tags=[Tag(name="dog"), Tag(name="ball")],
              regions=[Region(box=(0, 0, 5, 5), tag="dog"), Region(box=(5, 5, 9, 9), tag="dog")],
              dropped=[Drop(item="region", tag="ball", stage="region_confirm", reason="not confirmed on its crop",
                            value=0.21, box=(1, 1, 2, 2)),
                       Drop(item="region", tag="dog", stage="region_outliers", reason="outlier", value=0.9)])
    b = Frame(source="/d/b.jpg", name="b", width=10, height=10, tags=[Tag(name="dog")],
              regions=[Region(box=(0, 0, 5, 5), tag="dog")],
              dropped=[Drop(item="region", tag="ball", stage="region_confirm", reason="not confirmed on its crop",
                            value=0.05),
                       Drop(item="tag", tag="ball", stage="region_confirm", reason="all regions rejected", value=0.05),
                       Drop(item="region", tag="ball", stage="region_confirm", reason="box outside the image")])
    return [a, b]


def test_report_counts_and_reasons():
    report = build_report(frames())
    assert report["images"] == 2
    assert report["totals"] == {"tags_kept": 3, "regions_kept": 3, "tags_dropped": 1, "regions_dropped": 4}
    dog, ball = report["tags"]
    assert (dog["tag"], dog["images"], dog["regions_kept"], dog["regions_dropped"]) == ("dog", 2, 3, 1)
    assert (ball["tag"], ball["images"], ball["regions_kept"], ball["regions_dropped"],
            ball["images_dropped_tag"]) == ("ball", 1, 0, 3, 1)
    assert ball["reasons"][0] == {"stage": "region_confirm", "item": "region", "reason": "not confirmed on its crop",
                                  "count": 2, "min_value": 0.05, "max_value": 0.21}
    outside = next(r for r in ball["reasons"] if r["reason"] == "box outside the image")
    assert outside["count"] == 1 and "min_value" not in outside


def test_report_files(tmp_path):
    assert plugins.get_stage("data_engine_report") is DataEngineReport
    DataEngineReport().finish(frames(), tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data == json.loads(json.dumps(build_report(frames())))
    md = (tmp_path / "report.md").read_text()
    assert "2 images: 3 image tags and 3 regions kept; 1 image tags and 4 regions dropped." in md
    assert "| dog | 2 | 3 | 1 | 0 |" in md and "| ball | 1 | 0 | 3 | 1 |" in md
    assert "| ball | region_confirm | region | not confirmed on its crop | 2 | 0.05 .. 0.21 |" in md
    DataEngineReport(filename="clean").finish([], tmp_path)
    assert json.loads((tmp_path / "clean.json").read_text())["tags"] == []
    assert "0 images" in (tmp_path / "clean.md").read_text()
