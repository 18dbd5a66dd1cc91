"""The built-in cards match the official files they point at (checked against ../shared/reference)."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from recognize import hub
from recognize.taggers.cards import CARDS


def test_cards_are_registered_through_the_hook():
    from recognize.plugins import model_cards

    registered = model_cards()
    for card in CARDS:
        assert registered[card.name] is card
    assert {"ram_swin_large_14m", "ram_plus_swin_large_14m", "tag2text_swin_14m", "ram-tag-lists",
            "bert-base-uncased-vocab", "clip-vit-b-16"} <= set(registered)


TAG_LISTS = next(card for card in CARDS if card.name == "ram-tag-lists")


@pytest.mark.parametrize("item", TAG_LISTS.files, ids=lambda f: f.filename)
def test_tag_list_checksums_match_the_official_files(reference, item):
    official = (reference / "data" / "ram" / "data" / item.filename).read_bytes()
    assert len(official) == item.size
    assert hashlib.sha256(official).hexdigest() == item.sha256
    assert item.url.endswith(f"/ram/data/{item.filename}") and "7cb804a8609e9f4b1a50b7f31436d2df40bb9481" in item.url


def test_official_tag_lists_placed_by_hand_verify_offline(reference, cache_home):
    card = TAG_LISTS
    for item in card.files:
        target = hub.file_path(card, item.filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(reference / "data" / "ram" / "data" / item.filename, target)
        assert hub.ensure_file(card, item.filename) == target  # offline: verified, not fetched
    assert target.parent == cache_home / "models" / "ram-tag-lists"


def test_checkpoints_carry_no_invented_checksums():
    for name in ("ram_swin_large_14m", "ram_plus_swin_large_14m", "tag2text_swin_14m"):
        [item] = hub.get_card(name).files
        assert item.filename == f"{name}.pth" and item.sha256 is None and item.size is None
        assert item.url.startswith("https://huggingface.co/") and item.url.endswith(item.filename)
    [clip] = hub.get_card("clip-vit-b-16").files
    assert clip.sha256 is not None and clip.sha256 in clip.url
