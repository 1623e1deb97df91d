"""Errors raised by workers: one base, so callers can catch Podium's own failures."""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error a worker raises on purpose."""


class UnknownNameError(WorkerError, KeyError):
    """A name that no registry entry has; the message lists the valid ones."""

    def __init__(self, kind: str, name: object, valid: list[str]) -> None:
        self.kind, self.name, self.valid = kind, name, valid
        super().__init__(f"{kind}: {name!r} is not one of: {', '.join(valid)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataNotFoundError(WorkerError):
    """A task's data files are absent; the message says how to get them."""


class TrialDivergedError(WorkerError):
    """The loss became NaN or infinite; the trial ends as failed with this reason."""
