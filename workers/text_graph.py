"""The rotten-tomatoes tokenizer as an ONNX graph, so a text champion answers raw strings.

A text model trains on token ids (``workers.tasks._rotten_tomatoes.encode``), but whoever calls
a champion has review strings. Doing the tokenizing in the client would make every caller carry
the task's state — the vocabulary, the token pattern, the length — and keep it in step with the
model. Here that state lives inside the graph instead: :func:`tokenizer_model` builds a graph
from the task's ``extra`` facts that maps a ``text`` string tensor to exactly the ids ``encode``
gives, and :func:`with_tokenizer` puts it in front of an exported model, so the one ``.onnx``
file takes strings and returns logits.

The string work is done by onnxruntime-extensions custom ops (domain ``ai.onnx.contrib``,
RE2 regular expressions); an onnxruntime session needs that library registered to run the
graph: :func:`session_options`. MLflow's ``onnx`` flavor (3.17) opens its session without any
custom-op library (and no MLmodel setting or environment variable adds one), so it cannot load
such a graph: a pyfunc that opens the session with :func:`session_options` serves it.

One difference from ``encode`` is left: the runtime reads each string up to its first NUL
character, so text after a ``"\\x00"`` is not tokenized (``encode`` tokenizes it). Every other
code point, and all 12,752 real reviews, give the same ids (the tests check both).

Example::

    from workers.tasks import load_task

    extra = load_task("rotten-tomatoes", 0).extra
    graph = with_tokenizer(tokenizer_model(extra), onnx.load("model.onnx"))
    session = onnxruntime.InferenceSession(graph.SerializeToString(), session_options())
    logits = session.run(None, {"text": np.array(["A small movie with a big impact."])})[0]
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnxruntime
import onnxruntime_extensions
from onnx import TensorProto, helper, numpy_helper

from workers.tasks._text import TOKEN_PATTERN

TEXT, IDS = "text", "input"  # the tokenizer's input and output: `input` is what export names
CONTRIB, ML = "ai.onnx.contrib", "ai.onnx.ml"
# ai.onnx as torch's export writes it (the tokenizer's Pad and Slice mean the same from 13 on)
OPSET = 17
MIN_OPSET = 13
ML_OPSET = 2  # LabelEncoder with keys_strings / values_int64s / default_int64
# Characters that are not ASCII but whose Python lower() is (U+0130 İ -> "i̇", U+212A Kelvin
# -> "k"): `encode` then finds ASCII tokens in them, and StringLower does not know these two.
# The test checks this list against every code point.
ASCII_LOWERINGS = {"\u0130": "i\u0307", "\u212a": "k"}
Typed = tuple[int, list[str]]  # an output's element type and shape (symbolic dimensions)
TEXTS: Typed = (TensorProto.STRING, ["batch"])
TOKENS: Typed = (TensorProto.STRING, ["tokens"])  # every text's tokens, one after the other
ROW_SPLITS: Typed = (TensorProto.INT64, ["batch_plus_1"])  # where each text's tokens start
DENSE: Typed = (TensorProto.INT64, ["batch", "longest"])
_PREFIX = "tokenizer/"  # every inner name: nothing clashes with the model composed after it


def tokenizer_model(extra: Mapping[str, Any]) -> onnx.ModelProto:
    """A graph ``text`` (string, ``[batch]``) -> ``input`` (int64, ``[batch, max_len]``) that
    computes ``encode(text, extra)``: lowercase, every match of ``token_pattern``, ids through
    ``vocab`` (unknown 1), cut to ``max_len``, padded with 0.

    The pattern runs on RE2, not Python's ``re``: another pattern than the task's must mean the
    same in both (RE2 has no lookaround or backreferences, and its ``\\w``/``\\d`` are ASCII
    only), without anchors or ``\\b`` (the split matches at each position as if the text
    began there).

    Args:
        extra: the task's ``extra`` facts (``vocab``, ``max_len``, optional ``token_pattern``).

    Raises:
        ValueError: a pattern whose ``findall`` the graph cannot reproduce (capturing groups,
            which change what findall returns; or an empty match, which would never end a split).
    """
    pattern = extra.get("token_pattern", TOKEN_PATTERN)
    _check_pattern(pattern)
    vocab, length = list(extra["vocab"]), int(extra["max_len"])
    g = _Graph()
    text = TEXT
    # Python's lower() turns two non-ASCII capitals into ASCII letters; StringLower does not.
    for char, lowered in ASCII_LOWERINGS.items():
        args = [text, g.const(_strings(re.escape(char))), g.const(_strings(lowered))]
        (text,) = g.custom("StringRegexReplace", args, [TEXTS])
    (lower,) = g.custom("StringLower", [text], [TEXTS])
    # findall as a split: every character is a delimiter, either a whole match of the pattern
    # (tried first, as findall tries it at each position) or one character that starts no match;
    # only delimiters that fully match the pattern are kept, and the empty pieces between
    # delimiters are dropped, so what remains is exactly findall's list. (The op wants the
    # delimiter as capture group 1.)
    delimiter = g.const(_strings(f"((?:{pattern})|(?s:.))"))
    tokens, _, _, rows = g.custom(
        "StringRegexSplitWithOffsets",
        [lower, delimiter, g.const(_strings(pattern))],
        [TOKENS, (TensorProto.INT64, ["tokens"]), (TensorProto.INT64, ["tokens"]), ROW_SPLITS],
    )
    ids = g.op(
        "LabelEncoder",
        [tokens],
        domain=ML,
        keys_strings=vocab,
        values_int64s=list(range(len(vocab))),
        default_int64=1,
    )
    # Rows as long as the batch's longest token list, padded with 0; then at least max_len wide
    # (a batch of short texts) and cut to max_len (a long text).
    unused_shape, zero = g.const(np.array([-1], np.int64)), g.const(np.array([0], np.int64))
    (dense,) = g.custom("RaggedTensorToDense", [unused_shape, ids, zero, rows], [DENSE])
    padded = g.op("Pad", [dense, g.const(np.array([0, 0, 0, length], np.int64))])
    ends, axes = g.const(np.array([length], np.int64)), g.const(np.array([1], np.int64))
    g.op("Slice", [padded, zero, ends, axes], output=IDS)
    return g.model(
        helper.make_tensor_value_info(TEXT, TensorProto.STRING, ["batch"]),
        helper.make_tensor_value_info(IDS, TensorProto.INT64, ["batch", length]),
    )


def session_options() -> onnxruntime.SessionOptions:
    """Session options with the onnxruntime-extensions library registered: without it a session
    cannot load a graph holding :func:`tokenizer_model` (its ``ai.onnx.contrib`` ops)."""
    options = onnxruntime.SessionOptions()
    options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    return options


def with_tokenizer(tokenizer: onnx.ModelProto, model: onnx.ModelProto) -> onnx.ModelProto:
    """One graph: ``tokenizer``'s output feeds ``model``'s first input (int64 ids, any name);
    the result takes ``tokenizer``'s string input and returns ``model``'s outputs.

    ``merge_models`` wants one version per domain, so the tokenizer takes the model's
    ``ai.onnx`` (and ``ai.onnx.ml``, if any) opset — its Pad, Slice and LabelEncoder mean the
    same from 13 (ml: 2) on — and both take the higher of the two IR versions.

    Raises:
        ValueError: the model's opset is below what the tokenizer's ops need.
    """
    tokenizer, model = copy.deepcopy(tokenizer), copy.deepcopy(model)
    for domain, lowest in (("", MIN_OPSET), (ML, ML_OPSET)):
        version = _opset(model, domain)
        if version is None:  # a model without ai.onnx.ml: the tokenizer keeps its own
            continue
        if version < lowest:
            raise ValueError(f"the model's {domain or 'ai.onnx'} opset is {version}: < {lowest}")
        _set_opset(tokenizer, domain, version)
    tokenizer.ir_version = model.ir_version = max(tokenizer.ir_version, model.ir_version)
    ids = _graph_inputs(model)[0]
    merged = onnx.compose.merge_models(
        tokenizer, model, io_map=[(tokenizer.graph.output[0].name, ids)]
    )
    # merge_models checks that the two agree on each domain's version, then lists both
    # models' imports: keep one per domain.
    opsets = {("" if _same(o.domain, "") else o.domain): o.version for o in merged.opset_import}
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets.items())
    return merged


class _Graph:
    """Nodes and constants of the tokenizer, each named ``tokenizer/...``."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []

    def const(self, value: np.ndarray) -> str:
        name = f"{_PREFIX}const{len(self.constants)}"
        self.constants.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str = "", **attrs: Any) -> str:
        """Add a standard node (``ai.onnx``, or ``ai.onnx.ml`` given ``domain``); its output."""
        name = f"{_PREFIX}{op_type}{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [output or name], name, **attrs))
        return output or name

    def custom(self, op_type: str, inputs: list[str], types: list[Typed]) -> list[str]:
        """Add an ``ai.onnx.contrib`` node; its outputs, one per ``(element type, shape)``.

        The types are declared because onnx cannot infer a custom op's outputs, and its shape
        inference (which quantize_dynamic runs) crashes the process on a LabelEncoder whose
        input has no type (onnx 1.23).
        """
        name = f"{_PREFIX}{op_type}{len(self.nodes)}"
        names = [f"{name}_{i}" for i in range(len(types))]
        self.nodes.append(helper.make_node(op_type, inputs, names, name, domain=CONTRIB))
        for out, (elem_type, shape) in zip(names, types, strict=True):
            self.value_info.append(helper.make_tensor_value_info(out, elem_type, shape))
        return names

    def model(self, text: onnx.ValueInfoProto, ids: onnx.ValueInfoProto) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "tokenizer", [text], [ids], self.constants, value_info=self.value_info
        )
        opsets = [
            helper.make_opsetid("", OPSET),
            helper.make_opsetid(ML, ML_OPSET),
            helper.make_opsetid(CONTRIB, 1),
        ]
        # The lowest IR version these opsets allow: runtimes older than this onnx package's
        # newest IR still load it.
        ir_version = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
        return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)


def _check_pattern(pattern: str) -> None:
    compiled = re.compile(pattern)
    if compiled.groups:
        raise ValueError(f"token pattern {pattern!r} has capturing groups: use (?:...)")
    if compiled.match(""):
        raise ValueError(f"token pattern {pattern!r} matches the empty string")


def _strings(*values: str) -> np.ndarray:
    return np.array(values, dtype=object)


def _opset(model: onnx.ModelProto, domain: str) -> int | None:
    # "" and "ai.onnx" both name the default domain.
    return next((o.version for o in model.opset_import if _same(o.domain, domain)), None)


def _set_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    for opset in model.opset_import:
        if _same(opset.domain, domain):
            opset.version = version


def _same(domain: str, other: str) -> bool:
    return (domain or "ai.onnx") == (other or "ai.onnx")


def _graph_inputs(model: onnx.ModelProto) -> list[str]:
    """The graph's real inputs: older IR versions also list initializers as inputs."""
    initializers = {init.name for init in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]
