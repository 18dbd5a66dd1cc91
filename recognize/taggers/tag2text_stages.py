"""The `tag2text` tagger stage and the `tag2text_caption` captioner stage.

Both use one Tag2Text model in memory (same `recognize.stage.shared_models` key: configuration,
checkpoint, device, dtype), so a recipe that tags and captions loads the weights once.

`tag2text` (kind tagger): the 3429 Tag2Text tags (the list repeats 116 names; a tag's `index` tells
them apart), thresholds 0.68 with 0.7 for person / man / woman, the official `delete_tag_index`
(quarter, back, two, three, four, five, one) unless `delete_tag_index` says otherwise, plus the
common tagger options (global / per-tag thresholds, include / exclude, device, dtype, batch size).

`tag2text_caption` (kind captioner): writes `frame.caption`, generated from
- `tags: predicted`: the tags this model predicts for the image (same rules and options as the
  `tag2text` stage; the official behaviour),
- `tags: frame`: the tags already on the frame (given by the user, or by another tagger),
- `user_tags: "a,b"`: fixed tags, joined as the official `inference_tag2text` does (`"a | b"`).
The tag string used is kept in `frame.meta["caption_tags"]`. Decoding defaults are the official ones
(beam search, 3 beams, max 50 / min 10 tokens counting the 4 prompt tokens, length normalisation of
transformers 4.31); `beam_length_normalization: generated` gives what newer transformers versions
give, `sample: true` nucleus sampling (top_p 0.9, repetition penalty 1.1, `seed` for
reproducibility), `num_beams: 1` greedy decoding. A batch of images is captioned in one pass and each
image from its own tags (the official batched beam search captions every image from image 0's tags;
that bug is not reproduced).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from recognize.errors import ModelFileError
from recognize.frame import Frame
from recognize.hub import FileRef
from recognize.stage import StageKind
from recognize.taggers.tagger_stage import (
    TaggerParams,
    TaggerStage,
    config_asset,
    inference_mode,
)
from recognize.taggers.vocabulary import Vocabulary, read_tag_list

if TYPE_CHECKING:  # pragma: no cover - the model modules import torch: loaded on first use only
    import torch
    from torch import nn

    from recognize.taggers.tag2text import CaptionSettings, Tag2TextConfig

#: the BERT WordPiece vocabulary card (the same as `recognize.taggers.tokenizer`'s, which imports torch)
VOCAB_CARD, VOCAB_FILE = "bert-base-uncased-vocab", "vocab.txt"

CARD = "tag2text_swin_14m"
TAG_LISTS_CARD = "ram-tag-lists"
TAG_LIST_FILE = "tag2text_ori_tag_list.txt"


class Tag2TextParams(TaggerParams):
    delete_tag_index: list[int] | None = Field(
        None, description="class indices never reported; None: the official list (quarter, back, two..one)"
    )


class Tag2TextCaptionParams(Tag2TextParams):
    tags: Literal["predicted", "frame"] = Field(
        "predicted", description="caption from the tags this model predicts, or from the frame's tags"
    )
    user_tags: str | None = Field(None, description="caption from these tags instead ('a,b' -> 'a | b')")
    num_beams: int = Field(3, ge=1, le=64, description="beam width; 1: greedy")
    max_length: int = Field(50, ge=5, le=512, description="longest caption in tokens, the 4 prompt tokens included")
    min_length: int = Field(10, ge=0, le=512, description="shortest caption in tokens, the 4 prompt tokens included")
    sample: bool = Field(False, description="nucleus sampling instead of beam search")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="nucleus size when sampling")
    repetition_penalty: float | None = Field(
        None, gt=0.0, le=100.0, description="None: official (1.0 for beam/greedy, 1.1 when sampling)"
    )
    beam_length_normalization: Literal["official", "generated"] = Field(
        "official",
        description="official: score / full length incl. prompt (transformers 4.31, the reference); "
        "generated: score / generated length (newer transformers)",
    )
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="seed of the sampler")
    vocab: str | None = Field(None, description="BERT vocab.txt (default: bert-base-uncased from the hub)")

    @model_validator(mode="after")
    def _consistent(self) -> Tag2TextCaptionParams:
        if self.min_length > self.max_length:
            raise ValueError(f"min_length {self.min_length} is larger than max_length {self.max_length}")
        if self.user_tags is not None and self.tags == "frame" and "tags" in self.model_fields_set:
            raise ValueError("give either `tags: frame` or `user_tags`, not both")
        return self


class Tag2TextTagger(TaggerStage):
    """Tag2Text tags (Swin-B)."""

    name: ClassVar[str] = "tag2text"
    Params: ClassVar[type[Tag2TextParams]] = Tag2TextParams

    # -- configuration -------------------------------------------------------------------
    def model_config(self) -> Tag2TextConfig:
        key = (self.params.config, self.params.image_size)
        memo = getattr(self, "_config_memo", None)
        if memo is None or memo[0] != key:
            from recognize.taggers.tag2text import Tag2TextConfig

            data = self._config_data()
            if data is None:
                config = Tag2TextConfig.released(self.params.image_size)
            else:
                try:
                    config = Tag2TextConfig.from_fixture_config(data)
                except (KeyError, ValueError, TypeError) as exc:
                    raise ModelFileError(f"{self.params.config}: not a Tag2Text config ({exc})") from None
            self._config_memo = memo = (key, config)
        return memo[1]

    @property
    def image_size(self) -> int:
        return self.model_config().image_size

    def checkpoint_path(self) -> Path:
        from recognize.hub import resolve_path

        return resolve_path(self.params.checkpoint, CARD, f"{CARD}.pth")

    def _config_tag_list(self) -> Path | None:
        if self.params.tag_list is not None or self.params.config is None:
            return None
        return config_asset(Path(self.params.config), (self._config_data() or {}).get("tag_list"))

    def tag_list_path(self) -> Path:
        from recognize.hub import resolve_path

        return self._config_tag_list() or resolve_path(self.params.tag_list, TAG_LISTS_CARD, TAG_LIST_FILE)

    def model_files(self) -> list[FileRef]:
        """The checkpoint and the Tag2Text tag list, each unless a local file is given."""
        refs = [] if self.params.checkpoint else [FileRef(CARD, f"{CARD}.pth")]
        if self.params.tag_list is None and self._config_tag_list() is None:
            refs.append(FileRef(TAG_LISTS_CARD, TAG_LIST_FILE))
        return refs

    # -- TaggerStage hooks ---------------------------------------------------------------
    def model_key(self) -> tuple[Any, ...]:
        return ("tag2text", self.model_config(), str(self.checkpoint_path().resolve()))

    def build_model(self) -> nn.Module:
        from recognize.taggers.checkpoint import load_official
        from recognize.taggers.tag2text import Tag2Text

        model = Tag2Text(self.model_config())
        load_official(model, self.checkpoint_path(), model.key_spec())
        model.tie_weights()
        return model

    def build_vocabulary(self, model: nn.Module) -> Vocabulary:
        names = read_tag_list(self.tag_list_path())
        if len(names) != model.config.num_classes:
            raise ModelFileError(
                f"the tag list has {len(names)} tags but the Tag2Text model has {model.config.num_classes} classes"
            )
        return Vocabulary(names, None, model.config.class_thresholds())

    def deleted_indices(self) -> list[int]:
        if self.params.delete_tag_index is not None:
            return list(self.params.delete_tag_index)
        return list(self.model_config().delete_tag_index)

    def logits(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return model(pixels)

    def embedding(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return model.encode_image(pixels)[:, 0]  # the pooled Swin token (no projection in Tag2Text)

    def logits_and_embedding(self, model: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = model.encode_image(pixels)
        return model.logits(tokens), tokens[:, 0]


def user_tag_string(user_tags: str) -> str:
    """The official `inference_tag2text` rewrite of user tags: every comma becomes `" | "`."""
    return user_tags.replace(",", " | ")


class Tag2TextCaption(Tag2TextTagger):
    """Tag2Text captions, guided by predicted, frame or user-given tags.

    With `tags: predicted` (the default) it also adds the predicted tags to the frame, so one
    stage gives tags and caption from one image encoding; a separate `tag2text` stage is needed
    only to tag without captioning.
    """

    name: ClassVar[str] = "tag2text_caption"
    kind: ClassVar[StageKind] = "captioner"  # type: ignore[assignment]
    Params: ClassVar[type[Tag2TextCaptionParams]] = Tag2TextCaptionParams

    def model_files(self) -> list[FileRef]:
        """The tagger's files and the BERT vocabulary of the caption decoder (unless `vocab` is given)."""
        refs = super().model_files()
        return refs if self.params.vocab else [*refs, FileRef(VOCAB_CARD, VOCAB_FILE)]

    def load(self) -> None:
        super().load()
        from recognize.hub import resolve_path
        from recognize.taggers.tokenizer import CaptionTokenizer

        self.tokenizer = CaptionTokenizer(resolve_path(self.params.vocab, VOCAB_CARD, VOCAB_FILE))

    def settings(self) -> CaptionSettings:
        from recognize.taggers.tag2text import CaptionSettings

        p = self.params
        return CaptionSettings(
            num_beams=p.num_beams,
            max_length=p.max_length,
            min_length=p.min_length,
            sample=p.sample,
            top_p=p.top_p,
            repetition_penalty=p.repetition_penalty,
            length_normalization=p.beam_length_normalization,
            seed=p.seed,
        )

    def tag_strings(self, frames: list[Frame], image_tokens: torch.Tensor) -> list[str]:
        """The `" | "`-joined tags each image is captioned from."""
        if self.params.user_tags is not None:
            return [user_tag_string(self.params.user_tags)] * len(frames)
        if self.params.tags == "frame":
            return [" | ".join(tag.name for tag in frame.tags) for frame in frames]
        # tags: predicted. The captioner also reports the tags it predicted: one Swin pass gives tags and caption
        scores = self.model.logits(image_tokens).float().sigmoid().cpu().numpy()
        predicted = self.tags_for_scores(scores)
        for frame, tags in zip(frames, predicted):
            known = {tag.name for tag in frame.tags}
            frame.tags.extend(tag for tag in tags if tag.name not in known)
        return [" | ".join(tag.name for tag in tags) for tags in predicted]

    @inference_mode
    def caption_images(self, images: list[np.ndarray], tag_texts: list[str] | None = None) -> list[tuple[str, str]]:
        """(tag string, caption) per image; `tag_texts` None: the stage's `tags` / `user_tags` choice."""
        self.ensure_loaded()
        frames = [Frame.from_array(image) for image in images]
        return self._caption(frames, tag_texts)

    def _caption(self, frames: list[Frame], tag_texts: list[str] | None = None) -> list[tuple[str, str]]:
        results: list[tuple[str, str]] = []
        settings = self.settings()
        size = self.params.batch_size
        prompt = self.model.config.prompt
        for start in range(0, len(frames), size):
            chunk = frames[start : start + size]
            tokens = self.model.encode_image(self.frame_pixels(chunk))
            texts = tag_texts[start : start + size] if tag_texts is not None else self.tag_strings(chunk, tokens)
            ids = self.model.caption_ids(tokens, texts, self.tokenizer, settings)
            results.extend((text, self.tokenizer.caption(row, prompt)) for text, row in zip(texts, ids))
        return results

    @inference_mode
    def process(self, frames: list[Frame]) -> list[Frame]:
        if not frames:
            return frames
        for frame, (tags, caption) in zip(frames, self._caption(frames)):
            frame.caption = caption
            frame.meta["caption_tags"] = tags
        return frames


STAGES = (Tag2TextTagger, Tag2TextCaption)
