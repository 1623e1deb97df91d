"""What a Tune result says about a trial: its status, its metrics, its error. Pure, no Ray."""

from __future__ import annotations

from typing import Any

from tracking import keys

# Result keys that travel as tags, not metrics.
STRING_KEYS = {
    keys.NODE: keys.TAG_NODE,
    keys.DEVICE: keys.TAG_DEVICE,
    keys.CPU_MODEL: keys.TAG_CPU_MODEL,
    keys.DEVICE_REASON: keys.TAG_DEVICE_REASON,
    keys.TRACEBACK: keys.TAG_TRACEBACK,
}
# Tune's own bookkeeping in every result: not metrics of the model.
_TUNE_KEYS = {
    "training_iteration",
    "time_this_iter_s",
    "time_total_s",
    "timestamp",
    "pid",
    "iterations_since_restore",
    "time_since_restore",
    "timesteps_total",
    "episodes_total",
    "timesteps_since_restore",
    "done",
    "should_checkpoint",
}


def trial_status(last_result: dict[str, Any] | None, errored: bool) -> str:
    """completed (reached the final evaluation), stopped (by the scheduler), or failed."""
    if errored or (last_result or {}).get(keys.FAILED):
        return "failed"
    return "completed" if (last_result or {}).get(keys.DONE) else "stopped"


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics of a Tune result that MLflow records: everything the trial reported
    except markers, tags and Tune's bookkeeping."""
    skip = _TUNE_KEYS | set(STRING_KEYS) | {keys.DONE, keys.FAILED, keys.EPOCH, keys.REPLAY}
    return {
        k: float(v)
        for k, v in result.items()
        if k not in skip
        and "/" not in k
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
    }


def trial_error_text(trial: Any) -> str:
    """The last line of a trial's error, which names the exception and its message."""
    path = getattr(trial, "error_file", None)
    try:
        text = open(path).read().strip() if path else ""
    except OSError:
        text = ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "trial errored (no error file)"
