"""Confirming regions on their crops with a scoring function."""

from __future__ import annotations

import numpy as np
import pytest

from recognize.data_engine import confirm_regions, tags_without_confirmed_region
from recognize.data_engine.reasons import (
    REASON_ALL_REJECTED,
    REASON_NO_CONFIRMED_REGION,
    REASON_NOT_CONFIRMED,
    REASON_OUTSIDE,
    REASON_UNKNOWN_TAG,
)
from recognize.frame import Region

# -- confirmation ----------------------------------------------------------------------------


def colour_scorer(calls: list[int] | None = None):
    """Score of tag `red`/`green`/`blue` on a crop: that channel's share of the mean colour."""
    channels = {"red": 0, "green": 1, "blue": 2}

    def score(crops, tags):
        if calls is not None:
            calls.append(len(crops))
        values, thresholds = [], []
        for crop, tag in zip(crops, tags):
            mean = crop.reshape(-1, 3).mean(axis=0)
            values.append(mean[channels[tag]] / max(mean.sum(), 1e-9) if tag in channels else np.nan)
            thresholds.append(0.5)
        return np.array(values), np.array(thresholds)

    return score


def two_patch_image() -> np.ndarray:
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :40] = (200, 20, 20)  # red left half
    image[:, 40:] = (20, 20, 200)  # blue right half
    return image


def test_confirm_keeps_regions_whose_crop_shows_their_tag():
    image = two_patch_image()
    regions = [
        Region(box=(5, 5, 35, 35), tag="red"),  # red patch: confirmed
        Region(box=(45, 5, 75, 35), tag="red"),  # blue patch labelled red: rejected
        Region(box=(45, 5, 75, 35), tag="blue"),  # confirmed
        Region(box=(200, 5, 210, 35), tag="blue"),  # off the image
        Region(box=(5, 5, 35, 35), tag="unicorn"),  # the scorer cannot judge it
    ]
    calls: list[int] = []
    checks = confirm_regions(image, regions, colour_scorer(calls), padding=0.0, batch_size=2)
    assert [c.keep for c in checks] == [True, False, True, False, True]
    assert [c.index for c in checks] == [0, 1, 2, 3, 4]
    assert checks[1].reason == REASON_NOT_CONFIRMED and checks[1].score < 0.5 and checks[1].threshold == 0.5
    assert checks[0].score == pytest.approx(200 / 240)
    assert checks[3].reason == REASON_OUTSIDE and checks[3].score is None
    assert calls == [2, 2]  # four scorable crops in batches of two
    dropped = confirm_regions(image, regions[4:], colour_scorer(), unknown="drop")
    assert not dropped[0].keep and dropped[0].reason == REASON_UNKNOWN_TAG


def test_confirm_padding_changes_what_the_tagger_sees():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:] = (20, 20, 200)
    image[15:25, 30:50] = (200, 20, 20)  # a small red patch in a blue field
    # the box is the red patch; 100% padding brings in enough blue around it to flip the verdict
    region = Region(box=(30, 15, 50, 25), tag="red")
    assert confirm_regions(image, [region], colour_scorer(), padding=0.0)[0].keep
    assert not confirm_regions(image, [region], colour_scorer(), padding=1.0)[0].keep


def test_confirm_threshold_is_strict_like_a_tagger():
    def exactly_half(crops, tags):
        return np.full(len(crops), 0.5), np.full(len(crops), 0.5)

    check = confirm_regions(two_patch_image(), [Region(box=(0, 0, 10, 10), tag="x")], exactly_half)[0]
    assert not check.keep


def test_tags_without_confirmed_region_policies():
    image = two_patch_image()
    regions = [Region(box=(45, 5, 75, 35), tag="red"), Region(box=(45, 5, 75, 35), tag="blue")]
    checks = confirm_regions(image, regions, colour_scorer())
    names = ["red", "blue", "sky"]
    assert tags_without_confirmed_region(names, checks, "none") == {}
    assert tags_without_confirmed_region(names, checks, "rejected") == {"red": REASON_ALL_REJECTED}
    assert tags_without_confirmed_region(names, checks, "unconfirmed") == {
        "red": REASON_ALL_REJECTED,
        "sky": REASON_NO_CONFIRMED_REGION,
    }


