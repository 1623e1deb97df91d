"""What a trial asks Ray for, and how ``resources.gpu: auto`` decides its share of a GPU.

The decision (:func:`auto_gpu_share`) and the probed configs (:func:`probe_trials`) are tested
here without Ray; the measurement itself in ``tests/workers/test_trial_memory.py``, and the
whole path on a simulated GPU node in ``tests/integration/test_cluster.py``.
"""

from __future__ import annotations

import pytest

from orchestrator.execution.resources import auto_gpu_share, probe_trials, trial_resources
from orchestrator.search.space import template_of
from orchestrator.spec import parse_spec
from workers.trial.memory import TrialMemory

GIB = 1024**3


def test_numeric_gpu_shares_go_to_ray_as_they_are():
    spec = parse_spec({"name": "x", "resources": {"cpu": 0.25, "gpu": 0.25, "memory_mb": 512}})
    assert trial_resources(spec) == {"cpu": 0.25, "gpu": 0.25, "memory": 512 * 1024 * 1024}


def test_auto_share_follows_the_largest_probe_on_the_smallest_card():
    probes = [
        TrialMemory(1 * GIB, 80 * GIB, "measured on H100"),
        TrialMemory(3 * GIB, 80 * GIB, "measured on H100"),
    ]
    share, reason = auto_gpu_share(probes)
    assert share == 0.125 and "8 trials per GPU" in reason and "measured on H100" in reason
    small_card = [*probes, TrialMemory(1 * GIB, 16 * GIB, "measured on T4")]
    assert auto_gpu_share(small_card)[0] == 0.5  # 3 GiB * 1.25 + context > 4 GiB
    assert auto_gpu_share(probes, margin=3.0)[0] == 0.25


def test_auto_share_without_a_measured_card_is_one_gpu_and_says_why():
    share, reason = auto_gpu_share([TrialMemory(GIB // 4, None, "estimated on the CPU")])
    assert share == 1.0
    assert "estimated on the CPU" in reason and "no GPU could be measured" in reason


def test_probe_trials_cover_each_choice_at_the_top_of_each_range():
    spec = parse_spec(
        {
            "name": "x",
            "model": {"arch": "mlp", "hidden": {"choice": [[16], [256, 128]]}},
            "optimizer": {
                "choice": [
                    {"name": "adam", "lr": {"loguniform": [0.0001, 0.01]}},
                    {"name": "nag", "lr": 0.05, "momentum": {"uniform": [0.5, 0.9]}},
                ]
            },
            "training": {"batch_size": {"randint": [32, 512]}},
        }
    )
    probes = probe_trials(template_of(spec))
    assert len(probes) == 4  # 2 models x 2 optimizers
    assert {tuple(p["model"]["hidden"]) for p in probes} == {(16,), (256, 128)}
    assert {p["training"]["batch_size"] for p in probes} == {512}
    adam = next(p for p in probes if p["optimizer"]["name"] == "adam")
    assert adam["optimizer"]["lr"] == pytest.approx(0.01)
    nag = next(p for p in probes if p["optimizer"]["name"] == "nag")
    assert (
        nag["optimizer"]["momentum"] == pytest.approx(0.9) and "momentum" not in adam["optimizer"]
    )
    assert len(probe_trials(template_of(spec), limit=3)) == 3


def test_auto_on_a_cluster_without_gpus_fails_before_the_sweep(monkeypatch):
    ray = pytest.importorskip("ray")
    from orchestrator.errors import RunError

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    spec = parse_spec({"name": "x", "resources": {"cpu": 1, "gpu": "auto"}})
    with pytest.raises(RunError, match="resources.gpu: auto needs a GPU node"):
        trial_resources(spec)
