"""A refusal every layer raises under one name (tracking is the lowest layer: workers and the
orchestrator import it from here)."""

from __future__ import annotations


class UntrustedModelError(Exception):
    """A model from outside Podium's own sweep (a registry version, a teacher's file) would make
    Podium run code it does not trust: only a pickled format is there, or its metadata names code
    the operator did not allow, or is not plain data (see docs/SECURITY.md). Commands exit 2."""

    exit_code = 2
