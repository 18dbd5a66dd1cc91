"""Parity with the official Grounding DINO code (rf-groundingdino, a test-only dependency).

One tiny model is built by the official code with seeded random weights and saved as an
official-layout checkpoint; the plugin loads that file through its key conversion. For the same
photo and caption, both must give the same token scores and boxes, and the stage's regions
must be exactly the official `predict()` detections.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from recognize import Frame
from recognize.stage import shared_models
from recognize_grounding_dino.model import Detector
from recognize_grounding_dino.stage import GroundingDino
from recognize_grounding_dino.transforms import preprocess

pytest.importorskip("groundingdino", reason="rf-groundingdino (the official code) is a test-only dependency")

SIZE, MAX_SIZE = 128, 192


@pytest.fixture(scope="module")
def official(tokenizer, tiny, tmp_path_factory):
    from gd_support import official_tiny_model, randomize_

    with pytest.MonkeyPatch.context() as monkeypatch:
        model = randomize_(official_tiny_model(tokenizer, tiny, monkeypatch), seed=1)
        # official layout as released: {"model": state_dict} with DistributedDataParallel's prefix
        path = tmp_path_factory.mktemp("official") / "tiny_official.pth"
        torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
        yield model, path


def _official_tensor(image: np.ndarray) -> torch.Tensor:
    import groundingdino.datasets.transforms as T

    transform = T.Compose([T.RandomResize([SIZE], max_size=MAX_SIZE), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    return transform(Image.fromarray(image), None)[0]


def test_token_scores_and_boxes_equal_the_official_model(official, tokenizer, tiny, vocab, photos, ram_tags):
    model, checkpoint = official
    detector = Detector.load("swint_ogc", checkpoint, vocab, config=tiny)
    image = Frame(source=str(photos[0])).image
    ours = preprocess(image, SIZE, MAX_SIZE)
    assert torch.equal(ours, _official_tensor(image))  # same pixels in

    tags = [english for english, _ in ram_tags[2000:2150]]
    prompts = detector.pack(tags).prompts
    assert len(prompts) >= 2
    for prompt in prompts:
        with torch.no_grad():
            reference = model(ours[None], captions=[prompt.text])
        probs, boxes = detector(ours[None], prompt)
        torch.testing.assert_close(probs, reference["pred_logits"].sigmoid()[..., : len(prompt)], atol=1e-4, rtol=0)
        torch.testing.assert_close(boxes, reference["pred_boxes"], atol=1e-5, rtol=0)
        # the padding the official head adds up to 256 is -inf: nothing beyond the caption
        assert torch.isinf(reference["pred_logits"][..., len(prompt):]).all()


def test_stage_regions_are_the_official_predictions(official, vocab, tiny, photos, ram_tags):
    from groundingdino.util.inference import predict

    model, checkpoint = official
    tags = [english for english, _ in ram_tags[3000:3150]]
    stage = GroundingDino(checkpoint=str(checkpoint), vocab=str(vocab), config=tiny, device="cpu", classes=tags,
                          box_threshold=0.3, text_threshold=0.0, nms="none", image_size=SIZE, max_size=MAX_SIZE)
    try:
        frame = stage([Frame(source=str(photos[-1]))])[0]
        height, width = frame.image.shape[:2]
        expected = []
        for prompt in stage.detector.pack(tags).prompts:
            boxes, scores, _phrases = predict(model, _official_tensor(frame.image), prompt.text,
                                              box_threshold=0.3, text_threshold=0.0, device="cpu")
            cx, cy, w, h = boxes.unbind(-1)
            xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * torch.tensor([width, height] * 2)
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
            for box, score in zip(xyxy.tolist(), scores.tolist()):
                if box[2] > box[0] and box[3] > box[1]:
                    expected.append((score, box, {tags[i] for i in prompt.tags}))
    finally:
        shared_models.clear()
    assert expected, "the random model should find something at box_threshold 0.3"
    expected.sort(key=lambda item: -item[0])
    regions = sorted(frame.regions, key=lambda r: -r.score)
    assert len(regions) == len(expected)
    for region, (score, box, prompt_tags) in zip(regions, expected):
        assert region.score == pytest.approx(score, abs=1e-4)
        assert region.box == pytest.approx(box, abs=1e-2)
        assert region.tag in prompt_tags  # the tag comes from the caption that found the box
