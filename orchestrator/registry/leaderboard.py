"""The sweep's table of trials and the reports published on its parent run.

One :class:`TrialRow` per ended trial (what selection ranks and ``podium leaderboard`` prints);
after promotion the parent run gets the leaderboard, the Pareto front and the learning curves
(:mod:`tracking.report` draws them), or the plain leaderboard CSV where plotting fails.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from typing import Any

from orchestrator.execution.ledger import FinishedTrial
from orchestrator.execution.results import result_metrics
from orchestrator.search.space import flatten_params, resolve
from tracking import keys
from tracking.selection import Candidate
from tracking.store import Store
from tracking.writer import RunWriter

log = logging.getLogger(__name__)


@dataclass
class TrialRow:
    trial_id: str
    run_id: str | None
    status: str
    metrics: dict[str, float]
    params: dict[str, Any]
    error: str | None = None


def trial_rows(
    finished: dict[str, FinishedTrial], template: dict[str, Any], writer: RunWriter
) -> list[TrialRow]:
    """One row per ended trial, in the order Tune created them (trial ids count up)."""
    rows = []
    for trial_id in sorted(finished):
        trial = finished[trial_id]
        error = str(trial.last.get(keys.FAILED) or "") or trial.error
        rows.append(
            TrialRow(
                trial_id,
                writer.run_id(trial_id),
                trial.status,
                result_metrics(trial.last),
                flatten_params(resolve(template, trial.config)) if trial.config else {},
                error or None,
            )
        )
    return rows


def publish_sweep_reports(
    store: Store,
    parent_id: str,
    rows: list[TrialRow],
    candidates: list[Candidate],
    policy: Any,
    champion: str | None,
    metric: str,
) -> None:
    """The parent run's reports: leaderboard CSV, Pareto-front and learning-curve plots (of
    ``metric``, the sweep's search metric), the trial ``champion`` (who holds the alias now, if
    one of this sweep's) marked; the plain leaderboard of ``rows`` if plotting fails.
    """
    from tracking.report import publish_reports

    try:
        publish_reports(store.client, parent_id, candidates, policy, champion, metric)
    except Exception as e:  # noqa: BLE001 - plots are a convenience; the sweep's results stand
        log.warning("could not publish the sweep's plots (%s); logging the plain leaderboard", e)
        store.log_artifact_text(parent_id, leaderboard_csv(rows), keys.LEADERBOARD_ARTIFACT)


def leaderboard_csv(rows: list[TrialRow]) -> str:
    metric_keys = sorted({k for r in rows for k in r.metrics})
    param_keys = sorted({k for r in rows for k in r.params})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial_id", "run_id", "status", *metric_keys, *param_keys, "error"])
    for r in rows:
        w.writerow(
            [
                r.trial_id,
                r.run_id,
                r.status,
                *(r.metrics.get(k, "") for k in metric_keys),
                *(r.params.get(k, "") for k in param_keys),
                r.error or "",
            ]
        )
    return buf.getvalue()
