"""What changes a spec before it is validated: ``--set PATH=VALUE`` overrides, and the storage
location a cluster's nodes carry in their environment.

Example:
    >>> raw = {"name": "x"}
    >>> apply_overrides(raw, ["search.num_samples=4", "model.hidden=[32, 16]"])
    >>> raw
    {'name': 'x', 'search': {'num_samples': 4}, 'model': {'hidden': [32, 16]}}
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from orchestrator.errors import Problem, SpecError
from orchestrator.spec.spaces import is_space, space_candidates, space_kind

# A cluster's nodes carry where Tune's storage is (the team stack's MinIO bucket), so the specs
# run there need not name it; a spec's own value, or a --set, wins.
STORAGE_VARIABLE = "PODIUM_STORAGE_PATH"


def storage_from_environment(raw: dict[str, Any]) -> bool:
    """Fill ``cluster.storage_path`` from ``$PODIUM_STORAGE_PATH`` where the spec leaves it out:
    with ``PODIUM_STORAGE_PATH=s3://tune/runs``, ``{"cluster": {"address": "auto"}}`` becomes
    ``{"cluster": {"address": "auto", "storage_path": "s3://tune/runs"}}``; validation then
    checks the value as if the spec had it. Returns whether it filled it.
    """
    value = os.environ.get(STORAGE_VARIABLE)
    cluster = raw.get("cluster")
    if not value or not (cluster is None or isinstance(cluster, dict)):
        return False  # a malformed section is reported as such by validation
    if (cluster or {}).get("storage_path") is not None:
        return False
    raw["cluster"] = {**(cluster or {}), "storage_path": value}
    return True


# The key that says which branch a choice of sections is: an override of it picks branches.
SELECTORS = {"optimizer": "name", "model": "arch"}


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    """Apply ``path=value`` overrides in place.

    Values are YAML: ``4``, ``[64, 32]``, ``{choice: [a, b]}``. Under a choice of whole sections
    (the default spec's ``optimizer: {choice: [{name: nag, ...}, {name: adam, ...}]}``):

    - ``optimizer.lr=0.01`` sets ``lr`` in every branch;
    - ``optimizer.name=adam`` (the section's selector: ``name``, a model's ``arch``) keeps the
      branches whose selector is that value, or, when none is, replaces the choice by the one
      section ``{name: adam}`` (its other keys take their defaults);
    - ``optimizer=...`` replaces the whole section.

    Raises:
        SpecError: a malformed override, or a path through something that is not a mapping.
    """
    problems = []
    for item in overrides:
        dotted, sep, text = item.partition("=")
        if not sep or not dotted or any(not part for part in dotted.split(".")):
            problems.append(
                Problem(
                    "--set", item, f"expected PATH=VALUE (e.g. search.num_samples=4), got {item!r}"
                )
            )
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        problems += _override(raw, dotted.split("."), value, dotted, item)
    if problems:
        raise SpecError(problems)


def _override(
    node: dict[str, Any], parts: list[str], value: Any, dotted: str, item: str
) -> list[Problem]:
    """Set ``parts`` under ``node`` to ``value``, into every branch of a choice of sections."""
    head, rest = parts[0], parts[1:]
    if not rest:
        node[head] = value
        return []
    child: Any = node.get(head)
    if is_space(child) and space_kind(child) in ("choice", "grid") and _all_dicts(child):
        return _override_branches(node, head, rest, value, dotted, item)
    if not isinstance(child, dict):
        if head in node and child is not None:
            return [
                Problem(
                    dotted,
                    item,
                    f"cannot set inside {head!r}: it is {child!r}, not a mapping; set the "
                    f"whole of it instead (--set {dotted.removesuffix('.' + '.'.join(rest))}=...)",
                )
            ]
        node[head] = child = {}
    return _override(child, rest, value, dotted, item)


def _all_dicts(space: dict[str, Any]) -> bool:
    branches = space_candidates(space)
    return bool(branches) and all(isinstance(b, dict) for b in branches)


def _override_branches(
    node: dict[str, Any], head: str, rest: list[str], value: Any, dotted: str, item: str
) -> list[Problem]:
    kind = space_kind(node[head])
    branches = space_candidates(node[head])
    if len(rest) == 1 and rest[0] == SELECTORS.get(head):
        # Picking a branch: keep those with this selector, else one section of it alone.
        kept = [b for b in branches if b.get(rest[0]) == value]
        node[head] = {kind: kept} if len(kept) > 1 else (kept[0] if kept else {rest[0]: value})
        return []
    problems: list[Problem] = []
    for branch in branches:
        problems += _override(branch, rest, value, dotted, item)
    return problems
