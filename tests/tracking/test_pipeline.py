"""The registered graph's parts, composed with plain onnx (``tracking.pipeline``): each kind's
answer matches what the model computes, the front feeds the model, and the model alone comes
back out of the whole graph."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tracking import pipeline


def _onnx(module: torch.nn.Module, x: torch.Tensor, inp: str, out: str) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(
        module.eval(), (x,), buffer, dynamo=False, opset_version=17, input_names=[inp],
        output_names=[out], dynamic_axes={inp: {0: "batch"}, out: {0: "batch"}},
    )  # fmt: skip
    return onnx.load_from_string(buffer.getvalue())


class _Front(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) - 10.0) / 5.0


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).eval()
    front = _onnx(_Front(), torch.zeros(2, 4, dtype=torch.float64), "input", "z")
    return model, _onnx(model, torch.zeros(2, 4), "input", "logits"), front


def _run(graph, x):
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))


def test_a_classifier_answers_a_named_label_and_probabilities(parts):
    model, graph, front = parts
    whole = pipeline.compose(graph, pipeline.answer_of("classification", 3, "abc"), front)
    x = np.random.default_rng(0).normal(10, 5, size=(8, 4))  # float64, as pandas has them
    out = _run(whole, x)
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy((x - 10) / 5).float()), 1).numpy()
    assert list(out["label"]) == ["abc"[i] for i in p.argmax(1)]
    got = np.array([[row[c] for c in "abc"] for row in out["probabilities"]])
    np.testing.assert_allclose(got, p, atol=1e-6)
    np.testing.assert_allclose(
        np.exp(pipeline.scores(out, pipeline.answer_of("classification", 3, "abc"))), p, atol=1e-6
    )


def test_a_regression_answers_in_the_targets_units(parts):
    model, graph, _ = parts
    answer = pipeline.answer_of("regression", 3, target_scale=([100, 0, -1], [10, 2, 1]))
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    out = _run(pipeline.compose(graph, answer), x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy() * [10, 2, 1] + [100, 0, -1]
    np.testing.assert_allclose(out["prediction"], want, rtol=1e-5, atol=1e-4)


def test_a_multilabel_model_answers_the_labels_over_one_half(parts):
    model, graph, _ = parts
    answer = pipeline.answer_of("multilabel", 3, ["cat", "dog", "owl"])
    x = np.random.default_rng(2).normal(size=(32, 4)).astype(np.float32) * 3
    out = _run(pipeline.compose(graph, answer), x)
    with torch.no_grad():
        on = torch.sigmoid(model(torch.from_numpy(x))).numpy() > 0.5
    want = [",".join(n for n, o in zip(["cat", "dog", "owl"], row, strict=True) if o) for row in on]
    assert list(out["labels"]) == want and "" in want and any("," in w for w in want)


def test_the_model_part_is_the_model_alone(parts):
    model, graph, front = parts
    whole = pipeline.compose(graph, pipeline.answer_of("classification", 3), front)
    alone = pipeline.model_part(whole)
    assert not pipeline.is_pipeline([o.name for o in alone.graph.output])
    x = np.random.default_rng(3).normal(size=(4, 4)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(alone, x)["logits"], want, atol=1e-6)
    assert pipeline.model_part(graph) is graph  # not a pipeline: as it is
