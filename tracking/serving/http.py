"""The HTTP side of ``podium serve``: MLflow's scoring protocol on Starlette and uvicorn.

Why not the standard library's threaded server: it spent a thread (and ~250 KB) on every open
connection and never timed a read out, so 2,000 clients that sent their headers and stalled held
2,000 threads and 500 MB. Here connections are coroutines on one event loop; a body that does
not arrive within ``read_timeout`` seconds is answered 408 and its connection closed; an idle
keep-alive connection is closed after ``idle_timeout``; predictions run on a bounded thread pool
(ONNX Runtime releases the GIL), and beyond ``max_in_flight`` requests waiting for or running a
prediction a request is answered 503 at once rather than queued without bound. SIGTERM and
SIGINT stop it cleanly: in-flight requests finish, the port is released.

The protocol (``POST /invocations``):

- ``application/json`` with ``inputs`` / ``instances`` (rows, or ``{name: rows}`` for a model
  of several inputs), ``dataframe_split`` (``columns`` + ``data``) or ``dataframe_records``;
  ``params`` is accepted and ignored (Podium's models take none).
- ``text/csv``: a header row of column names, then one example per row.

Columns are matched **by name** when the model's signature has named columns (a tabular task's
feature names): a request's columns in any order give the same answer, a missing or unknown
column is a 400 naming it. Non-finite values (NaN, infinities, ``1e400``) are a 400 naming the
first. ``GET /ping`` and ``/health`` answer 200; ``GET /version`` names the loaded model.
"""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import io
import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tracking.serving.inputs import MAX_BODY_BYTES, parse_request
from tracking.serving.scorers import Scorer

READ_TIMEOUT_S = 10.0  # a request body must arrive within this
IDLE_TIMEOUT_S = 5.0  # an idle keep-alive connection is closed after this
MAX_IN_FLIGHT = 64  # requests predicting or waiting for a prediction thread; beyond: 503
PREDICT_THREADS = 8  # ONNX Runtime releases the GIL: a few threads use every core
# A prediction expected to take less than this runs on the event loop itself: the hop to a
# thread and back costs ~0.1 ms, more than a small model's batch-1 call (measured: 5,255 against
# 2,925 requests/s at 4 clients for the digits MLP). Longer ones run on the thread pool, so a
# slow model or a big batch never holds the loop.
INLINE_S = 0.0005
BACKLOG = 2048  # connections the kernel queues before the loop accepts them


def signature_columns(folder: str | Path) -> list[str] | None:
    """The named input columns of the MLflow model in ``folder`` (its ``MLmodel`` signature),
    or None when its inputs are tensors. Read as data: YAML with ``safe_load``, JSON."""
    import yaml

    found = sorted(Path(folder).rglob("MLmodel")) if Path(folder).is_dir() else []
    if not found:
        return None
    meta = yaml.safe_load(found[0].read_text()) or {}
    inputs = json.loads(((meta.get("signature") or {}).get("inputs")) or "[]")
    if inputs and all(isinstance(i, dict) and i.get("type") != "tensor" for i in inputs):
        names = [i.get("name") for i in inputs]
        if all(isinstance(n, str) for n in names):
            return names
    return None


def parse_body(body: bytes, ctype: str, scorer: Scorer, columns: list[str] | None) -> Any:
    """The batch a request holds (see the module docstring).

    Raises:
        ValueError: the body is malformed, names the wrong columns or holds non-finite values.
    """
    if ctype == "text/csv":
        payload: Any = _csv_payload(body)
    else:
        payload = json.loads(body)  # NaN, Infinity and 1e400 parse; they are refused below
    if columns is not None and isinstance(payload, dict):
        payload = _by_column(payload, columns)
    x = parse_request(payload, scorer)
    for name, batch in x.items() if isinstance(x, dict) else [("inputs", x)]:
        _finite(name, batch)
    return x


def _csv_payload(body: bytes) -> dict[str, Any]:
    rows = list(csv.reader(io.StringIO(body.decode("utf-8"))))
    if len(rows) < 2:
        raise ValueError("a CSV body needs a header row of column names and at least one row")
    try:
        data = [[float(v) for v in row] for row in rows[1:] if row]
    except ValueError as e:
        raise ValueError(f"CSV values must be numbers: {e}") from None
    return {"dataframe_split": {"columns": rows[0], "data": data}}


def _by_column(payload: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    """A dataframe payload's rows in the model's column order, matched by name."""
    if "dataframe_split" in payload:
        split = payload["dataframe_split"] or {}
        given = split.get("columns")
        if given is None:  # positional, as MLflow reads a split without columns
            return payload
        rows = [dict(zip(given, row, strict=False)) for row in split.get("data") or []]
        _same_columns(list(given), columns)
    elif "dataframe_records" in payload or _records(payload.get("instances")):
        rows = payload.get("dataframe_records", payload.get("instances")) or []
        for row in rows:
            if not isinstance(row, dict):
                raise ValueError("dataframe_records must be a list of {column: value} objects")
            _same_columns(list(row), columns)
    else:
        return payload
    return {"inputs": [[row[c] for c in columns] for row in rows]}


def _records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def _same_columns(given: list[str], columns: list[str]) -> None:
    missing = [c for c in columns if c not in given]
    unknown = [c for c in given if c not in columns]
    if missing or unknown:
        raise ValueError(
            f"columns must be the model's {len(columns)}: missing {missing}, unknown {unknown}"
        )


def _finite(name: str, batch: np.ndarray) -> None:
    if np.issubdtype(batch.dtype, np.floating) and not np.isfinite(batch).all():
        row, *col = np.argwhere(~np.isfinite(batch))[0]
        raise ValueError(
            f"{name} holds a non-finite value ({batch[(row, *col)]}) in row {row}: send finite "
            "numbers"
        )


def make_app(
    scorer: Scorer,
    columns: list[str] | None = None,
    *,
    max_in_flight: int = MAX_IN_FLIGHT,
    read_timeout: float = READ_TIMEOUT_S,
    max_body: int = MAX_BODY_BYTES,
    served_by: str | None = None,
) -> Any:
    """The Starlette application answering MLflow's scoring protocol with ``scorer``;
    ``served_by`` names the process in an ``X-Served-By`` header (a replica among several)."""
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    threads = anyio.CapacityLimiter(PREDICT_THREADS)
    waiting = 0  # requests predicting or waiting for a prediction thread
    # Seconds per example, a moving average of what predictions took; None until the first
    # (which runs on a thread: the model may be slow).
    per_row: list[float | None] = [None]

    def timed(x: Any) -> tuple[Any, float]:
        start = time.perf_counter()
        y = scorer.predict(x)
        return y, time.perf_counter() - start

    async def predict(x: Any) -> Any:
        n, cost = _rows(x), per_row[0]
        if cost is not None and cost * n < INLINE_S:
            y, took = timed(x)
        else:
            y, took = await anyio.to_thread.run_sync(timed, x, limiter=threads)
        now = took / max(n, 1)
        per_row[0] = now if cost is None else 0.8 * cost + 0.2 * now
        return y

    def error(status: int, message: str, close: bool = False) -> JSONResponse:
        code = "BAD_REQUEST" if status < 500 else "TEMPORARILY_UNAVAILABLE"
        headers = {"Connection": "close"} if close else None
        return JSONResponse({"error_code": code, "message": message}, status, headers)

    async def ping(request: Request) -> PlainTextResponse:
        return PlainTextResponse("\n")

    async def version(request: Request) -> PlainTextResponse:
        return PlainTextResponse(scorer.description)

    async def invocations(request: Request) -> JSONResponse:
        nonlocal waiting
        length = int(request.headers.get("content-length") or 0)
        if length > max_body:
            await _discard(request, read_timeout)
            return error(413, f"body of {length} bytes exceeds {max_body}", close=True)
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip()
        if ctype not in ("application/json", "text/csv"):
            return error(415, f"Content-Type must be application/json or text/csv, got {ctype!r}")
        try:
            async with asyncio.timeout(read_timeout):  # no task per request, as wait_for makes
                body = await _read(request, max_body)
        except TimeoutError:
            return error(408, f"the body did not arrive within {read_timeout:g} s", close=True)
        except (ClientDisconnect, ValueError) as e:
            return error(413 if isinstance(e, ValueError) else 400, str(e), close=True)
        try:
            x = parse_body(body, ctype, scorer, columns)
        except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
            return error(400, str(e))
        except RecursionError:  # json.loads on '[[[[...' thousands deep
            return error(400, "the JSON body is nested too deeply (a batch is rows of values)")
        if waiting >= max_in_flight:
            return error(503, f"{waiting} requests are being answered; retry shortly")
        waiting += 1
        try:
            y = await predict(x)
        except Exception as e:  # noqa: BLE001 - report, keep serving
            return error(400, f"prediction failed: {e}")
        finally:
            waiting -= 1
        return JSONResponse({"predictions": y if isinstance(y, list) else y.tolist()})

    app = Starlette(
        routes=[
            Route("/ping", ping),
            Route("/health", ping),
            Route("/version", version),
            Route("/invocations", invocations, methods=["POST"]),
        ]
    )
    return app if served_by is None else _with_header(app, b"x-served-by", served_by.encode())


def _with_header(app: Any, name: bytes, value: bytes) -> Any:
    """``app`` with one more header on every response."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        async def send_with(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (name, value)]}
            await send(message)

        await app(scope, receive, send_with)

    return wrapped


def _rows(x: Any) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


async def _read(request: Any, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes (a chunked body declares no length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ValueError(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _discard(request: Any, timeout: float) -> None:
    """Read and drop a body too big to take, for up to ``timeout`` seconds, so that the client
    gets the 413: closing a connection with a body still unread makes the kernel reset it, and a
    client still sending sees the reset, not the answer. A client that asked
    ``Expect: 100-continue`` (curl, for big bodies) has sent nothing yet and needs no draining."""
    if "100-continue" in (request.headers.get("expect") or "").lower():
        return
    try:
        async with asyncio.timeout(timeout):
            async for _ in request.stream():
                pass
    except Exception:  # noqa: BLE001 - a timeout or a disconnect: the 413 is sent regardless
        pass


def _config(app: Any, idle_timeout: float) -> Any:

    import uvicorn

    fast = importlib.util.find_spec("httptools") is not None
    return uvicorn.Config(
        app,
        http="httptools" if fast else "h11",
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        timeout_keep_alive=int(max(1, idle_timeout)),
        timeout_graceful_shutdown=5,
        backlog=BACKLOG,
        access_log=False,
        log_level="warning",
        lifespan="off",
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: a free port), made before the server starts so
    its address can be announced."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def run(app: Any, sock: socket.socket, idle_timeout: float = IDLE_TIMEOUT_S) -> None:
    """Serve ``app`` on ``sock`` in this (the main) thread until SIGTERM or SIGINT; returns
    once in-flight requests are answered and the port is closed."""

    import uvicorn

    # uvicorn re-raises the signal that stopped it after its shutdown: with SIGTERM's default
    # action the process would then die of it (exit -15) instead of returning.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        uvicorn.Server(_config(app, idle_timeout)).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class Background:
    """The server on a thread of this process (tests, benchmarks): ``url``, then ``stop()``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, **kw: Any) -> None:
        import uvicorn

        self._sock = bind(host, port)
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(_config(app, kw.get("idle_timeout", IDLE_TIMEOUT_S)))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        _wait(lambda: self._server.started, 30, "the server to start")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)
