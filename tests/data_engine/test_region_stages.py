"""The data-engine stages on synthetic images with planted outcomes, on the reference photos, with a
pixel-based fake tagger and with the tiny RAM fixture."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recognize import Frame, Region, Tag, plugins
from recognize.data_engine import crop_region, find_outliers
from recognize.data_engine.confirm_stage import RegionConfirm
from recognize.data_engine.merge_tags_stage import MergeTags
from recognize.data_engine.outliers_stage import RegionOutliers
from recognize.data_engine.reasons import (
    REASON_ALL_REJECTED,
    REASON_NO_CONFIRMED_REGION,
    REASON_NOT_CONFIRMED,
    REASON_OUTLIER,
    REASON_OUTSIDE,
)
from recognize.errors import RecognizeError
from recognize.pipeline import Pipeline
from recognize.stage import shared_models

REPO = Path(__file__).resolve().parents[2]
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference"))
RAM_FIXTURE = REFERENCE / "fixtures" / "ram"


@pytest.fixture
def colour_tagger():
    """Register the fake colour tagger (tests/support/colour_tagger.py) and the core test stages."""
    import colour_tagger

    with colour_tagger.registered():
        yield colour_tagger


@pytest.fixture(scope="module")
def photo_images() -> list[tuple[Path, np.ndarray]]:
    """The reference photos, decoded once for the module (they are up to 13 MP)."""
    from recognize.images import load_image

    paths = sorted((REFERENCE / "data" / "images").rglob("*.jpg"))
    if not paths:
        pytest.skip(f"reference photos not found under {REFERENCE}")
    return [(path, load_image(path)) for path in paths]


def photo_frames(photo_images, count: int | None = None) -> list[Frame]:
    """Frames of the photos; with `count`, the smallest `count` of them (cheaper crops)."""
    chosen = photo_images if count is None else sorted(photo_images, key=lambda item: item[1].size)[:count]
    return [Frame.from_array(image, source=str(path), name=path.stem) for path, image in chosen]


def red_blue_frame(name: str = "rb") -> Frame:
    image = np.zeros((60, 120, 3), np.uint8)
    image[:, :60] = (210, 30, 20)
    image[:, 60:] = (20, 30, 210)
    return Frame.from_array(image, source=f"<{name}>", name=name)


# -- region_confirm ---------------------------------------------------------------------------


def test_confirm_keeps_confirmed_regions_and_records_drops(colour_tagger):
    frame = red_blue_frame()
    frame.tags = [Tag(name="red", score=0.5), Tag(name="blue", score=0.5), Tag(name="green"), Tag(name="sky")]
    frame.regions = [
        Region(box=(5, 5, 50, 55), tag="red"),  # on red: kept
        Region(box=(70, 5, 115, 55), tag="red"),  # on blue: dropped
        Region(box=(70, 5, 115, 55), tag="blue"),  # kept
        Region(box=(5, 5, 50, 55), tag="green"),  # dropped, and green loses its only region
        Region(box=(300, 5, 310, 55), tag="blue"),  # off the image
        Region(box=(5, 5, 50, 55), tag="sky"),  # not in the tagger's vocabulary: kept (unknown_tags=keep)
    ]
    stage = RegionConfirm(tagger="colour_tagger", padding=0.0, drop_tags="rejected")
    [out] = stage([frame])
    assert [(r.tag, r.box[0]) for r in out.regions] == [("red", 5), ("blue", 70), ("sky", 5)]
    assert out.regions[0].meta["confirm_score"] == pytest.approx(210 / 260, abs=1e-6)
    assert out.tag_names == ["red", "blue", "sky"]
    drops = [(d.item, d.tag, d.stage, d.reason) for d in out.dropped]
    assert drops == [
        ("region", "red", "region_confirm", REASON_NOT_CONFIRMED),
        ("region", "green", "region_confirm", REASON_NOT_CONFIRMED),
        ("region", "blue", "region_confirm", REASON_OUTSIDE),
        ("tag", "green", "region_confirm", REASON_ALL_REJECTED),
    ]
    assert out.dropped[0].value == pytest.approx(20 / 260, abs=1e-6) and out.dropped[0].box == (70, 5, 115, 55)
    assert out.dropped[2].value is None
    assert out.dropped[3].value == pytest.approx(30 / 260, abs=1e-6)  # its best crop score


def test_confirm_threshold_unknown_tags_and_unconfirmed_policy(colour_tagger):
    frame = red_blue_frame()
    frame.tags = [Tag(name="red"), Tag(name="sky"), Tag(name="blue")]
    frame.regions = [Region(box=(5, 5, 50, 55), tag="red"), Region(box=(5, 5, 50, 55), tag="sky")]
    # a global threshold of 0.9 rejects the red crop (0.81); sky is unknown and dropped; blue never had a region
    [out] = RegionConfirm(tagger="colour_tagger", padding=0.0, threshold=0.9, unknown_tags="drop",
                          drop_tags="unconfirmed")([frame])
    assert out.regions == [] and out.tags == []
    assert {(d.item, d.tag, d.reason) for d in out.dropped if d.item == "tag"} == {
        ("tag", "red", REASON_ALL_REJECTED), ("tag", "sky", REASON_ALL_REJECTED),
        ("tag", "blue", REASON_NO_CONFIRMED_REGION)}


def test_confirm_shares_the_tagging_stage_model_and_batches_crops(colour_tagger):
    tagger = plugins.get_stage("colour_tagger")({"threshold": 0.4})
    confirm = RegionConfirm(tagger="colour_tagger", tagger_with={"threshold": 0.4}, batch_size=4)
    center = plugins.get_stage("center_box")()
    frames = [red_blue_frame(f"f{i}") for i in range(3)]
    Pipeline([tagger, center, confirm], batch_size=3).process(frames)
    assert confirm.tagger is not tagger and confirm.tagger.model is tagger.model
    assert len(colour_tagger.BUILDS) == 1  # one model in memory
    # 2 tags x 3 frames = 6 crops (centre boxes) in batches of 4, across frames
    assert confirm.tagger.scored_batches == [4, 2]
    # the centre box of a red|blue image is half red, half blue: each tag sits at ~0.46 > 0.4
    assert all(len(f.regions) == 2 for f in frames)
    # an instance can be passed directly in Python
    direct = RegionConfirm(tagger=tagger)
    assert direct.tagger is tagger and direct.params.tagger == "colour_tagger"


def test_confirm_decodes_only_frames_with_regions(colour_tagger, tmp_path):
    path = tmp_path / "red.png"
    Image.fromarray(np.full((20, 20, 3), (200, 10, 10), np.uint8)).save(path)
    bare = Frame(source=str(path), name="bare", width=20, height=20, tags=[Tag(name="red")])
    located = Frame(source=str(path), name="located", width=20, height=20, tags=[Tag(name="red")],
                    regions=[Region(box=(0, 0, 10, 10), tag="red")])
    stage = RegionConfirm(tagger="colour_tagger", drop_tags="unconfirmed")
    stage([bare, located])
    assert bare._image is None and located._image is not None
    assert stage.tagger.scored_batches == [1]
    # the tag policy still reaches a frame with no region
    assert bare.tags == [] and [(d.tag, d.reason) for d in bare.dropped] == [("red", REASON_NO_CONFIRMED_REGION)]
    assert located.tag_names == ["red"] and len(located.regions) == 1


def test_confirm_pipeline_device_reaches_the_inner_tagger(colour_tagger):
    confirm = RegionConfirm(tagger="colour_tagger", batch_size=5)
    Pipeline([confirm], device="cpu", batch_size=3)
    assert confirm.tagger.params.device == "cpu" and confirm.tagger.params.batch_size == 5
    pinned = RegionConfirm(tagger="colour_tagger", tagger_with={"device": "cuda"})
    Pipeline([pinned], device="cpu")
    assert pinned.tagger.params.device == "cuda"


def test_confirm_needs_a_tagger(colour_tagger):
    stage = RegionConfirm(tagger="center_box")
    with pytest.raises(RecognizeError, match="not a tagger"):
        stage([red_blue_frame()])


@pytest.mark.slow
def test_confirm_on_real_photos_matches_the_tagger_on_each_crop(colour_tagger, photo_images):
    assert len(photo_images) >= 3
    frames = photo_frames(photo_images)
    expected = []
    for frame in frames:
        h, w = frame.image.shape[:2]
        boxes = [(w / 2, 0, w, h / 2), (w / 3, h / 3, 2 * w / 3, 2 * h / 3)]
        for box in boxes:
            for tag in ("red", "green", "blue"):
                frame.regions.append(Region(box=box, tag=tag))
        frame.tags = [Tag(name=t) for t in ("red", "green", "blue")]
    # natural colours: each channel holds about a third of the light, so confirm above 0.34
    confirm = RegionConfirm(tagger="colour_tagger", tagger_with={"threshold": 0.34}, padding=0.25, batch_size=5)
    tagger = confirm.tagger
    tagger.ensure_loaded()
    for frame in frames:
        crops = [crop_region(frame.image, r.box, 0.25) for r in frame.regions]
        scores = tagger.score_images(crops)
        expected.append([float(scores[i, ["red", "green", "blue"].index(r.tag)]) for i, r in enumerate(frame.regions)])
    before = [list(f.regions) for f in frames]
    Pipeline([confirm], batch_size=2).process(frames)
    kept_total = dropped_total = 0
    for frame, regions, scores in zip(frames, before, expected):
        kept = [(r, s) for r, s in zip(regions, scores) if s > 0.34]
        gone = [(r, s) for r, s in zip(regions, scores) if s <= 0.34]
        assert [r.box + (r.tag,) for r in frame.regions] == [r.box + (r.tag,) for r, _ in kept]
        drops = [d for d in frame.dropped if d.item == "region"]
        assert [(d.box, d.tag) for d in drops] == [(r.box, r.tag) for r, _ in gone]
        assert [d.value for d in drops] == pytest.approx([s for _, s in gone])
        kept_total += len(kept)
        dropped_total += len(gone)
    assert kept_total >= 3 and dropped_total >= 3, (kept_total, dropped_total)  # both outcomes exercised


# -- region_outliers --------------------------------------------------------------------------


def outlier_frames() -> tuple[list[Frame], set[tuple[str, int]]]:
    """11 frames, each with two `red` regions on red patches (shades vary) and a `blue` one; two of
    the `red` regions are planted on a green and on a blue patch. Returns the frames and the planted
    (frame name, region index) pairs."""
    rng = np.random.default_rng(3)
    frames, planted = [], set()
    for i in range(11):
        image = np.zeros((40, 90, 3), np.uint8)
        for x in (0, 30):
            image[:, x : x + 30] = (rng.integers(180, 230), rng.integers(10, 40), rng.integers(10, 40))
        image[:, 60:] = (20, 20, 200)
        frame = Frame.from_array(image, source=f"<img{i}>", name=f"img{i}", tags=[Tag(name="red"), Tag(name="blue")])
        frame.regions = [Region(box=(0, 0, 30, 40), tag="red"), Region(box=(30, 0, 60, 40), tag="red"),
                         Region(box=(60, 0, 90, 40), tag="blue")]
        frames.append(frame)
    frames[4].image[:, 30:60] = (20, 200, 30)  # planted: a `red` region on green
    planted.add(("img4", 1))
    frames[9].image[:, 0:30] = (30, 20, 210)  # planted: a `red` region on blue
    planted.add(("img9", 0))
    return frames, planted


@pytest.mark.parametrize("k", [1, 3])
def test_outliers_drop_exactly_the_planted_regions_across_the_dataset(colour_tagger, k):
    frames, planted = outlier_frames()
    boxes = {(f.name, i): r.box for f in frames for i, r in enumerate(f.regions)}
    stage = RegionOutliers(tagger="colour_tagger", k=k, padding=0.0, batch_size=4)
    out = Pipeline([stage], batch_size=3).process(frames)
    drops = [(f.name, d) for f in out for d in f.dropped]
    # 22 red crops: floor(10%) = 2, exactly the planted ones; 11 blue crops: 1 dropped, the farthest
    red = [(name, d) for name, d in drops if d.tag == "red"]
    assert {(name, d.box) for name, d in red} == {(name, boxes[(name, i)]) for name, i in planted}
    assert all(d.stage == "region_outliers" and d.reason == REASON_OUTLIER and d.item == "region" for _, d in drops)
    assert len([d for _, d in drops if d.tag == "blue"]) == 1
    kept = [r for f in out for r in f.regions if r.tag == "red"]
    assert len(kept) == 20
    assert min(d.value for _, d in red) > max(r.meta["outlier_distance"] for r in kept)
    assert all(f.tag_names == ["red", "blue"] for f in out)  # drop_tags=none


def test_outliers_drop_tags_and_outside_boxes(colour_tagger):
    frames, _ = outlier_frames()
    frames[9].image[:, 0:30] = (200, 20, 20)  # only one planted outlier here: the green patch of img4
    frames[4].regions = frames[4].regions[1:]  # img4 keeps only its planted `red` region
    frames[0].regions.append(Region(box=(500, 0, 600, 10), tag="blue"))
    out = RegionOutliers(tagger="colour_tagger", padding=0.0, drop_fraction=0.05, drop_tags="rejected")(frames)
    # 21 red crops -> 1 dropped: the farthest, the green one; img4 then has no red region left
    assert out[4].tag_names == ["blue"]
    assert ("tag", "red", REASON_ALL_REJECTED) in [(d.item, d.tag, d.reason) for d in out[4].dropped]
    assert [(d.reason, d.value) for d in out[0].dropped] == [(REASON_OUTSIDE, None)]
    assert sum(len(f.dropped) for f in out) == 3  # the outside box, the green crop and img4's red tag


def test_outliers_release_images_they_decoded(colour_tagger, tmp_path):
    frames = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 20, 3), (200, 10 * i, 10), np.uint8)).save(path)
        frames.append(Frame(source=str(path), name=str(i), width=20, height=20,
                            regions=[Region(box=(0, 0, 10, 10), tag="red")]))
    RegionOutliers(tagger="colour_tagger")(frames)
    assert all(f._image is None for f in frames)


@pytest.mark.parametrize("images", ["arrays", "files"])
def test_confirm_then_outliers_encode_each_crop_once_with_the_same_outputs(colour_tagger, images, tmp_path,
                                                                          monkeypatch):
    """region_confirm keeps the embeddings of the crops it encoded; region_outliers takes them instead
    of encoding the same crops again (frames from files are read back from the run's spool and
    decoded again: the same pixels, the same crops)."""
    from collections import Counter

    from recognize.data_engine.crop_embeddings import crop_embeddings

    def run() -> tuple[list[str], list[str]]:
        frames, _ = outlier_frames()
        if images == "files":
            for frame in frames:
                path = tmp_path / f"{frame.name}.png"
                Image.fromarray(frame.image).save(path)
                frame.source, frame._image = str(path), None
        colour_tagger.ENCODED.clear()
        stages = [RegionConfirm(tagger="colour_tagger", threshold=0.5),
                  RegionOutliers(tagger="colour_tagger", k=2, drop_fraction=0.2)]
        out = Pipeline(stages, batch_size=3).process(frames)
        return [f.to_json() for f in out], list(colour_tagger.ENCODED)

    shared, encoded = run()
    assert len(crop_embeddings) == 0  # nothing left behind once outliers has run
    monkeypatch.setattr(crop_embeddings, "max_bytes", 0)  # nothing kept: each stage encodes its own crops
    separate, encoded_separately = run()

    assert shared == separate
    assert Counter(encoded).most_common(1)[0][1] == 1  # every crop encoded once
    assert len(encoded_separately) > len(encoded) == 33  # 11 frames x 3 regions
    assert set(encoded) == set(encoded_separately)
    assert any('"region_confirm"' in frame for frame in shared)  # confirm rejected some regions
    assert any('"region_outliers"' in frame for frame in shared)  # and outliers dropped some


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.mark.slow
def test_outliers_with_clip_image_features(colour_tagger, tmp_path):
    import open_clip
    import torch

    config = tmp_path / "recognize-test-tinyclip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    weights = tmp_path / "tinyclip.pt"
    torch.save(open_clip.create_model("recognize-test-tinyclip").state_dict(), weights)

    frames, planted = outlier_frames()
    boxes = {(f.name, i): r.box for f in frames for i, r in enumerate(f.regions)}
    stage = RegionOutliers(embedder="clip", clip_model="recognize-test-tinyclip", clip_checkpoint=str(weights),
                           padding=0.0, device="cpu")
    out = stage(frames)
    red = {(f.name, d.box) for f in out for d in f.dropped if d.tag == "red"}
    assert red == {(name, boxes[(name, i)]) for name, i in planted}
    assert stage._tagger is None  # the tagger is never built when CLIP embeds


def test_outliers_missing_clip_weights_is_one_line(colour_tagger, tmp_path):
    stage = RegionOutliers(embedder="clip", clip_model="ViT-B-16", clip_checkpoint=str(tmp_path / "none.pt"))
    with pytest.raises(RecognizeError, match="does not exist"):
        stage(outlier_frames()[0])


def test_outliers_on_real_photos_are_deterministic(colour_tagger, photo_images):
    def run() -> list[list[tuple]]:
        frames = photo_frames(photo_images)
        for frame in frames:
            h, w = frame.image.shape[:2]
            for j in range(4):
                frame.regions.append(Region(box=(j * w / 5, j * h / 5, (j + 2) * w / 5, (j + 2) * h / 5), tag="thing"))
        out = RegionOutliers(tagger="colour_tagger", k=2, drop_fraction=0.25, seed=1)(frames)
        return [[(d.box, d.value) for d in f.dropped] for f in out]

    first = run()
    assert sum(len(x) for x in first) == int(0.25 * 4 * len(photo_images))
    assert run() == first


# -- merge_tags -------------------------------------------------------------------------------


@pytest.fixture
def vocab_file(tmp_path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("dog\nhot dog\nman\nperson\nbus\nstreet\ncat\n", encoding="utf-8")
    return path


def test_merge_tags_from_sidecars_and_captions(tmp_path, vocab_file, photos):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "b.png")
    (folder / "a.txt").write_text("Dog, frisbee\n", encoding="utf-8")
    captions = tmp_path / "captions.jsonl"
    lines = [{"image": "imgs/b.png", "caption": "Two men selling hot dogs on the street"},
             {"image": photos[0].name, "caption": "a bus and a cat"}]
    captions.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    frames = [Frame(source=str(folder / "a.png"), name="a", tags=[Tag(name="dog", score=0.9, source="ram")]),
              Frame(source=str(folder / "b.png"), name="b", tags=[Tag(name="street", score=0.8, source="ram")]),
              Frame(source=str(photos[0]), name=photos[0].stem)]
    stage = MergeTags(captions=str(captions), vocabulary=str(vocab_file))
    a, b, photo = stage(frames)
    assert [(t.name, t.source) for t in a.tags] == [("dog", "ram"), ("frisbee", "merge_tags")]
    assert a.meta["merge_tags"]["added"] == ["frisbee"] and a.caption is None
    assert b.tag_names == ["street", "man", "hot dog"] and b.tags[1].index == 2
    assert b.caption == "Two men selling hot dogs on the street"
    assert photo.tag_names == ["bus", "cat"]  # a real photo found by file name in the JSONL
    only = MergeTags(captions=str(captions), vocabulary=str(vocab_file), only_vocabulary=True,
                     parse_captions=False)
    a2 = only([Frame(source=str(folder / "a.png"), name="a")])[0]
    assert a2.tag_names == ["dog"]  # frisbee is not in the vocabulary


def test_merge_tags_without_anything_given_needs_no_vocabulary(tmp_path, cache_home):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    frame = Frame(source=str(tmp_path / "a.png"), tags=[Tag(name="dog")], caption="a cat")
    [out] = MergeTags()([frame])  # nothing given; offline and no tag list cached: still fine
    assert out.tag_names == ["dog"] and "merge_tags" not in out.meta
    with pytest.raises(RecognizeError, match="ram_tag_list.txt"):
        MergeTags(parse_frame_caption=True)([frame])  # parsing needs the vocabulary: one-line error


def test_merge_tags_parses_the_frame_caption(vocab_file):
    frame = Frame.from_array(np.zeros((4, 4, 3), np.uint8), tags=[Tag(name="street")], caption="a man and his dogs")
    [out] = MergeTags(parse_frame_caption=True, vocabulary=str(vocab_file))([frame])
    assert out.tag_names == ["street", "man", "dog"]


# -- the real RAM tagger (tiny fixture) -------------------------------------------------------


@pytest.fixture
def ram_params() -> dict:
    if not (RAM_FIXTURE / "checkpoint.pth").is_file():
        pytest.skip(f"RAM fixture not found at {RAM_FIXTURE}")
    return {"config": str(RAM_FIXTURE / "config.json"), "checkpoint": str(RAM_FIXTURE / "checkpoint.pth"),
            "device": "cpu", "batch_size": 8}


@pytest.mark.slow
def test_confirm_with_the_tiny_ram_fixture(ram_params, photo_images):
    shared_models.clear()
    ram = plugins.get_stage("ram")(ram_params)
    confirm = RegionConfirm(tagger="ram", tagger_with=dict(ram_params), padding=0.1, drop_tags="rejected")
    frames = photo_frames(photo_images, 2)
    ram(frames)
    for frame in frames:  # regions for two predicted tags and one the model did not predict
        assert "dog" not in frame.tag_names
        h, w = frame.image.shape[:2]
        names = frame.tag_names[:2] + ["dog"]
        boxes = [(0, 0, w / 2, h / 2), (w / 4, h / 4, w, h), (0, h / 3, w / 2, h)]
        frame.regions = [Region(box=b, tag=t) for t, b in zip(names, boxes)]
    before = [(f.name, r.tag, r.box) for f in frames for r in f.regions]
    crops = [crop_region(f.image, r.box, 0.1) for f in frames for r in f.regions]
    scores = ram.score_images(crops)
    vocab = ram.vocabulary
    expect = {}
    for row, key in zip(scores, before):
        index = vocab.indices_of(key[1])[0]
        expect[key] = (float(row[index]), float(vocab.thresholds[index]))
    Pipeline([confirm], batch_size=2).process(frames)
    assert confirm.tagger is not ram and confirm.tagger.model is ram.model  # one model in memory
    kept = {(f.name, r.tag, r.box) for f in frames for r in f.regions}
    assert kept == {key for key, (score, threshold) in expect.items() if score > threshold}
    for frame in frames:
        for drop in frame.dropped:
            if drop.item == "region":
                assert drop.reason == REASON_NOT_CONFIRMED
                assert drop.value == pytest.approx(expect[(frame.name, drop.tag, drop.box)][0], abs=1e-5)
        lost = {d.tag for d in frame.dropped if d.item == "region"} - {r.tag for r in frame.regions}
        assert not lost & set(frame.tag_names)  # drop_tags=rejected


def test_outliers_with_the_tiny_ram_embedding(ram_params, photo_images):
    shared_models.clear()
    frames = photo_frames(photo_images, 2)
    for frame in frames:
        h, w = frame.image.shape[:2]
        frame.regions = [Region(box=(0, 0, w / 2, h / 2), tag="thing"), Region(box=(w / 3, 0, w, h), tag="thing"),
                         Region(box=(0, h / 2, w, h), tag="thing")]
    stage = RegionOutliers(tagger="ram", tagger_with=dict(ram_params), k=2, drop_fraction=0.2, padding=0.0)
    crops = [crop_region(f.image, r.box) for f in frames for r in f.regions]
    keys = [(f.name, r.box) for f in frames for r in f.regions]
    expected = find_outliers({"thing": stage.tagger.embed_images(crops)}, k=2, drop_fraction=0.2)["thing"]
    assert len(expected.dropped) == 1  # floor(20% of 6)
    out = stage(frames)
    drops = [(f.name, d.box) for f in out for d in f.dropped]
    assert drops == [keys[expected.dropped[0]]]
    assert [d.value for f in out for d in f.dropped] == pytest.approx([expected.distances[expected.dropped[0]]])


def test_the_tiny_ram_scores_and_embeds_crops_from_one_encoding(ram_params, photo_images):
    """`score_and_embed_images` (what region_confirm runs when region_outliers follows) gives exactly
    `score_images` and `embed_images`."""
    shared_models.clear()
    ram = plugins.get_stage("ram")(ram_params)
    frame = photo_frames(photo_images, 1)[0]
    h, w = frame.image.shape[:2]
    crops = [crop_region(frame.image, box, 0.1) for box in [(0, 0, w / 2, h / 2), (w / 4, h / 4, w, h), (0, 0, w, h)]]
    scores, embeddings = ram.score_and_embed_images(crops)
    assert np.array_equal(scores, ram.score_images(crops))
    assert np.array_equal(embeddings, ram.embed_images(crops))
    no_scores, no_embeddings = ram.score_and_embed_images([])
    assert no_scores.shape == ram.score_images([]).shape == (0, len(ram.vocabulary))
    assert no_embeddings.shape == ram.embed_images([]).shape and no_embeddings.dtype == np.float32
