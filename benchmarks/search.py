"""How fast each searcher and scheduler reaches a good model: real Podium sweeps on Fashion-MNIST.

    .venv/bin/python benchmarks/search.py --quick      # 1 seed, 48-point space (~15 min here)
    .venv/bin/python benchmarks/search.py              # 3 seeds, 96-point space

Every method is a real sweep through :func:`orchestrator.execution.runner.run_experiment`: a local
Ray with one CPU per trial, MLflow on a SQLite store in a temporary folder, real training. The task
(``fashion_subset`` below, a plug-in task) is Podium's Fashion-MNIST with its training split cut
to the first 12,000 images, 2,000 of them for validation, and the official 10k test images. Each
epoch then takes a fraction of a second, and a 96-trial grid fits the budget.

The space has five dimensions: the optimizer (adam or nag, each with its own learning rates, a
conditional space), the hidden sizes, dropout and batch norm. Every dimension is a choice, so
grid can enumerate it. Each method, per seed:

- ``grid``: every point, FIFO, 6 epochs each. Its best validation accuracy is the reference, and
  the **target** is 0.5 points below it.
- ``random_fifo``, ``random_asha`` (Ray Tune's common default), ``tpe_asha`` (``optuna`` with
  ``asha``), ``bohb`` (``bohb`` with ``hyperband``): as many trials as grid has points. Only
  the epochs up to the target count, so a method that gets there early is not charged for the
  trials it goes on to run.
- ``warm_start``: the faster of ``tpe_asha`` and ``bohb``, warm-started (``search.warm_start``,
  default top 50) from the seed's ``random_fifo`` sweep, an earlier sweep on the same task. With
  only the top 16, TPE saw no poor configs to tell the good ones from, and it kept proposing
  near the source's best, which was 1 point below the target (``--quick``, seed 0).

Measured from each sweep's MLflow runs: every epoch any trial reported, in time order. A
method's **trial-epochs to target** counts the epochs reported up to the first one whose
validation accuracy reaches the target. **Seconds to target** is the wall time from the sweep's
first trial start to that report. A method that never reaches the target within its budget gets
null. Also measured: the winner's test accuracy, and ``searcher_overhead_pct``, the time the
model-based searchers spent inside their calls (suggest, results, completions) as a share of
their sweeps' wall time. Random search's calls cost nothing measurable by comparison.

A method that misses the target on any seed has no median (null). ``epochs_to_target_at_least``
counts a missed seed as all the trial-epochs the sweep ran there, fewer than it would have
needed: a lower bound, so the model-based method's ratio against random + ASHA's is judged on an
upper bound of the true ratio (``vs_random_asha_at_most``).

It prints one JSON line, medians over seeds:
``{"epochs_to_target": {...}, "best_method": ..., "searcher_overhead_pct": ..., ...}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

EPOCHS = 6
N_TRAIN = 12000
COLD = ("random_fifo", "random_asha", "tpe_asha", "bohb")
METHODS = {  # (searcher, scheduler)
    "grid": ("grid", "fifo"),
    "random_fifo": ("random", "fifo"),
    "random_asha": ("random", "asha"),
    "tpe_asha": ("optuna", "asha"),
    "bohb": ("bohb", "hyperband"),
}


def fashion_subset(seed: int) -> Any:
    """Fashion-MNIST with a smaller training split (the plug-in task the sweeps train on)."""
    import numpy as np

    from workers.tasks._base import split_arrays
    from workers.tasks._fashion_mnist import load_arrays

    a = load_arrays()
    x = a["x_train"][:N_TRAIN].reshape(-1, 1, 28, 28) / np.float32(255.0)
    x_test = a["x_test"].reshape(-1, 1, 28, 28) / np.float32(255.0)
    return split_arrays(
        "fashion-subset", x, a["y_train"][:N_TRAIN], seed, val_fraction=1 / 6,
        test=(x_test, a["y_test"]),
    )  # fmt: skip


def space(quick: bool) -> dict[str, Any]:
    adam = [0.001, 0.003, 0.01] if quick else [0.0003, 0.001, 0.003, 0.01]
    nag = [0.03, 0.1, 0.3] if quick else [0.01, 0.03, 0.1, 0.3]
    hidden = [[64], [256]] if quick else [[64], [256], [256, 128]]
    return {
        "model": {
            "arch": "mlp",
            "hidden": {"choice": hidden},
            "dropout": {"choice": [0.0, 0.3]},
            "batch_norm": {"choice": [False, True]},
        },
        "optimizer": {
            "choice": [
                {"name": "adam", "lr": {"choice": adam}},
                {"name": "nag", "lr": {"choice": nag}, "momentum": 0.9},
            ]
        },
    }


def grid_size(quick: bool) -> int:
    s = space(quick)
    lrs = sum(len(b["lr"]["choice"]) for b in s["optimizer"]["choice"])
    return lrs * len(s["model"]["hidden"]["choice"]) * 2 * 2


def spec_for(name: str, method: str, seed: int, quick: bool, samples: int, warm: str | None):
    from orchestrator.spec import parse_spec

    searcher, scheduler = METHODS[method]
    search: dict[str, Any] = {
        "num_samples": 1 if method == "grid" else samples,
        "searcher": searcher,
        "scheduler": scheduler,
        "metric": "val_accuracy",
        "mode": "max",
        "grace_period": 1,
    }
    if warm:
        search["warm_start"] = {"experiment": warm}  # its best 50 trials: all of them here
    raw = {
        "name": name,
        "task": "search:fashion_subset",
        **space(quick),
        "training": {"max_epochs": EPOCHS, "batch_size": 128, "seed": seed},
        "search": search,
        "resources": {"cpu": 1},
        "promotion": {"enabled": False},
    }
    return parse_spec(raw, spec_dir=HERE)


class SearcherClock:
    """Wall seconds spent inside the model-based searcher's calls (the driver's share)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def install(self) -> None:
        from orchestrator.search.searchers import PodiumOptuna

        for name in ("suggest", "on_trial_result", "on_trial_complete"):
            original = getattr(PodiumOptuna, name)
            setattr(PodiumOptuna, name, self._timed(original))

    def _timed(self, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def epoch_timeline(uri: str, parent: str) -> tuple[list[tuple[float, float]], float]:
    """(every reported epoch as (timestamp s, val accuracy), in time order; the first trial's
    start)."""
    from mlflow.tracking import MlflowClient

    from tracking import keys

    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        f"tags.`{keys.TAG_PARENT_RUN}` = '{parent}'",
        max_results=10000,
    )
    events = [
        (m.timestamp / 1000, m.value)
        for r in runs
        for m in client.get_metric_history(r.info.run_id, keys.VAL_ACCURACY)
    ]
    start = min(r.info.start_time for r in runs) / 1000
    return sorted(events), start


def to_target(events: list[tuple[float, float]], start: float, target: float) -> dict[str, Any]:
    for n, (t, acc) in enumerate(events, 1):
        if acc >= target:
            return {"epochs": n, "seconds": round(t - start, 1)}
    return {"epochs": None, "seconds": None}


def one_seed(
    seed: int, quick: bool, uri: str, clock: SearcherClock, workdir: Path
) -> dict[str, Any]:
    from orchestrator.execution.runner import run_experiment

    samples = grid_size(quick)  # as many trials as grid: each may stop once it has the target
    out: dict[str, Any] = {}

    def sweep(method: str, warm: str | None = None, label: str | None = None) -> dict[str, Any]:
        label = label or method
        name = f"bench-{label}-s{seed}".replace("_", "-")
        spec = spec_for(name, method, seed, quick, samples, warm)
        before, started = clock.seconds, time.perf_counter()
        # Tune's folders go to the temporary folder too, not the working directory.
        result = run_experiment(spec, tracking_uri=uri, verbosity=0, workdir=workdir)
        wall = time.perf_counter() - started
        events, start = epoch_timeline(uri, result.parent_run_id)
        winner = result.decision.winner
        row = {
            "trials": len(result.rows),
            "trial_epochs": len(events),
            "best_val": max(acc for _, acc in events),
            "winner_test_accuracy": winner.metrics.get("test_accuracy") if winner else None,
            "wall_s": round(wall, 1),
            "searcher_s": round(clock.seconds - before, 3),
            "events": events,
            "start": start,
        }
        print(f"# seed {seed} {label}: {json.dumps(_public(row))}", file=sys.stderr, flush=True)
        return row

    out["grid"] = sweep("grid")
    target = out["grid"]["best_val"] - 0.005
    for method in COLD:
        out[method] = sweep(method)
    for method in ("grid", *COLD):
        out[method].update(to_target(out[method]["events"], out[method]["start"], target))
    faster = min(("tpe_asha", "bohb"), key=lambda m: _or_inf(out[m]["epochs"]))
    source = f"bench-random-fifo-s{seed}"
    out["warm_start"] = sweep(faster, warm=source, label="warm-start")
    out["warm_start"].update(
        to_target(out["warm_start"]["events"], out["warm_start"]["start"], target)
    )
    out["warm_start"]["method"] = faster
    out["target"] = round(target, 4)
    return out


def _or_inf(v: Any) -> float:
    return float("inf") if v is None else float(v)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("events", "start")}


def median_or_none(values: list[Any]) -> Any:
    """Median over seeds; None if any seed missed (a method that missed is not faster)."""
    if any(v is None for v in values):
        return None
    return statistics.median(values)


def summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    methods = ("grid", *COLD, "warm_start")
    epochs = {m: median_or_none([s[m]["epochs"] for s in per_seed]) for m in methods}
    seconds = {m: median_or_none([s[m]["seconds"] for s in per_seed]) for m in methods}
    best = min(COLD, key=lambda m: (_or_inf(epochs[m]), _or_inf(seconds[m])))
    model_based = [s[m] for s in per_seed for m in ("tpe_asha", "bohb")]
    model_based += [s["warm_start"] for s in per_seed]
    spent = sum(r["searcher_s"] for r in model_based)
    overhead = 100 * spent / sum(r["wall_s"] for r in model_based)
    best_model_based = min(("tpe_asha", "bohb"), key=lambda m: _or_inf(epochs[m]))
    warm_vs = [s["warm_start"]["method"] for s in per_seed]
    cold_of_warm = median_or_none([s[s["warm_start"]["method"]]["epochs"] for s in per_seed])
    # A missed seed counted as all the epochs run there: a lower bound (see the docstring).
    at_least = {m: statistics.median(_at_least(s[m]) for s in per_seed) for m in methods}
    targets = {
        "vs_grid": _ratio(epochs[best_model_based], epochs["grid"]),
        "vs_random_asha": _ratio(epochs[best_model_based], epochs["random_asha"]),
        "vs_random_asha_at_most": _ratio(epochs[best_model_based], at_least["random_asha"]),
        "warm_vs_cold": _ratio(epochs["warm_start"], cold_of_warm),
    }
    return {
        "epochs_to_target": epochs,
        "best_method": best,
        "searcher_overhead_pct": round(overhead, 2),
        "seconds_to_target": seconds,
        "winner_test_accuracy": {
            m: median_or_none([s[m]["winner_test_accuracy"] for s in per_seed]) for m in methods
        },
        "ratios": targets,
        "targets_met": {
            "model_based_vs_grid": _le(targets["vs_grid"], 0.25),
            "model_based_vs_random_asha": _le(targets["vs_random_asha_at_most"], 0.5),
            "warm_vs_cold": _le(targets["warm_vs_cold"], 0.5),
            "overhead": overhead <= 5,
        },
        "warm_start_method": warm_vs,
        "targets_val_accuracy": [s["target"] for s in per_seed],
        "epochs_per_seed": {m: [s[m]["epochs"] for s in per_seed] for m in methods},
        "epochs_to_target_at_least": at_least,
        "trials": {m: [s[m]["trials"] for s in per_seed] for m in methods},
        "seeds": len(per_seed),
    }


def _at_least(row: dict[str, Any]) -> int:
    """Trial-epochs to target, or, where the sweep missed it, all the trial-epochs it ran."""
    return row["epochs"] if row["epochs"] is not None else row["trial_epochs"]


def _ratio(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else round(a / b, 3)


def _le(ratio: float | None, limit: float) -> bool:
    return ratio is not None and ratio <= limit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, a 48-point space")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3; 1 quick)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    seeds = args.seeds or (1 if args.quick else 3)
    clock = SearcherClock()
    clock.install()
    with tempfile.TemporaryDirectory(prefix="podium-search-bench-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        per_seed = [one_seed(seed, args.quick, uri, clock, Path(tmp)) for seed in range(seeds)]
    print(json.dumps(summary(per_seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
