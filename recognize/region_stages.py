"""The data engine's stages: `merge_tags`, `region_confirm` (image scope), `region_outliers` (dataset scope).

They are thin: the logic lives in `recognize.regions`. What they add is the tagger and the Frame
bookkeeping. Every region or tag they remove goes to `frame.dropped` as a `Drop` naming the stage,
the reason and the number behind it (the crop's tagger score, or its distance to the cluster centre),
so a cleaned dataset can be audited (`data_engine_report`).

The tagger: `tagger` names a registered tagger stage (default `ram_plus`) and `tagger_with` its
parameters. Tagger stages take their model from `recognize.stage.shared_models`, keyed by weights,
device and dtype, so giving the same `with:` as the recipe's tagging stage (a YAML anchor, see
`recipes/data_engine.yaml`) re-uses the very model instance that tagged the images. In Python a tagger
stage instance may be passed instead: `RegionConfirm(tagger=ram_stage)`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from recognize.errors import RecognizeError
from recognize.frame import Drop, Frame, Region
from recognize.regions import (
    REASON_ALL_REJECTED,
    REASON_OUTLIER,
    REASON_OUTSIDE,
    CaptionParser,
    CaptionsFile,
    RegionCheck,
    ScoreFn,
    TagPolicy,
    confirm_many,
    crop_region,
    find_outliers,
    clean_tag_name,
    merge_tags,
    read_sidecar,
    tags_without_confirmed_region,
    vocabulary_index,
)
from recognize.stage import Device, Stage, StageParams

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


# -- the tagger a region stage uses -----------------------------------------------------------


class TaggerUser(Stage):
    """Base of stages that run a tagger stage on crops (its model shared with the tagging stage)."""

    #: what the tagger stage must offer this stage
    needs: ClassVar[tuple[str, ...]] = ("score_images",)

    def __init__(self, params: StageParams | dict[str, Any] | None = None, **kwargs: Any) -> None:
        instance = kwargs.pop("tagger", None) if isinstance(kwargs.get("tagger"), Stage) else None
        if instance is not None:
            kwargs["tagger"] = instance.name
            kwargs["tagger_with"] = instance.params.model_dump(exclude_unset=True)
        super().__init__(params, **kwargs)
        self._tagger: Stage | None = instance

    @property
    def tagger(self) -> Stage:
        """The tagger stage instance (built from `tagger` / `tagger_with` on first use)."""
        if self._tagger is None:
            from recognize import plugins

            stage = plugins.get_stage(self.params.tagger)(self.params.tagger_with)
            for method in self.needs:
                if not callable(getattr(stage, method, None)):
                    raise RecognizeError(
                        f"{self.name}: stage {self.params.tagger!r} is not a tagger with {method}(); "
                        "use a tagger stage such as ram or ram_plus"
                    )
            # this stage's device (the pipeline's unless set here) and batch size reach the inner
            # tagger, unless `tagger_with` sets its own
            stage.apply_defaults(device=self.params.device, batch_size=self.params.batch_size)
            self._tagger = stage
        return self._tagger

    def apply_defaults(self, **defaults: Any) -> None:
        super().apply_defaults(**defaults)
        if self._tagger is not None:
            self._tagger.apply_defaults(device=self.params.device, batch_size=self.params.batch_size)


def tagger_scorer(tagger: Any, threshold: float | None = None) -> ScoreFn:
    """A `regions.ScoreFn` from a tagger stage: its score of each region's tag on the crop.

    The threshold is the tagger's own per-class threshold (the one it tags images with), or
    `threshold` for every tag. A tag outside the tagger's vocabulary scores NaN (cannot judge).
    When a name has several classes (Tag2Text repeats names) the one farthest above its threshold counts.
    """

    def score(crops: list[np.ndarray], tags: list[str]) -> tuple[np.ndarray, np.ndarray]:
        scores = tagger.score_images(crops)
        vocab = tagger.vocabulary
        values = np.full(len(tags), np.nan)
        limits = np.full(len(tags), np.nan)
        for row, (i, tag) in zip(scores, enumerate(tags)):
            try:
                indices = vocab.indices_of(tag)
            except RecognizeError:
                continue
            best = max(indices, key=lambda c: float(row[c]) - float(vocab.thresholds[c]))
            values[i] = float(row[best])
            limits[i] = float(vocab.thresholds[best]) if threshold is None else threshold
        return values, limits

    return score


class _TaggerParams(StageParams):
    tagger: str = Field("ram_plus", description="the tagger stage that judges crops (ram, ram_plus, tag2text, ...)")
    tagger_with: dict[str, Any] = Field(
        default_factory=dict,
        description="the tagger's parameters; the same as the tagging stage's `with:` shares its model",
    )
    padding: float = Field(0.1, ge=0.0, description="context around each box, as a fraction of its size per side")
    device: Device = "auto"
    batch_size: int = Field(8, ge=1)


# -- region_confirm ---------------------------------------------------------------------------


class RegionConfirmParams(_TaggerParams):
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
    kind: ClassVar[str] = "filter"
    Params: ClassVar[type[StageParams]] = RegionConfirmParams

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


class RegionOutliersParams(_TaggerParams):
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
            from recognize.clip_images import ClipImageEncoder
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


class MergeTagsParams(StageParams):
    sidecar: bool = Field(True, description="read `<image>.txt` / `<image>.json` beside each image")
    captions: str | None = Field(None, description="captions JSONL: {\"image\": ..., \"caption\": ...} per line")
    image_root: str | None = Field(None, description="folder the JSONL's image paths are relative to "
                                   "(default: the JSONL's folder)")
    parse_captions: bool = Field(True, description="add the vocabulary tags found in the given captions")
    parse_frame_caption: bool = Field(False, description="also parse the caption already on the frame "
                                      "(e.g. from tag2text_caption)")
    vocabulary: str | None = Field(None, description="tag list file for caption parsing "
                                   "(default: the official RAM tag list)")
    only_vocabulary: bool = Field(False, description="ignore given tags that are not in the vocabulary")
    set_caption: bool = Field(True, description="give a frame without a caption the first given caption")


class MergeTags(Stage):
    """The union of the predicted tags and the tags given with each image (sidecars, captions JSONL)."""

    name: ClassVar[str] = "merge_tags"
    kind: ClassVar[str] = "filter"
    Params: ClassVar[type[StageParams]] = MergeTagsParams

    def __init__(self, params: StageParams | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._captions: CaptionsFile | None = None
        self._names: list[str] | None = None
        self._index: dict[str, tuple[int, str]] | None = None  # case-folded name -> (class index, spelling)
        self._parser: CaptionParser | None = None

    def load(self) -> None:
        if self.params.captions is not None:
            self._captions = CaptionsFile(self.params.captions, self.params.image_root)
        if self.params.vocabulary is not None or self.params.only_vocabulary:
            self.vocabulary_names()

    def vocabulary_names(self) -> list[str]:
        """The vocabulary, read on first need (no tag list is fetched when nothing needs one)."""
        if self._names is None:
            from recognize.hub import resolve_path
            from recognize.taggers.vocabulary import read_tag_list

            given = self.params.vocabulary
            path = Path(given).expanduser() if given else resolve_path(None, "ram-tag-lists", "ram_tag_list.txt")
            self._names = [name.strip() for name in read_tag_list(path)]  # positions are class indices
            self._index = vocabulary_index(self._names)
            self._parser = CaptionParser(self._names)
        return self._names

    def given(self, frame: Frame) -> tuple[list[str], list[str], list[str]]:
        """(tags, captions, origins) given with `frame`."""
        tags: list[str] = []
        captions: list[str] = []
        origins: list[str] = []
        found = [read_sidecar(frame.source)] if self.params.sidecar and not frame.source.startswith("<") else []
        if self._captions is not None:
            found.append(self._captions.find(frame.source, frame.name))
        for item in found:
            if item is not None:
                tags.extend(item.tags)
                captions.extend(item.captions)
                origins.append(item.origin or "")
        return tags, captions, origins

    def process(self, frames: list[Frame]) -> list[Frame]:
        p = self.params
        for frame in frames:
            tags, captions, origins = self.given(frame)
            texts = list(captions) if p.parse_captions else []
            if p.parse_frame_caption and frame.caption:
                texts.append(frame.caption)
            from_captions: list[str] = []
            if texts:
                self.vocabulary_names()
                for text in texts:
                    from_captions.extend(self._parser.parse(text))
            candidates = tags + from_captions
            if p.only_vocabulary:
                self.vocabulary_names()
                candidates = [c for c in candidates if clean_tag_name(c).casefold() in self._index]
            frame.tags, added = merge_tags(frame.tags, candidates, self.name, self._index)
            if p.set_caption and frame.caption is None and captions:
                frame.caption = captions[0]
            if tags or captions:
                frame.meta[self.name] = {"given": tags, "from_captions": list(dict.fromkeys(from_captions)),
                                         "added": added, "origins": origins}
        return frames


STAGES = (MergeTags, RegionConfirm, RegionOutliers)
