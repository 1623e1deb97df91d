"""podium serve on whole pipelines (issue 27): uint8 images, review strings and float64 columns
in, one answer per input out; each malformed input of those forms a 400 that names it; and the
model alone out of the same file with --model-inputs (tensors in, logits out)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.tracking.test_serve_http import post, post_json
from tracking.serving.http import Background, make_app
from tracking.serving.scorers import load_scorer
from workers.models import build_model
from workers.recipes._export import export_onnx
from workers.recipes._run import _whole
from workers.tasks import load_task, prepare, rescale, split_arrays


def _pipeline(data, section, folder):
    """A task's (untrained) model composed into the registered graph, as a recipe writes it."""
    torch.manual_seed(0)
    model = build_model(section, data.input_shape, data.num_classes, data.extra).eval()
    path = _whole(export_onnx(model, data.example_input(), folder / "model.onnx"), data)
    return model, path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """uint8 8x8 images with a rescaling front and three named classes."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(90, 8, 8), dtype=np.uint8)
    raw = split_arrays(
        "pix", pixels, np.arange(90) % 3, 0, preprocess=rescale(1 / 255, (64,)),
        classes=("a", "b", "c"),
    )  # fmt: skip
    data = prepare(raw)
    model, path = _pipeline(data, {"arch": "mlp", "hidden": [8]}, tmp_path_factory.mktemp("img"))
    bg = Background(make_app(load_scorer(path)))
    yield bg, model, pixels
    bg.stop()


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    data = load_task("rotten-tomatoes", 0)
    section = {"arch": "embedding_bag", "dim": 8}
    model, path = _pipeline(data, section, tmp_path_factory.mktemp("text"))
    bg = Background(make_app(load_scorer(path)))
    model_only = Background(make_app(load_scorer(path, model_inputs=True)))
    yield bg, model_only, model, data
    bg.stop()
    model_only.stop()


def test_uint8_images_in_one_answer_each_out(images):
    bg, model, pixels = images
    status, answer = post_json(bg.url, {"inputs": pixels[:5].tolist()})
    assert status == 200, answer
    with torch.no_grad():
        want = model(torch.from_numpy(pixels[:5]).float().reshape(5, 64) / 255).argmax(1)
    assert [a["label"] for a in answer["predictions"]] == ["abc"[i] for i in want.tolist()]
    for a in answer["predictions"]:
        assert sum(a["probabilities"].values()) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize(
    "pixel, says",
    [
        (300, "got 300.0 at [0, 0, 0]"),
        (-1, "got -1.0 at [0, 0, 0]"),
        (1.5, "got 1.5 at [0, 0, 0]"),
        ("x", "must be a rectangular list of numbers"),
    ],
)
def test_a_bad_pixel_is_a_400_that_names_it(images, pixel, says):
    bg, _, pixels = images
    image = pixels[0].tolist()
    image[0][0] = pixel
    status, answer = post_json(bg.url, {"inputs": [image]})
    assert status == 400 and says in answer["message"], answer
    if isinstance(pixel, int | float):
        assert "whole numbers 0..255 (uint8)" in answer["message"]


def test_review_strings_in_labels_out(text):
    bg, _, model, data = text
    reviews = ["A small movie with a big impact.", "Tedious, shallow and far too long."]
    for body in (
        {"inputs": reviews},
        {"dataframe_records": [{"text": r} for r in reviews]},
        {"dataframe_split": {"columns": ["text"], "data": [[r] for r in reviews]}},
    ):
        status, answer = post_json(bg.url, body)
        assert status == 200, (body, answer)
        with torch.no_grad():
            want = model(_ids(reviews, data)).argmax(1)
        assert [a["label"] for a in answer["predictions"]] == [
            data.pipeline.answer["classes"][i] for i in want.tolist()
        ]


def _ids(reviews, data):
    from workers.tasks._text import encode

    return encode(reviews, data.extra)


@pytest.mark.parametrize(
    "body, says",
    [
        ({"inputs": [1, 2]}, "inputs[0] must be a string, got int"),
        ({"inputs": ["ok", ["nested", "list"]]}, "inputs[1] must be a string, got list"),
        ({"inputs": []}, "must be a list of strings"),
        ({"inputs": {"text": "a"}}, "must be a list of strings"),
    ],
)
def test_a_bad_review_is_a_400_that_names_it(text, body, says):
    bg, *_ = text
    status, answer = post_json(bg.url, body)
    assert status == 400 and says in answer["message"], answer


def test_bad_utf8_is_a_400(text):
    bg, *_ = text
    status, answer = post(bg.url, b'{"inputs": ["caf\xe9"]}')
    assert status == 400, answer


def test_model_inputs_serves_the_model_alone(text):
    _, model_only, model, data = text
    ids = data.x_test[:3]
    status, answer = post_json(model_only.url, {"inputs": ids.tolist()})
    assert status == 200, answer
    with torch.no_grad():
        want = model(ids).numpy()
    np.testing.assert_allclose(answer["predictions"], want, rtol=1e-5, atol=1e-5)


def test_float64_columns_keep_their_precision(tmp_path):
    """A tabular pipeline takes float64 (pandas' default) and casts inside the graph: values
    beyond float32's range of exact integers reach the front unchanged."""
    data = load_task("breast_cancer", 0)
    _, path = _pipeline(data, {"arch": "mlp", "hidden": [8]}, tmp_path)
    scorer = load_scorer(path)
    assert scorer.input_dtypes == [np.float64]
    x = data.pipeline.raw_test[0][:4].numpy()
    answers = scorer.predict(x)
    assert len(answers) == 4 and {"label", "probabilities"} == set(answers[0])
    assert json.dumps(answers)  # JSON-able as it is
