"""Carries a selection decision out in the MLflow Model Registry.

The decisions themselves are made by :mod:`tracking.selection` (pure); this adapter registers the
winner's logged model once as a version with its model card, and moves the aliases: the sweep's
winner is a challenger that becomes ``champion`` only if it beats the current one on the same test
split (:func:`promote_challenger`); the replaced champion keeps ``previous`` and :func:`rollback`
swaps them back.

Example:
    >>> p = promote_challenger(uri, "digits", model_uri, challenger, Policy())  # doctest: +SKIP
    >>> p.decision.promote, p.champion                                          # doctest: +SKIP
    (True, '3')
"""

from __future__ import annotations

import json
import logging
import tempfile
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracking import keys
from tracking.registry.lock import (
    RegistryError,
    error_code,
    is_transient,
    promotion_lock,
    registry_client,
    retried,
)
from tracking.selection import (
    Candidate,
    Decision,
    Policy,
    check_policy,
    decide_promotion,
    policy_from,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Promotion:
    """The registry after a sweep's promotion: the version registered for the winner, and whether
    it became ``alias`` (``champion_version`` is who holds the alias now)."""

    model_name: str
    version: str
    alias: str
    run_id: str
    model_uri: str  # models:/<name>@<alias>
    promoted: bool = True
    champion_version: str | None = None
    reasons: tuple[str, ...] = field(default_factory=tuple)


def register_and_alias(
    uri: str,
    model_uri: str,
    model_name: str,
    alias: str,
    run_id: str,
    decision: Decision,
    tags: dict[str, str] | None = None,
    policy: Policy | None = None,
) -> Promotion:
    """Register the sweep winner ``decision.winner`` (logged at ``model_uri``) as a challenger
    and give it ``alias`` only if it beats the current holder (see :func:`promote_challenger`).

    Args:
        tags: extra model-card tags (spec hash, experiment, trial id).
        policy: the promotion policy; None reads it from the sweep's spec snapshot on the
            parent run of ``run_id`` (default policy if there is none).
    """
    client = registry_client(uri)
    winner = decision.winner
    assert winner is not None
    policy = policy or _policy_of_run(client, run_id) or Policy()
    card = {**_card_of_run(uri, client, run_id, policy), **(tags or {})}
    challenger = Candidate(
        winner.trial_id,
        winner.metrics,
        winner.status,
        run_id,
        winner.config,
        winner.split or card.get(keys.TAG_SPLIT),
    )
    out = promote_challenger(uri, model_name, model_uri, challenger, policy, card, alias)
    return Promotion(
        model_name,
        out.version,
        alias,
        run_id,
        f"models:/{model_name}@{alias}",
        out.decision.promote,
        out.champion,
        out.decision.reasons,
    )


def _policy_of_run(client: Any, run_id: str) -> Policy | None:
    """The promotion policy in the spec snapshot of ``run_id``'s sweep (its parent run)."""
    import yaml

    try:
        run = client.get_run(run_id)
        parent = run.data.tags.get(keys.TAG_PARENT_RUN, run_id)
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(parent, keys.SPEC_ARTIFACT, tmp)
            section = (yaml.safe_load(Path(path).read_text()) or {}).get("promotion") or {}
    except Exception as e:  # noqa: BLE001 - no snapshot: the caller falls back to the default
        log.info("no spec snapshot for run %s: %s", run_id, e)
        return None
    section = {"objectives": [{"metric": keys.TEST_ACCURACY, "mode": "max"}], **section}
    return None if check_policy(section) else policy_from(section)


def _card_of_run(uri: str, client: Any, run_id: str, policy: Policy) -> dict[str, str]:
    """Model-card tags from the trial run: data set and split, optimizer, recipe, run links."""
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001
        return {}
    p = run.data.params
    recipe = {k: v for k, v in sorted(p.items()) if k.startswith("recipe")}
    card = {
        keys.TAG_DATASET: p.get("task", ""),
        keys.TAG_OPTIMIZER: p.get("optimizer.name", ""),
        keys.TAG_RECIPE: json.dumps(recipe) if recipe else "[]",
        keys.TAG_POLICY: json.dumps(_policy_json(policy)),
        keys.TAG_PARENT_RUN: run.data.tags.get(keys.TAG_PARENT_RUN, ""),
    }
    if "task" in p and "training.seed" in p:
        card[keys.TAG_SPLIT] = split_label(p["task"], p["training.seed"])
    if uri.startswith(("http://", "https://")):
        exp = run.info.experiment_id
        card[keys.TAG_RUN_LINK] = f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"
    else:
        card[keys.TAG_RUN_LINK] = f"runs:/{run_id}"
    return {k: v[:4900] for k, v in card.items()}


def _policy_json(policy: Policy) -> dict[str, Any]:
    return {
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in policy.objectives],
        "constraints": list(policy.constraints),
        "strategy": policy.strategy,
        "pick": policy.pick,
        "weights": list(policy.weights) if policy.weights else None,
        "min_improvement": policy.min_improvement,
    }


PREVIOUS_ALIAS = "previous"


@dataclass(frozen=True)
class PromotionOutcome:
    """What :func:`promote_challenger` did: the version it registered (or found), the decision,
    and which versions hold the aliases now."""

    model_name: str
    version: str
    decision: Decision
    champion: str | None
    previous: str | None
    created: bool  # False when the run was already registered (an idempotent re-run)


def _ensure_model(client: Any, name: str) -> None:
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - does not exist (yet)
        try:
            client.create_registered_model(name, description="Registered by Podium.")
        except Exception as e:  # noqa: BLE001
            if error_code(e) != "RESOURCE_ALREADY_EXISTS" and not is_transient(e):
                raise RegistryError(f"cannot create registered model {name!r}: {e}") from e


def _alias_version(client: Any, name: str, alias: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as e:  # noqa: BLE001
        if error_code(e) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise RegistryError(f"cannot read alias {alias!r} of {name!r}: {e}") from e


def _version_of_run(client: Any, name: str, run_id: str) -> Any | None:
    """The version already registered from ``run_id`` (what makes a re-run idempotent)."""
    found = retried(
        lambda: client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"),
        f"listing {name}",
    )
    mine = [v for v in found if v.tags.get(keys.TAG_SOURCE_RUN) == run_id]
    return min(mine, key=lambda v: int(v.version)) if mine else None


def version_of_run(uri: str, model_name: str, run_id: str) -> str | None:
    """The version of ``model_name`` registered from ``run_id``, if any."""
    try:
        mv = _version_of_run(registry_client(uri), model_name, run_id)
    except RegistryError:
        return None
    return str(mv.version) if mv else None


def version_candidate(mv: Any) -> Candidate:
    """A registered version as selection sees it: its card's metrics and test split."""
    n = len(keys.TAG_METRIC_PREFIX)
    metrics = {}
    for k, v in mv.tags.items():
        if k.startswith(keys.TAG_METRIC_PREFIX):
            with suppress(ValueError):
                metrics[k[n:]] = float(v)
    return Candidate(f"v{mv.version}", metrics, run_id=mv.run_id, split=mv.tags.get(keys.TAG_SPLIT))


def split_label(task: Any, seed: Any) -> str:
    """How a test split is named on the card: the data set and the seed that fixes its split."""
    return f"{task}:seed={seed}"


def promote_challenger(
    uri: str,
    model_name: str,
    model_uri: str,
    challenger: Candidate,
    policy: Policy,
    card: dict[str, str] | None = None,
    alias: str = "champion",
) -> PromotionOutcome:
    """Register ``challenger``'s model and make it ``alias`` if it beats the current holder.

    The version is created once per run (a re-run finds it), carries the model card (``card``
    tags, its metrics, its test split, the decision) and gets the alias only when
    :func:`~tracking.selection.decide_promotion` says so; the replaced champion keeps alias
    ``previous``. Safe to call from many processes at once.

    Raises:
        RegistryError: the registry refused a write or the lock could not be taken.
    """
    client = registry_client(uri)
    retried(lambda: _ensure_model(client, model_name), f"creating {model_name}")
    with promotion_lock(uri, model_name):
        mv, created = _version_of_run(client, model_name, challenger.run_id or ""), False
        if mv is None:
            mv, created = _create_version(client, model_name, model_uri, challenger, card), True
        holder = _alias_version(client, model_name, alias)
        incumbent = version_candidate(holder) if holder else None
        ch = version_candidate(mv)
        decision = decide_promotion(
            Candidate(
                ch.trial_id,
                challenger.metrics,
                challenger.status,
                challenger.run_id,
                challenger.config,
                challenger.split,
            ),
            incumbent,
            policy,
        )
        if decision.promote:
            if holder is not None:
                retried(
                    lambda: client.set_registered_model_alias(
                        model_name, PREVIOUS_ALIAS, holder.version
                    ),
                    "setting previous",
                )
            retried(
                lambda: client.set_registered_model_alias(model_name, alias, mv.version),
                f"setting {alias}",
            )
        _record_decision(client, model_name, mv.version, decision, card)
        champ = _alias_version(client, model_name, alias)
        expected = mv.version if decision.promote else (holder.version if holder else None)
        found = str(champ.version) if champ else None
        if found != (str(expected) if expected else None):  # someone wrote outside the lock
            raise RegistryError(
                f"alias {alias!r} of {model_name!r} moved during the promotion "
                f"(expected v{expected}, found v{found})"
            )
        prev = _alias_version(client, model_name, PREVIOUS_ALIAS)
    return PromotionOutcome(
        model_name,
        str(mv.version),
        decision,
        str(champ.version) if champ else None,
        str(prev.version) if prev else None,
        created,
    )


def _create_version(
    client: Any, name: str, model_uri: str, challenger: Candidate, card: dict[str, str] | None
) -> Any:
    tags = {**(card or {}), keys.TAG_SOURCE_RUN: challenger.run_id or ""}
    if challenger.split:
        tags[keys.TAG_SPLIT] = challenger.split
    for k, v in challenger.metrics.items():
        tags[keys.TAG_METRIC_PREFIX + k] = repr(float(v))
    # A logged model's URI (models:/m-<id>) must travel with its id: an HTTP tracking server
    # rejects the source otherwise ("The model_id request parameter must identify ...").
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    return retried(
        lambda: client.create_model_version(
            name,
            model_uri,
            run_id=challenger.run_id,
            tags=tags,
            model_id=model_id,
            description=_card_text(challenger, card),
        ),
        f"registering a version of {name}",
    )


def _card_text(c: Candidate, card: dict[str, str] | None) -> str:
    lines = [
        f"Trial `{c.config.get('trial_id', c.trial_id)}` of run `{c.run_id}`, "
        f"test split `{c.split}`.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.6g} |" for k, v in sorted(c.metrics.items())]
    lines += [f"- {k}: {v}" for k, v in sorted((card or {}).items())]
    return "\n".join(lines)


def _record_decision(
    client: Any, name: str, version: str, decision: Decision, card: dict[str, str] | None
) -> None:
    text = "; ".join(decision.reasons)[:4900]  # MLflow caps tag values at 5000 characters
    retried(
        lambda: client.set_model_version_tag(name, version, keys.TAG_DECISION, text),
        "recording the decision",
    )
    mv = client.get_model_version(name, version)
    verdict = "promoted" if decision.promote else "not promoted"
    note = f"\n\n**Promotion decision** ({verdict}): {text}"
    if note not in (mv.description or ""):
        retried(
            lambda: client.update_model_version(name, version, (mv.description or "") + note),
            "updating the model card",
        )


def rollback(uri: str, model_name: str, alias: str = "champion") -> tuple[str, str]:
    """Swap ``alias`` and ``previous``: the previous champion serves again (and a second
    rollback undoes the first). Returns (new champion version, new previous version).

    Raises:
        RegistryError: there is no champion or no previous version to go back to.
    """
    client = registry_client(uri)
    with promotion_lock(uri, model_name):
        champ = _alias_version(client, model_name, alias)
        prev = _alias_version(client, model_name, PREVIOUS_ALIAS)
        if champ is None or prev is None:
            have = [f"v{v.version}" if v else "none" for v in (champ, prev)]
            raise RegistryError(
                f"cannot roll back {model_name!r}: it needs both @{alias} and "
                f"@{PREVIOUS_ALIAS} (found {have[0]} and {have[1]})"
            )
        retried(
            lambda: client.set_registered_model_alias(model_name, alias, prev.version), "rollback"
        )
        retried(
            lambda: client.set_registered_model_alias(model_name, PREVIOUS_ALIAS, champ.version),
            "rollback",
        )
        retried(
            lambda: client.set_model_version_tag(
                model_name,
                prev.version,
                keys.TAG_DECISION,
                f"rolled back: v{prev.version} replaces v{champ.version} as {alias}",
            ),
            "rollback",
        )
    return str(prev.version), str(champ.version)
