"""The tagger a data-engine stage uses to judge crops, and what every region stage shares.

The region stages are thin: the logic lives in the modules beside this one. What they add is the tagger and the Frame
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

from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import Field

from recognize.capabilities import ImageScoreEmbedder, ImageScorer, missing_capabilities
from recognize.data_engine.confirm import (
    ScoreFn,
)
from recognize.data_engine.crop_embeddings import crop_embeddings
from recognize.errors import RecognizeError
from recognize.hub import FileRef
from recognize.stage import Device, Stage, StageParams

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


# -- the tagger a region stage uses -----------------------------------------------------------


class TaggerUser(Stage):
    """Base of stages that run a tagger stage on crops (its model shared with the tagging stage)."""

    #: what the tagger stage must offer this stage (`recognize.capabilities` protocols)
    needs: ClassVar[tuple[type, ...]] = (ImageScorer,)

    def __init__(self, params: StageParams | dict[str, Any] | None = None, **kwargs: Any) -> None:
        instance = kwargs.pop("tagger", None) if isinstance(kwargs.get("tagger"), Stage) else None
        if instance is not None:
            kwargs["tagger"] = instance.name
            kwargs["tagger_with"] = instance.params.model_dump(exclude_unset=True)
        super().__init__(params, **kwargs)
        self._tagger: Stage | None = instance
        if instance is None:  # a typo in tagger_with fails here, not when the first crop is judged
            from recognize import plugins

            plugins.get_stage(self.params.tagger).Params.model_validate(self.params.tagger_with)

    @property
    def tagger(self) -> Stage:
        """The tagger stage instance (built from `tagger` / `tagger_with` on first use)."""
        if self._tagger is None:
            from recognize import plugins

            stage = plugins.get_stage(self.params.tagger)(self.params.tagger_with)
            lacking = missing_capabilities(stage, self.needs)
            if lacking:
                raise RecognizeError(
                    f"{self.name}: stage {self.params.tagger!r} is not a tagger this stage can use (it is no "
                    f"{' / '.join(lacking)}); use a tagger stage such as ram or ram_plus"
                )
            # this stage's device (the pipeline's unless set here) and batch size reach the inner
            # tagger, unless `tagger_with` sets its own
            stage.apply_defaults(device=self.params.device, batch_size=self.params.batch_size)
            self._tagger = stage
        return self._tagger

    def model_files(self) -> list[FileRef]:
        """The tagger's files (it judges the crops)."""
        return self.tagger.model_files()

    def apply_defaults(self, **defaults: Any) -> None:
        super().apply_defaults(**defaults)
        if self._tagger is not None:
            self._tagger.apply_defaults(device=self.params.device, batch_size=self.params.batch_size)


def tagger_scorer(tagger: Any, threshold: float | None = None) -> ScoreFn:
    """A `regions.ScoreFn` from a tagger stage: its score of each region's tag on the crop.

    The threshold is the tagger's own per-class threshold (the one it tags images with), or
    `threshold` for every tag. A tag outside the tagger's vocabulary scores NaN (cannot judge).
    When a name has several classes (Tag2Text repeats names) the one farthest above its threshold counts.
    Where a `region_outliers` stage will embed the same crops with this tagger, the crops' embeddings
    come from the same encoding and are kept for it (`recognize.data_engine.crop_embeddings`).
    """

    def score(crops: list[np.ndarray], tags: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(tagger, ImageScoreEmbedder) and crop_embeddings.wanted(tagger):
            scores, embeddings = tagger.score_and_embed_images(crops)
            crop_embeddings.remember(tagger, crops, embeddings)
        else:
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


class TaggerParams(StageParams):
    tagger: str = Field("ram_plus", description="the tagger stage that judges crops (ram, ram_plus, tag2text, ...)")
    tagger_with: dict[str, Any] = Field(
        default_factory=dict,
        description="the tagger's parameters; the same as the tagging stage's `with:` shares its model",
    )
    padding: float = Field(0.1, ge=0.0, le=10.0,
                           description="context around each box, as a fraction of its size per side")
    device: Device = "auto"
    batch_size: int = Field(8, ge=1, le=4096)

    def nested_stages(self) -> dict[str, tuple[str, str]]:
        return {"tagger_with": ("tagger", self.tagger)}


# -- region_confirm ---------------------------------------------------------------------------

