"""Bad weights files are one line that says what the file looks like, for every loader."""

import argparse
import pickle

import pytest
import torch

from recognize.errors import ModelFileError
from recognize.weights_file import describe_bad_checkpoint, read_weights

LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 1583527744\n"


def _good_zip(tmp_path):
    path = tmp_path / "good.pth"
    torch.save({"w": torch.arange(2000.0)}, path)
    return path


def bad_files(tmp_path) -> dict[str, tuple[bytes, str]]:
    """name -> (content, what the message must say)"""
    good = _good_zip(tmp_path).read_bytes()
    return {
        "text.pth": (b"hello\n", "a text file (6 bytes) starting 'hello'"),
        "lfs.pth": (LFS, "a Git LFS pointer"),
        "page.pth": (b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>", "an HTML page"),
        "empty.pth": (b"", "an empty file"),
        "cut.pth": (good[: len(good) // 2], "a truncated or damaged zip archive"),
        "noise.pth": (bytes(range(256)) * 8, "binary data of an unknown kind"),
        "cut.safetensors": (b"\x40\x00\x00\x00\x00\x00\x00\x00{\"w\": {\"dtype\"", "safetensors"),
        "json.pth": (b'{"error": "not found"}', "a JSON file"),
    }


def test_bad_files_are_described_not_passed_through(tmp_path):
    for name, (content, expected) in bad_files(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(content)
        assert expected in describe_bad_checkpoint(path), name
        with pytest.raises(ModelFileError) as info:
            read_weights(path)
        message = str(info.value)
        assert message.startswith(f"{path}: not a readable checkpoint: ") and expected in message, message
        assert "\n" not in message and "KeyError" not in message and "weights_only" not in message


@pytest.mark.parametrize(
    "obj,named",
    [({"model": torch.nn.Linear(1, 1)}, "torch.nn.modules.linear.Linear"),
     ({"args": argparse.Namespace(lr=1)}, "argparse.Namespace")],
)
def test_pickled_objects_are_refused_without_torchs_unsafe_advice(tmp_path, obj, named):
    path = tmp_path / "objects.pth"
    torch.save(obj, path)
    with pytest.raises(ModelFileError) as info:
        read_weights(path)
    message = str(info.value)
    assert f"holds Python objects other than tensors ({named})" in message
    assert "weights_only" not in message and "\n" not in message


def test_code_in_a_pickle_never_runs(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("import pathlib; pathlib.Path('ran').write_text('x')",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"w": Boom()}, handle, protocol=2)
    with pytest.raises(ModelFileError, match="refused"):
        read_weights(path)
    assert not (tmp_path / "ran").exists()


def test_good_files_of_each_format_load(tmp_path):
    from safetensors.torch import save_file

    assert torch.equal(read_weights(_good_zip(tmp_path))["w"], torch.arange(2000.0))
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_weights(legacy)["w"], torch.ones(3))
    st = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(2)}, str(st))
    assert torch.equal(read_weights(st)["w"], torch.ones(2))


def test_missing_and_folder(tmp_path):
    with pytest.raises(ModelFileError, match="no such checkpoint file"):
        read_weights(tmp_path / "absent.pth")
    with pytest.raises(ModelFileError, match="is a folder, not a checkpoint file"):
        read_weights(tmp_path)


def test_every_loader_says_what_a_text_file_is(tmp_path):
    """The tagger checkpoint reader, CLIP, Grounding DINO and SAM loaders all go through read_weights."""
    from recognize.taggers.checkpoint import read_checkpoint
    from recognize.taggers.openset import read_clip_state

    path = tmp_path / "short.pth"
    path.write_text("404: Not Found")
    loaders = [read_checkpoint, read_clip_state]
    try:
        from recognize_grounding_dino.model import read_state_dict

        loaders.append(read_state_dict)
    except ImportError:
        pass
    try:
        from recognize_sam.model import load_checkpoint

        loaders.append(lambda p: load_checkpoint(None, p))
    except ImportError:
        pass
    assert len(loaders) >= 2
    for load in loaders:
        with pytest.raises(ModelFileError) as info:
            load(path)
        assert "a text file (14 bytes) starting '404: Not Found'" in str(info.value), load


def test_load_strictly_loads_a_fitting_state_and_names_the_misfit_in_one_line(tmp_path):
    import torch

    from recognize.errors import ModelFileError
    from recognize.weights_file import load_strictly

    module = torch.nn.Linear(3, 2)
    state = {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}
    assert load_strictly(module, state, tmp_path / "w.pt", "a 3->2 layer") is module
    assert torch.equal(module.weight, torch.ones(2, 3))
    with pytest.raises(ModelFileError) as error:
        load_strictly(module, {"weight": torch.ones(4, 3)}, tmp_path / "w.pt", "a 3->2 layer", looks_like="a 3->4")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'w.pt'} does not fit a 3->2 layer: ")
    assert "1 missing keys (bias)" in message and "1 keys of another shape (weight)" in message
    assert message.endswith("; it looks like a 3->4 checkpoint")
