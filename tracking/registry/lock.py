"""One promotion at a time per registered model, across processes and machines: a lock that is a
registered model of its own (``podium-lock.<name>``), broken when stale, and retries of MLflow
calls that fail transiently (a busy SQLite file, a restarting server)."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

log = logging.getLogger(__name__)


LOCK_PREFIX = "podium-lock."  # + model name: a registered model that exists while a promotion runs


LOCK_TIMEOUT_S = 300.0  # how long to wait for another promotion


LOCK_STALE_S = 900.0  # a lock older than this was left by a crashed process and is broken


class RegistryError(Exception):
    """A promotion or rollback could not be carried out; the message says what to do."""


def registry_client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def error_code(e: Exception) -> str:
    return str(getattr(e, "error_code", "") or "")


def is_transient(e: Exception) -> bool:
    """Errors worth retrying: a busy SQLite file, a version-number collision, a server hiccup."""
    text = str(e).lower()
    return any(
        s in text
        for s in (
            "database is locked",
            "unique constraint",
            "integrityerror",
            "giving up after",
            "deadlock",
            "503",
            "502",
            "temporarily",
        )
    )


def retried(fn: Callable[[], Any], what: str, attempts: int = 8) -> Any:
    delay = 0.05
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - MLflow raises several types; translated below
            if i == attempts - 1 or not is_transient(e):
                raise RegistryError(f"{what} failed: {e}") from e
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


@contextmanager
def promotion_lock(
    uri: str, model_name: str, timeout_s: float = LOCK_TIMEOUT_S, stale_s: float = LOCK_STALE_S
) -> Iterator[None]:
    """Hold the promotion lock of ``model_name`` (see the comment above) for the ``with`` body.

    Raises:
        RegistryError: the lock stayed taken for ``timeout_s``; the message names the lock to
            delete if a promotion crashed.
    """
    client, lock = registry_client(uri), f"{LOCK_PREFIX}{model_name}"
    token = uuid.uuid4().hex
    deadline, delay = time.monotonic() + timeout_s, 0.02
    while True:
        try:
            client.create_registered_model(
                lock,
                tags={"podium.lock_owner": token},
                description="Held while Podium promotes; deleted after.",
            )
            break
        except Exception as e:  # noqa: BLE001
            # Under concurrent SQLite writers a create can also answer "not found" (the row it
            # re-reads was gone, or its insert lost a race): both mean try again.
            if error_code(e) not in _LOCK_RETRY_CODES and not is_transient(e):
                raise RegistryError(f"cannot take the promotion lock {lock!r}: {e}") from e
            if _lock_owner(client, lock) == token:
                break  # the create landed although its answer failed
        _break_if_stale(client, lock, stale_s)
        if time.monotonic() > deadline:
            raise RegistryError(
                f"another promotion of {model_name!r} held the lock for "
                f"{timeout_s:.0f}s; if a promotion crashed, delete the registered "
                f"model {lock!r}"
            )
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 1.5, 0.5)
    try:
        yield
    finally:
        _release(client, lock, token)


_LOCK_RETRY_CODES = ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST")


def _lock_owner(client: Any, lock: str) -> str | None:
    try:
        return client.get_registered_model(lock).tags.get("podium.lock_owner")
    except Exception:  # noqa: BLE001 - no lock (or unreadable): nobody we know holds it
        return None


def _break_if_stale(client: Any, lock: str, stale_s: float) -> None:
    try:
        held = client.get_registered_model(lock)
    except Exception:  # noqa: BLE001 - released meanwhile
        return
    age_s = time.time() - held.creation_timestamp / 1000.0
    if age_s > stale_s:
        log.warning("breaking promotion lock %s left for %.0fs by a crashed process", lock, age_s)
        with suppress(Exception):
            client.delete_registered_model(lock)


def _release(client: Any, lock: str, token: str) -> None:
    with suppress(Exception):
        if client.get_registered_model(lock).tags.get("podium.lock_owner") == token:
            retried(lambda: client.delete_registered_model(lock), f"releasing {lock}")
