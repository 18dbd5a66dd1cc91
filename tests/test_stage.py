"""The base `Stage` (parameters, model files, unloading), `SharedModels` and the capability protocols."""

from __future__ import annotations

import gc
import threading

import pytest

from recognize import Stage, StageParams
from recognize.capabilities import ImageEmbedder, ImageScorer
from recognize.errors import ModelFileError, RecognizeError
from recognize.hub import FileRef
from recognize.stage import SharedModels, normalize_device


class Knobs(Stage):
    name = "knobs"
    kind = "filter"

    class Params(StageParams):
        threshold: float = 0.5
        device: str = "auto"
        batch_size: int = 8

    def process(self, frames):
        return frames


# -- parameters ------------------------------------------------------------------------------


def test_a_params_object_counts_only_the_fields_it_was_given():
    from_object = Knobs(params=Knobs.Params(threshold=0.7))
    from_dict = Knobs({"threshold": 0.7})
    assert from_object.params.model_fields_set == {"threshold"} == from_dict.params.model_fields_set
    assert from_object.describe() == from_dict.describe() == {"use": "knobs", "with": {"threshold": 0.7}}
    from_object.apply_defaults(device="cpu", batch_size=2)
    assert from_object.params.device == "cpu" and from_object.params.batch_size == 2
    assert from_object.describe() == {"use": "knobs", "with": {"threshold": 0.7}}


def test_a_params_object_with_keyword_overrides_and_a_set_default():
    stage = Knobs(Knobs.Params(device="cuda"), threshold=0.9)
    stage.apply_defaults(device="cpu")
    assert stage.params.device == "cuda"  # set by the caller: the pipeline default does not apply
    assert stage.params.threshold == 0.9 and stage.params.model_fields_set == {"device", "threshold"}


def test_pipeline_device_reaches_a_stage_built_from_a_params_object():
    from recognize.pipeline import Pipeline

    stage = Knobs(params=Knobs.Params(threshold=0.1))
    Pipeline([stage], device="cpu")
    assert stage.params.device == "cpu"


# -- shared models ---------------------------------------------------------------------------


class Owner:
    """Anything weak-referenceable can own a model; stages do."""


def test_different_keys_load_at_the_same_time():
    pool = SharedModels()
    a_started, b_done = threading.Event(), threading.Event()

    def load_a():
        a_started.set()
        assert b_done.wait(10), "b could not load while a was loading: loads are serialised"
        return "a"

    def load_b():
        assert a_started.wait(10)
        b_done.set()
        return "b"

    owner = Owner()
    results = {}
    thread = threading.Thread(target=lambda: results.setdefault("a", pool.get("a", load_a, owner=owner)))
    thread.start()
    results["b"] = pool.get("b", load_b, owner=owner)
    thread.join(20)
    assert results == {"a": "a", "b": "b"}


def test_a_loader_may_ask_the_pool_for_another_model():
    pool = SharedModels()
    owner = Owner()

    def load_outer():
        return ("outer", pool.get("inner", lambda: "inner", owner=owner))

    done = []
    thread = threading.Thread(target=lambda: done.append(pool.get("outer", load_outer, owner=owner)), daemon=True)
    thread.start()
    thread.join(10)
    assert done == [("outer", "inner")], "deadlock: a loader that asks the pool never returned"


def test_a_loader_that_asks_for_itself_is_an_error_not_a_hang():
    pool = SharedModels()
    owner = Owner()
    with pytest.raises(RecognizeError, match="asks the pool for itself"):
        pool.get("loop", lambda: pool.get("loop", lambda: 1, owner=owner), owner=owner)


def test_one_key_is_built_once_even_when_asked_concurrently():
    pool = SharedModels()
    calls = []
    gate = threading.Barrier(4)

    def factory():
        calls.append(1)
        return object()

    owners = [Owner() for _ in range(4)]
    got = []

    def ask(owner):
        gate.wait(5)
        got.append(pool.get(("m", "cpu"), factory, owner=owner))

    threads = [threading.Thread(target=ask, args=(o,)) for o in owners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and len({id(x) for x in got}) == 1


def test_a_failed_load_is_tried_again():
    pool = SharedModels()
    owner = Owner()

    def broken():
        raise OSError("disk hiccup")

    with pytest.raises(OSError):
        pool.get("m", broken, owner=owner)
    assert pool.get("m", lambda: "ok", owner=owner) == "ok"


def test_models_are_evicted_when_their_last_owner_releases_or_goes():
    pool = SharedModels()
    first, second = Owner(), Owner()
    pool.get("m", lambda: "weights", owner=first)
    pool.get("m", lambda: "other", owner=second)
    pool.release(first)
    assert "m" in pool  # the second owner still holds it
    pool.release(second)
    assert "m" not in pool

    third = Owner()
    pool.get("n", lambda: "weights", owner=third)
    del third
    gc.collect()
    assert "n" not in pool and len(pool) == 0


def test_unowned_models_stay_until_evicted_or_cleared():
    pool = SharedModels()
    pool.get("pinned", lambda: 1)
    pool.get("other", lambda: 2)
    assert pool.evict("pinned") and "pinned" not in pool and "other" in pool
    pool.clear()
    assert len(pool) == 0


def test_cuda_and_cuda0_are_one_key():
    pool = SharedModels()
    owner = Owner()
    first = pool.get(("m", "cuda"), lambda: object(), owner=owner)
    assert pool.get(("m", "cuda:0"), lambda: object(), owner=owner) is first
    assert normalize_device("cuda") == "cuda:0" and normalize_device("cuda:1") == "cuda:1"
    assert normalize_device("cpu") == "cpu"


class PooledStage(Stage):
    name = "pooled"
    kind = "filter"
    builds = 0

    def load(self):
        from recognize.stage import shared_models

        def build():
            PooledStage.builds += 1
            return bytearray(16)

        self.model = shared_models.get(("pooled-test", "cpu"), build, owner=self)

    def process(self, frames):
        return frames


def test_stage_unload_and_garbage_collection_free_the_shared_model():
    from recognize.stage import shared_models

    PooledStage.builds = 0
    stage = PooledStage()
    assert not stage.loaded
    stage.ensure_loaded()
    assert stage.loaded and ("pooled-test", "cpu") in shared_models
    stage.unload()
    assert not stage.loaded and ("pooled-test", "cpu") not in shared_models
    stage.ensure_loaded()  # loads again on next use
    assert stage.loaded and PooledStage.builds == 2
    del stage
    gc.collect()
    assert ("pooled-test", "cpu") not in shared_models


# -- model files -----------------------------------------------------------------------------


def test_ram_declares_every_file_and_offline_names_them_all(cache_home):
    from recognize.taggers.ram_stages import Ram, RamPlus

    ram = Ram()
    assert [str(r) for r in ram.model_files()] == [
        "ram_swin_large_14m/ram_swin_large_14m.pth",
        "ram-tag-lists/ram_tag_list.txt",
        "ram-tag-lists/ram_tag_list_chinese.txt",
        "ram-tag-lists/ram_tag_list_threshold.txt",
    ]
    with pytest.raises(ModelFileError) as caught:
        ram.ensure_loaded()
    message = str(caught.value)
    assert message.startswith("4 model files missing and RECOGNIZE_OFFLINE=1")
    for ref in ram.model_files():
        assert ref.filename in message
    assert "\n" not in message

    openset = RamPlus(tags=["cat", "dog"], checkpoint="/weights/ram_plus.pth")
    assert [str(r) for r in openset.model_files()] == ["clip-vit-b-16/ViT-B-16.pt"]
    own_clip = RamPlus(tags=["cat"], clip_model="ViT-B-32", clip_checkpoint="/w/clip.pt", checkpoint="/w/r.pth")
    assert own_clip.model_files() == []
    assert [r.filename for r in Ram(tag_list="/my/tags.txt", checkpoint="/w/r.pth").model_files()] == [
        "ram_tag_list_chinese.txt", "ram_tag_list_threshold.txt"]


def test_tag2text_stages_declare_checkpoint_tag_list_and_vocab():
    from recognize.taggers.tag2text_stages import Tag2TextCaption, Tag2TextTagger

    assert [str(r) for r in Tag2TextTagger().model_files()] == [
        "tag2text_swin_14m/tag2text_swin_14m.pth", "ram-tag-lists/tag2text_ori_tag_list.txt"]
    assert [str(r) for r in Tag2TextCaption(checkpoint="/w/t.pth").model_files()] == [
        "ram-tag-lists/tag2text_ori_tag_list.txt", "bert-base-uncased-vocab/vocab.txt"]
    assert Tag2TextCaption(checkpoint="/w/t.pth", tag_list="/t.txt", vocab="/v.txt").model_files() == []


def test_region_stages_declare_their_tagger_and_clip_files():
    from recognize.data_engine.confirm_stage import RegionConfirm
    from recognize.data_engine.merge_tags_stage import MergeTags
    from recognize.data_engine.outliers_stage import RegionOutliers

    confirm = RegionConfirm(tagger="ram", tagger_with={"checkpoint": "/w/ram.pth"})
    assert [r.filename for r in confirm.model_files()] == [
        "ram_tag_list.txt", "ram_tag_list_chinese.txt", "ram_tag_list_threshold.txt"]
    assert [str(r) for r in RegionOutliers(embedder="clip").model_files()] == ["clip-vit-b-16/ViT-B-16.pt"]
    assert RegionOutliers(embedder="clip", clip_model="RN50", clip_checkpoint="/w/c.pt").model_files() == []
    assert [r.card for r in RegionOutliers(tagger="tag2text").model_files()] == ["tag2text_swin_14m", "ram-tag-lists"]
    assert MergeTags().model_files() == [FileRef("ram-tag-lists", "ram_tag_list.txt", optional=True)]
    assert MergeTags(only_vocabulary=True).model_files() == [FileRef("ram-tag-lists", "ram_tag_list.txt")]
    assert MergeTags(vocabulary="/v.txt").model_files() == []


def test_plugin_stages_declare_their_files():
    from recognize_grounding_dino.stage import GroundingDino
    from recognize_sam.stage import Sam

    assert [str(r) for r in GroundingDino().model_files()] == [
        "groundingdino_swint_ogc/groundingdino_swint_ogc.pth", "bert-base-uncased-vocab/vocab.txt"]
    assert [str(r) for r in GroundingDino(model="swinb", vocab="/v.txt").model_files()] == [
        "groundingdino_swinb_cogcoor/groundingdino_swinb_cogcoor.pth"]
    assert [str(r) for r in Sam(model="vit_b").model_files()] == ["sam_vit_b/sam_vit_b_01ec64.pth"]
    assert Sam(weights="random").model_files() == [] and Sam(checkpoint="/w/sam.pth").model_files() == []


def test_every_declared_file_is_on_a_registered_card():
    from recognize import plugins
    from recognize.hub import get_card

    for name in ("ram", "ram_plus", "tag2text", "tag2text_caption", "region_confirm", "region_outliers",
                 "merge_tags", "grounding_dino", "sam", "sam2", "owlv2"):
        for ref in plugins.get_stage(name)().model_files():
            get_card(ref.card).file(ref.filename)


# -- capabilities ----------------------------------------------------------------------------


def test_capabilities_are_protocols_checked_by_region_stages(test_stages):
    from recognize.data_engine.confirm_stage import RegionConfirm
    from recognize.data_engine.outliers_stage import RegionOutliers
    from recognize.taggers.ram_stages import Ram

    assert isinstance(Ram(), ImageScorer) and isinstance(Ram(), ImageEmbedder)
    assert not isinstance(test_stages.Brightness(), ImageScorer)
    with pytest.raises(RecognizeError, match="stage 'brightness' is not a tagger this stage can use .*ImageScorer"):
        _ = RegionConfirm(tagger="brightness").tagger
    with pytest.raises(RecognizeError, match="ImageEmbedder"):
        _ = RegionOutliers(tagger="brightness").tagger


def test_a_waiting_request_loads_again_after_a_failed_load():
    pool = SharedModels()
    owner = Owner()
    started, release = threading.Event(), threading.Event()

    def failing():
        started.set()
        release.wait(5)
        raise OSError("truncated checkpoint")

    errors = []

    def first():
        try:
            pool.get("m", failing, owner=owner)
        except OSError as exc:
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    started.wait(5)
    waiter = []
    second = threading.Thread(target=lambda: waiter.append(pool.get("m", lambda: "good", owner=owner)))
    second.start()
    release.set()
    thread.join(10)
    second.join(10)
    assert len(errors) == 1 and waiter == ["good"] and pool.get("m", lambda: "other", owner=owner) == "good"


def test_check_device_passes_what_this_machine_has_and_names_what_it_lacks():
    import torch

    from recognize.errors import SettingError
    from recognize.stage import check_device

    for device in ("cpu", "auto", "meta"):
        check_device(device, "sam")  # nothing to check, or always usable
    if not torch.cuda.is_available():
        with pytest.raises(SettingError, match=r"^sam: device cuda:0, but torch cannot use a CUDA GPU here"):
            check_device("cuda:0", "sam")
    else:
        with pytest.raises(SettingError, match=r"CUDA GPU\(s\)"):
            check_device(f"cuda:{torch.cuda.device_count()}", "sam")
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        with pytest.raises(SettingError, match=r"^device mps, but torch sees no Apple GPU"):
            check_device("mps")
