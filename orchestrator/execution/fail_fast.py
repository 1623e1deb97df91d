"""Deterministic trial errors end the sweep early, with one message and one traceback.

A bug in a plug-in (a ``TypeError`` in the user's model, a shape mismatch) fails every trial the
same way. Tune would retry each trial ``max_failures`` times from its checkpoint and print every
traceback: over a thousand lines and a minute for an 8-trial sweep whose first trial already
said it all. So:

- the trial body catches an error of its own code (:func:`is_transient` says no) and ends the
  trial *failed*, with the error and its traceback in its last report, instead of raising:
  Tune does not retry it;
- errors of the machine (a killed worker, a lost node, I/O, memory) still raise, and Tune
  retries them from the last checkpoint;
- :class:`FailFast` stops the sweep once ``threshold`` trials failed with the same error before
  any trial finished an epoch: every trial would;
- a full disk (or a read-only, forbidden folder: :mod:`tracking.faults`) is neither: every trial
  that writes would fail, and a retry too, until space is freed. The trial reports it
  (:data:`keys.STORAGE_FAULT`), or the MLflow writer posts it (:func:`post_fault`), and
  :class:`FailFast` raises :class:`StorageFaultStop` from inside Tune's loop before Tune acts on
  that result: no scheduler stops a trial, no retry starts, and Tune's saved state keeps the
  trials unfinished, as a killed driver leaves it, so ``--resume`` goes on from their last
  checkpoints.

Example:
    >>> stopper = FailFast(threshold=2)
    >>> for t in ("t1", "t2"):
    ...     _ = stopper(t, {"podium_failed": "TypeError: bad", "podium_error_kind": "code"})
    >>> stopper.stop_all(), stopper.reason.splitlines()[0][-48:]
    (True, 'their code, so every trial would: TypeError: bad')
"""

from __future__ import annotations

import re
from typing import Any

from ray.tune.stopper import Stopper

from tracking import keys

# Errors of the machine, not of the trial's code: retried from the checkpoint.
_TRANSIENT = (OSError, MemoryError, ConnectionError, TimeoutError)


def is_transient(error: BaseException) -> bool:
    """True for an error a retry may not see again (a killed worker, I/O, memory, Ray itself);
    False for an error of the trial's code, which every retry repeats."""
    if isinstance(error, _TRANSIENT):
        return True
    module = type(error).__module__ or ""
    return module.startswith("ray.") or "OutOfMemory" in type(error).__name__


class StorageFaultStop(Exception):
    """A trial or the MLflow writer met a full disk (or a read-only, forbidden folder):
    ``fault`` is :meth:`tracking.faults.StorageFault.as_text`."""

    def __init__(self, fault: str) -> None:
        self.fault = fault
        super().__init__(fault)


# Faults the MLflow writer met, for the stopper of the sweep running in this process. (Under
# Ray Client the stopper runs on the head; the driver then reports the fault when Tune ends.)
_posted: list[str] = []


def post_fault(fault: str) -> None:
    """Called by the MLflow writer's thread: the stopper ends the sweep at the next result."""
    _posted.append(fault)


def clear_faults() -> None:
    _posted.clear()


def signature(error_text: str) -> str:
    """What two trials' errors share when they are the same bug: the first line, with numbers
    (sizes, addresses, ids) blanked."""
    first = (error_text.strip().splitlines() or [""])[0]
    return re.sub(r"0x[0-9a-fA-F]+|\d+", "#", first)


class FailFast(Stopper):
    """A Tune stopper (``RunConfig(stop=...)``) that ends the sweep on a repeated code error.

    Tune calls it with every trial result; ``stop_all`` turns True once ``threshold`` trials
    ended with the same code error (:data:`keys.ERROR_KIND` ``code``) while no trial has
    finished an epoch. A config-dependent error (some trials train) never stops the sweep.
    """

    def __init__(self, threshold: int = 3) -> None:
        self.threshold = threshold
        self._failed: dict[str, set[str]] = {}  # signature -> trials
        self._first: dict[str, tuple[str, str]] = {}  # signature -> (error, traceback)
        self._trained = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        fault = result.get(keys.STORAGE_FAULT) or (_posted[0] if _posted else None)
        if fault:
            raise StorageFaultStop(str(fault))
        if result.get(keys.ERROR_KIND) == "code":
            error = str(result.get(keys.FAILED, ""))
            sig = signature(error)
            self._failed.setdefault(sig, set()).add(trial_id)
            self._first.setdefault(sig, (error, str(result.get(keys.TRACEBACK, ""))))
        elif not result.get(keys.FAILED) and result.get(keys.EPOCH):
            self._trained = True
        return False  # the trial itself has ended already; stop_all ends the rest

    def stop_all(self) -> bool:
        return self._tripped() is not None

    def _tripped(self) -> str | None:
        if self._trained:
            return None
        return next((s for s, ts in self._failed.items() if len(ts) >= self.threshold), None)

    @property
    def reason(self) -> str | None:
        """Why the sweep stopped (with the first failure's traceback), or None."""
        sig = self._tripped()
        if sig is None:
            return None
        error, trace = self._first[sig]
        n = len(self._failed[sig])
        return (
            f"{n} trials failed with the same error in their code, so every trial would: "
            f"{error}\n{trace.rstrip()}"
        )
