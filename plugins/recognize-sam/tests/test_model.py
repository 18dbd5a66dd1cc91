from __future__ import annotations

import pytest
import torch
from sam_support import TINY_CONFIG
from pydantic import ValidationError

from recognize.errors import ModelFileError
from recognize_sam.model import EMBED_DIMS, SamConfig, build_sam, load_checkpoint


class NotWeights:
    """An arbitrary object: a checkpoint holding one needs an unsafe pickle."""


@pytest.fixture
def saved_tiny(tmp_path, tiny_sam):
    path = tmp_path / "tiny_sam.pth"
    torch.save(tiny_sam.state_dict(), path)
    return path


def fresh_tiny(seed: int = 1, on_meta: bool = False):
    return build_sam(config=SamConfig(**TINY_CONFIG), seed=seed, on_meta=on_meta)


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone(tiny_sam):
    state = torch.random.get_rng_state()
    again = fresh_tiny(seed=0)
    assert torch.equal(state, torch.random.get_rng_state())
    other = fresh_tiny(seed=1)
    for (name, a), b, c in zip(tiny_sam.state_dict().items(), again.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(tiny_sam.mask_decoder.iou_token.weight, other.mask_decoder.iou_token.weight)
    assert not again.training


def test_official_variant_is_segment_anythings_architecture():
    sam = build_sam("vit_b")
    encoder = sam.image_encoder
    assert encoder.patch_embed.proj.weight.shape[0] == EMBED_DIMS["vit_b"]
    assert len(encoder.blocks) == 12 and encoder.img_size == 1024


def test_strict_load_round_trip(saved_tiny, tiny_sam):
    loaded = load_checkpoint(fresh_tiny(seed=5), saved_tiny)
    for (name, a), b in zip(tiny_sam.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_meta_built_model_loads_exactly_what_an_eager_build_loads(saved_tiny, tiny_sam):
    """Built on meta and assigned from the memory-mapped file: tensor for tensor (buffers included) the
    model segment-anything's way (random init, then copy) gives, with no meta tensor left."""
    lazy = fresh_tiny(on_meta=True)
    assert all(p.is_meta for p in lazy.parameters())
    assert not any(b.is_meta for b in lazy.buffers())  # pixel statistics: computed, in no checkpoint
    load_checkpoint(lazy, saved_tiny)
    eager = load_checkpoint(fresh_tiny(seed=5), saved_tiny)
    assert not any(t.is_meta for t in [*lazy.parameters(), *lazy.buffers()])
    lazy_tensors = {**dict(lazy.named_parameters()), **dict(lazy.named_buffers())}
    eager_tensors = {**dict(eager.named_parameters()), **dict(eager.named_buffers())}
    assert lazy_tensors.keys() == eager_tensors.keys()
    assert {"pixel_mean", "pixel_std", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"} <= lazy_tensors.keys()
    for name, tensor in eager_tensors.items():
        assert torch.equal(lazy_tensors[name], tensor), name
        assert lazy_tensors[name].dtype == tensor.dtype and lazy_tensors[name].is_contiguous(), name
    assert all(p.requires_grad == q.requires_grad for p, q in zip(lazy.parameters(), eager.parameters()))
    image = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        assert torch.equal(lazy.image_encoder(image), eager.image_encoder(image))


def test_meta_built_model_takes_the_models_dtype(tmp_path, tiny_sam):
    """A float16 file loaded into the float32 model: float32 tensors, as a copy into real parameters gives."""
    path = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in tiny_sam.state_dict().items()}, path)
    lazy, eager = load_checkpoint(fresh_tiny(on_meta=True), path), load_checkpoint(fresh_tiny(), path)
    for (name, a), b in zip(lazy.state_dict().items(), eager.state_dict().values()):
        assert a.dtype == torch.float32 and torch.equal(a, b), name


@pytest.mark.parametrize("on_meta", [False, True])
def test_mismatch_is_one_line_error_for_either_build(tmp_path, tiny_sam, on_meta):
    state = dict(tiny_sam.state_dict())
    state.pop("mask_decoder.iou_token.weight")
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(ModelFileError, match="1 missing keys") as info:
        load_checkpoint(fresh_tiny(on_meta=on_meta), path, expected="custom")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda s: s.pop("mask_decoder.iou_token.weight"), ["1 missing keys", "mask_decoder.iou_token.weight"]),
        (lambda s: s.__setitem__("image_encoder.extra", torch.zeros(1)), ["1 unexpected keys", "image_encoder.extra"]),
        (
            lambda s: s.__setitem__("image_encoder.patch_embed.proj.weight", torch.zeros(768, 3, 16, 16)),
            ["1 keys of another shape", "looks like a vit_b checkpoint"],
        ),
    ],
    ids=["missing", "unexpected", "reshaped"],
)
def test_mismatch_is_one_line_error(tmp_path, tiny_sam, edit, words):
    state = dict(tiny_sam.state_dict())
    edit(state)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(ModelFileError) as info:
        load_checkpoint(fresh_tiny(), path, expected="custom")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "does not fit SAM custom" in message
    for word in words:
        assert word in message


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"model": NotWeights()}, path)
    with pytest.raises(ModelFileError, match="refused: the SAM checkpoint holds Python objects other than tensors") as info:
        load_checkpoint(fresh_tiny(), path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"not a checkpoint at all", None])
def test_garbage_or_missing_file(tmp_path, content):
    path = tmp_path / "bad.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelFileError) as info:
        load_checkpoint(fresh_tiny(), path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ModelFileError, match="expected a state dict of tensors"):
        load_checkpoint(fresh_tiny(), path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"encoder_num_heads": 3}, "multiple of encoder_num_heads"),
        ({"encoder_global_attn_indexes": [2]}, "are not blocks"),
        ({"encoder_window": 7}, "Extra inputs are not permitted"),
    ],
)
def test_config_validation(change, message):
    with pytest.raises(ValidationError, match=message):
        SamConfig(**{**TINY_CONFIG, **change})
