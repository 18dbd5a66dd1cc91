"""Tag2Text's text tokenizer: uncased BERT WordPiece plus `[DEC]` and `[ENC]`.

API: `CaptionTokenizer(vocab_path)` (or `CaptionTokenizer.from_hub()`):
- `encode_tags(texts, max_length=40)` -> (input_ids, attention_mask) int64 [B, max_length], the tag
  encoder's input: padded to `max_length`, truncated with `[SEP]` kept last, `[CLS]` replaced by `[ENC]`;
- `prompt_ids(prompt)` -> `[DEC] + pieces` (the caption decoder's prefix, no `[SEP]`);
- `decode(ids)` -> text, exactly as transformers 4.31's slow `BertTokenizer.decode(ids,
  skip_special_tokens=True)` (clean-up of the spaces before punctuation included);
- `caption(ids, prompt)` -> the decoded text minus its first `len(prompt)` characters, the official cut.

Why the `tokenizers` library and not transformers: it is the fast WordPiece made for the job and
needs nothing but the local `vocab.txt` (the official code builds `BertTokenizer.from_pretrained(
'bert-base-uncased')`, a hub call at construction). Its normalizer/pre-tokenizer reproduce the slow
`BasicTokenizer` (clean text, CJK spacing, lowercase, accent stripping, punctuation split). Decoding
is done here from the vocabulary because the slow tokenizer's clean-up differs from the
`tokenizers` WordPiece decoder's (which also rewrites " do not" to " don't").

Quirk kept on purpose: the official caption is `decoded[len("a picture of "):]`. When the first
generated piece is a `##` continuation, the decoded text reads "a picture ofxyz" and the cut drops
the first character of that piece; the official output does that, so this does too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, processors

from recognize.errors import ModelFileError

VOCAB_CARD = "bert-base-uncased-vocab"
VOCAB_FILE = "vocab.txt"

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
DEC, ENC = "[DEC]", "[ENC]"


def clean_up_tokenization(text: str) -> str:
    """transformers 4.31 `PreTrainedTokenizerBase.clean_up_tokenization`."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


class CaptionTokenizer:
    """Uncased BERT WordPiece with `[DEC]` = BOS (30522) and `[ENC]` (30523) appended."""

    def __init__(self, vocab_path: str | Path) -> None:
        path = Path(vocab_path)
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except OSError as error:
            raise ModelFileError(f"cannot read the BERT vocabulary {path}: {error.strerror or error}") from None
        if lines and lines[-1] == "":
            lines.pop()
        vocab = {token: index for index, token in enumerate(lines)}
        missing = [t for t in (PAD, UNK, CLS, SEP, MASK) if t not in vocab]
        if missing or len(vocab) != len(lines):
            raise ModelFileError(f"{path} is not a BERT WordPiece vocabulary (missing {missing or 'unique tokens'})")
        tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=100))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.add_special_tokens([AddedToken(t, special=True) for t in (PAD, UNK, CLS, SEP, MASK)])
        tokenizer.add_special_tokens([AddedToken(DEC, special=True), AddedToken(ENC, special=True)])
        self.tokens: list[str] = lines + [DEC, ENC]
        if tokenizer.token_to_id(DEC) != len(lines) or tokenizer.token_to_id(ENC) != len(lines) + 1:
            raise ModelFileError(f"{path}: [DEC]/[ENC] already in the vocabulary; expected the plain BERT vocab")
        self.pad_token_id = vocab[PAD]
        self.cls_token_id = vocab[CLS]
        self.sep_token_id = vocab[SEP]
        self.bos_token_id = len(lines)
        self.enc_token_id = len(lines) + 1
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A {SEP}", special_tokens=[(CLS, self.cls_token_id), (SEP, self.sep_token_id)]
        )
        specials = {vocab[t] for t in (PAD, UNK, CLS, SEP, MASK)} | {self.bos_token_id, self.enc_token_id}
        self.special_ids = frozenset(specials)
        self._tokenizer = tokenizer

    @classmethod
    def from_hub(cls) -> CaptionTokenizer:
        """The cached `bert-base-uncased` vocabulary (downloaded once through the model registry)."""
        from recognize.hub import ensure_file

        return cls(ensure_file(VOCAB_CARD, VOCAB_FILE))

    def __len__(self) -> int:
        return len(self.tokens)

    def tokenize(self, text: str) -> list[str]:
        """WordPiece pieces of `text`, no special tokens (for inspection and tests)."""
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def encode_tags(self, texts: Sequence[str], max_length: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
        """The tag encoder's input: `[ENC] pieces... [SEP] [PAD]...`, cut to `max_length` (last piece `[SEP]`)."""
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = torch.full((len(texts), max_length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(texts), max_length), dtype=torch.long)
        for row, encoding in enumerate(encodings):
            pieces = encoding.ids[1:-1][: max_length - 2]  # truncate the text, keep [CLS] .. [SEP]
            sequence = [self.enc_token_id, *pieces, self.sep_token_id]
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        return ids, mask

    def prompt_ids(self, prompt: str) -> list[int]:
        """`[CLS] prompt [SEP]` with `[CLS]` -> `[DEC]` and the `[SEP]` dropped (official prompt trick)."""
        ids = self._tokenizer.encode(prompt).ids
        return [self.bos_token_id, *ids[1:-1]]

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Slow-BertTokenizer decoding: join pieces, glue `##` continuations, clean up punctuation spaces."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        tokens = [self.tokens[i] for i in ids if not (skip_special_tokens and i in self.special_ids)]
        return clean_up_tokenization(" ".join(tokens).replace(" ##", "").strip())

    def caption(self, ids: Sequence[int] | torch.Tensor, prompt: str) -> str:
        """The official caption: the decoded text minus its first `len(prompt)` characters."""
        return self.decode(ids)[len(prompt) :]
