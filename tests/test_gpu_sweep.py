"""``benchmarks/gpu_sweep.py``: its three ways run (on the CPU, ``--smoke``) and its headline."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_sweep", ROOT / "benchmarks/gpu_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _way(rate: float, by_config: dict[str, float]) -> dict:
    return {
        "trial_epochs_per_s": rate,
        "val_accuracy_mean": sum(by_config.values()) / len(by_config),
        "val_accuracy_by_config": by_config,
    }


def test_the_headline_compares_packed_with_each_way_config_by_config():
    ways = {
        "packed": _way(12.0, {"cnn": 0.900, "mlp": 0.880}),
        "one_at_a_time": _way(3.0, {"cnn": 0.905, "mlp": 0.880}),
        "cpu": _way(1.0, {"cnn": 0.900, "mlp": 0.872}),
    }
    got = _load().compare(ways)
    assert got["ratio_vs_cpu"] == 12.0 and got["ratio_vs_one_at_a_time"] == 4.0
    assert got["val_accuracy_gap_pts"] == pytest.approx(0.8)  # mlp, packed against the CPU


def test_the_sweeps_trials_share_one_split_seed_and_differ_by_config_and_rate():
    sweep = _load()
    trials = [sweep.trial_spec(i, "fashion-mnist", 2, 256, amp=True) for i in range(6)]
    assert {t["training"]["seed"] for t in trials} == {0}  # one task copy per process
    assert trials[0]["model"] == trials[3]["model"]
    assert trials[0]["optimizer"]["lr"] != trials[3]["optimizer"]["lr"]


@pytest.mark.slow  # about 20 s: five spawned trial processes importing torch
def test_smoke_runs_all_three_ways_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run(
        [sys.executable, "benchmarks/gpu_sweep.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    summary = json.loads(out.read_text())
    assert summary["smoke"] and summary["card"].startswith("cpu")
    assert set(summary["trial_epochs_per_s"]) == {"packed", "one_at_a_time", "cpu"}
    assert all(rate > 0 for rate in summary["trial_epochs_per_s"].values())
    assert {"ratio_vs_cpu", "ratio_vs_one_at_a_time", "val_accuracy"} <= set(summary)
    # The same trials, seeds and data on one device: every way learns exactly the same.
    assert summary["val_accuracy_gap_pts"] == 0.0
    assert summary["ways"]["packed"]["procs"] == 2
