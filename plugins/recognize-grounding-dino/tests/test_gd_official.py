"""Parity with the official Grounding DINO code (rf-groundingdino), run in its own environment.

The official code needs transformers 4.x; this plugin runs on the current release. So the official
side runs in the oracle environment (`oracle_env.py`: a cached venv the first test builds) and
hands its numbers back as .npz files. One tiny model is built by the official code with seeded
random weights and saved as an official-layout checkpoint; the plugin loads that file through its
key conversion. For the same photo and caption, both must give the same token scores and boxes,
and the stage's regions must be exactly the official `predict()` detections.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recognize import Frame
from recognize.stage import shared_models
from recognize_grounding_dino.model import Detector
from recognize_grounding_dino.stage import GroundingDino
from recognize_grounding_dino.transforms import preprocess

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


def test_token_scores_and_boxes_equal_the_official_model(official_checkpoint, vocab, tiny, photos, ram_tags,
                                                         tmp_path):
    detector = Detector.load("swint_ogc", official_checkpoint, vocab, config=tiny)
    image = Frame(source=str(photos[0])).image
    tags = [english for english, _ in ram_tags[2000:2150]]
    prompts = detector.pack(tags).prompts
    assert len(prompts) >= 2
    reference = _official_run(official_checkpoint, vocab, tiny, image, [p.text for p in prompts], tmp_path)

    ours = preprocess(image, SIZE, MAX_SIZE)
    assert torch.equal(ours, torch.from_numpy(reference["tensor_0"]))  # same pixels in
    for j, prompt in enumerate(prompts):
        logits = torch.from_numpy(reference[f"logits_0_{j}"])
        probs, boxes = detector(ours[None], prompt)
        torch.testing.assert_close(probs, logits.sigmoid()[..., : len(prompt)], atol=1e-4, rtol=0)
        torch.testing.assert_close(boxes, torch.from_numpy(reference[f"boxes_0_{j}"]), atol=1e-5, rtol=0)
        # the padding the official head adds up to 256 is -inf: nothing beyond the caption
        assert torch.isinf(logits[..., len(prompt):]).all()


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
