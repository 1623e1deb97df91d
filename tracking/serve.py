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

The HTTP server is Starlette on uvicorn (:mod:`tracking.serve_http`: timeouts, a bound on
requests in flight, columns matched by name, CSV); this module finds, checks and loads the model.

Example (a shell)::

    podium serve models:/digits-classifier@champion --port 5001
    curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
        -d '{"inputs": [[0.0, 0.1, ...]]}'
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tracking import keys, pipeline
from tracking.errors import UntrustedModelError
from tracking.store import version_source

MAX_BODY_BYTES = 64 * 1024 * 1024  # refuse bigger requests before reading them
# ONNX input types a request's numbers are cast to (JSON has one kind of number): float features,
# int64 token ids (a text model's input, e.g. the rotten-tomatoes task's).
ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,  # images as stored: a pipeline scales them in its graph
    "tensor(string)": np.object_,  # text: a pipeline tokenizes it in its graph
}
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pth", ".joblib", ".cloudpickle", ".pt2")


class ServeError(Exception):
    """The model cannot be found, loaded or served."""


class Scorer(Protocol):
    """What the server needs from a loaded model."""

    input_shape: tuple[int, ...] | None  # one example's shape, if the model declares it
    # A model of several inputs: each one's name and example shape (None where not fixed);
    # predict then takes {name: batch}.
    input_names: list[str]
    input_shapes: list[tuple[int, ...] | None]
    description: str

    def predict(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray: ...


# --------------------------------------------------------------------------- loading


class OnnxScorer:
    """An ONNX file run by ONNX Runtime on CPU, one intra-op thread per request."""

    def __init__(self, path: Path, threads: int = 1, model_inputs: bool = False) -> None:
        # Requests run on their own threads; one intra-op thread each avoids oversubscription.
        try:
            source: Any = path
            if model_inputs:  # the model alone, for a caller that sends model inputs
                import onnx

                source = pipeline.model_part(onnx.load(str(path))).SerializeToString()
            self._session = pipeline.session(source, threads)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ServeError(f"cannot load ONNX model {path.name}: {e}") from e
        self.output_names = [o.name for o in self._session.get_outputs()]
        # A pipeline answers each input with a label and probabilities (or a prediction);
        # a model registered before pipelines, or served with model_inputs, with its logits.
        self.answers = pipeline.is_pipeline(self.output_names)
        declared = self._session.get_inputs()
        self.input_names = [i.name for i in declared]
        self._dtypes = [ONNX_DTYPES.get(i.type, np.float32) for i in declared]
        self.input_shapes = [
            tuple(i.shape[1:]) if all(isinstance(d, int) for d in i.shape[1:]) else None
            for i in declared
        ]
        self.input_shape = self.input_shapes[0]
        self.input_dtypes = list(self._dtypes)
        what = "answers" if self.answers else "logits"
        self.description = f"ONNX {path.name} (onnxruntime; {what})"

    def predict(self, x: np.ndarray | dict[str, np.ndarray]) -> Any:
        batches = x if isinstance(x, dict) else {self.input_names[0]: x}
        feed = {
            n: batches[n].astype(t, copy=False)
            for n, t in zip(self.input_names, self._dtypes, strict=True)
        }
        values = self._session.run(None, feed)
        if not self.answers:
            return values[0]
        return answer_rows(self.output_names, values)


def answer_rows(names: Sequence[str], values: Sequence[Any]) -> list[dict[str, Any]]:
    """A pipeline's outputs as one JSON-able answer per input row, as MLflow's scoring server
    gives a DataFrame's rows: ``[{"label": ..., "probabilities": {...}}, ...]``."""
    columns = [[_plain(v) for v in value] for value in values]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if isinstance(value, np.generic) else value


class TorchStateDictScorer:
    """A weights-only state dict loaded into a model rebuilt from ``arch.json``."""

    def __init__(self, weights: Path, arch: Path, build_model: Callable[..., Any]) -> None:
        import torch

        try:
            cfg = json.loads(arch.read_text())
            # The values as arch.json has them: the builder the caller passes checks them (they
            # come from a registry, and name the code that rebuilds the model).
            model = build_model(
                cfg["model"], cfg["input_shape"], cfg["num_classes"], cfg.get("extra")
            )
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (
            OSError,
            ValueError,
            KeyError,
            RuntimeError,
            TypeError,
            pickle.UnpicklingError,
        ) as e:
            # UnpicklingError: the weights file holds more than tensors; weights_only refused it.
            raise ServeError(
                f"cannot rebuild the model from {arch.name} + {weights.name}: {e}"
            ) from e
        self._model = model.eval()
        self._lock = threading.Lock()  # torch modules are not documented as thread-safe
        shape, dtype = cfg["input_shape"], cfg.get("input_dtype", "float32")
        # Several inputs: one shape (a list) per tensor, and one dtype each.
        several = bool(shape) and all(isinstance(s, list) for s in shape)
        shapes = [tuple(int(d) for d in s) for s in shape] if several else [tuple(shape)]
        dtypes = dtype if isinstance(dtype, list) else [dtype] * len(shapes)
        self.input_names = keys.input_names(len(shapes))
        self.input_shapes: list[tuple[int, ...] | None] = list(shapes)
        self.input_shape: tuple[int, ...] | None = shapes[0]
        self._dtypes = [np.dtype(d) for d in dtypes]  # int64 for token ids
        self.description = f"PyTorch state dict {weights.name} ({cfg['model'].get('arch', '?')})"

    def predict(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        import torch

        batches = x if isinstance(x, dict) else {self.input_names[0]: x}
        tensors = [
            torch.from_numpy(batches[n].astype(t, copy=False))
            for n, t in zip(self.input_names, self._dtypes, strict=True)
        ]
        with self._lock, torch.inference_mode():
            return self._model(*tensors).numpy()


def load_scorer(
    path: str | Path, build_model: Callable[..., Any] | None = None, model_inputs: bool = False
) -> Scorer:
    """Load the safest servable format found under ``path`` (a model folder or a file).

    ONNX is preferred (fastest and self-describing), then a state dict + ``arch.json``.

    Raises:
        UntrustedModelError: only pickled formats are present.
        ServeError: nothing servable (or a state dict but no ``build_model``).
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    onnx = _prefer(files, keys.ONNX_ARTIFACT, ".onnx")
    if onnx:
        return OnnxScorer(onnx, model_inputs=model_inputs)
    weights = next((f for f in files if f.name == keys.STATE_DICT_ARTIFACT), None)
    arch = next((f for f in files if f.name == keys.ARCH_ARTIFACT), None)
    if weights and arch:
        if build_model is None:
            raise ServeError(
                f"{path} holds a state dict; serving it needs a build_model function "
                "(use `podium serve`, which passes Podium's model registry)"
            )
        return TorchStateDictScorer(weights, arch, build_model)
    pickled = [f.name for f in files if f.suffix in PICKLE_SUFFIXES]
    if pickled:
        raise UntrustedModelError(
            f"refusing to load {', '.join(pickled)} from {path}: pickled models can run arbitrary "
            f"code when loaded. Podium serves only ONNX ({keys.ONNX_ARTIFACT}) or a weights-only "
            f"state dict ({keys.STATE_DICT_ARTIFACT} + {keys.ARCH_ARTIFACT}); add an export step "
            "to the recipe or re-register the model with Podium."
        )
    raise ServeError(
        f"no servable model under {path}: expected {keys.ONNX_ARTIFACT} or "
        f"{keys.STATE_DICT_ARTIFACT} + {keys.ARCH_ARTIFACT}; found "
        f"{', '.join(f.name for f in files) or 'nothing'}"
    )


def _prefer(files: Sequence[Path], name: str, suffix: str) -> Path | None:
    exact = [f for f in files if f.name == name] or [f for f in files if f.suffix == suffix]
    return exact[0] if exact else None


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


# --------------------------------------------------------------------------- protocol


def parse_inputs(
    payload: Any,
    input_shape: tuple[int, ...] | None,
    name: str = "inputs",
    dtype: Any = np.float32,
) -> np.ndarray:
    """A batch of ``dtype`` from an MLflow scoring request body (already JSON-decoded): numbers
    (float32 or float64 columns; uint8 pixels, checked to be whole numbers 0..255) or, for a
    text pipeline (``object``), one string per example.

    Accepts ``inputs`` / ``instances`` (lists of examples, flat or shaped) and ``dataframe_split``
    / ``dataframe_records`` (one flat row per example). Flat rows are reshaped to ``input_shape``.

    Raises:
        ValueError: the body has none of the keys, or the values are not a numeric batch.
    """
    if not isinstance(payload, dict):
        raise ValueError('the body must be a JSON object such as {"inputs": [[...], ...]}')
    if "inputs" in payload or "instances" in payload:
        rows = payload.get("inputs", payload.get("instances"))
    elif "dataframe_split" in payload:
        rows = (payload["dataframe_split"] or {}).get("data")
    elif "dataframe_records" in payload:
        recs = payload["dataframe_records"]
        rows = [list(r.values()) if isinstance(r, dict) else r for r in recs or []]
    else:
        raise ValueError(
            "expected one of: inputs, instances, dataframe_split, dataframe_records; "
            f"got keys {sorted(payload)}"
        )
    if dtype is np.object_:
        return _strings(rows, name)
    try:
        x = np.asarray(rows, dtype=np.float64 if dtype is not np.float32 else np.float32)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name} must be a rectangular list of numbers: {e}") from None
    if dtype is np.uint8:
        x = _pixels(x, name)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one example")
    if x.ndim == 1 and input_shape != ():  # () : one number per example (a category id)
        x = x[None, :]
    if input_shape is not None and x.shape[1:] != input_shape:
        per = int(np.prod(input_shape))
        if x[0].size != per:
            raise ValueError(
                f"each example of {name} must have {per} values (shape {list(input_shape)}), "
                f"got shape {list(x.shape[1:])}"
            )
        x = x.reshape((x.shape[0], *input_shape))
    return np.ascontiguousarray(x)


def _strings(rows: Any, name: str) -> np.ndarray:
    """One string per example (a text pipeline's input)."""
    if isinstance(rows, str):
        rows = [rows]
    if not isinstance(rows, list) or not rows:
        raise ValueError(f'{name} must be a list of strings, e.g. {{"inputs": ["a review"]}}')
    # A one-column DataFrame's rows (dataframe_split, dataframe_records) are [text] each.
    rows = [r[0] if isinstance(r, list) and len(r) == 1 else r for r in rows]
    for i, row in enumerate(rows):
        if not isinstance(row, str):
            raise ValueError(f"{name}[{i}] must be a string, got {type(row).__name__}")
    return np.asarray(rows, dtype=object)


def _pixels(x: np.ndarray, name: str) -> np.ndarray:
    """uint8 pixels: whole numbers 0..255, refused by position otherwise (never wrapped)."""
    bad = ~np.isfinite(x) | (x < 0) | (x > 255) | (x != np.round(x))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must hold pixels as whole numbers 0..255 (uint8); got {x[where]} at "
            f"{list(where)}"
        )
    return x.astype(np.uint8)


def parse_request(payload: Any, scorer: Scorer) -> np.ndarray | dict[str, np.ndarray]:
    """The batch a request body holds for ``scorer``: an array for a one-input model (see
    :func:`parse_inputs`), ``{name: array}`` for a model of several inputs, sent by name as
    ``{"inputs": {"input_0": [...], "input_1": [...]}}`` (MLflow's named-tensor form).

    Raises:
        ValueError: an input is missing, unknown or malformed, or their row counts differ.
    """
    names = scorer.input_names
    dtypes = getattr(scorer, "input_dtypes", None) or [np.float32] * len(names)
    if len(names) == 1:
        return parse_inputs(payload, scorer.input_shape, dtype=dtypes[0])
    named = payload.get("inputs") if isinstance(payload, dict) else None
    if not isinstance(named, dict):
        raise ValueError(
            f"this model takes {len(names)} inputs by name: send "
            '{"inputs": {' + ", ".join(f'"{n}": [...]' for n in names) + "}}"
        )
    missing, unknown = sorted(set(names) - set(named)), sorted(set(named) - set(names))
    if missing or unknown:
        raise ValueError(f"inputs must be exactly {names}; missing {missing}, unknown {unknown}")
    out = {
        n: parse_inputs({"inputs": named[n]}, shape, n, dtype)
        for n, shape, dtype in zip(names, scorer.input_shapes, dtypes, strict=True)
    }
    counts = {n: len(a) for n, a in out.items()}
    if len(set(counts.values())) > 1:
        raise ValueError(f"every input needs one row per example; got rows {counts}")
    return out


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
    from tracking import serve_http

    with fetched(model_uri, tracking_uri) as folder:
        scorer = load_scorer(folder, build_model, model_inputs)
        # A DataFrame's columns by name, for the graph that takes them (not the model alone).
        columns = None if model_inputs else serve_http.signature_columns(folder)
    sock = serve_http.bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    (ready or (lambda u: print(f"serving {model_uri} ({scorer.description}) at {u}", flush=True)))(
        url
    )
    try:
        serve_http.run(serve_http.make_app(scorer, columns), sock)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


def main(argv: list[str] | None = None, build_model: Callable[..., Any] | None = None) -> int:
    """``python -m tracking.serve MODEL_URI [--port N]``; ``podium serve`` calls :func:`serve`."""
    ap = argparse.ArgumentParser(prog="python -m tracking.serve", description=main.__doc__)
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
