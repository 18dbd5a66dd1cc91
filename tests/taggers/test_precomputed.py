"""Image-independent results kept between calls: reused only while their inputs are the same, unmodified."""

from __future__ import annotations

import pytest
import torch
from tiny_decoder import tiny_decoder  # tests/support

from recognize.taggers import precomputed
from recognize.taggers.precomputed import Precomputed
from recognize.taggers.recognition_decoder import DecoderConfig


def _counting(cache: Precomputed, inputs, calls: list[int]) -> torch.Tensor:
    with torch.no_grad():  # kept only while autograd does not record
        return cache.get(inputs, lambda: calls.append(1) or inputs[0] * 2)


def test_reused_while_inputs_are_the_same_objects_and_unmodified():
    cache, calls = Precomputed(), []
    a = torch.ones(3)
    first = _counting(cache, [a], calls)
    assert _counting(cache, [a], calls) is first and len(calls) == 1
    a.add_(1)  # in place: version bump
    assert torch.equal(_counting(cache, [a], calls), torch.full((3,), 4.0)) and len(calls) == 2
    b = a.clone()  # equal values, another tensor
    _counting(cache, [b], calls)
    assert len(calls) == 3
    a.data = torch.zeros(3)  # what module.to() does: same object, new storage
    assert torch.equal(_counting(cache, [a], calls), torch.zeros(3)) and len(calls) == 4


def test_not_kept_under_autograd_or_when_switched_off(monkeypatch):
    cache, calls = Precomputed(), []
    w = torch.ones(2)
    for _ in range(2):
        cache.get([w], lambda: calls.append(1) or w * 2)
    assert len(calls) == 2  # autograd records (a gradient may flow around or through it): computed each call
    monkeypatch.setattr(precomputed, "PRECOMPUTE", False)
    x = torch.ones(2)
    _counting(cache, [x], calls), _counting(cache, [x], calls)
    assert len(calls) == 4


def test_inference_tensors_are_compared_with_a_copy():
    cache, calls = Precomputed(), []
    with torch.inference_mode():  # no version counter: weights loaded under inference mode
        t = torch.ones(2)
        _counting(cache, [t], calls), _counting(cache, [t], calls)
        assert len(calls) == 1
        t.add_(1)
        assert torch.equal(_counting(cache, [t], calls), torch.full((2,), 4.0)) and len(calls) == 2


def test_decoder_reuses_the_first_query_projection_and_follows_a_load(monkeypatch):
    decoder = tiny_decoder(hidden=32, layers=2, encoder_width=16)
    queries, image = torch.randn(20, 32), torch.randn(2, 5, 16)
    with torch.no_grad():
        first = decoder(queries, image)
        assert torch.equal(decoder(queries, image), first)
        state = {k: v + 0.1 for k, v in decoder.state_dict().items()}
        decoder.load_state_dict(state)
        reloaded = decoder(queries, image)
        monkeypatch.setattr(precomputed, "PRECOMPUTE", False)
        expected = decoder(queries, image)
    assert torch.equal(reloaded, expected) and not torch.allclose(reloaded, first)


def _tiny_ram():
    """A tiny seeded RAM with the stage's exact CPU path installed (oneDNN Linears, lean Swin blocks)."""
    from recognize.onednn_linear import use_onednn_linears
    from recognize.taggers.lean_swin import use_lean_blocks
    from recognize.taggers.ram import RamConfig, build_model
    from recognize.taggers.swin import SwinConfig

    torch.manual_seed(0)
    config = RamConfig("ram", SwinConfig(16, (1, 1, 2, 1), (1, 2, 4, 8), window_size=7, image_size=224),
                       DecoderConfig(64, 2, 4, 128, 512), num_classes=30)
    model = build_model(config).eval().requires_grad_(False)
    with torch.no_grad():
        model.label_embed.normal_()
    use_onednn_linears(model)
    return use_lean_blocks(model)


def test_variants_with_their_own_label_sets_do_not_evict_each_other():
    cache, calls = Precomputed(), []
    a, b = torch.ones(3), torch.zeros(3)
    for _ in range(3):
        _counting(cache, [a], calls), _counting(cache, [b], calls)
    assert len(calls) == 2


def test_an_extra_key_keeps_one_entry_per_key():
    cache = Precomputed()
    t = torch.ones(2)
    with torch.no_grad():
        half = cache.get([t], lambda: t.to(torch.bfloat16), key=torch.bfloat16)
        full = cache.get([t], lambda: t.to(torch.float64), key=torch.float64)
        assert half.dtype == torch.bfloat16 and full.dtype == torch.float64
        assert cache.get([t], lambda: None, key=torch.bfloat16) is half


def _in_threads(worker, count: int = 2) -> None:
    """Run `worker(k)` on `count` threads at once, switching between them as often as Python allows."""
    import sys
    import threading

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)


def test_one_cache_shared_by_threads_never_returns_none_or_the_other_result():
    """The value comparison of inference inputs releases the GIL mid-lookup: another thread's publish then
    must not be seen half done (the one-entry cache returned None or the other label set's result)."""
    cache = Precomputed()
    with torch.inference_mode():
        labels = [torch.randn(2000, 512), torch.randn(1000, 512)]
        expected = [label * 2 for label in labels]
    failures: list[str] = []

    def worker(offset: int) -> None:
        with torch.inference_mode():
            for i in range(300):
                which = (i + offset) % 2
                label = labels[which]
                got = cache.get([label], lambda label=label: label * 2)
                if got is None or not torch.equal(got, expected[which]):
                    failures.append(f"thread {offset} call {i}: {'None' if got is None else 'wrong result'}")

    _in_threads(worker)
    assert not failures, failures[:3]


def test_two_threads_alternating_label_sets_always_get_their_own_result(monkeypatch):
    """Serve variants share one model across threads, each with its own open-set labels: every result
    must be the one a fresh computation gives (never None, never the other variant's queries)."""
    model = _tiny_ram()
    with torch.inference_mode():  # as a stage encodes its open-set labels: compared by value on every call
        image_embeds = torch.randn(1, 50, 512)
        labels = [torch.randn(12, 512), torch.randn(7, 512)]
    with torch.inference_mode():
        monkeypatch.setattr(precomputed, "PRECOMPUTE", False)
        expected = [model.logits(image_embeds, label) for label in labels]
        monkeypatch.setattr(precomputed, "PRECOMPUTE", True)
    failures: list[str] = []

    def worker(offset: int) -> None:
        try:
            with torch.inference_mode():
                for i in range(100):
                    which = (i + offset) % 2
                    got = model.logits(image_embeds, labels[which])
                    # not bit for bit: MKL (torch's GEMM on AVX2 CPUs) may split a product otherwise
                    # when two threads call it at once; the other variant's result differs in shape
                    if got.shape != expected[which].shape or not torch.allclose(got, expected[which],
                                                                                rtol=1e-5, atol=1e-6):
                        failures.append(f"thread {offset} call {i}: wrong logits")
        except Exception as error:  # noqa: BLE001 - reported as the failure below
            failures.append(f"thread {offset}: {type(error).__name__}: {error}")

    _in_threads(worker)
    assert not failures, failures[:3]


def test_a_cached_inference_result_does_not_break_autograd_through_the_image():
    """Grad-CAM and attacks differentiate the scores w.r.t. the pixels, with frozen weights, after the
    stage has tagged images under inference mode."""
    model = _tiny_ram()
    with torch.inference_mode():
        model(torch.randn(1, 3, 224, 224))  # keeps image-independent results (inference tensors)
    pixels = torch.randn(1, 3, 224, 224).requires_grad_()
    with torch.enable_grad():
        model(pixels).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_quantized_label_projection_runs_and_follows_the_plain_path_within_int8():
    pytest.importorskip("torchao")
    from recognize.fast_modes import quantize_linear_int8

    model = _tiny_ram()
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        plain = model(x)
        quantize_linear_int8(model, include=lambda name: name == "wordvec_proj")
        assert type(model.wordvec_proj.weight) not in (torch.Tensor, torch.nn.Parameter)
        first, second = model(x), model(x)
    assert torch.equal(first, second)
    assert torch.allclose(first, plain, atol=0.05 * plain.abs().max().item() + 1e-3)


def test_autocast_results_are_not_served_to_float32_calls():
    """Tag2Text's queries `.to(dtype)` are the same object under fp32 and under bf16 autocast: under
    autocast nothing is kept or served."""
    cache, calls = Precomputed(), []
    t = torch.ones(2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(2):
            cache.get([t], lambda: calls.append(1) or t * 2)
    assert len(calls) == 2 and _counting(cache, [t], calls) is not None and len(calls) == 3

    decoder = tiny_decoder(hidden=32, layers=1, encoder_width=16)
    queries, image = torch.randn(20, 32), torch.randn(1, 5, 16)
    with torch.no_grad():
        fp32 = decoder(queries, image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            decoder(queries, image)
        assert torch.equal(decoder(queries, image), fp32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = decoder(queries, image)
        decoder.__dict__.pop("_precomputed_first_query")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fresh = decoder(queries, image)
    assert torch.equal(mixed, fresh)


def test_a_warm_model_can_be_copied_and_pickled():
    import copy
    import pickle

    model = _tiny_ram()
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        expected = model(x)  # keeps results (and a lock) on the model
    copied, unpickled = copy.deepcopy(model), pickle.loads(pickle.dumps(model))
    with torch.inference_mode():
        assert torch.equal(copied(x), expected) and torch.equal(unpickled(x), expected)
