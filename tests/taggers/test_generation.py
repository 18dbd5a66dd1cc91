"""Caption decoding rules: greedy, nucleus sampling and both beam-search length normalisations.

Greedy decoding and sampling are checked against transformers' own `generate` on a tiny random
decoder (same logits, same seed). Beam search is checked on a hand-built decoder whose best caption
depends on the length normalisation, and on the rules (min / max length, batches, the cache).
The real-model parity lives in test_parity_tag2text.py.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from recognize.taggers.bert import BertConfig, BertLMHeadModel, CaptionDecoder
from recognize.taggers.generation import beam_search, greedy, sample

EOS, PAD = 3, 0


class HFDecoder:
    """A transformers BertLMHeadModel seen through our decoder protocol (full recompute each step)."""

    def __init__(self, model, encoder_states: torch.Tensor) -> None:
        self.model, self.encoder_states = model, encoder_states

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, encoder_hidden_states=self.encoder_states).logits[:, -1]

    def select(self, index: torch.Tensor) -> None:
        self.encoder_states = self.encoder_states.index_select(0, index)


def tiny_hf_decoder(seed: int, vocab: int = 60):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, is_decoder=True, add_cross_attention=True)
    model = transformers.BertLMHeadModel(config).eval()
    with torch.no_grad():
        model.cls.predictions.decoder.weight.mul_(4)  # peakier distributions: more varied captions
    return model, torch.randn(2, 5, 16)


def until_eos(row: list[int], prompt: int) -> list[int]:
    generated = row[prompt:]
    return row[:prompt] + (generated[: generated.index(EOS) + 1] if EOS in generated else generated)


PREFIX = torch.tensor([[1, 5, 6], [1, 7, 8]])
LIMITS = {"max_length": 14, "min_length": 6, "eos_token_id": EOS, "pad_token_id": PAD}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("penalty", [1.0, 1.3])
@pytest.mark.slow
def test_greedy_is_transformers_greedy(seed, penalty):
    model, states = tiny_hf_decoder(seed)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = model.generate(input_ids=PREFIX, encoder_hidden_states=states, do_sample=False, num_beams=1,
                                  repetition_penalty=penalty, use_cache=False, **LIMITS)
    got = greedy(HFDecoder(model, states), PREFIX, repetition_penalty=penalty, **LIMITS)
    assert got == [until_eos(row, 3) for row in expected.tolist()]
    assert all(len(row) >= LIMITS["min_length"] for row in got)


@pytest.mark.parametrize("seed", range(4))
def test_sampling_is_transformers_sampling_with_the_same_seed(seed):
    model, states = tiny_hf_decoder(seed)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(1000 + seed)
        expected = model.generate(input_ids=PREFIX, encoder_hidden_states=states, do_sample=True, top_p=0.9,
                                  repetition_penalty=1.1, use_cache=False, **LIMITS)
    torch.manual_seed(1000 + seed)
    got = sample(HFDecoder(model, states), PREFIX, top_p=0.9, repetition_penalty=1.1, **LIMITS)
    assert got == [until_eos(row, 3) for row in expected.tolist()]


def test_sampling_is_seedable_and_varies():
    model, states = tiny_hf_decoder(0)
    runs = [sample(HFDecoder(model, states), PREFIX, generator=torch.Generator().manual_seed(s), **LIMITS)
            for s in (1, 1, 2, 3)]
    assert runs[0] == runs[1]
    assert any(run != runs[0] for run in runs[2:])
    # a tiny nucleus keeps only the most likely token: sampling becomes greedy
    nucleus = sample(HFDecoder(model, states), PREFIX, top_p=1e-6, repetition_penalty=1.0,
                     generator=torch.Generator().manual_seed(5), **LIMITS)
    assert nucleus == greedy(HFDecoder(model, states), PREFIX, **LIMITS)


class TableDecoder:
    """Next-token probabilities looked up by the generated tokens so far (after a 4-token prompt)."""

    A, B, C, D, E = 5, 6, 7, 8, 9
    VOCAB = 12

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]]) -> None:
        self.table = table

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in input_ids.tolist():
            probs = torch.full((self.VOCAB,), 1e-6)
            for token, p in self.table.get(tuple(row[4:]), {EOS: 1.0}).items():
                probs[token] = p
            rows.append(probs.log())
        return torch.stack(rows)

    def select(self, index: torch.Tensor) -> None:
        pass


def length_sensitive_table() -> TableDecoder:
    """`B eos` has the best summed log-probability per full length (prompt included); `A C eos`
    the best per generated length: the two normalisations must choose differently."""
    t = TableDecoder
    return TableDecoder({
        (): {t.A: 0.6, t.B: 0.4},
        (t.A,): {t.C: 0.415, t.D: 0.4, EOS: 0.185},
        (t.B,): {EOS: 0.9, t.C: 0.1},
        (t.A, t.C): {EOS: 0.99, t.A: 0.01},
        (t.A, t.D): {EOS: 0.55, t.E: 0.45},
    })


def test_beam_length_normalisations_choose_differently():
    prompt = torch.tensor([[1, 2, 4, 10]])
    limits = {"max_length": 10, "min_length": 0, "eos_token_id": EOS, "pad_token_id": PAD}
    official = beam_search(length_sensitive_table(), prompt, num_beams=2, length_normalization="official", **limits)
    generated = beam_search(length_sensitive_table(), prompt, num_beams=2, length_normalization="generated", **limits)
    t = TableDecoder
    assert official == [[1, 2, 4, 10, t.B, EOS]]
    assert generated == [[1, 2, 4, 10, t.A, t.C, EOS]]
    # by hand: B eos = log(.4 * .9) over 5 tokens vs over 2; A C eos = log(.6 * .415 * .99) over 6 vs over 3
    short, long = math.log(0.4 * 0.9), math.log(0.6 * 0.415 * 0.99)
    assert short / 5 > long / 6 and long / 3 > short / 2


def test_beam_min_and_max_length():
    prompt = torch.tensor([[1, 2, 4, 10]])
    t = TableDecoder
    table = length_sensitive_table()
    blocked = beam_search(table, prompt, num_beams=2, max_length=12, min_length=7, eos_token_id=EOS, pad_token_id=PAD)
    assert len(blocked[0]) >= 8 and blocked[0][-1] == EOS and EOS not in blocked[0][4:-1]
    # max_length reached before any eos: the best running beam, no eos appended
    cut = beam_search(table, prompt, num_beams=2, max_length=6, min_length=6, eos_token_id=EOS, pad_token_id=PAD)
    assert len(cut[0]) == 6 and cut[0][:5] == [1, 2, 4, 10, t.A] and EOS not in cut[0]
    with pytest.raises(ValueError, match="length_normalization"):
        beam_search(table, prompt, num_beams=2, length_normalization="average", **LIMITS)


def tiny_decoder(seed: int = 0) -> BertLMHeadModel:
    torch.manual_seed(seed)
    model = BertLMHeadModel(BertConfig(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                                       vocab_size=50, encoder_width=16)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, module.in_features**-0.5)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0, 1)
        model.cls.predictions.bias.normal_(0, 1)
        model.cls.predictions.bias[EOS] += 2.0  # some captions end before max_length
    return model


def test_cached_decoding_equals_full_recompute():
    model = tiny_decoder()
    states = torch.randn(3, 7, 16)
    ids = torch.randint(4, 50, (3, 9))
    with torch.no_grad():
        full = model(ids, states)[:, -1]
        cached = CaptionDecoder(model, states)
        cached.logits(ids[:, :4])
        for end in range(5, 10):
            step = cached.logits(ids[:, :end])
        assert (step - full).abs().max() < 1e-5
    prefix = torch.tensor([[1, 5, 6, 7]] * 3)
    for fn, kwargs in ((greedy, {}), (beam_search, {"num_beams": 3}),
                       (beam_search, {"num_beams": 2, "length_normalization": "generated"})):
        a = fn(CaptionDecoder(model, states, use_cache=True), prefix, **kwargs, **LIMITS)
        b = fn(CaptionDecoder(model, states, use_cache=False), prefix, **kwargs, **LIMITS)
        assert a == b


def test_a_batch_is_decoded_like_each_row_alone():
    model = tiny_decoder(1)
    states = torch.randn(3, 7, 16)
    prefix = torch.tensor([[1, 5, 6, 7]] * 3)
    for fn, kwargs in ((greedy, {}), (beam_search, {"num_beams": 3})):
        batch = fn(CaptionDecoder(model, states), prefix, **kwargs, **LIMITS)
        alone = [fn(CaptionDecoder(model, states[i : i + 1]), prefix[i : i + 1], **kwargs, **LIMITS)[0]
                 for i in range(3)]
        assert batch == alone
    assert len({tuple(row) for row in batch}) > 1  # rows differ: image i is not captioned from image 0
