"""The models ``podium serve`` loads, only in formats that cannot execute code on load: ONNX run
by ONNX Runtime, or a weights-only state dict rebuilt by a builder the caller trusts; a pickled
model is refused (:class:`tracking.errors.UntrustedModelError`)."""

from __future__ import annotations

import json
import pickle
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tracking import keys, pipeline
from tracking.errors import UntrustedModelError

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
