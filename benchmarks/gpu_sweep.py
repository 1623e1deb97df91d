"""GPU-vs-CPU trial throughput: the same short sweep of Podium trials on each device.

    python benchmarks/gpu_sweep.py --device cuda --trials 6 --epochs 2          # on a GPU host
    python benchmarks/gpu_sweep.py --device cpu --trials 2 --epochs 1 --threads 16   # its CPU twin
    bash benchmarks/gpu_sweep.sh                                               # both, in order

Each trial is what a Podium worker runs for one config — data, model, optimizer from the
registries, ``workers.loop.train_epoch`` per epoch, evaluation on the validation split — on the
device ``workers.device.pick_device`` chooses for the assigned accelerator. Ray and MLflow are
left out on purpose: this measures the device, ``benchmarks/scale.py`` the orchestration. It
needs only torch, numpy and scikit-learn, so it runs on a GPU host that has no Ray.

Prints one line per trial and a JSON summary (``trials_per_hour``, ``samples_per_s``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from workers.device import pick_device  # noqa: E402
from workers.loop import evaluate, shuffled_batches, train_epoch  # noqa: E402
from workers.models import build_model  # noqa: E402
from workers.optimizers import build_optimizer  # noqa: E402
from workers.tasks import load_task  # noqa: E402

# A small grid of the kind a sweep explores; trial i takes CONFIGS[i % len(CONFIGS)].
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


def run_trial(i: int, data, device, epochs: int, batch_size: int, limit: int | None = None) -> dict:
    cfg = CONFIGS[i % len(CONFIGS)]
    torch.manual_seed(i)
    started = time.perf_counter()
    model = build_model(cfg["model"], data.input_shape, data.num_classes).to(device.torch_device)
    opt = build_optimizer(
        cfg["optimizer"]["name"],
        model.parameters(),
        {k: v for k, v in cfg["optimizer"].items() if k != "name"},
    )
    to = device.torch_device
    x, y = data.x_train[:limit].to(to), data.y_train[:limit].to(to)
    xv, yv = data.x_val.to(to), data.y_val.to(to)
    gen = torch.Generator().manual_seed(i)
    result = None
    # What the Podium trainable does: only the forward pass under bf16 autocast, loss, backward
    # and optimizer step outside it.
    with device.mixed_precision(model):
        for _ in range(epochs):
            result = train_epoch(model, opt, shuffled_batches(x, y, batch_size, gen))
    _, val_acc = evaluate(model, xv, yv)
    if device.kind == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {
        "trial": i,
        "arch": cfg["model"]["arch"],
        "seconds": seconds,
        "train_loss": result.train_loss if result else None,
        "val_accuracy": val_acc,
        "samples_per_s": epochs * len(x) / seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--task", default="fashion-mnist")
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # What Ray would assign a trial that asked for one GPU (or none).
    device = pick_device(
        amp=args.amp,
        cudnn_benchmark=True,
        assigned={"GPU": 1.0} if args.device == "cuda" else {"CPU": 1.0},
    )
    if args.device == "cuda" and device.kind != "cuda":
        sys.exit(f"asked for cuda but got {device.kind}: {device.reason}")
    data = load_task(args.task, 0)
    # Untimed warm-up, a few batches of each config: CUDA context creation and cuDNN autotuning
    # are per process and shape, paid once by a reused Ray worker, not per trial.
    for i in range(len(CONFIGS)):
        run_trial(i, data, device, 1, args.batch_size, limit=8 * args.batch_size)
    results = []
    t0 = time.perf_counter()
    for i in range(args.trials):
        r = run_trial(i, data, device, args.epochs, args.batch_size)
        results.append(r)
        print(
            f"  trial {i} {r['arch']}: {r['seconds']:.2f}s, {r['samples_per_s']:.0f} samples/s, "
            f"val_accuracy {r['val_accuracy']:.3f}",
            flush=True,
        )
    wall = time.perf_counter() - t0
    summary = {
        "device": device.label,
        "reason": device.reason,
        "amp": device.amp,
        "task": args.task,
        "trials": args.trials,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "wall_s": round(wall, 2),
        "trials_per_hour": round(3600 * args.trials / wall, 1),
        "samples_per_s": round(sum(r["samples_per_s"] for r in results) / len(results)),
        "mean_trial_s": round(wall / args.trials, 2),
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
