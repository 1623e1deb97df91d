"""The function Ray Tune runs for each trial: the sampled config resolved, the worker recipe run.

A trial's own failure is reported, not raised: a bug in its code would fail every retry alike, and
a storage fault (a full disk) every trial alike, so the driver ends the trial or the sweep on the
report instead (:mod:`orchestrator.execution.fail_fast`); only a transient error is raised for Tune
to retry. (:mod:`workers.trial.trainable` is the worker side this calls into.)
"""

from __future__ import annotations

import traceback
from typing import Any

from orchestrator.registry.teachers import own_plugins
from orchestrator.search.space import resolve
from orchestrator.spec import ExperimentSpec
from tracking import keys


def make_trainable(
    template: dict[str, Any], spec: ExperimentSpec, extras: dict[str, Any] | None = None
) -> Any:
    """The function Tune runs per trial: resolve the sampled config, then run the worker recipe.

    ``extras`` are driver-prepared inputs (registry teachers' local copies) for the trial context.
    """
    from orchestrator.search.pbt import tracked_hparams

    threads = max(1, int(spec.resources.cpu))
    extras = dict(extras or {})
    if spec.search.scheduler == "pbt":
        extras["tracked_hparams"] = tracked_hparams(template)
    extras["plugins"] = own_plugins(spec)  # what a registry teacher's metadata may name
    extras["search_metric"] = (spec.search.metric, spec.search.mode)  # training.patience's

    metric = spec.search.metric

    def podium_trial(config: dict[str, Any]) -> None:
        from orchestrator.execution.fail_fast import is_transient
        from tracking.faults import storage_fault
        from workers.trial.trainable import TrialContext, run_trial

        try:
            run_trial(resolve(template, config), TrialContext(threads=threads, extras=dict(extras)))
        except Exception as e:
            fault = storage_fault(e)
            if fault is not None:
                _report_storage_fault(fault, metric)  # the driver ends the sweep on it
            elif is_transient(e):
                raise  # Tune retries it from the last checkpoint
            else:
                _report_code_error(e, metric)

    return podium_trial


def _report_code_error(error: Exception, metric: str) -> None:
    """End the trial failed with an error of its own code, instead of raising it: a retry would
    raise it again (:mod:`orchestrator.execution.fail_fast`)."""

    from ray import tune

    tune.report(
        {
            metric: float("nan"),  # Tune checks every result for the search metric
            keys.FAILED: f"{type(error).__name__}: {error}",
            keys.ERROR_KIND: "code",
            keys.TRACEBACK: "".join(traceback.format_exception(error))[-5000:],
        }
    )


def _report_storage_fault(fault: Any, metric: str) -> None:
    """Tell the driver the trial cannot write (a full disk, a read-only folder): every trial
    and every retry would fail the same way until space is freed, so the driver ends the sweep
    at this report, leaving the trial unfinished for ``--resume``
    (:mod:`orchestrator.execution.fail_fast`)."""
    from ray import tune

    tune.report(
        {
            metric: float("nan"),  # Tune checks every result for the search metric
            keys.FAILED: f"{fault.cause}: {fault.detail}",
            keys.ERROR_KIND: "storage",
            keys.STORAGE_FAULT: fault.as_text(),
        }
    )
