"""`merge_tags`: tags given with the images (sidecars, captions) merged into the predicted ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from recognize.data_engine.captions import CaptionParser
from recognize.data_engine.given_tags import (
    CaptionsFile,
    clean_tag_name,
    merge_tags,
    read_sidecar,
    vocabulary_index,
)
from recognize.frame import Frame
from recognize.hub import FileRef
from recognize.stage import Stage, StageKind, StageParams


class MergeTagsParams(StageParams):
    sidecar: bool = Field(True, description="read `<image>.txt` / `<image>.json` beside each image")
    captions: str | None = Field(None, description="captions JSONL: {\"image\": ..., \"caption\": ...} per line")
    image_root: str | None = Field(None, description="folder the JSONL's image paths are relative to "
                                   "(default: the JSONL's folder)")
    parse_captions: bool = Field(True, description="add the vocabulary tags found in the given captions")
    parse_frame_caption: bool = Field(False, description="also parse the caption already on the frame "
                                      "(e.g. from tag2text_caption)")
    vocabulary: str | None = Field(None, description="tag list file for caption parsing "
                                   "(default: the official RAM tag list)")
    only_vocabulary: bool = Field(False, description="ignore given tags that are not in the vocabulary")
    set_caption: bool = Field(True, description="give a frame without a caption the first given caption")


class MergeTags(Stage):
    """The union of the predicted tags and the tags given with each image (sidecars, captions JSONL)."""

    name: ClassVar[str] = "merge_tags"
    kind: ClassVar[StageKind] = "filter"
    Params: ClassVar[type[StageParams]] = MergeTagsParams

    def __init__(self, params: StageParams | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._captions: CaptionsFile | None = None
        self._names: list[str] | None = None
        self._index: dict[str, tuple[int, str]] | None = None  # case-folded name -> (class index, spelling)
        self._parser: CaptionParser | None = None

    def model_files(self) -> list[FileRef]:
        """The official RAM tag list when no `vocabulary` is given: needed to start with
        `only_vocabulary`, else only once a caption is parsed (so optional)."""
        p = self.params
        if p.vocabulary is not None or not (p.only_vocabulary or p.parse_captions or p.parse_frame_caption):
            return []
        return [FileRef("ram-tag-lists", "ram_tag_list.txt", optional=not p.only_vocabulary)]

    def load(self) -> None:
        if self.params.captions is not None:
            self._captions = CaptionsFile(self.params.captions, self.params.image_root)
        if self.params.vocabulary is not None or self.params.only_vocabulary:
            self.vocabulary_names()

    def vocabulary_names(self) -> list[str]:
        """The vocabulary, read on first need (no tag list is fetched when nothing needs one)."""
        if self._names is None:
            from recognize.hub import resolve_path
            from recognize.taggers.vocabulary import read_tag_list

            given = self.params.vocabulary
            path = Path(given).expanduser() if given else resolve_path(None, "ram-tag-lists", "ram_tag_list.txt")
            self._names = [name.strip() for name in read_tag_list(path)]  # positions are class indices
            self._index = vocabulary_index(self._names)
            self._parser = CaptionParser(self._names)
        return self._names

    def given(self, frame: Frame) -> tuple[list[str], list[str], list[str]]:
        """(tags, captions, origins) given with `frame`."""
        tags: list[str] = []
        captions: list[str] = []
        origins: list[str] = []
        found = [read_sidecar(frame.source)] if self.params.sidecar and not frame.source.startswith("<") else []
        if self._captions is not None:
            found.append(self._captions.find(frame.source, frame.name))
        for item in found:
            if item is not None:
                tags.extend(item.tags)
                captions.extend(item.captions)
                origins.append(item.origin or "")
        return tags, captions, origins

    def process(self, frames: list[Frame]) -> list[Frame]:
        p = self.params
        for frame in frames:
            tags, captions, origins = self.given(frame)
            texts = list(captions) if p.parse_captions else []
            if p.parse_frame_caption and frame.caption:
                texts.append(frame.caption)
            from_captions: list[str] = []
            if texts:
                self.vocabulary_names()
                for text in texts:
                    from_captions.extend(self._parser.parse(text))
            candidates = tags + from_captions
            if p.only_vocabulary:
                self.vocabulary_names()
                candidates = [c for c in candidates if clean_tag_name(c).casefold() in self._index]
            frame.tags, added = merge_tags(frame.tags, candidates, self.name, self._index)
            if p.set_caption and frame.caption is None and captions:
                frame.caption = captions[0]
            if tags or captions:
                frame.meta[self.name] = {"given": tags, "from_captions": list(dict.fromkeys(from_captions)),
                                         "added": added, "origins": origins}
        return frames

