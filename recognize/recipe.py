"""YAML recipes: a validated description of a Pipeline.

    recipe: 1
    name: tag
    settings: {batch_size: 4, device: auto}
    stages:
      - use: ram_plus
        with: {threshold: 0.7}
    outputs:
      - use: annotated_image

Every error is a `RecipeError` whose one-line message names the place in the file
(`stages[1].with.box_threshold`, with its line number) and how to fix it.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recognize import safe_yaml
from recognize.errors import RecipeError
from recognize.stage import Device, OutputStage, Stage, no_bool_for_numbers

RECIPE_VERSION = 1


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    use: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(8, ge=1, le=4096)
    device: Device | None = None

    _no_bools = no_bool_for_numbers


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipe: Literal[1] = RECIPE_VERSION
    name: str | None = None
    description: str | None = None
    settings: Settings = Field(default_factory=Settings)
    stages: list[StageSpec] = Field(default_factory=list)
    outputs: list[StageSpec] = Field(default_factory=list)

    #: where it was read from, for error messages
    source: str | None = Field(None, exclude=True)


# -- loading ---------------------------------------------------------------------------------
def load_recipe(path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override (`dotted.path=value`) and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a recipe file" if path.is_dir() else "no such recipe file"
        raise RecipeError(f"{path}: {what}")
    try:
        text = safe_yaml.read_file(path)
    except safe_yaml.YamlProblem as exc:
        raise RecipeError(f"{path}: {exc}") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    return parse_recipe(text, source=str(path), overrides=overrides)


def parse_recipe(text: str, source: str = "<recipe>", overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Validate a recipe's text (bounded YAML: see `recognize.safe_yaml`), overrides applied."""
    try:
        node = safe_yaml.compose(text)
        data = safe_yaml.construct(node)
    except safe_yaml.YamlProblem as exc:
        raise RecipeError(f"{exc.where(source)}: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with `recipe: 1` and `stages:`; got {type(data).__name__}")
    for override in overrides:
        apply_override(data, override, source)
    locate = _Locator(node, source)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_first_error(exc, locate, prefix=())) from None
    recipe.source = source
    if not recipe.stages and not recipe.outputs:
        raise RecipeError(f"{source}: `stages` is empty; add at least one stage (see `recognize stages`)")
    _check_stages(recipe, locate)
    return recipe


def apply_override(data: dict[str, Any], override: str, source: str = "<recipe>") -> None:
    """Set `stages.1.with.box_threshold=0.3` inside the raw recipe dict (value parsed as YAML)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {override!r}: expected KEY=VALUE, e.g. stages.0.with.threshold=0.7")
    parts = key.strip().split(".")
    try:
        value = safe_yaml.load(raw) if raw.strip() else ""
    except safe_yaml.YamlProblem:
        value = raw
    target: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = ".".join(parts[: depth + 1])
        if isinstance(target, list):
            if not part.isdigit() or int(part) >= len(target):
                raise RecipeError(f"--set {key}: {here!r} is not an index of a {len(target)}-item list")
            if last:
                target[int(part)] = value
            else:
                target = target[int(part)]
        elif isinstance(target, dict):
            if last:
                target[part] = value
            else:
                if part == "with" and part not in target:
                    target[part] = {}
                if part not in target:
                    raise RecipeError(f"--set {key}: the recipe has no {here!r}")
                target = target[part]
        else:
            raise RecipeError(f"--set {key}: {'.'.join(parts[:depth])!r} is a value, not a mapping or list")


# -- validation ------------------------------------------------------------------------------
def _check_stages(recipe: Recipe, locate: _Locator) -> None:
    from recognize import plugins

    for section in ("stages", "outputs"):
        for i, spec in enumerate(getattr(recipe, section)):
            where = locate((section, i, "use"))
            try:
                cls = plugins.find_stage(spec.use)  # plain or `plugin:name`
            except plugins.AmbiguousStageError as exc:
                raise RecipeError(f"{where}: {exc}") from None
            if cls is None:
                raise RecipeError(f"{where}: unknown stage {spec.use!r}{_suggest(spec.use, plugins.stages())}")
            is_output = issubclass(cls, OutputStage)
            if section == "stages" and is_output:
                raise RecipeError(f"{where}: {spec.use!r} is an output; list it under `outputs:`")
            if section == "outputs" and not is_output:
                raise RecipeError(f"{where}: {spec.use!r} is a {cls.kind} stage; list it under `stages:`")
            _check_params(cls, spec.with_, (section, i, "with"), locate)


def _check_params(cls: type[Stage], values: Any, prefix: tuple, locate: _Locator, depth: int = 0) -> None:
    """Validate `values` as `cls.Params`, then every nested stage's parameters it names (`tagger_with`)."""
    try:
        params = cls.Params.model_validate(values)
    except ValidationError as exc:
        raise RecipeError(_first_error(exc, locate, prefix=prefix, params=cls.Params)) from None
    if depth > 4:  # a tagger whose tagger_with names a tagger ... : not a recipe anyone writes
        raise RecipeError(f"{locate(prefix)}: stages nested more than 4 levels deep")
    from recognize import plugins

    for field, (name_field, stage_name) in params.nested_stages().items():
        where = locate(prefix + (name_field,))
        try:
            inner = plugins.find_stage(stage_name)  # plain or `plugin:name`
        except plugins.AmbiguousStageError as exc:
            raise RecipeError(f"{where}: {exc}") from None
        if inner is None:
            raise RecipeError(f"{where}: unknown stage {stage_name!r}{_suggest(stage_name, plugins.stages())}")
        _check_params(inner, getattr(params, field), prefix + (field,), locate, depth + 1)


def _suggest(name: str, registry: dict[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(registry), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; available: {', '.join(sorted(registry))}"


def _first_error(exc: ValidationError, locate: _Locator, prefix: tuple, params: type[BaseModel] | None = None) -> str:
    errors = exc.errors()
    err = errors[0]
    loc = prefix + tuple(err["loc"])
    where = locate(loc)
    kind = err["type"]
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if kind == "extra_forbidden":
        fields = params.model_fields if params is not None else {}
        name = str(err["loc"][-1])
        close = difflib.get_close_matches(name, list(fields), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        valid = ", ".join(fields) if fields else "none"
        return f"{where}: unknown parameter; {hint}valid parameters: {valid}{more}"
    if kind == "missing":
        return f"{where}: required field is missing{more}"
    got = err.get("input")
    got_repr = repr(got)
    got_repr = got_repr if len(got_repr) <= 60 else got_repr[:57] + "..."
    got_text = f" (got {got_repr})" if not isinstance(got, (dict, list)) else ""
    message = err["msg"].removeprefix("Value error, ")
    return f"{where}: {message}{got_text}{more}"


class _Locator:
    """Turns a location tuple into `file:line: stages[1].with.x` using the YAML node marks."""

    def __init__(self, node: yaml.Node | None, source: str) -> None:
        self.node = node
        self.source = source

    def __call__(self, loc: tuple) -> str:
        path = ""
        for part in loc:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        line = self._line(loc)
        return f"{self.source}:{line}: {path}" if line else f"{self.source}: {path}"

    def _line(self, loc: tuple) -> int | None:
        node, line = self.node, None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                match = next((v for k, v in node.value if k.value == part), None)
                key = next((k for k, v in node.value if k.value == part), None)
                if match is None:
                    break
                line = key.start_mark.line + 1
                node = match
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line


# -- building --------------------------------------------------------------------------------
def build_stage(spec: StageSpec) -> Stage:
    """The stage a recipe entry describes (its parameters are validated again by the stage)."""
    from recognize import plugins

    return plugins.get_stage(spec.use)(spec.with_)


def pipeline_name(recipe: Recipe) -> str | None:
    """The recipe's `name:`, else its file's stem."""
    return recipe.name or (Path(recipe.source).stem if recipe.source else None)
