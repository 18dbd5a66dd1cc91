"""RAM and RAM++ as torch modules, with their released configurations and official key layout.

API:
- `RamConfig` (`variant` 'ram' | 'ram_plus', `swin`, `decoder`, `num_classes`, `descriptions_per_class`);
  `RamConfig.released(variant, image_size)` for the released Swin-L models (384, and the 224 variant),
  `RamConfig.from_fixture_config(path_or_dict)` for a fixture-style `config.json` (any size).
- `RAM(config)` / `RAMPlus(config)` (`build_model(config)` picks): `encode_image(x) -> [B,N,512]`,
  `logits(image_embeds, label_embed=None) -> [B,C]`, `forward(x, label_embed=None) -> [B,C]`,
  `image_embedding(x) -> [B,512]` (the projected pooled token), `key_spec()` for
  `recognize.taggers.checkpoint.load_official`.

Open-set: pass `label_embed` (RAM: [N,512] CLIP text embeddings; RAM++: [N*D,512] description
embeddings, class-major) and `num_classes=N`; everything else is the closed-set computation.

Parts of the official RAM checkpoint that tagging never uses (`tag_encoder.*`, `text_decoder.*`, only
used by the training `forward`) are consumed by name and not loaded: they cost ~1 GB of memory for
nothing. Their tied copies are still checked equal to the loaded `tagging_head` weights.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from recognize.meta_init import parameter_device
from recognize.taggers.checkpoint import KeySpec
from recognize.taggers.recognition_decoder import DecoderConfig, RecognitionDecoder
from recognize.taggers.swin import SWIN_L_224, SWIN_L_384, SwinBackbone, SwinConfig, official_key, resize_bias_table

Variant = Literal["ram", "ram_plus"]

#: Width of the CLIP text space the label embeddings live in (and of `image_proj`'s output).
CLIP_WIDTH = 512
RAM_NUM_CLASSES = 4585
RAM_PLUS_DESCRIPTIONS = 51
#: `q2l_config.json`: 2 layers, 4 heads, H 768; key/value width set to 512 by the model code.
RELEASED_DECODER = DecoderConfig(hidden_size=768, num_layers=2, num_heads=4, intermediate_size=3072, encoder_width=512)


@dataclass(frozen=True)
class RamConfig:
    variant: Variant
    swin: SwinConfig
    decoder: DecoderConfig = RELEASED_DECODER
    num_classes: int = RAM_NUM_CLASSES
    descriptions_per_class: int = RAM_PLUS_DESCRIPTIONS  # RAM++ only

    @property
    def image_size(self) -> int:
        return self.swin.image_size

    @property
    def label_rows(self) -> int:
        return self.num_classes * (self.descriptions_per_class if self.variant == "ram_plus" else 1)

    @classmethod
    def released(cls, variant: Variant, image_size: int = 384) -> RamConfig:
        swin = {384: SWIN_L_384, 224: SWIN_L_224}.get(image_size)
        if swin is None:
            raise ValueError(f"released {variant} models exist for image_size 224 or 384, not {image_size}")
        return cls(variant=variant, swin=swin)

    @classmethod
    def from_fixture_config(cls, config: str | os.PathLike[str] | Mapping[str, Any]) -> RamConfig:
        """From a fixture-style `config.json` (`model`, `swin_config_json`, `q2l_config`, ...)."""
        if not isinstance(config, Mapping):
            config = json.loads(Path(config).read_text(encoding="utf-8"))
        variant = config["model"]
        if variant not in ("ram", "ram_plus"):
            raise ValueError(f"config is for model {variant!r}, not ram / ram_plus")
        swin = SwinConfig.from_official_json(config["swin_config_json"], image_size=config.get("image_size"))
        width = int(config.get("q2l_effective_encoder_width", CLIP_WIDTH))
        decoder = DecoderConfig.from_bert_config(config["q2l_config"], encoder_width=width)
        label = config.get("label_embed", {})
        return cls(
            variant=variant,
            swin=swin,
            decoder=decoder,
            num_classes=int(config["num_classes"]),
            descriptions_per_class=int(label.get("descriptions_per_class", RAM_PLUS_DESCRIPTIONS)),
        )


class RAM(nn.Module):
    """Recognize Anything: Swin -> image_proj -> recognition decoder over CLIP label queries -> fc."""

    def __init__(self, config: RamConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.decoder.hidden_size
        self.visual_encoder = SwinBackbone(config.swin)
        self.image_proj = nn.Linear(config.swin.vision_width, CLIP_WIDTH)
        self.label_embed = nn.Parameter(torch.zeros(config.label_rows, CLIP_WIDTH, device=parameter_device()))
        # official: a projection only when the decoder width differs from the CLIP width
        self.wordvec_proj = nn.Linear(CLIP_WIDTH, hidden) if hidden != CLIP_WIDTH else nn.Identity()
        self.tagging_head = RecognitionDecoder(config.decoder)
        self.fc = nn.Linear(hidden, 1)

    # -- forward pieces ------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,S,S] -> projected image tokens [B, 1+(S/32)^2, 512] (token 0: pooled)."""
        return self.image_proj(self.visual_encoder(images))

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The projected pooled token [B,512] (what RAM++ compares with its descriptions)."""
        return self.encode_image(images)[:, 0]

    def label_queries(
        self, image_embeds: torch.Tensor, label_embed: torch.Tensor, num_classes: int
    ) -> torch.Tensor:
        return F.relu(self.wordvec_proj(label_embed))  # [C,H], shared by the batch

    def logits(
        self, image_embeds: torch.Tensor, label_embed: torch.Tensor | None = None, num_classes: int | None = None
    ) -> torch.Tensor:
        """Per-class logits [B,C] from projected image tokens."""
        if label_embed is None:
            label_embed, num_classes = self.label_embed, self.config.num_classes
        elif num_classes is None:
            num_classes = label_embed.shape[0]
        label_embed = label_embed.to(device=image_embeds.device, dtype=image_embeds.dtype)
        queries = self.label_queries(image_embeds, label_embed, num_classes)
        hidden = self.tagging_head(queries, image_embeds)
        return self.fc(hidden).squeeze(-1)

    def forward(
        self, images: torch.Tensor, label_embed: torch.Tensor | None = None, num_classes: int | None = None
    ) -> torch.Tensor:
        return self.logits(self.encode_image(images), label_embed, num_classes)

    # -- checkpoint layout ---------------------------------------------------------------
    def official_key_map(self) -> dict[str, str]:
        return tagger_key_map(self.state_dict(), self.tagging_head)

    def key_spec(self) -> KeySpec:
        # tag_encoder layers 0..L-1 share tensors with tagging_head; the LM head is tied to the embeddings
        tagging = [v for v in self.official_key_map().values() if v.startswith("tagging_head.")]
        tied = [(k, "tag_encoder." + k[len("tagging_head."):]) for k in tagging]
        tied += [
            ("text_decoder.cls.predictions.decoder.weight", "text_decoder.bert.embeddings.word_embeddings.weight"),
            ("text_decoder.cls.predictions.decoder.bias", "text_decoder.cls.predictions.bias"),
        ]
        return KeySpec(
            key_map=self.official_key_map(),
            ignored_prefixes=("tag_encoder.", "text_decoder."),
            tied_groups=tied,
            adapt=resize_bias_table,
            model_name="RAM model",
        )


class RAMPlus(RAM):
    """RAM++: label queries are per-image softmax mixtures of each class's description embeddings."""

    def __init__(self, config: RamConfig) -> None:
        super().__init__(config)
        self.reweight_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # value comes from the checkpoint

    def description_weights(
        self, image_embeds: torch.Tensor, label_embed: torch.Tensor, num_classes: int
    ) -> torch.Tensor:
        """Softmax weights [B,C,D] of each class's D descriptions for each image."""
        pooled = F.normalize(image_embeds[:, 0], dim=-1)
        per_class = label_embed.shape[0] // num_classes
        if per_class * num_classes != label_embed.shape[0]:
            raise ValueError(
                f"{label_embed.shape[0]} description embeddings do not split evenly over {num_classes} classes"
            )
        sims = self.reweight_scale.exp() * pooled @ label_embed.t()
        return sims.view(-1, num_classes, per_class).softmax(dim=-1)

    def label_queries(
        self, image_embeds: torch.Tensor, label_embed: torch.Tensor, num_classes: int
    ) -> torch.Tensor:
        weights = self.description_weights(image_embeds, label_embed, num_classes)
        mixed = torch.einsum("bcd,cde->bce", weights, label_embed.view(num_classes, weights.shape[-1], -1))
        return F.relu(self.wordvec_proj(mixed))  # [B,C,H]

    def key_spec(self) -> KeySpec:
        return KeySpec(key_map=self.official_key_map(), adapt=resize_bias_table, model_name="RAM++ model")


def build_model(config: RamConfig) -> RAM:
    return RAMPlus(config) if config.variant == "ram_plus" else RAM(config)


def tagger_key_map(state: Mapping[str, Any], tagging_head: RecognitionDecoder) -> dict[str, str]:
    """Our parameter names -> the official checkpoint's, for any tagger built from a timm Swin
    (`visual_encoder.*`) and a recognition decoder (`tagging_head.*`); other names are shared."""
    decoder = tagging_head.official_keys("tagging_head")
    mapping = {}
    for key in state:
        if key.startswith("visual_encoder."):
            mapping[key] = official_key(key)
        elif key.startswith("tagging_head."):
            mapping[key] = decoder[key[len("tagging_head.") :]]
        else:
            mapping[key] = key
    return mapping
