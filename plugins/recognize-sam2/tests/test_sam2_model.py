from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from sam2_support import TINY_CONFIG

from recognize.errors import ModelFileError
from recognize_sam2.model import TRUNK_SIZES, Sam2Config, build_sam2, describe_checkpoint, load_checkpoint


class NotWeights:
    """An arbitrary object: a checkpoint holding one needs an unsafe pickle."""


def fresh_tiny(seed: int = 1):
    return build_sam2(config=Sam2Config(**TINY_CONFIG), seed=seed)


def official_layout(state) -> dict:
    """How Meta's files hold the weights: {"model": state_dict}."""
    return {"model": dict(state)}


@pytest.fixture
def saved_tiny(tmp_path, tiny_sam2):
    path = tmp_path / "tiny_sam2.pt"
    torch.save(official_layout(tiny_sam2.state_dict()), path)
    return path


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone(tiny_sam2):
    state = torch.random.get_rng_state()
    again = fresh_tiny(seed=0)
    assert torch.equal(state, torch.random.get_rng_state())
    other = fresh_tiny(seed=1)
    for (name, a), b in zip(tiny_sam2.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    key = "sam_mask_decoder.iou_token.weight"
    assert not torch.equal(tiny_sam2.state_dict()[key], other.state_dict()[key])
    assert not again.training


@pytest.mark.parametrize(
    "variant",
    [pytest.param(v, marks=pytest.mark.slow) if v == "hiera_large" else v for v in TRUNK_SIZES],
)
@pytest.mark.parametrize("release", ["2.1", "2"])
def test_official_variants_are_the_packages_configs(variant, release):
    from sam2.build_sam import build_sam2 as official_build

    from recognize_sam2.cards import config_name

    ours = build_sam2(variant, release)
    theirs = official_build(config_name(variant, release), ckpt_path=None, device="cpu")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert ours.sam_mask_decoder.dynamic_multimask_via_stability  # build_sam2's post-processing overrides
    assert describe_checkpoint(ours.state_dict()) == f"SAM {release} {variant}"


def test_strict_load_round_trip(saved_tiny, tiny_sam2, tmp_path):
    loaded = load_checkpoint(fresh_tiny(seed=5), saved_tiny)
    for (name, a), b in zip(tiny_sam2.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    bare = tmp_path / "bare.pt"  # torch.save(model.state_dict()) works too
    torch.save(tiny_sam2.state_dict(), bare)
    load_checkpoint(fresh_tiny(seed=5), bare)


def test_sam2_s_own_loader_accepts_what_we_accept(saved_tiny):
    """The file layout we read is the one sam2's `_load_checkpoint` reads (its `["model"]`)."""
    from sam2.build_sam import _load_checkpoint

    _load_checkpoint(fresh_tiny(seed=5), str(saved_tiny))


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda s: s.pop("sam_mask_decoder.iou_token.weight"), ["1 missing keys", "sam_mask_decoder.iou_token.weight"]),
        (lambda s: s.__setitem__("image_encoder.extra", torch.zeros(1)), ["1 unexpected keys", "image_encoder.extra"]),
        (lambda s: s.__setitem__("no_mem_embed", torch.zeros(2, 2)), ["1 keys of another shape", "no_mem_embed"]),
    ],
    ids=["missing", "unexpected", "reshaped"],
)
def test_mismatch_is_one_line_error(tmp_path, tiny_sam2, edit, words):
    state = dict(tiny_sam2.state_dict())
    edit(state)
    path = tmp_path / "edited.pt"
    torch.save(official_layout(state), path)
    with pytest.raises(ModelFileError) as info:
        load_checkpoint(fresh_tiny(), path, expected="SAM 2 custom")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "does not fit SAM 2 custom" in message
    for word in words:
        assert word in message


def test_another_variant_is_named(tmp_path):
    """A real-size checkpoint of the wrong variant: the message says which one it is."""
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save(official_layout(build_sam2("hiera_tiny", "2.1").state_dict()), path)
    with pytest.raises(ModelFileError) as info:
        load_checkpoint(build_sam2("hiera_small", "2.1"), path, expected="SAM 2.1 hiera_small")
    message = str(info.value)
    assert "\n" not in message and "missing keys" in message
    assert message.endswith("it looks like a SAM 2.1 hiera_tiny checkpoint")


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"model": NotWeights()}, path)
    with pytest.raises(ModelFileError, match="refused: the SAM 2 checkpoint holds Python objects") as info:
        load_checkpoint(fresh_tiny(), path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("content", "says"), [(b"not a checkpoint at all", "a text file"),
                                               (b"<!DOCTYPE html><html>sign in</html>", "an HTML page"),
                                               (None, "no such SAM 2 checkpoint file")])
def test_garbage_or_missing_file(tmp_path, content, says):
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelFileError) as info:
        load_checkpoint(fresh_tiny(), path)
    assert str(path) in str(info.value) and says in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("saved", [[torch.zeros(1)], {"model": {"a": 1}}, {}])
def test_not_a_state_dict(tmp_path, saved):
    path = tmp_path / "odd.pt"
    torch.save(saved, path)
    with pytest.raises(ModelFileError, match="expected {'model': state dict of tensors}"):
        load_checkpoint(fresh_tiny(), path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_heads": 3}, "multiple of num_heads"),
        ({"global_att_blocks": [9]}, "are not blocks of a 5-block trunk"),
        ({"global_att_blocks": [2]}, "start a stage, where Hiera pools"),
        ({"stages": [1, 0, 1, 1]}, "at least one block"),
        ({"stages": [1, 1, 1]}, r"stages\.3"),
        ({"window": 7}, "Extra inputs are not permitted"),
    ],
)
def test_config_validation(change, message):
    with pytest.raises(ValidationError, match=message):
        Sam2Config(**{**TINY_CONFIG, **change})
