"""Parity with the official Grounding DINO code (rf-groundingdino), run in its own environment.

The official code needs transformers 4.x; this plugin runs on the current release. So the official
side runs in the oracle environment (`oracle_env.py`: a cached venv the first test builds) and
hands its numbers back as .npz files. One tiny model is built by the official code with seeded
random weights in every tensor (box heads included, which the official init zeroes) and saved as an
official-layout checkpoint; the plugin loads that file through its key conversion. For the same photo
and caption, both must give the same token scores and boxes per selected proposal (`gd_parity.py`:
near-tie proposals may swap between correct implementations), and the stage's regions must be
exactly the official `predict()` detections.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gd_parity import compare_per_proposal, official_selection, ours_selection
from recognize_grounding_dino.model import Detector
from recognize_grounding_dino.stage import GroundingDino
from recognize_grounding_dino.transforms import preprocess

from recognize import Frame
from recognize.stage import shared_models

pytestmark = [pytest.mark.parity, pytest.mark.slow, pytest.mark.subprocess]

SIZE, MAX_SIZE = 128, 192
SEED = 1


@pytest.fixture(scope="module")
def official_checkpoint(vocab, tiny, tmp_path_factory):
    from oracle_env import run_official

    folder = tmp_path_factory.mktemp("official")
    checkpoint = folder / "tiny_official.pth"
    run_official({"task": "build_tiny", "vocab": str(vocab), "config": tiny, "seed": SEED,
                  "checkpoint": str(checkpoint)}, folder)
    return checkpoint


def _official_run(checkpoint, vocab, tiny, image: np.ndarray, captions: list[str], folder, **thresholds):
    from oracle_env import run_official

    np.save(folder / "image.npy", image)
    return run_official({"task": "run_tiny", "vocab": str(vocab), "config": tiny, "seed": SEED,
                         "checkpoint": str(checkpoint), "images": [str(folder / "image.npy")],
                         "captions": captions, "size": SIZE, "max_size": MAX_SIZE, **thresholds}, folder)


@pytest.fixture(scope="module")
def official_run(official_checkpoint, vocab, tiny, photos, ram_tags, tmp_path_factory):
    """The official model's outputs (and two-stage selections) for one photo and every caption of
    150 tags; computed once for the tests below."""
    detector = Detector.load("swint_ogc", official_checkpoint, vocab, config=tiny)
    image = Frame(source=str(photos[0])).image
    tags = [english for english, _ in ram_tags[2000:2150]]
    prompts = detector.pack(tags).prompts
    assert len(prompts) >= 2
    reference = _official_run(official_checkpoint, vocab, tiny, image, [p.text for p in prompts],
                              tmp_path_factory.mktemp("official_run"))
    return detector, image, prompts, reference


def test_the_checkpoint_exercises_box_regression(official_checkpoint, official_run):
    """The official init zeroes the last layer of every box MLP, so a freshly initialised checkpoint
    would compare only the encoder's boxes; this one has seeded random values there."""
    state = torch.load(official_checkpoint, map_location="cpu", weights_only=True)["model"]
    heads = [k for k in state if k.endswith(("bbox_embed.0.layers.2.weight", "enc_out_bbox_embed.layers.2.weight"))]
    assert heads and all(state[k].abs().min() > 0 for k in heads)
    _detector, _image, _prompts, reference = official_run
    moved = (torch.from_numpy(reference["boxes_0_0"]) - torch.from_numpy(reference["selected_boxes_0_0"])).abs()
    assert moved.max() > 1e-2  # the decoder's box regression moved the boxes away from the proposals


def test_token_scores_and_boxes_equal_the_official_model_per_proposal(official_run):
    detector, image, prompts, reference = official_run
    ours = preprocess(image, SIZE, MAX_SIZE)
    assert torch.equal(ours, torch.from_numpy(reference["tensor_0"]))  # same pixels in
    for j, prompt in enumerate(prompts):
        logits = torch.from_numpy(reference[f"logits_0_{j}"])
        # the padding the official head adds up to 256 is -inf: nothing beyond the caption
        assert torch.isinf(logits[..., len(prompt):]).all()
        theirs = official_selection(reference, f"0_{j}").tokens(len(prompt))
        mine = ours_selection(detector.model, ours[None], prompt.input_ids).tokens(len(prompt))
        result = compare_per_proposal(mine, theirs)
        assert result.aligned >= 0.95 * detector.model.config.num_queries
        # what the stage reads (Detector.__call__) is the same network's output
        probs, boxes = detector(ours[None], prompt)
        torch.testing.assert_close(probs[0], mine.logits.sigmoid(), atol=1e-6, rtol=0)
        torch.testing.assert_close(boxes[0], mine.boxes, atol=1e-6, rtol=0)


@pytest.mark.parametrize("weight", [
    "decoder.bbox_embed.0.layers.2.weight",  # the decoder's box head only: only boxes change
    "patch_embeddings.projection.weight",  # Swin's first convolution: everything changes
])
def test_the_comparison_fails_when_one_weight_differs(official_run, weight):
    """The per-proposal comparison must be able to fail: one weight nudged on our side breaks it."""
    detector, image, prompts, reference = official_run
    parameter = next(p for name, p in detector.model.named_parameters() if name.endswith(weight))
    pixels = preprocess(image, SIZE, MAX_SIZE)[None]
    theirs = official_selection(reference, "0_0").tokens(len(prompts[0]))
    compare_per_proposal(ours_selection(detector.model, pixels, prompts[0].input_ids).tokens(len(prompts[0])), theirs)
    original = parameter.detach().clone()
    try:
        with torch.no_grad():
            parameter.view(-1)[0] += 0.05
        nudged = ours_selection(detector.model, pixels, prompts[0].input_ids).tokens(len(prompts[0]))
        with pytest.raises(AssertionError):
            compare_per_proposal(nudged, theirs)
    finally:
        with torch.no_grad():
            parameter.copy_(original)


def test_stage_regions_are_the_official_predictions(official_checkpoint, vocab, tiny, photos, ram_tags, tmp_path):
    tags = [english for english, _ in ram_tags[3000:3150]]
    stage = GroundingDino(checkpoint=str(official_checkpoint), vocab=str(vocab), config=tiny, device="cpu",
                          classes=tags, box_threshold=0.3, text_threshold=0.0, nms="none", image_size=SIZE,
                          max_size=MAX_SIZE)
    try:
        frame = stage([Frame(source=str(photos[-1]))])[0]
        prompts = stage.detector.pack(tags).prompts
    finally:
        shared_models.clear()
    height, width = frame.image.shape[:2]
    reference = _official_run(official_checkpoint, vocab, tiny, frame.image, [p.text for p in prompts], tmp_path,
                              box_threshold=0.3, text_threshold=0.0)
    expected = []
    for j, prompt in enumerate(prompts):
        boxes = torch.from_numpy(reference[f"predict_boxes_0_{j}"])
        scores = reference[f"predict_scores_0_{j}"]
        cx, cy, w, h = boxes.unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * torch.tensor([width, height] * 2)
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
        for box, score in zip(xyxy.tolist(), scores.tolist()):
            if box[2] > box[0] and box[3] > box[1]:
                expected.append((score, box, {tags[i] for i in prompt.tags}))
    assert expected, "the random model should find something at box_threshold 0.3"
    expected.sort(key=lambda item: -item[0])
    regions = sorted(frame.regions, key=lambda r: -r.score)
    assert len(regions) == len(expected)
    for region, (score, box, prompt_tags) in zip(regions, expected):
        assert region.score == pytest.approx(score, abs=1e-4)
        assert region.box == pytest.approx(box, abs=1e-2)
        assert region.tag in prompt_tags  # the tag comes from the caption that found the box
