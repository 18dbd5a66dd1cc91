"""`owlv2_pixels` against transformers' `Owlv2ImageProcessor`, whose values it must give (the stage's input)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recognize_owlv2.pixels import axis_weights, owlv2_pixels


def processor_pixels(images: list[np.ndarray], size: int) -> torch.Tensor:
    from transformers import Owlv2ImageProcessor

    return Owlv2ImageProcessor(size={"height": size, "width": size})(images=images, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("shape", [(37, 90), (90, 37), (128, 128), (300, 200), (200, 640), (129, 127)])
def test_pixels_equal_the_processor(shape):
    """Down- and upsampling, portrait and landscape padding, a square at the model's size (no resampling)."""
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours, theirs = owlv2_pixels([image], 128), processor_pixels([image], 128)
    assert ours.shape == theirs.shape == (1, 3, 128, 128) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(200, 352), (416, 300)])
def test_the_blur_is_as_wide_as_the_processors_where_3_sigma_is_whole_in_float32(shape):
    """352 -> 96 (as 4160 -> 960): 3 sigma is 4 in float32 but just above it in float64, which made the kernel
    two taps wider than the processor's (values off by ~1.4e-3)."""
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    torch.testing.assert_close(owlv2_pixels([image], 96), processor_pixels([image], 96), rtol=0, atol=1e-5)


def test_a_batch_of_different_sizes_is_each_alone():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(50, 70, 3), (300, 120, 3)]]
    together = owlv2_pixels(images, 64)
    for i, image in enumerate(images):
        assert torch.equal(together[i], owlv2_pixels([image], 64)[0])


def test_photo_pixels_equal_the_processor(photos):
    from recognize.images import load_image

    image = load_image(photos["demo4"])
    torch.testing.assert_close(owlv2_pixels([image], 128), processor_pixels([image], 128), rtol=0, atol=1e-5)


def test_axis_weights_sample_where_torch_bilinear_does():
    """Without blur (upsampling), one axis's weights are torch's bilinear resize; rows sum to 1 less the padding."""
    line = torch.rand(1, 1, 50, dtype=torch.float64)
    expected = F.interpolate(line, size=80, mode="linear", align_corners=False)[0, 0]
    got = torch.sparse.mm(axis_weights(50, 50, 80), line[0, 0, :, None])[:, 0]
    torch.testing.assert_close(got, expected)
    padded = axis_weights(30, 50, 80).to_dense().sum(1)
    assert padded.max() <= 1 + 1e-12 and padded[-1] == 0  # the last samples lie in the zero padding
