"""The tokenizer graph (``workers.text_graph``): the same ids as ``encode`` on every real review
and every code point, a model composed behind it that answers raw strings with the torch model's
logits, dynamic quantization of that composition, and what MLflow's onnx flavor does with it."""

from __future__ import annotations

import re
import time

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from workers.recipes._measure import torch_threads
from workers.tasks import load_task
from workers.tasks._rotten_tomatoes import reviews
from workers.tasks._text import encode
from workers.text_graph import (
    ASCII_LOWERINGS,
    session_options,
    tokenizer_model,
    with_tokenizer,
)

EDGE_TEXTS = [
    "",  # no characters: all padding
    " -- ... ’ “” ",  # characters but no token: all padding
    "word " * 60,  # more than max_len tokens: cut
    "A fine movie!",
    "Don't! Won't?? rock'n'roll 'quoted' it''s o'",  # inner apostrophes only
    "Line one\nline TWO\ttab",
    "Café über NAÏVE 1950s",  # non-ASCII letters split tokens, as in `encode`
    "İSTANBUL 5K",  # the two capitals whose Python lower() is ASCII
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine more threads only oversubscribe it."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def extra():
    return load_task("rotten-tomatoes", 0).extra


def _session(model: onnx.ModelProto | str) -> onnxruntime.InferenceSession:
    options = session_options()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the exported EmbeddingBag loop warns on every session
    source = model if isinstance(model, str) else model.SerializeToString()
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _run(session: onnxruntime.InferenceSession, texts: list[str]) -> np.ndarray:
    return session.run(None, {"text": np.array(texts, dtype=object)})[0]


@pytest.fixture(scope="module")
def tokenizer(extra):
    return _session(tokenizer_model(extra))


def test_same_ids_as_encode_on_every_real_review(extra, tokenizer):
    texts = reviews()[0]
    got, want = _run(tokenizer, texts), encode(texts, extra).numpy()
    mismatches = int((got != want).any(axis=1).sum())
    print(f"\n{mismatches} of {len(texts)} reviews differ from encode")
    assert got.shape == (len(texts), extra["max_len"]) and got.dtype == np.int64
    assert mismatches == 0


@pytest.mark.parametrize("text", EDGE_TEXTS)
def test_edge_cases_alone_as_encode(extra, tokenizer, text):
    np.testing.assert_array_equal(_run(tokenizer, [text]), encode([text], extra).numpy())


def test_edge_cases_in_one_batch(extra, tokenizer):
    """Rows of different lengths pad and cut each on its own; an all-empty batch is all zeros."""
    np.testing.assert_array_equal(_run(tokenizer, EDGE_TEXTS), encode(EDGE_TEXTS, extra).numpy())
    assert not _run(tokenizer, ["", ""]).any() and _run(tokenizer, ["", ""]).shape == (2, 36)


def test_every_code_point_as_encode():
    """Each code point between two letters (but NUL, where the runtime ends a string, and the
    surrogates, which are no text) splits or joins them exactly as ``encode`` does."""
    chars = [chr(c) for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    # The only non-ASCII characters whose Python lower() holds a token character.
    token_char = re.compile(r"[a-z0-9!?]")
    assert [c for c in chars if not c.isascii() and token_char.search(c.lower())] == list(
        ASCII_LOWERINGS
    )
    per_text = 64  # 17,376 texts rather than 1.1 million: far less per-run overhead
    texts = [
        "".join(f"a{c}b " for c in chars[i : i + per_text]) for i in range(0, len(chars), per_text)
    ]
    small = {"vocab": ["<pad>", "<unk>", "a", "b", "ab", "i", "k"], "max_len": 4 * per_text}
    got = _run(_session(tokenizer_model(small)), texts)
    np.testing.assert_array_equal(got, encode(texts, small).numpy())


@pytest.mark.parametrize("pattern", [r"([a-z]+)", r"[a-z]*"])
def test_patterns_findall_reads_otherwise_are_refused(pattern):
    with pytest.raises(ValueError, match="capturing groups|empty string"):
        tokenizer_model({"vocab": ["<pad>", "<unk>"], "max_len": 4, "token_pattern": pattern})


def test_tokenizer_latency_at_batch_one(tokenizer):
    text = np.array(["A small movie with a big impact, and a fine cast!"], dtype=object)
    for _ in range(50):
        tokenizer.run(None, {"text": text})
    runs = 1000
    start = time.perf_counter()
    for _ in range(runs):
        tokenizer.run(None, {"text": text})
    print(f"\ntokenizer graph, batch 1: {(time.perf_counter() - start) / runs * 1e6:.0f} µs/string")


class _Bag(nn.Module):
    """The smallest text model: mean of the token embeddings, then a linear layer."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        # No padding_idx: the legacy exporter refuses embedding_bag with one.
        self.bag = nn.EmbeddingBag(vocab_size, 16, mode="mean")
        self.fc = nn.Linear(16, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bag(ids))


@pytest.fixture(scope="module")
def bag(extra):
    torch.manual_seed(0)
    return _Bag(len(extra["vocab"])).eval()


def _export(model: nn.Module, extra, tmp_path, input_name: str = "input") -> onnx.ModelProto:
    path = tmp_path / f"model_{input_name}.onnx"
    example = (torch.zeros(2, extra["max_len"], dtype=torch.long),)
    torch.onnx.export(
        model,
        example,
        str(path),
        dynamo=False,
        input_names=[input_name],
        output_names=["logits"],
        dynamic_axes={input_name: {0: "batch"}},
    )
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def texts():
    return reviews()[0][:500] + EDGE_TEXTS


@pytest.mark.parametrize("input_name", ["input", "ids"])
def test_composed_graph_answers_strings_with_the_models_logits(
    extra, bag, texts, tmp_path_factory, input_name
):
    model = _export(bag, extra, tmp_path_factory.mktemp("export"), input_name)
    composed = with_tokenizer(tokenizer_model(extra), model)
    onnx.checker.check_model(composed)
    assert [i.name for i in composed.graph.input] == ["text"]
    assert [o.name for o in composed.graph.output] == ["logits"]
    domains = [o.domain for o in composed.opset_import]
    assert sorted(domains) == ["", "ai.onnx.contrib", "ai.onnx.ml"]  # one import each
    with torch.no_grad():
        want = bag(encode(texts, extra)).numpy()
    np.testing.assert_allclose(_run(_session(composed), texts), want, rtol=1e-5, atol=1e-6)


def test_quantize_dynamic_runs_on_the_composition(extra, bag, texts, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    composed = with_tokenizer(tokenizer_model(extra), _export(bag, extra, tmp_path))
    onnx.save(composed, tmp_path / "composed.onnx")
    quantize_dynamic(
        tmp_path / "composed.onnx", tmp_path / "int8.onnx", weight_type=QuantType.QInt8
    )
    assert "MatMulInteger" in {n.op_type for n in onnx.load(tmp_path / "int8.onnx").graph.node}
    with torch.no_grad():
        want = bag(encode(texts, extra)).numpy()
    got = _run(_session(str(tmp_path / "int8.onnx")), texts)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=0.1)  # int8 weights: close, not equal


def test_with_tokenizer_refuses_an_old_opset(extra):
    node = helper.make_node("Identity", ["ids"], ["out"])
    graph = helper.make_graph(
        [node],
        "old",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 36])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["batch", 36])],
    )
    old = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    with pytest.raises(ValueError, match="opset is 11"):
        with_tokenizer(tokenizer_model(extra), old)


def test_mlflow_onnx_flavor_does_not_register_the_extensions(extra, bag, tmp_path):
    """Pins why a text champion needs its own pyfunc: mlflow.onnx's loader builds its
    SessionOptions from a few fixed fields, so ``register_custom_ops_library`` passes the save's
    check (any SessionOptions attribute does) and is then ignored at load."""
    import mlflow.onnx
    import mlflow.pyfunc
    import onnxruntime_extensions

    composed = with_tokenizer(tokenizer_model(extra), _export(bag, extra, tmp_path))
    library = {"register_custom_ops_library": onnxruntime_extensions.get_library_path()}
    mlflow.onnx.save_model(
        composed,
        tmp_path / "champion",
        onnx_session_options=library,
        onnx_execution_providers=["CPUExecutionProvider"],
        pip_requirements=["onnxruntime", "onnxruntime-extensions"],  # no inference: fast
    )
    with pytest.raises(Exception, match="ai.onnx.contrib:.* is not a registered function/op"):
        mlflow.pyfunc.load_model(str(tmp_path / "champion"))
