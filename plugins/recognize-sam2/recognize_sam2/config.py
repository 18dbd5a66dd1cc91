"""`Sam2Config`: a custom Hiera trunk for tests, apart from `model` so that validating a recipe (and
registering the stage) imports neither torch nor sam2."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Sam2Config(BaseModel):
    """A custom Hiera trunk (tests use a tiny one) on SAM 2.1 hiera tiny's config; the rest is SAM 2's own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embed_dim: int = Field(gt=0, description="width of the first Hiera stage; it doubles at each of the 4 stages")
    num_heads: int = Field(gt=0, description="heads of the first stage; they double at each stage")
    stages: tuple[int, int, int, int] = Field(description="blocks per stage")
    global_att_blocks: tuple[int, ...] = ()
    window_spec: tuple[int, int, int, int] = (8, 4, 14, 7)

    @model_validator(mode="after")
    def _consistent(self) -> Sam2Config:
        if self.embed_dim % self.num_heads:
            raise ValueError("embed_dim must be a multiple of num_heads")
        if min(self.stages) < 1:
            raise ValueError("every stage needs at least one block")
        depth = sum(self.stages)
        bad = [i for i in self.global_att_blocks if not 0 <= i < depth]
        if bad:
            raise ValueError(f"global_att_blocks {bad} are not blocks of a {depth}-block trunk")
        # Hiera pools (q_stride) in the first block of stages 2-4 and cannot do that in a global block
        firsts = {sum(self.stages[:i]) for i in (1, 2, 3)}
        pooled = sorted(firsts & set(self.global_att_blocks))
        if pooled:
            raise ValueError(f"global_att_blocks {pooled} start a stage, where Hiera pools; use later blocks")
        return self

    def overrides(self) -> list[str]:
        trunk = "model.image_encoder.trunk"
        channels = [self.embed_dim * 2**i for i in reversed(range(4))]
        return [
            f"{trunk}.embed_dim={self.embed_dim}",
            f"{trunk}.num_heads={self.num_heads}",
            f"{trunk}.stages={list(self.stages)}",
            f"{trunk}.global_att_blocks={list(self.global_att_blocks)}",
            f"++{trunk}.window_spec={list(self.window_spec)}",
            f"model.image_encoder.neck.backbone_channel_list={channels}",
        ]
