"""Parity with the reference OWLv2 pipeline: transformers' `Owlv2Processor` (image processor +
CLIP tokenizer), `Owlv2ForObjectDetection` and `post_process_object_detection`, as its model
card and the zero-shot-object-detection pipeline use them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from owl_support import TINY, clip_tokenizer

from recognize import Frame, Pipeline, Tag
from recognize.images import load_image
from recognize_owlv2 import Owlv2
from recognize_owlv2.queries import tokenize

pytestmark = pytest.mark.parity

TAGS = ["dog", "traffic light", "person", "a photo of a cat", "grass"]


def reference(model, image: np.ndarray, queries: list[str], threshold: float) -> dict[str, np.ndarray]:
    from transformers import Owlv2ImageProcessor

    size = model.config.vision_config.image_size
    processor = Owlv2ImageProcessor(size={"height": size, "width": size})
    # what Owlv2Processor does with one image and its queries (text padded to OWLv2's 16 tokens)
    text = clip_tokenizer()(queries, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        outputs = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
    (result,) = processor.post_process_object_detection(
        outputs, threshold=threshold, target_sizes=[image.shape[:2]]
    )
    return {k: v.numpy() for k, v in result.items()}


def test_query_tokens_equal_clip_tokenizer():
    ours, mask = tokenize(TAGS)
    theirs = clip_tokenizer()(TAGS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    assert torch.equal(ours, theirs["input_ids"]) and torch.equal(mask, theirs["attention_mask"])


def small(photos, name: str) -> np.ndarray:
    """A reference photo at most ~700 px: the reference image processor's anti-aliasing filter
    costs over a minute on a 3000 px photo on this shared 2-core machine."""
    image = load_image(photos[name])
    step = max(1, max(image.shape[:2]) // 700)
    return np.ascontiguousarray(image[::step, ::step])


@pytest.mark.parametrize("photo", ["demo4", "demo2"])
def test_regions_equal_the_reference_pipeline(tiny_owlv2, photos, photo):
    image = small(photos, photo)
    threshold = 0.3
    expected = reference(tiny_owlv2, image, TAGS, threshold)
    stage = Owlv2(**{**TINY, "box_threshold": threshold, "nms": "none"})
    stage.ensure_loaded()  # the same seed builds the same weights as the `tiny_owlv2` fixture
    (frame,) = Pipeline([stage])([Frame.from_array(image, tags=[Tag(name=t) for t in TAGS])])

    # deliberate difference: the reference leaves boxes in the padded square; we clip them to
    # the image (and drop boxes that lie wholly in the padding)
    height, width = image.shape[:2]
    boxes = expected["boxes"].astype(np.float64)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    order = np.argsort(-expected["scores"][inside], kind="stable")
    want = [(TAGS[int(label)], float(score), *box) for label, score, box in
            zip(expected["labels"][inside][order], expected["scores"][inside][order], boxes[inside][order])]
    got = [(r.tag, r.score, *r.box) for r in frame.regions]
    assert len(want) > 3 and len(got) == len(want)
    for a, b in zip(got, want):
        assert a[0] == b[0]
        np.testing.assert_allclose(a[1:], b[1:], rtol=1e-5, atol=1e-3)


def test_batch_with_different_tag_lists_equals_one_by_one(tiny_owlv2, photos):
    images = [small(photos, "demo4"), small(photos, "demo2")]
    tag_lists = [TAGS, TAGS[:2]]
    stage = Owlv2(**{**TINY, "box_threshold": 0.3, "batch_size": 2})
    stage.ensure_loaded()
    together = stage.detect(images, [tuple(t) for t in tag_lists])
    for image, tags, batched in zip(images, tag_lists, together):
        (alone,) = stage.detect([image], [tuple(tags)])
        assert len(alone[0]) == len(batched[0]) > 0
        np.testing.assert_allclose(batched[0], alone[0], atol=1e-3)
        np.testing.assert_allclose(batched[1], alone[1], atol=1e-5)
        assert np.array_equal(batched[2], alone[2])
