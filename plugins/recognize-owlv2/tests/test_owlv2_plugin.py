"""The distribution is found the way a third-party plugin is: through the `recognize` entry point."""

from __future__ import annotations

from importlib import metadata

from recognize import plugins
from recognize_owlv2 import Owlv2


def test_entry_point_is_published():
    (entry,) = [e for e in metadata.entry_points(group="recognize") if e.name == "owlv2"]
    assert entry.value == "recognize_owlv2.plugin" and entry.dist.name == "recognize-owlv2"


def test_stage_and_model_cards_are_registered():
    plugins.reset()
    assert plugins.get_stage("owlv2") is Owlv2 and Owlv2.kind == "localizer"
    cards = plugins.model_cards()
    expected = {
        f"owlv2_{v}": f"https://huggingface.co/google/owlv2-{v.replace('_', '-')}/resolve/main/model.safetensors"
        for v in ("base_patch16_ensemble", "base_patch16", "large_patch14_ensemble")
    }
    for name, url in expected.items():
        (file,) = cards[name].files
        assert file.url == url and file.filename == "model.safetensors"
    info = next(i for i in plugins.plugin_infos() if i.name == "recognize-owlv2")
    assert info.stages == ["owlv2"] and sorted(info.models) == sorted(expected) and not info.builtin


def test_registering_the_stage_does_not_import_torch():
    # `recognize stages` / `recognize --help` load every plugin: torch (~1 s) waits for a model load
    import subprocess
    import sys

    code = ("import sys; from recognize_owlv2.plugin import register_stages; register_stages(lambda stage: None);"
            "from recognize_owlv2.stage import Owlv2Params; Owlv2Params(); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "False"
