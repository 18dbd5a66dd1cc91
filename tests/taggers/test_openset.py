"""Open-set prompt construction (official templates and name processing) and description files."""

from __future__ import annotations

import json

import pytest

from recognize.errors import RecognizeError
from recognize.taggers.openset import TEMPLATES, article, processed_name, read_descriptions, template_sentences


def test_templates_and_names():
    assert len(TEMPLATES) == 63
    assert processed_name("Pit_bull/Dog.") == "pit bull or dog"
    assert article("apple") == "an" and article("Apple") == "a"  # the original name decides
    sentences = template_sentences("Aerial photography")
    assert len(sentences) == 63
    assert sentences[0] == "There is a aerial photography in the scene."
    assert sentences[2] == "This is a photo of a aerial photography in the scene."
    assert "This is the plastic aerial photography." in sentences
    assert "This is an embroidered aerial photography." in sentences


def test_description_files(tmp_path, reference):
    shipped = reference / "data" / "datasets" / "openimages_rare_200" / "openimages_rare_200_llm_tag_descriptions.json"
    items = read_descriptions(shipped)
    assert len(items) == 200 and {len(d) for _, d in items} == {51}
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"a": ["x", "y"], "b": ["z"]}))
    with pytest.raises(RecognizeError, match="same number"):
        read_descriptions(path)
    path.write_text(json.dumps([{"a": ["x"], "b": ["y"]}]))
    with pytest.raises(RecognizeError, match="exactly one tag"):
        read_descriptions(path)
