"""The sweep's record of finished trials: one JSON line per trial, in the Tune experiment folder.

Ray Tune lets go of a trial once it has terminated (:mod:`orchestrator.execution._ray.memory`), so
the driver's memory does not grow with the number of trials. What the end of the sweep still needs
of such a trial (its last result, its config, where its checkpoint is) is appended here first,
and read back once, after the sweep: by selection, promotion and ``--resume``. The trial's
per-epoch metrics are in its MLflow run.

The file is ``<experiment folder>/podium-trials.jsonl``, beside Tune's own state; on object
storage, which cannot append, it is one object per trial (:class:`ObjectLedger`). A line is
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.execution.results import result_metrics, trial_status
from tracking import keys
from workers import storage

log = logging.getLogger(__name__)

LEDGER_FILE = "podium-trials.jsonl"
LEDGER_OBJECTS = "podium-trials"  # the ledger's folder of objects on object storage


@dataclass
class FinishedTrial:
    """What the end of a sweep needs of one ended trial."""

    trial_id: str
    last: dict[str, Any]  # its last result: metrics, markers (done, failed, epoch)
    config: dict[str, Any]  # the sampled config, as Tune passed it to the trial
    checkpoint: str | None  # where its newest checkpoint is: a folder, or a URI
    error: str | None = None  # the last line of its error, for a trial Tune ended as errored

    @property
    def status(self) -> str:
        """completed, stopped or failed (see
        :func:`orchestrator.execution.results.trial_status`)."""
        return trial_status(self.last, errored=self.error is not None)


# Markers of a result that say how its trial ended and at which epoch.
_MARKERS = (keys.DONE, keys.FAILED, keys.ERROR_KIND, keys.EPOCH, "training_iteration")


def last_result(result: dict[str, Any] | None) -> dict[str, Any]:
    """What the end of the sweep reads of a trial's last Tune result: its metrics and the
    markers of how and when it ended; not Tune's bookkeeping (times, host, pid), the config
    (kept once, as the entry's ``config``) or a restored history."""
    result = result or {}
    return {**result_metrics(result), **{k: result[k] for k in _MARKERS if k in result}}


def checkpoint_location(checkpoint: Any) -> str | None:
    """Where a Tune checkpoint lies: its folder, or its URI on object storage."""
    if checkpoint is None:
        return None
    return storage.location_of(checkpoint.filesystem, checkpoint.path)


class TrialLedger:
    """Append-only record of finished trials, read whole after the sweep.

    Holds no trial in memory while the sweep runs, only the count of each status (for the
    progress view) and the ids a previous driver recorded (so ``--resume`` counts them once).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._count_earlier()

    def _count_earlier(self) -> None:
        earlier = self.entries()
        self._earlier = set(earlier)
        self.counts: Counter[str] = Counter(e.status for e in earlier.values())

    def append(self, trial: FinishedTrial) -> None:
        """Record ``trial``; it has reached the OS (or the object store) when this returns."""
        self._write(trial)
        if trial.trial_id not in self._earlier:
            self.counts[trial.status] += 1

    def _write(self, trial: FinishedTrial) -> None:
        line = json.dumps(asdict(trial), default=str) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            # A write a full disk cut short left a torn line: end it first, or this line would
            # be glued to it and lost with it.
            if f.seek(0, os.SEEK_END) and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                line = "\n" + line
            f.write(line.encode("utf-8"))

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


class ObjectLedger(TrialLedger):
    """The ledger on object storage, which has no append: one object per trial,
    ``<experiment>/podium-trials/<trial id>.json``, written whole (an object appears whole or
    not at all, so a killed driver leaves no torn record) and read back by listing. A trial
    recorded again overwrites its object."""

    def __init__(self, location: str) -> None:
        self.location = storage.join(location, LEDGER_OBJECTS)
        self._count_earlier()

    def _write(self, trial: FinishedTrial) -> None:
        text = json.dumps(asdict(trial), default=str)
        storage.write_text(storage.join(self.location, f"{trial.trial_id}.json"), text)

    def entries(self) -> dict[str, FinishedTrial]:
        names = [n for n in storage.names(self.location) if n.endswith(".json")]
        # One request per object: read them side by side (a sweep may have thousands).
        with ThreadPoolExecutor(8, thread_name_prefix="podium-ledger") as pool:
            read = list(pool.map(self._read, names))
        return {t.trial_id: t for t in read if t is not None}

    def _read(self, name: str) -> FinishedTrial | None:
        try:
            return FinishedTrial(**json.loads(storage.read_text(storage.join(self.location, name))))
        except (OSError, ValueError, TypeError):
            log.warning("%s/%s: skipping an unreadable record", self.location, name)
            return None


def open_ledger(experiment: str) -> TrialLedger:
    """The ledger of the Tune experiment at ``experiment`` (a folder or an object-store URI)."""
    if storage.is_uri(experiment):
        return ObjectLedger(experiment)
    return TrialLedger(Path(experiment, LEDGER_FILE))


__all__ = [
    "LEDGER_FILE",
    "LEDGER_OBJECTS",
    "FinishedTrial",
    "ObjectLedger",
    "TrialLedger",
    "checkpoint_location",
    "last_result",
    "open_ledger",
]
