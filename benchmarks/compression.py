"""Compression on Fashion-MNIST: the fp32 baseline against each recipe and their combinations.

    python benchmarks/compression.py --epochs 8 --out bench-results/compression

One baseline MLP (784-512-256-10, Adam, ``--epochs`` epochs on the 55,000 training images) is
trained once; every recipe in ``RECIPES`` then runs on it through ``workers.recipes.run_recipe``,
the same code a sweep's trial runs, so each row is measured the way a trial is: exported to ONNX
(int8 where quantized), run by ONNX Runtime on CPU with ``--threads`` intra-op threads, batch-1
p50 latency over ``--latency-iters`` timed calls after a warm-up, batch-64 throughput, accuracy
on the 10,000 official test images.

Ratios are against the same trial's fp32 model measured the same way, two baselines:
``eager``  the eager PyTorch fp32 model (what a user runs without Podium) and ``onnx`` its fp32
ONNX export under ONNX Runtime (so the runtime's own gain is not counted as compression).
``size_ratio`` compares file bytes with the fp32 ONNX export (the fp32 state dict is the same
size within 5%).

``qat`` rows fine-tune 2 epochs with static int8's rounding simulated, then quantize statically
with the learned ranges; their control is the same 2 epochs in fp32 (same lr) then static int8.

The headline ("best") is chosen by Podium's own selection policy (``tracking.selection``), as a
sweep would choose: constraints ``size_ratio >= 5`` and ``accuracy_drop_pts <= --max-drop``,
objective ``speedup_b1`` (max), ties by recipe name; with no recipe meeting the constraints,
``best`` is null and the JSON says why. The script prints the table (markdown), then one JSON
line: ``{"best": ..., "size_ratio": ..., "speedup_b1": ..., "accuracy_drop_pts": ...}``.
Target: size_ratio >= 5, speedup_b1 >= 3, accuracy_drop_pts <= 0.5.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tracking import keys  # noqa: E402
from workers.models import build_model  # noqa: E402
from workers.recipes import run_recipe  # noqa: E402
from workers.recipes._measure import cpu_model, torch_threads  # noqa: E402
from workers.recipes._train import accuracy, make_optimizer, train_epoch  # noqa: E402
from workers.tasks import load_task  # noqa: E402

SECTION = {"arch": "mlp", "hidden": [512, 256], "batch_norm": False, "dropout": 0.0}
STRUCT = {"step": "prune", "method": "structured", "finetune_epochs": 2}
STATIC = {"step": "quantize", "mode": "static", "calibration_batches": 16}
QAT = {**STATIC, "mode": "qat", "qat_epochs": 2}  # Adam lr 1e-4, batch 128 (the defaults)
RECIPES: dict[str, list[dict]] = {
    "export fp32 (onnx)": [{"step": "export"}],
    # Control: 0% structured pruning = the baseline plus the same 2 fine-tuning epochs the pruned
    # recipes get, so extra training is not mistaken for a benefit of compression.
    "control: +2 fine-tune epochs, no pruning": [{**STRUCT, "sparsity": 0.0}],
    "prune l1_unstructured 80%": [
        {"step": "prune", "method": "l1_unstructured", "sparsity": 0.8, "finetune_epochs": 2}
    ],
    "prune structured 50%": [{**STRUCT, "sparsity": 0.5}],
    "distill -> [256, 128]": [
        {"step": "distill", "hidden": [256, 128], "epochs": 6, "temperature": 2.0, "alpha": 0.5}
    ],
    "quantize dynamic int8": [{"step": "quantize", "mode": "dynamic"}],
    "quantize static int8": [STATIC],
    "quantize qat int8": [QAT],
    # Control for QAT: the same 2 epochs at the same lr in fp32, then static int8, so the extra
    # training is not mistaken for a benefit of quantization-aware training.
    "control: +2 fine-tune epochs (lr 1e-4) + static int8": [
        {**STRUCT, "sparsity": 0.0, "lr": 1e-4},
        STATIC,
    ],
    "structured 50% + dynamic int8": [{**STRUCT, "sparsity": 0.5}, {"step": "quantize"}],
    "structured 50% + static int8": [{**STRUCT, "sparsity": 0.5}, STATIC],
    "structured 50% + qat int8": [{**STRUCT, "sparsity": 0.5}, QAT],
    "structured 75% gradual + dynamic int8": [
        {**STRUCT, "sparsity": 0.75, "schedule": "gradual", "prune_epochs": 3},
        {"step": "quantize"},
    ],
    "structured 75% gradual + static int8": [
        {**STRUCT, "sparsity": 0.75, "schedule": "gradual", "prune_epochs": 3},
        STATIC,
    ],
}


def train_baseline(data, epochs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(SECTION, data.input_shape, data.num_classes)
    opt, gen = make_optimizer(model, 1e-3), torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        loss = train_epoch(model, data, opt=opt, batch_size=128, generator=gen)
        print(f"baseline epoch {epoch}: loss {loss:.4f}", file=sys.stderr, flush=True)
    return model.eval()


def row(name: str, m: dict[str, float]) -> dict[str, float | str]:
    base = lambda kind, k: m[keys.recipe_metric(f"baseline_{kind}", k)]  # noqa: E731
    return {
        "recipe": name,
        "test_accuracy": m[keys.TEST_ACCURACY],
        "accuracy_drop_pts": m[keys.ACCURACY_DROP_PTS],
        "model_size_bytes": m[keys.MODEL_SIZE_BYTES],
        "nonzero_params": m[keys.NONZERO_PARAMS],
        "latency_ms_p50": m[keys.LATENCY_MS_P50],
        "throughput_sps": m[keys.THROUGHPUT_SPS],
        "size_ratio": m[keys.SIZE_RATIO],
        "speedup_b1": m[keys.SPEEDUP],
        "speedup_b1_vs_onnx": m[keys.SPEEDUP_VS_ONNX],
        "throughput_ratio": m[keys.THROUGHPUT_RATIO],
        "eager_p50": base("eager", keys.LATENCY_MS_P50),
        "eager_sps": base("eager", keys.THROUGHPUT_SPS),
        "eager_acc": base("eager", keys.TEST_ACCURACY),
        "eager_bytes": base("eager", keys.MODEL_SIZE_BYTES),
        "onnx_bytes": base("onnx", keys.MODEL_SIZE_BYTES),
        "onnx_p50": base("onnx", keys.LATENCY_MS_P50),
        "onnx_sps": base("onnx", keys.THROUGHPUT_SPS),
    }


def table(rows: list[dict]) -> str:
    first = rows[0]
    lines = [
        "| recipe | test acc | Δ pts | size (KB) | size ratio | b1 p50 (ms) | speedup b1 "
        "(vs eager / vs onnx) | b64 samples/s | throughput ratio |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| fp32 eager (baseline) | {first['eager_acc']:.4f} | 0 | "
        f"{first['eager_bytes'] / 1024:.0f} (state dict) | 1.00 | {first['eager_p50']:.4f} | "
        f"1.00 / – | {first['eager_sps']:,.0f} | 1.00 |",
        f"| fp32 onnx (baseline) | {first['eager_acc']:.4f} | 0 | "
        f"{first['onnx_bytes'] / 1024:.0f} | 1.00 | {first['onnx_p50']:.4f} | "
        f"{first['eager_p50'] / first['onnx_p50']:.2f} / 1.00 | {first['onnx_sps']:,.0f} | "
        f"{first['onnx_sps'] / first['eager_sps']:.2f} |",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['test_accuracy']:.4f} | {-r['accuracy_drop_pts']:+.2f} | "
            f"{r['model_size_bytes'] / 1024:.0f} | {r['size_ratio']:.2f} | "
            f"{r['latency_ms_p50']:.4f} | {r['speedup_b1']:.2f} / {r['speedup_b1_vs_onnx']:.2f} | "
            f"{r['throughput_sps']:,.0f} | {r['throughput_ratio']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=8, help="baseline training epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for measurement")
    ap.add_argument("--latency-iters", type=int, default=1000)
    ap.add_argument("--max-drop", type=float, default=0.5, help="accuracy points a best may lose")
    ap.add_argument("--only", nargs="*", help="run only these recipe names")
    ap.add_argument("--out", default="bench-results/compression")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_task("fashion-mnist", args.seed)
    with torch_threads(args.threads):
        started = time.perf_counter()
        model = train_baseline(data, args.epochs, args.seed)
        print(
            f"baseline: test accuracy {accuracy(model, data.x_test, data.y_test):.4f} in "
            f"{time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        rows = []
        for name, steps in RECIPES.items():
            if args.only and name not in args.only:
                continue
            ctx = {
                "workdir": out / name.replace(" ", "_").replace("%", "pct"),
                "model_section": SECTION,
                "seed": args.seed,
                "threads": args.threads,
                "latency_iters": args.latency_iters,
            }
            t = time.perf_counter()
            result = run_recipe(steps, model, data, ctx)
            rows.append(row(name, result.metrics))
            (out / "results.json").write_text(json.dumps(rows, indent=2))  # partial results too
            print(f"{name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    print(
        f"CPU: {cpu_model()}, {args.threads} intra-op thread(s); baseline {SECTION['hidden']} "
        f"MLP, {args.epochs} epochs\n"
    )
    print(table(rows) + "\n")
    decision = headline(rows, args.max_drop)
    if decision.winner is None:
        print(json.dumps({"best": None, "why": list(decision.reasons)}))
        return
    best = next(r for r in rows if r["recipe"] == decision.winner.trial_id)
    print(
        json.dumps(
            {
                "best": best["recipe"],
                "size_ratio": round(best["size_ratio"], 2),
                "speedup_b1": round(best["speedup_b1"], 2),
                "speedup_b1_vs_onnx_fp32": round(best["speedup_b1_vs_onnx"], 2),
                "accuracy_drop_pts": round(best["accuracy_drop_pts"], 2),
                "why": list(decision.reasons),
            }
        )
    )


def headline(rows: list[dict], max_drop: float) -> Any:
    """The headline recipe, chosen by Podium's own policy (a pure decision)."""
    from tracking.selection import Candidate, Objective, Policy, select_best

    policy = Policy(
        objectives=(Objective("speedup_b1", "max"),),
        constraints=("size_ratio >= 5", f"accuracy_drop_pts <= {max_drop:g}"),
    )
    numeric = [
        Candidate(r["recipe"], {k: float(v) for k, v in r.items() if isinstance(v, (int, float))})
        for r in rows
    ]
    return select_best(numeric, policy)


if __name__ == "__main__":
    main()
