"""Parity: the stage's decoding gives what segment-anything's `SamPredictor` gives, on the same embedding.

Not bit for bit since the decoder runs several boxes per call through oneDNN's linears (`predict.py`'s
docstring): logits within `ATOL`, so a mask pixel may differ only where `SamPredictor`'s logit is that
close to the threshold 0."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sam_support import random_boxes
from segment_anything import SamPredictor

from recognize.images import load_image
from recognize_sam.lean_block import use_segment_anything
from recognize_sam.predict import BoxSegmenter

#: largest |logit difference| allowed between our decoding and `SamPredictor`'s (float32 rounding of
#: another summation order; measured ~1e-7 on the tiny model)
ATOL = 1e-5


@pytest.fixture(scope="module")
def images(small_photo, big_photo):
    return [load_image(small_photo), load_image(big_photo)]


@pytest.fixture(scope="module")
def embeddings(tiny_sam, images):
    return BoxSegmenter(tiny_sam).embed(images)


@pytest.fixture(scope="module")
def predictors(tiny_sam, images):
    """segment-anything's own predictor, one per image, with the same model (lean encoder)."""
    out = []
    for image in images:
        predictor = SamPredictor(tiny_sam)
        predictor.set_image(image)
        out.append(predictor)
    return out


@pytest.fixture(scope="module")
def plain_predictors(tiny_sam, images, embeddings):
    """segment-anything's own predictor and classes throughout (plain decoder linears), holding our
    embedding of each image, so that only the decoding differs."""
    plain = use_segment_anything(copy.deepcopy(tiny_sam))
    out = []
    for image, embedding in zip(images, embeddings):
        predictor = SamPredictor(plain)
        predictor.set_image(image)
        predictor.features = embedding.features
        out.append(predictor)
    return out


@pytest.mark.slow
def test_batched_embedding_equals_set_image(images, embeddings, predictors):
    for image, embedding, predictor in zip(images, embeddings, predictors):
        assert torch.equal(embedding.features, predictor.features)
        assert embedding.input_size == predictor.input_size
        assert embedding.original_size == predictor.original_size == image.shape[:2]


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("which, count", [(0, 11), (1, 2)], ids=["small", "big"])
@pytest.mark.slow
def test_masks_match_sampredictor(tiny_sam, images, embeddings, plain_predictors, multimask, which, count):
    """11 boxes: two decoder calls (8 + 3), so a partial last chunk is covered."""
    image, embedding = images[which], embeddings[which]
    boxes = random_boxes(*image.shape[:2], count, seed=which)
    segmenter = BoxSegmenter(tiny_sam)
    result = segmenter.segment(embedding, boxes, multimask=multimask)
    assert result.masks.shape == (count, *image.shape[:2]) and result.masks.dtype == bool
    assert type(tiny_sam.mask_decoder.iou_prediction_head.layers[0]).__name__ == "OneDNNLinear"

    predictor = plain_predictors[which]
    assert type(predictor.model.mask_decoder.iou_prediction_head.layers[0]) is torch.nn.Linear
    flipped = 0
    for i, box in enumerate(boxes):
        logits, scores, _ = predictor.predict(box=box, multimask_output=multimask, return_logits=True)
        best = int(np.argmax(scores))
        assert abs(result.scores[i] - scores[best]) <= ATOL
        differ = result.masks[i] != (logits[best] > tiny_sam.mask_threshold)
        assert np.all(np.abs(logits[best][differ]) <= ATOL), f"box {i}"
        flipped += int(differ.sum())
    assert flipped <= 10
    # random weights still give masks with both values somewhere, so equality is not vacuous
    assert result.masks.any() and not result.masks.all()


def test_boxes_per_call_does_not_change_the_masks_beyond_rounding(tiny_sam, images, embeddings, monkeypatch):
    """One box per call (the old way) against the default chunks: same masks but at the threshold."""
    image, embedding = images[0], embeddings[0]
    boxes = random_boxes(*image.shape[:2], 5, seed=3)
    chunked = BoxSegmenter(tiny_sam).segment(embedding, boxes)
    monkeypatch.setattr(BoxSegmenter, "boxes_per_call", 1)
    single = BoxSegmenter(tiny_sam).segment(embedding, boxes)
    np.testing.assert_allclose(chunked.scores, single.scores, rtol=0, atol=ATOL)
    assert (chunked.masks != single.masks).sum() <= 10
    assert chunked.masks.any()


def test_no_boxes(tiny_sam, embeddings):
    result = BoxSegmenter(tiny_sam).segment(embeddings[0], np.zeros((0, 4)))
    assert result.masks.shape == (0, 640, 428) and result.scores.shape == (0,)
