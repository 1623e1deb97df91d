"""Search-space values, and the pydantic type ``Searchable[T]``: a ``T``, or a search space whose
every candidate is a ``T``.

A space is a one-key mapping: ``{choice: [...]}``, ``{grid: [...]}``, ``{uniform: [low, high]}``,
``{loguniform: [low, high]}`` or ``{randint: [low, high]}`` (inclusive bounds). The spec, its
plug-in checks and its task checks all read spaces through this module, which imports none of
them (so none of them imports another for it).

Example:
    >>> from pydantic import TypeAdapter
    >>> TypeAdapter(Searchable[int]).validate_python({"choice": [1, 2]})
    {'choice': [1, 2]}
"""

from __future__ import annotations

from typing import Annotated, Any, TypeGuard, TypeVar

from pydantic import ConfigDict, GetCoreSchemaHandler, RootModel, ValidationError
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError, core_schema

SPACE_KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
RANGES = ("uniform", "loguniform", "randint")


def is_space(value: Any) -> TypeGuard[dict[str, Any]]:
    """True for a search-space mapping such as ``{choice: [...]}``."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SPACE_KINDS


def space_kind(value: dict) -> str:
    return next(iter(value))


def space_candidates(value: dict) -> list[Any]:
    """The values a space can produce that validation can check: all of a choice or grid, the
    bounds of a range; none for a malformed space (reported by its form check)."""
    candidates = value[space_kind(value)]
    return list(candidates) if isinstance(candidates, list | tuple) else []


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def space_problem(value: dict) -> str | None:
    """What is wrong with a space's own form (not its candidates), or None."""
    kind, arg = space_kind(value), value[space_kind(value)]
    if kind in ("choice", "grid"):
        return (
            None if isinstance(arg, list) and arg else f"{kind} needs a non-empty list, got {arg!r}"
        )
    if not (isinstance(arg, list) and len(arg) == 2 and all(is_number(v) for v in arg)):
        return f"{kind} needs [low, high] numbers, got {arg!r}"
    low, high = arg
    if not low < high:
        return f"{kind} needs low < high, got [{low}, {high}]"
    if kind == "loguniform" and low <= 0:
        return f"loguniform needs low > 0, got {low}"
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        return f"randint needs integer bounds, got [{low}, {high}]"
    return None


# --------------------------------------------------------------------------- errors


def problem(value: Any, message: str, loc: tuple = (), path: str | None = None) -> InitErrorDetails:
    """One spec problem as pydantic carries it; ``path`` (absolute, dotted) overrides ``loc`` for
    a rule that reports on another field than the one being validated."""
    ctx = {"m": message, **({"path": path} if path else {})}
    return InitErrorDetails(type=PydanticCustomError("spec", "{m}", ctx), loc=loc, input=value)


def invalid(problems: list[InitErrorDetails]) -> ValidationError:
    """Several problems at once: raised inside a validator, pydantic adds them to its own."""
    return ValidationError.from_exception_data("spec", problems)


def again(errors: list[ErrorDetails], prefix: tuple = ()) -> list[InitErrorDetails]:
    """Errors caught from a nested validation, to be raised again with the others."""
    out = []
    for e in errors:
        ctx, loc = e.get("ctx") or {}, prefix + tuple(e["loc"])
        if e["type"] == "spec":
            out.append(problem(e["input"], e["msg"], loc, ctx.get("path")))
        else:  # pydantic's own (an unknown key): the spec's message is made from its type
            out.append(InitErrorDetails(type=e["type"], loc=loc, input=e["input"], ctx=ctx))
    return out


# --------------------------------------------------------------------------- the type


class SearchSpace(RootModel[dict[str, Any]]):
    """The JSON Schema of a space; validation is :func:`space_problem` (its messages name the
    kind and the bound that is wrong, which a schema error would not)."""

    model_config = ConfigDict(
        json_schema_extra=lambda s: _space_schema(s)  # type: ignore[arg-type,misc]
    )


def _space_schema(schema: dict[str, Any]) -> None:
    bounds = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
    kinds = {
        "choice": {"type": "array", "minItems": 1, "description": "sampled from these values"},
        "grid": {"type": "array", "minItems": 1, "description": "every value, once per sample"},
        "uniform": {**bounds, "description": "uniform in [low, high]"},
        "loguniform": {**bounds, "description": "log-uniform in [low, high], low > 0"},
        "randint": {**bounds, "description": "an integer in [low, high], inclusive"},
    }
    schema.clear()
    schema["description"] = "a search space: one key, choice, grid, uniform, loguniform or randint"
    schema["oneOf"] = [
        {"type": "object", "properties": {k: s}, "required": [k], "additionalProperties": False}
        for k, s in kinds.items()
    ]


class _SpaceOr:
    """Validates a value as its type, or a space's form and then each candidate as the type:
    every bad candidate is its own problem, with the candidate as the bad value."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        inner = handler(source)
        space = handler.generate_schema(SearchSpace)

        def validate(value: Any, plain: Any) -> Any:
            if not is_space(value):
                return plain(value)
            if why := space_problem(value):
                raise invalid([problem(value, why)])
            errors: list[InitErrorDetails] = []
            for candidate in space_candidates(value):
                try:
                    plain(candidate)
                except ValidationError as e:
                    errors += again(e.errors())
            if errors:
                raise invalid(errors)
            return value

        return core_schema.no_info_wrap_validator_function(
            validate, inner, json_schema_input_schema=core_schema.union_schema([inner, space])
        )


T = TypeVar("T")
Searchable = Annotated[T, _SpaceOr()]
