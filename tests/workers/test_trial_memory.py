"""A trial's memory, as ``resources.gpu: auto`` measures it: on this CPU build, the estimate."""

from __future__ import annotations

from workers.models import build_model
from workers.tasks import load_task
from workers.trial.device import task_bytes
from workers.trial.measure import param_count
from workers.trial.memory import estimate_peak, measure_trial_memory


def trial(hidden: list[int], batch_size: int = 64) -> dict:
    return {
        "task": "digits",
        "model": {"arch": "mlp", "hidden": hidden},
        "optimizer": {"name": "adam", "lr": 0.01},
        "training": {"seed": 0, "batch_size": batch_size, "max_epochs": 1},
        "recipe": None,
    }


def test_on_a_cpu_the_peak_is_estimated_and_no_card_is_known():
    memory = measure_trial_memory(trial([32]))
    data = load_task("digits", 0)
    params = 4 * param_count(build_model({"arch": "mlp", "hidden": [32]}, data.input_shape, 10))
    # Data, weights, gradients, Adam's two moments per weight, and some activations.
    assert memory.peak_bytes > task_bytes(data) + 4 * params
    assert memory.card_bytes is None and memory.how == "estimated on the CPU"


def test_a_wider_model_or_a_larger_batch_needs_more():
    base = measure_trial_memory(trial([32])).peak_bytes
    assert measure_trial_memory(trial([512, 512])).peak_bytes > base
    assert measure_trial_memory(trial([32], batch_size=1024)).peak_bytes > base


def test_estimate_counts_gradients_and_activations_twice():
    assert estimate_peak(
        data_bytes=100, param_bytes=10, optimizer_bytes=20, activation_bytes=5
    ) == (100 + 2 * 10 + 20 + 2 * 5)
