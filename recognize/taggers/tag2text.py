"""Tag2Text as a torch module: Swin-B tags, then captions guided by the tags.

API:
- `Tag2TextConfig`: `released(image_size)` (Swin-B 384 / 224, the released text sizes) and
  `from_fixture_config(path_or_dict)` (a fixture-style `config.json`, any size);
  `class_thresholds()` (0.68, with 0.7 for person / man / woman).
- `Tag2Text(config)`: `encode_image(x) -> [B, N, vision_width]` (raw Swin tokens: no projection),
  `logits(image_tokens) -> [B, C]`, `forward(x) -> [B, C]`,
  `encode_tags(input_ids, mask, image_tokens)` (the tag encoder), `caption_ids(image_tokens,
  tag_texts, tokenizer, settings) -> list[list[int]]`, `key_spec()` for
  `recognize.taggers.checkpoint.load_official`, `tie_weights()`.
- `CaptionSettings`: greedy / beam / nucleus sampling knobs (official defaults).
The official tag choice (strict `>`, `delete_tag_index` removed, class-index order) is
`recognize.taggers.vocabulary.Vocabulary.predict`, which the `tag2text` stages use.

Parts: Swin-B (`recognize.taggers.swin`), the recognition decoder (`recognition_decoder`, key/value
width = vision width) over `label_embed` (an Embedding) queries, a `GroupWiseLinear` classifier
(one weight vector and bias per class), the BLIP-BERT tag encoder (bidirectional, cross-attending
to the Swin tokens) and caption decoder (`recognize.taggers.bert`). The lowest layers of the tag
encoder share their cross-attention and feed-forward tensors with the recognition decoder (as in
the official model, `tie_encoder_decoder_weights`), so they exist once in memory.

Batched beam search: the official model repeats the tag-encoder output per beam, the generation
library repeats it again and the cross-attention keeps only the first rows, so every image of a
batch gets image 0's caption. We fix that (each image is captioned from its own tags); a batch of
one gives the official result exactly, and a batch gives what each image alone gives.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from recognize.taggers import generation
from recognize.taggers.bert import BertConfig, BertLMHeadModel, BertModel, CaptionDecoder
from recognize.taggers.checkpoint import KeySpec
from recognize.taggers.ram import tagger_key_map
from recognize.taggers.recognition_decoder import DecoderConfig, RecognitionDecoder
from recognize.taggers.swin import SWIN_B_224, SWIN_B_384, SwinBackbone, SwinConfig, resize_bias_table
from recognize.taggers.tokenizer import CaptionTokenizer

TAG2TEXT_NUM_CLASSES = 3429
#: quarter, back, two, three, four, five, one: removed by the official model because they disturb captions
DELETE_TAG_INDEX = (127, 2961, 3351, 3265, 3338, 3355, 3359)
DEFAULT_THRESHOLD = 0.68
#: (class, threshold) for person, man, woman
THRESHOLD_OVERRIDES = ((2701, 0.7), (2828, 0.7), (1167, 0.7))
PROMPT = "a picture of "
TAG_MAX_LENGTH = 40

#: `med_config.json` (tag encoder and caption decoder); the tag encoder's key/value width is set to the vision width
RELEASED_TEXT = BertConfig()
#: `q2l_config.json` with the key/value width the model code sets (Swin-B width)
RELEASED_DECODER = DecoderConfig(hidden_size=768, num_layers=2, num_heads=4, intermediate_size=3072, encoder_width=1024)

@dataclass(frozen=True)
class Tag2TextConfig:
    swin: SwinConfig
    decoder: DecoderConfig = RELEASED_DECODER
    text: BertConfig = RELEASED_TEXT
    num_classes: int = TAG2TEXT_NUM_CLASSES
    delete_tag_index: tuple[int, ...] = DELETE_TAG_INDEX
    default_threshold: float = DEFAULT_THRESHOLD
    threshold_overrides: tuple[tuple[int, float], ...] = THRESHOLD_OVERRIDES
    prompt: str = PROMPT

    @property
    def image_size(self) -> int:
        return self.swin.image_size

    @property
    def tag_encoder(self) -> BertConfig:
        """The tag encoder cross-attends to the raw Swin tokens."""
        return replace(self.text, encoder_width=self.swin.vision_width)

    @classmethod
    def released(cls, image_size: int = 384) -> Tag2TextConfig:
        swin = {384: SWIN_B_384, 224: SWIN_B_224}.get(image_size)
        if swin is None:
            raise ValueError(f"released Tag2Text models exist for image_size 224 or 384, not {image_size}")
        return cls(swin=swin)

    @classmethod
    def from_fixture_config(cls, config: str | os.PathLike[str] | Mapping[str, Any]) -> Tag2TextConfig:
        """From a fixture-style `config.json` (`model: tag2text`, `swin_config_json`, `q2l_config`, `med_config`)."""
        if not isinstance(config, Mapping):
            config = json.loads(Path(config).read_text(encoding="utf-8"))
        if config.get("model") != "tag2text":
            raise ValueError(f"config is for model {config.get('model')!r}, not tag2text")
        swin = SwinConfig.from_official_json(config["swin_config_json"], image_size=config.get("image_size"))
        width = int(config.get("q2l_effective_encoder_width", swin.vision_width))
        decoder = DecoderConfig.from_bert_config(config["q2l_config"], encoder_width=width)
        text = BertConfig.from_med_config(
            config["med_config"], encoder_width=config.get("text_decoder_encoder_width")
        )
        tag_width = int(config.get("tag_encoder_effective_encoder_width", swin.vision_width))
        if tag_width != swin.vision_width:
            raise ValueError(f"tag encoder width {tag_width} != vision width {swin.vision_width}")
        overrides = config.get("class_threshold_overrides", dict(THRESHOLD_OVERRIDES))
        return cls(
            swin=swin,
            decoder=decoder,
            text=text,
            num_classes=int(config.get("num_classes", TAG2TEXT_NUM_CLASSES)),
            delete_tag_index=tuple(int(i) for i in config.get("delete_tag_index", DELETE_TAG_INDEX)),
            default_threshold=float(config.get("default_threshold", DEFAULT_THRESHOLD)),
            threshold_overrides=tuple((int(k), float(v)) for k, v in overrides.items()),
            prompt=str(config.get("prompt", PROMPT)),
        )

    def with_image_size(self, image_size: int) -> Tag2TextConfig:
        return replace(self, swin=replace(self.swin, image_size=image_size))

    def class_thresholds(self) -> np.ndarray:
        """float32 [C]: the default threshold, then the per-class overrides (official constructor)."""
        values = np.full(self.num_classes, self.default_threshold, dtype=np.float32)
        for index, value in self.threshold_overrides:
            if index < self.num_classes:
                values[index] = value
        return values


@dataclass(frozen=True)
class CaptionSettings:
    """How to decode a caption. Defaults: the official `inference_tag2text` (beam 3, max 50, min 10)."""

    num_beams: int = 3
    max_length: int = 50
    min_length: int = 10
    sample: bool = False
    top_p: float = 0.9
    #: None: the official value, 1.0 for beam/greedy and the hard-coded 1.1 for sampling
    repetition_penalty: float | None = None
    length_normalization: generation.LengthNormalization = "official"
    seed: int | None = None
    use_cache: bool = True


class GroupWiseLinear(nn.Module):
    """One weight vector and one bias per class: logit_c = <W_c, h_c> + b_c (official `fc`)."""

    def __init__(self, num_classes: int, hidden_size: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.zeros(1, num_classes, hidden_size))
        self.b = nn.Parameter(torch.zeros(1, num_classes))

    def forward(self, hidden: Tensor) -> Tensor:
        return (self.W * hidden).sum(-1) + self.b


class Tag2Text(nn.Module):
    def __init__(self, config: Tag2TextConfig) -> None:
        super().__init__()
        self.config = config
        if config.decoder.encoder_width != config.swin.vision_width:
            raise ValueError("the recognition decoder of Tag2Text attends to the Swin tokens: widths must match")
        if config.text.encoder_width != config.text.hidden_size:
            raise ValueError("the caption decoder attends to the tag encoder: its encoder_width must be hidden_size")
        self.visual_encoder = SwinBackbone(config.swin)
        self.tagging_head = RecognitionDecoder(config.decoder)
        self.label_embed = nn.Embedding(config.num_classes, config.decoder.hidden_size)
        self.fc = GroupWiseLinear(config.num_classes, config.decoder.hidden_size)
        self.tag_encoder = BertModel(config.tag_encoder)
        self.text_decoder = BertLMHeadModel(config.text)
        self.tie_weights()

    # -- weights ---------------------------------------------------------------------------
    def _tied_pairs(self) -> list[tuple[str, str]]:
        """(tagging_head key, tag_encoder key) of the shared tensors, both as model state-dict keys."""
        pairs = []
        for ours, official in self.tagging_head.official_keys("tagging_head").items():
            pairs.append(("tagging_head." + ours, "tag_encoder." + official[len("tagging_head.") :]))
        return pairs

    def tie_weights(self) -> None:
        """Share the recognition decoder's tensors with the tag encoder's lowest layers, and the LM head's.

        Called by the constructor, and again after a load that replaced parameters (`assign=True`)."""
        if self.config.decoder.num_layers > self.config.text.num_layers:
            raise ValueError("the recognition decoder has more layers than the tag encoder it shares them with")
        for head_key, encoder_key in self._tied_pairs():
            head_module, _, head_name = head_key.rpartition(".")
            encoder_module, _, encoder_name = encoder_key.rpartition(".")
            param = getattr(self.get_submodule(head_module), head_name)
            target = self.get_submodule(encoder_module)
            if getattr(target, encoder_name).shape != param.shape:
                raise ValueError(f"cannot tie {encoder_key} {tuple(getattr(target, encoder_name).shape)} to {head_key}")
            setattr(target, encoder_name, param)
        self.text_decoder.tie_weights()

    def official_key_map(self) -> dict[str, str]:
        return tagger_key_map(self.state_dict(), self.tagging_head)

    def key_spec(self) -> KeySpec:
        key_map = self.official_key_map()
        tied = [(key_map[head], key_map[encoder]) for head, encoder in self._tied_pairs()]
        tied += [
            ("text_decoder.cls.predictions.decoder.weight", "text_decoder.bert.embeddings.word_embeddings.weight"),
            ("text_decoder.cls.predictions.decoder.bias", "text_decoder.cls.predictions.bias"),
        ]
        return KeySpec(key_map=key_map, tied_groups=tied, adapt=resize_bias_table, model_name="Tag2Text model")

    # -- tagging ---------------------------------------------------------------------------
    def encode_image(self, images: Tensor) -> Tensor:
        """[B,3,S,S] -> Swin tokens [B, 1+(S/32)^2, vision_width] (token 0: pooled)."""
        return self.visual_encoder(images)

    def logits(self, image_tokens: Tensor) -> Tensor:
        """Per-class logits [B, C]."""
        queries = self.label_embed.weight.to(image_tokens.dtype)
        return self.fc(self.tagging_head(queries, image_tokens))

    def forward(self, images: Tensor) -> Tensor:
        return self.logits(self.encode_image(images))

    # -- captioning ------------------------------------------------------------------------
    def encode_tags(self, input_ids: Tensor, attention_mask: Tensor, image_tokens: Tensor) -> Tensor:
        """The tag encoder: tag pieces attend to each other (bidirectional) and to the image."""
        return self.tag_encoder(input_ids, attention_mask=attention_mask, encoder_hidden_states=image_tokens)

    @torch.no_grad()
    def caption_ids(
        self,
        image_tokens: Tensor,
        tag_texts: Sequence[str],
        tokenizer: CaptionTokenizer,
        settings: CaptionSettings = CaptionSettings(),
    ) -> list[list[int]]:
        """One id sequence per image (prompt, caption, final `[SEP]`), captioned from its `tag_texts`."""
        if len(tag_texts) != image_tokens.shape[0]:
            raise ValueError(f"{len(tag_texts)} tag strings for {image_tokens.shape[0]} images")
        device = image_tokens.device
        input_ids, mask = tokenizer.encode_tags(tag_texts, TAG_MAX_LENGTH)
        tag_states = self.encode_tags(input_ids.to(device), mask.to(device), image_tokens)
        prefix = torch.tensor([tokenizer.prompt_ids(self.config.prompt)] * len(tag_texts), device=device)
        decoder = CaptionDecoder(self.text_decoder, tag_states, use_cache=settings.use_cache)
        common = dict(
            max_length=settings.max_length,
            min_length=settings.min_length,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        if settings.sample:
            generator = None
            if settings.seed is not None:
                generator = torch.Generator(device=device).manual_seed(settings.seed)
            penalty = 1.1 if settings.repetition_penalty is None else settings.repetition_penalty
            return generation.sample(
                decoder, prefix, top_p=settings.top_p, repetition_penalty=penalty, generator=generator, **common
            )
        penalty = 1.0 if settings.repetition_penalty is None else settings.repetition_penalty
        if settings.num_beams <= 1:
            return generation.greedy(decoder, prefix, repetition_penalty=penalty, **common)
        return generation.beam_search(
            decoder,
            prefix,
            num_beams=settings.num_beams,
            repetition_penalty=penalty,
            length_normalization=settings.length_normalization,
            **common,
        )
