"""Podium's orchestration overhead against plain Ray Tune + Ray's MLflowLoggerCallback.

    .venv/bin/python benchmarks/overhead.py [--rounds 2] [--trials 16] [--epochs 10]

The workload (the project's reference anchor): TRIALS trials of an MLP 64-128-64-10 on
scikit-learn's digits, EPOCHS epochs each, FIFO (every trial completes), one CPU per trial, a
checkpoint and a metrics report every epoch, every report in an MLflow SQLite store. Half the
trials use SGD with momentum 0.9, half Adam, over four learning rates and two seeds.

Each round runs both sides as whole processes, alternating (the machine is shared and noisy):
- baseline: this file with ``--baseline`` (Ray Tune + MLflowLoggerCallback, written out below);
- podium: ``podium run`` on the equivalent spec, registry promotion included.
It prints one JSON line: median whole-process wall times and ``ratio`` = podium / baseline.

    .venv/bin/python benchmarks/overhead.py --storage s3://BUCKET/PREFIX [--start-s3]

instead compares ``podium run`` with Tune's storage (state, checkpoints, the ledger) on object
storage against the same run with a local folder, alternating, and prints the JSON line with
``ratio`` = object storage / folder. The endpoint and keys come from the standard variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``); ``--start-s3`` starts
moto's S3 server (a dev dependency) on loopback for the run and creates the bucket.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LRS = [0.05, 0.01, 0.003, 0.001]


def podium_spec(trials: int, epochs: int, storage: str | None = None) -> str:
    seeds = list(range(max(1, trials // 8)))
    cluster = f"cluster: {{storage_path: '{storage}'}}\n" if storage else ""
    return (
        cluster
        + f"""
name: overhead
task: digits
model: {{arch: mlp, hidden: [128, 64]}}
optimizer: {{name: {{grid: [momentum, adam]}}, lr: {{grid: {LRS}}}}}
training: {{max_epochs: {epochs}, batch_size: 64, seed: {{grid: {seeds}}}}}
search: {{num_samples: 1, scheduler: fifo, searcher: random, metric: val_accuracy, mode: max}}
resources: {{cpu: 1}}
promotion: {{model_name: overhead-model}}
"""
    )


# --------------------------------------------------------------------------- the baseline


def baseline(trials: int, epochs: int, folder: str) -> None:
    """Plain Ray Tune with Ray's own MLflow callback: what a user writes without Podium."""
    import mlflow
    import numpy as np
    import ray
    import torch
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    def train(config):
        torch.set_num_threads(1)
        torch.manual_seed(config["seed"])
        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).astype(np.float32)
        xtr, xva, ytr, yva = (
            torch.tensor(a) for a in train_test_split(x, y, test_size=0.25, random_state=0)
        )
        model = torch.nn.Sequential(
            torch.nn.Linear(64, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 10),
        )
        if config["optimizer"] == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
        loss_fn = torch.nn.CrossEntropyLoss()
        for epoch in range(config["epochs"]):
            model.train()
            perm = torch.randperm(len(xtr))
            for i in range(0, len(xtr), 64):
                idx = perm[i : i + 64]
                opt.zero_grad()
                loss = loss_fn(model(xtr[idx]), ytr[idx])
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                out = model(xva)
            with tempfile.TemporaryDirectory() as d:
                torch.save(
                    {"model": model.state_dict(), "epoch": epoch}, os.path.join(d, "state.pt")
                )
                tune.report(
                    {
                        "val_accuracy": (out.argmax(1) == yva).float().mean().item(),
                        "val_loss": loss_fn(out, yva).item(),
                        "train_loss": loss.item(),
                    },
                    checkpoint=tune.Checkpoint.from_directory(d),
                )

    uri = f"sqlite:///{os.path.join(folder, 'mlflow.db')}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("baseline")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    configs = [
        {"optimizer": ["sgd", "adam"][i % 2], "lr": LRS[(i // 2) % 4], "seed": i, "epochs": epochs}
        for i in range(trials)
    ]
    tuner = tune.Tuner(
        tune.with_resources(lambda c: train(c["cfg"]), {"cpu": 1}),
        param_space={"cfg": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max"),
        run_config=tune.RunConfig(
            name="baseline",
            storage_path=os.path.join(folder, "ray_results"),
            verbose=0,
            callbacks=[
                MLflowLoggerCallback(
                    tracking_uri=uri, experiment_name="baseline", save_artifact=False
                )
            ],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    results = tuner.fit()
    ray.shutdown()
    assert len(results) == trials and not results.errors


# --------------------------------------------------------------------------- the harness


def timed(cmd: list[str], cwd: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    started = time.perf_counter()
    subprocess.run(
        cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - started


def storage_rounds(a: argparse.Namespace, podium: str) -> dict[str, list[float]]:
    """Podium on the anchor workload, its Tune storage a local folder or ``a.storage``
    (each round under a prefix of its own), alternating."""
    walls: dict[str, list[float]] = {"folder": [], "storage": []}
    for i in range(a.rounds):
        with tempfile.TemporaryDirectory(prefix="overhead-") as folder:
            for side, where in (("folder", None), ("storage", f"{a.storage}/round-{i}")):
                spec = Path(folder, f"{side}.yaml")
                spec.write_text(podium_spec(a.trials, a.epochs, where))
                walls[side].append(timed([podium, "run", str(spec), "--quiet"], folder))
    return walls


def start_s3(uri: str) -> Any:
    """moto's S3 server on loopback (the tests' own helper), its variables in os.environ, the
    bucket made."""
    sys.path.insert(0, str(ROOT))
    from tests.fixtures_services import S3Server

    server = S3Server().start()
    os.environ.update(server.env())
    server.client().create_bucket(Bucket=uri.split("://", 1)[1].split("/", 1)[0])
    return server


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--storage", metavar="URI", help="compare Tune storage there to a folder")
    ap.add_argument("--start-s3", action="store_true", help="run moto's S3 server for --storage")
    ap.add_argument("--baseline", metavar="DIR", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.baseline:
        return baseline(a.trials, a.epochs, a.baseline)
    if a.storage:
        return compare_storage(a)

    podium = str(Path(sys.executable).with_name("podium"))
    walls: dict[str, list[float]] = {"baseline": [], "podium": []}
    for _ in range(a.rounds):
        with tempfile.TemporaryDirectory(prefix="overhead-") as folder:
            spec = Path(folder, "spec.yaml")
            spec.write_text(podium_spec(a.trials, a.epochs))
            walls["baseline"].append(
                timed(
                    [
                        sys.executable,
                        __file__,
                        "--baseline",
                        folder,
                        "--trials",
                        str(a.trials),
                        "--epochs",
                        str(a.epochs),
                    ],
                    folder,
                )
            )
            walls["podium"].append(timed([podium, "run", str(spec), "--quiet"], folder))
    base, pod = statistics.median(walls["baseline"]), statistics.median(walls["podium"])
    print(
        json.dumps(
            {
                "trials": a.trials,
                "epochs": a.epochs,
                "rounds": a.rounds,
                "baseline_wall_s": round(base, 2),
                "podium_wall_s": round(pod, 2),
                "ratio": round(pod / base, 3),
                "baseline_walls": [round(w, 2) for w in walls["baseline"]],
                "podium_walls": [round(w, 2) for w in walls["podium"]],
            }
        )
    )


def compare_storage(a: argparse.Namespace) -> None:
    server = start_s3(a.storage) if a.start_s3 else None
    try:
        walls = storage_rounds(a, str(Path(sys.executable).with_name("podium")))
    finally:
        if server is not None:
            server.cleanup()
    local, remote = statistics.median(walls["folder"]), statistics.median(walls["storage"])
    print(
        json.dumps(
            {
                "trials": a.trials,
                "epochs": a.epochs,
                "rounds": a.rounds,
                "storage": a.storage.split("://", 1)[0] + "://",
                "folder_wall_s": round(local, 2),
                "storage_wall_s": round(remote, 2),
                "ratio": round(remote / local, 3),
                "folder_walls": [round(w, 2) for w in walls["folder"]],
                "storage_walls": [round(w, 2) for w in walls["storage"]],
            }
        )
    )


if __name__ == "__main__":
    main()
