"""The benchmarks' headlines are Podium's own decisions, not a hand-rolled ranking."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(recipe: str, size_ratio: float, speedup: float, drop: float) -> dict:
    return {
        "recipe": recipe,
        "size_ratio": size_ratio,
        "speedup_b1": speedup,
        "speedup_b1_vs_onnx": 1.0,
        "accuracy_drop_pts": drop,
    }


def test_the_compression_headline_is_the_fastest_recipe_within_the_policy():
    compression = _load("compression")
    rows = [
        _row("static int8", 3.96, 4.1, 0.1),  # fastest, but not 5x smaller: the old headline
        _row("structured 75% + int8", 18.9, 3.5, 0.4),
        _row("structured 90%", 9.0, 5.0, 2.0),  # fastest of all, but loses 2 points
    ]
    decision = compression.headline(rows, max_drop=0.5)
    assert decision.winner.trial_id == "structured 75% + int8"
    assert decision.rejected["static int8"].startswith("breaks size_ratio >= 5")
    assert compression.headline(rows[:1], max_drop=0.5).winner is None


def test_the_search_benchmark_counts_trial_epochs_to_the_target_in_time_order():
    search = _load("search")
    events = [(10.0, 0.5), (11.0, 0.8), (12.5, 0.86), (13.0, 0.9)]
    assert search.to_target(events, 9.0, 0.85) == {"epochs": 3, "seconds": 3.5}
    assert search.to_target(events, 9.0, 0.95) == {"epochs": None, "seconds": None}
    # A method that missed on any seed has no median: it is not faster.
    assert search.median_or_none([3, None, 5]) is None
    assert search.median_or_none([3, 9, 5]) == 5

    # Where random + ASHA missed on a seed, it counts as all the epochs it ran there (a lower
    # bound on what it needed); the ratio against that is an upper bound, and judged on it.
    def seed(bohb: int, asha: int | None, asha_ran: int) -> dict:
        row = {"epochs": None, "seconds": None, "trial_epochs": 400, "wall_s": 10.0, "trials": 96}
        rows = {m: {**row, "searcher_s": 0.0, "winner_test_accuracy": 0.8} for m in search.COLD}
        rows["grid"] = {**rows["random_fifo"], "epochs": 200}
        rows["bohb"] = {**rows["bohb"], "epochs": bohb}
        rows["random_asha"] = {**rows["random_asha"], "epochs": asha, "trial_epochs": asha_ran}
        warm = {**rows["bohb"], "epochs": 6, "method": "bohb"}
        return {**rows, "warm_start": warm, "target": 0.86}

    summary = search.summary([seed(30, None, 210), seed(40, 90, 200), seed(35, 60, 190)])
    assert summary["epochs_to_target"]["random_asha"] is None
    assert summary["epochs_to_target_at_least"]["random_asha"] == 90
    assert summary["ratios"]["vs_random_asha_at_most"] == round(35 / 90, 3)
    assert summary["targets_met"]["model_based_vs_random_asha"]
    tight = search.summary([seed(30, None, 50), seed(40, 60, 200), seed(35, 55, 190)])
    assert not tight["targets_met"]["model_based_vs_random_asha"]  # 35 / 55 > 1/2
