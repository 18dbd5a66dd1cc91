"""`region_confirm` (image scope): keep a region only when the tagger confirms its tag on its crop."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field

from recognize.data_engine.confirm import (
    RegionCheck,
    TagPolicy,
    confirm_many,
    tags_without_confirmed_region,
)
from recognize.data_engine.tagger_access import (
    Fraction,
    TaggerParams,
    TaggerUser,
    tagger_scorer,
)
from recognize.frame import Drop, Frame, Region
from recognize.stage import StageKind, StageParams


class RegionConfirmParams(TaggerParams):
    threshold: Fraction | None = Field(
        None, description="confirm when the crop's score exceeds this (default: the tagger's per-class thresholds)"
    )
    unknown_tags: Literal["keep", "drop"] = Field(
        "keep", description="regions whose tag the tagger does not know (e.g. a given tag outside its vocabulary)"
    )
    drop_tags: TagPolicy = Field(
        "none",
        description="image tags to drop: none; rejected (all its regions rejected); "
        "unconfirmed (also tags never localized)",
    )


class RegionConfirm(TaggerUser):
    """Re-check each region: keep it only if the tagger predicts its tag on the region's crop."""

    name: ClassVar[str] = "region_confirm"
    kind: ClassVar[StageKind] = "filter"
    Params: ClassVar[type[StageParams]] = RegionConfirmParams
    #: the crops' embeddings come with their scores, kept for a later region_outliers of the same
    #: tagger in the pipeline (`recognize.data_engine.crop_embeddings`)
    gives_crop_embeddings: ClassVar[bool] = True

    def load(self) -> None:
        self.tagger.ensure_loaded()

    def process(self, frames: list[Frame]) -> list[Frame]:
        p = self.params
        scorer = tagger_scorer(self.tagger, p.threshold)
        # every crop of the batch goes through the tagger together: one forward per `batch_size` crops;
        # a frame with no region has nothing to crop, so its image is not decoded
        located = [frame for frame in frames if frame.regions]
        all_checks = confirm_many(
            [(frame.image, frame.regions) for frame in located], scorer, p.padding, p.batch_size, p.unknown_tags
        )
        checks_of = {id(frame): checks for frame, checks in zip(located, all_checks)}
        for frame in frames:
            self._apply(frame, checks_of.get(id(frame), []))
        return frames

    def _apply(self, frame: Frame, checks: Sequence[RegionCheck]) -> None:
        kept: list[Region] = []
        for region, check in zip(frame.regions, checks):
            if check.keep:
                if check.score is not None:
                    region.meta["confirm_score"] = round(check.score, 6)
                kept.append(region)
            else:
                frame.dropped.append(
                    Drop(item="region", tag=region.tag, stage=self.name, reason=check.reason or "rejected",
                         value=check.score, box=region.box)
                )
        frame.regions = kept
        drop = tags_without_confirmed_region(frame.tag_names, checks, self.params.drop_tags)
        if drop:
            best: dict[str, float] = {}
            for check in checks:
                if check.score is not None:
                    best[check.tag] = max(best.get(check.tag, -math.inf), check.score)
            for tag in frame.tags:
                if tag.name in drop:
                    frame.dropped.append(Drop(item="tag", tag=tag.name, stage=self.name, reason=drop[tag.name],
                                              value=best.get(tag.name)))
            frame.tags = [t for t in frame.tags if t.name not in drop]


# -- region_outliers --------------------------------------------------------------------------


