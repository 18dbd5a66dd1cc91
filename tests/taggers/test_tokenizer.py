"""The Tag2Text tokenizer against transformers' slow BertTokenizer (what the official code uses).

A small WordPiece vocabulary written here drives most checks, so they always run; the real
bert-base-uncased vocabulary (if this machine has it) is checked on harder strings too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from recognize.errors import ModelFileError
from recognize.taggers.tokenizer import CaptionTokenizer, clean_up_tokenization

SPECIAL = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["a", "picture", "of", "dog", "cat", "|", "wed", "##ding", "party", "man", ".", ",", "'", "s", "!",
         "do", "not", "n", "t", "bi", "##ker", "cafe", "x", "##x", "##y", "##z", "?", "book", "##s", "-"]
REAL_VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("".join(t + "\n" for t in SPECIAL + WORDS), encoding="utf-8")
    return path


def slow_tokenizer(vocab: Path):
    transformers = pytest.importorskip("transformers")
    tok = transformers.BertTokenizer(str(vocab), do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def official_tag_ids(tok, texts: list[str], max_length: int = 40) -> tuple[list[list[int]], list[list[int]]]:
    """What the official Tag2Text.generate does with the tag strings."""
    out = tok(texts, padding="max_length", truncation=True, max_length=max_length)
    ids = [[tok.convert_tokens_to_ids("[ENC]"), *row[1:]] for row in out.input_ids]
    return ids, out.attention_mask


def test_added_tokens_follow_the_vocabulary(vocab_file):
    tokenizer = CaptionTokenizer(vocab_file)
    n = len(SPECIAL) + len(WORDS)
    assert (tokenizer.bos_token_id, tokenizer.enc_token_id, len(tokenizer)) == (n, n + 1, n + 2)
    assert tokenizer.sep_token_id == SPECIAL.index("[SEP]")
    words = [len(SPECIAL) + WORDS.index(w) for w in ("a", "picture", "of")]
    assert tokenizer.prompt_ids("a picture of ") == [n, *words]


def test_encode_matches_the_slow_bert_tokenizer(vocab_file):
    tokenizer, slow = CaptionTokenizer(vocab_file), slow_tokenizer(vocab_file)
    texts = ["Dog | Cat", "wedding party | man", "BIKER, cafe! zebra", "Café  dog\tcat", "", "xxyz books"]
    ids, mask = tokenizer.encode_tags(texts)
    expected_ids, expected_mask = official_tag_ids(slow, texts)
    assert ids.tolist() == expected_ids
    assert mask.tolist() == expected_mask
    for text in texts:
        assert tokenizer.tokenize(text) == slow.tokenize(text)


def test_truncation_keeps_sep_last(vocab_file):
    tokenizer, slow = CaptionTokenizer(vocab_file), slow_tokenizer(vocab_file)
    long = " | ".join(["dog", "cat", "man"] * 10)  # 59 pieces
    ids, mask = tokenizer.encode_tags([long, "dog"], max_length=40)
    assert ids.shape == (2, 40) and ids.dtype == torch.long
    assert ids[0, 0] == tokenizer.enc_token_id and ids[0, -1] == tokenizer.sep_token_id
    assert mask[0].tolist() == [1] * 40
    assert mask[1].tolist() == [1, 1, 1] + [0] * 37
    assert ids.tolist() == official_tag_ids(slow, [long, "dog"])[0]


def test_decode_is_the_transformers_431_decode(vocab_file):
    tokenizer, slow = CaptionTokenizer(vocab_file), slow_tokenizer(vocab_file)
    v = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    dec, sep = tokenizer.bos_token_id, tokenizer.sep_token_id
    sequences = [
        [dec, v["a"], v["picture"], v["of"], v["dog"], v["."], sep],
        [dec, v["a"], v["picture"], v["of"], v["bi"], v["##ker"], v[","], v["man"], v["!"], sep, 0, 0],
        [dec, v["do"], v["n"], v["'"], v["t"], v["do"], v["not"], v["?"], tokenizer.enc_token_id, v["[UNK]"]],
        [dec, v["a"], v["picture"], v["of"], v["##x"], v["cat"], v["'"], v["s"], sep],
    ]
    for ids in sequences:
        expected = slow.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        assert tokenizer.decode(ids) == expected
    assert tokenizer.decode(sequences[0]) == "a picture of dog."
    # the official caption cut: a first piece that is a `##` continuation loses its first character
    assert tokenizer.decode(sequences[3]) == "a picture ofx cat's"
    assert tokenizer.caption(sequences[3], "a picture of ") == " cat's"
    assert tokenizer.caption(sequences[0], "a picture of ") == "dog."


def test_clean_up_is_not_the_wordpiece_decoder_one():
    # `tokenizers`' WordPiece decoder would also turn " do not" into " don't"
    assert clean_up_tokenization("i do not know , right ?") == "i do not know, right?"


def test_bad_vocabulary_is_a_one_line_error(tmp_path):
    with pytest.raises(ModelFileError, match="no such file|cannot read"):
        CaptionTokenizer(tmp_path / "missing.txt")
    bad = tmp_path / "vocab.txt"
    bad.write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(ModelFileError, match="not a BERT WordPiece vocabulary"):
        CaptionTokenizer(bad)


def _real_vocab() -> Path | None:
    from recognize.hub import cache_dir

    cached = cache_dir() / "models" / "bert-base-uncased-vocab" / "vocab.txt"
    for candidate in (os.environ.get("RECOGNIZE_BERT_VOCAB"), cached):
        if candidate and Path(candidate).is_file():
            if hashlib.sha256(Path(candidate).read_bytes()).hexdigest() == REAL_VOCAB_SHA256:
                return Path(candidate)
    return None


@pytest.mark.skipif(_real_vocab() is None, reason="bert-base-uncased vocab.txt not on this machine")
def test_real_vocabulary_matches_the_slow_tokenizer():
    vocab = _real_vocab()
    tokenizer, slow = CaptionTokenizer(vocab), slow_tokenizer(vocab)
    assert (len(tokenizer), tokenizer.bos_token_id, tokenizer.enc_token_id) == (30524, 30522, 30523)
    assert tokenizer.prompt_ids("a picture of ") == [30522, 1037, 3861, 1997]
    texts = ["Héllo, Wörld! it's 3.5 o'clock", "北京 tokyo—café naïve", "x" * 120, "a\tb\u200bc \x00d",
             "ＦＵＬＬwidth ﬁ ligature", "emoji 😀 test", "[SEP] in text [unused1]", "wedding party | man | biker"]
    assert tokenizer.encode_tags(texts)[0].tolist() == official_tag_ids(slow, texts)[0]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30524, (5, 40), generator=generator).tolist()
    for row in ids:
        assert tokenizer.decode(row) == slow.decode(row, skip_special_tokens=True, clean_up_tokenization_spaces=True)
