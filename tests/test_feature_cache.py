"""The bounded image-feature cache that lets a re-asked photo skip its image encoder."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from recognize.feature_cache import FeatureCache, content_key, owner_token, size_of


class Model:
    pass


def test_content_key_follows_pixels_dtype_and_shape() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    assert content_key(a) == content_key(b)
    b[0, 0, 0] = 1
    assert content_key(a) != content_key(b)
    assert content_key(a) != content_key(a.reshape(8, 2, 3))
    assert content_key(a) != content_key(a.astype(np.float32))
    assert content_key(torch.zeros(4, 4, 3, dtype=torch.uint8)) == content_key(a)


def test_owner_token_is_stable_and_distinct() -> None:
    m1, m2 = Model(), Model()
    assert owner_token(m1) == owner_token(m1) != owner_token(m2)


def test_size_of_counts_tensors_in_containers() -> None:
    @dataclass
    class Embedding:
        features: torch.Tensor
        size: tuple[int, int]

    value = [Embedding(torch.zeros(2, 8), (1, 1)), {"a": np.zeros(10, np.float64)}]
    assert size_of(value) >= 2 * 8 * 4 + 80


def test_compute_many_computes_only_misses_in_one_call() -> None:
    cache = FeatureCache(max_bytes=10_000)
    calls: list[list[int]] = []
    owner = Model()

    def compute(todo):
        calls.append(list(todo))
        return [np.full(10, i, np.float32) for i in todo]

    first = cache.compute_many(owner, ["a", "b"], compute)
    second = cache.compute_many(owner, ["b", "c", "a"], lambda todo: compute([t + 10 for t in todo]))
    assert calls == [[0, 1], [11]]
    assert first[1] is second[0] and first[0] is second[2]
    assert cache.hits == 2 and cache.misses == 3
    # another model never sees these features
    cache.compute_many(Model(), ["a"], compute)
    assert calls[-1] == [0]


def test_bounded_in_bytes_least_recently_used_goes_first() -> None:
    cache = FeatureCache(max_bytes=100)
    for key in "abc":
        cache.put(key, np.zeros(40, np.uint8))  # 40 bytes each: only two fit
    assert cache.get("a") is None and cache.get("b") is not None and cache.get("c") is not None
    cache.put("d", np.zeros(40, np.uint8))  # b was read before c, so b is the least recent
    assert cache.get("b") is None and cache.bytes_used <= 100
    cache.put("huge", np.zeros(1000, np.uint8))
    assert cache.get("huge") is None and len(cache) == 2
    cache.resize(0)
    assert len(cache) == 0 and not cache.enabled


def test_disabled_cache_always_computes() -> None:
    cache = FeatureCache(max_bytes=0)
    calls = []
    for _ in range(2):
        cache.compute_many(Model(), ["a"], lambda todo: calls.append(todo) or [1])
    assert len(calls) == 2 and len(cache) == 0


def test_thread_safe_puts() -> None:
    cache = FeatureCache(max_bytes=64 * 50)
    owner = Model()

    def work(offset):
        for i in range(200):
            cache.compute_many(owner, [str((i + offset) % 80)], lambda todo: [np.zeros(64, np.uint8)])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.bytes_used <= 64 * 50 and len(cache) <= 50


def test_features_under_autocast_are_kept_apart_from_exact_ones() -> None:
    import torch

    cache = FeatureCache(max_bytes=10_000)
    owner = Model()
    calls: list[str] = []

    def compute(todo):
        calls.append(str(torch.get_autocast_dtype("cpu")) if torch.is_autocast_enabled("cpu") else "fp32")
        return [np.zeros(4, np.float32) for _ in todo]

    cache.compute_many(owner, ["a"], compute)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache.compute_many(owner, ["a"], compute)  # a bf16 fast mode must not get the fp32 features
        cache.compute_many(owner, ["a"], compute)
    cache.compute_many(owner, ["a"], compute)
    assert calls == ["fp32", "torch.bfloat16"]
