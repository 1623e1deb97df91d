"""The registered model as one ONNX graph: the user's raw input to an answer in the user's terms.

A champion is three graphs joined end to end (:func:`compose`):

- the task's **front**: raw inputs (a DataFrame's float64 columns, uint8 images, review strings)
  to the model's inputs, fitted on the training split (standardising, scaling, a tokenizer whose
  vocabulary lives in the graph). Exported by the worker that trained the model; optional;
- the **model** (fp32, or int8 after a quantize step);
- the **answer** (:func:`answer_model`), built here from a small JSON description
  (:func:`answer_of`): ``label`` (the class name) and ``probabilities`` (class name → probability,
  ONNX-ML's ``ZipMap``) for a classifier, ``prediction`` in the target's own units for a
  regression, ``probabilities`` and ``labels`` (those over 0.5, joined by commas) for a
  multilabel model, ``output`` as computed for a custom kind.

Every output has one entry per input row, so MLflow's ONNX flavor answers a DataFrame of n rows
with n rows (``mlflow.pyfunc``, ``mlflow models serve``), and ``podium serve`` the same.

A model registered before this existed ends in ``logits`` (:func:`is_pipeline` tells them apart);
it still serves, on model inputs.

Pure ``onnx`` on purpose: the driver composes the winner's graph from its checkpoint with
neither torch nor the task's code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ANSWER_KEY = "answer"  # the answer's description in a checkpoint's facts and the model card
LABEL, PROBABILITIES, PREDICTION, OUTPUT = "label", "probabilities", "prediction", "output"
LABELS = "labels"  # a multilabel model's labels over 0.5, joined by commas
MAX_LABEL_SETS_BITS = 12  # up to 12 labels: a LabelEncoder of 4,096 label sets
FRONT_OUTPUT = "podium_model_input"
LOGITS = "logits"
ML_DOMAIN, ML_OPSET = "ai.onnx.ml", 3


def answer_of(
    kind: str,
    width: int,
    classes: Sequence[str] | None = None,
    target_scale: tuple[Sequence[float], Sequence[float]] | None = None,
) -> dict[str, Any]:
    """The JSON description of a model's answer.

    Args:
        kind: the task's kind (``classification``, ``regression``, ``multilabel``, ``custom``).
        width: the model's output width (classes, targets or labels).
        classes: class (or label) names; default the ids as strings.
        target_scale: regression targets trained as ``(y - mean) / std``: ``(mean, std)``, one
            value per target.

    Example:
        >>> answer_of("regression", 1, target_scale=([150.0], [77.0]))["target_std"]
        [77.0]
    """
    names = [str(c) for c in classes] if classes else [str(i) for i in range(width)]
    out: dict[str, Any] = {"kind": kind, "width": int(width), "classes": names}
    if target_scale is not None:
        mean, std = (np.broadcast_to(np.asarray(v, float), (width,)) for v in target_scale)
        out.update(target_mean=[float(v) for v in mean], target_std=[float(v) for v in std])
    return out


def answer_model(answer: Mapping[str, Any], opset: int) -> Any:
    """The answer graph: input ``logits`` (float, ``(batch, width)``) to the answer's outputs."""
    from onnx import TensorProto, helper

    kind, width, classes = answer["kind"], int(answer["width"]), list(answer["classes"])
    nodes: list[Any] = []
    outs: list[Any] = []
    if kind == "classification":
        nodes += [
            helper.make_node("Softmax", [LOGITS], ["answer_p"], axis=-1),
            helper.make_node("ArgMax", ["answer_p"], ["answer_id"], axis=1, keepdims=0),
            _string_constant("answer_names", classes),
            helper.make_node("Gather", ["answer_names", "answer_id"], [LABEL], axis=0),
            _zipmap("answer_p", classes),
        ]
        outs += [helper.make_tensor_value_info(LABEL, TensorProto.STRING, ["batch"]), _map_out()]
    elif kind == "multilabel":
        nodes += [helper.make_node("Sigmoid", [LOGITS], ["answer_p"]), _zipmap("answer_p", classes)]
        outs.append(_map_out())
        if width <= MAX_LABEL_SETS_BITS:
            nodes += _labels_over_half(classes)
            outs.append(helper.make_tensor_value_info(LABELS, TensorProto.STRING, ["batch"]))
    elif kind == "regression":
        mean = answer.get("target_mean", [0.0] * width)
        std = answer.get("target_std", [1.0] * width)
        nodes += [
            _float_constant("answer_std", std),
            _float_constant("answer_mean", mean),
            helper.make_node("Mul", [LOGITS, "answer_std"], ["answer_scaled"]),
            helper.make_node("Add", ["answer_scaled", "answer_mean"], ["answer_units"]),
        ]
        shape: list[Any] = ["batch"] if width == 1 else ["batch", width]
        # One target: a (batch,) prediction, so a DataFrame's n rows get n answers.
        nodes += [
            helper.make_node(
                "Constant", [], ["answer_shape"], value=_ints([-1] if width == 1 else [-1, width])
            ),
            helper.make_node("Reshape", ["answer_units", "answer_shape"], [PREDICTION]),
        ]
        outs.append(helper.make_tensor_value_info(PREDICTION, TensorProto.FLOAT, shape))
    else:
        nodes.append(helper.make_node("Identity", [LOGITS], [OUTPUT]))
        outs.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", width]))
    graph = helper.make_graph(
        nodes,
        "answer",
        [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", width])],
        outs,
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(ML_DOMAIN, ML_OPSET)]
    return helper.make_model(graph, opset_imports=opsets)


def _labels_over_half(classes: Sequence[str]) -> list[Any]:
    """``labels``: per row, the names of the labels whose probability is over 0.5 (the
    threshold the kind's micro-F1 uses), joined by commas, "" for none. Standard ONNX has no
    string join before opset 20, so each row's set is a number (bit j: label j is on) that
    ONNX-ML's LabelEncoder maps to its string: one entry per possible set, hence the cap on
    the label count (MAX_LABEL_SETS_BITS)."""
    from onnx import TensorProto, helper

    width = len(classes)
    sets = range(2**width)
    names = [",".join(c for j, c in enumerate(classes) if code >> j & 1) for code in sets]
    powers = helper.make_tensor("v", TensorProto.INT64, [width], [2**j for j in range(width)])
    return [
        helper.make_node("Constant", [], ["answer_half"], value=_floats([0.5])),
        helper.make_node("Greater", ["answer_p", "answer_half"], ["answer_on"]),
        helper.make_node("Cast", ["answer_on"], ["answer_bits"], to=TensorProto.INT64),
        helper.make_node("Constant", [], ["answer_powers"], value=powers),
        helper.make_node("Mul", ["answer_bits", "answer_powers"], ["answer_weighted"]),
        helper.make_node("Constant", [], ["answer_axis"], value=_ints([1])),
        helper.make_node(
            "ReduceSum", ["answer_weighted", "answer_axis"], ["answer_code"], keepdims=0
        ),
        helper.make_node(
            "LabelEncoder",
            ["answer_code"],
            [LABELS],
            domain=ML_DOMAIN,
            keys_int64s=list(sets),
            values_strings=names,
            default_string="",
        ),
    ]


def _floats(values: Sequence[float]) -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor("v", TensorProto.FLOAT, [len(values)], list(values))


def _ints(values: Sequence[int]) -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor("v", TensorProto.INT64, [len(values)], list(values))


def _float_constant(name: str, values: Sequence[float]) -> Any:
    from onnx import TensorProto, helper

    tensor = helper.make_tensor(name, TensorProto.FLOAT, [len(values)], list(values))
    return helper.make_node("Constant", [], [name], value=tensor)


def _string_constant(name: str, values: Sequence[str]) -> Any:
    from onnx import TensorProto, helper

    raw = [v.encode("utf-8") for v in values]
    tensor = helper.make_tensor(name, TensorProto.STRING, [len(values)], raw)  # type: ignore[arg-type]
    return helper.make_node("Constant", [], [name], value=tensor)


def _zipmap(probabilities: str, classes: Sequence[str]) -> Any:
    from onnx import helper

    return helper.make_node(
        "ZipMap", [probabilities], [PROBABILITIES], domain=ML_DOMAIN, classlabels_strings=classes
    )


def _map_out() -> Any:
    from onnx import TensorProto, helper

    value = helper.make_tensor_type_proto(TensorProto.FLOAT, [])
    kind = helper.make_sequence_type_proto(helper.make_map_type_proto(TensorProto.STRING, value))
    return helper.make_value_info(PROBABILITIES, kind)


def compose(model: Any, answer: Mapping[str, Any], front: Any = None) -> Any:
    """One graph: ``front`` (optional) → ``model`` → the answer.

    ``model`` has one output (logits); with a ``front``, one input, which the front's one
    output feeds. Without a front the graph takes the model's own inputs.
    """
    from onnx import compose as onnx_compose

    opset = max(_opset(model), _opset(front) if front is not None else 0)
    model = _at_opset(model, opset)
    logits = model.graph.output[0].name
    tail = onnx_compose.add_prefix(
        answer_model(answer, opset), "answer.", rename_inputs=False, rename_outputs=False
    )
    whole = _merge(model, tail, [(logits, LOGITS)])
    if front is None:
        return whole
    front = _at_opset(front, opset)
    front = onnx_compose.add_prefix(front, "front.", rename_inputs=False, rename_outputs=False)
    _rename_output(front, FRONT_OUTPUT)  # where model_part finds the model's inputs
    return _merge(front, whole, [(FRONT_OUTPUT, whole.graph.input[0].name)])


def _rename_output(model: Any, name: str) -> None:
    old = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    model.graph.output[0].name = name


def _merge(first: Any, second: Any, io_map: list[tuple[str, str]]) -> Any:
    from onnx import compose as onnx_compose
    from onnx import helper

    # merge_models needs one IR version and the same version of each domain's opset.
    ir = max(first.ir_version, second.ir_version)
    first.ir_version = second.ir_version = ir
    domains: dict[str, int] = {}
    for o in [*first.opset_import, *second.opset_import]:
        domain = "" if o.domain == "ai.onnx" else o.domain
        domains[domain] = max(domains.get(domain, 0), o.version)
    for m in (first, second):
        del m.opset_import[:]
        m.opset_import.extend(helper.make_opsetid(d, v) for d, v in domains.items())
    return onnx_compose.merge_models(first, second, io_map=io_map)


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _at_opset(model: Any, opset: int) -> Any:
    if _opset(model) == opset:
        return model
    from onnx import version_converter

    return version_converter.convert_version(model, opset)


def is_pipeline(output_names: Sequence[str]) -> bool:
    """Whether a graph with these outputs answers in the user's terms (else: logits, a model
    registered before pipelines, which takes model inputs)."""
    return bool({LABEL, LABELS, PROBABILITIES, PREDICTION, OUTPUT} & set(output_names))


def scores(outputs: Mapping[str, Any], answer: Mapping[str, Any]) -> np.ndarray:
    """The pipeline's outputs as a float ``(n, width)`` array the task's metrics read like
    logits: log-probabilities for a classifier (same argmax, same cross-entropy), log-odds for a
    multilabel model, the prediction in the target's units for a regression."""
    kind, classes = answer["kind"], list(answer["classes"])
    if kind in ("classification", "multilabel"):
        rows = outputs[PROBABILITIES]
        p = np.array([[row[c] for c in classes] for row in rows], dtype=np.float64)
        p = np.clip(p, 1e-12, 1.0)
        return (
            np.log(p)
            if kind == "classification"
            else np.log(p) - np.log1p(-np.minimum(p, 1 - 1e-12))
        )
    if kind == "regression":
        return np.asarray(outputs[PREDICTION], dtype=np.float64).reshape(
            len(outputs[PREDICTION]), -1
        )
    return np.asarray(outputs[OUTPUT], dtype=np.float64)


CONTRIB_DOMAIN = "ai.onnx.contrib"  # onnxruntime-extensions' string and tokenizer ops


def session(model: Any, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session for a file or serialized graph, with onnxruntime-extensions'
    ops registered when the graph uses them (a text pipeline's tokenizer)."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    source = str(model) if not isinstance(model, bytes) else model
    proto = (
        onnx.load(source, load_external_data=False)
        if isinstance(source, str)
        else (onnx.load_from_string(source))
    )
    if any(o.domain == CONTRIB_DOMAIN for o in proto.opset_import):
        from onnxruntime_extensions import get_library_path

        opts.register_custom_ops_library(get_library_path())
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def as_array(x: Any) -> np.ndarray:
    """Inputs as numpy: tensors as they are typed, strings as an object array."""
    if hasattr(x, "detach"):
        return np.ascontiguousarray(x.detach().cpu().numpy())
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], str):
        return np.asarray(x, dtype=object)
    return np.asarray(x)


def model_part(whole: Any) -> Any:
    """The model alone out of a pipeline graph: model inputs to ``logits`` (what distillation
    from a registered teacher and a caller sending model inputs need); a graph that is not a
    pipeline is returned as it is."""
    from onnx.utils import Extractor

    if not is_pipeline([o.name for o in whole.graph.output]):
        return whole
    edges = {e for n in whole.graph.node for e in n.output}
    starts = [FRONT_OUTPUT] if FRONT_OUTPUT in edges else [i.name for i in whole.graph.input]
    return Extractor(whole).extract_model(starts, [LOGITS])


def takes_strings(path: Any) -> bool:
    """Whether a graph file uses onnxruntime-extensions' ops (a text pipeline's tokenizer)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(o.domain == CONTRIB_DOMAIN for o in model.opset_import)
