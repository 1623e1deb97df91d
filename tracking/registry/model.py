"""A trial's model logged to its MLflow run: the whole pipeline as one ONNX graph (raw inputs to an
answer; a text pipeline as a model-from-code pyfunc, :mod:`tracking.registry.strings_model`), its
weights-only PyTorch state beside it, and a signature of the raw inputs."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tracking import keys, pipeline
from tracking.registry.lock import RegistryError

log = logging.getLogger(__name__)


# MLflow's PyTorch serialization for the PyTorch copy (see log_trial_model).
TORCH_FORMAT = "pickle"


class _OwnPickleNotice(logging.Filter):
    """Drops MLflow's caution about saving a pickle: it is meant for loading pickles from
    elsewhere, while these are Podium's own, and serving loads the ONNX copy."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Saving pytorch model by Pickle")


logging.getLogger("mlflow.pytorch").addFilter(_OwnPickleNotice())


def log_trial_model(
    run_id: str,
    model: Any,
    input_example: Any,
    uri: str,
    onnx_file: str | Path | None = None,
    *,
    weights: dict[str, Any] | None = None,
    arch: dict[str, Any] | None = None,
    feature_names: list[str] | None = None,
    code_paths: list[str] | None = None,
    answer: dict[str, Any] | None = None,
    front: bytes | None = None,
    raw_example: Any = None,
) -> str:
    """Log a trial's model to ``run_id`` and return the URI of what gets registered.

    What is registered is **the model that was measured**: ``onnx_file``, the file a recipe
    exported and measured (int8 where it quantized), or, without a recipe, an fp32 ONNX export
    of ``model`` made here. It is logged as MLflow model ``model`` with MLflow's ``onnx`` flavor,
    so ``mlflow.pyfunc.load_model``, ``mlflow models serve`` and every MLflow deployment target
    run it through ONNX Runtime; its signature has the task's named columns where it has them
    (``feature_names``), else a tensor of the input's dtype and shape, and ``input_example`` is
    kept with it. Beside the ONNX file: ``state_dict.pt`` (``weights``, default ``model``'s) and
    ``arch.json`` (``arch``), the PyTorch weights a weights-only load rebuilds.

    Only where the ONNX file *is* ``model`` (no recipe) is a PyTorch copy logged too, as model
    ``model_torch`` (MLflow's ``pickle`` format, which needs no TorchDynamo in the driver),
    with the user's plug-in modules packaged (``code_paths``).

    With ``answer`` (``tracking.pipeline.answer_of``), what is registered is the whole
    pipeline (``tracking.pipeline.compose``): ``front`` (ONNX bytes: raw inputs to model inputs),
    the model, and the answer (``label`` and ``probabilities``, or ``prediction`` in the target's
    units); its signature and input example are the raw inputs (``raw_example``). An
    ``onnx_file`` that already is the pipeline (a recipe's) is logged as it is.

    Args:
        input_example: a few model inputs (batch > 1: the export's batch axis stays dynamic).
    """
    import mlflow
    import mlflow.onnx
    import mlflow.pytorch
    import onnx
    import torch

    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        onnx_path = Path(onnx_file) if onnx_file else _export_onnx(model, input_example, folder)
        if onnx_path is None:
            raise RegistryError("the model cannot be exported to ONNX, so it cannot be served")
        served_example = input_example
        if answer is not None:
            onnx_path = _as_pipeline(onnx_path, answer, front, folder)
            served_example = raw_example if raw_example is not None else input_example
        torch.save(
            weights if weights is not None else model.state_dict(),
            folder / keys.STATE_DICT_ARTIFACT,
        )
        (folder / keys.ARCH_ARTIFACT).write_text(json.dumps(arch or {}))
        example, signature = _signature(onnx_path, served_example, feature_names)
        with _reopened(run_id):
            if pipeline.takes_strings(onnx_path):  # MLflow's onnx flavor cannot run its ops
                return _log_strings_model(onnx_path, example, signature, folder)
            info = mlflow.onnx.log_model(
                onnx.load(str(onnx_path)),
                name=keys.MODEL_ARTIFACT,
                signature=signature,
                input_example=example,
                extra_files=[
                    str(folder / keys.STATE_DICT_ARTIFACT),
                    str(folder / keys.ARCH_ARTIFACT),
                ],
                pip_requirements=_onnx_requirements(),
                # One file, as it was measured (ONNX's default splits weights into side files).
                save_as_external_data=False,
                # Measured on the CPU; MLflow's default asks for CUDA first and warns without it.
                onnx_execution_providers=["CPUExecutionProvider"],
            )
            # MLflow's PyTorch pyfunc feeds a model one tensor: several inputs get ONNX only.
            if onnx_file is None and not isinstance(input_example, tuple):
                mlflow.pytorch.log_model(
                    model,
                    name=keys.TORCH_MODEL_ARTIFACT,
                    input_example=input_example,
                    code_paths=code_paths or None,
                    pip_requirements=_pip_requirements(),
                    serialization_format=TORCH_FORMAT,
                )
    return info.model_uri


def _log_strings_model(onnx_path: Path, example: Any, signature: Any, folder: Path) -> str:
    """A text pipeline, logged as MLflow model-from-code (``tracking/registry/strings_model.py``,
    which imports neither Podium nor torch) with the graph as its ``onnx`` artifact: its tokenizer's
    string ops need onnxruntime-extensions, which MLflow's onnx flavor cannot load."""
    import mlflow.pyfunc
    import onnxruntime_extensions

    served = folder / "served" / keys.ONNX_ARTIFACT  # named as podium serve looks for it
    served.parent.mkdir()
    shutil.copyfile(onnx_path, served)
    info = mlflow.pyfunc.log_model(
        name=keys.MODEL_ARTIFACT,
        python_model=str(Path(__file__).with_name("strings_model.py")),
        artifacts={
            "onnx": str(served),
            "state_dict": str(folder / keys.STATE_DICT_ARTIFACT),
            "arch": str(folder / keys.ARCH_ARTIFACT),
        },
        signature=signature,
        input_example=example,
        pip_requirements=[
            *_onnx_requirements(),
            f"onnxruntime-extensions=={onnxruntime_extensions.__version__}",
            "pandas",
        ],
    )
    return str(info.model_uri)


@contextmanager
def _reopened(run_id: str) -> Iterator[None]:
    """The trial's ended run, active again for logging its model, then ended with the status
    it had: a failed upload (a full artifact store) says nothing about the trial, and MLflow's
    own ``with start_run`` would end the run FAILED."""
    import mlflow

    status = mlflow.MlflowClient().get_run(run_id).info.status
    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        mlflow.end_run(status)


def _as_pipeline(
    onnx_path: Path, answer: dict[str, Any], front: bytes | None, folder: Path
) -> Path:
    """``onnx_path`` as the whole pipeline: composed here unless it already is one."""
    import onnx

    model = onnx.load(str(onnx_path))
    if pipeline.is_pipeline([o.name for o in model.graph.output]):
        return onnx_path
    front_model = onnx.load_from_string(front) if front else None
    path = folder / "pipeline" / keys.ONNX_ARTIFACT
    path.parent.mkdir()
    onnx.save(pipeline.compose(model, answer, front_model), str(path))
    return path


def _signature(onnx_path: Path, example: Any, names: list[str] | None) -> tuple[Any, Any]:
    """The logged model's input example and signature: named columns of the inputs' own dtype
    for a tabular task with feature names (requests are matched by column name, not position;
    pandas' float64 where the task's raw columns are), else a tensor of the input's own dtype
    and shape. The outputs are what the ONNX file computes: for a pipeline, one row per input
    (``label`` and ``probabilities``, or ``prediction``)."""
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    session = pipeline.session(onnx_path)
    outputs = [o.name for o in session.get_outputs()]
    if isinstance(example, tuple):  # several inputs: named tensors, as requests send them
        feed = {i.name: np.asarray(x) for i, x in zip(session.get_inputs(), example, strict=True)}
        return feed, infer_signature(feed, _answers(outputs, session.run(None, feed)))
    x = pipeline.as_array(example)
    name = session.get_inputs()[0].name
    answers = _answers(outputs, session.run(None, {name: x}))
    if x.dtype == object:  # strings: one column of text, named as the graph's input
        frame = pd.DataFrame({name: list(x)})
        return frame, infer_signature(frame, answers)
    if names and x.ndim == 2 and x.shape[1] == len(names):
        frame = pd.DataFrame(x, columns=list(names))
        return frame, infer_signature(frame, answers)
    return x, infer_signature(x, answers)


def _answers(names: list[str], values: list[Any]) -> Any:
    """A pipeline's outputs as one row per input (a DataFrame); a model's logits as they are."""
    import pandas as pd

    if not pipeline.is_pipeline(names):
        return values[0]
    return pd.DataFrame(
        {n: list(v) if isinstance(v, list) else list(v) for n, v in zip(names, values, strict=True)}
    )


def _onnx_requirements() -> list[str]:
    import onnx
    import onnxruntime

    return [f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}", "numpy"]


def _pip_requirements() -> list[str]:
    """What the logged model needs, stated: MLflow's own inference imports the model in a
    subprocess and took 10+ s per promotion here."""
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", "numpy"]


def warm_up_model_logging() -> None:
    """Pay the first-use costs of logging a model ahead of time: importing MLflow's ONNX and
    PyTorch flavors and building MLflow's map of installed packages (read to check the requirements,
    0.6-1.3 s).

    The runner calls this in a background thread while trials train, so the winner's
    ``log_model`` at the end of a sweep does not start cold. It saves a tiny model to a
    temporary folder, in the format :func:`log_trial_model` uses: nothing reaches the tracking
    store, and TorchDynamo is not imported.
    """
    import mlflow.onnx  # noqa: F401  (the registered model's flavor)
    import mlflow.pytorch
    import torch

    model = torch.nn.Linear(2, 2).eval()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.pytorch.save_model(
                model,
                str(Path(tmp) / "model"),
                input_example=torch.zeros(2, 2).numpy(),
                pip_requirements=_pip_requirements(),
                serialization_format=TORCH_FORMAT,
            )
    except Exception:  # noqa: BLE001 - a warm-up only; the real logging reports its own errors
        log.debug("model-logging warm-up failed", exc_info=True)


def _export_onnx(model: Any, example: Any, folder: Path) -> Path | None:
    """An fp32 ONNX export with a dynamic batch axis, or None (logged) if the model cannot be."""
    import torch

    path = folder / keys.ONNX_ARTIFACT
    try:
        xs = tuple(torch.as_tensor(x[:2]) for x in _several(example))
        names = keys.input_names(len(xs))
        # The TorchScript-based exporter: no onnxscript optimisation pass, a second or less.
        torch.onnx.export(
            model.eval(),
            xs,
            str(path),
            input_names=names,
            output_names=[keys.ONNX_OUTPUT],
            dynamic_axes={n: {0: "batch"} for n in names},
            dynamo=False,
        )
    except Exception as e:  # noqa: BLE001 - serving is optional; logging the model is not
        log.warning("no ONNX export for serving: %s", e)
        return None
    return path


def _several(example: Any) -> tuple:
    """The example's input arrays: one, or each of a several-input model's."""
    return example if isinstance(example, tuple) else (example,)
