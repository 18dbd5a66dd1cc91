"""Parity: the stage's decoding gives exactly what segment-anything's `SamPredictor` gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sam_support import random_boxes
from segment_anything import SamPredictor

from recognize.images import load_image
from recognize_sam.predict import BoxSegmenter


@pytest.fixture(scope="module")
def images(small_photo, big_photo):
    return [load_image(small_photo), load_image(big_photo)]


@pytest.fixture(scope="module")
def embeddings(tiny_sam, images):
    return BoxSegmenter(tiny_sam).embed(images)


@pytest.fixture(scope="module")
def predictors(tiny_sam, images):
    """segment-anything's own predictor, one per image, with the same random weights."""
    out = []
    for image in images:
        predictor = SamPredictor(tiny_sam)
        predictor.set_image(image)
        out.append(predictor)
    return out


@pytest.mark.slow
def test_batched_embedding_equals_set_image(images, embeddings, predictors):
    for image, embedding, predictor in zip(images, embeddings, predictors):
        assert torch.equal(embedding.features, predictor.features)
        assert embedding.input_size == predictor.input_size
        assert embedding.original_size == predictor.original_size == image.shape[:2]


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("which, count", [(0, 4), (1, 2)], ids=["small", "big"])
@pytest.mark.slow
def test_masks_equal_sampredictor(tiny_sam, images, embeddings, predictors, multimask, which, count):
    image, embedding = images[which], embeddings[which]
    boxes = random_boxes(*image.shape[:2], count, seed=which)
    result = BoxSegmenter(tiny_sam).segment(embedding, boxes, multimask=multimask)
    assert result.masks.shape == (count, *image.shape[:2]) and result.masks.dtype == bool

    predictor = predictors[which]
    for i, box in enumerate(boxes):
        masks, scores, _ = predictor.predict(box=box, multimask_output=multimask)
        best = int(np.argmax(scores))
        assert np.array_equal(result.masks[i], masks[best]), f"box {i}"
        assert result.scores[i] == scores[best]
    # random weights still give masks with both values somewhere, so equality is not vacuous
    assert result.masks.any() and not result.masks.all()


def test_no_boxes(tiny_sam, embeddings):
    result = BoxSegmenter(tiny_sam).segment(embeddings[0], np.zeros((0, 4)))
    assert result.masks.shape == (0, 640, 428) and result.scores.shape == (0,)
