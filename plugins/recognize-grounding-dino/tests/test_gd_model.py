"""Building, loading and tokenizer checks (recognize_grounding_dino.model)."""

from __future__ import annotations

import argparse
import collections
import socket
import threading

import pytest
import torch
from safetensors.torch import load_file
from torch.overrides import TorchFunctionMode

from recognize.errors import ModelFileError, RecognizeError
from recognize_grounding_dino.model import (
    Detector, build_config, build_model, config_values, load_tokenizer, load_weights, read_state_dict,
)
from recognize_grounding_dino.versions import check_transformers


def test_construction_never_touches_the_network(tiny_checkpoint, vocab, tiny, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access during construction")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    detector = Detector.load("swint_ogc", tiny_checkpoint, vocab, config=tiny)
    assert detector.model.config.text_config.hidden_size == 32
    assert detector.tokenizer.convert_tokens_to_ids("[CLS]") == 101


@pytest.mark.parametrize(("version", "refused"), [
    ("4.57.6", True), ("5.9.0", True), ("5.22.2", True), ("5.23.0.dev0", True), ("5.23.0rc1", True),
    ("5.23.0", False), ("5.25.0", False), ("6.0.0", False), ("main", False),
])
def test_a_transformers_below_the_floor_is_a_one_line_error(version, refused):
    if not refused:
        check_transformers(version)
        return
    with pytest.raises(RecognizeError) as error:
        check_transformers(version)
    message = str(error.value)
    assert "\n" not in message and f"installed: {version}" in message and "transformers>=5.23" in message


def test_the_stage_checks_transformers_before_naming_any_file_to_fetch(monkeypatch):
    import importlib.metadata

    from recognize_grounding_dino.stage import GroundingDino

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "5.22.2" if name == "transformers" else real(name))
    with pytest.raises(RecognizeError, match=r"transformers >= 5\.23 \(installed: 5\.22\.2\)"):
        GroundingDino().model_files()  # what the engines read before downloading anything


def _official_position_ids(ids: list[int]) -> list[int]:
    """The official code's text position ids (groundingdino's `generate_masks_with_special_tokens_and_
    transfer_map`, one row): each phrase's tokens count 0, 1, ... up to and including its closing
    delimiter; the first and last tokens are 0."""
    positions, previous = [0] * len(ids), 0
    for col, token in enumerate(ids):
        if token not in (101, 102, 1012, 1029):
            continue
        if col not in (0, len(ids) - 1):
            positions[previous + 1 : col + 1] = range(col - previous)
        previous = col
    return positions


def test_the_floor_is_where_transformers_numbers_caption_tokens_as_the_official_code():
    """What `MIN_TRANSFORMERS` guards: the installed transformers (at or above the floor) gives the
    official position ids, where 5.0-5.22 gave each closing "." 0 (checked by hand on 5.22.2)."""
    from transformers.models.grounding_dino import modeling_grounding_dino as gd

    check_transformers()  # the installed one is at or above the floor
    rows = [[101, 2000, 2001, 1012, 2002, 1012, 102], [101, 2000, 1012, 2001, 2002, 2003, 1012, 102]]
    for row in rows:
        ids = torch.tensor([row])
        try:
            _, positions = gd.generate_masks_with_special_tokens_and_transfer_map(ids)
        except TypeError:  # 5.23 takes the delimiter ids as an argument
            _, positions = gd.generate_masks_with_special_tokens_and_transfer_map(ids, torch.tensor(gd.SPECIAL_TOKENS))
        assert positions[0].tolist() == _official_position_ids(row)
    assert _official_position_ids(rows[0]) == [0, 0, 1, 2, 0, 1, 0]


def test_presets_are_the_released_architectures():
    tiny_t = build_config("swint_ogc")
    base = build_config("swinb")
    assert (tiny_t.backbone_config.embed_dim, tiny_t.backbone_config.window_size) == (96, 7)
    assert (base.backbone_config.embed_dim, list(base.backbone_config.depths)) == (128, [2, 2, 18, 2])
    for config in (tiny_t, base):
        assert (config.d_model, config.num_queries, config.max_text_len) == (256, 900, 256)
        assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (768, 12)
        assert config.two_stage and not config.two_stage_bbox_embed_share and config.decoder_bbox_embed_share
    # a config overrides the preset field by field, nested dicts included
    values = config_values("swinb", {"num_queries": 10, "backbone_config": {"depths": [1, 1, 1, 1]}})
    assert values["num_queries"] == 10 and values["backbone_config"]["embed_dim"] == 128
    with pytest.raises(RecognizeError):
        build_config("swint_ogc", {"backbone_config": {"model_type": "no-such-model"}})


def test_weights_stored_once_for_tied_heads_still_load(tiny_checkpoint, tiny):
    # safetensors (like transformers' save_pretrained) keeps one name for the box head that all
    # decoder layers share; the other names are filled from it, nothing else is
    state = read_state_dict(tiny_checkpoint)
    model = build_model(build_config("swint_ogc", tiny), init_weights=False)
    expected = model.state_dict()
    absent = sorted(set(expected) - set(state))
    assert absent and all("bbox_embed" in k for k in absent)
    load_weights(model, state, "tied")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    stored = {loaded[k].data_ptr() for k in state}
    assert all(loaded[k].data_ptr() in stored for k in absent)  # each absent name aliases a stored tensor


def test_missing_or_foreign_weights_are_one_line_errors(tiny_checkpoint, tiny, tmp_path):
    state = load_file(str(tiny_checkpoint))
    model = build_model(build_config("swint_ogc", tiny), init_weights=False)
    partial = {k: v for k, v in state.items() if "text_projection" not in k}
    with pytest.raises(ModelFileError, match=r"missing \(first: model.text_projection"):
        load_weights(model, partial, "partial.pth")
    with pytest.raises(ModelFileError, match=r"1 unexpected \(first: extra.weight\)"):
        load_weights(model, {**state, "extra.weight": torch.zeros(1)}, "x.pth")

    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError) as error:
        read_state_dict(broken)
    assert str(broken) in str(error.value) and "\n" not in str(error.value)
    # pickled Python objects are refused: checkpoints load with weights_only=True
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": {}, "args": argparse.Namespace(lr=1)}, pickled)
    with pytest.raises(ModelFileError, match=r"refused: .* objects other than tensors \(argparse\.Namespace\)"):
        read_state_dict(pickled)


def test_the_vocab_must_keep_bert_delimiter_ids(vocab, tmp_path):
    tokens = vocab.read_text().splitlines()
    tokens[1012], tokens[1013] = tokens[1013], tokens[1012]  # "." moves
    moved = tmp_path / "vocab.txt"
    moved.write_text("\n".join(tokens) + "\n")
    with pytest.raises(ModelFileError, match=r"'\.' must have id 1012"):
        load_tokenizer(moved)
    assert load_tokenizer(vocab).convert_tokens_to_ids("?") == 1029


# -- building on meta: no init, the checkpoint's tensors assigned (recognize.meta_init) -----------------
def _all_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}


def _outputs(model: torch.nn.Module, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    pixels = torch.randn(1, 3, 96, 128)
    ids = torch.tensor([tokenizer("cat . dog .")["input_ids"]])
    with torch.inference_mode():
        out = model(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids),
                    token_type_ids=torch.zeros_like(ids))
    return out.logits, out.pred_boxes


def test_meta_built_model_holds_exactly_what_an_eager_load_holds(tiny_checkpoint, tiny, tokenizer):
    config = build_config("swint_ogc", tiny)
    eager = build_model(config, init_weights=False)
    load_weights(eager, read_state_dict(tiny_checkpoint), "eager")
    state = read_state_dict(tiny_checkpoint)
    lazy = build_model(config, on_meta=True)
    assert all(p.is_meta for p in lazy.parameters())
    assert not any(b.is_meta for b in lazy.buffers())  # computed by the constructors, real
    load_weights(lazy, state, "lazy")
    lazy_tensors, eager_tensors = _all_tensors(lazy), _all_tensors(eager)
    assert lazy_tensors.keys() == eager_tensors.keys()
    assert not any(t.is_meta for t in lazy_tensors.values())
    for name, tensor in eager_tensors.items():
        assert torch.equal(lazy_tensors[name], tensor), name
        assert lazy_tensors[name].dtype == tensor.dtype, name
    # the box head stored once is one tensor under every decoder layer's name, as in the eager load
    stored = {lazy_tensors[k].data_ptr() for k in state if k in lazy_tensors}
    assert all(t.data_ptr() in stored for k, t in lazy.state_dict().items() if "bbox_embed" in k)
    for got, expected in zip(_outputs(lazy, tokenizer), _outputs(eager, tokenizer)):
        assert torch.equal(got, expected)


def test_meta_built_model_without_the_unread_swin_norm(tiny_checkpoint, tiny, tokenizer):
    """Official files lack transformers 5's final Swin `layernorm` (no forward reads it): the meta
    build fills it with zeros (the eager one keeps uninitialised memory); outputs are the same."""
    from recognize_grounding_dino.convert import _SWIN_UNREAD

    config = build_config("swint_ogc", tiny)
    eager = build_model(config, init_weights=False)
    load_weights(eager, read_state_dict(tiny_checkpoint), "eager")
    state = {k: v for k, v in read_state_dict(tiny_checkpoint).items() if not _SWIN_UNREAD.match(k)}
    lazy = build_model(config, on_meta=True)
    load_weights(lazy, state, "official-like")
    assert not any(t.is_meta for t in _all_tensors(lazy).values())
    for got, expected in zip(_outputs(lazy, tokenizer), _outputs(eager, tokenizer)):
        assert torch.equal(got, expected)


#: In-place ops that fill a tensor with random values: what an init that runs for real costs.
_RANDOM_FILLS = {"uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                 "xavier_normal_", "orthogonal_", "sparse_", "erfinv_", "bernoulli_", "exponential_", "random_",
                 "geometric_", "log_normal_", "cauchy_"}


class _InPlaceOpsOnRealTensors(TorchFunctionMode):
    """Counts the in-place ops that reach real (not meta) tensors in this thread: outside
    `parameters_on_meta`'s own mode, so the ops it skips on meta tensors are never seen."""

    def __init__(self) -> None:
        super().__init__()
        self.names: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else kwargs.get("tensor")
        if isinstance(target, torch.Tensor) and not target.is_meta and name.endswith("_") and not name.endswith("__"):
            self.names[name] += 1
        return func(*args, **kwargs)


class _PauseAtFirstAllocation(TorchFunctionMode):
    """Holds this thread at its first `torch.empty` (the model's constructors are running) until
    another thread has done its work."""

    def __init__(self, inside: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.inside, self.release = inside, release

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not self.inside.is_set() and getattr(func, "__name__", "") == "empty":
            self.inside.set()
            self.release.wait(timeout=120)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("skip", [{"on_meta": True}, {"init_weights": False}], ids=["on_meta", "no_init"])
def test_a_build_without_init_leaves_other_threads_init_alone(tiny, skip):
    """The build runs on the background loading thread: another thread building a seeded module
    meanwhile gets its usual random init, and torch's init functions are the same objects after."""
    originals = {name: getattr(torch.nn.init, name) for name in ("uniform_", "kaiming_uniform_", "normal_")}
    torch.manual_seed(0)
    reference = torch.nn.Linear(16, 8)
    config = build_config("swint_ogc", tiny)
    inside, release = threading.Event(), threading.Event()
    built: dict[str, object] = {}

    def build() -> None:
        try:
            with _PauseAtFirstAllocation(inside, release):
                built["model"] = build_model(config, **skip)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            built["error"] = error
        finally:
            inside.set()

    worker = threading.Thread(target=build)
    worker.start()
    assert inside.wait(timeout=120)
    torch.manual_seed(0)
    here = torch.nn.Linear(16, 8)  # built while the other thread is inside the model's constructors
    release.set()
    worker.join(timeout=120)
    assert "error" not in built, built.get("error")
    assert torch.equal(here.weight, reference.weight) and torch.equal(here.bias, reference.bias)
    assert {name: getattr(torch.nn.init, name) for name in originals} == originals
    from transformers import PreTrainedModel
    assert PreTrainedModel.init_weights.__qualname__ == "PreTrainedModel.init_weights"


@pytest.mark.parametrize("skip", [{"on_meta": True}, {"init_weights": False}], ids=["on_meta", "no_init"])
def test_a_build_without_init_fills_nothing_with_random_values(tiny, skip):
    """The load path stays cheap: no random init reaches a real tensor (only buffers the
    constructors compute are written); the box heads stay tied."""
    recorder = _InPlaceOpsOnRealTensors()
    with recorder:
        model = build_model(build_config("swint_ogc", tiny), **skip)
    assert not _RANDOM_FILLS & set(recorder.names), recorder.names
    assert all(p.is_meta for p in model.parameters()) == ("on_meta" in skip)
    heads = {id(p) for name, p in model.named_parameters(remove_duplicate=False)
             if name.startswith("bbox_embed.") and name.endswith("layers.0.weight")}
    assert len(heads) == 1  # one box head shared by every decoder layer


def test_meta_built_model_keeps_the_one_line_errors(tiny_checkpoint, tiny):
    state = load_file(str(tiny_checkpoint))
    model = build_model(build_config("swint_ogc", tiny), on_meta=True)
    partial = {k: v for k, v in state.items() if "text_projection" not in k}
    with pytest.raises(ModelFileError, match=r"missing \(first: model.text_projection"):
        load_weights(model, partial, "partial.pth")
