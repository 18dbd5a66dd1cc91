"""The `data_engine_report` output: per tag, what the data engine kept, what it dropped and why.

Written at `finish` from the frames' tags, regions and `dropped` lists (so a resumed run, whose
frames are read back from their JSON, reports the same): `report.json` for tools and `report.md`
for people. Per tag: images that keep it, regions kept, and each (stage, item, reason) that
dropped something, with the count and the range of the number behind it (the crop's tagger score
for `region_confirm`, the distance to the cluster centre for `region_outliers`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from recognize.atomic import write_text
from recognize.frame import Frame
from recognize.outputs.paths import check_plain_name
from recognize.stage import OutputStage, StageParams


class ReportParams(StageParams):
    filename: str = Field("report", description="base name of report.json and report.md")

    @field_validator("filename")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return check_plain_name(value, extra_suffixes=(".json", ".md"))


@dataclass
class _Reason:
    count: int = 0
    low: float | None = None
    high: float | None = None

    def add(self, value: float | None) -> None:
        self.count += 1
        if value is not None:
            self.low = value if self.low is None else min(self.low, value)
            self.high = value if self.high is None else max(self.high, value)


@dataclass
class _TagStats:
    images: int = 0
    regions: int = 0
    drops: dict[tuple[str, str, str], _Reason] = field(default_factory=lambda: defaultdict(_Reason))

    def dropped(self, item: str) -> int:
        return sum(r.count for (_, kind, _), r in self.drops.items() if kind == item)


def build_report(frames: Iterable[Frame]) -> dict[str, Any]:
    """The report dict: totals, then one entry per tag (most regions first, then by name).

    One pass over `frames` (the runner streams them from disk), keeping only counts."""
    stats: dict[str, _TagStats] = defaultdict(_TagStats)
    images = 0
    totals = {"tags_kept": 0, "regions_kept": 0, "tags_dropped": 0, "regions_dropped": 0}
    for frame in frames:
        images += 1
        totals["tags_kept"] += len(frame.tags)
        totals["regions_kept"] += len(frame.regions)
        for name in dict.fromkeys(frame.tag_names):
            stats[name].images += 1
        for region in frame.regions:
            stats[region.tag].regions += 1
        for drop in frame.dropped:
            stats[drop.tag].drops[(drop.stage, drop.item, drop.reason)].add(drop.value)
            totals[f"{drop.item}s_dropped"] += 1

    def entry(tag: str, s: _TagStats) -> dict[str, Any]:
        return {
            "tag": tag,
            "images": s.images,
            "regions_kept": s.regions,
            "regions_dropped": s.dropped("region"),
            "images_dropped_tag": s.dropped("tag"),
            "reasons": [
                {"stage": stage, "item": item, "reason": reason, "count": r.count,
                 **({"min_value": r.low, "max_value": r.high} if r.low is not None else {})}
                for (stage, item, reason), r in sorted(s.drops.items(), key=lambda kv: (-kv[1].count, kv[0]))
            ],
        }

    tags = [entry(tag, s) for tag, s in sorted(stats.items(), key=lambda kv: (-kv[1].regions, -kv[1].images, kv[0]))]
    return {"images": images, "totals": totals, "tags": tags}


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def render_markdown(report: dict[str, Any]) -> str:
    """A readable `report.md`: totals, a table of tags, then every drop reason per tag."""
    t = report["totals"]
    lines = [
        "# Data engine report",
        "",
        (f"{report['images']} images: {t['tags_kept']} image tags and {t['regions_kept']} regions kept; "
         f"{t['tags_dropped']} image tags and {t['regions_dropped']} regions dropped."),
        "",
        "| tag | images | regions kept | regions dropped | image tags dropped |",
        "|---|---:|---:|---:|---:|",
    ]
    for e in report["tags"]:
        lines.append(f"| {e['tag']} | {e['images']} | {e['regions_kept']} | {e['regions_dropped']} "
                     f"| {e['images_dropped_tag']} |")
    dropped = [e for e in report["tags"] if e["reasons"]]
    if dropped:
        lines += ["", "## Why items were dropped", "",
                  "| tag | stage | item | reason | count | value range |", "|---|---|---|---|---:|---|"]
        for e in dropped:
            for r in e["reasons"]:
                span = f"{_num(r.get('min_value'))} .. {_num(r.get('max_value'))}" if "min_value" in r else ""
                lines.append(f"| {e['tag']} | {r['stage']} | {r['item']} | {r['reason']} | {r['count']} | {span} |")
        lines += ["", ("Values: the crop's tagger score for `region_confirm`, the distance to the cluster "
                       "centre for `region_outliers`.")]
    return "\n".join(lines) + "\n"


class DataEngineReport(OutputStage):
    """`report.json` + `report.md`: per tag, kept and dropped counts and the reasons."""

    name: ClassVar[str] = "data_engine_report"
    Params: ClassVar[type[StageParams]] = ReportParams

    def run_files(self) -> list[str]:
        return [self.params.filename + ".json", self.params.filename + ".md"]

    def finish(self, frames: Sequence[Frame], out_dir: Path) -> None:
        report = build_report(frames)
        base = Path(out_dir) / self.params.filename
        write_text(base.with_name(base.name + ".json"), json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        write_text(base.with_name(base.name + ".md"), render_markdown(report))
