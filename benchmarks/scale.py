"""Orchestration overhead and driver memory for many short trials on a simulated 3-node cluster.

    python benchmarks/scale.py --trials 1000 10000  # BENCHMARKS.md ## Scale

Run it, and ``benchmarks/overhead.py --storage``, before landing any change to how trials,
checkpoints, the ledger or Tune's saved state are stored: a test sweep of a few trials cannot show
growth per trial or per save (issue 31: each save of Tune's state inside the next reached 4.4 GB
at 1,000 trials; no test saw it). Each row reports the largest file in the storage folder.

A ``ray.cluster_utils.Cluster`` runs a head node with no CPUs for trials (the driver's node, as
in the team stack) and two worker nodes with ``--cpus-per-node`` CPUs each. Each size in
``--trials`` is one full Podium sweep through :func:`orchestrator.execution.runner.run_experiment`:
Tune, the MLflow callback and its buffered writer into a SQLite store, a checkpoint per trial in the
shared storage path, selection at the end (registry promotion off: it is a constant, not a
per-trial cost).

Per-trial overhead = ``wall * slots / trials - work``, where ``work`` is the same trial function
timed in-process with no Ray, no Tune and no MLflow, and ``slots`` the trials that can run at
once. It is the time a slot spends on anything but the trial itself: scheduling, actor reuse,
result and checkpoint handling, the driver's callbacks, and the CPU the orchestration's own
processes take from the trials on a small machine.

Memory: the driver's resident memory is read, after a garbage collection, each time another tenth
of the trials has finished (counted in the sweep's ledger of finished trials). Its slope from 30%
to 90% of the trials, in KiB per finished trial, says whether memory stays flat as trials
accumulate; the start (imports, Ray's first trials) and the end (selection, plots) are left out.
``--modes forget keep`` runs each size twice, alternating: as Podium runs (Tune lets go of each
finished trial) and with ``keep_finished=True`` (Tune keeps them all, as plain Ray Tune does).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler(threading.Thread):
    """Resident memory every ``period_s``, and after a garbage collection each time another
    tenth of ``trials`` has finished (the lines of the sweep's ledger under ``storage``)."""

    def __init__(self, storage: Path, trials: int, period_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.storage, self.trials, self.period_s = storage, trials, period_s
        self.samples: list[tuple[float, float]] = []
        self.by_finished: dict[int, float] = {}  # tenth -> RSS MiB after gc
        self._stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self._stop_event.is_set():
            self.samples.append((time.monotonic() - t0, rss_mib()))
            tenth = self._finished() * 10 // self.trials
            if tenth and tenth not in self.by_finished:
                gc.collect()
                self.by_finished[tenth] = rss_mib()
            time.sleep(self.period_s)

    def _finished(self) -> int:
        from orchestrator.execution.ledger import LEDGER_FILE

        ledgers = list(self.storage.glob(f"*/{LEDGER_FILE}"))
        return sum(1 for _ in open(ledgers[0])) if ledgers else 0

    def stop(self) -> list[tuple[float, float]]:
        self._stop_event.set()
        self.join()
        return self.samples


def spec_for(trials: int, storage: Path):
    from orchestrator.spec import parse_spec

    return parse_spec(
        {
            "name": f"scale-{trials}",
            "task": "digits",
            "model": {"arch": "mlp", "hidden": [8]},
            "optimizer": {"name": "adam", "lr": {"loguniform": [0.001, 0.05]}},
            "training": {"max_epochs": 1, "batch_size": 512},
            "search": {"num_samples": trials, "scheduler": "fifo", "searcher": "random"},
            "resources": {"cpu": 1},
            "cluster": {"storage_path": str(storage)},
            "promotion": {"enabled": False},
        }
    )


def trial_work_s(spec, repeats: int = 30) -> float:
    """Mean wall time of one trial's own work, in-process (Tune's report is a no-op here)."""
    import warnings

    from orchestrator.search.space import resolve, template_of
    from workers.trial.trainable import TrialContext, run_trial

    template = template_of(spec)
    trial = resolve(template, {"optimizer.lr": 0.01})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_trial(trial, TrialContext(threads=1))  # warm-up: imports, data load (cached)
        t0 = time.perf_counter()
        for _ in range(repeats):
            run_trial(trial, TrialContext(threads=1))
    return (time.perf_counter() - t0) / repeats


def run_size(
    trials: int, address: str, slots: int, work_s: float, folder: Path, mode: str = "forget"
) -> dict:
    from orchestrator.execution.runner import run_experiment

    storage = folder / f"storage-{mode}-{trials}"
    spec = spec_for(trials, storage)
    uri = f"sqlite:///{folder / f'mlflow-{mode}-{trials}.db'}"
    before = rss_mib()
    sampler = RssSampler(storage, trials)
    sampler.start()
    t0 = time.perf_counter()
    result = run_experiment(
        spec,
        tracking_uri=uri,
        address=address,
        verbosity=0,
        workdir=folder,
        keep_finished=mode == "keep",
    )
    wall = time.perf_counter() - t0
    samples = sampler.stop()
    largest = max(storage.rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else -1)
    completed = sum(r.status == "completed" for r in result.rows)
    logged = sum(r.run_id is not None for r in result.rows)
    tenths = sampler.by_finished
    slope = None
    if 3 in tenths and 9 in tenths:
        slope = round((tenths[9] - tenths[3]) * 1024 / (trials * 0.6), 2)

    return {
        "mode": mode,
        "trials": trials,
        "completed": completed,
        "mlflow_runs": logged,
        "slots": slots,
        "wall_s": round(wall, 1),
        "trial_work_s": round(work_s, 4),
        "overhead_per_trial_s": round(wall * slots / trials - work_s, 3),
        "trials_per_s": round(trials / wall, 2),
        "driver_rss_mib": {
            "before": round(before),
            **{f"{10 * k}%": round(v, 1) for k, v in sorted(tenths.items()) if k in (1, 3, 6, 9)},
            "peak": round(max(m for _, m in samples)),
        },
        "rss_growth_kib_per_trial_30_to_90pct": slope,
        "largest_file": {"name": largest.name, "bytes": largest.stat().st_size},
        "storage_bytes": sum(p.stat().st_size for p in storage.rglob("*") if p.is_file()),
        "phases_s": result.extra.get("timings_s"),
        "tracking_retries": result.tracking_failures,
    }


def marginal(small: dict, large: dict) -> dict:
    """What each extra trial costs, start-up and the final flush excluded: the difference of two
    sweep sizes. Memory growth per 1,000 extra trials tells whether the driver stays flat."""
    extra = large["trials"] - small["trials"]
    per_trial = (large["wall_s"] - small["wall_s"]) * large["slots"] / extra
    growth = large["driver_rss_mib"]["peak"] - small["driver_rss_mib"]["peak"]
    return {
        "marginal_overhead_per_trial_s": round(per_trial - large["trial_work_s"], 3),
        "peak_rss_growth_mib_per_1000_trials": round(growth * 1000 / extra, 1),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, nargs="+", default=[250, 1000])
    p.add_argument("--cpus-per-node", type=int, default=1)
    p.add_argument(
        "--modes",
        nargs="+",
        choices=["forget", "keep"],
        default=["forget"],
        help="forget: as Podium runs; keep: Tune keeps every finished trial (keep_finished=True)",
    )
    p.add_argument("--one", nargs=5, help=argparse.SUPPRESS)  # MODE N ADDRESS WORK_S DIR
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if args.one:
        mode, n, address, work_s, folder = args.one
        slots = 2 * args.cpus_per_node
        row = run_size(int(n), address, slots, float(work_s), Path(folder), mode)
        print(json.dumps(row), flush=True)
        return [row]
    from ray.cluster_utils import Cluster

    with tempfile.TemporaryDirectory(prefix="podium-scale-") as tmp:
        work_s = trial_work_s(spec_for(1, Path(tmp) / "storage"))
        print(f"trial work, in-process: {work_s * 1000:.1f} ms", flush=True)
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 0, "node_name": "head", "include_dashboard": False},
        )
        for i in range(2):
            cluster.add_node(num_cpus=args.cpus_per_node, node_name=f"worker-{i + 1}")
        cluster.wait_for_nodes()
        try:
            rows = []
            for n in args.trials:
                for mode in args.modes:
                    # A fresh driver per sweep: memory one sweep freed must not hide the next
                    # one's growth.
                    one = [mode, str(n), cluster.address, str(work_s), tmp]
                    cmd = [sys.executable, __file__, "--one", *one]
                    cmd += ["--cpus-per-node", str(args.cpus_per_node)]
                    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            for mode in args.modes:
                sized = [r for r in rows if r["mode"] == mode]
                if len(sized) >= 2:
                    print(json.dumps({"mode": mode, **marginal(sized[0], sized[-1])}), flush=True)
        finally:
            cluster.shutdown()
    return rows


if __name__ == "__main__":
    main()
