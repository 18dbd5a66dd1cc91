"""Tags -> OWLv2 text queries: CLIP's BPE tokens, 16 per query, as `Owlv2Processor` makes them.

The tokenizer is open_clip's `SimpleTokenizer`, which ships the CLIP BPE table inside the
package (no download; transformers' `CLIPTokenizer` needs vocab.json/merges.txt from the hub).
The tests check that the ids equal `CLIPTokenizer`'s for the same table.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

CONTEXT = 16  # OWLv2's text length (max_position_embeddings)


@lru_cache(maxsize=1)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT)


def tokenize(queries: Sequence[str], template: str = "{}") -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask (len(queries) x 16) for the text queries."""
    ids = _tokenizer()([template.format(q) for q in queries], context_length=CONTEXT).long()
    # real tokens run up to and including the end token, the largest id; padding follows
    ends = ids.argmax(-1, keepdim=True)
    mask = (torch.arange(CONTEXT)[None] <= ends).long()
    return ids, mask
