"""The localizer a `tiled` stage wraps: `{use: NAME, with: {...}}`, checked against that stage's own Params.

Checked when the recipe loads (not when the first image arrives), so a typo in the inner
parameters is the same one-line recipe error a typo anywhere else is.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class LocalizerSpec(BaseModel):
    """Which localizer stage to run on the slices, and its parameters (as in a recipe's stage entry)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    use: str = Field(description="name of a localizer stage, e.g. grounding_dino")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with", description="that stage's parameters")

    @model_validator(mode="after")
    def _known_localizer(self) -> LocalizerSpec:
        stage = stage_class(self.use)
        if stage.name == "tiled":
            raise ValueError("`tiled` cannot wrap itself; name the localizer to run on the slices")
        try:
            stage.Params.model_validate(self.with_)
        except ValidationError as error:
            raise ValueError(describe(error, stage)) from None
        return self


def stage_class(name: str) -> type:
    from recognize import plugins
    from recognize.errors import RecognizeError

    try:
        stage = plugins.find_stage(name)  # plain or `plugin:name`
    except RecognizeError as error:  # two plugins register the plain name: the message lists the choices
        raise ValueError(str(error)) from None
    if stage is None:
        registry = plugins.stages()
        localizers = sorted(n for n, cls in registry.items() if cls.kind == "localizer" and n != "tiled")
        close = difflib.get_close_matches(name, localizers, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown stage {name!r}; {hint}localizers: {', '.join(localizers) or 'none installed'}")
    if stage.kind != "localizer":
        raise ValueError(f"{name!r} is a {stage.kind} stage; `tiled` runs a localizer")
    return stage


def describe(error: ValidationError, stage: type) -> str:
    """The inner stage's first problem, on one line, with the path inside `with` and a spelling hint."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in ("with", *first["loc"]))
    if first["type"] == "extra_forbidden":
        fields = list(stage.Params.model_fields)
        close = difflib.get_close_matches(str(first["loc"][-1]), fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{where}: unknown parameter of {stage.name}{hint}"
    return f"{where}: {first['msg']} ({stage.name})"
