"""Cropping regions out of frames."""

from __future__ import annotations

import numpy as np
import pytest

from recognize.data_engine import crop_box, crop_region

# -- cropping --------------------------------------------------------------------------------


def test_crop_region_takes_the_box_pixels():
    image = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    crop = crop_region(image, (2, 3, 7, 8))
    assert crop.shape == (5, 5, 3)
    np.testing.assert_array_equal(crop, image[3:8, 2:7])
    crop[:] = 0  # a copy: the frame's image is not touched
    assert image[3:8, 2:7].any()


def test_crop_padding_grows_each_side_and_clips_to_the_image():
    # box 10 wide, 4 high; 20% padding: 2 px left/right, 0.8 px up/down (rounded outward)
    assert crop_box((50, 100), (20, 10, 30, 14), padding=0.2) == (18, 9, 32, 15)
    assert crop_box((50, 100), (0, 0, 100, 50), padding=0.5) == (0, 0, 100, 50)
    # fractional box edges round outward, never cutting into the box
    assert crop_box((50, 100), (20.4, 10.6, 29.2, 13.9)) == (20, 10, 30, 14)


def test_crop_of_a_thin_or_flipped_box_is_still_one_pixel():
    assert crop_box((50, 100), (40, 10, 40, 30)) == (40, 10, 41, 30)
    assert crop_box((50, 100), (99.5, 49.5, 100, 50)) == (99, 49, 100, 50)
    assert crop_box((50, 100), (30, 14, 20, 10)) == (20, 10, 30, 14)


@pytest.mark.parametrize("box", [(100, 0, 120, 10), (-20, -20, 0, 0), (0, 60, 10, 70), (0, 0, float("nan"), 5)])
def test_crop_outside_the_image_is_refused(box):
    with pytest.raises(ValueError):
        crop_box((50, 100), box)


