"""recognize.fast_modes: what counts as a fast mode, the region cap, and how a run reports modes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from recognize.fast_modes import REASON_MAX_REGIONS, active_fast_modes, cap_regions, describe_fast_modes, slow_on_this_cpu
from recognize.frame import Frame, Region
from recognize.taggers.ram_stages import RamPlus


def _frame(scores) -> Frame:
    return Frame(source="x.jpg", regions=[Region(box=(i, i, i + 1, i + 1), score=s, tag=f"t{i}")
                                          for i, s in enumerate(scores)])


def test_cap_regions_keeps_the_best_in_their_order_and_records_the_rest():
    frame = _frame([0.2, 0.9, None, 0.5, 0.9])
    assert cap_regions(frame, 3, "sam") == 2
    assert [r.score for r in frame.regions] == [0.9, 0.5, 0.9]  # ties: the earlier one first; order unchanged
    assert [(d.tag, d.value, d.reason, d.stage) for d in frame.dropped] == [
        ("t0", 0.2, REASON_MAX_REGIONS, "sam"), ("t2", None, REASON_MAX_REGIONS, "sam")]
    assert frame.dropped[0].box == (0, 0, 1, 1)


@pytest.mark.parametrize("limit", [None, 5, 9])
def test_cap_regions_leaves_small_frames_alone(limit):
    frame = _frame([0.1, 0.2, 0.3, 0.4, 0.5])
    assert cap_regions(frame, limit, "sam") == 0
    assert len(frame.regions) == 5 and not frame.dropped


def test_cap_zero_drops_every_region():
    frame = _frame([0.1, 0.2])
    assert cap_regions(frame, 0, "x") == 2 and frame.regions == []


def test_taggers_dtype_is_a_fast_mode():
    assert active_fast_modes(RamPlus()) == {}
    assert active_fast_modes(RamPlus(dtype="bfloat16")) == {"dtype": "bfloat16"}
    line = describe_fast_modes({"ram_plus": {"dtype": "bfloat16"}, "sam": {"quantize": "int8", "max_regions": 5}})
    assert line.endswith("ram_plus dtype=bfloat16; sam quantize=int8 max_regions=5")


RECIPE = """\
recipe: 1
stages:
  - use: brightness
  - use: grid_boxes
    with: {count: 3}
  - use: box_mask
"""


def _speedstages_run(tmp_path):
    """(an image, RECIPE's file, the CLI's environment with the `speedstages` test plugin) for a CLI run."""
    from clihelp import cli_env
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    env = cli_env()
    env["RECOGNIZE_PLUGINS"] = ",".join(filter(None, [env.get("RECOGNIZE_PLUGINS"), "speedstages"]))
    return image, recipe, env


@pytest.mark.subprocess
def test_a_run_with_a_fast_mode_says_so(tmp_path):
    """The summary records the modes and stderr has the notice; an exact run has neither."""
    image, recipe, env = _speedstages_run(tmp_path)
    outs = {}
    for label, extra in (("exact", []), ("fast", ["--set", "stages.1.with.max_regions=1"])):
        out = tmp_path / label
        result = subprocess.run([sys.executable, "-m", "recognize", "run", str(recipe), str(image), "-o", str(out),
                                 "-q", *extra], capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr
        outs[label] = (result.stderr, json.loads((out / "summary.json").read_text()),
                       json.loads((out / "frames" / "in.png.json").read_text()))
    (exact_err, exact_summary, exact_frame), (fast_err, fast_summary, fast_frame) = outs["exact"], outs["fast"]
    assert exact_summary["fast_modes"] == {} and "fast modes" not in exact_err
    assert fast_summary["fast_modes"] == {"grid_boxes": {"max_regions": 1}}
    assert "fast modes on" in fast_err and "grid_boxes max_regions=1" in fast_err
    assert len(exact_frame["regions"]) == 3 and len(fast_frame["regions"]) == 1
    assert [d["reason"] for d in fast_frame["dropped"]] == [REASON_MAX_REGIONS] * 2


@pytest.mark.parametrize("flags, slow", [
    (frozenset({"avx2", "fma"}), True),
    (frozenset({"avx2", "avx512_bf16"}), False),
    (frozenset({"amx_bf16"}), False),
])
def test_a_bf16_fast_mode_on_a_cpu_without_bf16_instructions_is_warned_of(flags, slow):
    stages = [RamPlus(dtype="bfloat16", device="cpu"), RamPlus(device="cpu")]
    line = slow_on_this_cpu(stages, flags)
    if slow:
        assert line is not None and line.startswith("warning: ") and "\n" not in line
        assert "ram_plus dtype=bfloat16 (needs amx_bf16 or avx512_bf16)" in line
    else:
        assert line is None


def test_no_warning_for_exact_stages_or_where_the_flags_cannot_be_read(monkeypatch):
    from recognize import fast_modes

    assert slow_on_this_cpu([RamPlus(device="cpu")], frozenset()) is None
    monkeypatch.setattr(fast_modes, "cpu_flags", lambda: None)  # not Linux: nothing to judge by
    assert slow_on_this_cpu([RamPlus(dtype="bfloat16", device="cpu")]) is None
    monkeypatch.setattr(fast_modes, "cpu_flags", lambda: frozenset({"avx2"}))
    assert "ram_plus dtype=bfloat16" in slow_on_this_cpu([RamPlus(dtype="bfloat16", device="cpu")])


@pytest.mark.subprocess
def test_a_run_warns_of_a_fast_mode_this_cpu_has_no_instructions_for(tmp_path):
    """int8 on a CPU without int8 dot products: one warning line on stderr (even with -q); with them, none."""
    from recognize.fast_modes import CPU_FLAGS_FOR, cpu_flags

    image, recipe, env = _speedstages_run(tmp_path)
    result = subprocess.run([sys.executable, "-m", "recognize", "run", str(recipe), str(image), "-o",
                             str(tmp_path / "out"), "-q", "--set", "stages.1.with.quantize=int8"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    flags = cpu_flags()
    warnings = [line for line in result.stderr.splitlines() if "lacks the instructions" in line]
    if flags is not None and not flags.intersection(CPU_FLAGS_FOR[("quantize", "int8")]):
        assert warnings == ["recognize: warning: this CPU lacks the instructions these fast modes need, so they "
                            "will likely run slower than the exact path: grid_boxes quantize=int8 (needs amx_int8 "
                            "or avx512_vnni or avx_vnni)"]
    else:
        assert warnings == []


def _params(device: str | None, dtype: str | None):
    """A stage's parameters with only the given fields (`None`: the stage has no such field)."""
    from recognize.stage import Device, StageParams

    fields = {name: (kind, value) for name, kind, value in (("device", Device, device), ("dtype", str, dtype))
              if value is not None}
    params = type("Params", (StageParams,), {"__annotations__": {name: kind for name, (kind, _) in fields.items()},
                                              **{name: value for name, (_, value) in fields.items()}})
    return params()


@pytest.mark.parametrize("device, dtype, exact", [
    ("cuda", "float32", True),
    ("cuda", None, True),  # a wrapper without a dtype of its own
    ("cuda", "bfloat16", False),
    ("cpu", "float32", False),
    ("auto", "float32", None),  # CUDA where torch sees a GPU, else the CPU
    (None, "float32", False),  # a stage without a device
])
def test_an_exact_stage_for_cuda_turns_cudnns_tf32_off(device, dtype, exact):
    """Exact on CUDA means float32 convolutions too: torch's default lets cuDNN round them to TF32. Setting
    the flag needs no GPU, so the decision is checked here; a fast mode or the CPU leaves it."""
    import torch

    from recognize.fast_modes import exact_float32_on_cuda

    if exact is None:
        exact = torch.cuda.is_available()
    saved = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        assert exact_float32_on_cuda(_params(device, dtype)) is exact
        assert torch.backends.cudnn.allow_tf32 is (not exact)
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def test_loading_a_stage_checks_its_device_first_then_sets_tf32_before_load(monkeypatch):
    """`Stage.ensure_loaded`: a GPU this machine lacks fails before anything else; where it has one, cuDNN's
    TF32 is already off when `load` runs (a warm-up convolution there is exact too)."""
    import torch

    from recognize.errors import SettingError
    from recognize.stage import Stage

    seen = []

    class Convolutions(Stage):
        name = "convolutions"
        kind = "filter"
        Params = type(_params("cuda", "float32"))

        def load(self):
            seen.append(torch.backends.cudnn.allow_tf32)

    saved = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        if torch.cuda.is_available():
            Convolutions().ensure_loaded()
            assert seen == [False]
        else:
            with pytest.raises(SettingError, match="^convolutions: device cuda"):
                Convolutions().ensure_loaded()
            assert seen == [] and torch.backends.cudnn.allow_tf32 is True
            monkeypatch.setattr("recognize.stage.check_device", lambda *args, **kwargs: None)  # as if it had one
            Convolutions().ensure_loaded()
            assert seen == [False]
    finally:
        torch.backends.cudnn.allow_tf32 = saved


class _TiedLinears(torch.nn.Module):
    """Layers tied the two ways real models tie them: one layer reached by two paths (transformers 5.17's
    Grounding DINO box heads) and two layers holding one weight (its later releases), beside a lone one."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(64, 32)
        self.alias = torch.nn.ModuleList([self.head])
        self.twins = torch.nn.ModuleList([torch.nn.Linear(64, 32), torch.nn.Linear(64, 32)])
        self.twins[1].weight, self.twins[1].bias = self.twins[0].weight, self.twins[0].bias
        self.lone = torch.nn.Linear(64, 32)


def test_int8_quantises_each_weight_once_and_tied_layers_stay_tied():
    pytest.importorskip("torchao")
    from recognize.fast_modes import quantize_linear_int8

    model = _TiedLinears().eval()
    x = torch.randn(8, 64)
    with torch.inference_mode():
        exact = {name: getattr(model, name)(x) for name in ("head", "lone")}
        exact["twin"] = model.twins[0](x)
    quantize_linear_int8(model)  # torchao alone fails on the second path to `head`
    assert model.twins[1].weight is model.twins[0].weight
    assert model.alias[0] is model.head
    for layer in (model.head, model.twins[0], model.lone):
        assert type(layer.weight.data) is not torch.Tensor  # an int8 tensor subclass
    with torch.inference_mode():
        assert torch.equal(model.twins[0](x), model.twins[1](x))
        for name, layer in (("head", model.head), ("lone", model.lone), ("twin", model.twins[1])):
            assert torch.allclose(layer(x), exact[name], atol=0.05), name


def test_int8_leaves_layers_the_filter_refuses_in_float():
    pytest.importorskip("torchao")
    from recognize.fast_modes import quantize_linear_int8

    model = _TiedLinears().eval()
    quantize_linear_int8(model, include=lambda name: name.startswith("twins"))
    assert type(model.head.weight.data) is torch.Tensor and type(model.lone.weight.data) is torch.Tensor
    assert model.twins[1].weight is model.twins[0].weight and type(model.twins[0].weight.data) is not torch.Tensor
