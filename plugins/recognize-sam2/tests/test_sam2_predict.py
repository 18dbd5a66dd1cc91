"""Parity: the stage's decoding gives exactly what sam2's `SAM2ImagePredictor.predict(box=...)` gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2_support import random_boxes

from recognize.images import load_image
from recognize_sam2.predict import BoxSegmenter


@pytest.fixture(scope="module")
def images(small_photo, big_photo):
    return [load_image(small_photo), load_image(big_photo)]


@pytest.fixture(scope="module")
def embeddings(tiny_sam2, images):
    return BoxSegmenter(tiny_sam2).embed(images)


@pytest.fixture(scope="module")
def single_embeddings(tiny_sam2, images):
    """One image per encoder call, as `set_image` embeds it, so the features are the predictor's bit for bit."""
    return [BoxSegmenter(tiny_sam2).embed([image])[0] for image in images]


def official(sam, image) -> SAM2ImagePredictor:
    predictor = SAM2ImagePredictor(sam)
    predictor.set_image(image)
    return predictor


@pytest.fixture(scope="module")
def predictors(tiny_sam2, images):
    """sam2's own predictor, one per image, with the same random weights."""
    return [official(tiny_sam2, image) for image in images]


def assert_same_as_predictor(sam, image, embedding, predictor, boxes, multimask):
    result = BoxSegmenter(sam).segment(embedding, boxes, multimask=multimask)
    assert result.masks.shape == (len(boxes), *image.shape[:2]) and result.masks.dtype == bool
    for i, box in enumerate(boxes):
        masks, scores, _ = predictor.predict(box=box, multimask_output=multimask)
        best = int(np.argmax(scores))
        assert np.array_equal(result.masks[i], masks[best]), f"box {i}"
        assert result.scores[i] == scores[best], f"box {i}"
    # random weights still give masks with both values somewhere, so equality is not vacuous
    assert result.masks.any() and not result.masks.all()


def test_batched_embedding_equals_set_image(images, embeddings, predictors):
    for image, embedding, predictor in zip(images, embeddings, predictors):
        torch.testing.assert_close(embedding.image_embed, predictor._features["image_embed"], rtol=0, atol=1e-5)
        for ours, theirs in zip(embedding.high_res_feats, predictor._features["high_res_feats"]):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
        assert embedding.original_size == tuple(predictor._orig_hw[0]) == image.shape[:2]


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("which, count", [(0, 4), (1, 2)], ids=["small", "big"])
def test_masks_equal_predictor(tiny_sam2, images, single_embeddings, predictors, multimask, which, count):
    embedding = single_embeddings[which]
    assert torch.equal(embedding.image_embed, predictors[which]._features["image_embed"])
    boxes = random_boxes(*images[which].shape[:2], count, seed=which)
    assert_same_as_predictor(tiny_sam2, images[which], embedding, predictors[which], boxes, multimask)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["hiera_tiny", "hiera_base_plus"])
def test_official_size_masks_equal_predictor(variant, small_photo):
    """At the released sizes (random weights: compute does not depend on the values).

    hiera_small sits between these two; hiera_large (~4x base_plus's compute) is left out to keep
    the suite short on a 2-core CPU. The code path is the same for all four.
    """
    from recognize_sam2.model import build_sam2

    sam = build_sam2(variant, "2.1", seed=0)
    image = load_image(small_photo)
    (embedding,) = BoxSegmenter(sam).embed([image])
    predictor = official(sam, image)
    assert torch.equal(embedding.image_embed, predictor._features["image_embed"])
    boxes = random_boxes(*image.shape[:2], 3, seed=7)
    for multimask in (True, False):
        assert_same_as_predictor(sam, image, embedding, predictor, boxes, multimask)


def test_no_boxes(tiny_sam2, embeddings):
    result = BoxSegmenter(tiny_sam2).segment(embeddings[0], np.zeros((0, 4)))
    assert result.masks.shape == (0, 640, 428) and result.scores.shape == (0,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_loop_over_boxes_never_waits_for_the_gpu(tiny_sam2, images):
    """No host sync per box (the predictor reads each box's masks with `.cpu()`): the waits torch reports
    do not grow with the boxes, and on the GPU the masks equal the predictor's there."""
    import copy
    import warnings

    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # exact, as a stage that loads on CUDA leaves it
    try:
        sam = copy.deepcopy(tiny_sam2).to("cuda")
        segmenter = BoxSegmenter(sam)
        embedding = segmenter.embed(images[:1])[0]
        boxes = random_boxes(*images[0].shape[:2], 6, seed=4)
        segmenter.segment(embedding, boxes[:1])  # warm-up

        def waits(count):
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    segmenter.segment(embedding, boxes[:count])
            finally:
                torch.cuda.set_sync_debug_mode("default")
            return sum("synchroniz" in str(w.message) for w in caught)

        assert waits(6) == waits(1) <= 4
        assert_same_as_predictor(sam, images[0], embedding, official(sam, images[0]), boxes, True)
    finally:
        torch.backends.cudnn.allow_tf32 = saved
