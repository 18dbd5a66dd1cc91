"""The data engine's region logic on arrays: crops, confirmation, planted outliers, merging, captions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recognize.errors import RecognizeError
from recognize.frame import Region, Tag
from recognize.regions import (
    REASON_ALL_REJECTED,
    REASON_NO_CONFIRMED_REGION,
    REASON_NOT_CONFIRMED,
    REASON_OUTSIDE,
    REASON_UNKNOWN_TAG,
    CaptionParser,
    CaptionsFile,
    cluster_distances,
    confirm_regions,
    crop_box,
    crop_region,
    find_outliers,
    merge_tags,
    parse_caption_tags,
    plural_forms,
    read_sidecar,
    tags_without_confirmed_region,
    vocabulary_index,
)

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


# -- outliers --------------------------------------------------------------------------------


def planted(n_inliers: int = 20, seed: int = 0, dim: int = 16) -> tuple[np.ndarray, list[int]]:
    """`n_inliers` embeddings near one direction plus two far away; returns them and the planted indices."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=dim)
    inliers = centre + 0.05 * rng.normal(size=(n_inliers, dim))
    outliers = np.stack([-centre + 0.05 * rng.normal(size=dim), rng.normal(size=dim) * 3])
    embeddings = np.concatenate([inliers, outliers])
    order = rng.permutation(len(embeddings))  # planted ones somewhere in the middle
    where = [int(np.flatnonzero(order == i)[0]) for i in (n_inliers, n_inliers + 1)]
    return embeddings[order], sorted(where)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_planted_outliers_are_exactly_the_ones_dropped(k):
    embeddings, planted_at = planted()
    result = find_outliers({"dog": embeddings}, k=k, drop_fraction=0.1, seed=0)["dog"]
    assert len(embeddings) == 22
    assert result.dropped == planted_at  # floor(10% of 22) = 2, and they are the planted two
    assert sorted(result.kept + result.dropped) == list(range(22))
    far = min(result.distances[i] for i in planted_at)
    near = max(result.distances[i] for i in result.kept)
    assert far > 3 * near


def test_outliers_per_tag_and_deterministic():
    dogs, dog_planted = planted(seed=1)
    cats, cat_planted = planted(n_inliers=38, seed=2)
    first = find_outliers({"dog": dogs, "cat": cats}, k=3, seed=7)
    second = find_outliers({"cat": cats, "dog": dogs}, k=3, seed=7)
    assert first["dog"].dropped == dog_planted
    assert len(first["cat"].dropped) == 4  # floor(10% of 40): the two planted and the two farthest inliers
    assert set(cat_planted) <= set(first["cat"].dropped)
    for tag in ("dog", "cat"):
        np.testing.assert_array_equal(first[tag].distances, second[tag].distances)
        assert first[tag].dropped == second[tag].dropped


def test_fewer_crops_than_k_and_tiny_tags():
    result = find_outliers({"a": np.eye(3), "b": np.ones((1, 4)), "c": np.zeros((0, 4)),
                            "same": np.ones((6, 4))}, k=5, drop_fraction=0.2)
    assert result["a"].clusters == 3 and result["a"].dropped == []  # floor(0.6) = 0
    assert result["b"].clusters == 1 and result["b"].distances.tolist() == [0.0]
    assert result["c"].clusters == 0 and result["c"].dropped == []
    assert result["same"].clusters == 1  # six identical crops: one distinct point, no KMeans warning
    assert len(result["same"].dropped) == 1  # floor(1.2); all tie at 0, the first index goes
    assert result["same"].dropped == [0]


def test_small_clusters_are_measured_from_the_large_ones():
    embeddings, planted_at = planted()
    distances, labels, used = cluster_distances(embeddings, k=3, min_cluster_fraction=0.1)
    assert used == 3
    # K-Means gives the two far points clusters of their own; they still get large distances
    assert all(distances[i] > 1.0 for i in planted_at)
    naive, _, _ = cluster_distances(embeddings, k=3, min_cluster_fraction=0.0)
    assert all(naive[i] < 1e-9 for i in planted_at)


def test_drop_fraction_is_checked():
    with pytest.raises(ValueError):
        find_outliers({"a": np.eye(3)}, drop_fraction=1.0)


# -- merging and captions --------------------------------------------------------------------


def test_merge_tags_is_a_case_insensitive_union():
    predicted = [Tag(name="dog", score=0.9, index=3, source="ram"), Tag(name="grass", score=0.8, source="ram")]
    merged, added = merge_tags(predicted, ["Dog", " red   ball ", "frisbee", "", "frisbee"], "merge_tags",
                               vocabulary=["cat", "Frisbee", "dog"])
    assert [t.name for t in merged] == ["dog", "grass", "red ball", "Frisbee"]
    assert added == ["red ball", "Frisbee"]
    assert merged[0].score == 0.9  # predicted tags are untouched
    assert merged[3].index == 1 and merged[3].source == "merge_tags" and merged[2].index is None
    # a prebuilt index (one per run, not per image) merges the same
    again = merge_tags(predicted, ["Dog", " red   ball ", "frisbee", "", "frisbee"], "merge_tags",
                       vocabulary=vocabulary_index(["cat", "Frisbee", "dog"]))
    assert again == (merged, added)


VOCAB = ["dog", "hot dog", "hot", "man", "person", "bus", "berry", "t-shirt", "glass", "glasses", "knife",
         "ice cream", "cream", "sofa", "tomato", "box"]


def test_parse_caption_tags_longest_match_first_and_plurals():
    caption = "Two men eating HOT DOGS and ice-cream near the buses; berries, knives, glasses, boxes"
    assert parse_caption_tags(caption, VOCAB) == [
        "man", "hot dog", "ice cream", "bus", "berry", "knife", "glasses", "box"
    ]


def test_parse_caption_tags_more_cases():
    parser = CaptionParser(VOCAB)
    assert parser.parse("people in t shirts, a T-Shirt, tomatoes on a sofa") == ["person", "t-shirt", "tomato", "sofa"]
    assert parser.parse("a dog, another dog") == ["dog"]
    assert parser.parse("hotel doge creamy") == []  # whole words only
    assert parser.parse("") == []
    assert parser.parse("a hot day") == ["hot"]


def test_plural_forms():
    assert "buses" in plural_forms("bus")
    assert "berries" in plural_forms("berry") and "toys" in plural_forms("toy")
    assert "leaves" in plural_forms("leaf") and "knives" in plural_forms("knife")
    assert {"women"} <= plural_forms("woman") and "firemen" in plural_forms("fireman")


def test_read_sidecar_txt_and_json(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"")
    assert read_sidecar(image) is None
    (tmp_path / "a.txt").write_text("dog, red ball\ngrass\n\n", encoding="utf-8")
    given = read_sidecar(image)
    assert given.tags == ["dog", "red ball", "grass"] and given.origin.endswith("a.txt")
    (tmp_path / "a.json").write_text(json.dumps({"tags": "cat, sky", "caption": "a cat under the sky"}))
    given = read_sidecar(image)
    assert given.tags == ["dog", "red ball", "grass", "cat", "sky"]
    assert given.captions == ["a cat under the sky"]
    (tmp_path / "a.txt").unlink()
    (tmp_path / "a.json").write_text(json.dumps(["tree", "house"]))
    assert read_sidecar(image).tags == ["tree", "house"]
    (tmp_path / "a.json").write_text("{broken")
    with pytest.raises(RecognizeError, match="a.json: not valid JSON"):
        read_sidecar(image)
    (tmp_path / "a.json").write_text(json.dumps({"tags": [1, 2]}))
    with pytest.raises(RecognizeError, match="tags must be"):
        read_sidecar(image)


def test_captions_file_matches_by_path_and_name(tmp_path):
    (tmp_path / "img" / "sub").mkdir(parents=True)
    lines = [
        {"image": "img/a.jpg", "caption": "a dog"},
        {"image": "img/a.jpg", "caption": "a dog on grass", "tags": ["ball"]},
        {"file_name": "b.png", "captions": ["two cats", "cats"]},
        {"image": str(tmp_path / "img" / "sub" / "c.jpg"), "text": "a bus"},
    ]
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    captions = CaptionsFile(path)
    assert len(captions) == 3
    a = captions.find(str(tmp_path / "img" / "a.jpg"), "a")
    assert a.captions == ["a dog", "a dog on grass"] and a.tags == ["ball"]
    assert captions.find(str(tmp_path / "elsewhere" / "b.png"), "b").captions == ["two cats", "cats"]
    assert captions.find(str(tmp_path / "img" / "sub" / "c.jpg"), "sub/c").captions == ["a bus"]
    assert captions.find(str(tmp_path / "img" / "d.jpg"), "d") is None


def test_captions_file_errors_name_the_line(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "x"}\nnot json\n', encoding="utf-8")
    with pytest.raises(RecognizeError, match=r"captions.jsonl:2: not a JSON object"):
        CaptionsFile(path)
    path.write_text('{"caption": "x"}\n', encoding="utf-8")
    with pytest.raises(RecognizeError, match=r"captions.jsonl:1: no image name"):
        CaptionsFile(path)
    with pytest.raises(RecognizeError, match="no such captions file"):
        CaptionsFile(tmp_path / "missing.jsonl")
