"""The `ram` and `ram_plus` tagger stages (released Swin-L checkpoints, or any fixture-style config).

Closed set: the official 4585 tags, English and Chinese names, and the official per-class thresholds
(`ram_tag_list_threshold.txt`), with the `TaggerStage` overrides (global / per-tag thresholds,
include / exclude).

Open set: `tags` (a list of names, a file with one name per line, or a comma-separated string) gives
RAM label queries built from CLIP ViT-B/16 text embeddings of the official 63 prompt templates;
`descriptions` (RAM++ only, the official LLM-description JSON) gives per-tag description embeddings
that RAM++ reweights per image (when both are given, `tags` picks categories of the JSON). RAM++ with
names only uses the template embedding as each tag's single description. Open-set tags have no
Chinese names; their threshold is `openset_threshold` (official 0.5), then `threshold` / `thresholds`
if given. The CLIP text encoder is open_clip `ViT-B-16` with OpenAI weights (`clip_checkpoint`, or the
`clip-vit-b-16` hub file); `clip_model` names another open_clip architecture (tests use a tiny one).
Tag indices of open-set tags are positions in the given list.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from recognize.errors import ModelFileError, RecognizeError
from recognize.hub import FileRef
from recognize.taggers.tagger_stage import (
    Probability,
    TaggerParams,
    TaggerStage,
    config_asset,
)
from recognize.taggers.vocabulary import (
    OPENSET_THRESHOLD,
    Vocabulary,
    read_tag_list,
    read_thresholds,
)

if TYPE_CHECKING:  # pragma: no cover - the model modules import torch: loaded on first use only
    import torch
    from torch import nn

    from recognize.taggers.openset import ClipTextEncoder, EmbeddingCache
    from recognize.taggers.ram import RamConfig

TAG_LISTS_CARD = "ram-tag-lists"
CLIP_CARD, CLIP_FILE = "clip-vit-b-16", "ViT-B-16.pt"
#: (parameter, fixture-config key, file of the tag-lists card) of the closed-set vocabulary
_CLOSED_SET_FILES = (
    ("tag_list", "tag_list", "ram_tag_list.txt"),
    ("tag_list_zh", "tag_list_chinese", "ram_tag_list_chinese.txt"),
    ("threshold_file", "threshold_file", "ram_tag_list_threshold.txt"),
)


class RamParams(TaggerParams):
    tag_list_zh: str | None = Field(None, description="Chinese tag list file (default: the official one)")
    threshold_file: str | None = Field(None, description="per-class thresholds file (default: the official one)")
    tags: list[str] | str | None = Field(None, description="open-set tag names (list, file, or 'a, b, c')")
    openset_threshold: Probability = Field(OPENSET_THRESHOLD, description="threshold of open-set tags")
    clip_model: str = Field("ViT-B-16", description="open_clip text encoder for open-set tags")
    clip_checkpoint: str | None = Field(None, description="CLIP weights (default: OpenAI ViT-B-16 from the hub)")
    embedding_cache: bool = Field(True, description="cache open-set embeddings on disk")


class RamPlusParams(RamParams):
    descriptions: str | None = Field(None, description="LLM tag descriptions JSON (official format)")


class Ram(TaggerStage):
    """RAM (Recognize Anything), Swin-L."""

    name: ClassVar[str] = "ram"
    Params: ClassVar[type[RamParams]] = RamParams
    variant: ClassVar[Literal["ram", "ram_plus"]] = "ram"
    card: ClassVar[str] = "ram_swin_large_14m"

    def __init__(self, params: Any = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        #: set before first use to supply your own CLIP text encoder (else built from the params)
        self.text_encoder: ClipTextEncoder | None = None
        self.label_embed: torch.Tensor | None = None
        self.num_classes: int | None = None

    # -- configuration -------------------------------------------------------------------
    def ram_config(self) -> RamConfig:
        key = (self.params.config, self.params.image_size)
        if getattr(self, "_config_memo", (None,))[0] != key:
            self._config_memo = (key, self._read_ram_config())
        return self._config_memo[1]

    def _read_ram_config(self) -> RamConfig:
        from recognize.taggers.ram import RamConfig

        data = self._config_data()
        if data is None:
            return RamConfig.released(self.variant, self.params.image_size)
        try:
            config = RamConfig.from_fixture_config(data)
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelFileError(f"{self.params.config}: not a {self.variant} config ({exc})") from None
        if config.variant != self.variant:
            raise ModelFileError(f"{self.params.config}: a {config.variant} config, not {self.variant}")
        return config

    @property
    def image_size(self) -> int:
        return self.ram_config().image_size

    def _config_asset(self, key: str) -> Path | None:
        if self.params.config is None:
            return None
        return config_asset(Path(self.params.config), (self._config_data() or {}).get(key))

    def _asset(self, value: str | None, key: str, filename: str) -> Path:
        from recognize.hub import resolve_path

        if value is None:
            found = self._config_asset(key)
            if found is not None:
                return found
        return resolve_path(value, TAG_LISTS_CARD, filename)

    def model_files(self) -> list[FileRef]:
        """Checkpoint; closed set: tag lists and thresholds; open set: CLIP ViT-B/16 (each unless given)."""
        p = self.params
        refs = [] if p.checkpoint else [FileRef(self.card, f"{self.card}.pth")]
        if p.tags is None and not getattr(p, "descriptions", None):
            for param, key, filename in _CLOSED_SET_FILES:
                if getattr(p, param) is None and self._config_asset(key) is None:
                    refs.append(FileRef(TAG_LISTS_CARD, filename))
        elif self.text_encoder is None and p.clip_model == "ViT-B-16" and p.clip_checkpoint is None:
            refs.append(FileRef(CLIP_CARD, CLIP_FILE))
        return refs

    def checkpoint_path(self) -> Path:
        from recognize.hub import resolve_path

        return resolve_path(self.params.checkpoint, self.card, f"{self.card}.pth")

    # -- TaggerStage hooks ---------------------------------------------------------------
    def model_key(self) -> tuple[Any, ...]:
        return ("ram", self.ram_config(), str(self.checkpoint_path().resolve()))

    def build_model(self) -> nn.Module:
        from recognize.taggers.checkpoint import load_official, parameters_on_meta
        from recognize.taggers.ram import build_model

        with parameters_on_meta():  # no random init to overwrite: the checkpoint's tensors are assigned
            model = build_model(self.ram_config())
        load_official(model, self.checkpoint_path(), model.key_spec())
        return model

    def closed_vocabulary(self) -> Vocabulary:
        names = read_tag_list(self._asset(self.params.tag_list, "tag_list", "ram_tag_list.txt"))
        zh = read_tag_list(self._asset(self.params.tag_list_zh, "tag_list_chinese", "ram_tag_list_chinese.txt"))
        thresholds = read_thresholds(
            self._asset(self.params.threshold_file, "threshold_file", "ram_tag_list_threshold.txt"), len(names)
        )
        return Vocabulary(names, zh, thresholds)

    def build_vocabulary(self, model: nn.Module) -> Vocabulary:
        names = self.openset_names()
        if names is None and not getattr(self.params, "descriptions", None):
            vocab = self.closed_vocabulary()
            if len(vocab) != model.config.num_classes:
                raise ModelFileError(
                    f"the tag list has {len(vocab)} tags but the model has {model.config.num_classes} classes"
                )
            self.label_embed, self.num_classes = None, None
            return vocab
        names, embed = self.openset_embeddings(names)
        self.label_embed = embed.to(device=self.device, dtype=self.dtype)
        self.num_classes = len(names)
        return Vocabulary(list(names), None, np.full(len(names), self.params.openset_threshold, dtype=np.float32))

    def logits(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return model(pixels, self.label_embed, self.num_classes)

    def embedding(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return model.image_embedding(pixels)

    def logits_and_embedding(self, model: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = model.encode_image(pixels)  # what `model(pixels, ...)` and `image_embedding` each compute
        return model.logits(tokens, self.label_embed, self.num_classes), tokens[:, 0]

    # -- open set ------------------------------------------------------------------------
    def openset_names(self) -> list[str] | None:
        tags = self.params.tags
        if tags is None:
            return None
        if isinstance(tags, str):
            path = Path(tags)
            if path.is_file():
                names = [line.strip() for line in read_tag_list(path)]
            else:
                names = [part.strip() for part in tags.split(",")]
        else:
            names = [str(t).strip() for t in tags]
        names = [n for n in names if n]
        if not names:
            raise RecognizeError(f"{self.name}: `tags` names no tag")
        return names

    def encoder(self) -> ClipTextEncoder:
        from recognize.taggers.openset import ClipTextEncoder

        if self.text_encoder is None:
            p = self.params
            if p.clip_model == "ViT-B-16":
                self.text_encoder = ClipTextEncoder.openai_vit_b16(p.clip_checkpoint)
            elif p.clip_checkpoint is None:
                raise RecognizeError(f"{self.name}: clip_model {p.clip_model!r} needs clip_checkpoint")
            else:
                self.text_encoder = ClipTextEncoder.open_clip_model(p.clip_model, p.clip_checkpoint)
        return self.text_encoder

    def _cache(self) -> EmbeddingCache | None:
        from recognize.taggers.openset import EmbeddingCache

        return EmbeddingCache() if self.params.embedding_cache else None

    def openset_embeddings(self, names: list[str] | None) -> tuple[list[str], torch.Tensor]:
        from recognize.taggers.openset import name_embeddings

        assert names is not None
        return names, name_embeddings(names, self.encoder(), self._cache())


class RamPlus(Ram):
    """RAM++: RAM with per-image reweighted tag descriptions."""

    name: ClassVar[str] = "ram_plus"
    Params: ClassVar[type[RamPlusParams]] = RamPlusParams
    variant: ClassVar[Literal["ram", "ram_plus"]] = "ram_plus"
    card: ClassVar[str] = "ram_plus_swin_large_14m"

    def openset_embeddings(self, names: list[str] | None) -> tuple[list[str], torch.Tensor]:
        if self.params.descriptions is None:
            return super().openset_embeddings(names)  # one description per tag: its template ensemble
        from recognize.taggers.openset import description_embeddings, read_descriptions

        items = read_descriptions(self.params.descriptions)
        if names is not None:
            by_name = dict(items)
            missing = [n for n in names if n not in by_name]
            if missing:
                raise RecognizeError(f"{self.name}: tags {missing[:3]} have no entry in {self.params.descriptions}")
            items = [(n, by_name[n]) for n in names]
        return [n for n, _ in items], description_embeddings(items, self.encoder(), self._cache())


STAGES = (Ram, RamPlus)
