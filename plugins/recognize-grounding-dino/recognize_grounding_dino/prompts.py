"""Tags -> Grounding DINO captions, and per-token scores -> whole tags.

Grounding DINO reads one caption of at most 256 tokens (`[CLS]`, the text, `[SEP]`) in which
`.` separates phrases: the text encoder only lets tokens attend inside their own phrase. The
reference demo joins every tag with ", " and lets the tokenizer cut the caption at 256 tokens,
mid-word, so tags at the end vanish silently. Here every tag gets a whole phrase (`cat . traffic
light .`) and the tags are packed into as few captions as fit; a tag that cannot fit anywhere is
reported, never cut. The tokenizer's offsets map every token back to the tag it came from, so a
box's token scores become one score per whole tag (never a subword phrase such as `##hy`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: Grounding DINO's text length, special tokens included.
MAX_TEXT_LEN = 256
#: `[CLS]` and `[SEP]`.
_SPECIAL = 2
_SEPARATORS = re.compile(r"[.?]")


def phrase_text(tag: str) -> str:
    """The text a tag contributes to a caption.

    Lowercase (the reference lowercases captions); `.` and `?` become spaces because the model
    treats them as phrase separators, which would split one tag into two phrases.
    """
    return " ".join(_SEPARATORS.sub(" ", tag.lower()).split())


@dataclass(frozen=True)
class Prompt:
    """One caption and, for each tag in it, the token span that spells the tag."""

    text: str
    input_ids: tuple[int, ...]
    #: Indices into the tag list given to `pack_prompts`, in caption order.
    tags: tuple[int, ...]
    #: Token `[start, end)` of each tag in `input_ids` (position 0 is `[CLS]`).
    spans: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.input_ids)

    def tag_scores(self, token_scores: torch.Tensor) -> torch.Tensor:
        """`[..., tokens]` scores -> `[..., tags]`: a tag scores its best token (the model's own box score)."""
        return torch.stack([token_scores[..., start:end].amax(-1) for start, end in self.spans], -1)


@dataclass(frozen=True)
class Packing:
    """The captions for a tag list, and the tags that could not be placed (with why)."""

    prompts: tuple[Prompt, ...]
    unplaced: tuple[tuple[int, str], ...] = ()


def _token_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def pack_prompts(tags: Sequence[str], tokenizer: Any, max_tokens: int = MAX_TEXT_LEN) -> Packing:
    """Pack `tags` into as few captions of at most `max_tokens` tokens as fit.

    First-fit decreasing over each tag's cost (its tokens plus its `.`), then each caption lists
    its tags in the order they were given. Tags that read the same after `phrase_text` share one
    phrase (the first one's index is kept). `tokenizer` is a fast BERT tokenizer (offsets needed).
    """
    capacity = max_tokens - _SPECIAL
    texts: list[str] = []
    index_of_text: dict[str, int] = {}
    costs: list[int] = []
    owners: list[int] = []  # tag index owning each distinct text
    unplaced: list[tuple[int, str]] = []
    for index, tag in enumerate(tags):
        text = phrase_text(tag)
        if not text:
            unplaced.append((index, "the tag has no text the model can read"))
            continue
        if text in index_of_text:
            continue
        cost = _token_count(tokenizer, text) + 1
        if cost > capacity:
            need = cost + _SPECIAL
            unplaced.append((index, f"the tag alone needs {need} tokens, over the {max_tokens}-token text limit"))
            continue
        index_of_text[text] = len(texts)
        texts.append(text)
        costs.append(cost)
        owners.append(index)

    bins: list[list[int]] = []
    room: list[int] = []
    for item in sorted(range(len(texts)), key=lambda i: (-costs[i], i)):
        for b, left in enumerate(room):
            if costs[item] <= left:
                bins[b].append(item)
                room[b] -= costs[item]
                break
        else:
            bins.append([item])
            room.append(capacity - costs[item])
    bins = sorted((sorted(members) for members in bins), key=lambda members: members[0])
    prompts = tuple(_build(tokenizer, [texts[i] for i in members], [owners[i] for i in members], max_tokens)
                    for members in bins)
    return Packing(prompts=prompts, unplaced=tuple(unplaced))


def min_prompts(tags: Sequence[str], tokenizer: Any, max_tokens: int = MAX_TEXT_LEN) -> int:
    """Lower bound on the number of captions: total cost over capacity (for checks and tests)."""
    texts = list(dict.fromkeys(t for t in map(phrase_text, tags) if t))
    total = sum(_token_count(tokenizer, t) + 1 for t in texts)
    return math.ceil(total / (max_tokens - _SPECIAL))


def _build(tokenizer: Any, texts: list[str], owners: list[int], max_tokens: int) -> Prompt:
    caption = " . ".join(texts) + " ."
    starts = []
    position = 0
    for text in texts:
        starts.append(position)
        position += len(text) + 3
    encoded = tokenizer(caption, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    offsets = encoded["offset_mapping"]
    if len(ids) > max_tokens:  # the per-tag counts said it fits; a tokenizer that disagrees is a bug
        raise RuntimeError(f"caption of {len(ids)} tokens exceeds {max_tokens}: {caption[:60]}...")
    spans = []
    for start, text in zip(starts, texts):
        end = start + len(text)
        inside = [i for i, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end]
        if not inside or inside != list(range(inside[0], inside[-1] + 1)):
            raise RuntimeError(f"tag {text!r} does not map to one run of tokens in {caption!r}")
        spans.append((inside[0], inside[-1] + 1))
    return Prompt(text=caption, input_ids=tuple(ids), tags=tuple(owners), spans=tuple(spans))
