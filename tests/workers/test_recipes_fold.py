"""The fold step: a bag model's first head Linear multiplied into its embedding table. The folded
model gives the same logits from a table ``num_classes`` wide, rebuilds from its section, and in
a recipe before int8 it is what gets quantized and served; models that do not pool linearly are
refused by name."""

from __future__ import annotations

import onnx
import pytest
import torch

from tracking import keys
from tracking.pipeline import model_part
from workers.errors import WorkerError
from workers.models import build_model
from workers.models.text import fold_head
from workers.recipes import check_recipe, run_recipe
from workers.recipes._export import export_onnx
from workers.recipes._measure import model_session, onnx_predict, torch_threads
from workers.recipes._train import make_optimizer, train_epoch
from workers.tasks import load_task
from workers.tasks._pipeline import head

VOCAB, LENGTH = 500, 36
BAGS = {
    "embedding_bag": {"arch": "embedding_bag", "dim": 32, "dropout": 0.5},
    "fasttext": {
        "arch": "fasttext",
        "dim": 32,
        "buckets": 700,
        "bigram_scale": 0.3,
        "token_dropout": 0.2,
    },
    "hidden": {"arch": "embedding_bag", "dim": 32, "hidden": [8, 4], "batch_norm": True},
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine more threads only oversubscribe it."""
    with torch_threads(1):
        yield


def _ids(n=64, seed=0):
    """Token ids with padded tails of every length, as the task pads them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    lengths = torch.randint(0, LENGTH + 1, (n,), generator=g)
    return ids.masked_fill(torch.arange(LENGTH) >= lengths[:, None], 0)


def _model(section, classes=2):
    torch.manual_seed(0)
    model = build_model(section, (LENGTH,), classes, {"vocab_size": VOCAB})
    with torch.no_grad():  # BatchNorm statistics other than (0, 1), so folding must keep them
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.mark.parametrize("name", list(BAGS))
def test_a_folded_bag_model_gives_the_same_logits_from_a_narrower_table(name):
    model, ids = _model(BAGS[name], classes=3), _ids()
    folded = fold_head(model)
    width = (BAGS[name].get("hidden") or [3])[0]  # the first Linear's outputs
    assert folded.embed.embedding_dim == width
    assert folded.embed.num_embeddings == model.embed.num_embeddings
    assert torch.count_nonzero(folded.embed.weight[0]) == 0  # padding still reads zeros
    with torch.inference_mode():
        expected, got = model(ids), folded(ids)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    # The model is untouched, and the folded one is what its section with dim: width builds.
    assert model.embed.embedding_dim == 32
    rebuilt = _model({**BAGS[name], "dim": width}, classes=3)
    rebuilt.load_state_dict(folded.state_dict())
    with torch.inference_mode():
        assert torch.equal(rebuilt.eval()(ids), got)


def test_a_first_linear_no_narrower_than_the_table_is_left_as_it_is():
    model = _model({"arch": "embedding_bag", "dim": 8, "hidden": [16]})
    folded = fold_head(model)
    assert folded is not model and folded.embed.embedding_dim == 8
    with torch.inference_mode():
        assert torch.equal(folded(_ids()), model(_ids()))


@pytest.mark.parametrize(
    "section",
    [
        {"arch": "textcnn", "dim": 16, "filters": 8},
        {"arch": "lstm", "dim": 16, "units": 8},
    ],
)
def test_fold_refuses_a_model_whose_pooling_is_not_linear(section, tmp_path):
    data = load_task("rotten-tomatoes", 0)
    model = build_model(section, data.input_shape, data.num_classes, data.extra)
    with pytest.raises(WorkerError, match=f"embedding_bag or fasttext, got '{section['arch']}'"):
        run_recipe([{"step": "fold"}], model, data, {"workdir": tmp_path, "model_section": section})


def test_qat_must_come_after_fold():
    problems = check_recipe([{"step": "quantize", "mode": "qat"}, {"step": "fold"}])
    assert [(path, value) for path, value, _ in problems] == [("[1].step", "fold")]
    assert check_recipe([{"step": "fold"}, {"step": "quantize", "mode": "qat"}]) == []
    assert check_recipe([{"step": "fold", "dim": 2}])[0][2].startswith("step 'fold' takes no")


def test_fold_then_int8_serves_a_tiny_table_at_the_trained_accuracy(tmp_path):
    """A fasttext trained on 3,000 snippets of rotten-tomatoes: folded, then dynamic int8. The
    served file holds a 2-wide int8 table, ~100x smaller than the 64-wide fp32 one, and
    scores what the trained model scores to within half a point (int8 rounding only)."""
    data = load_task("rotten-tomatoes", 0)
    section = {"arch": "fasttext", "dim": 64, "buckets": 5000, "dropout": 0.5}
    torch.manual_seed(0)
    model = build_model(section, data.input_shape, data.num_classes, data.extra)
    small = head(data, train=3000)
    opt, gen = make_optimizer(model, 3e-3), torch.Generator().manual_seed(0)
    for _ in range(6):
        train_epoch(model, small, opt=opt, batch_size=64, generator=gen)
    ctx = {"workdir": tmp_path, "model_section": section, "latency_iters": 20}
    steps = [{"step": "fold"}, {"step": "quantize", "mode": "dynamic"}]
    result = run_recipe(steps, model.eval(), data, ctx)
    m = result.metrics
    assert result.model_section == {**section, "dim": 2}
    assert m[keys.TEST_ACCURACY] > 0.65
    folded_fp32 = m[keys.recipe_metric("0_fold", keys.TEST_ACCURACY)]
    trained = m[keys.recipe_metric(keys.RECIPE_BASELINE_EAGER, keys.TEST_ACCURACY)]
    assert abs(folded_fp32 - trained) <= 1 / len(data.y_test)  # exact up to float rounding
    assert abs(m[keys.ACCURACY_DROP_PTS]) <= 0.5
    # 128x for the tables alone; the model's graph adds a few kB. The whole file also ships
    # the tokenizer's vocabulary (~110 kB): the registered file is ~25x smaller, not 64x.
    fp32 = export_onnx(model, data.example_input(), tmp_path / "fp32-model.onnx")
    part = model_part(onnx.load(str(result.artifacts[keys.ONNX_ARTIFACT])))
    assert fp32.stat().st_size / len(part.SerializeToString()) > 64
    assert m[keys.SIZE_RATIO] > 15
    rows = data.extra["vocab_size"] + section["buckets"]
    graph = onnx.load(str(result.artifacts[keys.ONNX_ARTIFACT])).graph
    table = next(i for i in graph.initializer if list(i.dims) == [rows, 2])
    assert table.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    logits = onnx_predict(model_session(result.artifacts[keys.ONNX_ARTIFACT]), data.x_test.numpy())
    assert float((logits.argmax(1) == data.y_test.numpy()).mean()) == m[keys.TEST_ACCURACY]
    # The fp32 artifact rebuilds the folded model from its section.
    blob = torch.load(result.artifacts["model_fp32.pt"], weights_only=True)
    rebuilt = build_model(blob["model"], blob["input_shape"], blob["num_classes"], blob["extra"])
    rebuilt.load_state_dict(blob["state_dict"])
    with torch.inference_mode():
        assert torch.equal(rebuilt.eval()(data.x_test[:50]), result.model(data.x_test[:50]))
