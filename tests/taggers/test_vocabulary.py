"""Tag lists, thresholds files, overrides, include / exclude and the official output strings."""

from __future__ import annotations

import numpy as np
import pytest

from recognize.errors import ModelFileError, RecognizeError
from recognize.taggers.vocabulary import Vocabulary, read_tag_list, read_thresholds


@pytest.fixture
def official(reference):
    data = reference / "data" / "ram" / "data"
    return Vocabulary.from_files(data / "ram_tag_list.txt", data / "ram_tag_list_chinese.txt",
                                 data / "ram_tag_list_threshold.txt")


def test_official_lists(official):
    assert len(official) == 4585
    assert sum(zh.endswith(" ") for zh in official.names_zh) == 2579  # kept, as the official code does
    assert official.clean_zh(0) == official.names_zh[0].strip()
    assert int(np.isclose(official.thresholds, 0.65).sum()) == 3414


def test_predict_is_strict_and_in_index_order():
    vocab = Vocabulary(["c", "a", "b"], ["丙 ", "甲", "乙 "], np.array([0.5, 0.5, 0.7], dtype=np.float32))
    scores = np.array([[0.9, 0.5, 0.71], [0.2, 0.99, 0.7]], dtype=np.float32)
    hits = vocab.predict(scores)
    assert [h.tolist() for h in hits] == [[0, 2], [1]]
    assert vocab.official_strings(hits[0]) == "c | b"
    assert vocab.official_strings(hits[0], chinese=True) == "丙  | 乙 "


def test_overrides_and_selection():
    vocab = Vocabulary(["dog", "cat", "dog"], thresholds=np.array([0.6, 0.6, 0.6], dtype=np.float32))
    assert vocab.with_thresholds(0.2).thresholds.tolist() == pytest.approx([0.2, 0.2, 0.2])
    assert vocab.with_thresholds(0.2, {"dog": 0.9}).thresholds.tolist() == pytest.approx([0.9, 0.2, 0.9])
    assert vocab.allowed_mask(["cat"]).tolist() == [False, True, False]
    assert vocab.allowed_mask(None, ["dog"]).tolist() == [False, True, False]
    with pytest.raises(RecognizeError, match="did you mean 'dog'"):
        vocab.allowed_mask(["dgo"])


def test_threshold_file_length_is_checked(tmp_path):
    (tmp_path / "t.txt").write_text("0.5\n0.7\n0.9\n")
    assert read_thresholds(tmp_path / "t.txt", 3).tolist() == pytest.approx([0.5, 0.7, 0.9])
    with pytest.raises(ModelFileError, match="3 thresholds for 4 tags"):
        read_thresholds(tmp_path / "t.txt", 4)
    with pytest.raises(ModelFileError, match="no such tag list"):
        read_tag_list(tmp_path / "absent.txt")


def test_subset_keeps_thresholds_and_names(official):
    sub = official.subset([0, 63])
    assert sub.names == [official.names[0], official.names[63]]
    assert sub.thresholds.tolist() == official.thresholds[[0, 63]].tolist()
