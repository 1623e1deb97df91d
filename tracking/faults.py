"""Storage faults: a full disk, a read-only or forbidden folder, told apart from outages.

A full disk is not an outage: retrying the write (as the MLflow writer retries a tracking server
that is down) cannot succeed until someone frees space, and every retry only delays the message
that says so. Each layer that writes (a trial's checkpoints, the MLflow writer, the registry)
asks :func:`storage_fault` whether an error is one, and the sweep then ends at once with one line
naming the cause, the path and the way on (free space, then ``--resume``).

The error arrives in several shapes: an ``OSError`` with its errno (``torch.save``, pyarrow's
checkpoint copy), SQLite's own words inside SQLAlchemy inside an ``MlflowException``, or only as
text (a trial's error as Ray relays it). All three are recognised.

Example:
    >>> storage_fault(OSError(28, "No space left on device", "/ckpt/state.pt")).cause
    'no space left on device'
    >>> storage_fault("sqlite3.OperationalError: database or disk is full").cause
    'no space left on device'
    >>> storage_fault(ConnectionError("connection refused")) is None
    True
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass

CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}
# What each looks like as text. Permission is matched by its errno only: "permission denied"
# alone is also what an HTTP 403 from a tracking server says, which names no folder.
_TEXT = (
    (re.compile(r"\[errno 28\]|no space left on device|database or disk is full", re.I), 28),
    (re.compile(r"\[errno 122\]|disk quota exceeded", re.I), errno.EDQUOT),
    (re.compile(r"\[errno 30\]|read-only file system|readonly database", re.I), errno.EROFS),
    (re.compile(r"\[errno 13\]", re.I), errno.EACCES),
)


@dataclass(frozen=True)
class StorageFault:
    """A write that failed for want of space or permission. ``path``: the file, where the
    error named one."""

    errno: int
    path: str | None
    detail: str

    @property
    def cause(self) -> str:
        return CAUSES[self.errno]

    def as_text(self) -> str:
        """One line, for a result or a run tag: ``cause|path|detail``."""
        return f"{self.cause}|{self.path or ''}|{self.detail[:500]}"


def remedy(fault: StorageFault) -> str:
    """What to do before resuming, for ``fault``'s cause."""
    if fault.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space there"
    return "make it writable (or choose another folder)"


def storage_fault(error: BaseException | str | None) -> StorageFault | None:
    """The storage fault ``error`` is or was caused by (its ``__cause__``/``__context__``
    chain, or its text), else None."""
    seen: set[int] = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in CAUSES:
            return StorageFault(error.errno, error.filename, _first_line(str(error)))
        found = _from_text(str(error))
        if found is not None:
            return found
        error = error.__cause__ or error.__context__
    return _from_text(error) if isinstance(error, str) else None


def from_text(line: str) -> StorageFault | None:
    """The fault :meth:`StorageFault.as_text` wrote, or None."""
    parts = line.split("|", 2)
    if len(parts) != 3:
        return None
    code = next((n for n, cause in CAUSES.items() if cause == parts[0]), None)
    return StorageFault(code, parts[1] or None, parts[2]) if code is not None else None


def _from_text(text: str) -> StorageFault | None:
    for pattern, code in _TEXT:
        match = pattern.search(text)
        if match:
            line = next((ln for ln in text.splitlines() if pattern.search(ln)), text)
            return StorageFault(code, None, _first_line(line.strip()))
    return None


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:500]
