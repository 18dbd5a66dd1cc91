"""The Tag2Text model, its checkpoint mapping, and the `tag2text` / `tag2text_caption` stages.

The stage tests use a tiny random Tag2Text written here in the official checkpoint layout (with a
fixture-style config.json, a tag list and a small WordPiece vocabulary), so they need no fixture.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from recognize.errors import ModelFileError
from recognize.frame import Frame, Tag
# parameters on meta, not `with torch.device("meta")`: timm 1.0.20 and older call `.tolist()` on a linspace they build
from recognize.meta_init import parameters_on_meta
from recognize.stage import shared_models
from recognize.taggers.bert import CaptionDecoder
from recognize.taggers.checkpoint import load_official, map_state_dict
from recognize.taggers.generation import beam_search
from recognize.taggers.tag2text import CaptionSettings, Tag2Text, Tag2TextConfig
from recognize.taggers.tag2text_stages import Tag2TextCaption, Tag2TextTagger, user_tag_string

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference")) / "manifests"
FIXTURES = Path(os.environ.get("RECOGNIZE_PARITY_FIXTURES", REPO.parent / "shared" / "reference" / "fixtures"))

TAGS = ["dog", "cat", "man", "person", "tree", "car", "boat", "sky", "grass", "water", "dog", "road"]
WORDS = ["a", "picture", "of", "|", "dog", "cat", "man", "person", "tree", "car", "boat", "sky", "grass",
         "water", "road", "red", "blue", "big", "##s", "on", "the", "in", "."]
SPECIAL = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def manifest_state(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The manifest and a meta-tensor state dict with its keys and shapes."""
    if not path.is_file():
        pytest.skip(f"manifest {path} not found")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    return manifest, {k["key"]: torch.empty(k["shape"], device="meta") for k in manifest["keys"]}


def test_manifest_tag2text_swin_14m():
    """The full-size released model (meta device) takes exactly the official manifest's keys and shapes."""
    with parameters_on_meta():
        model = Tag2Text(Tag2TextConfig.released(384))
    manifest, state = manifest_state(MANIFESTS / "tag2text_swin_14m.json")
    spec = model.key_spec()
    expected = {k: v.shape for k, v in model.state_dict().items()}
    mapped, report = map_state_dict(state, spec, expected, source="tag2text_swin_14m.pth")
    assert set(mapped) == set(expected)
    assert all(tensor.shape == expected[key] for key, tensor in mapped.items())
    assert not report.adapted and not report.ignored
    assert set(report.dropped) == set(manifest["keys_deleted_by_official_loader"])
    assert set(report.loaded) | set(report.dropped) == set(state)
    assert len(report.loaded) + len(report.dropped) == manifest["num_state_dict_keys"] == 1038
    assert sorted(map(sorted, spec.tied_groups)) == sorted(map(sorted, manifest["tied_groups"]))
    assert report.tied_checked == len(manifest["tied_groups"]) == 34
    assert sum(p.numel() for p in model.parameters()) == manifest["num_unique_parameter_elements"]
    model.load_state_dict(mapped, strict=True, assign=True)
    model.tie_weights()  # an assign-load replaced the parameters: ties restored
    assert model.tag_encoder.encoder.layer[1].output.dense.weight is model.tagging_head.layers[1].ffn_out.weight


def test_released_224_variant_resamples_the_bias_tables():
    with parameters_on_meta():
        model = Tag2Text(Tag2TextConfig.released(224))
    _, state = manifest_state(MANIFESTS / "tag2text_swin_14m.json")
    mapped, report = map_state_dict(state, model.key_spec(), {k: v.shape for k, v in model.state_dict().items()})
    assert len(report.adapted) == 24
    assert mapped["visual_encoder.layers.0.blocks.0.attn.relative_position_bias_table"].shape == (169, 4)


# -- a tiny Tag2Text in the official layout ------------------------------------------------------

def tiny_config_dict(tag_list: str) -> dict:
    bert = {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32, "hidden_act": "gelu",
            "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "pad_token_id": 0}
    return {
        "model": "tag2text",
        "image_size": 32,
        "swin_config_json": {"vision_width": 16, "image_res": 32, "window_size": 4, "embed_dim": 8,
                             "depths": [1, 1], "num_heads": [1, 2]},
        "q2l_config": {**bert, "num_hidden_layers": 1, "vocab_size": 30522, "encoder_width": 16},
        "q2l_effective_encoder_width": 16,
        "med_config": {**bert, "num_hidden_layers": 2, "vocab_size": len(SPECIAL) + len(WORDS) + 2,
                       "encoder_width": 16},
        "tag_encoder_effective_encoder_width": 16,
        "text_decoder_encoder_width": 16,
        "num_classes": len(TAGS),
        "tag_list": tag_list,
        "default_threshold": 0.68,
        "class_threshold_overrides": {"3": 0.7},
        "delete_tag_index": [1],
        "prompt": "a picture of ",
    }


def randomize(model: Tag2Text, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) * p.shape[-1] ** -0.5)
            elif "LayerNorm" in name or "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
        model.label_embed.weight.mul_(model.label_embed.weight.shape[-1] ** 0.5)
        model.text_decoder.bert.embeddings.word_embeddings.weight.mul_(4)
        model.fc.b.copy_(torch.linspace(-2.0, 2.0, len(TAGS)))  # a few tags above threshold
        model.text_decoder.cls.predictions.bias[4] += 3.0  # [SEP]: captions end before max_length


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("tiny-tag2text")
    (folder / "tags.txt").write_text("\n".join(TAGS) + "\n", encoding="utf-8")
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in SPECIAL + WORDS), encoding="utf-8")
    config = tiny_config_dict("tags.txt")
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    model = Tag2Text(Tag2TextConfig.from_fixture_config(config))
    randomize(model)
    official = {model.official_key_map()[k]: v.clone() for k, v in model.state_dict().items()}
    torch.save({"model": official, "epoch": 3, "config": {"note": "ignored"}}, folder / "checkpoint.pth")
    return {"folder": folder, "model": model, "state": official,
            "params": {"config": str(folder / "config.json"), "checkpoint": str(folder / "checkpoint.pth"),
                       "device": "cpu"},
            "vocab": str(folder / "vocab.txt")}


@pytest.fixture
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(3)] + [np.full((32, 32, 3), 90, np.uint8)]


def test_tied_tensors_are_shared(tiny):
    model = Tag2Text(Tag2TextConfig.from_fixture_config(tiny_config_dict("tags.txt")))
    load_official(model, tiny["folder"] / "checkpoint.pth", model.key_spec())
    head, encoder = model.tagging_head.layers[0], model.tag_encoder.encoder.layer[0]
    assert encoder.crossattention.self.key.weight is head.key.weight
    assert encoder.crossattention.output.LayerNorm.bias is head.attn_norm.bias
    assert encoder.intermediate.dense.weight is head.ffn_in.weight
    assert model.tag_encoder.encoder.layer[1].crossattention.self.key.weight is not head.key.weight  # only layer 0
    lm = model.text_decoder
    assert lm.cls.predictions.decoder.weight is lm.bert.embeddings.word_embeddings.weight
    assert lm.cls.predictions.decoder.bias is lm.cls.predictions.bias
    # both official names of every tied tensor are in the state dict, as in an official checkpoint
    assert set(model.official_key_map().values()) == set(tiny["state"])
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, tiny["state"][model.official_key_map()[name]])


def test_unequal_tied_copies_and_missing_keys_are_refused(tiny):
    model = Tag2Text(Tag2TextConfig.from_fixture_config(tiny_config_dict("tags.txt")))
    state = dict(tiny["state"])
    state["tag_encoder.encoder.layer.0.intermediate.dense.weight"] = state[
        "tag_encoder.encoder.layer.0.intermediate.dense.weight"] + 1
    with pytest.raises(ModelFileError, match="tied weights differ"):
        load_official(model, state, model.key_spec())
    state = {k: v for k, v in tiny["state"].items() if not k.startswith("fc.")}
    with pytest.raises(ModelFileError, match="missing") as err:
        load_official(model, state, model.key_spec())
    assert "\n" not in str(err.value)


def test_tag_choice_is_strict_and_deletes(tiny):
    thresholds = Tag2TextConfig.from_fixture_config(tiny_config_dict("tags.txt")).class_thresholds()
    assert thresholds[3] == np.float32(0.7) and thresholds[0] == np.float32(0.68)
    scores = np.array([[0.69, 0.9, 0.68, 0.69, 0.1] + [0.0] * 7])
    official, keep_all = Tag2TextTagger(**tiny["params"]), Tag2TextTagger(**tiny["params"], delete_tag_index=[])
    assert official.predicted_indices(scores)[0].tolist() == [0]  # the config's delete_tag_index [1]
    assert keep_all.predicted_indices(scores)[0].tolist() == [0, 1]
    np.testing.assert_array_equal(official.vocabulary.thresholds, thresholds)
    assert user_tag_string("dog,cat, red car") == "dog | cat |  red car"


@pytest.mark.slow
def test_tagger_and_captioner_share_one_model(tiny, images):
    shared_models.clear()
    tagger = Tag2TextTagger(**tiny["params"])
    captioner = Tag2TextCaption(**tiny["params"], vocab=tiny["vocab"])
    frames = [Frame.from_array(image) for image in images]
    tagger(frames)
    captioner(frames)
    assert tagger.model is captioner.model
    assert all(frame.caption is not None and frame.caption == frame.caption.strip() or frame.caption == ""
               for frame in frames)
    assert any(frame.tags for frame in frames)
    for frame in frames:
        assert all(tag.source == "tag2text" and tag.name == TAGS[tag.index] for tag in frame.tags)
        assert all(tag.index != 1 for tag in frame.tags)  # delete_tag_index of the config
        # the captioner's predicted tags are the tagger's tags (and are not added a second time)
        assert frame.meta["caption_tags"] == " | ".join(tag.name for tag in frame.tags)


def test_the_captioner_alone_reports_its_tags_and_caption(tiny, images):
    tagged = Tag2TextTagger(**tiny["params"])([Frame.from_array(image) for image in images])
    frames = Tag2TextCaption(**tiny["params"], vocab=tiny["vocab"])([Frame.from_array(image) for image in images])
    for alone, reference in zip(frames, tagged):
        assert [(t.name, t.index, t.score) for t in alone.tags] == [(t.name, t.index, t.score) for t in reference.tags]
        assert {t.source for t in alone.tags} <= {"tag2text_caption"}
        assert alone.meta["caption_tags"] == " | ".join(t.name for t in reference.tags)
        assert alone.caption is not None


@pytest.mark.slow
def test_captions_of_a_batch_are_each_images_own(tiny, images):
    batched = Tag2TextCaption(**tiny["params"], vocab=tiny["vocab"], batch_size=4).caption_images(images)
    alone = [Tag2TextCaption(**tiny["params"], vocab=tiny["vocab"]).caption_images([image])[0] for image in images]
    assert batched == alone


@pytest.mark.slow
def test_batched_beam_search_is_fixed_not_the_official_quirk():
    """Official batched beam search captions image 1 from image 0's tags; ours captions it from its own."""
    folder = FIXTURES / "tag2text"
    if not (folder / "config.json").is_file():
        pytest.skip(f"no tag2text fixture under {FIXTURES}")
    expected_json = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    expected = torch.load(folder / "expected.pt", weights_only=True)
    inputs = torch.load(folder / "inputs.pt", weights_only=True)
    model = Tag2Text(Tag2TextConfig.from_fixture_config(folder / "config.json")).eval()
    load_official(model, folder / "checkpoint.pth", model.key_spec())
    with torch.no_grad():
        states = model.encode_tags(expected["tag_encoder_input_ids"], expected["tag_encoder_attention_mask"],
                                   model.encode_image(inputs["images"]))
    prefix = torch.tensor([expected_json["prompt"]["decoder_prefix_ids"]] * 2)
    ids = beam_search(CaptionDecoder(model.text_decoder, states), prefix, num_beams=3, max_length=50,
                      min_length=10, eos_token_id=102, pad_token_id=0)
    per_image = [t.tolist() for t in expected["beam3_ids"]]
    assert ids == per_image
    quirk = expected_json["generation_settings"]["official_batched_beam3_quirk"]["captions"]
    assert quirk[1] == quirk[0] == expected_json["captions_beam3"][0] != expected_json["captions_beam3"][1]


@pytest.mark.slow
def test_caption_ids_batch_equals_one_by_one_for_every_strategy(tiny, images):
    model = tiny["model"].eval()
    captioner = Tag2TextCaption(**tiny["params"], vocab=tiny["vocab"])
    captioner.ensure_loaded()
    with torch.no_grad():
        tokens = model.encode_image(captioner.pixels(images))
    texts = ["dog | cat", "red car", "", "man | sky | water"]
    for settings in (CaptionSettings(), CaptionSettings(num_beams=1),
                     CaptionSettings(length_normalization="generated", num_beams=2)):
        batch = model.caption_ids(tokens, texts, captioner.tokenizer, settings)
        assert batch == [model.caption_ids(tokens[i : i + 1], texts[i : i + 1], captioner.tokenizer, settings)[0]
                         for i in range(len(texts))]
    sampled = [model.caption_ids(tokens, texts, captioner.tokenizer, CaptionSettings(sample=True, seed=s))
               for s in (7, 7)]
    assert sampled[0] == sampled[1]


@pytest.mark.slow
def test_caption_from_frame_tags_and_user_tags(tiny, images):
    frames = [Frame.from_array(images[0]), Frame.from_array(images[1])]
    frames[0].tags = [Tag(name="dog"), Tag(name="red car")]
    Tag2TextCaption(**tiny["params"], vocab=tiny["vocab"], tags="frame")(frames)
    assert [f.meta["caption_tags"] for f in frames] == ["dog | red car", ""]
    from_frame = frames[0].caption
    stage = Tag2TextCaption(**tiny["params"], vocab=tiny["vocab"], user_tags="dog, red car")
    user = stage([Frame.from_array(images[0])])
    assert user[0].meta["caption_tags"] == "dog |  red car"
    assert user[0].caption == from_frame  # same pieces once tokenized


def test_params_are_validated():
    with pytest.raises(ValidationError, match="min_length"):
        Tag2TextCaption(min_length=60, max_length=50)
    with pytest.raises(ValidationError, match="user_tags"):
        Tag2TextCaption(tags="frame", user_tags="dog")
    with pytest.raises(ValidationError):
        Tag2TextCaption(beam_length_normalization="average")
    with pytest.raises(ValidationError):
        Tag2TextCaption(num_beam=3)


def test_delete_tag_index_param_and_thresholds(tiny, images):
    keep = Tag2TextTagger(**tiny["params"], delete_tag_index=[], threshold=0.0)
    frames = keep([Frame.from_array(images[0])])
    assert [t.index for t in frames[0].tags] == list(range(len(TAGS)))  # duplicate names kept apart by index
    default = Tag2TextTagger(**tiny["params"], threshold=0.0)([Frame.from_array(images[0])])
    assert 1 not in [t.index for t in default[0].tags]


@pytest.mark.slow
def test_bfloat16_captions(tiny, images):
    stage = Tag2TextCaption(**tiny["params"], vocab=tiny["vocab"], dtype="bfloat16", num_beams=2, max_length=12)
    frames = stage([Frame.from_array(image) for image in images[:2]])
    assert all(isinstance(frame.caption, str) for frame in frames)


def test_missing_vocabulary_is_a_one_line_error(tiny, images, cache_home):
    stage = Tag2TextCaption(**tiny["params"])
    with pytest.raises(ModelFileError) as err:
        stage([Frame.from_array(images[0])])
    assert "vocab.txt" in str(err.value) and "\n" not in str(err.value)


def test_stages_are_registered():
    from recognize import plugins

    stages = plugins.stages()
    assert stages["tag2text"] is Tag2TextTagger and stages["tag2text_caption"] is Tag2TextCaption
    assert Tag2TextCaption.kind == "captioner" and Tag2TextTagger.kind == "tagger"


@pytest.mark.parametrize("caption", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_tag2text_stages_keep_the_contract(tiny, caption):
    from recognize.testing import check_stage, sample_frames

    if caption:
        frames = check_stage(lambda: Tag2TextCaption(**tiny["params"], vocab=tiny["vocab"]), sample_frames())
        assert all(frame.caption for frame in frames)
    else:
        frames = check_stage(lambda: Tag2TextTagger(**tiny["params"], threshold=0.0), sample_frames())
        assert all(frame.tags for frame in frames)
