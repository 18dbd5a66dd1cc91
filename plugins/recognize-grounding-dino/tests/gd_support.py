"""Tiny Grounding DINO models for the tests: one small config, built both by this plugin
(transformers) and by the official code (rf-groundingdino), with the same seeded random weights.

No bert-base-uncased vocab.txt exists on this machine, so `make_vocab` writes a small WordPiece
vocab that keeps bert-base-uncased's ids for the tokens the model reads by id ([PAD] 0, [UNK] 100,
[CLS] 101, [SEP] 102, [MASK] 103, "." 1012, "?" 1029) and spells any lowercase word from a few
whole words plus single letters (`##x` pieces), so multi-subword tags occur naturally. Set
RECOGNIZE_TEST_BERT_VOCAB to a real bert-base-uncased vocab.txt to use that instead.
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

BERT_VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
WORDS = ["person", "dog", "cat", "car", "tree", "fire", "light", "traffic", "red", "man", "woman", "table",
         "chair", "sky", "road", "grass", "building", "water", "white", "black", "bus", "sign", "street"]
PUNCTUATION = list("!\"#$%&'()*+,-/:;<=>@[\\]^_`{|}~")


def make_vocab(directory: Path) -> Path:
    """A bert-base-uncased-compatible vocab.txt (the real one when RECOGNIZE_TEST_BERT_VOCAB names it)."""
    real = os.environ.get("RECOGNIZE_TEST_BERT_VOCAB")
    if real and hashlib.sha256(Path(real).read_bytes()).hexdigest() == BERT_VOCAB_SHA256:
        return Path(real)
    fixed = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}
    pieces = [c for c in string.ascii_lowercase + string.digits] + [f"##{c}" for c in string.ascii_lowercase + string.digits]
    pieces += PUNCTUATION + WORDS + ["##ing", "##er"]
    tokens: list[str] = []
    filler = iter(pieces)
    for i in range(1030):
        tokens.append(fixed.get(i) or next(filler, None) or f"[unused{i}]")
    tokens += list(filler)
    path = directory / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return path


def tiny_config(vocab_size: int) -> dict[str, Any]:
    """GroundingDinoConfig values for a small model (d_model stays 256: the official encoder hard-codes
    a 256-d text position embedding)."""
    return {
        "backbone_config": {"model_type": "swin", "embed_dim": 16, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4],
                            "window_size": 7, "image_size": 224, "out_features": ["stage2", "stage3", "stage4"]},
        "text_config": {"model_type": "bert", "vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 512},
        "d_model": 256, "encoder_layers": 2, "decoder_layers": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
        "encoder_attention_heads": 4, "decoder_attention_heads": 4, "num_queries": 30,
    }


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random values in every floating tensor (norm scales included, so a swapped norm shows)."""
    generator = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if not tensor.is_floating_point() or tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            noise = torch.randn(tensor.shape, generator=generator)
            if tensor.ndim == 1 and name.endswith("weight"):
                tensor.copy_(1.0 + 0.2 * noise)
            elif tensor.ndim >= 2:
                tensor.copy_(noise / (tensor[0].numel() ** 0.5))
            else:
                tensor.copy_(0.2 * noise)
            if re.search(r"decoder\.(layer_)?norm\.(weight|bias)$", name):
                # the class logit is an unscaled 256-d dot product: shrink the query side so random
                # scores spread over (0, 1) instead of saturating at 0 or 1
                tensor.mul_(tensor.numel() ** -0.5)
    return module


def official_tiny_model(tokenizer: Any, config: dict[str, Any], monkeypatch: Any) -> torch.nn.Module:
    """The official GroundingDINO module tree (rf-groundingdino) with `config`'s sizes, built
    the way `build_groundingdino` builds it, with the tokenizer and a local BERT instead of downloads."""
    import groundingdino.models.GroundingDINO.groundingdino as official
    from groundingdino.models.GroundingDINO.backbone.backbone import Joiner
    from groundingdino.models.GroundingDINO.backbone.position_encoding import (
        build_position_encoding,
    )
    from groundingdino.models.GroundingDINO.backbone.swin_transformer import (
        SwinTransformer,
    )
    from groundingdino.models.GroundingDINO.transformer import build_transformer
    from transformers import BertConfig, BertModel

    text = {k: v for k, v in config["text_config"].items() if k != "model_type"}
    monkeypatch.setattr(official.get_tokenlizer, "get_tokenlizer", lambda _name: tokenizer)
    monkeypatch.setattr(official.get_tokenlizer, "get_pretrained_language_model",
                        lambda _name: BertModel(BertConfig(**text)))
    swin = config["backbone_config"]
    args = SimpleNamespace(
        hidden_dim=config["d_model"], position_embedding="sine", pe_temperatureH=20, pe_temperatureW=20,
        dropout=0.0, nheads=config["encoder_attention_heads"], num_queries=config["num_queries"],
        dim_feedforward=config["encoder_ffn_dim"], enc_layers=config["encoder_layers"],
        dec_layers=config["decoder_layers"], pre_norm=False, query_dim=4, transformer_activation="relu",
        num_patterns=0, num_feature_levels=4, enc_n_points=4, dec_n_points=4, two_stage_type="standard",
        embed_init_tgt=True, use_text_enhancer=True, use_fusion_layer=True, use_checkpoint=False,
        use_transformer_ckpt=False, use_text_cross_attention=True, text_dropout=0.0, fusion_dropout=0.0,
        fusion_droppath=0.1,
    )
    backbone = SwinTransformer(pretrain_img_size=swin["image_size"], embed_dim=swin["embed_dim"], depths=swin["depths"],
                               num_heads=swin["num_heads"], window_size=swin["window_size"], out_indices=(1, 2, 3))
    joiner = Joiner(backbone, build_position_encoding(args))
    joiner.num_channels = backbone.num_features[1:]
    model = official.GroundingDINO(
        joiner, build_transformer(args), num_queries=args.num_queries, aux_loss=True, iter_update=True, query_dim=4,
        num_feature_levels=4, nheads=args.nheads, dec_pred_bbox_embed_share=True, two_stage_type="standard",
        two_stage_bbox_embed_share=False, two_stage_class_embed_share=False, num_patterns=0, dn_number=0,
        text_encoder_type="bert-base-uncased", sub_sentence_present=True, max_text_len=256,
    )
    return model.eval()


def write_tiny_checkpoint(folder: Path, seed: int = 0) -> dict[str, str]:
    """A tiny seeded random Grounding DINO saved as a user gives one (safetensors weights, a config
    JSON, a vocab): the `checkpoint`, `config` and `vocab` of a `grounding_dino` stage's `with:`.
    The chain tests of the core, `serve` and the other plugins build theirs here."""
    import json

    from recognize_grounding_dino.model import build_config, build_model, load_tokenizer
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    vocab = make_vocab(folder)
    config = tiny_config(len(load_tokenizer(vocab)))
    save_model(randomize_(build_model(build_config("swint_ogc", config)), seed=seed), str(folder / "tiny.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return {"checkpoint": str(folder / "tiny.safetensors"), "config": str(folder / "config.json"), "vocab": str(vocab)}
