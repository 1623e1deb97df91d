"""ONNX models in the MLflow registry: register a recipe's compressed ``model.onnx`` (the
``mlflow.onnx`` flavor, loadable without unpickling anything), load it back, and resolve the
registry teachers a ``distill`` step names before any trial starts.

Workers never talk to MLflow: the driver calls :func:`fetch_teachers` and hands each trial the
local folders (``TrialContext.extras["teachers"]``); spec validation calls :func:`check_teacher`
so a teacher URI that does not resolve stops the sweep before Ray or any run starts.

Example (needs a tracking store and a run)::

    version = register_onnx_model(uri, run_id, "model.onnx", "fashion-small", "champion")
    session = load_onnx_session("models:/fashion-small@champion", uri)
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tracking import keys
from tracking.store import TrackingError, version_source

ONNX_MODEL_NAME = "onnx_model"  # the logged model's name in the run (beside the torch "model")


def log_onnx_model(
    run_id: str, onnx_path: str | Path, uri: str, name: str = ONNX_MODEL_NAME
) -> str:
    """Log an ONNX file to ``run_id`` with the ``mlflow.onnx`` flavor; returns the model URI.

    Raises:
        TrackingError: the file is not a valid ONNX model, or MLflow refused the write.
    """
    import mlflow
    import mlflow.onnx
    import onnx

    try:
        proto = onnx.load(str(onnx_path))
        onnx.checker.check_model(proto)
    except (OSError, onnx.checker.ValidationError) as e:
        raise TrackingError(f"{onnx_path} is not a valid ONNX model: {e}") from e
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id):
            # One file, no external-data sidecars: what a recipe measured is what is registered.
            info = mlflow.onnx.log_model(
                proto,
                name=name,
                save_as_external_data=False,
                onnx_execution_providers=["CPUExecutionProvider"],
            )
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(
            f"cannot log {Path(onnx_path).name} to run {run_id} at {uri}: {e}"
        ) from e
    return info.model_uri


def register_onnx_model(
    uri: str, run_id: str, onnx_path: str | Path, model_name: str, alias: str | None = None
) -> str:
    """Log ``onnx_path`` to ``run_id``, register it as a new version of ``model_name`` and
    optionally point ``alias`` at it; returns the version.

    This registers unconditionally: promotion decisions (champion vs challenger) belong to
    ``tracking.registry``; use this to publish a compressed artifact as its own model.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    model_uri = log_onnx_model(run_id, onnx_path, uri)
    # This store's registry, not the process-wide one mlflow.register_model would use.
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    try:
        if not client.search_registered_models(filter_string=f"name = '{model_name}'"):
            client.create_registered_model(model_name)
        mv = client.create_model_version(model_name, model_uri, run_id=run_id, model_id=model_id)
        if alias:
            client.set_registered_model_alias(model_name, alias, mv.version)
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot register {model_name!r} at {uri}: {e}") from e
    return str(mv.version)


def load_onnx_session(model_uri: str, uri: str, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session for a registered ONNX model (``models:/name@alias``)."""
    import onnxruntime as ort

    # The session reads the file when it is made, so the download goes with the folder.
    with tempfile.TemporaryDirectory(prefix="podium-onnx-") as tmp:
        path = find_onnx(fetch_teacher(model_uri, uri, Path(tmp)))
        if path is None:
            raise TrackingError(f"{model_uri} holds no ONNX file ({keys.ONNX_ARTIFACT})")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def find_onnx(folder: Path) -> Path | None:
    """The ONNX file in a downloaded model folder: ``model.onnx`` first, else any ``.onnx``."""
    files = sorted(p for p in folder.rglob("*.onnx") if p.is_file())
    exact = [p for p in files if p.name == keys.ONNX_ARTIFACT]
    return (exact or files)[0] if files else None


def fetch_teacher(model_uri: str, tracking_uri: str | None, dst: Path) -> Path:
    """Download a registered model's files (nothing is deserialised) and return the folder.

    Raises:
        TrackingError: the URI does not resolve (no such model, version or alias), with the reason.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=version_source(model_uri, tracking_uri),
            dst_path=str(dst),
            tracking_uri=tracking_uri,
        )
    except MlflowException as e:
        raise TrackingError(f"{model_uri} does not resolve at {tracking_uri}: {e.message}") from e
    except OSError as e:
        raise TrackingError(f"cannot download {model_uri} from {tracking_uri}: {e}") from e
    return Path(local)


def check_teacher(model_uri: str, tracking_uri: str | None) -> str | None:
    """None when ``models:/name@alias`` (or ``/version``) resolves to a registered version, else
    why not. Only metadata is read; nothing is downloaded."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    rest = model_uri.removeprefix("models:/")
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)  # this store's registry
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            client.get_model_version_by_alias(name, alias)
        else:
            name, version = rest.rsplit("/", 1)
            client.get_model_version(name, version)
    except MlflowException as e:
        return (
            f"teacher {model_uri} does not resolve in the registry at {tracking_uri}: {e.message}"
        )
    except ValueError:
        return f"teacher {model_uri!r} is not models:/<name>@<alias> or models:/<name>/<version>"
    return None


def fetch_teachers(uris: Iterable[str], tracking_uri: str | None, dst: Path) -> dict[str, str]:
    """Download every distinct registry teacher into ``dst``; returns URI → local folder, what
    ``TrialContext.extras["teachers"]`` carries to the workers."""
    out: dict[str, str] = {}
    for i, uri in enumerate(dict.fromkeys(uris)):
        out[uri] = str(fetch_teacher(uri, tracking_uri, dst / f"teacher{i}"))
    return out
