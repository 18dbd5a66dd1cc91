"""The full-size released models, built on the meta device, map exactly the official manifests' keys.

`manifest_state(path)` and `check_manifest(model, spec, path)` are reusable (Tag2Text's test uses them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from recognize.errors import ModelFileError
# parameters on meta, not `with torch.device("meta")`: timm 1.0.20 and older call `.tolist()` on a linspace they build
from recognize.meta_init import parameters_on_meta
from recognize.taggers.checkpoint import KeySpec, map_state_dict
from recognize.taggers.ram import RamConfig, build_model

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference")) / "manifests"


def manifest_state(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The manifest and a meta-tensor state dict with its keys and shapes."""
    if not path.is_file():
        pytest.skip(f"manifest {path} not found")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    state = {k["key"]: torch.empty(k["shape"], device="meta") for k in manifest["keys"]}
    return manifest, state


def check_manifest(model: torch.nn.Module, spec: KeySpec, path: Path) -> None:
    """Every manifest key is loaded, ignored by name or a dropped buffer; every model key is filled
    with the manifest's shape; the tied groups are the manifest's."""
    manifest, state = manifest_state(path)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    mapped, report = map_state_dict(state, spec, expected, source=path.name)
    assert set(mapped) == set(expected)
    for key, tensor in mapped.items():
        assert tensor.shape == expected[key], key
    assert not report.adapted
    assert set(report.dropped) == set(manifest["keys_deleted_by_official_loader"])
    assert set(report.loaded) | set(report.ignored) | set(report.dropped) == set(state)
    assert len(report.loaded) + len(report.ignored) + len(report.dropped) == manifest["num_state_dict_keys"]
    assert sorted(map(sorted, spec.tied_groups)) == sorted(map(sorted, manifest["tied_groups"]))
    # unique parameter elements of what we load = the manifest's, minus the ignored (unused) parts
    ignored_unique = {k for k in report.ignored if not any(k in g for g in spec.tied_groups)}
    ignored_tied = [g for g in manifest["tied_groups"] if all(k in report.ignored for k in g)]
    ignored_elements = sum(state[k].numel() for k in ignored_unique if "position_ids" not in k)
    ignored_elements += sum(state[g[0]].numel() for g in ignored_tied)
    ours = sum(p.numel() for p in model.parameters())
    assert ours == manifest["num_unique_parameter_elements"] - ignored_elements
    model.load_state_dict(mapped, strict=True, assign=True)  # the meta model accepts the mapped dict


@pytest.mark.parametrize("variant,file", [("ram", "ram_swin_large_14m"), ("ram_plus", "ram_plus_swin_large_14m")])
def test_released_model_maps_the_manifest(variant, file):
    with parameters_on_meta():
        model = build_model(RamConfig.released(variant, 384))
    check_manifest(model, model.key_spec(), MANIFESTS / f"{file}.json")


def test_224_variant_resamples_the_bias_tables():
    with parameters_on_meta():
        model = build_model(RamConfig.released("ram_plus", 224))
    _, state = manifest_state(MANIFESTS / "ram_plus_swin_large_14m.json")
    expected = {k: v.shape for k, v in model.state_dict().items()}
    mapped, report = map_state_dict(state, model.key_spec(), expected)
    assert len(report.adapted) == 24  # one table per block: 23x23 -> 13x13
    assert mapped["visual_encoder.layers.0.blocks.0.attn.relative_position_bias_table"].shape == (169, 6)


def test_wrong_model_checkpoint_is_a_one_line_error():
    with parameters_on_meta():
        ram = build_model(RamConfig.released("ram", 384))
    _, state = manifest_state(MANIFESTS / "ram_plus_swin_large_14m.json")
    with pytest.raises(ModelFileError) as err:
        map_state_dict(state, ram.key_spec(), {k: v.shape for k, v in ram.state_dict().items()}, "x.pth")
    assert "\n" not in str(err.value) and "label_embed" in str(err.value)
