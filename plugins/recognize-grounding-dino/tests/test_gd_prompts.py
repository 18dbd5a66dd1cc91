"""Prompt packing and token-span mapping (recognize_grounding_dino.prompts)."""

from __future__ import annotations

import torch

from recognize_grounding_dino.prompts import MAX_TEXT_LEN, min_prompts, pack_prompts, phrase_text


def _decoded_spans(tokenizer, prompt) -> list[str]:
    return [tokenizer.decode(list(prompt.input_ids[s:e])) for s, e in prompt.spans]


def test_multi_word_and_multi_subword_tags_map_to_whole_tags(tokenizer):
    tags = ["fire hydrant", "Traffic Light", "hydrangea", "st. bernard", "dog"]
    packing = pack_prompts(tags, tokenizer)
    (prompt,) = packing.prompts
    assert prompt.text == "fire hydrant . traffic light . hydrangea . st bernard . dog ."
    assert prompt.input_ids[0] == tokenizer.cls_token_id and prompt.input_ids[-1] == tokenizer.sep_token_id
    assert prompt.tags == (0, 1, 2, 3, 4)
    # every span decodes to exactly its whole tag, however many word pieces it has
    assert _decoded_spans(tokenizer, prompt) == [phrase_text(t) for t in tags]
    # "hydrangea" is several word pieces (in the test vocab and in bert-base-uncased alike)
    assert prompt.spans[2][1] - prompt.spans[2][0] == len(tokenizer.tokenize("hydrangea")) > 1
    # each separator "." sits right after its tag and belongs to no tag
    dot = tokenizer.convert_tokens_to_ids(".")
    assert [prompt.input_ids[e] for _, e in prompt.spans] == [dot] * len(tags)


def test_subword_scores_are_credited_to_the_whole_tag(tokenizer):
    prompt = pack_prompts(["cat", "fire hydrant"], tokenizer).prompts[0]
    start, end = prompt.spans[1]
    scores = torch.zeros(2, len(prompt))
    scores[0, end - 2] = 0.9  # a "##..." piece of "hydrant"
    scores[0, prompt.spans[0][0]] = 0.4
    scores[1, prompt.spans[0][0]] = 0.7
    tag_scores = prompt.tag_scores(scores)
    assert tag_scores.shape == (2, 2)
    assert tag_scores[0].argmax() == 1 and torch.isclose(tag_scores[0, 1], torch.tensor(0.9))
    assert tag_scores[1].argmax() == 0


def test_tags_overflowing_256_tokens_are_packed_into_few_whole_prompts(tokenizer, ram_tags):
    tags = [english for english, _ in ram_tags[:400]]
    packing = pack_prompts(tags, tokenizer)
    assert not packing.unplaced
    assert len(packing.prompts) == min_prompts(tags, tokenizer) >= 2
    placed = []
    for prompt in packing.prompts:
        assert len(prompt) <= MAX_TEXT_LEN
        assert list(prompt.tags) == sorted(prompt.tags)  # the caller's order inside a caption
        assert _decoded_spans(tokenizer, prompt) == [phrase_text(tags[i]) for i in prompt.tags]
        placed.extend(prompt.tags)
    distinct = {}
    for i, tag in enumerate(tags):
        distinct.setdefault(phrase_text(tag), i)
    assert sorted(placed) == sorted(distinct.values())  # each tag exactly once


def test_150_tags_all_reach_a_prompt_whole_where_the_reference_demo_cuts_them(tokenizer, ram_tags):
    tags = [english for english, _ in ram_tags[1000:1150]]
    # the reference demo: ", ".join(tags), tokenized and cut at 256 tokens
    reference_ids = tokenizer(", ".join(tags), truncation=True, max_length=MAX_TEXT_LEN)["input_ids"]
    reference_text = tokenizer.decode(reference_ids, skip_special_tokens=True)
    lost = [t for t in tags if phrase_text(t) not in reference_text]
    assert lost, "150 tags should overflow the 256-token caption of the reference demo"

    packing = pack_prompts(tags, tokenizer)
    assert len(packing.prompts) >= 2 and not packing.unplaced
    reached = {tags[i]: text for p in packing.prompts for i, text in zip(p.tags, _decoded_spans(tokenizer, p))}
    assert set(reached) == set(tags)
    assert all(reached[t] == phrase_text(t) for t in tags)


def test_unreadable_and_too_long_tags_are_reported_not_dropped_silently(tokenizer):
    huge = " ".join(["hydrangea"] * 300)  # over 256 tokens in any vocabulary
    packing = pack_prompts(["cat", "...", huge, "CAT", "dog"], tokenizer)
    assert [i for i, _ in packing.unplaced] == [1, 2]
    assert "no text" in packing.unplaced[0][1] and "256-token" in packing.unplaced[1][1]
    (prompt,) = packing.prompts
    assert prompt.text == "cat . dog ." and prompt.tags == (0, 4)  # "CAT" shares "cat"'s phrase


def test_packing_respects_a_smaller_limit(tokenizer):
    tags = ["cat", "dog", "fire hydrant", "traffic light", "tree", "grass"]
    packing = pack_prompts(tags, tokenizer, max_tokens=12)
    assert all(len(p) <= 12 for p in packing.prompts)
    assert sorted(i for p in packing.prompts for i in p.tags) == list(range(len(tags)))
    # never fewer captions than the lower bound, and at most one more (first-fit decreasing)
    bound = min_prompts(tags, tokenizer, max_tokens=12)
    assert 2 <= bound <= len(packing.prompts) <= bound + 1
