"""The distill step on digits: a CNN teacher (the trial's model) taught to a tiny MLP student,
compared with the same student trained alone on the same budget; registry-style teacher files
(ONNX and weights-only torch) give the same soft targets as the in-memory teacher."""

from __future__ import annotations

import warnings

import pytest
import torch

from tracking import keys
from workers.models import build_model
from workers.recipes import run_recipe
from workers.recipes._distill import teacher_logits
from workers.recipes._export import export_onnx
from workers.recipes._measure import torch_threads
from workers.recipes._train import make_optimizer, train_epoch
from workers.tasks import load_task


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine more threads only oversubscribe it."""
    with torch_threads(1):
        yield


TEACHER = {"arch": "cnn", "channels": [16, 32], "hidden": [64], "batch_norm": False, "dropout": 0.0}
# Measured first (digits, seeds 0-2, 10 epochs, Adam 3e-3): the student alone reached 91-92%;
# distilled with T=2, alpha=0.5 it reached 89-90%, with T=4, alpha=0.9 about 84%. On this short
# budget distillation does NOT beat training alone; the test measures and reports that rather
# than asserting a win, and asserts what distillation must deliver: a working, much smaller model
# that learned the teacher's function.
STUDENT = {
    "arch": "mlp",
    "hidden": [16],
    "temperature": 2.0,
    "alpha": 0.5,
    "epochs": 10,
    "lr": 3e-3,
    "batch_size": 64,
}


@pytest.fixture(scope="module")
def teacher():
    data = load_task("digits", 0)
    torch.manual_seed(0)
    model = build_model(TEACHER, data.input_shape, data.num_classes)
    opt, gen = make_optimizer(model, 1e-3), torch.Generator().manual_seed(0)
    for _ in range(10):
        train_epoch(model, data, opt=opt, batch_size=32, generator=gen)
    return model.eval(), data


def _run(model, data, tmp_path, step, teachers=None):
    ctx = {
        "workdir": tmp_path,
        "model_section": TEACHER,
        "latency_iters": 20,
        "teachers": teachers or {},
    }
    return run_recipe([{"step": "distill", **step}], model, data, ctx)


def test_distilled_student_versus_the_same_student_alone(teacher, tmp_path, record_property):
    model, data = teacher
    distilled = _run(model, data, tmp_path / "kd", STUDENT)
    alone = _run(model, data, tmp_path / "alone", {**STUDENT, "alpha": 0.0})  # labels only
    kd_acc, alone_acc = (r.metrics[keys.TEST_ACCURACY] for r in (distilled, alone))
    teacher_acc = distilled.metrics[keys.recipe_metric("baseline_eager", keys.TEST_ACCURACY)]
    record_property("distill_test_accuracy", kd_acc)
    record_property("alone_test_accuracy", alone_acc)
    if kd_acc <= alone_acc:
        warnings.warn(
            f"distillation did not beat training alone on this budget: {kd_acc:.3f} vs "
            f"{alone_acc:.3f} (teacher {teacher_acc:.3f})",
            stacklevel=1,
        )
    # The student is a 64-16-10 MLP: ~12x fewer parameters than the CNN teacher, and it works.
    assert distilled.model_section["arch"] == "mlp" and distilled.model_section["hidden"] == [16]
    assert distilled.metrics[keys.PARAM_COUNT] == 64 * 16 + 16 + 16 * 10 + 10
    assert distilled.metrics[keys.SIZE_RATIO] > 8
    assert kd_acc >= 0.85 and teacher_acc >= 0.9
    # It learned from the teacher: its predictions agree with the teacher's on most test images.
    with torch.inference_mode():
        agree = (distilled.model(data.x_test).argmax(1) == model(data.x_test).argmax(1)).float()
    assert float(agree.mean()) >= 0.85


def test_registry_teacher_files_match_the_in_memory_teacher(teacher, tmp_path):
    """What the driver downloads for ``models:/name@alias`` (ONNX or a weights-only torch file)
    yields the same soft targets, and the step reads it from ctx.teachers."""
    model, data = teacher
    onnx_path = export_onnx(model, data.example_input(), tmp_path / "teacher.onnx")
    pt_path = tmp_path / "teacher.pt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "model": TEACHER,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
        },
        pt_path,
    )
    expected = teacher_logits(model, data.x_train)
    torch.testing.assert_close(teacher_logits(pt_path, data.x_train), expected)
    from_onnx = teacher_logits(onnx_path, data.x_train)
    torch.testing.assert_close(from_onnx, expected, atol=1e-4, rtol=1e-4)

    uri = "models:/digits-cnn@champion"
    step = {**STUDENT, "teacher": uri, "epochs": 2}
    from_file = _run(model, data, tmp_path / "file", step, teachers={uri: str(onnx_path)})
    in_memory = _run(model, data, tmp_path / "mem", {**step, "teacher": "trial"})
    assert from_file.metrics[keys.TEST_ACCURACY] == pytest.approx(
        in_memory.metrics[keys.TEST_ACCURACY], abs=0.02
    )


def test_an_unresolved_registry_teacher_fails_with_a_clear_error(teacher, tmp_path):
    from workers.errors import WorkerError

    model, data = teacher
    with pytest.raises(WorkerError, match="models:/nope@champion.*not resolved"):
        _run(model, data, tmp_path, {**STUDENT, "teacher": "models:/nope@champion"})
