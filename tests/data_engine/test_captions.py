"""Vocabulary names found in captions."""

from __future__ import annotations

from recognize.data_engine import CaptionParser, parse_caption_tags, plural_forms

VOCAB = ["dog", "hot dog", "hot", "man", "person", "bus", "berry", "t-shirt", "glass", "glasses", "knife",
         "ice cream", "cream", "sofa", "tomato", "box"]


def test_parse_caption_tags_longest_match_first_and_plurals():
    caption = "Two men eating HOT DOGS and ice-cream near the buses; berries, knives, glasses, boxes"
    assert parse_caption_tags(caption, VOCAB) == [
        "man", "hot dog", "ice cream", "bus", "berry", "knife", "glasses", "box"
    ]


def test_parse_caption_tags_more_cases():
    parser = CaptionParser(VOCAB)
    assert parser.parse("people in t shirts, a T-Shirt, tomatoes on a sofa") == ["person", "t-shirt", "tomato", "sofa"]
    assert parser.parse("a dog, another dog") == ["dog"]
    assert parser.parse("hotel doge creamy") == []  # whole words only
    assert parser.parse("") == []
    assert parser.parse("a hot day") == ["hot"]


def test_plural_forms():
    assert "buses" in plural_forms("bus")
    assert "berries" in plural_forms("berry") and "toys" in plural_forms("toy")
    assert "leaves" in plural_forms("leaf") and "knives" in plural_forms("knife")
    assert {"women"} <= plural_forms("woman") and "firemen" in plural_forms("fireman")


