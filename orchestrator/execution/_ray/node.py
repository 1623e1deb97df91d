"""Ray's node handle, private in Ray 2.58: the local autoscaler monitor stopped at once."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def stop_autoscaler_monitor() -> bool:
    """Kill the autoscaler monitor of the local Ray this process started; True if there was one.

    ``ray.shutdown`` sends each of its processes SIGTERM and waits up to 1 s before SIGKILL; the
    monitor (Ray 2.58) never exits on SIGTERM, so every run waited that full second at its end.
    It holds no state of its own (it reads the GCS, which stops next), so it goes first, at once.
    Reaches into Ray's private node handle; anything unexpected leaves it to ``ray.shutdown``.
    """
    try:
        # Ray's private node handle (ray._private.worker._global_node) and process table.
        from ray._private import ray_constants, worker

        node = worker._global_node
        infos: list[Any] = (
            node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []) if node else []
        )
        for info in infos:
            info.process.kill()
            info.process.wait(timeout=5)
        return bool(infos)
    except Exception:  # noqa: BLE001 - an optimisation only; ray.shutdown stops it anyway
        log.debug("could not stop the autoscaler monitor early", exc_info=True)
        return False
