"""Comparing two Grounding DINO implementations per selected proposal.

The two-stage query selection keeps the `num_queries` best encoder proposals (`torch.topk` over each
proposal's best token logit), and query `q` of the decoder is (learned content embedding `q`, the
`q`-th selected proposal). Two correct implementations compute the proposal scores with different
roundings, so proposals whose scores differ by ~1e-5 (near-ties) can swap ranks, or one can enter
the selection in place of the other at the boundary. A query whose proposal differs between the
sides is a different query (another proposal, or the same proposal under another content
embedding): its outputs cannot be compared, only the near-tie that made it differ can be checked.

So the comparison is: (1) every encoder proposal's token logits agree (proposals are indexed by
position in the flattened feature maps, the same on both sides); (2) at every rank where the sides
selected different proposals, the two proposals are near-ties by the scores both sides agree on;
(3) at every rank where they selected the same proposal, the encoder box it starts from and the
decoder's final token logits and box agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Selection:
    """One side's two-stage selection and outputs for one image and caption (batch dimension removed)."""

    proposal_logits: torch.Tensor  #: [proposals, tokens] encoder token logits of every proposal
    selected: torch.Tensor  #: [queries] the selected proposals' indices, in query order
    selected_boxes: torch.Tensor  #: [queries, 4] their encoder boxes (cx, cy, w, h), where decoding starts
    logits: torch.Tensor  #: [queries, tokens] final token logits
    boxes: torch.Tensor  #: [queries, 4] final boxes

    def tokens(self, count: int) -> Selection:
        return Selection(self.proposal_logits[:, :count], self.selected, self.selected_boxes,
                         self.logits[:, :count], self.boxes)


@dataclass
class Comparison:
    aligned: int  #: queries compared (same proposal at the same rank)
    swapped: int  #: queries whose proposal differed (each a near-tie)


def compare_per_proposal(ours: Selection, theirs: Selection, *, logit_atol: float = 1e-4, box_atol: float = 1e-5,
                         tie: float = 1e-4, max_swapped: float = 0.05) -> Comparison:
    """Assert that `ours` equals `theirs` per selected proposal (see the module docstring); raises
    AssertionError otherwise. `max_swapped` bounds the share of queries allowed to differ by near-ties."""
    torch.testing.assert_close(ours.proposal_logits, theirs.proposal_logits, atol=logit_atol, rtol=0,
                               msg=lambda m: f"encoder proposal logits differ: {m}")
    scores = ours.proposal_logits.max(-1).values
    differ = (ours.selected != theirs.selected).nonzero().flatten()
    for rank in differ.tolist():
        mine, other = int(ours.selected[rank]), int(theirs.selected[rank])
        gap = abs(float(scores[mine] - scores[other]))
        assert gap <= tie, (f"query {rank}: proposal {mine} against {other}, score gap {gap:.2e} is no near-tie "
                            f"(tolerance {tie:.0e})")
    assert len(differ) <= max_swapped * len(ours.selected), f"{len(differ)} of {len(ours.selected)} queries differ"
    same = ours.selected == theirs.selected
    torch.testing.assert_close(ours.selected_boxes[same], theirs.selected_boxes[same], atol=box_atol, rtol=0,
                               msg=lambda m: f"encoder boxes of the selected proposals differ: {m}")
    torch.testing.assert_close(ours.logits[same], theirs.logits[same], atol=logit_atol, rtol=0,
                               msg=lambda m: f"token logits differ: {m}")
    torch.testing.assert_close(ours.boxes[same], theirs.boxes[same], atol=box_atol, rtol=0,
                               msg=lambda m: f"boxes differ: {m}")
    return Comparison(aligned=int(same.sum()), swapped=len(differ))


def ours_selection(model: torch.nn.Module, pixels: torch.Tensor, input_ids: list[int]) -> Selection:
    """Run our `GroundingDinoForObjectDetection` on one image and caption; its Selection."""
    ids = torch.tensor([input_ids])
    with torch.inference_mode():
        out = model(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids),
                    token_type_ids=torch.zeros_like(ids))
    proposal_logits = out.enc_outputs_class[0]
    selected = torch.topk(proposal_logits.max(-1).values, model.config.num_queries)[1]
    return Selection(proposal_logits, selected, out.init_reference_points[0], out.logits[0], out.pred_boxes[0])


def official_selection(reference: dict, key: str) -> Selection:
    """The official worker's arrays for `key` (`<image>_<caption>`) as a Selection."""
    def get(name):
        return torch.from_numpy(reference[f"{name}_{key}"])[0]

    return Selection(get("proposal_logits"), get("selected"), get("selected_boxes"), get("logits"), get("boxes"))
