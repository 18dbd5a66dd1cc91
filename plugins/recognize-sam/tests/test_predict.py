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


@pytest.mark.parametrize("which, count", [(0, 11), (1, 3)], ids=["small", "big"])
def test_the_gpus_way_of_upsampling_gives_the_cpus_masks(tiny_sam, images, embeddings, which, count):
    """On CUDA a decoder call's kept masks are upsampled together and copied to the host without a wait
    per box; run that way on the CPU, it gives the per-box way's masks and scores bit for bit
    (bilinear upsampling is per mask), also for a partial last chunk (11 = 8 + 3)."""
    image, embedding = images[which], embeddings[which]
    boxes = random_boxes(*image.shape[:2], count, seed=7 + which)
    per_box = BoxSegmenter(tiny_sam).segment(embedding, boxes)
    together = BoxSegmenter(tiny_sam, upsample_together=True).segment(embedding, boxes)
    assert together.masks.shape == per_box.masks.shape == (count, *image.shape[:2])
    assert together.masks.dtype == bool and together.scores.dtype == np.float32
    np.testing.assert_array_equal(together.masks, per_box.masks)
    np.testing.assert_array_equal(together.scores, per_box.scores)
    assert per_box.masks.any() and not per_box.masks.all()


@pytest.fixture
def exact_cuda():
    """cuDNN without TF32, as an exact stage that loads on CUDA leaves it (`exact_float32_on_cuda`)."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_loop_over_boxes_never_waits_for_the_gpu(tiny_sam, images, exact_cuda):
    """Issue 11's "no host syncs inside the per-box loop": the waits torch reports (sync debug mode)
    do not grow with the boxes (1 box against 11: two decoder calls), and the masks are the CPU's but
    at the threshold."""
    import warnings

    sam = copy.deepcopy(tiny_sam).to("cuda")
    segmenter = BoxSegmenter(sam)
    embedding = segmenter.embed(images[:1])[0]
    boxes = random_boxes(*images[0].shape[:2], 11, seed=5)
    segmenter.segment(embedding, boxes[:1])  # warm-up: kernels load, the allocators fill

    def waits(count):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = segmenter.segment(embedding, boxes[:count])
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught), result

    one, _ = waits(1)
    eleven, on_gpu = waits(11)
    assert eleven == one <= 3
    on_cpu = BoxSegmenter(tiny_sam).segment(BoxSegmenter(tiny_sam).embed(images[:1])[0], boxes)
    np.testing.assert_allclose(on_gpu.scores, on_cpu.scores, rtol=0, atol=1e-3)
    assert (on_gpu.masks != on_cpu.masks).mean() < 1e-3


def test_no_boxes(tiny_sam, embeddings):
    result = BoxSegmenter(tiny_sam).segment(embeddings[0], np.zeros((0, 4)))
    assert result.masks.shape == (0, 640, 428) and result.scores.shape == (0,)
