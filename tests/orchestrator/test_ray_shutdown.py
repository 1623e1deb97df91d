"""The local Ray a sweep started stops without waiting out its autoscaler monitor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A fresh interpreter: other tests keep a Ray of their own in this process.
_SCRIPT = """
import json
from ray._private import worker
from orchestrator.execution._ray.node import stop_autoscaler_monitor
from orchestrator.execution.ray_session import init_ray, shutdown_ray

assert init_ray(None, 0)  # a private local Ray, as podium run starts
started = worker._global_node.all_processes.items()
procs = {kind: [i.process for i in infos] for kind, infos in started}
stopped = stop_autoscaler_monitor()
after_stop = {kind: [p.poll() for p in ps] for kind, ps in procs.items()}
shutdown_ray(True)
after_shutdown = {kind: [p.poll() for p in ps] for kind, ps in procs.items()}
print(json.dumps({"stopped": stopped, "after_stop": after_stop, "after_shutdown": after_shutdown}))
"""


def test_the_monitor_goes_first_and_every_ray_process_ends(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["stopped"] is True
    assert all(code is not None for code in got["after_stop"]["monitor"])  # gone at once
    assert all(code is None for code in got["after_stop"]["gcs_server"])  # the rest still up
    assert all(code is None for code in got["after_stop"]["raylet"])
    assert all(code is not None for codes in got["after_shutdown"].values() for code in codes)


def test_garbage_goes_while_ray_is_up_and_none_is_collected_while_it_stops():
    """Tune's controller is cyclic garbage whose __del__ calls Ray; collected mid-shutdown, it
    ends the process. The runner collects it first and pauses the collector while Ray stops."""
    import gc
    import weakref

    from orchestrator.execution.ray_session import collector_paused

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    ref = weakref.ref(a)
    del a, b
    with collector_paused(True):
        assert ref() is None
        assert not gc.isenabled()
    assert gc.isenabled()
    with collector_paused(False):  # Ray does not stop in there: the collector is left alone
        assert gc.isenabled()


def test_tunes_benign_state_upload_race_is_hidden_and_other_errors_are_not():
    import logging

    from orchestrator.execution.ray_session import (
        STATE_LOGGER,
        hide_state_sync_race,
        is_state_sync_race,
    )

    def record(error: BaseException) -> logging.LogRecord:
        return logging.LogRecord(
            STATE_LOGGER,
            logging.ERROR,
            __file__,
            1,
            "Saving experiment state",
            None,
            (type(error), error, None),
        )

    hide_state_sync_race()
    hide_state_sync_race()  # once only
    state_log = logging.getLogger(STATE_LOGGER)
    assert len(state_log.filters) == len(set(state_log.filters))
    race = FileNotFoundError(
        "[Errno 2] Failed to open local file '/tmp/ray/session/artifacts/x/driver_artifacts/"
        ".3b7f-tmp-basic-variant-state-2026.json'"
    )
    assert not state_log.filter(record(race))  # the logger drops it
    # and only it (the logger may carry other filters, e.g. the CLI's for storage faults)
    assert is_state_sync_race(record(race))
    assert not is_state_sync_race(record(FileNotFoundError("[Errno 2] /data/ckpt/state.pt")))
    assert not is_state_sync_race(record(OSError(28, "No space left on device")))
