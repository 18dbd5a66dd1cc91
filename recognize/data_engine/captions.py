"""Vocabulary names found in captions: longest match first, simple plurals of the last word."""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"[^\W_]+")

_IRREGULAR = {
    "man": "men", "woman": "women", "person": "people", "child": "children", "foot": "feet",
    "tooth": "teeth", "mouse": "mice", "goose": "geese", "ox": "oxen", "fish": "fish",
    "sheep": "sheep", "deer": "deer", "louse": "lice", "cactus": "cacti", "fungus": "fungi",
}


def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.casefold()))


def plural_forms(word: str) -> set[str]:
    """Plural spellings of an English noun, by the regular rules plus common irregulars."""
    forms = set()
    if word in _IRREGULAR:
        forms.add(_IRREGULAR[word])
    if word.endswith(("s", "x", "z", "ch", "sh")):
        forms.add(word + "es")
    elif len(word) > 1 and word.endswith("y") and word[-2] not in "aeiou":
        forms.add(word[:-1] + "ies")
    else:
        forms.add(word + "s")
        if word.endswith("o"):
            forms.add(word + "es")
        if word.endswith("fe"):
            forms.add(word[:-2] + "ves")
        elif word.endswith("f"):
            forms.add(word[:-1] + "ves")
    if word.endswith("man") and len(word) > 3:
        forms.add(word[:-3] + "men")  # fireman -> firemen
    return forms


class CaptionParser:
    """Finds vocabulary names in captions: longest match first, plurals of the last word accepted.

    Text is case-folded and split into words (punctuation and hyphens separate words, so
    `t-shirt` and `t shirt` match alike). Build it once per vocabulary; `parse` is then linear in
    the caption's length.
    """

    def __init__(self, vocabulary: Sequence[str]) -> None:
        table: dict[tuple[str, ...], str] = {}
        exact: dict[tuple[str, ...], str] = {}
        for name in vocabulary:
            words = _words(name)
            if not words:
                continue
            exact.setdefault(words, name)
            for plural in plural_forms(words[-1]):
                table.setdefault(words[:-1] + (plural,), name)
        table.update(exact)  # an exact name beats another name's plural ("glasses" vs "glass")
        self._table = table
        self._longest = max((len(w) for w in table), default=0)

    def parse(self, caption: str) -> list[str]:
        """Vocabulary names in `caption`, in order of first appearance, each once."""
        words = _words(caption)
        found: dict[str, None] = {}
        i = 0
        while i < len(words):
            for n in range(min(self._longest, len(words) - i), 0, -1):
                name = self._table.get(words[i : i + n])
                if name is not None:
                    found.setdefault(name, None)
                    i += n
                    break
            else:
                i += 1
        return list(found)


def parse_caption_tags(caption: str, vocabulary: Sequence[str]) -> list[str]:
    """Vocabulary names found in `caption` (see `CaptionParser`; build one for many captions)."""
    return CaptionParser(vocabulary).parse(caption)


