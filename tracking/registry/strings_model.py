"""MLflow model-from-code for a champion whose ONNX graph takes strings (a text task's).

The graph tokenizes inside itself with onnxruntime-extensions' string ops, and MLflow's ``onnx``
flavor (3.17) opens its session without any custom-op library (no MLmodel setting or
environment variable adds one), so it cannot run such a graph. This file is the registered
model's code instead: it imports neither Podium nor torch, only ONNX Runtime, its extensions,
numpy and pandas, and runs the graph (the ``onnx`` artifact, the tokenizer's vocabulary inside
it) on review strings, one answer per string (``label`` and ``probabilities``).

It is data MLflow copies into the model, loaded by ``mlflow.pyfunc.load_model`` and ``mlflow
models serve``; ``tracking.registry.model`` logs it (``python_model=`` this file's path).
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd


class OnnxStrings(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    """An ONNX graph with string inputs, run by ONNX Runtime with onnxruntime-extensions."""

    def load_context(self, context: Any) -> None:
        import onnxruntime as ort
        from onnxruntime_extensions import get_library_path

        options = ort.SessionOptions()
        options.register_custom_ops_library(get_library_path())
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            context.artifacts["onnx"], options, providers=["CPUExecutionProvider"]
        )

    # No type hints: MLflow would read them as the input's schema (the signature says it).
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN201
        texts = _texts(model_input)
        name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        values = self.session.run(None, {name: texts})
        return pd.DataFrame({n: list(v) for n, v in zip(outputs, values, strict=True)})


def _texts(model_input: Any) -> np.ndarray:
    """One string per row: a DataFrame's first column, a list, or an array (any shape)."""
    if isinstance(model_input, pd.DataFrame):
        model_input = model_input.iloc[:, 0]
    return np.asarray(model_input, dtype=object).reshape(-1).astype(str).astype(object)


mlflow.models.set_model(OnnxStrings())
