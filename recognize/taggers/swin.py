"""The Swin Transformer image encoder of RAM, RAM++ and Tag2Text: timm's `SwinTransformer`,
configured like the official one, plus the official -> timm checkpoint key conversion.

API:
- `SwinConfig` (embed_dim, depths, num_heads, window_size, image_size; `vision_width`),
  `SwinConfig.from_official_json(d)` for the official `config_swin*.json` format, and the released
  `SWIN_L_384`, `SWIN_L_224`, `SWIN_B_384`, `SWIN_B_224`.
- `SwinBackbone(config)`: `forward(images) -> [B, 1 + (S/32)^2, vision_width]`, token 0 being the
  mean of the final-normalised tokens (the official output); `forward_stages(images)` returns the
  per-stage outputs in the official layout (for locating a mismatch).
- `official_key(timm_key)` / `timm_key(official_key)`: the key rename (patch merging sits at the end of
  stage i in the official layout, at the start of stage i+1 in timm's); the buffers the official loader
  drops are `recognize.taggers.checkpoint.DROPPED_BUFFERS`. `resize_bias_table(...)` adapts a
  relative-position table trained with another window (the 224 variants of the 384 releases).

timm matches the official maths: the window clamp (a stage whose map is not larger than the window
uses one full-map window and no shift), the -100 shifted-window mask, the patch-merging channel order
(x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]: timm's reshape/permute yields exactly this
order, so the reduction/norm weights load unpermuted; checked stage by stage against the fixtures'
`intermediates.pt`), exact GELU and LayerNorm eps 1e-5. The tagger stages give the blocks a forward with
the same maths and fewer copies at load (`recognize.taggers.lean_swin.use_lean_blocks`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from timm.layers import resize_rel_pos_bias_table
from timm.models.swin_transformer import SwinTransformer

@dataclass(frozen=True)
class SwinConfig:
    """Swin hyper-parameters, in the terms of the official `config_swin*.json` files."""

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    image_size: int
    patch_size: int = 4
    mlp_ratio: float = 4.0

    @property
    def vision_width(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def num_tokens(self) -> int:
        """Tokens of the output, pooled token included."""
        side = self.image_size // self.patch_size // 2 ** (len(self.depths) - 1)
        return 1 + side * side

    @classmethod
    def from_official_json(cls, data: Mapping[str, Any], image_size: int | None = None) -> SwinConfig:
        """From the official JSON (`embed_dim`, `depths`, `num_heads`, `window_size`, `image_res`)."""
        config = cls(
            embed_dim=int(data["embed_dim"]),
            depths=tuple(int(d) for d in data["depths"]),
            num_heads=tuple(int(h) for h in data["num_heads"]),
            window_size=int(data["window_size"]),
            image_size=int(image_size if image_size is not None else data["image_res"]),
        )
        if "vision_width" in data and int(data["vision_width"]) != config.vision_width:
            raise ValueError(f"vision_width {data['vision_width']} != embed_dim * 2^(stages-1) = {config.vision_width}")
        return config


SWIN_L_384 = SwinConfig(192, (2, 2, 18, 2), (6, 12, 24, 48), window_size=12, image_size=384)
SWIN_L_224 = SwinConfig(192, (2, 2, 18, 2), (6, 12, 24, 48), window_size=7, image_size=224)
SWIN_B_384 = SwinConfig(128, (2, 2, 18, 2), (4, 8, 16, 32), window_size=12, image_size=384)
SWIN_B_224 = SwinConfig(128, (2, 2, 18, 2), (4, 8, 16, 32), window_size=7, image_size=224)


class SwinBackbone(SwinTransformer):
    """timm Swin with no head whose output is [pooled mean token] + final-normalised tokens."""

    def __init__(self, config: SwinConfig, device: torch.device | str | None = None) -> None:
        super().__init__(
            img_size=config.image_size,
            patch_size=config.patch_size,
            in_chans=3,
            num_classes=0,
            global_pool="",
            embed_dim=config.embed_dim,
            depths=config.depths,
            num_heads=config.num_heads,
            window_size=config.window_size,
            always_partition=False,  # keep the official window clamp
            strict_img_size=True,  # masks are precomputed for this size, as in the official model
            mlp_ratio=config.mlp_ratio,
            qkv_bias=True,
            drop_rate=0.0,
            proj_drop_rate=0.0,
            attn_drop_rate=0.0,
            drop_path_rate=0.0,  # official 0.1 is training-only (identity in eval)
            device=device,
        )
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        tokens = self.forward_features(x).flatten(1, 2)  # NHWC -> [B, L, C], row-major
        return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Outputs in the official layout: patch embedding, then each stage *including* its
        trailing patch merging (timm merges at the start of the next stage), then the output."""
        out: dict[str, torch.Tensor] = {}
        x = self.patch_embed(x)
        out["swin_patch_embed"] = x.flatten(1, 2)
        n = len(self.layers)
        for i, stage in enumerate(self.layers):
            x = stage.blocks(stage.downsample(x) if i == 0 else x)
            if i + 1 < n:
                x = self.layers[i + 1].downsample(x)
            out[f"swin_layer{i}_out"] = x.flatten(1, 2)
        tokens = self.norm(x).flatten(1, 2)
        out["visual_encoder_out"] = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        return out


_TIMM_DOWNSAMPLE = re.compile(r"(^|\.)layers\.(\d+)\.downsample\.")


def official_key(key: str) -> str:
    """timm key -> official key (`layers.{i}.downsample` -> `layers.{i-1}.downsample`)."""
    return _TIMM_DOWNSAMPLE.sub(lambda m: f"{m.group(1)}layers.{int(m.group(2)) - 1}.downsample.", key)


def timm_key(key: str) -> str:
    """Official key -> timm key (`layers.{i}.downsample` -> `layers.{i+1}.downsample`)."""
    return _TIMM_DOWNSAMPLE.sub(lambda m: f"{m.group(1)}layers.{int(m.group(2)) + 1}.downsample.", key)


def resize_bias_table(key: str, tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """Resample a relative-position bias table to another window (`None` if `key` is not one).

    The official loader resamples with SciPy's `interp2d` (removed from SciPy 1.14); timm's
    geometric-progression bicubic resampling is the same method, so values may differ slightly.
    """
    if not key.endswith("relative_position_bias_table") or tensor.ndim != 2 or len(shape) != 2:
        return None
    side = int(round(shape[0] ** 0.5))
    if tensor.shape[1] != shape[1] or side * side != shape[0] or side % 2 != 1:
        return None
    if tensor.is_meta:
        return tensor.new_empty(shape)
    window = (side + 1) // 2
    resized = resize_rel_pos_bias_table(tensor.float(), new_window_size=(window, window), new_bias_shape=tuple(shape))
    return resized.to(tensor.dtype)
