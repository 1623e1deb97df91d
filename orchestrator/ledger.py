"""The sweep's record of finished trials: one JSON line per trial, in the Tune experiment folder.

Ray Tune lets go of a trial once it has terminated (:mod:`orchestrator.tune_memory`), so the
driver's memory does not grow with the number of trials. What the end of the sweep still needs
of such a trial (its last result, its config, where its checkpoint is) is appended here first,
and read back once, after the sweep: by selection, promotion and ``--resume``. The trial's
per-epoch metrics are in its MLflow run.

The file is ``<experiment folder>/podium-trials.jsonl``, beside Tune's own state. A line is
flushed to the OS before Tune forgets the trial, so a killed driver loses nothing: a trial is
always in Tune's saved state, in the ledger, or in both (then the ledger's line wins; they
agree). No Ray import here.

Example:
    >>> ledger = TrialLedger(tmp / "podium-trials.jsonl")                  # doctest: +SKIP
    >>> ledger.append(FinishedTrial("a_00000", {"done": True}, {"lr": 0.1}, None))  # doctest: +SKIP
    >>> ledger.entries()["a_00000"].config                                 # doctest: +SKIP
    {'lr': 0.1}
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.results import result_metrics, trial_status
from tracking import keys

log = logging.getLogger(__name__)

LEDGER_FILE = "podium-trials.jsonl"


@dataclass
class FinishedTrial:
    """What the end of a sweep needs of one ended trial."""

    trial_id: str
    last: dict[str, Any]  # its last result: metrics, markers (done, failed, epoch)
    config: dict[str, Any]  # the sampled config, as Tune passed it to the trial
    checkpoint: str | None  # the folder of its newest checkpoint
    error: str | None = None  # the last line of its error, for a trial Tune ended as errored

    @property
    def status(self) -> str:
        """completed, stopped or failed (see :func:`orchestrator.results.trial_status`)."""
        return trial_status(self.last, errored=self.error is not None)


# Markers of a result that say how its trial ended and at which epoch.
_MARKERS = (keys.DONE, keys.FAILED, keys.ERROR_KIND, keys.EPOCH, "training_iteration")


def last_result(result: dict[str, Any] | None) -> dict[str, Any]:
    """What the end of the sweep reads of a trial's last Tune result: its metrics and the
    markers of how and when it ended; not Tune's bookkeeping (times, host, pid), the config
    (kept once, as the entry's ``config``) or a restored history."""
    result = result or {}
    return {**result_metrics(result), **{k: result[k] for k in _MARKERS if k in result}}


class TrialLedger:
    """Append-only record of finished trials, read whole after the sweep.

    Holds no trial in memory while the sweep runs, only the count of each status (for the
    progress view) and the ids a previous driver recorded (so ``--resume`` counts them once).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        earlier = self.entries()
        self._earlier = set(earlier)
        self.counts: Counter[str] = Counter(e.status for e in earlier.values())

    def append(self, trial: FinishedTrial) -> None:
        """Record ``trial``; the line has reached the OS when this returns."""
        line = json.dumps(asdict(trial), default=str) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            # A write a full disk cut short left a torn line: end it first, or this line would
            # be glued to it and lost with it.
            if f.seek(0, os.SEEK_END) and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                line = "\n" + line
            f.write(line.encode("utf-8"))
        if trial.trial_id not in self._earlier:
            self.counts[trial.status] += 1

    def entries(self) -> dict[str, FinishedTrial]:
        """Every recorded trial by id (a trial recorded twice: its newest line)."""
        if not self.path.exists():
            return {}
        out: dict[str, FinishedTrial] = {}
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    trial = FinishedTrial(**json.loads(line))
                except (ValueError, TypeError):
                    # Only a driver killed mid-write leaves a torn line, and that trial was still
                    # in Tune's saved state then.
                    log.warning("%s:%d: skipping an unreadable line", self.path, n)
                    continue
                out[trial.trial_id] = trial
        return out


__all__ = ["LEDGER_FILE", "FinishedTrial", "TrialLedger", "last_result"]
