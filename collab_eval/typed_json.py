"""The typed JSON boundary: what the pydantic declarations of records, summary.json and
calibrate's JSON share.

Each JSON document the project writes and reads back is a pydantic model, declared once. This
module holds what they have in common: thresholds, which JSON holds as a number or as
"inf" / "-inf", and the one place where pydantic's ValidationError becomes a message naming
the place (``systems['s'].tasks['t'].never``) and what was expected there.
"""
from __future__ import annotations

import math
import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, PlainSerializer, ValidationError
from pydantic_core import PydanticCustomError


def threshold_from_json(value: Any) -> Any:
    """A threshold as JSON holds it: a number, or "inf" / "-inf" (JSON has no infinity)."""
    if isinstance(value, str) and value in ("inf", "-inf"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("threshold", 'expected a number, "inf" or "-inf"')
    return value


def infinity_as_text(value: Any) -> Any:
    """±inf as "inf" / "-inf"; anything else (NaN included, which JSON writing then refuses) as it is."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


# τ = +inf (never retransmit) and -inf (always) are valid thresholds.
Threshold = Annotated[float, BeforeValidator(threshold_from_json), PlainSerializer(infinity_as_text)]


def is_none(value: Any) -> bool:
    """For ``Field(exclude_if=is_none)``: a key that JSON leaves out rather than writes as null."""
    return value is None


# ----- ValidationError -> one message --------------------------------------------------------
def kind(value: Any) -> str:
    """A JSON value's kind, as the messages say it."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


EXPECTED = {"dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object",
            "dataclass_type": "an object", "list_type": "a list", "string_type": "a string",
            "float_type": "a number", "float_parsing": "a number", "int_type": "a whole number",
            "int_parsing": "a whole number", "int_from_float": "a whole number", "bool_type": "a boolean",
            "bool_parsing": "a boolean"}


def problem(model: type[BaseModel], err: ValidationError, top: str = "the top level") -> str:
    """The first thing ``err`` found wrong in data given to ``model``, as ``place: what``.

    A place is written as the JSON is read: ``.field``, ``['key']`` in an object of names,
    ``[i]`` in a list; a field a model inlines (``INLINED``: its keys sit beside the model's
    own in JSON) adds nothing. A missing field says ``'field' is missing``; a missing object
    reads as null (``expected an object, got null``), as it always has."""
    error = err.errors(include_url=False)[0]
    loc = tuple(error["loc"])
    if error["type"] == "missing":
        owner = model_at(model, loc[:-1])
        if owner is not None and expects_object(field_annotation(owner, loc[-1])):
            return f"{place(model, loc, top)}: expected an object, got null"
        return f"{place(model, loc[:-1], top)}: {loc[-1]!r} is missing"
    what = EXPECTED.get(error["type"])
    expected = f"expected {what}" if what else error["msg"]  # a custom check (a threshold) says it itself
    return f"{place(model, loc, top)}: {expected}, got {kind(error['input'])}"


def place(model: type[BaseModel], loc: tuple, top: str = "the top level") -> str:
    text, annotation = "", model
    for part in loc:
        annotation = unwrap(annotation)
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if part not in getattr(annotation, "INLINED", ()):
                text += f".{part}"
            annotation = field_annotation(annotation, part) or Any
        elif origin is dict:
            text += f"[{part!r}]"
            annotation = typing.get_args(annotation)[1]
        elif origin is list:
            text += f"[{part}]"
            annotation = typing.get_args(annotation)[0]
        else:
            text += f"[{part!r}]" if isinstance(part, str) else f"[{part}]"
            annotation = Any
    return text.lstrip(".") or top


def model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model found at ``loc`` (None when no model is there)."""
    annotation: Any = model
    for part in loc:
        annotation = unwrap(annotation)
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            annotation = field_annotation(annotation, part) or Any
        elif origin in (dict, list):
            annotation = typing.get_args(annotation)[-1]
        else:
            return None
    annotation = unwrap(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def field_annotation(model: type[BaseModel], name) -> Any:
    field = model.model_fields.get(name) if isinstance(name, str) else None
    return None if field is None else field.annotation


def unwrap(annotation: Any) -> Any:
    """``X`` of ``Annotated[X, ...]`` and of ``X | None``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def expects_object(annotation: Any) -> bool:
    annotation = unwrap(annotation)
    return typing.get_origin(annotation) is dict or annotation is dict or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel))
