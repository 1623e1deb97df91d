"""Many trials per GPU: one Fashion-MNIST sweep run three ways, and their trial-epochs per second.

    python benchmarks/gpu_sweep.py --out docs/benchmarks/gpu.json   # on a GPU host: a few minutes
    python benchmarks/gpu_sweep.py --smoke                           # every way on the CPU: seconds
    bash benchmarks/gpu_sweep.sh                                     # the prepared device run

The ways, each the same trials (trial i: config i mod 3 at its own learning rate, fixed epochs):

- ``packed``: N trial processes share the GPU at once, as Ray runs trials asking for
  ``resources.gpu: 1/N`` (N from ``gpu_share`` on the largest config's measured memory, unless
  ``--procs``), each capped at its share of the card's memory, its data on the device, bf16.
- ``one_at_a_time``: one trial process owns the GPU and runs the trials in turn, float32: a
  sweep asking ``gpu: 1`` on one card (today's path before packing).
- ``cpu``: the trials on the machine's cores, as a CPU sweep asking ``cpu: 1`` runs them: up to
  one process per core.

Each trial is the trainable's own body (``workers.trial.trainable``: the task from
``resident_task``, model and optimizer from ``setup_trial``, ``train_batches`` + ``train_epoch``
under ``Device.mixed_precision``, validation scores after each epoch), less Tune's report and the
checkpoint written per epoch. Ray and MLflow are left out on purpose (the GPU host has neither):
this measures the device, ``benchmarks/scale.py`` the orchestration. Untimed in every way: each
process's start, its task load and a warm-up of a few steps per config (CUDA context, cuDNN
autotuning), which a reused Ray actor pays once. Needs torch, numpy and scikit-learn only.

Prints one JSON line: ``card``, ``trial_epochs_per_s`` per way, ``ratio_vs_cpu`` and
``ratio_vs_one_at_a_time`` (of ``packed``), validation accuracies per way and config.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from workers.optimizers import OPTIMIZERS  # noqa: E402
from workers.tasks import load_task  # noqa: E402
from workers.trial.device import gpu_share, pick_device, resident_task  # noqa: E402
from workers.trial.loop import batch_size_for, train_batches, train_epoch  # noqa: E402
from workers.trial.memory import measure_trial_memory
from workers.trial.trainable import _scores, setup_trial

# A small grid of the kind a sweep explores; trial i takes CONFIGS[i % 3] at LR_SCALES[i // 3].
CONFIGS = [
    {
        "model": {"arch": "cnn", "channels": [32, 64], "hidden": [128], "batch_norm": True},
        "optimizer": {"name": "adam", "lr": 0.001},
    },
    {
        "model": {"arch": "cnn", "channels": [16, 32], "hidden": [64], "dropout": 0.2},
        "optimizer": {"name": "rmsprop", "lr": 0.001},
    },
    {
        "model": {"arch": "mlp", "hidden": [256, 128], "batch_norm": True},
        "optimizer": {"name": "nag", "lr": 0.05, "momentum": 0.9},
    },
]
LR_SCALES = (1.0, 0.5, 2.0, 0.7, 1.4, 0.35)
WARMUP_STEPS = 5  # per config and process: CUDA context, cuDNN autotuning, allocator pools
TARGETS = {"ratio_vs_cpu": 10.0, "ratio_vs_one_at_a_time": 3.0, "val_accuracy_gap_pts": 0.5}


def trial_spec(i: int, task: str, epochs: int, batch_size: int, amp: bool) -> dict[str, Any]:
    """Trial ``i`` of the sweep, as the orchestrator hands a concrete trial to a worker."""
    cfg = CONFIGS[i % len(CONFIGS)]
    optimizer = {**cfg["optimizer"]}
    optimizer["lr"] *= LR_SCALES[(i // len(CONFIGS)) % len(LR_SCALES)]
    return {
        "task": task,
        "model": dict(cfg["model"]),
        "optimizer": optimizer,
        # One split seed for the sweep, as a spec gives it: every trial shares the task's data.
        "training": {"seed": 0, "batch_size": batch_size, "max_epochs": epochs, "amp": amp},
        "recipe": None,
    }


def run_one(trial: dict[str, Any], data: Any, device: Any, max_steps: int | None = None) -> dict:
    """The trainable's epochs for one trial (``max_steps``: a warm-up of that many steps)."""
    state = setup_trial(trial, data, device.torch_device)
    entry = OPTIMIZERS.get(trial["optimizer"]["name"])
    training = trial["training"]
    batch_size = batch_size_for(entry.batch_mode, training["batch_size"], data.split_size("train"))
    val: dict[str, float] = {}
    for _ in range(1 if max_steps else training["max_epochs"]):
        batches = train_batches(data, batch_size, state.generator, device.torch_device)
        if max_steps:
            batches = (b for _, b in zip(range(max_steps), batches, strict=False))
        with device.mixed_precision(state.model):
            train_epoch(
                state.model,
                state.optimizer,
                batches,
                loss_fn=data.loss_fn(),
                needs_closure=entry.needs_closure,
                schedule=state.schedule,
            )
        val = _scores(state.model, data, "val", device.torch_device)
    return {"trial": trial, "val_accuracy": val.get("val_accuracy")}


def _worker(way: dict, trial_ids: list[int], args: dict, barrier: Any, results: Any) -> None:
    """One trial process (a Ray actor's stand-in): set up untimed, wait for the others, train."""
    torch.set_num_threads(way["threads"])
    device = pick_device(amp=way["amp"], cudnn_benchmark=True, assigned=way["assigned"])
    task = args["task"]
    data = resident_task(device, (task, 0), lambda: load_task(task, 0))
    specs = [trial_spec(i, task, args["epochs"], args["batch_size"], way["amp"]) for i in trial_ids]
    for spec in specs[: len(CONFIGS)]:
        run_one(spec, data, device, max_steps=WARMUP_STEPS)
    _sync(device)
    barrier.wait()
    for i, spec in zip(trial_ids, specs, strict=True):
        out = run_one(spec, data, device)
        _sync(device)
        results.put({"i": i, "val_accuracy": out["val_accuracy"], "device": device.label})


def _sync(device: Any) -> None:
    if device.kind == "cuda":
        torch.cuda.synchronize()


def run_way(name: str, way: dict, trial_ids: list[int], args: dict) -> dict:
    """The trials of one way over ``way["procs"]`` processes; the clock runs from the moment
    every process is set up to the last trial's end."""
    ctx = mp.get_context("spawn")  # CUDA cannot be forked into children
    procs = min(way["procs"], len(trial_ids))
    barrier, results = ctx.Barrier(procs + 1), ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(way, trial_ids[p::procs], args, barrier, results))
        for p in range(procs)
    ]
    for w in workers:
        w.start()
    barrier.wait(timeout=args["setup_timeout_s"])
    started = time.perf_counter()
    rows = [results.get(timeout=args["trial_timeout_s"]) for _ in trial_ids]
    wall = time.perf_counter() - started
    for w in workers:
        w.join()
    return _summary(name, way, procs, rows, wall, args["epochs"])


def _summary(name: str, way: dict, procs: int, rows: list[dict], wall: float, epochs: int) -> dict:
    by_config: dict[str, list[float]] = {}
    for r in rows:
        by_config.setdefault(_config_name(r["i"]), []).append(r["val_accuracy"])
    summary = {
        "procs": procs,
        "threads_per_proc": way["threads"],
        "amp": way["amp"],
        "device": rows[0]["device"],
        "wall_s": round(wall, 2),
        "trial_epochs_per_s": round(len(rows) * epochs / wall, 3),
        "val_accuracy_mean": round(statistics.mean(r["val_accuracy"] for r in rows), 4),
        "val_accuracy_by_config": {k: round(statistics.mean(v), 4) for k, v in by_config.items()},
    }
    print(f"  {name}: {json.dumps(summary)}", flush=True)
    return summary


def _config_name(i: int) -> str:
    cfg = CONFIGS[i % len(CONFIGS)]["model"]
    return f"{cfg['arch']}-{'-'.join(str(c) for c in cfg.get('channels', cfg['hidden']))}"


def packed_procs(args: dict, on_gpu: bool) -> tuple[int, str]:
    """How many trials share the GPU: ``--procs``, else what ``resources.gpu: auto`` would pick
    for the largest config (measured on this GPU; on the CPU, the smoke run's 2)."""
    if args["procs"]:
        return args["procs"], "--procs"
    if not on_gpu:
        return 2, "smoke: 2 processes"
    spec = trial_spec(0, args["task"], 1, args["batch_size"], True)  # config 0: the largest
    memory = measure_trial_memory(spec)
    share, reason = gpu_share(memory.peak_bytes, memory.card_bytes or 0)
    torch.cuda.empty_cache()
    return round(1 / share), reason


def plan(args: dict, on_gpu: bool) -> tuple[dict[str, dict], str]:
    """Each way's processes, threads, device and precision; and why ``packed`` has its N."""
    cores = os.cpu_count() or 1
    procs, why = packed_procs(args, on_gpu)
    gpu = (lambda share: {"GPU": share}) if on_gpu else (lambda share: {})
    cpu_procs = args["cpu_procs"] or min(cores, args["trials"])
    return {
        "packed": {"procs": procs, "threads": 1, "amp": on_gpu, "assigned": gpu(1 / procs)},
        "one_at_a_time": {"procs": 1, "threads": 1, "amp": False, "assigned": gpu(1.0)},
        "cpu": {
            "procs": cpu_procs,
            "threads": max(1, cores // cpu_procs),
            "amp": False,
            "assigned": {},
        },
    }, why


def compare(ways: dict[str, dict]) -> dict[str, Any]:
    """The headline: ratios of ``packed`` and its largest accuracy gap to the others, per config."""
    rate = {name: w["trial_epochs_per_s"] for name, w in ways.items()}
    packed = ways["packed"]["val_accuracy_by_config"]
    gap = max(
        abs(packed[c] - w["val_accuracy_by_config"][c]) * 100
        for w in ways.values()
        for c in packed
        if c in w["val_accuracy_by_config"]
    )
    return {
        "trial_epochs_per_s": rate,
        "ratio_vs_cpu": round(rate["packed"] / rate["cpu"], 2),
        "ratio_vs_one_at_a_time": round(rate["packed"] / rate["one_at_a_time"], 2),
        "val_accuracy": {name: w["val_accuracy_mean"] for name, w in ways.items()},
        "val_accuracy_gap_pts": round(gap, 2),
    }


def parse(argv: list[str] | None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="fashion-mnist")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--procs", type=int, default=0, help="trials sharing the GPU (default: auto)")
    p.add_argument("--cpu-procs", type=int, default=0, help="CPU processes (default: one a core)")
    p.add_argument("--cpu-trials", type=int, default=0, help="trials on the CPU (default: all)")
    p.add_argument("--smoke", action="store_true", help="every way on the CPU, tiny: seconds")
    p.add_argument("--out", type=Path, help="also write the JSON line to this file")
    p.add_argument("--setup-timeout-s", type=float, default=300.0)
    p.add_argument("--trial-timeout-s", type=float, default=600.0)
    args = vars(p.parse_args(argv))
    if args["smoke"]:
        # Digits ships with scikit-learn: no download, a few seconds for every way.
        args.update(task="digits", trials=4, epochs=1, batch_size=64, cpu_procs=2)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    on_gpu = not args["smoke"]
    if on_gpu and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here; --smoke runs every way on the CPU")
    ways, packed_why = plan(args, on_gpu)
    ids = list(range(args["trials"]))
    results = {
        name: run_way(name, way, ids[: args["cpu_trials"] or None] if name == "cpu" else ids, args)
        for name, way in ways.items()
    }
    summary = {
        "card": torch.cuda.get_device_name(0) if on_gpu else "cpu (smoke: every way on the CPU)",
        **compare(results),
        "targets": TARGETS,
        "ways": results,
        "packed_procs_from": packed_why,
        **{k: args[k] for k in ("task", "trials", "epochs", "batch_size", "smoke")},
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
    }
    line = json.dumps(summary)
    print(line, flush=True)
    if args["out"]:
        args["out"].parent.mkdir(parents=True, exist_ok=True)
        args["out"].write_text(line + "\n")
    return summary


if __name__ == "__main__":
    main()
