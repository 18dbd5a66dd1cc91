"""Official-output parity of Tag2Text on every fixture folder (tiny random models, official layout).

Each folder under $RECOGNIZE_PARITY_FIXTURES (default ../shared/reference/fixtures) whose config.json
says `tag2text` is rebuilt from its config, loaded from checkpoint.pth through our loader, and
compared with the official outputs: per-class scores, tag strings, the tag-encoder input ids, the
greedy and beam-search caption token ids (both beam length normalisations) and caption strings,
from the stored input tensors and from the jpg files through our preprocessing and stages.

The token-level checks need the bert-base-uncased `vocab.txt` (sha256 07eced37...): from
$RECOGNIZE_BERT_VOCAB, else the recognize cache (`recognize models download bert-base-uncased-vocab`).
Without it they skip; the id-level checks (stored tag-encoder ids -> caption ids) always run.
"""

from __future__ import annotations

import hashlib
import os
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from parity import FIXTURES, TOLERANCE, ParityFixture, fixture_folders

from recognize.frame import Frame
from recognize.taggers.bert import CaptionDecoder
from recognize.taggers.checkpoint import load_official
from recognize.taggers.generation import beam_search, greedy
from recognize.taggers.tag2text import CaptionSettings, Tag2Text, Tag2TextConfig
from recognize.taggers.tag2text_stages import Tag2TextCaption, Tag2TextTagger, user_tag_string
from recognize.taggers.tokenizer import CaptionTokenizer
from recognize.taggers.vocabulary import read_tag_list

VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
OFFICIAL = "prompt_inclusive_transformers_4.31.0"
GENERATED = "generated_only_transformers_4.49.0"


def _vocab() -> Path | None:
    """The exact bert-base-uncased vocab, if this machine has it (never downloaded by a test)."""
    candidates = [os.environ.get("RECOGNIZE_BERT_VOCAB")]
    try:
        from recognize.hub import cache_dir

        candidates.append(str(cache_dir() / "models" / "bert-base-uncased-vocab" / "vocab.txt"))
    except Exception:  # pragma: no cover - the hub is optional for these tests
        pass
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == VOCAB_SHA256:
            return path
    return None


FOLDERS = fixture_folders("tag2text")
VOCAB = _vocab()
pytestmark = [
    pytest.mark.parity,
    pytest.mark.skipif(not FOLDERS, reason=f"no Tag2Text parity fixtures under {FIXTURES}"),
]
needs_vocab = pytest.mark.skipif(
    VOCAB is None,
    reason="bert-base-uncased vocab.txt (sha256 07eced37...) not found: set RECOGNIZE_BERT_VOCAB "
    "or run `recognize models download bert-base-uncased-vocab`",
)


class Fixture(ParityFixture):
    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.prompt = self.config.get("prompt", "a picture of ")

    def optional(self, name: str) -> dict | None:
        path = self.folder / name
        return torch.load(path, weights_only=True) if path.is_file() else None

    def frames(self) -> list[Frame]:
        """The jpg files decoded as the official scripts do (`Image.open(...).convert('RGB')`, no EXIF)."""
        frames = []
        for path in self.images():
            with Image.open(path) as image:
                frames.append(Frame.from_array(np.asarray(image.convert("RGB")), source=str(path)))
        return frames

    def stage_params(self) -> dict:
        return {"config": str(self.folder / "config.json"), "checkpoint": str(self.folder / "checkpoint.pth"),
                "device": "cpu"}

    def beam_variants(self) -> dict[str, list[list[int]]]:
        """Beam ids per length normalisation, official default first."""
        variants = {"official": [t.tolist() for t in self.tensors["beam3_ids"]]}
        stored = self.expected.get("beam3_length_normalization_variants", {})
        if GENERATED in stored:
            variants["generated"] = stored[GENERATED]["beam3_ids"]
        if OFFICIAL in stored:
            assert stored[OFFICIAL]["beam3_ids"] == variants["official"]
        return variants

    def generation(self) -> dict:
        settings = self.expected["generation_settings"]
        beam = settings["beam3"]["hf_kwargs"]
        greedy_kwargs = settings["greedy"]["hf_kwargs"]
        return {"beam": beam, "greedy": greedy_kwargs}


@cache
def _fixture(folder: Path) -> Fixture:
    return Fixture(folder)


@cache
def _model(folder: Path) -> Tag2Text:
    fx = _fixture(folder)
    model = Tag2Text(Tag2TextConfig.from_fixture_config(fx.config)).eval()
    load_official(model, folder / "checkpoint.pth", model.key_spec())
    return model


@cache
def _image_tokens(folder: Path) -> torch.Tensor:
    with torch.no_grad():
        return _model(folder).encode_image(_fixture(folder).inputs["images"])


@cache
def _tokenizer() -> CaptionTokenizer:
    assert VOCAB is not None
    return CaptionTokenizer(VOCAB)


def _settings(kwargs: dict, **extra) -> CaptionSettings:
    return CaptionSettings(num_beams=kwargs["num_beams"], max_length=kwargs["max_length"],
                           min_length=kwargs["min_length"], repetition_penalty=kwargs.get("repetition_penalty"),
                           **extra)


@pytest.fixture(params=FOLDERS, ids=lambda p: p.name)
def fx(request) -> Fixture:
    return _fixture(request.param)


def test_parity_tag2text_scores_and_tags_from_tensors(fx):
    model = _model(fx.folder)
    with torch.no_grad():
        scores = torch.sigmoid(model.logits(_image_tokens(fx.folder))).numpy()
    assert np.abs(scores - fx.tensors["scores"].numpy()).max() <= TOLERANCE
    thresholds = model.config.class_thresholds()
    np.testing.assert_array_equal(thresholds, fx.tensors["class_threshold"].numpy())
    # the stages' tag choice (Vocabulary.predict with the stage's allowed classes) on these scores
    official = Tag2TextTagger(**fx.stage_params())
    before = Tag2TextTagger(**fx.stage_params(), delete_tag_index=[]).predicted_indices(scores)
    assert [r.tolist() for r in before] == fx.expected["predicted_indices_before_delete"]
    after = official.predicted_indices(scores)
    np.testing.assert_array_equal(official.vocabulary.thresholds, thresholds)
    names = read_tag_list(fx.asset("tag_list"))
    assert [" | ".join(names[i] for i in row) for row in after] == fx.expected["tags"]


def test_parity_tag2text_tags_from_jpg_files(fx):
    stage = Tag2TextTagger(**fx.stage_params())
    frames = stage(fx.frames())
    scores = stage.score_images([frame.image for frame in frames])
    assert np.abs(scores - fx.tensors["scores"].numpy()).max() <= TOLERANCE
    assert [" | ".join(tag.name for tag in frame.tags) for frame in frames] == fx.expected["tags"]
    for frame, row in zip(frames, scores):
        assert [tag.index for tag in frame.tags] == sorted(tag.index for tag in frame.tags)
        assert all(abs(tag.score - row[tag.index]) < 1e-6 for tag in frame.tags)


def test_parity_tag2text_text_modules_from_intermediates(fx):
    intermediates = fx.optional("intermediates.pt")
    if intermediates is None:
        pytest.skip("no intermediates.pt in this fixture")
    model = _model(fx.folder)
    ids, mask = fx.tensors["tag_encoder_input_ids"], fx.tensors["tag_encoder_attention_mask"]
    with torch.no_grad():
        swin = model.encode_image(fx.inputs["images"])
        assert (swin - intermediates["visual_encoder_out"]).abs().max() <= TOLERANCE
        states = model.encode_tags(ids, mask, intermediates["visual_encoder_out"])
        assert (states - intermediates["tag_encoder_out_batch"]).abs().max() <= TOLERANCE
        for b, sequence in enumerate(fx.tensors["greedy_ids"]):
            # the 5 largest next-token logits at each generated position, teacher-forced
            logits = model.text_decoder(sequence[None, :-1], states[b : b + 1])[0, len(sequence) - 1 - len(
                fx.tensors["greedy_step_top5_ids"][b]):]
            top = logits.topk(5)
            assert torch.equal(top.indices, fx.tensors["greedy_step_top5_ids"][b])
            assert (top.values - fx.tensors["greedy_step_top5_logits"][b]).abs().max() <= 1e-4


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv_cache", "recompute"])
def test_parity_tag2text_caption_ids_from_tensors(fx, use_cache):
    """Stored tag-encoder ids + our Swin on the stored image tensors -> the official caption ids."""
    model = _model(fx.folder)
    gen = fx.generation()
    ids, mask = fx.tensors["tag_encoder_input_ids"], fx.tensors["tag_encoder_attention_mask"]
    prefix = torch.tensor([fx.expected["prompt"]["decoder_prefix_ids"]] * ids.shape[0])
    with torch.no_grad():
        states = model.encode_tags(ids, mask, _image_tokens(fx.folder))
    common = {k: gen["greedy"][k] for k in ("max_length", "min_length", "eos_token_id", "pad_token_id")}
    got = greedy(CaptionDecoder(model.text_decoder, states, use_cache), prefix, **common)
    assert got == [t.tolist() for t in fx.tensors["greedy_ids"]]
    common = {k: gen["beam"][k] for k in ("max_length", "min_length", "eos_token_id", "pad_token_id")}
    for normalization, expected in fx.beam_variants().items():
        # one batch of both images: each image is captioned from its own tags (the official batched
        # beam search is not; the fixtures' references were made one image at a time)
        got = beam_search(CaptionDecoder(model.text_decoder, states, use_cache), prefix,
                          num_beams=gen["beam"]["num_beams"], length_normalization=normalization, **common)
        assert got == expected, normalization


@needs_vocab
def test_parity_tag2text_tokenizer(fx):
    tokenizer = _tokenizer()
    ids, mask = tokenizer.encode_tags(fx.expected["tags"])
    assert torch.equal(ids, fx.tensors["tag_encoder_input_ids"])
    assert torch.equal(mask, fx.tensors["tag_encoder_attention_mask"])
    assert tokenizer.prompt_ids(fx.prompt) == fx.expected["prompt"]["decoder_prefix_ids"]
    for image in fx.expected["per_image"]:
        for kind in ("greedy", "beam3"):
            assert tokenizer.decode(image[f"{kind}_ids"]) == image[f"{kind}_decoded_full"]
            assert tokenizer.caption(image[f"{kind}_ids"], fx.prompt) == image[f"caption_{kind}"]
    long_case = fx.expected.get("user_specified_tags", {}).get("long_case")
    if long_case:
        assert user_tag_string(long_case["input"]) == long_case["tag_input"]
        ids, mask = tokenizer.encode_tags([long_case["tag_input"]])
        assert ids[0].tolist() == long_case["tag_encoder_input_ids_row0"]
        assert mask[0].tolist() == long_case["tag_encoder_attention_mask_row0"]


@needs_vocab
def test_parity_tag2text_captions_from_tensors(fx):
    model, tokenizer = _model(fx.folder), _tokenizer()
    gen = fx.generation()
    tokens = _image_tokens(fx.folder)
    for kind, kwargs, expected in (("greedy", gen["greedy"], fx.tensors["greedy_ids"]),
                                   ("beam", gen["beam"], fx.tensors["beam3_ids"])):
        got = model.caption_ids(tokens, fx.expected["tags"], tokenizer, _settings(kwargs))
        assert got == [t.tolist() for t in expected], kind


@needs_vocab
def test_parity_tag2text_captions_from_jpg_files(fx):
    stored = fx.expected.get("beam3_length_normalization_variants", {})
    expectations = [({}, fx.expected["captions_beam3"]), ({"num_beams": 1}, fx.expected["captions_greedy"])]
    if GENERATED in stored:
        expectations.append(({"beam_length_normalization": "generated"}, stored[GENERATED]["captions_beam3"]))
    for params, captions in expectations:
        stage = Tag2TextCaption(**fx.stage_params(), vocab=str(VOCAB), **params)
        frames = stage(fx.frames())
        assert [frame.caption for frame in frames] == captions, params
        assert [frame.meta["caption_tags"] for frame in frames] == fx.expected["tags"]


@needs_vocab
def test_parity_tag2text_user_specified_tags(fx):
    user = fx.expected.get("user_specified_tags")
    if not user:
        pytest.skip("no user_specified_tags in this fixture")
    model, tokenizer = _model(fx.folder), _tokenizer()
    gen = fx.generation()
    tokens = _image_tokens(fx.folder)
    assert user_tag_string(user["input"]) == user["tag_input"]
    first = tokens[:1]
    assert model.caption_ids(first, [user["tag_input"]], tokenizer, _settings(gen["beam"]))[0] == user["beam3_ids"]
    assert model.caption_ids(first, [user["tag_input"]], tokenizer, _settings(gen["greedy"]))[0] == user["greedy_ids"]
    stage = Tag2TextCaption(**fx.stage_params(), vocab=str(VOCAB), user_tags=user["input"])
    frame = stage(fx.frames()[:1])[0]
    assert frame.caption == user["caption_beam3"]
    long_case = user.get("long_case")
    if long_case:
        image = long_case["image"]
        got = model.caption_ids(tokens[image : image + 1], [long_case["tag_input"]], tokenizer, _settings(gen["beam"]))
        assert got[0] == long_case["beam3_ids"]
