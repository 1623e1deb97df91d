"""Models that return more than a tensor (issue 28): a Hugging Face ``ModelOutput``, a dict, a
tuple. Built by ``build_model``, they train, evaluate, export to ONNX and quantize as a model of
logits does. The transformers model is real, built from a config (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from workers.errors import WorkerError
from workers.models import build_model, logits_of
from workers.recipes._export import export_onnx
from workers.recipes._quantize import quantize_onnx
from workers.trial.loop import train_epoch

BERT = "hf_models:tiny_bert"  # examples/hf-text/hf_models.py, as the example's spec names it
EXAMPLE = Path(__file__).parents[2] / "examples" / "hf-text"


@pytest.fixture(autouse=True)
def example_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))  # as podium run imports from the spec's folder


def test_logits_are_found_in_each_form_a_model_returns():
    from transformers.modeling_outputs import SequenceClassifierOutput

    logits = torch.randn(2, 3)
    assert logits_of(logits) is logits
    assert logits_of(SequenceClassifierOutput(logits=logits)) is logits
    assert logits_of({"logits": logits, "hidden": torch.zeros(2)}) is logits
    assert logits_of((logits, torch.zeros(2))) is logits
    assert logits_of({"scores": logits}, "scores") is logits
    with pytest.raises(WorkerError, match=r"returned \['features', 'scores'\].*model.output"):
        logits_of({"features": logits, "scores": logits})


def _tokens(n: int = 64, length: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, 100, (n, length), generator=g)
    y = (x[:, 0] > 50).long()  # learnable from the first token
    return x, y


def test_a_transformers_model_trains_exports_and_quantizes_as_logits(tmp_path):
    torch.manual_seed(0)
    model = build_model({"arch": BERT, "hidden": 16}, (12,), 2)
    x, y = _tokens()
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, len(x), 16)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = train_epoch(model, opt, batches).train_loss
    for _ in range(5):
        last = train_epoch(model, opt, batches).train_loss
    assert last < first  # it learns: the loss is the logits' cross-entropy
    model.eval()
    with torch.no_grad():
        want = model(x[:5]).numpy()
    assert want.shape == (5, 2)
    path = export_onnx(model, x[:4], tmp_path / "bert.onnx")
    session = ort.InferenceSession(str(path))
    assert [o.name for o in session.get_outputs()] == ["logits"]
    got = session.run(None, {"input": x[:5].numpy()})[0]
    assert np.allclose(got, want, atol=1e-4)
    int8 = quantize_onnx(path, tmp_path / "int8.onnx", {"mode": "dynamic", "per_channel": False}, x)
    assert ort.InferenceSession(str(int8)).run(None, {"input": x[:5].numpy()})[0].shape == (5, 2)
    import onnx

    weights = onnx.load(str(int8)).graph.initializer
    assert any(t.data_type == onnx.TensorProto.INT8 for t in weights)  # its MatMuls in int8


def test_model_output_names_the_logits_of_a_dict():
    model = build_model({"arch": "tests.workers.plugin_task:scored", "output": "scores"}, (4,), 3)
    assert model(torch.randn(5, 4)).shape == (5, 3)
    unnamed = build_model({"arch": "tests.workers.plugin_task:scored"}, (4,), 3)
    with pytest.raises(WorkerError, match="set model.output"):
        unnamed(torch.randn(5, 4))
