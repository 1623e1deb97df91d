"""The spec's building blocks on pydantic: types that say what is valid in their messages
(:class:`Says`), names from a registry (:class:`OneOf`), the JSON Schema where pydantic's would be
wrong (:class:`Shown`), and searchable sections (:class:`Section`).

Pydantic's own messages ("Input should be greater than 0") do not say what is valid; the spec's
do ("must be a positive integer, got 0"), each with its dotted path and the bad value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from annotated_types import Ge, Gt, Lt, MinLen
from pydantic import (
    GetCoreSchemaHandler,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema

from orchestrator.spec.spaces import (
    again,
    invalid,
    is_space,
    problem,
    space_candidates,
    space_kind,
    space_problem,
)
from workers.registry import PLUGIN_REF, is_plugin_ref

# --------------------------------------------------------------------------- messages


class Says:
    """A type's message for a value pydantic refuses (``{v}``: the value): "must be a positive
    integer, got 0" where pydantic says "Input should be greater than 0". Problems of the
    value's own parts (a setting inside a section) and unknown keys pass through as they are."""

    KEEP = {"spec", "extra_forbidden", "unexpected_keyword_argument", "missing"}

    def __init__(self, template: str) -> None:
        self.template = template

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        def validate(value: Any, check: Any) -> Any:
            try:
                return check(value)
            except ValidationError as e:
                kept = [x for x in e.errors() if x["type"] in self.KEEP]
                says = [problem(value, self.template.replace("{v}", repr(value)))]
                raise invalid(again(kept) + (says if len(kept) < e.error_count() else [])) from None

        return core_schema.no_info_wrap_validator_function(validate, handler(source))


class OneOf:
    """One of ``names`` (a registry's, say), or a ``module:function`` plug-in if ``plugins``."""

    def __init__(self, names: tuple[str, ...] | list[str], plugins: bool = False) -> None:
        self.names, self.plugins = list(names), plugins

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        valid = ", ".join(self.names) + (" (or module:function)" if self.plugins else "")

        def check(v: Any) -> Any:
            if v in self.names or (self.plugins and is_plugin_ref(v)):
                return v
            raise PydanticCustomError("spec", "{m}", {"m": f"{v!r} is not one of: {valid}"})

        names = core_schema.literal_schema(self.names)
        ref = core_schema.str_schema(pattern=PLUGIN_REF.pattern)
        shown = core_schema.union_schema([names, ref]) if self.plugins else names
        return core_schema.no_info_plain_validator_function(check, json_schema_input_schema=shown)


class Shown:
    """How a type is shown in the JSON Schema, where pydantic's own would be wrong or noisy."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return core_schema.no_info_wrap_validator_function(
            lambda v, check: check(v), handler(source), json_schema_input_schema=self.schema
        )


_Number = StrictInt | StrictFloat  # a YAML int stays an int: the spec hash and dump keep it
PositiveInt = Annotated[StrictInt, Gt(0), Says("must be a positive integer, got {v}")]
Integer = Annotated[StrictInt, Says("must be an integer, got {v}")]
Bool = Annotated[StrictBool, Says("must be true or false, got {v}")]
Text = Annotated[StrictStr, Says("must be a string, got {v}")]
NonNegative = Annotated[
    _Number, Ge(0), Shown(core_schema.float_schema(ge=0)),
    Says("must be a number >= 0, got {v}"),
]  # fmt: skip
Fraction = Annotated[
    _Number, Ge(0), Lt(1), Shown(core_schema.float_schema(ge=0, lt=1)),
    Says("must be in [0, 1), got {v}"),
]  # fmt: skip
Positive = Annotated[
    _Number, Gt(0), Shown(core_schema.float_schema(gt=0)),
    Says("must be > 0, got {v}"),
]  # fmt: skip
Widths = Annotated[
    list[Annotated[StrictInt, Gt(0)]],
    MinLen(0),
    Says("must be a list of positive integers, got {v}"),
]
# Any value of a searchable section: the schema reads a mapping as a space (so a misspelt kind,
# {uniformm: ...}, is caught), validation leaves the value to its builder's checks.
Plain = Annotated[Any, Shown(core_schema.union_schema([
    core_schema.str_schema(), core_schema.float_schema(), core_schema.bool_schema(),
    core_schema.none_schema(), core_schema.list_schema(),
]))]  # fmt: skip
Mapping = Annotated[dict[str, Any], Says("must be a mapping, got {v}")]
Identifier = Annotated[
    StrictStr, StringConstraints(pattern=r"^[A-Za-z_]\w*$"),
    Says("must be the name of an output (an attribute or key, e.g. logits), got {v}"),
]  # fmt: skip


# --------------------------------------------------------------------------- searchable sections


class Section:
    """A searchable section: a mapping ``shape`` checks (a list of steps for the recipe), or a
    choice or grid of them (a conditional space). The user's own dict is what the spec keeps."""

    def __init__(self, shape: Any, container: type = dict) -> None:
        self.shape, self.container = shape, container

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        one = handler.generate_schema(self.shape)
        some = core_schema.list_schema(one, min_length=1)
        branches = core_schema.typed_dict_schema(
            {k: core_schema.typed_dict_field(some, required=False) for k in ("choice", "grid")},
            extra_behavior="forbid",
        )
        shown = core_schema.union_schema([one, branches])
        return core_schema.no_info_wrap_validator_function(
            self._validate, one, json_schema_input_schema=shown
        )

    def _validate(self, value: Any, check: Callable[[Any], Any]) -> Any:
        if not is_space(value):
            if not isinstance(value, self.container):
                kind = "list" if self.container is list else "mapping"
                raise invalid([problem(value, f"must be a {kind}, got {value!r}")])
            check(value)
            return value
        if space_kind(value) not in ("choice", "grid"):
            raise invalid(
                [problem(value, "a whole section can only be a choice or grid of sections")]
            )
        if why := space_problem(value):
            raise invalid([problem(value, why)])
        errors: list[InitErrorDetails] = []
        for i, branch in enumerate(space_candidates(value)):
            try:
                self._validate(branch, check)
            except ValidationError as e:
                errors += again(e.errors(), (i,))
        if errors:
            raise invalid(errors)
        return value
