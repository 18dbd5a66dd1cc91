from __future__ import annotations

import pytest
import torch
from owl_support import TINY_CONFIG
from safetensors.torch import save_file

from recognize.errors import ModelFileError
from recognize_owlv2.model import ARCHITECTURES, build_config, build_owlv2, load_checkpoint


class NotWeights:
    """An arbitrary object: a checkpoint holding one needs an unsafe pickle."""


def fresh(seed: int = 1):
    return build_owlv2(custom=TINY_CONFIG, seed=seed)


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone(tiny_owlv2):
    state = torch.random.get_rng_state()
    again = fresh(seed=0)
    assert torch.equal(state, torch.random.get_rng_state())
    for (name, a), b in zip(tiny_owlv2.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert not again.training


@pytest.mark.parametrize("variant", list(ARCHITECTURES))
def test_released_architectures(variant):
    config = build_config(variant)
    large = variant.startswith("large")
    assert config.vision_config.image_size == (1008 if large else 960)
    assert config.vision_config.patch_size == (14 if large else 16)
    assert config.projection_dim == (768 if large else 512)
    assert config.text_config.max_position_embeddings == 16 and config.text_config.vocab_size == 49408


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_strict_load_round_trip(tmp_path, tiny_owlv2, suffix):
    path = tmp_path / f"model{suffix}"
    state = {k: v.contiguous() for k, v in tiny_owlv2.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = load_checkpoint(fresh(seed=5), path)
    for (name, a), b in zip(tiny_owlv2.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda s: s.pop("class_head.logit_shift.weight"), ["1 missing keys", "class_head.logit_shift.weight"]),
        (lambda s: s.__setitem__("box_head.extra", torch.zeros(1)), ["1 unexpected keys", "box_head.extra"]),
        (lambda s: s.__setitem__("owlv2.vision_model.embeddings.patch_embedding.weight", torch.zeros(768, 3, 16, 16)),
         ["1 keys of another shape", "it looks like an OWLv2 base (patch 16) checkpoint"]),
    ],
    ids=["missing", "unexpected", "reshaped"],
)
def test_mismatch_is_one_line_error(tmp_path, tiny_owlv2, edit, words):
    state = {k: v.contiguous() for k, v in tiny_owlv2.state_dict().items()}
    edit(state)
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelFileError) as info:
        load_checkpoint(fresh(), path, expected="OWLv2 custom")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "does not fit OWLv2 custom" in message
    for word in words:
        assert word in message


def test_old_position_id_buffers_are_tolerated(tmp_path, tiny_owlv2):
    state = {k: v.contiguous() for k, v in tiny_owlv2.state_dict().items()}
    state["owlv2.text_model.embeddings.position_ids"] = torch.arange(16)[None]
    path = tmp_path / "old.safetensors"
    save_file(state, str(path))
    load_checkpoint(fresh(), path)


def test_unsafe_pickle_and_garbage_are_refused(tmp_path):
    unsafe = tmp_path / "unsafe.bin"
    torch.save({"w": NotWeights()}, unsafe)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not weights")
    html = tmp_path / "login.bin"
    html.write_bytes(b"<!DOCTYPE html><html>sign in</html>")
    for path, says in ((unsafe, "refused: the OWLv2 checkpoint holds Python objects"),
                       (garbage, "not a readable OWLv2 checkpoint"), (html, "an HTML page")):
        with pytest.raises(ModelFileError, match=says) as info:
            load_checkpoint(fresh(), path)
        assert "\n" not in str(info.value)
    with pytest.raises(ModelFileError, match="no such OWLv2 checkpoint file"):
        load_checkpoint(fresh(), tmp_path / "nowhere.safetensors")
