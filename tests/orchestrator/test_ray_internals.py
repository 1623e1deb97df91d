"""Every private name of Ray (2.58) that Podium relies on (listed in
:mod:`orchestrator.execution._ray`, the one package that uses them), checked against the
installed Ray.

A Ray upgrade that renames or drops one fails here, naming the symbol and what Podium does with
it, instead of somewhere in a sweep (issue 29: the first step of putting Ray's internals behind one
gate). Module-level names are imported; a class's private attributes must be a class attribute or
be assigned as ``self.<name>`` somewhere in the class or its bases (read from the installed
source: most are set in ``__init__``, which would need a running Tune to instantiate).
"""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

from orchestrator.execution._ray import CONTROLLER, PRIVATE_ATTRIBUTES, PRIVATE_NAMES


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _has(cls: type, attribute: str) -> bool:
    if hasattr(cls, attribute):
        return True
    assigned = re.compile(rf"self\.{re.escape(attribute)}\s*(:[^=]+)?=[^=]")  # annotated too
    return any(
        assigned.search(inspect.getsource(base))
        for base in cls.__mro__
        if base.__module__.startswith("ray.")
    )


@pytest.mark.parametrize(("module", "name", "use"), PRIVATE_NAMES)
def test_each_private_module_name_podium_uses_is_in_the_installed_ray(module, name, use):
    assert hasattr(importlib.import_module(module), name), (
        f"the installed Ray has no {module}.{name} ({use}): revisit that use"
    )


@pytest.mark.parametrize(("cls", "attribute", "use"), PRIVATE_ATTRIBUTES)
def test_each_private_attribute_podium_uses_is_in_the_installed_ray(cls, attribute, use):
    assert _has(_class(cls), attribute), (
        f"the installed Ray's {cls} has no {attribute} ({use}): revisit that use"
    )


def test_the_check_fails_for_a_name_ray_does_not_have():
    assert not _has(_class(CONTROLLER), "_no_such_attribute_podium_uses")


def test_no_module_outside_the_gate_names_a_private_ray_symbol():
    """Private Ray imports, and the private attributes listed in the gate, appear only under
    orchestrator/execution/_ray/ (the tests that force Tune's races aside)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    private_import = re.compile(
        r"(from\s+ray[\w.]*\s+import\s+[^#\n]*\b_[a-zA-Z]\w*|\bray(\.\w+)*\._[a-z]\w*)"
    )
    attributes = {a for _, a, _ in PRIVATE_ATTRIBUTES}
    private_attribute = re.compile(r"\.(" + "|".join(map(re.escape, attributes)) + r")\b")
    found = []
    for package in ("orchestrator", "workers", "tracking"):
        for path in sorted((root / package).rglob("*.py")):
            if "_ray" in path.relative_to(root).parts:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if private_import.search(code) or private_attribute.search(code):
                    found.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not found, "private Ray names outside orchestrator/execution/_ray/:\n" + "\n".join(found)
