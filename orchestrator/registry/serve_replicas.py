"""``podium serve --replicas N``: the same scoring app, on N Ray Serve replicas behind Ray's
HTTP proxy, on a local Ray or a cluster (``--address``).

The driver fetches and checks the model once (the trust boundary of ``tracking.serving.server``:
ONNX or a weights-only state dict, no pickle); what the replicas get is the model's files as bytes
in Ray's object store, so a replica on another node needs neither the registry nor the driver's
disk. Each replica writes them to a folder of its own, loads them with the same loader and serves
``tracking.serving.http``'s app: the protocol, the limits and the answers are those of a single
``podium serve``. Responses carry ``X-Served-By: <host>:<pid>``, the replica that answered.
"""

from __future__ import annotations

import logging
import os
import signal
import socket as _socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

APP_NAME = "podium-serve"


def model_files(folder: Path) -> dict[str, bytes]:
    """The files of a downloaded model folder, by path relative to it."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def replica_app(files: dict[str, bytes], build_model: Callable[..., Any] | None) -> Callable:
    """A builder Ray Serve calls on each replica: the model's files written to the replica's own
    folder, loaded, and served by the scoring app."""

    def build() -> Any:

        from tracking.serving.http import make_app, signature_columns
        from tracking.serving.scorers import load_scorer

        folder = Path(tempfile.mkdtemp(prefix="podium-replica-"))
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        scorer = load_scorer(folder, build_model)
        served_by = f"{_socket.gethostname()}:{os.getpid()}"
        return make_app(scorer, signature_columns(folder), served_by=served_by)

    return build


def serve_replicas(
    files: dict[str, bytes],
    replicas: int,
    host: str,
    port: int,
    build_model: Callable[..., Any] | None,
    address: str | None,
    ready: Callable[[str], None],
) -> None:
    """Run ``replicas`` copies of the model whose files are ``files`` (:func:`model_files`) on
    Ray Serve until SIGTERM or SIGINT."""

    import ray
    from ray import serve

    from orchestrator.execution.ray_session import init_ray

    started = init_ray(address, verbosity=0)
    # After ray.init, which sets a SIGTERM handler of its own: a stop asked for while the
    # replicas start is kept and acted on once they are up.
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    try:
        serve.start(
            http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"}
        )
        deployment = serve.deployment(
            name="scorer", num_replicas=replicas, ray_actor_options={"num_cpus": 0.5}
        )(serve.ingress(replica_app(files, build_model))())
        serve.run(deployment.bind(), name=APP_NAME, route_prefix="/")
        if not stop.is_set():
            ready(f"http://{host}:{port}")
        stop.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if started:
            ray.shutdown()  # a Ray of our own: its Serve, proxy and replicas go with it
        else:
            serve.delete(APP_NAME)  # a cluster's Serve stays; this app leaves it
