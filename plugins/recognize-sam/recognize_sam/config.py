"""`SamConfig`: a custom SAM image-encoder size, kept apart from `model` (which imports torch and
segment_anything) so that the stage's parameters, and so registering the plugin, stay light."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SamConfig(BaseModel):
    """A custom image-encoder size (tests use a tiny one); the prompt encoder and decoder are SAM's own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder_embed_dim: int = Field(gt=0)
    encoder_depth: int = Field(gt=0)
    encoder_num_heads: int = Field(gt=0)
    encoder_global_attn_indexes: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> SamConfig:
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError("encoder_embed_dim must be a multiple of encoder_num_heads")
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            depth = self.encoder_depth
            raise ValueError(f"encoder_global_attn_indexes {bad} are not blocks of a {depth}-block encoder")
        return self
