"""A stage parameter's type, allowed values and default in plain words, for `recognize stages NAME`.

Why not print the annotation: `Literal['per_tag', 'cross_tag']`, `Optional[float]` and
`default PydanticUndefined` are Python, not an answer to "what may I write in my recipe".
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

_SIMPLE = {int: "integer", float: "number", str: "text", bool: "true or false", type(None): "none",
           typing.Any: "any value"}


def type_words(annotation: Any) -> str:
    """`int | None` -> 'integer or none'; `Literal['a', 'b']` -> "one of 'a', 'b'"; `list[str]` -> 'list of text'."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation in _SIMPLE:
        return _SIMPLE[annotation]
    if origin is typing.Literal:
        return "one of " + ", ".join(_value(a) for a in args)
    if origin is typing.Annotated:
        return type_words(args[0]) + _limits(args[1:])
    if origin in (typing.Union, types.UnionType):
        parts = [type_words(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text} or none" if type(None) in args else text
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        return "list" + (f" of {type_words(inner[0])}" if inner else "")
    if origin is dict or annotation is dict:
        return f"mapping of {type_words(args[0])} to {type_words(args[1])}" if args else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"mapping with {', '.join(annotation.model_fields)}"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _limits(metadata: typing.Iterable[Any]) -> str:
    words = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            words.append(_limits(item.metadata).strip(" ()"))
            continue
        for cls, attr, text in ((annotated_types.Ge, "ge", ">="), (annotated_types.Gt, "gt", ">"),
                                (annotated_types.Le, "le", "<="), (annotated_types.Lt, "lt", "<")):
            if isinstance(item, cls):
                words.append(f"{text} {_value(getattr(item, attr))}")
        if isinstance(item, annotated_types.MinLen):
            words.append(f"at least {item.min_length} item(s)")
    words = [w for w in words if w]
    return f" ({', '.join(words)})" if words else ""


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


def default_words(info: FieldInfo) -> str:
    """'required', or 'default: <value>' (a default factory is called)."""
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        return f"default: {_value(info.default_factory())}"  # type: ignore[call-arg]
    if info.default is PydanticUndefined:
        return "required"
    return f"default: {_value(info.default)}"


def describe_field(name: str, info: FieldInfo) -> str:
    """One line: `name: type words (constraints); default` and the field's description."""
    text = f"{name}: {type_words(info.annotation)}{_limits(info.metadata)}; {default_words(info)}"
    return f"{text}. {info.description}" if info.description else text
