"""Serve a registered model over HTTP, speaking MLflow's scoring protocol.

``POST /invocations`` with ``{"inputs": [[...], ...]}`` (also ``instances``, ``dataframe_split``,
``dataframe_records``; a model of several inputs takes them by name,
``{"inputs": {"input_0": [...], "input_1": [...]}}``) answers
``{"predictions": [[logit, ...], ...]}`` -- the model's raw outputs, as MLflow's PyTorch flavor
returns them; ``GET /ping`` and ``GET /health`` answer 200
once the model is loaded. Existing MLflow clients (``mlflow.deployments``, ``curl``) work unchanged.

Only formats that cannot execute code on load are served:

- ONNX (``*.onnx``), run by ONNX Runtime: a graph of known operators.
- A weights-only state dict (``state_dict.pt``, read with ``torch.load(weights_only=True)``) plus
  ``arch.json`` (the spec's ``model`` section, input shape, class count, and where the task has
  them its ``extra`` facts and ``input_dtype``, as a text model needs); the model is rebuilt by
  the ``build_model`` callable the caller passes (the orchestrator passes one that rebuilds only
  built-in architectures and the plug-in modules the operator named, after checking every field:
  ``workers.models.build_from_metadata``; tracking never imports workers).

A pickled model (``model.pth``, ``*.pkl``, a ``pt2`` archive, whose loader unpickles) from a store
we do not control is refused with :class:`UntrustedModelError`: unpickling runs arbitrary code.

The HTTP server is Starlette on uvicorn (:mod:`tracking.serving.http`: timeouts, a bound on
requests in flight, columns matched by name, CSV); this module finds, checks and loads the model.

Example (a shell)::

    podium serve models:/digits-classifier@champion --port 5001
    curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
        -d '{"inputs": [[0.0, 0.1, ...]]}'
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tracking.errors import UntrustedModelError
from tracking.serving import http
from tracking.serving.scorers import ServeError, load_scorer
from tracking.store import version_source


def fetch_model(
    model_uri: str, tracking_uri: str | None = None, dst: str | Path | None = None
) -> Path:
    """Download ``models:/<name>@<alias>`` (or ``models:/<name>/<version>``, ``runs:/...``, a
    local path) and return the local folder. Nothing is deserialised here.

    Raises:
        ServeError: the URI does not resolve, with MLflow's reason.
    """
    if Path(model_uri).exists():
        return Path(model_uri)
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ServeError("resolving a models:/ URI needs mlflow: pip install mlflow") from e
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=version_source(model_uri, tracking_uri),
            tracking_uri=tracking_uri,
            registry_uri=tracking_uri,
            dst_path=str(dst) if dst else None,
        )
    except (MlflowException, OSError) as e:
        raise ServeError(
            f"cannot fetch {model_uri!r} from {tracking_uri or 'the default store'}: {e}"
        ) from e
    return Path(local)


@contextmanager
def fetched(model_uri: str, tracking_uri: str | None) -> Iterator[Path]:
    """The model's files (:func:`fetch_model`) in a folder of Podium's own, removed on every
    path: MLflow's default temporary folder outlived a failed fetch (and every served model)."""
    with tempfile.TemporaryDirectory(prefix="podium-serve-") as tmp:
        yield fetch_model(model_uri, tracking_uri, tmp)


def serve(
    model_uri: str,
    port: int = 5001,
    host: str = "127.0.0.1",
    tracking_uri: str | None = None,
    build_model: Callable[..., Any] | None = None,
    ready: Callable[[str], None] | None = None,
    model_inputs: bool = False,
) -> None:
    """Fetch, load and serve ``model_uri`` until interrupted.

    Args:
        model_uri: ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or a local folder/file.
        port: TCP port; 0 picks a free one.
        host: interface to bind; the default keeps it on this machine.
        tracking_uri: the MLflow store holding the registry.
        build_model: rebuilds a state-dict model from its ``arch.json`` section.
        ready: called with the base URL once the server is listening.
        model_inputs: serve the model alone (model inputs in, logits out) out of a pipeline.

    Raises:
        UntrustedModelError, ServeError: see :func:`load_scorer` and :func:`fetch_model`.
    """

    with fetched(model_uri, tracking_uri) as folder:
        scorer = load_scorer(folder, build_model, model_inputs)
        # A DataFrame's columns by name, for the graph that takes them (not the model alone).
        columns = None if model_inputs else http.signature_columns(folder)
    sock = http.bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    (ready or (lambda u: print(f"serving {model_uri} ({scorer.description}) at {u}", flush=True)))(
        url
    )
    try:
        http.run(http.make_app(scorer, columns), sock)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


def main(argv: list[str] | None = None, build_model: Callable[..., Any] | None = None) -> int:
    """``python -m tracking.serving.server MODEL_URI [--port N]``; ``podium serve`` calls
    :func:`serve`."""
    ap = argparse.ArgumentParser(prog="python -m tracking.serving.server", description=main.__doc__)
    ap.add_argument("model_uri")
    ap.add_argument("--port", type=int, default=5001)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--tracking-uri", default=None)
    args = ap.parse_args(argv)
    try:
        serve(args.model_uri, args.port, args.host, args.tracking_uri, build_model)
    except (ServeError, UntrustedModelError) as e:
        print(f"podium serve: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
