"""Text end to end on the real rotten-tomatoes corpus: the task (labels, split, a vocabulary from
the training split only, ``encode``), the text models (they learn, they export to ONNX with int64
inputs), and compression on them (int8 that covers the embedding table, calibration on token ids,
the artifacts that rebuild them, structured pruning's refusal)."""

from __future__ import annotations

import bz2
import csv
import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from tracking import keys
from tracking.pipeline import model_part
from workers.errors import WorkerError
from workers.models import build_model
from workers.models.text import drop_tokens
from workers.recipes import run_recipe
from workers.recipes._distill import student_section
from workers.recipes._export import export_onnx, export_torchscript
from workers.recipes._measure import model_session, onnx_predict, onnx_session, torch_threads
from workers.recipes._train import accuracy, make_optimizer, train_epoch
from workers.tasks import load_task
from workers.tasks._rotten_tomatoes import data_file, reviews, split_indices
from workers.tasks._text import MIN_FREQ, encode, tokenize

ARCHS = {
    "embedding_bag": {"arch": "embedding_bag", "dim": 32, "dropout": 0.5},
    "fasttext": {"arch": "fasttext", "dim": 32, "buckets": 5000, "dropout": 0.5},
    "textcnn": {"arch": "textcnn", "dim": 32, "filters": 32, "dropout": 0.5},
    "lstm": {"arch": "lstm", "dim": 32, "units": 32},
}
# Epochs for each to learn from 3,000 snippets: ~1 s each, one thread.
EPOCHS = {"embedding_bag": 6, "fasttext": 6, "textcnn": 2, "lstm": 2}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine more threads only oversubscribe it."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def data():
    return load_task("rotten-tomatoes", 0)


def _train(data, section, epochs, lr=3e-3, n=None):
    torch.manual_seed(0)
    model = build_model(section, data.input_shape, data.num_classes, data.extra)
    if n is not None:
        data = data.with_parts(x_train=data.x_train[:n], y_train=data.y_train[:n])
    opt, gen = make_optimizer(model, lr), torch.Generator().manual_seed(0)
    for _ in range(epochs):
        train_epoch(model, data, opt=opt, batch_size=64, generator=gen)
    return model.eval()


@pytest.fixture(scope="module")
def bag(data):
    """embedding_bag (dim 64) trained 4 epochs on the whole training split: ~0.76 test accuracy."""
    return _train(data, {"arch": "embedding_bag", "dim": 64, "dropout": 0.5}, epochs=4)


# --------------------------------------------------------------------------- the task


def test_task_keeps_the_reviews_once_each_and_drops_the_plot_synopses(data):
    with bz2.open(data_file(), "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert Counter(r["category"] for r in rows) == {"fresh": 7403, "rotten": 5405, "plot": 1097}
    texts, labels = reviews()
    # 56 snippets are in the file twice (one film under two titles), always with one label.
    assert len(texts) == len(set(texts)) == 7403 + 5405 - 56
    assert set(texts) == {r["text"] for r in rows if r["category"] != "plot"}
    assert np.bincount(labels).tolist() == [5384, 7368]  # rotten = 0, fresh = 1
    counts = [np.bincount(s.numpy(), minlength=2) for s in (data.y_train, data.y_val, data.y_test)]
    assert sum(counts).tolist() == [5384, 7368]
    assert data.num_classes == 2 and data.kind == "classification"
    # Stratified 70/15/15: each split has the corpus's 42% rotten.
    for c in counts:
        assert abs(c[0] / c.sum() - 5384 / 12752) < 0.002
    assert [len(s) for s in (data.x_train, data.x_val, data.x_test)] == [8926, 1913, 1913]


def test_split_is_deterministic_from_the_seed(data):
    again = load_task.__wrapped__("rotten-tomatoes", 0)  # not the per-process cache
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_test, data.y_test)
    assert again.extra == data.extra  # the vocabulary too: a served model's ids follow the seed
    other = split_indices(1)
    assert not np.array_equal(other[2], split_indices(0)[2])
    parts = np.concatenate(split_indices(0))
    assert sorted(parts.tolist()) == list(range(len(reviews()[0])))  # a partition


def test_inputs_are_int64_token_ids_of_fixed_length(data):
    extra = data.extra
    assert data.x_train.dtype == torch.int64 and data.input_shape == (extra["max_len"],)
    assert extra["vocab"][:2] == ["<pad>", "<unk>"] and extra["vocab_size"] == len(extra["vocab"])
    assert int(data.x_train.max()) < extra["vocab_size"] and int(data.x_train.min()) == 0
    assert data.example_input().dtype == torch.int64
    json.dumps(dict(extra))  # saved in the checkpoint's trial.json


def test_vocabulary_comes_from_the_training_split_only(data):
    texts, _ = reviews()
    train, _, test = split_indices(0)
    train_counts = Counter(t for i in train for t in tokenize(texts[i]))
    vocab = data.extra["vocab"]
    assert all(train_counts[t] >= MIN_FREQ for t in vocab[2:])
    assert set(vocab[2:]) == {t for t, n in train_counts.items() if n >= MIN_FREQ}
    # Tokens frequent in the test split that training never saw: unknown (1), though a
    # vocabulary from the whole corpus would have given them ids.
    test_counts = Counter(t for i in test for t in tokenize(texts[i]))
    unseen = [t for t, n in test_counts.items() if n >= MIN_FREQ and t not in train_counts]
    assert len(unseen) > 10
    row = next(k for k, i in enumerate(test) if unseen[0] in tokenize(texts[i]))
    position = tokenize(texts[test[row]]).index(unseen[0])
    assert int(data.x_test[row, position]) == 1


def test_encode_reproduces_the_tasks_ids(data):
    texts, _ = reviews()
    train, val, test = split_indices(0)
    extra = json.loads(json.dumps(dict(data.extra)))  # as a checkpoint's trial.json gives it back
    for split, x in ((train, data.x_train), (val, data.x_val), (test, data.x_test)):
        assert torch.equal(encode([texts[i] for i in split], extra), x)
    ids = encode(["WRY and ENGROSSING!", "", " ".join(["great"] * 100)], extra)
    vocab = extra["vocab"]
    assert ids.shape == (3, extra["max_len"]) and ids.dtype == torch.int64
    assert ids[0, :4].tolist() == [vocab.index(t) for t in ("wry", "and", "engrossing", "!")]
    assert int(ids[0, 4:].abs().sum()) == 0 and int(ids[1].abs().sum()) == 0  # padding
    assert (ids[2] == vocab.index("great")).all()  # cut at max_len
    assert encode(["zzqxj"], extra)[0, 0] == 1


# --------------------------------------------------------------------------- the models


@pytest.mark.parametrize("arch", list(ARCHS))
def test_each_text_model_learns_from_a_slice(data, arch):
    """A second's training on 3,000 snippets: clearly above the majority class (57.8% fresh)."""
    model = _train(data, ARCHS[arch], epochs=EPOCHS[arch], n=3000)
    majority = float(data.y_val.float().mean())
    assert accuracy(model, data.x_val, data.y_val) > majority + 0.06


def test_padding_does_not_count_in_the_bag_mean(data):
    model = build_model({"arch": "embedding_bag", "dim": 8}, (6,), 2, {"vocab_size": 50}).eval()
    short = torch.tensor([[5, 7, 0, 0, 0, 0]])
    with torch.no_grad():
        pooled = model.embed(torch.tensor([[5, 7]])).mean(1)
        assert torch.allclose(model(short), model.head(pooled))
        assert torch.isfinite(model(torch.zeros(1, 6, dtype=torch.int64))).all()  # empty text


def test_fasttext_hashes_each_bigram_to_one_row_of_its_own(data):
    vocab_size, buckets = data.extra["vocab_size"], 200_000
    model = build_model({"arch": "fasttext", "buckets": buckets, "dim": 4}, (36,), 2, data.extra)
    assert model.embed.num_embeddings == vocab_size + buckets
    x = data.x_train
    rows = model.bigram_ids(x)
    assert rows.shape == (len(x), 35)
    real = (x[:, :-1] != 0) & (x[:, 1:] != 0)
    assert (rows[~real] == 0).all()  # a pair that touches padding reads the zero row
    assert ((rows[real] >= vocab_size) & (rows[real] < vocab_size + buckets)).all()
    # One row per pair, and mostly one pair per row: ~82,000 distinct training bigrams in
    # 200,000 buckets share a row with another for ~18% of them at random; a weak hash (3a + b, as
    # a multiplier that is 3 mod the bucket count gives) folds them into ~20,000 rows.
    pairs: dict[tuple[int, int], int] = {}
    firsts, seconds = x[:, :-1][real].tolist(), x[:, 1:][real].tolist()
    for a, b, row in zip(firsts, seconds, rows[real].tolist(), strict=True):
        assert pairs.setdefault((a, b), row) == row
    assert len(set(pairs.values())) > 0.75 * len(pairs)
    good, movie = (data.extra["vocab"].index(t) for t in ("good", "movie"))
    swapped = model.bigram_ids(torch.tensor([[good, movie], [movie, good]]))
    assert swapped[0, 0] != swapped[1, 0]  # word order counts: "good movie" is not "movie good"


def test_fasttext_pools_tokens_plus_scaled_bigrams_over_the_token_count():
    extra = {"vocab_size": 50}
    model = build_model({"arch": "fasttext", "dim": 8, "buckets": 7}, (6,), 2, extra).eval()
    ids = torch.tensor([[5, 7, 9, 0, 0, 0]])
    with torch.no_grad():
        bigrams = model.embed(model.bigram_ids(ids)[:, :2]).sum(1)
        pooled = (model.embed(ids[:, :3]).sum(1) + model.bigram_scale * bigrams) / 3
        assert torch.allclose(model(ids), model.head(pooled), atol=1e-6)
        assert torch.isfinite(model(torch.zeros(1, 6, dtype=torch.int64))).all()  # empty text
    # With bigram_scale 0 it is embedding_bag: the mean of the token vectors.
    plain = build_model({"arch": "fasttext", "dim": 8, "bigram_scale": 0}, (6,), 2, extra).eval()
    with torch.no_grad():
        assert torch.allclose(plain(ids), plain.head(plain.embed(ids[:, :3]).mean(1)), atol=1e-6)
    with pytest.raises(ValueError, match="model.buckets"):
        build_model({"arch": "fasttext", "buckets": 0}, (6,), 2, extra)


def test_drop_tokens_turns_a_fraction_of_the_tokens_into_padding(data):
    x = data.x_train[:2000]
    torch.manual_seed(0)
    dropped = drop_tokens(x, 0.25)
    assert (dropped[x == 0] == 0).all()  # padding stays padding
    kept = dropped[x != 0]
    assert ((kept == 0) | (kept == x[x != 0])).all()  # a token is kept as it is, or dropped
    assert 0.24 < float((kept == 0).float().mean()) < 0.26
    assert drop_tokens(x, 0.0) is x


@pytest.mark.parametrize("arch", ["embedding_bag", "fasttext"])
def test_token_dropout_drops_tokens_and_their_bigrams_in_training_only(arch):
    """In training, the model equals its eval self on the ids ``drop_tokens`` leaves (so a
    fasttext computes bigrams after the drop: a dropped token's pairs read the zero row); in
    eval, token_dropout changes nothing."""
    extra, ids = {"vocab_size": 50}, torch.randint(1, 50, (16, 6))
    section = {"arch": arch, "dim": 8, "token_dropout": 0.3}
    torch.manual_seed(0)
    model = build_model(section, (6,), 2, extra)
    torch.manual_seed(0)
    plain = build_model({**section, "token_dropout": 0.0}, (6,), 2, extra).eval()
    with torch.no_grad():
        torch.manual_seed(1)
        trained = model.train()(ids)
        torch.manual_seed(1)
        assert torch.allclose(trained, plain(drop_tokens(ids, 0.3)), atol=1e-6)
        assert not torch.allclose(trained, plain(ids), atol=1e-3)
        assert torch.equal(model.eval()(ids), plain(ids))
    with pytest.raises(ValueError, match=r"model.token_dropout must be in \[0, 1\)"):
        build_model({**section, "token_dropout": 1.0}, (6,), 2, extra)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_text_models_export_to_onnx_with_int64_inputs(data, arch, tmp_path):
    model = build_model(ARCHS[arch], data.input_shape, data.num_classes, data.extra).eval()
    path = export_onnx(model, data.example_input(), tmp_path / "model.onnx")
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert "Loop" not in {n.op_type for n in graph.node}
    x = data.x_test[:7]  # another batch size than the example's: the batch axis is dynamic
    with torch.inference_mode():
        eager = model(x).numpy()
    np.testing.assert_allclose(onnx_predict(onnx_session(path), x.numpy()), eager, atol=1e-5)
    traced = torch.jit.load(str(export_torchscript(model, data.example_input(), tmp_path / "t.pt")))
    np.testing.assert_allclose(traced(x).detach().numpy(), eager, atol=1e-5)


def test_text_models_take_vocab_size_from_the_task(data):
    model = build_model({"arch": "textcnn"}, data.input_shape, 2, data.extra)
    assert model.embed.num_embeddings == data.extra["vocab_size"]
    with pytest.raises(ValueError, match="kernel_sizes"):
        build_model({"arch": "textcnn", "kernel_sizes": [3, 40]}, (36,), 2, {"vocab_size": 9})
    with pytest.raises(ValueError, match=r"token ids of shape \(max_len,\)"):
        build_model({"arch": "lstm"}, (1, 8, 8), 10, {"vocab_size": 9})


# --------------------------------------------------------------------------- compression


def _table(path, vocab_size):
    """The embedding table initializer of an ONNX file: the one with vocab_size rows."""
    graph = onnx.load(str(path)).graph
    return next(i for i in graph.initializer if i.dims and i.dims[0] == vocab_size)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_covers_the_embedding_table(data, bag, tmp_path, mode):
    """Dynamic int8 quantizes the table Gather reads (not only the Linear weights), static int8
    calibrates on int64 token ids: ~4x smaller, test accuracy within a point."""
    steps = [{"step": "quantize", "mode": mode}]
    result = run_recipe(steps, bag, data, {"workdir": tmp_path, "latency_iters": 30})
    m, int8 = result.metrics, result.artifacts[keys.ONNX_ARTIFACT]
    # The file ships the tokenizer's vocabulary (~110 kB of strings) beside the model: the
    # model itself is ~4x smaller, the whole file less so.
    assert _model_ratio(bag, data, int8, tmp_path) >= 3.5
    assert m[keys.SIZE_RATIO] >= 2.5
    assert abs(m[keys.ACCURACY_DROP_PTS]) <= 1.0
    assert m[keys.TEST_ACCURACY] > 0.7
    table = _table(int8, data.extra["vocab_size"])
    assert table.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    session = model_session(int8)
    assert session.get_inputs()[0].type == "tensor(int64)"
    logits = onnx_predict(session, data.x_test.numpy())
    assert float((logits.argmax(1) == data.y_test.numpy()).mean()) == m[keys.TEST_ACCURACY]


def test_int8_covers_the_fasttext_table_of_tokens_and_bigrams(data, tmp_path):
    section = {**ARCHS["fasttext"], "dim": 64}
    model = _train(data, section, epochs=3)
    ctx = {"workdir": tmp_path, "latency_iters": 30}
    result = run_recipe([{"step": "quantize", "mode": "dynamic"}], model, data, ctx)
    m, int8 = result.metrics, result.artifacts[keys.ONNX_ARTIFACT]
    rows = data.extra["vocab_size"] + section["buckets"]
    assert _table(int8, rows).data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    assert _model_ratio(model, data, int8, tmp_path) >= 3.5
    assert m[keys.SIZE_RATIO] >= 2.5 and abs(m[keys.ACCURACY_DROP_PTS]) <= 1.0
    assert m[keys.TEST_ACCURACY] > 0.7


def _model_ratio(model, data, artifact, tmp_path) -> float:
    """The fp32 model's ONNX bytes over the model part of a recipe's artifact (which is the
    whole pipeline: the tokenizer and its vocabulary, the model, the answer)."""
    fp32 = export_onnx(model, data.example_input(), tmp_path / "fp32-model.onnx")
    return fp32.stat().st_size / len(model_part(onnx.load(str(artifact))).SerializeToString())


def test_artifacts_rebuild_a_text_model(data, bag, tmp_path):
    section = {"arch": "embedding_bag", "dim": 64, "dropout": 0.5}
    ctx = {"workdir": tmp_path, "model_section": section, "latency_iters": 5}
    result = run_recipe([{"step": "export"}], bag, data, ctx)
    card = json.loads(result.artifacts[keys.RECIPE_ARTIFACT].read_text())
    assert card["extra"]["vocab"] == data.extra["vocab"] and card["input_dtype"] == "int64"
    blob = torch.load(result.artifacts["model_fp32.pt"], weights_only=True)
    assert blob["extra"]["vocab_size"] == data.extra["vocab_size"]
    model = build_model(blob["model"], blob["input_shape"], blob["num_classes"], blob["extra"])
    model.load_state_dict(blob["state_dict"])
    with torch.inference_mode():
        assert torch.equal(model.eval()(data.x_test[:50]), bag(data.x_test[:50]))


def test_distill_rebuilds_a_narrower_text_student(data, bag, tmp_path):
    steps = [{"step": "distill", "dim": 16, "epochs": 5, "lr": 3e-3}, {"step": "quantize"}]
    section = {"arch": "embedding_bag", "dim": 64, "dropout": 0.5}
    ctx = {"workdir": tmp_path, "model_section": section, "latency_iters": 20}
    result = run_recipe(steps, bag, data, ctx)
    assert result.model_section == {**section, "dim": 16}
    assert result.model.embed.embedding_dim == 16
    # A 4x narrower table in int8: ~16x smaller than the teacher's fp32 model.
    assert _model_ratio(bag, data, result.artifacts[keys.ONNX_ARTIFACT], tmp_path) > 12
    assert result.metrics[keys.TEST_ACCURACY] > 0.7


def test_a_student_of_another_arch_keeps_only_the_settings_it_takes():
    trial = {"arch": "textcnn", "dim": 64, "kernel_sizes": [3, 4], "filters": 8, "dropout": 0.5}
    assert student_section(trial, {"arch": "embedding_bag"}) == {
        "arch": "embedding_bag",
        "dim": 64,
        "dropout": 0.5,
    }
    assert student_section(trial, {"dim": 16}) == {**trial, "dim": 16}


def test_unstructured_pruning_zeroes_the_embedding_table(data, bag, tmp_path):
    steps = [{"step": "prune", "method": "l1_unstructured", "sparsity": 0.5, "finetune_epochs": 0}]
    result = run_recipe(steps, bag, data, {"workdir": tmp_path, "latency_iters": 5})
    table = result.model.embed.weight
    assert 0.49 <= float((table == 0).float().mean()) <= 0.51


@pytest.mark.parametrize("arch", list(ARCHS))
def test_structured_pruning_refuses_a_text_model_and_names_the_alternatives(data, arch, tmp_path):
    model = build_model(ARCHS[arch], data.input_shape, data.num_classes, data.extra)
    steps = [{"step": "prune", "method": "structured", "sparsity": 0.5}]
    with pytest.raises(WorkerError) as err:
        run_recipe(steps, model, data, {"workdir": tmp_path, "latency_iters": 5})
    message = str(err.value)
    assert "needs a chain of Linear/Conv blocks" in message
    assert "l1_unstructured" in message and "global_magnitude" in message
