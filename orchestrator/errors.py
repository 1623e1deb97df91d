"""Errors the orchestrator raises on purpose; the CLI maps them to exit codes."""

from __future__ import annotations

from dataclasses import dataclass


class PodiumError(Exception):
    """Base of Podium's own errors (exit code 1 unless a subclass says otherwise)."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: where, what value, and what to do."""

    path: str
    value: object
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(PodiumError):
    """A spec (or an override) is invalid. Carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid experiment spec ({len(problems)} problem(s)):\n{lines}")


class RunError(PodiumError):
    """The sweep could not run or finish (Ray, MLflow or every trial failed)."""


class UnknownName(PodiumError):
    """A command names an experiment or model that is not there (or not a valid name)."""

    exit_code = 2


class StorageFailure(RunError):
    """The sweep could not write (a full disk, a read-only or forbidden folder) and ended at
    once; ``--resume`` goes on once the cause is removed. The CLI names its own command."""

    def __init__(self, what: str, remedy: str, command: str = "podium run SPEC --resume") -> None:
        self.what, self.remedy = what, remedy
        super().__init__(f"{what}: {remedy}, then `{command}`")

    def with_command(self, command: str) -> StorageFailure:
        return StorageFailure(self.what, self.remedy, command)
