"""`region_outliers` (dataset scope): per tag, drop the crops farthest from their K-Means++ centres."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from recognize.capabilities import ImageEmbedder
from recognize.data_engine.crop_embeddings import crop_embeddings
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
from recognize.engines.partition import run_partitioned
from recognize.frame import Drop, Frame, Region
from recognize.hub import FileRef
from recognize.stage import StageKind, StageParams, StageScope


class RegionOutliersParams(TaggerParams):
    embedder: Literal["tagger", "clip"] = Field("tagger", description="crop features: the tagger's image "
                                                "embedding, or CLIP image features")
    clip_model: str = Field("ViT-B-16", description="open_clip architecture when embedder is clip")
    clip_checkpoint: str | None = Field(None, description="CLIP weights (default: OpenAI ViT-B-16 from the hub)")
    k: int = Field(3, ge=1, le=1000, description="K-Means++ clusters per tag (fewer when a tag has fewer crops)")
    drop_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of each tag's crops dropped")
    min_cluster_fraction: Fraction = Field(
        0.1, description="clusters smaller than this share of a tag's crops are measured from the large ones"
    )
    n_init: int = Field(4, ge=1, le=100, description="K-Means++ restarts")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of K-Means++")
    drop_tags: Literal["none", "rejected"] = Field(
        "none", description="rejected: also drop an image's tag when all its regions were outliers"
    )


class RegionOutliers(TaggerUser):
    """Per tag over the whole dataset: cluster the crops and drop those farthest from their centres."""

    name: ClassVar[str] = "region_outliers"
    kind: ClassVar[StageKind] = "filter"
    scope: ClassVar[StageScope] = "dataset"
    needs: ClassVar[tuple[type, ...]] = (ImageEmbedder,)
    Params: ClassVar[type[StageParams]] = RegionOutliersParams

    def __init__(self, params: StageParams | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._clip = None

    def takes_crop_embeddings(self) -> bool:
        """Whether this stage takes the crop embeddings an earlier region_confirm with the same tagger
        computed (`recognize.data_engine.crop_embeddings`): when it embeds with the tagger."""
        return self.params.embedder == "tagger"

    def model_files(self) -> list[FileRef]:
        """The tagger's files, or CLIP ViT-B/16's weights when `embedder: clip` uses the hub's."""
        p = self.params
        if p.embedder == "tagger":
            return super().model_files()
        return [FileRef("clip-vit-b-16", "ViT-B-16.pt")] if p.clip_checkpoint is None else []

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
        found = crop_embeddings.take(self.tagger, crops)  # those region_confirm encoded already
        missing = [i for i, vector in enumerate(found) if vector is None]
        if len(missing) == len(crops):
            return np.asarray(self.tagger.embed_images(crops), dtype=np.float32)
        if missing:
            computed = np.asarray(self.tagger.embed_images([crops[i] for i in missing]), dtype=np.float32)
            for i, vector in zip(missing, computed):
                found[i] = vector
        return np.stack(found).astype(np.float32, copy=False)

    # -- partition contract: per tag, so the Ray engine clusters each tag on a worker ----------
    partitioned: ClassVar[bool] = True

    def process(self, frames: list[Frame]) -> list[Frame]:
        try:
            return run_partitioned(self, frames)
        finally:
            if self.params.embedder == "tagger":
                crop_embeddings.forget(self.tagger)  # crops region_confirm rejected: nobody asks for them

    def region_features(self, frames: list[Frame]) -> list[list[tuple[int, str, np.ndarray]]]:
        """Per frame, `(region index, tag, embedding)` of each region whose crop lies inside the
        image; crops are embedded `batch_size` at a time across the given frames."""
        p = self.params
        features: list[list[tuple[int, str, np.ndarray]]] = [[] for _ in frames]
        pending: list[tuple[int, int, str, np.ndarray]] = []

        def flush() -> None:
            if pending:
                vectors = self.embed([crop for *_, crop in pending])
                for (f, r, tag, _), vector in zip(pending, vectors):
                    features[f].append((r, tag, np.asarray(vector, dtype=np.float32)))
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
                    continue  # outside the image: no item, so `apply_results` drops it as such
                pending.append((f, r, region.tag, crop))
                if len(pending) >= p.batch_size:
                    flush()
            if not was_loaded:
                frame.release_image()  # a million-image run must not keep every image decoded
        flush()
        return features

    def partition(self, frames: list[Frame]) -> list[list[tuple[str, tuple[int, np.ndarray]]]]:
        return [[(tag, (r, vector)) for r, tag, vector in found] for found in self.region_features(frames)]

    def process_group(self, key: str, items: list[tuple[int, np.ndarray]]) -> list[tuple[int, bool, float]]:
        """One tag's crops: K-Means++ and the drop decision of each, as `(region index, keep, distance)`.

        K-Means runs on one thread: its float sums then do not depend on the machine's thread count,
        so every engine and machine gives the same clusters, and tags run in parallel across workers
        instead. (It is also far faster for the small groups most tags have: OpenMP start-up costs
        ~40 ms per fit on a busy 2-core machine, against ~2 ms of work.)"""
        from threadpoolctl import threadpool_limits

        p = self.params
        embeddings = np.stack([vector for _, vector in items])
        with threadpool_limits(limits=1):
            result = find_outliers({key: embeddings}, p.k, p.drop_fraction, p.seed, p.n_init,
                                   p.min_cluster_fraction)[key]
        dropped = set(result.dropped)
        return [(r, i not in dropped, float(result.distances[i])) for i, (r, _) in enumerate(items)]

    def apply_results(self, frame: Frame, results: list[tuple[int, bool, float]]) -> Frame:
        verdict: dict[int, tuple[bool, float | None]] = {r: (keep, distance) for r, keep, distance in results}
        kept: list[Region] = []
        lost: set[str] = set()
        for r, region in enumerate(frame.regions):
            keep, distance = verdict.get(r, (False, None))  # no verdict: its crop was outside the image
            if keep:
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
        return frame


# -- merge_tags -------------------------------------------------------------------------------


