"""Name-based registries: the one plug-in mechanism of Podium.

A registry maps a stable name (what a spec says and what MLflow records) to an entry. Users add
their own entries through a spec value of the form ``module:function``, loaded only when named.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from workers.errors import UnknownNameError, WorkerError

T = TypeVar("T")


class Registry(Generic[T]):
    """A plain mapping from name to entry, with errors that list the valid names.

    Example:
        >>> models = Registry[str]("model.arch")
        >>> models.add("mlp", "an MLP")
        >>> models.get("mlp")
        'an MLP'
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind}: {name!r} is registered twice")
        self._entries[name] = entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(entry: T) -> T:
            self.add(name, entry)
            return entry

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# A plug-in reference: a dotted module path, a colon, an attribute name. The one parser of it:
# the spec's checks, its JSON Schema (``PLUGIN_REF.pattern``) and the trials all use this.
PLUGIN_REF = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*)$")


def parse_plugin_ref(value: object) -> tuple[str, str] | None:
    """``(module, attribute)`` of a plug-in reference, or None for anything else.

    Example:
        >>> parse_plugin_ref("team.models:bag"), parse_plugin_ref("a b:c")
        (('team.models', 'bag'), None)
    """
    match = PLUGIN_REF.match(value) if isinstance(value, str) else None
    return (match[1], match[2]) if match else None


def is_plugin_ref(value: object) -> bool:
    """True for a user plug-in reference ``module:function``."""
    return parse_plugin_ref(value) is not None


def load_plugin(ref: str) -> Callable:
    """Import ``module:function`` and return the function.

    Raises:
        WorkerError: ``ref`` is no reference, or the module or the attribute cannot be
            imported, with the reason.
    """
    parsed = parse_plugin_ref(ref)
    if parsed is None:
        raise WorkerError(f"{ref!r} is not a plug-in reference (module:function)")
    module_name, attr = parsed
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise WorkerError(
            f"cannot import plug-in module {module_name!r} (from {ref!r}): {e}"
        ) from e
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise WorkerError(
            f"module {module_name!r} has no attribute {attr!r} (from {ref!r})"
        ) from None
    if not callable(fn):
        raise WorkerError(f"plug-in {ref!r} is not callable")
    return fn


def declared_settings(fn: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """A builder's settings: ``({name: default or inspect.Parameter.empty}, takes_any)``, where
    ``takes_any`` says it also takes ``**kwargs``. Its first two parameters (a model builder's
    input shape and output width) are Podium's, not settings.

    Example:
        >>> def bag(input_shape, num_classes, vocab_size, dim=32): ...
        >>> declared_settings(bag)
        ({'vocab_size': <class 'inspect._empty'>, 'dim': 32}, False)
    """
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return {}, True  # no signature to read (a builtin): let the call decide
    named = [
        p
        for p in params[2:]
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return {p.name: p.default for p in named}, takes_any
