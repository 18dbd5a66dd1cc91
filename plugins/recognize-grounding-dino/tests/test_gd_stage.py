"""The `grounding_dino` stage end to end on real photos with a tiny seeded random model."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv
import torch
from pydantic import ValidationError

from recognize import Frame, Tag
from recognize.errors import ModelFileError
from recognize_grounding_dino.stage import GroundingDino
from recognize_grounding_dino.transforms import preprocess

SMALL = {"image_size": 64, "max_size": 112, "device": "cpu"}


@pytest.fixture
def make_stage(tiny_checkpoint, vocab, tiny):
    def make(**params):
        return GroundingDino(checkpoint=str(tiny_checkpoint), vocab=str(vocab), config=tiny, **{**SMALL, **params})

    return make


def _tagged(photo, tags) -> Frame:
    return Frame(source=str(photo), tags=[Tag(name=en, name_zh=zh, source="test") for en, zh in tags])


def test_regions_carry_one_frame_tag_lie_inside_the_image_and_keep_chinese_names(make_stage, photos, ram_tags):
    stage = make_stage(box_threshold=0.3, text_threshold=0.2, batch_size=2)
    frames = [_tagged(photo, ram_tags[i * 40:i * 40 + 12]) for i, photo in enumerate(photos[-2:])]
    frames = stage(frames)
    assert sum(len(f.regions) for f in frames) > 0
    for frame in frames:
        names = {t.name: t.name_zh for t in frame.tags}
        height, width = frame.image.shape[:2]
        assert (frame.width, frame.height) == (width, height)
        for region in frame.regions:
            assert region.tag in names and region.tag_zh == names[region.tag] and region.tag_zh
            x0, y0, x1, y1 = region.box
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            assert region.score > 0.3 and region.meta["tag_score"] > 0.2
            assert region.source == "grounding_dino"
        assert [r.score for r in frame.regions] == sorted((r.score for r in frame.regions), reverse=True)
        assert len(frame.tags) == len(names)  # tags given by a tagger are left as they were
    # serialisable as the run's JSON, Chinese names included
    again = Frame.from_json(frames[0].to_json())
    assert [r.tag_zh for r in again.regions] == [r.tag_zh for r in frames[0].regions]


@pytest.mark.slow
def test_results_do_not_depend_on_the_batch(make_stage, photos, ram_tags):
    tags = ram_tags[500:510]
    alone = make_stage(box_threshold=0.2, batch_size=1)([_tagged(photos[-1], tags)])[0]
    # two copies of the image in one model call, next to an image of another size
    together = make_stage(box_threshold=0.2, batch_size=4)([_tagged(p, tags) for p in photos[-2:] + photos[-1:]])
    assert alone.regions
    for frame in (together[1], together[2]):
        assert [r.tag for r in frame.regions] == [r.tag for r in alone.regions]
        np.testing.assert_allclose([r.box for r in frame.regions], [r.box for r in alone.regions], atol=1e-3)
        np.testing.assert_allclose([r.score for r in frame.regions], [r.score for r in alone.regions], atol=1e-5)


def test_fixed_class_list_without_a_tagger(make_stage, photos):
    classes = ["person", "dog", "traffic light", "fire hydrant"]
    frame = make_stage(classes=classes, box_threshold=0.3, text_threshold=0.1)([Frame(source=str(photos[-1]))])[0]
    assert frame.regions
    assert {r.tag for r in frame.regions} <= set(classes)
    assert all(r.tag_zh is None for r in frame.regions)
    # the classes that were found become the frame's tags, so every region's tag is a frame tag
    assert {t.name for t in frame.tags} == {r.tag for r in frame.regions}
    assert all(t.source == "grounding_dino" for t in frame.tags)


def _max_iou(regions, same_tag: bool) -> float:
    worst = 0.0
    for i, a in enumerate(regions):
        for b in regions[i + 1:]:
            if same_tag and a.tag != b.tag:
                continue
            worst = max(worst, float(sv.box_iou_batch(np.array([a.box]), np.array([b.box]))[0, 0]))
    return worst


def test_duplicate_policies(make_stage, photos):
    classes = ["person", "dog", "car", "tree", "sky"]
    results = {}
    for policy in ("none", "per_tag", "cross_tag"):
        stage = make_stage(classes=classes, box_threshold=0.1, text_threshold=0.0, nms=policy, nms_threshold=0.3)
        results[policy] = stage([Frame(source=str(photos[-1]))])[0].regions
    assert len(results["none"]) >= len(results["per_tag"]) >= len(results["cross_tag"])
    assert len(results["none"]) > len(results["cross_tag"])  # random boxes overlap: something was removed
    assert _max_iou(results["per_tag"], same_tag=True) <= 0.3 + 1e-6
    assert _max_iou(results["cross_tag"], same_tag=False) <= 0.3 + 1e-6
    assert _max_iou(results["none"], same_tag=False) > 0.3


@pytest.mark.slow
def test_a_repeated_caption_is_encoded_once(make_stage, photos):
    stage = make_stage(classes=["grass", "water", "building"], box_threshold=0.99, batch_size=2)
    stage.ensure_loaded()
    calls = []
    hook = stage.detector.model.model.text_backbone.encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        stage([Frame(source=str(photos[-1]))])
        stage([Frame(source=str(photos[-1])), Frame(source=str(photos[-1]))])
    finally:
        hook.remove()
    assert len(calls) == 1


@pytest.mark.slow
def test_every_one_of_150_tags_reaches_the_model_in_a_whole_phrase(make_stage, photos, ram_tags, monkeypatch):
    tags = ram_tags[1500:1650]
    stage = make_stage(box_threshold=0.3)
    stage.ensure_loaded()
    seen = []
    original = type(stage.detector).__call__

    def spy(detector, pixels, prompt):
        seen.append(prompt)
        return original(detector, pixels, prompt)

    monkeypatch.setattr(type(stage.detector), "__call__", spy)
    frame = stage([_tagged(photos[-1], tags)])[0]
    assert len(seen) >= 2 and all(len(p) <= 256 for p in seen)
    reached = sorted(frame.tags[i].name for p in seen for i in p.tags)
    assert reached == sorted(en for en, _ in tags)
    assert not frame.dropped
    assert {r.tag for r in frame.regions} <= {en for en, _ in tags}


@pytest.mark.slow
def test_the_image_backbone_runs_once_for_all_captions_of_an_image(make_stage, photos, ram_tags):
    tags = ram_tags[1500:1650]
    stage = make_stage(box_threshold=0.3)
    stage.ensure_loaded()
    detector = stage.detector
    backbone = detector.model.model.backbone
    runs = []
    hook = backbone.conv_encoder.register_forward_hook(lambda *a: runs.append(1))
    try:
        stage([_tagged(photos[-1], tags)])
        assert len(runs) == 1
        prompts = detector.pack([en for en, _ in tags]).prompts
        assert len(prompts) >= 2
        pixels = preprocess(Frame(source=str(photos[-1])).image, SMALL["image_size"], SMALL["max_size"])[None]
        shared = detector.detect(pixels, prompts)
        assert len(runs) == 2
        alone = [detector(pixels, prompt) for prompt in prompts]
        assert len(runs) == 2 + len(prompts)
    finally:
        hook.remove()
    assert "forward" not in vars(backbone)  # the reuse ends with the call
    for (probs, boxes), (probs_alone, boxes_alone) in zip(shared, alone):
        assert torch.equal(probs, probs_alone) and torch.equal(boxes, boxes_alone)


def test_an_unplaceable_tag_is_recorded_as_dropped(make_stage, photos):
    frame = _tagged(photos[-1], [("dog", "狗"), ("?.", None)])
    frame = make_stage(box_threshold=0.99)([frame])[0]
    assert [(d.item, d.tag, d.stage) for d in frame.dropped] == [("tag", "?.", "grounding_dino")]


def test_a_frame_without_tags_gets_no_regions(make_stage, photos):
    frame = make_stage()([Frame(source=str(photos[-1]))])[0]
    assert frame.regions == [] and frame.tags == []


def test_params_are_validated():
    with pytest.raises(ValidationError):
        GroundingDino(box_treshold=0.3)
    with pytest.raises(ValidationError):
        GroundingDino(nms="soft")
    with pytest.raises(ValidationError):
        GroundingDino(model="swinl")


def test_a_checkpoint_for_another_model_is_a_one_line_error(tiny_checkpoint, vocab, tiny):
    small = {**tiny, "encoder_layers": 1}
    stage = GroundingDino(checkpoint=str(tiny_checkpoint), vocab=str(vocab), config=small, **SMALL)
    with pytest.raises(ModelFileError) as error:
        stage.ensure_loaded()
    message = str(error.value)
    assert "\n" not in message and "unexpected" in message and str(tiny_checkpoint) in message


def test_feature_cache_skips_swin_when_only_thresholds_change(make_stage, photos, ram_tags, monkeypatch):
    """The same photo asked again with other thresholds and tags: the image backbone does not re-run."""
    from recognize.feature_cache import feature_cache

    monkeypatch.setattr(feature_cache, "max_bytes", 256 * 2**20)
    loose, strict = make_stage(box_threshold=0.1, text_threshold=0.1), make_stage(box_threshold=0.4)
    loose.ensure_loaded()
    strict.ensure_loaded()
    assert loose.detector is strict.detector  # one model in memory for both threshold sets
    swin = loose.detector.model.model.backbone.conv_encoder
    calls = []
    hook = swin.register_forward_hook(lambda *args: calls.append(1))
    try:
        cached = [loose([_tagged(photos[-1], ram_tags[:6])])[0], strict([_tagged(photos[-1], ram_tags[6:12])])[0]]
        monkeypatch.setattr(feature_cache, "max_bytes", 0)
        fresh = strict([_tagged(photos[-1], ram_tags[6:12])])[0]
    finally:
        hook.remove()
        feature_cache.clear()
    assert len(calls) == 2  # the first image and the uncached call only
    assert [r.box for r in cached[1].regions] == [r.box for r in fresh.regions]


def test_an_image_resized_ahead_gives_the_same_regions_and_is_not_resized_again(make_stage, photos, ram_tags,
                                                                                 monkeypatch):
    """`prepare` (run by an engine's prefetch thread) makes the reference resize; `process` takes it."""
    import recognize_grounding_dino.transforms

    stage = make_stage(box_threshold=0.2, batch_size=2)
    tags = ram_tags[500:510]
    plain = stage([_tagged(p, tags) for p in photos[-2:]])
    ahead = [_tagged(p, tags) for p in photos[-2:]]
    for frame in ahead:
        stage.prepare(frame)
    monkeypatch.setattr(recognize_grounding_dino.transforms, "resize", lambda *args: pytest.fail("resized again"))
    ahead = stage(ahead)
    assert sum(len(f.regions) for f in plain) > 0
    assert [[(r.box, r.score, r.tag) for r in f.regions] for f in ahead] == \
        [[(r.box, r.score, r.tag) for r in f.regions] for f in plain]
