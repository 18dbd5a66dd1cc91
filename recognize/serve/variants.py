"""Per-request overrides -> a Pipeline variant that shares its loaded stages with every other variant.

A request may change stage parameters exactly as `recognize run --set` does
(`stages.1.with.box_threshold=0.3`), parsed and validated by `recognize.recipe` so errors read
the same. Each distinct stage configuration is one Stage object, shared by every variant that
uses it; stages keep their weights in `recognize.stage.shared_models`, so a variant that only
changes thresholds builds cheap stage objects around the models already in memory.

What a request may NOT change: anything that selects weights, files or hardware (`checkpoint`,
`config`, `model`, `device`, font and tag-list paths...), and `settings` or `use`. Those would
let a client read server-side paths or make the server load new models.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from recognize.errors import RecipeError
from recognize.pipeline import Pipeline
from recognize.recipe import Recipe, StageSpec, build_stage, parse_recipe
from recognize.stage import OutputStage, Stage

#: parameter names that pick weights, files or hardware: fixed by the operator, never by a request
_FIXED = re.compile(r"(checkpoint|config|vocab|path|file|dir|font|tag_list|model|weights|seed|device|dtype|"
                    r"image_size|engine)", re.IGNORECASE)
_SETTABLE = re.compile(r"^(stages|outputs)\.(\d+)\.with\.([A-Za-z_][A-Za-z0-9_]*)$")


def check_override(override: str) -> None:
    """Refuse overrides a client must not make, naming the key."""
    key, sep, _ = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"set {override!r}: expected KEY=VALUE, e.g. stages.0.with.threshold=0.7")
    match = _SETTABLE.match(key)
    if match is None:
        raise RecipeError(f"set {key}: only stage parameters can be set per request "
                          "(stages.N.with.NAME or outputs.N.with.NAME)")
    if _FIXED.search(match.group(3)):
        raise RecipeError(f"set {key}: {match.group(3)!r} selects weights, files or hardware and is fixed "
                          "by the server's recipe")


def check_settable(override: str, recipe: Recipe) -> None:
    """Refuse an override of anything but a number that tunes the result (`settable_numbers`): by
    type, not by name, so a nested stage spec (region_confirm's `tagger_with`, tiled's `localizer`),
    a choice of model, a string or a plugin's own path-like parameter can never be set by a request,
    whatever it is called (`tagger_with={checkpoint: /etc/passwd}` would load a server-side path)."""
    from recognize import plugins

    key = override.partition("=")[0].strip()
    match = _SETTABLE.match(key)
    if match is None:  # check_override refused it already
        return
    section, index, name = match.group(1), int(match.group(2)), match.group(3)
    specs = recipe.stages if section == "stages" else recipe.outputs
    if index >= len(specs):
        return
    settable = [number["name"] for number in settable_numbers(plugins.get_stage(specs[index].use))]
    if name not in settable:
        raise RecipeError(f"set {key}: {name!r} is fixed by the server's recipe; a request sets only the numbers "
                          f"that tune results ({', '.join(settable) or 'none for this stage'})")


def spec_key(spec: StageSpec, device: str | None) -> str:
    """One string per distinct stage configuration (what makes two stage objects interchangeable)."""
    return json.dumps({"use": spec.use, "with": spec.with_, "device": device}, sort_keys=True, default=str)


@dataclass
class Variant:
    """A pipeline for one override set, and the key of each of its stages (for batching and caching)."""

    overrides: tuple[str, ...]
    recipe: Recipe
    pipeline: Pipeline
    stage_keys: list[str]

    @property
    def stages(self) -> list[Stage]:
        return self.pipeline.stages


class Variants:
    """The recipe as read at start-up, and the variants requests have asked for (bounded LRU)."""

    def __init__(self, recipe_path: str | Path, device: str | None = None, max_variants: int = 16) -> None:
        path = Path(recipe_path)
        if not path.is_file():
            raise RecipeError(f"{path}: no such recipe file")
        self.source = str(path)
        self.text = path.read_text(encoding="utf-8")
        self.device_override = device
        self.max_variants = max_variants
        self._stages: dict[str, Stage] = {}
        self._variants: OrderedDict[tuple[str, ...], Variant] = OrderedDict()
        self._lock = threading.Lock()
        self.base = self.get(())

    def get(self, overrides: Sequence[str]) -> Variant:
        """The variant for `overrides` (built on first use). Raises `RecipeError` naming the field."""
        key = tuple(overrides)
        with self._lock:
            found = self._variants.get(key)
            if found is not None:
                self._variants.move_to_end(key)
                return found
        for override in key:
            check_override(override)
        settings = [f"settings.device={self.device_override}"] if self.device_override else []
        recipe = parse_recipe(self.text, source=self.source, overrides=[*settings, *key])
        for override in key:
            check_settable(override, recipe)
        device = recipe.settings.device
        with self._lock:
            stages = [self._stage(spec, device) for spec in recipe.stages]
            outputs = [self._stage(spec, device) for spec in recipe.outputs]
            pipeline = Pipeline(stages, [o for o in outputs if isinstance(o, OutputStage)],
                                batch_size=recipe.settings.batch_size, device=device,
                                name=recipe.name or Path(self.source).stem)
            variant = Variant(key, recipe, pipeline, [spec_key(s, device) for s in recipe.stages])
            self._variants[key] = variant
            while len(self._variants) > self.max_variants:
                self._variants.popitem(last=False)
            self._forget_unused_stages()
            return variant

    def _stage(self, spec: StageSpec, device: str | None) -> Stage:
        key = spec_key(spec, device)
        stage = self._stages.get(key)
        if stage is None:
            stage = self._stages[key] = build_stage(spec)
        return stage

    def _forget_unused_stages(self) -> None:
        used = {id(s) for v in self._variants.values() for s in [*v.pipeline.stages, *v.pipeline.outputs]}
        for key in [k for k, s in self._stages.items() if id(s) not in used]:
            del self._stages[key]

    def describe(self) -> dict:
        """The recipe as the server runs it (for GET /v1/recipe and the web page)."""
        from recognize import plugins

        base = self.base
        stages = []
        for i, (spec, stage) in enumerate(zip(base.recipe.stages, base.pipeline.stages, strict=True)):
            stages.append({"index": i, "use": spec.use, "kind": stage.kind, "scope": stage.scope,
                           "with": _redacted(spec.with_), "params": _redacted(stage.params.model_dump(mode="json")),
                           "settable": settable_numbers(type(stage))})
        outputs = [{"index": i, "use": spec.use, "with": _redacted(spec.with_)}
                   for i, spec in enumerate(base.recipe.outputs)]
        registry = plugins.stages()
        return {"name": base.pipeline.name, "source": Path(self.source).name,
                "settings": base.recipe.settings.model_dump(mode="json"), "stages": stages, "outputs": outputs,
                "annotated_image": "annotated_image" in registry}


def _redacted(params: dict) -> dict:
    """Parameters as a client may see them: server-side paths and configs are not disclosed."""
    return {k: ("(set by the server)" if _FIXED.search(k) and isinstance(v, (str, dict)) else v)
            for k, v in params.items()}


def settable_numbers(cls: type[Stage]) -> list[dict]:
    """The parameters a request may set: the stage's numbers, with their bounds (the page draws a
    slider for each), except those that size the work or pick weights or hardware (`_FIXED`)."""
    schema = cls.Params.model_json_schema()
    out = []
    for name, prop in schema.get("properties", {}).items():
        if _FIXED.search(name):
            continue
        options = prop.get("anyOf", [prop])
        number = next((o for o in options if o.get("type") in ("number", "integer")), None)
        if number is None:
            continue
        out.append({"name": name, "type": number["type"], "minimum": number.get("minimum"),
                    "maximum": number.get("maximum"), "description": prop.get("description")})
    return out
