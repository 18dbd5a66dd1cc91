"""Model cards for the built-in taggers: official checkpoints and the assets they read.

The tag lists are pinned to a commit of the official repository, so their sha256 and sizes are
exact. The `.pth` checkpoints are published without checksums; their sha256 and size are left
unknown (the download is then checked only for completeness against the server's length).
"""

from __future__ import annotations

from recognize.hub import ModelCard, ModelFile

_RAM_COMMIT = "7cb804a8609e9f4b1a50b7f31436d2df40bb9481"
_RAM_DATA = f"https://raw.githubusercontent.com/xinyu1205/recognize-anything/{_RAM_COMMIT}/ram/data"
_RAM_SPACE = "https://huggingface.co/spaces/xinyu1205/recognize-anything/resolve/main"
_HOMEPAGE = "https://github.com/xinyu1205/recognize-anything"
_NO_CHECKSUM = " The publisher gives no sha256 or size for this checkpoint, so neither is checked."

CLIP_VIT_B_16_SHA256 = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"


def _checkpoint(name: str, url: str, description: str) -> ModelCard:
    """A released `<name>.pth` (the stages ask for exactly that file name), published without checksums."""
    return ModelCard(
        name=name,
        files=(ModelFile(f"{name}.pth", url),),
        description=description + _NO_CHECKSUM,
        homepage=_HOMEPAGE,
        license="Apache-2.0",
    )


CARDS: list[ModelCard] = [
    _checkpoint(
        "ram_swin_large_14m",
        f"{_RAM_SPACE}/ram_swin_large_14m.pth",
        "Recognize Anything (RAM), Swin-L, 14M images, 4585 tags.",
    ),
    _checkpoint(
        "ram_plus_swin_large_14m",
        "https://huggingface.co/xinyu1205/recognize-anything-plus-model/resolve/main/ram_plus_swin_large_14m.pth",
        "Recognize Anything Plus (RAM++), Swin-L, 14M images, open-set tag descriptions.",
    ),
    _checkpoint(
        "tag2text_swin_14m",
        f"{_RAM_SPACE}/tag2text_swin_14m.pth",
        "Tag2Text, Swin-B, 14M images: 3429 tags and tag-guided captions.",
    ),
    ModelCard(
        name="ram-tag-lists",
        files=(
            ModelFile(
                "ram_tag_list.txt",
                f"{_RAM_DATA}/ram_tag_list.txt",
                sha256="5d96d2f7225527480ad773aaac76b6e5c08a18adf6eae9ca7d2ab923d5e7bd8b",
                size=41904,
            ),
            ModelFile(
                "ram_tag_list_chinese.txt",
                f"{_RAM_DATA}/ram_tag_list_chinese.txt",
                sha256="c912657a0f30be7b2f5df6ccffa17e1d84561d0bea508528e38b6d0d711bcfbe",
                size=44181,
            ),
            ModelFile(
                "ram_tag_list_threshold.txt",
                f"{_RAM_DATA}/ram_tag_list_threshold.txt",
                sha256="b6f81d0de1bc7f9c251af512c413eae976c77dbfbadf700d4e3d90510f4c6447",
                size=22016,
            ),
            ModelFile(
                "tag2text_ori_tag_list.txt",
                f"{_RAM_DATA}/tag2text_ori_tag_list.txt",
                sha256="7d05c7cb88ed46a2aee1434776964f6bdbda0c0f4233c8633e109084382d3a45",
                size=29062,
            ),
        ),
        description="RAM/RAM++ tag list (English, Chinese, per-class thresholds) and the Tag2Text tag list.",
        homepage=_HOMEPAGE,
        license="Apache-2.0",
    ),
    ModelCard(
        name="bert-base-uncased-vocab",
        files=(
            ModelFile(
                "vocab.txt",
                "https://huggingface.co/bert-base-uncased/resolve/main/vocab.txt",
                sha256="07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            ),
        ),
        description="WordPiece vocabulary of bert-base-uncased (the taggers' text tokenizer).",
        homepage="https://huggingface.co/bert-base-uncased",
        license="Apache-2.0",
    ),
    ModelCard(
        name="clip-vit-b-16",
        files=(
            ModelFile(
                "ViT-B-16.pt",
                f"https://openaipublic.azureedge.net/clip/models/{CLIP_VIT_B_16_SHA256}/ViT-B-16.pt",
                sha256=CLIP_VIT_B_16_SHA256,
            ),
        ),
        description="OpenAI CLIP ViT-B/16: its text tower embeds open-set tag prompts and descriptions.",
        homepage="https://github.com/openai/CLIP",
        license="MIT",
    ),
]
