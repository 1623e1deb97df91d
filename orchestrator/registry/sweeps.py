"""A finished sweep read back from MLflow: its trials as leaderboard rows and as selection
candidates, its promotion settings (from the spec snapshot on its parent run), the policy file
``podium promote --policy`` names. :mod:`orchestrator.api` offers these to notebooks and the CLI."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import Problem, SpecError, UnknownName
from orchestrator.registry.leaderboard import TrialRow
from tracking import keys
from tracking.constraints import parse_constraint
from tracking.selection import (
    Candidate,
    check_policy,
    mark_candidates,
    policy_from,
    validation_twin,
    within_sweep,
)
from tracking.store import Store, resolve_tracking_uri


def leaderboard(
    experiment: str,
    tracking_uri: str | None = None,
    top: int | None = 10,
    workdir: str | os.PathLike = ".",
) -> list[TrialRow]:
    """The newest sweep's trials of ``experiment``, best first (completed trials by the sweep's
    first promotion objective; stopped and failed trials after them).

    Raises:
        UnknownName: no experiment of that name (the message lists the known ones).
    """
    store = existing_store(resolve_tracking_uri(tracking_uri, None, workdir), experiment)
    exp = store.client.get_experiment_by_name(experiment)
    if exp is None:
        raise _unknown_experiment(store, experiment)
    runs = store.client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{keys.TAG_ROLE}` = '{keys.ROLE_SWEEP}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return []
    children = store.child_runs(exp.experiment_id, runs[0].info.run_id)
    rows = [
        TrialRow(
            tid,
            r.info.run_id,
            r.data.tags.get(keys.TAG_STATUS, r.info.status.lower()),
            dict(r.data.metrics),
            dict(r.data.params),
            r.data.tags.get(keys.TAG_ERROR),
        )
        for tid, r in children.items()
    ]
    settings = _sweep_settings(store, runs[0])
    objective = _policy_section(settings)["objectives"][0]
    metric = objective["metric"]
    if settings.get("selection_split") != "test":  # ranked as the sweep chose: on validation
        twin = validation_twin(metric)
        metric = twin if any(twin in r.metrics for r in rows) else metric
    rows.sort(key=rank_by(metric, objective.get("mode", "max")))
    return rows[:top] if top else rows


def leaderboard_metrics(
    experiment: str, tracking_uri: str | None = None, workdir: str | os.PathLike = "."
) -> list[str]:
    """The metrics :func:`leaderboard` rows are shown with (:func:`headline_metrics` of the
    newest sweep's spec)."""
    store = Store(resolve_tracking_uri(tracking_uri, None, workdir))
    _, parent = _newest_sweep(store, experiment)
    settings = _sweep_settings(store, parent)
    return headline_metrics(_policy_section(settings), settings.get("search_metric"))


def rank_by(metric: str, mode: str = "max") -> Callable[[TrialRow], tuple]:
    """A sort key: completed trials first, best ``metric`` first (``mode``), then trial id."""

    def key(row: TrialRow) -> tuple:
        order = {"completed": 0, "stopped": 1}.get(row.status, 2)
        v = row.metrics.get(metric)
        score = (-v if mode == "max" else v) if v is not None and math.isfinite(v) else math.inf
        # Ties (common on small test splits) go by trial id, as selection breaks them, so the
        # top row is the trial the sweep promoted.
        return (order, score, row.trial_id)

    return key


def headline_metrics(section: dict[str, Any], search_metric: str | None = None) -> list[str]:
    """The metrics a leaderboard shows: every one the promotion policy ranks or constrains by,
    then the search metric."""
    out = [o["metric"] for o in section.get("objectives") or [] if isinstance(o, dict)]
    for text in section.get("constraints") or []:
        try:
            out.append(parse_constraint(text).metric)
        except ValueError:
            continue
    if search_metric:
        out.append(search_metric)
    return list(dict.fromkeys(out))


def load_policy(path: str | Path) -> dict:
    """A ``--policy`` YAML file: the spec's ``promotion`` keys, bare or under ``promotion:``.

    Raises:
        SpecError: unreadable, not a mapping, or any bad key (all of them, as ``policy.<key>``).
    """
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SpecError([Problem("--policy", str(path), f"cannot read policy file: {e}")]) from e
    section = raw.get("promotion", raw) if isinstance(raw, dict) else raw
    if not isinstance(section, dict):
        raise SpecError([Problem("--policy", raw, "must be a mapping of promotion keys")])
    section = {"objectives": [{"metric": keys.TEST_ACCURACY, "mode": "max"}], **section}
    problems = [Problem(f"policy.{k}", v, m) for k, v, m in check_policy(section)]
    if problems:
        raise SpecError(problems)
    return section


def _newest_sweep(store: Store, experiment: str) -> tuple[str, Any]:
    """(experiment id, newest sweep parent run) of ``experiment``."""
    exp = store.client.get_experiment_by_name(experiment)
    runs = (
        []
        if exp is None
        else store.client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{keys.TAG_ROLE}` = '{keys.ROLE_SWEEP}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    )
    if exp is None:
        raise _unknown_experiment(store, experiment)
    if not runs:
        raise UnknownName(f"experiment {experiment!r} in {store.uri} has no sweep yet")
    return exp.experiment_id, runs[0]


def existing_store(uri: str, experiment: str) -> Store:
    """The store at ``uri`` for a command that only reads it: an embedded SQLite store that does
    not exist is not created (MLflow would make an empty one) but reported.

    Raises:
        UnknownName: the store does not exist, so neither does ``experiment``.
    """
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        path = path if path.is_absolute() else Path.cwd() / path
        if not path.exists():
            raise UnknownName(
                f"no experiment named {experiment!r} in {uri}: that store does not exist yet "
                "(podium run creates it; --tracking-uri or MLFLOW_TRACKING_URI name another)"
            )
    return Store(uri)


def _unknown_experiment(store: Store, experiment: str) -> UnknownName:
    known = sorted(e.name for e in store.client.search_experiments() if e.name != "Default")
    return UnknownName(
        f"no experiment named {experiment!r} in {store.uri}; known: {', '.join(known) or 'none'}"
    )


def _sweep_settings(store: Store, parent: Any) -> dict:
    """The promotion section of the sweep's spec snapshot ({} if none)."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = store.client.download_artifacts(parent.info.run_id, keys.SPEC_ARTIFACT, tmp)
            spec = yaml.safe_load(Path(path).read_text()) or {}
    except Exception:  # noqa: BLE001 - an old sweep without a snapshot: defaults
        return {}
    search = spec.get("search") or {}
    return {
        "name": spec.get("name"),
        "search_metric": search.get("metric", keys.VAL_ACCURACY),
        **(spec.get("promotion") or {}),
    }


def sweep_candidates(
    experiment: str, tracking_uri: str | None = None, workdir: str | os.PathLike = "."
) -> tuple[list, dict, Any, Store]:
    """The newest sweep's trials as selection candidates, its promotion settings, its parent run
    and the store."""
    store = existing_store(resolve_tracking_uri(tracking_uri, None, workdir), experiment)
    exp_id, parent = _newest_sweep(store, experiment)
    children = store.child_runs(exp_id, parent.info.run_id)
    cands = [
        Candidate(
            tid,
            dict(r.data.metrics),
            r.data.tags.get(keys.TAG_STATUS, "failed"),
            r.info.run_id,
            dict(r.data.params),
        )
        for tid, r in sorted(children.items())
    ]
    return cands, _sweep_settings(store, parent), parent, store


def leaderboard_marks(
    experiment: str,
    tracking_uri: str | None = None,
    workdir: str | os.PathLike = ".",
    policy_path: str | None = None,
) -> dict:
    """Per trial id: Pareto-optimal or not, and why an excluded trial cannot win (the constraint
    it breaks, stopped, failed, NaN), under the sweep's promotion policy."""
    cands, settings, _, _ = sweep_candidates(experiment, tracking_uri, workdir)
    section = load_policy(policy_path) if policy_path else _policy_section(settings)
    policy = policy_from(section)
    if settings.get("selection_split") != "test":
        policy = within_sweep(policy, cands)
    return mark_candidates(cands, policy)


def _policy_section(settings: dict) -> dict:
    """The sweep's policy keys (its spec was validated; an unreadable one gives the default)."""
    default = {"objectives": [{"metric": keys.TEST_ACCURACY, "mode": "max"}]}
    section = {**default, **settings}
    return default if check_policy(section) else section
