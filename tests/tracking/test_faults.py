"""Storage faults are told apart from outages, from real errors of each shape."""

from __future__ import annotations

import doctest
import errno
import sqlite3

import pytest

import tracking.faults
from tracking.faults import from_text, remedy, storage_fault


def test_the_module_examples_hold():
    assert doctest.testmod(tracking.faults).failed == 0


def test_a_real_full_device_is_no_space_left():
    with pytest.raises(OSError) as caught, open("/dev/full", "w") as f:
        f.write("x")
        f.flush()
    fault = storage_fault(caught.value)
    assert fault is not None and fault.errno == errno.ENOSPC
    assert remedy(fault) == "free space there"


def test_sqlite_full_and_read_only_are_recognised_through_a_chain(tmp_path):
    db = sqlite3.connect(tmp_path / "full.db")
    db.execute("create table t (x blob)")
    db.execute("pragma max_page_count = 8")  # SQLite's own 'database or disk is full'
    with pytest.raises(sqlite3.OperationalError) as full:
        for _ in range(100):
            db.execute("insert into t values (?)", (b"x" * 4096,))
    try:
        raise RuntimeError("logging failed") from full.value  # as MLflow wraps it
    except RuntimeError as wrapped:
        assert storage_fault(wrapped).cause == "no space left on device"

    ro = sqlite3.connect(f"file:{tmp_path / 'full.db'}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as readonly:
        ro.execute("insert into t values (x'00')")
    fault = storage_fault(readonly.value)
    assert fault.cause == "read-only file system"
    assert remedy(fault).startswith("make it writable")


def test_outages_and_bugs_are_no_storage_fault():
    assert storage_fault(ConnectionRefusedError(111, "Connection refused")) is None
    assert storage_fault(TimeoutError("timed out")) is None
    assert storage_fault(ValueError("shape mismatch")) is None
    # An HTTP 403 from a tracking server names no folder: not a storage fault.
    assert storage_fault("API request failed with 403: Permission denied") is None


def test_a_fault_survives_its_text_form():
    fault = storage_fault(OSError(errno.EROFS, "Read-only file system", "/mnt/ckpt"))
    again = from_text(fault.as_text())
    assert again == fault
    assert from_text("not a fault") is None
