"""Registry teachers a ``distill`` step names (``models:/name@alias``): checked and downloaded
by the driver before any trial starts.

Workers never talk to MLflow: the driver calls :func:`fetch_teachers` and hands each trial the
local folders (``TrialContext.extras["teachers"]``); spec validation calls :func:`check_teacher`
so a teacher URI that does not resolve stops the sweep before Ray or any run starts. Nothing is
deserialised: a teacher is an ONNX file run by ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tracking.store import TrackingError, version_source


def fetch_teacher(model_uri: str, tracking_uri: str | None, dst: Path) -> Path:
    """Download a registered model's files (nothing is deserialised) and return the folder.

    Raises:
        TrackingError: the URI does not resolve (no such model, version or alias), with the reason.
    """
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
