"""Every optimizer in the catalogue on Fashion-MNIST: same epoch budget, tuned learning rate.

    python benchmarks/optimizers.py --epochs 5 --search-subset 10000 --out bench-results/optimizers

For each optimizer: a small learning-rate search (its registry default times each of
``--lr-factors``, ``--search-epochs`` on the first ``--search-subset`` training images, scored
by validation accuracy), then ``--epochs`` epochs on the full training split (55,000 images) with
the winning lr. Reported: final test accuracy, the first epoch at which test accuracy reaches
``--target`` (0.85) and the training wall time until then (evaluation excluded), plus
learning curves (test accuracy by epoch and by wall time) as a PNG. Everything is also logged
to MLflow: a parent run with the table and the PNG, one child run per optimizer with per-epoch
metrics (``step = epoch``).

The model is Podium's default MLP (784-128-64-10). Batch sizes follow each optimizer's batch
mode, as in a sweep: ``gd`` and ``cg`` one full-batch step per epoch (cg: ``max_iter`` line-search
iterations), ``sgd`` batch 1, the rest 64. One torch thread, so timings compare.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tracking import keys  # noqa: E402
from workers.models import build_model  # noqa: E402
from workers.optimizers import OPTIMIZERS, build_optimizer  # noqa: E402
from workers.tasks import TaskData, load_task  # noqa: E402
from workers.trial.loop import batch_size_for, evaluate, shuffled_batches, train_epoch  # noqa: E402

MODEL = {"arch": "mlp", "hidden": [128, 64]}


def train(
    data: TaskData,
    name: str,
    lr: float,
    epochs: int,
    n_train: int | None,
    seed: int,
    x_eval: torch.Tensor,
    y_eval: torch.Tensor,
) -> list[dict[str, float]]:
    """Train one model; per epoch: train loss, eval accuracy and cumulative training seconds."""
    torch.manual_seed(seed)
    entry = OPTIMIZERS.get(name)
    model = build_model(MODEL, data.input_shape, data.num_classes)
    opt = build_optimizer(name, model.parameters(), {"lr": lr})
    x, y = data.x_train[:n_train], data.y_train[:n_train]
    size = batch_size_for(entry.batch_mode, None, len(x))
    gen = torch.Generator().manual_seed(seed)
    curve, elapsed = [], 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        try:
            batches = shuffled_batches(x, y, size, gen)
            result = train_epoch(model, opt, batches, needs_closure=entry.needs_closure)
            loss = result.train_loss
        except Exception as e:  # a diverged lr is a result of the search, not a crash
            print(f"  {name} lr={lr:g}: {type(e).__name__}: {e}", flush=True)
            return curve + [
                {"epoch": epoch, "train_loss": float("nan"), "accuracy": 0.0, "seconds": elapsed}
            ]
        elapsed += time.perf_counter() - start
        _, acc = evaluate(model, x_eval, y_eval)
        curve.append({"epoch": epoch, "train_loss": loss, "accuracy": acc, "seconds": elapsed})
    return curve


def tune_lr(
    data: TaskData, name: str, args: argparse.Namespace
) -> tuple[float, dict[float, float]]:
    """The lr (default x factor) with the best validation accuracy after a short run on a subset."""
    base = OPTIMIZERS.get(name).lr_default
    scores = {}
    for factor in args.lr_factors:
        lr = base * factor
        curve = train(
            data,
            name,
            lr,
            args.search_epochs,
            args.search_subset,
            args.seed,
            data.x_val,
            data.y_val,
        )
        scores[lr] = curve[-1]["accuracy"]
    return max(scores, key=lambda k: scores[k]), scores


def bench_one(data: TaskData, name: str, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    lr, scores = tune_lr(data, name, args)
    search_s = time.perf_counter() - t0
    curve = train(data, name, lr, args.epochs, None, args.seed, data.x_test, data.y_test)
    hit = next((c for c in curve if c["accuracy"] >= args.target), None)
    row = {
        "optimizer": name,
        "lr": lr,
        "lr_search": scores,
        "search_s": round(search_s, 1),
        "test_accuracy": curve[-1]["accuracy"],
        "epochs": len(curve),
        "epochs_to_target": hit["epoch"] if hit else None,
        "seconds_to_target": round(hit["seconds"], 1) if hit else None,
        "train_s": round(curve[-1]["seconds"], 1),
        "curve": curve,
    }
    print(
        f"{name:16s} lr={lr:<8.3g} test={row['test_accuracy']:.4f} "
        f"to{args.target:.0%}: epoch {row['epochs_to_target']} / {row['seconds_to_target']} s "
        f"(train {row['train_s']} s, search {row['search_s']} s)",
        flush=True,
    )
    return row


def plot(rows: list[dict], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    colors = plt.get_cmap("tab20").colors  # 14+ optimizers: the default 10-colour cycle repeats
    for i, r in enumerate(rows):
        epochs = [c["epoch"] for c in r["curve"]]
        acc = [c["accuracy"] for c in r["curve"]]
        style = {
            "color": colors[i % 20],
            "marker": "o" if i % 2 else "s",
            "markersize": 3,
            "linestyle": "-" if i < 10 else "--",
        }
        by_epoch.plot(epochs, acc, label=f"{r['optimizer']} (lr {r['lr']:.3g})", **style)
        by_time.plot([max(c["seconds"], 0.1) for c in r["curve"]], acc, **style)
    for ax, xlabel in ((by_epoch, "epoch"), (by_time, "training wall time (s, log scale)")):
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    by_time.set_xscale("log")  # sgd (batch 1) takes ~100x longer per epoch than the rest
    by_epoch.set_ylabel("test accuracy")
    by_epoch.set_ylim(0.0, 0.95)
    fig.legend(loc="lower center", ncol=5, fontsize=8)
    fig.suptitle("Fashion-MNIST, MLP 784-128-64-10: learning curves per optimizer")
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(rows: list[dict], target: float) -> str:
    t = f"{target:.0%}"
    lines = [
        f"| optimizer | tuned lr | test accuracy | epoch to {t} | train s to {t} | train s total |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['optimizer']}` | {r['lr']:.3g} | {r['test_accuracy']:.4f} | "
            f"{r['epochs_to_target'] or 'not reached'} | "
            f"{r['seconds_to_target'] or '-'} | "
            f"{r['train_s']} |"
        )
    return "\n".join(lines)


def log_mlflow(rows: list[dict], args: argparse.Namespace, png: Path, table: str) -> str:
    import mlflow

    from tracking.store import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri, None, args.out)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("benchmark-optimizers")
    with mlflow.start_run(run_name="optimizers") as parent:
        mlflow.log_params(
            {
                "task": "fashion-mnist",
                "epochs": args.epochs,
                "target": args.target,
                "search_epochs": args.search_epochs,
                "search_subset": args.search_subset,
            }
        )
        mlflow.log_artifact(str(png))
        mlflow.log_text(table, "results.md")
        for r in rows:
            with mlflow.start_run(run_name=r["optimizer"], nested=True):
                mlflow.log_params({"optimizer.name": r["optimizer"], "optimizer.lr": r["lr"]})
                for c in r["curve"]:
                    mlflow.log_metrics(
                        {
                            keys.TEST_ACCURACY: c["accuracy"],
                            keys.TRAIN_LOSS: c["train_loss"],
                            keys.TRAIN_TIME_S: c["seconds"],
                        },
                        step=c["epoch"],
                    )
                if r["epochs_to_target"]:
                    mlflow.log_metrics(
                        {
                            keys.EPOCHS_TO_TARGET: r["epochs_to_target"],
                            keys.TIME_TO_TARGET_S: r["seconds_to_target"],
                        }
                    )
        return f"{uri} run {parent.info.run_id}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--optimizers", nargs="+", default=OPTIMIZERS.names())
    p.add_argument("--epochs", type=int, default=5, help="epoch budget of every optimizer")
    p.add_argument("--target", type=float, default=0.85, help="test accuracy to time")
    p.add_argument(
        "--lr-factors",
        type=float,
        nargs="+",
        default=[0.3, 1.0, 3.0],
        help="lr search: the registry default times each factor",
    )
    p.add_argument("--search-epochs", type=int, default=1)
    p.add_argument(
        "--search-subset", type=int, default=10_000, help="training images in the lr search"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench-results/optimizers"))
    p.add_argument(
        "--tracking-uri", default=None, help="MLflow URI (default: a SQLite store under --out)"
    )
    p.add_argument(
        "--from-results",
        type=Path,
        default=None,
        help="skip training: re-plot and re-log a previous run's results.json",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("PODIUM_BENCH_THREADS", "1")))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_results:
        rows = json.loads(args.from_results.read_text())
    else:
        data = load_task("fashion-mnist", args.seed)
        rows = [bench_one(data, name, args) for name in args.optimizers]
    png = args.out / "optimizers_learning_curves.png"
    plot(rows, args.target, png)
    table = markdown(rows, args.target)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    (args.out / "results.md").write_text(table + "\n")
    where = log_mlflow(rows, args, png, table)
    print(table)
    print(f"\nPNG: {png}\nMLflow: {where}")


if __name__ == "__main__":
    main()
