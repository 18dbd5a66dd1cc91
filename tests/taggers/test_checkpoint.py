"""Strict official-checkpoint loading: wrapping, renames, and one-line errors for every kind of bad file."""

from __future__ import annotations

import pickle

import pytest
import torch

from recognize.errors import ModelFileError
from recognize.taggers.checkpoint import load_official, read_checkpoint
from recognize.taggers.ram import RamConfig, build_model


@pytest.fixture(scope="module")
def state(ram_plus_fixture):
    return read_checkpoint(ram_plus_fixture / "checkpoint.pth")


@pytest.fixture
def model(ram_plus_fixture):
    return build_model(RamConfig.from_fixture_config(ram_plus_fixture / "config.json"))


def _save(tmp_path, obj, name="ck.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _error(model, path) -> str:
    with pytest.raises(ModelFileError) as err:
        load_official(model, path, model.key_spec())
    assert "\n" not in str(err.value)
    return str(err.value)


def test_extra_top_level_keys_and_old_names_are_accepted(model, state, tmp_path):
    renamed = {k.replace("tagging_head", "vision_multi"): v for k, v in state.items()}
    path = _save(tmp_path, {"model": renamed, "optimizer": {"state": {}}, "epoch": 3, "config": {"lr": 1.0}})
    report = load_official(model, path, model.key_spec())
    assert torch.equal(model.reweight_scale, state["reweight_scale"])
    assert torch.equal(model.tagging_head.layers[1].ffn_out.weight,
                       state["tagging_head.encoder.layer.1.output.dense.weight"])
    assert sorted(report.dropped) == sorted(k for k in state if "relative_position_index" in k or "attn_mask" in k)


def test_missing_key(model, state, tmp_path):
    broken = dict(state)
    del broken["fc.bias"]
    message = _error(model, _save(tmp_path, {"model": broken}))
    assert "missing" in message and "fc.bias" in message


def test_unexpected_key(model, state, tmp_path):
    extra = {**state, "text_decoder.cls.predictions.bias": torch.zeros(3)}
    message = _error(model, _save(tmp_path, {"model": extra}))
    assert "unexpected" in message and "text_decoder" in message


def test_shape_mismatch(model, state, tmp_path):
    bad = {**state, "fc.weight": torch.zeros(1, 7)}
    message = _error(model, _save(tmp_path, {"model": bad}))
    assert "fc.weight" in message and "[1, 7]" in message


def test_tied_copies_must_be_equal(ram_fixture, tmp_path):
    model = build_model(RamConfig.from_fixture_config(ram_fixture / "config.json"))
    state = read_checkpoint(ram_fixture / "checkpoint.pth")
    key = "tag_encoder.encoder.layer.0.intermediate.dense.weight"
    assert torch.equal(state[key], state["tagging_head.encoder.layer.0.intermediate.dense.weight"])
    report = load_official(model, state, model.key_spec())
    assert report.tied_checked == 34 and any(k.startswith("text_decoder.") for k in report.ignored)
    state = dict(state)
    state[key] = state[key].clone() + 1
    message = _error(model, _save(tmp_path, {"model": state}))
    assert "tied weights differ" in message


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": {"x": torch.nn.Linear(1, 1)}}, handle, protocol=2)
    with pytest.raises(ModelFileError, match="evil.pth"):
        read_checkpoint(path)


def test_truncated_and_missing_files(ram_plus_fixture, tmp_path):
    data = (ram_plus_fixture / "checkpoint.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a readable checkpoint: a truncated or damaged zip archive"):
        read_checkpoint(tmp_path / "cut.pth")
    with pytest.raises(ModelFileError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "absent.pth")
    with pytest.raises(ModelFileError, match="not a model checkpoint"):
        read_checkpoint(_save(tmp_path, {"epoch": 1}))


def test_bias_tables_of_another_window_are_resampled(ram_plus_fixture, state):
    import json

    config = json.loads((ram_plus_fixture / "config.json").read_text())
    config["swin_config_json"]["window_size"] = 5  # tables 9x9 instead of the checkpoint's 13x13
    model = build_model(RamConfig.from_fixture_config(config))
    report = load_official(model, state, model.key_spec())
    assert len(report.adapted) == 6
    table = model.visual_encoder.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (81, 2) and torch.isfinite(table).all()
    source = state["visual_encoder.layers.0.blocks.0.attn.relative_position_bias_table"].view(13, 13, 2)
    assert torch.allclose(table.view(9, 9, 2)[4, 4], source[6, 6], atol=1e-4)  # the centre stays put


# -- building on meta: no random init, the checkpoint's tensors assigned ---------------------------


@pytest.mark.parametrize("fixture_name", ["ram_fixture", "ram_plus_fixture"])
def test_meta_built_model_holds_exactly_the_checkpoint(fixture_name, request):
    from recognize.taggers.checkpoint import parameters_on_meta

    folder = request.getfixturevalue(fixture_name)
    config = RamConfig.from_fixture_config(folder / "config.json")
    with parameters_on_meta():
        lazy = build_model(config)
    assert all(p.is_meta for p in lazy.parameters())
    assert not torch.nn.Linear(2, 2).weight.is_meta  # the patch ends with the block
    report = load_official(lazy, folder / "checkpoint.pth", lazy.key_spec())
    eager = build_model(config)
    load_official(eager, folder / "checkpoint.pth", eager.key_spec())

    state = read_checkpoint(folder / "checkpoint.pth")
    key_map = lazy.key_spec().key_map
    lazy_state, eager_state = lazy.state_dict(), eager.state_dict()
    assert not any(t.is_meta for t in [*lazy.parameters(), *lazy.buffers()])
    for key, tensor in lazy_state.items():
        if key_map[key] not in report.adapted:
            assert torch.equal(tensor, state[key_map[key]]), key  # the parameter IS the checkpoint's tensor
        assert torch.equal(tensor, eager_state[key]), key
    # buffers the constructor computes (Swin's attention masks and position index) are computed again
    lazy_buffers = dict(lazy.named_buffers())
    for name, buffer in eager.named_buffers():
        assert torch.equal(lazy_buffers[name], buffer), name


def test_meta_building_is_limited_to_its_thread():
    import threading

    from recognize.taggers.checkpoint import parameters_on_meta

    built = {}
    inside, release = threading.Event(), threading.Event()

    def other_thread():
        inside.wait(timeout=30)
        built["other"] = torch.nn.Linear(2, 2)  # built while the main thread is inside the block
        release.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with parameters_on_meta():
        inside.set()
        release.wait(timeout=30)
        built["here"] = torch.nn.Linear(2, 2)
    worker.join()
    assert built["here"].weight.is_meta and not built["other"].weight.is_meta
    assert not torch.nn.Linear(2, 2).weight.is_meta
