"""`region_outliers` (dataset scope): per tag, drop the crops farthest from their K-Means++ centres."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from recognize.data_engine.crops import crop_region
from recognize.data_engine.outliers import find_outliers
from recognize.data_engine.reasons import (
    REASON_ALL_REJECTED,
    REASON_OUTLIER,
    REASON_OUTSIDE,
)
from recognize.data_engine.tagger_access import (
    Fraction,
    TaggerParams,
    TaggerUser,
)
from recognize.frame import Drop, Frame, Region
from recognize.stage import StageParams


class RegionOutliersParams(TaggerParams):
    embedder: Literal["tagger", "clip"] = Field("tagger", description="crop features: the tagger's image "
                                                "embedding, or CLIP image features")
    clip_model: str = Field("ViT-B-16", description="open_clip architecture when embedder is clip")
    clip_checkpoint: str | None = Field(None, description="CLIP weights (default: OpenAI ViT-B-16 from the hub)")
    k: int = Field(3, ge=1, description="K-Means++ clusters per tag (fewer when a tag has fewer crops)")
    drop_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of each tag's crops dropped")
    min_cluster_fraction: Fraction = Field(
        0.1, description="clusters smaller than this share of a tag's crops are measured from the large ones"
    )
    n_init: int = Field(4, ge=1, description="K-Means++ restarts")
    seed: int = 0
    drop_tags: Literal["none", "rejected"] = Field(
        "none", description="rejected: also drop an image's tag when all its regions were outliers"
    )


class RegionOutliers(TaggerUser):
    """Per tag over the whole dataset: cluster the crops and drop those farthest from their centres."""

    name: ClassVar[str] = "region_outliers"
    kind: ClassVar[str] = "filter"
    scope: ClassVar[str] = "dataset"
    needs: ClassVar[tuple[str, ...]] = ("embed_images",)
    Params: ClassVar[type[StageParams]] = RegionOutliersParams

    def __init__(self, params: StageParams | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._clip = None

    def load(self) -> None:
        if self.params.embedder == "tagger":
            self.tagger.ensure_loaded()
        else:
            from recognize.data_engine.clip_images import ClipImageEncoder
            from recognize.stage import resolve_device

            self._clip = ClipImageEncoder.load(self.params.clip_model, self.params.clip_checkpoint,
                                               resolve_device(self.params.device))
            self._clip.batch_size = self.params.batch_size

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        if self._clip is not None:
            return np.asarray(self._clip.embed(crops), dtype=np.float32)
        return np.asarray(self.tagger.embed_images(crops), dtype=np.float32)

    def process(self, frames: list[Frame]) -> list[Frame]:
        p = self.params
        keys: dict[str, list[tuple[int, int]]] = defaultdict(list)  # tag -> (frame, region) of each crop
        chunks: dict[str, list[np.ndarray]] = defaultdict(list)
        outside: set[tuple[int, int]] = set()
        pending: list[tuple[str, np.ndarray]] = []

        def flush() -> None:
            if pending:
                vectors = self.embed([crop for _, crop in pending])
                for (tag, _), vector in zip(pending, vectors):
                    chunks[tag].append(vector)
                pending.clear()

        for f, frame in enumerate(frames):
            if not frame.regions:
                continue
            was_loaded = frame._image is not None
            image = frame.image
            for r, region in enumerate(frame.regions):
                try:
                    crop = crop_region(image, region.box, p.padding)
                except ValueError:
                    outside.add((f, r))
                    continue
                keys[region.tag].append((f, r))
                pending.append((region.tag, crop))
                if len(pending) >= p.batch_size:
                    flush()
            if not was_loaded:
                frame.release_image()  # a million-image run must not keep every image decoded
        flush()

        embeddings = {tag: np.stack(vectors) for tag, vectors in chunks.items()}
        results = find_outliers(embeddings, p.k, p.drop_fraction, p.seed, p.n_init, p.min_cluster_fraction)
        verdict: dict[tuple[int, int], tuple[bool, float | None]] = {key: (False, None) for key in outside}
        for tag, result in results.items():
            dropped = set(result.dropped)
            for i, key in enumerate(keys[tag]):
                verdict[key] = (i not in dropped, float(result.distances[i]))
        for f, frame in enumerate(frames):
            self._apply(f, frame, verdict)
        return frames

    def _apply(self, f: int, frame: Frame, verdict: dict[tuple[int, int], tuple[bool, float | None]]) -> None:
        kept: list[Region] = []
        lost: set[str] = set()
        for r, region in enumerate(frame.regions):
            keep, distance = verdict.get((f, r), (True, None))
            if keep:
                if distance is not None:
                    region.meta["outlier_distance"] = round(distance, 6)
                kept.append(region)
                continue
            lost.add(region.tag)
            reason = REASON_OUTLIER if distance is not None else REASON_OUTSIDE
            frame.dropped.append(Drop(item="region", tag=region.tag, stage=self.name, reason=reason,
                                      value=distance, box=region.box))
        frame.regions = kept
        if self.params.drop_tags == "rejected":
            gone = lost - {region.tag for region in kept}
            for tag in frame.tags:
                if tag.name in gone:
                    frame.dropped.append(Drop(item="tag", tag=tag.name, stage=self.name, reason=REASON_ALL_REJECTED))
            frame.tags = [t for t in frame.tags if t.name not in gone]


# -- merge_tags -------------------------------------------------------------------------------


