"""Every number a recipe can set has sane bounds, and `true` is never read as 1.

An unbounded number is a way to blow up a run from a recipe (json `indent: 100000000` wrote 1 GB per
image). This walks every registered stage and output of this repository, so a new parameter
without bounds fails here.
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path

import annotated_types
import pytest
from pydantic import ValidationError

from recognize import plugins

REPO = Path(__file__).resolve().parents[1]


def _is_number(annotation) -> bool:
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(kinds) and all(a in (int, float) for a in kinds)
    return False


def numeric_fields():
    for name, cls in sorted(plugins.stages().items()):
        source = Path(inspect.getsourcefile(cls)).resolve()
        if REPO not in source.parents or "tests" in source.relative_to(REPO).parts:
            continue  # another distribution's stage, or a test double
        for field, info in cls.Params.model_fields.items():
            if _is_number(info.annotation):
                yield name, cls, field, info


FIELDS = list(numeric_fields())


def test_the_walk_finds_the_stages():
    stages = {name for name, *_ in FIELDS}
    assert {"json", "coco", "ram_plus", "region_outliers"} <= stages


@pytest.mark.parametrize("name,cls,field,info", FIELDS, ids=[f"{n}.{f}" for n, _, f, _ in FIELDS])
def test_every_number_has_both_bounds(name, cls, field, info):
    low = any(isinstance(m, (annotated_types.Ge, annotated_types.Gt)) for m in info.metadata)
    high = any(isinstance(m, (annotated_types.Le, annotated_types.Lt)) for m in info.metadata)
    assert low and high, f"{name}.{field} needs ge/gt and le/lt bounds"


@pytest.mark.parametrize("name,cls,field,info", FIELDS, ids=[f"{n}.{f}" for n, _, f, _ in FIELDS])
def test_booleans_are_not_numbers(name, cls, field, info):
    with pytest.raises(ValidationError, match="expected a number, got a boolean"):
        cls.Params.model_validate({field: True})


def test_json_indent_bomb_is_refused():
    with pytest.raises(ValidationError, match="less than or equal to 16"):
        plugins.get_stage("json").Params.model_validate({"indent": 100_000_000})


@pytest.mark.parametrize("name,field,value", [
    ("ram_plus", "thresholds", {"cat": True}),
    ("tag2text", "delete_tag_index", [1, True]),
])
def test_booleans_inside_containers_of_numbers_are_refused(name, field, value):
    with pytest.raises(ValidationError, match="expected a number, got a boolean"):
        plugins.get_stage(name).Params.model_validate({field: value})


def test_fields_that_take_any_value_still_take_booleans():
    params = plugins.get_stage("region_confirm").Params.model_validate({"tagger_with": {"flag": True}})
    assert params.tagger_with == {"flag": True}
