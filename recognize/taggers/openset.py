"""Open-set label embeddings for RAM (CLIP prompt ensembles) and RAM++ (LLM tag descriptions).

API:
- `ClipTextEncoder(model, tokenizer, identity)`: any open_clip model with `encode_text`; `encode(texts)`
  returns L2-normalised float32 embeddings. `ClipTextEncoder.openai_vit_b16(path)` builds open_clip's
  `ViT-B-16` from OpenAI's released `ViT-B-16.pt` (the `clip-vit-b-16` hub card), text tower only.
- `TEMPLATES` (the official 63 prompt templates), `processed_name`, `article`, `template_sentences`.
- `name_embeddings(names, encoder)` -> [N,512]: per name, the 63 sentences are encoded, normalised,
  averaged, normalised again (RAM open-set, `openset_utils.py`).
- `read_descriptions(path)` -> [(name, [descriptions])] from the official JSON (a list of one-key
  objects; a plain `{name: [...]}` object is accepted too), every class with the same count.
- `description_embeddings(items, encoder)` -> [N*D,512], class-major, each description normalised,
  no averaging (RAM++ open-set; the reweighting happens in the model).
- `EmbeddingCache`: results are cached on disk under `<recognize cache>/embeddings`, keyed by a hash of
  the texts, the mode and the encoder identity, so a recipe with a fixed tag list pays once.

The official code runs OpenAI's `clip` package, which keeps fp16 weights on CUDA; here the encoder runs
in float32, so GPU-built official embeddings can differ from ours in the 3rd-4th decimal.
The official open-set threshold is 0.5 for every class (`OPENSET_THRESHOLD`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recognize.errors import ModelFileError, RecognizeError
from recognize.hub import sha256_file
from recognize.taggers.vocabulary import OPENSET_THRESHOLD

__all__ = [
    "OPENSET_THRESHOLD",
    "TEMPLATES",
    "ClipTextEncoder",
    "EmbeddingCache",
    "article",
    "description_embeddings",
    "name_embeddings",
    "processed_name",
    "read_descriptions",
    "template_sentences",
]

#: The official prompt ensemble (63 templates); `{article}` is "a" or "an".
TEMPLATES: tuple[str, ...] = (
    "There is {article} {} in the scene.",
    "There is the {} in the scene.",
    "a photo of {article} {} in the scene.",
    "a photo of the {} in the scene.",
    "a photo of one {} in the scene.",
    "itap of {article} {}.",
    "itap of my {}.",
    "itap of the {}.",
    "a photo of {article} {}.",
    "a photo of my {}.",
    "a photo of the {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a good photo of {article} {}.",
    "a good photo of the {}.",
    "a bad photo of {article} {}.",
    "a bad photo of the {}.",
    "a photo of a nice {}.",
    "a photo of the nice {}.",
    "a photo of a cool {}.",
    "a photo of the cool {}.",
    "a photo of a weird {}.",
    "a photo of the weird {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of a clean {}.",
    "a photo of the clean {}.",
    "a photo of a dirty {}.",
    "a photo of the dirty {}.",
    "a bright photo of {article} {}.",
    "a bright photo of the {}.",
    "a dark photo of {article} {}.",
    "a dark photo of the {}.",
    "a photo of a hard to see {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of {article} {}.",
    "a low resolution photo of the {}.",
    "a cropped photo of {article} {}.",
    "a cropped photo of the {}.",
    "a close-up photo of {article} {}.",
    "a close-up photo of the {}.",
    "a jpeg corrupted photo of {article} {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of {article} {}.",
    "a blurry photo of the {}.",
    "a pixelated photo of {article} {}.",
    "a pixelated photo of the {}.",
    "a black and white photo of the {}.",
    "a black and white photo of {article} {}.",
    "a plastic {}.",
    "the plastic {}.",
    "a toy {}.",
    "the toy {}.",
    "a plushie {}.",
    "the plushie {}.",
    "a cartoon {}.",
    "the cartoon {}.",
    "an embroidered {}.",
    "the embroidered {}.",
    "a painting of the {}.",
    "a painting of a {}.",
)


def article(name: str) -> str:
    """'an' when the *original* name starts with a lowercase vowel (so 'Aerial ...' gets 'a')."""
    return "an" if name[:1] in ("a", "e", "i", "o", "u") else "a"


def processed_name(name: str) -> str:
    """'_' -> ' ', '/' -> ' or ', lowercase, trailing dots removed."""
    return name.replace("_", " ").replace("/", " or ").lower().rstrip(".")


def template_sentences(name: str) -> list[str]:
    """The 63 sentences for one name; those starting with 'a'/'the' get the prefix 'This is '."""
    filled = [t.format(processed_name(name), article=article(name)) for t in TEMPLATES]
    return ["This is " + s if s.startswith("a") or s.startswith("the") else s for s in filled]


class ClipTextEncoder:
    """A CLIP text tower (open_clip) that turns sentences into unit-length embeddings."""

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
        identity: str,
        device: str = "cpu",
        batch_size: int = 256,
    ) -> None:
        # a factory defers building (and reading weights) until something is not in the cache
        self._model = model.eval().to(device) if isinstance(model, nn.Module) else None
        self._factory = None if isinstance(model, nn.Module) else model
        self.tokenizer = tokenizer
        self.identity = identity
        self.device = device
        self.batch_size = batch_size

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            assert self._factory is not None
            self._model = self._factory().eval().to(self.device)
        return self._model

    @classmethod
    def openai_vit_b16(cls, path: str | os.PathLike[str] | None = None, device: str = "cpu") -> ClipTextEncoder:
        """open_clip `ViT-B-16` with OpenAI's weights (`ViT-B-16.pt`; None -> the hub card's file)."""
        import open_clip

        from recognize.hub import get_card, resolve_path

        if path is None:  # the hub verified the file against the card's sha256: that is its identity
            digest = get_card("clip-vit-b-16").file("ViT-B-16.pt").sha256
            path = resolve_path(None, "clip-vit-b-16", "ViT-B-16.pt")
        else:
            path = resolve_path(str(path), "clip-vit-b-16", "ViT-B-16.pt")
            digest = sha256_file(path)

        def build() -> nn.Module:
            from open_clip.model import build_model_from_openai_state_dict

            state = read_clip_state(path)
            try:
                model = build_model_from_openai_state_dict(state, cast_dtype=None).float()
            except (KeyError, RuntimeError, ValueError) as exc:
                raise ModelFileError(f"{path}: not OpenAI CLIP ViT-B/16 weights ({_first_line(exc)})") from None
            model.visual = nn.Identity()  # text tower only
            return model

        identity = f"open_clip:ViT-B-16:openai:{digest}"
        return cls(build, open_clip.get_tokenizer("ViT-B-16"), identity, device=device)

    @classmethod
    def open_clip_model(
        cls, model_name: str, checkpoint: str | os.PathLike[str], device: str = "cpu"
    ) -> ClipTextEncoder:
        """Any open_clip architecture (e.g. a registered config) with weights from a local file."""
        import open_clip

        path = Path(checkpoint)
        if not path.is_file():
            raise ModelFileError(f"{path}: no such CLIP weights file")

        def build() -> nn.Module:
            from recognize.weights_file import read_weights

            try:
                return open_clip.create_model(model_name, pretrained=str(path), device="cpu")
            except Exception as exc:  # noqa: BLE001 - open_clip passes on torch's errors of any type
                read_weights(path, "CLIP checkpoint", mmap=False)  # a bad file: says what it looks like
                raise ModelFileError(f"{path}: not weights for open_clip model {model_name!r} "
                                     f"({_first_line(exc)})") from None

        identity = f"open_clip:{model_name}:{sha256_file(path)}"
        return cls(build, open_clip.get_tokenizer(model_name), identity, device=device)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, D] float32, each row L2-normalised. Texts longer than the context are truncated."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start : start + self.batch_size])).to(self.device)
            emb = self.model.encode_text(tokens).float()
            out.append(emb / emb.norm(dim=-1, keepdim=True))
        return torch.cat(out).cpu() if out else torch.empty(0, 0)


def read_clip_state(path: Path) -> dict[str, torch.Tensor]:
    """OpenAI ships a TorchScript archive: read its tensors with `torch.jit.load` (TorchScript's own
    restricted loader, no Python pickle); a plain state dict goes through `read_weights`
    (`torch.load(weights_only=True)`, one-line errors that say what a bad file looks like)."""
    from recognize.weights_file import describe_bad_checkpoint, read_weights

    if _is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception:  # noqa: BLE001 - TorchScript raises RuntimeError and others for damaged archives
            raise ModelFileError(f"{path}: unreadable CLIP weights: {describe_bad_checkpoint(path)}") from None
    obj = read_weights(path, "CLIP checkpoint", mmap=False)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{path}: not CLIP weights (expected a state dict of tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_torchscript(path: Path) -> bool:
    """A zip whose entries hold TorchScript code (`<name>/code/...`), as OpenAI's CLIP releases."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


class EmbeddingCache:
    """Embeddings on disk, keyed by encoder identity + mode + texts."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        if root is None:
            from recognize.hub import cache_dir

            root = cache_dir() / "embeddings"
        self.root = Path(root)

    @staticmethod
    def key(identity: str, mode: str, texts: Any) -> str:
        payload = json.dumps({"encoder": identity, "mode": mode, "texts": texts}, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get_or_compute(self, identity: str, mode: str, texts: Any, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        from recognize.atomic import atomic_write

        path = self.root / f"{self.key(identity, mode, texts)}.pt"
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed
                path.unlink(missing_ok=True)
        value = compute()
        with atomic_write(path, "wb") as handle:
            torch.save(value, handle)
        return value


def name_embeddings(
    names: Sequence[str], encoder: ClipTextEncoder, cache: EmbeddingCache | None = None
) -> torch.Tensor:
    """RAM open-set label embeddings [N, D] from tag names (63-template ensembles)."""
    names = list(names)

    def compute() -> torch.Tensor:
        # every name's sentences in one stream, so the encoder runs full batches, not one call per name
        sentences = [s for name in names for s in template_sentences(name)]
        means = encoder.encode(sentences).view(len(names), len(TEMPLATES), -1).mean(dim=1)
        return means / means.norm(dim=-1, keepdim=True)

    if cache is None:
        return compute()
    return cache.get_or_compute(encoder.identity, "ram-templates-v1", names, compute)


def read_descriptions(path: str | os.PathLike[str]) -> list[tuple[str, list[str]]]:
    """The official LLM tag-description JSON: `[{"tag": ["desc", ...]}, ...]`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecognizeError(f"{path}: no such descriptions file") from None
    except (OSError, ValueError) as exc:
        raise RecognizeError(f"{path}: not a JSON descriptions file ({exc})") from None
    if isinstance(data, dict):
        data = [{k: v} for k, v in data.items()]
    items: list[tuple[str, list[str]]] = []
    if not isinstance(data, list) or not data:
        raise RecognizeError(f"{path}: expected a non-empty list of {{tag: [descriptions]}} objects")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise RecognizeError(f"{path}: entry {i} must be an object with exactly one tag")
        (name, descriptions), = entry.items()
        if not isinstance(descriptions, list) or not descriptions or not all(isinstance(d, str) for d in descriptions):
            raise RecognizeError(f"{path}: tag {name!r} needs a non-empty list of description strings")
        items.append((str(name), descriptions))
    counts = {len(d) for _, d in items}
    if len(counts) != 1:
        first = len(items[0][1])
        odd = next(n for n, d in items if len(d) != first)
        raise RecognizeError(
            f"{path}: every tag needs the same number of descriptions (RAM++ reshapes them per class); "
            f"{items[0][0]!r} has {first}, {odd!r} has {len(dict(items)[odd])}"
        )
    return items


def description_embeddings(
    items: Sequence[tuple[str, Sequence[str]]], encoder: ClipTextEncoder, cache: EmbeddingCache | None = None
) -> torch.Tensor:
    """RAM++ open-set label embeddings [N*D, D_clip], class-major, each description normalised."""
    items = [(name, list(desc)) for name, desc in items]
    texts = [d for _, desc in items for d in desc]

    def compute() -> torch.Tensor:
        return encoder.encode(texts)

    if cache is None:
        return compute()
    return cache.get_or_compute(encoder.identity, "ram-plus-descriptions-v1", items, compute)
