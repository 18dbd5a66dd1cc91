"""Caption decoding: greedy, beam search and nucleus sampling, with Hugging Face `generate` semantics.

API: `greedy(decoder, prefix, ...)`, `beam_search(decoder, prefix, ..., length_normalization=...)`,
`sample(decoder, prefix, ...)`. `decoder` is anything with `logits(input_ids [N, T]) -> [N, V]`
(next-token logits of the last position) and `select(index)` (keep / reorder / repeat rows), i.e.
`recognize.taggers.bert.CaptionDecoder`. `prefix` is [B, P] (for Tag2Text `[DEC] a picture of`).
Each function returns one id list per row: prefix, generated ids and the final eos when it fits,
as the official `text_decoder.generate(...)` rows.

Why our own loops: the official captions come from transformers' `generate`, whose defaults
changed between versions (beam length normalisation) and which needs a transformers model class.
The rules reproduced here (transformers 4.31.0 unless said):
- `max_length` / `min_length` count the prefix. While the length is below `min_length` the eos
  score is -inf. Generation stops at eos or at `max_length` tokens.
- greedy: argmax of the processed logits; finished rows are padded until every row is done.
- beam search: log-softmax, processors, plus the running beam scores (beams other than the
  first start at -1e9); the top 2*num_beams candidates over all beams of an item. An eos among the
  first num_beams closes a hypothesis (stored without the eos); the others continue, in rank order.
  An item is done once it has num_beams hypotheses and the best candidate score, normalised,
  cannot beat the worst one; at `max_length` the running beams are scored as hypotheses too. The
  best hypothesis is returned, with eos appended unless it is already `max_length` long.
  `length_normalization="official"` (transformers 4.31, the official reference outputs): a score is
  the summed log-probability divided by the full length, prefix included, eos excluded, and the
  stop test divides by the current full length. `"generated"` (transformers >= 4.38, 4.49
  checked): divide by the number of generated tokens, eos included, and the stop test uses the
  generated length including the next token.
- sampling: repetition penalty on the logits, then top-k (50, transformers' default) and top-p
  warpers, softmax, `torch.multinomial`; seed with `generator`.
- repetition penalty (when != 1): every id already in the row has its score divided by the
  penalty when positive, multiplied when negative (applied to log-probabilities in beam search,
  as transformers does).

Batches: every item gets its own beams (num_beams rows each). The official code expands the
encoder states twice and then keeps only the first rows, so every image of a batch is captioned
from image 0; that is a plain bug and is not reproduced (`Tag2Text` docs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor

LengthNormalization = Literal["official", "generated"]


class Decoder(Protocol):
    def logits(self, input_ids: Tensor) -> Tensor: ...

    def select(self, index: Tensor) -> None: ...


def _min_length(scores: Tensor, length: int, min_length: int, eos_token_id: int) -> Tensor:
    if length < min_length:
        scores[:, eos_token_id] = -float("inf")
    return scores


def _repetition_penalty(scores: Tensor, input_ids: Tensor, penalty: float) -> Tensor:
    if penalty == 1.0:
        return scores
    seen = torch.gather(scores, 1, input_ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, input_ids, seen)


def _rows(input_ids: Tensor, lengths: list[int]) -> list[list[int]]:
    return [input_ids[row, :length].tolist() for row, length in enumerate(lengths)]


def _decode(
    decoder: Decoder,
    prefix: Tensor,
    pick: Callable[[Tensor], Tensor],
    *,
    max_length: int,
    min_length: int,
    eos_token_id: int,
    pad_token_id: int,
    repetition_penalty: float,
) -> list[list[int]]:
    """One token per step for every unfinished row, chosen by `pick` from the processed scores."""
    input_ids = prefix
    batch = prefix.shape[0]
    lengths = torch.full((batch,), prefix.shape[1], dtype=torch.long, device=prefix.device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=prefix.device)
    while input_ids.shape[1] < max_length and bool(unfinished.any()):
        scores = decoder.logits(input_ids).float()
        scores = _repetition_penalty(scores, input_ids, repetition_penalty)
        scores = _min_length(scores, input_ids.shape[1], min_length, eos_token_id)
        tokens = pick(scores)
        tokens = torch.where(unfinished, tokens, torch.full_like(tokens, pad_token_id))
        input_ids = torch.cat([input_ids, tokens[:, None]], dim=1)
        lengths += unfinished
        unfinished &= tokens != eos_token_id
    return _rows(input_ids, lengths.tolist())


@torch.no_grad()
def greedy(
    decoder: Decoder,
    prefix: Tensor,
    *,
    max_length: int,
    min_length: int,
    eos_token_id: int,
    pad_token_id: int,
    repetition_penalty: float = 1.0,
) -> list[list[int]]:
    """Argmax decoding (the official `num_beams=1, sample=False`)."""
    return _decode(decoder, prefix, lambda scores: scores.argmax(dim=-1), max_length=max_length,
                   min_length=min_length, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                   repetition_penalty=repetition_penalty)


@torch.no_grad()
def sample(
    decoder: Decoder,
    prefix: Tensor,
    *,
    max_length: int,
    min_length: int,
    eos_token_id: int,
    pad_token_id: int,
    top_p: float = 0.9,
    top_k: int = 50,
    repetition_penalty: float = 1.1,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Nucleus sampling (the official `sample=True`: top_p 0.9, repetition penalty 1.1)."""

    def pick(scores: Tensor) -> Tensor:
        if top_k > 0:
            kth = torch.topk(scores, min(top_k, scores.shape[-1]))[0][..., -1, None]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        if top_p < 1.0:
            sorted_scores, sorted_index = torch.sort(scores, descending=False)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            remove_sorted = cumulative <= (1 - top_p)
            remove_sorted[..., -1:] = False  # always keep the most likely token
            remove = remove_sorted.scatter(1, sorted_index, remove_sorted)
            scores = scores.masked_fill(remove, -float("inf"))
        return torch.multinomial(scores.softmax(dim=-1), num_samples=1, generator=generator).squeeze(1)

    return _decode(decoder, prefix, pick, max_length=max_length, min_length=min_length,
                   eos_token_id=eos_token_id, pad_token_id=pad_token_id, repetition_penalty=repetition_penalty)


@dataclass
class _Hypotheses:
    """The finished hypotheses of one item (transformers' `BeamHypotheses`, length_penalty 1)."""

    num_beams: int
    beams: list[tuple[float, list[int]]] = field(default_factory=list)
    worst_score: float = 1e9

    def add(self, ids: list[int], sum_logprobs: float, length: int) -> None:
        score = sum_logprobs / float(length)
        if len(self.beams) < self.num_beams or score > self.worst_score:
            self.beams.append((score, ids))
            if len(self.beams) > self.num_beams:
                ranked = sorted((s, index) for index, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, length: int) -> bool:
        if len(self.beams) < self.num_beams:
            return False
        return self.worst_score >= best_sum_logprobs / float(length)

    def best(self) -> list[int]:
        return sorted(self.beams, key=lambda beam: beam[0])[-1][1]


@torch.no_grad()
def beam_search(
    decoder: Decoder,
    prefix: Tensor,
    *,
    num_beams: int,
    max_length: int,
    min_length: int,
    eos_token_id: int,
    pad_token_id: int,
    repetition_penalty: float = 1.0,
    length_normalization: LengthNormalization = "official",
) -> list[list[int]]:
    """Beam search, one set of beams per row of `prefix` (transformers' `BeamSearchScorer` rules)."""
    if length_normalization not in ("official", "generated"):
        raise ValueError(f"length_normalization must be 'official' or 'generated', not {length_normalization!r}")
    batch, prompt_length = prefix.shape
    device = prefix.device
    expand = torch.arange(batch, device=device).repeat_interleave(num_beams)
    decoder.select(expand)
    input_ids = prefix.index_select(0, expand)
    beam_scores = torch.zeros(batch, num_beams, dtype=torch.float32, device=device)
    beam_scores[:, 1:] = -1e9
    beam_scores = beam_scores.view(-1)
    hypotheses = [_Hypotheses(num_beams) for _ in range(batch)]
    done = [False] * batch

    while True:
        cur_len = input_ids.shape[1]
        # the length an eos now would be scored with, and the stop test's length
        length = cur_len if length_normalization == "official" else cur_len + 1 - prompt_length
        logits = decoder.logits(input_ids).float()
        scores = torch.log_softmax(logits, dim=-1)
        scores = _repetition_penalty(scores, input_ids, repetition_penalty)
        scores = _min_length(scores, cur_len, min_length, eos_token_id)
        scores = scores + beam_scores[:, None].expand_as(scores)
        vocab = scores.shape[-1]
        scores = scores.view(batch, num_beams * vocab)
        top_scores, top_ids = torch.topk(scores, 2 * num_beams, dim=1, largest=True, sorted=True)
        # one device->host copy per step; the per-candidate bookkeeping below is plain Python
        top_scores_list, top_ids_list = top_scores.tolist(), top_ids.tolist()

        next_scores = [[0.0] * num_beams for _ in range(batch)]
        next_tokens = [[pad_token_id] * num_beams for _ in range(batch)]
        next_rows = [[0] * num_beams for _ in range(batch)]
        for item in range(batch):
            if done[item]:
                continue  # padded rows, never read again
            slot = 0
            for rank in range(2 * num_beams):
                beam, token = divmod(top_ids_list[item][rank], vocab)
                row = item * num_beams + beam
                score = top_scores_list[item][rank]
                if token == eos_token_id:
                    if rank >= num_beams:
                        continue
                    hypotheses[item].add(input_ids[row].tolist(), score, length)
                else:
                    next_scores[item][slot] = score
                    next_tokens[item][slot] = token
                    next_rows[item][slot] = row
                    slot += 1
                if slot == num_beams:
                    break
            # sorted=True: the first candidate is the best one
            done[item] = done[item] or hypotheses[item].is_done(top_scores_list[item][0], length)

        beam_scores = torch.tensor(next_scores, dtype=top_scores.dtype, device=device).view(-1)
        rows = torch.tensor(next_rows, dtype=torch.long, device=device).view(-1)
        tokens = torch.tensor(next_tokens, dtype=torch.long, device=device).view(-1, 1)
        input_ids = torch.cat([input_ids.index_select(0, rows), tokens], dim=1)
        decoder.select(rows)
        if all(done) or input_ids.shape[1] >= max_length:
            break

    results = []
    final_length = input_ids.shape[1] - (prompt_length if length_normalization == "generated" else 0)
    final_scores = beam_scores.tolist()
    for item in range(batch):
        if not done[item]:
            for beam in range(num_beams):
                row = item * num_beams + beam
                hypotheses[item].add(input_ids[row].tolist(), final_scores[row], final_length)
        best = hypotheses[item].best()
        if len(best) < max_length:
            best = [*best, eos_token_id]
        results.append(best)
    return results
