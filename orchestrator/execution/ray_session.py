"""The sweep's Ray session: join or start Ray, and stop it cleanly.

Two workarounds for Ray 2.58 live here, each with its reason: the local autoscaler monitor is
killed before ``ray.shutdown`` (it ignores SIGTERM, so every run waited out Ray's one-second
grace period: :mod:`orchestrator.execution._ray.node`), and the garbage collector is paused while
Ray stops (freeing Tune's leftovers then
calls into a core worker that is already gone, which ended the whole process).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator.errors import RunError
from orchestrator.execution._ray.node import stop_autoscaler_monitor

log = logging.getLogger(__name__)


@contextmanager
def collector_paused(ray_stops: bool) -> Iterator[None]:
    """Collect garbage now and keep the collector off inside, when ``ray_stops`` in there.

    Ray Tune leaves its controller in reference cycles, and freeing it calls into Ray (its
    placement-group manager's ``__del__``). A collection that runs, in any thread, while
    ``ray.shutdown()`` is under way then ends the whole process ("The core worker has already
    been shutdown"). So Tune's garbage goes while Ray is up (one full collection, ~0.25 s),
    and none is collected while Ray stops.
    """
    if not ray_stops:
        yield
        return
    gc.collect()
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def shutdown_ray(started: bool) -> None:
    if started:
        import ray

        stop_autoscaler_monitor()
        ray.shutdown()


def check_address(address: str | None, resume: bool, timeout_s: float = 5.0) -> None:
    """Fail fast, before any MLflow run exists, when nothing listens at a ``host:port`` or
    ``ray://host[:port]`` address: Ray itself retries for ~35 s (Ray Client) or for minutes.

    Raises:
        RunError: no TCP connection to that address within ``timeout_s``, or ``resume`` over
            Ray Client (a restored Tune driver on the head reran no trial, Ray 2.58).
    """
    if not address or "://" in address.removeprefix("ray://"):
        return  # local Ray, or a scheme ray.init judges itself
    client = address.startswith("ray://")
    if client and resume:
        raise RunError(
            f"--resume does not work over Ray Client ({address!r}): resume from the head, or "
            "join the cluster with --address HOST:PORT (the head's GCS port)"
        )
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon and client:
        host, port = port, "10001"  # Ray Client's default port
    if not host or not port.isdigit():
        return  # "auto", "local": Ray finds the cluster itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        server = "Ray Client server (ray start --ray-client-server-port)" if client else "Ray head"
        raise RunError(
            f"cannot reach the Ray cluster at {address!r}: no {server} there ({e})"
        ) from e


# Tune saves the sweep's state into a staging folder while the previous upload of that folder
# may still run; the upload then meets a file the save has just renamed ("...-tmp-...state...json")
# and Tune logs a FileNotFoundError with a traceback. Benign: every upload starts after a save and
# copies the renamed file, and the forced save at the end of the sweep uploads once more and waits
# for it (ray/tune/execution/experiment_state.py, sync_up_experiment_state). Hidden so
# that a sweep that succeeds prints no traceback (seen with one sweep and with 8 at once).
STATE_LOGGER = "ray.tune.execution.experiment_state"


def is_state_sync_race(record: logging.LogRecord) -> bool:
    """Whether ``record`` is Tune's log of that race."""
    error = record.exc_info[1] if record.exc_info else None
    return isinstance(error, FileNotFoundError) and "-tmp-" in str(error)


def _not_the_sync_race(record: logging.LogRecord) -> bool:
    return not is_state_sync_race(record)


def hide_state_sync_race() -> None:
    """Filter the race out of Tune's experiment-state log (once per process)."""
    state_log = logging.getLogger(STATE_LOGGER)
    if _not_the_sync_race not in state_log.filters:
        state_log.addFilter(_not_the_sync_race)


def init_ray(
    address: str | None, verbosity: int, runtime_env: dict[str, Any] | None = None
) -> bool:
    """Join ``address`` or start a private local Ray; True if this call started it.

    ``runtime_env`` travels with the job to a cluster's workers (the spec's plug-in modules,
    :func:`orchestrator.spec.plugins.runtime_env_for`); a local Ray's workers inherit this process's
    ``PYTHONPATH`` instead, which costs nothing.

    Raises:
        RunError: Ray could not join ``address`` (unreachable, refused, wrong token).
    """
    import ray

    hide_state_sync_race()
    if ray.is_initialized():
        return False
    # "local" always starts a fresh Ray: a stale /tmp/ray/ray_current_cluster would otherwise make
    # ray.init() try to join a dead cluster.
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        ray.init(
            address=target,
            runtime_env=runtime_env if target != "local" else None,
            include_dashboard=False,
            log_to_driver=verbosity >= 2,
            logging_level=logging.INFO if verbosity >= 2 else logging.ERROR,
        )
    except (ConnectionError, TimeoutError) as e:
        raise RunError(f"cannot join the Ray cluster at {target!r}: {e}") from e
    return True
