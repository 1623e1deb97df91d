"""Measure what a user gets in production: the exported file's size, batch-1 latency, batch-64
throughput and accuracy, all on CPU with a fixed number of intra-op threads.

The same protocol times the eager fp32 torch model, so ``speedup`` compares like with like:
warm-up runs first, then ``iters`` timed single-example calls (p50/p95 in milliseconds), then
timed batch-64 calls for throughput (samples per second).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tracking import keys, pipeline
from workers.errors import WorkerError

WARMUP = 20
THROUGHPUT_BATCH = 64


def onnx_session(path: Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and full graph optimisation."""
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise WorkerError(
            "onnxruntime is needed to measure exported models: pip install onnxruntime"
        ) from e
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def model_session(path: Path, threads: int = 1) -> Any:
    """A session of the model alone in a file that may be the whole pipeline
    (``tracking.pipeline.model_part``): model inputs in, logits out."""
    import onnx

    model = pipeline.model_part(onnx.load(str(path)))
    return pipeline.session(model.SerializeToString(), threads)


def onnx_predict(session: Any, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Logits for ``x`` in its own dtype (float32 features or images, int64 token ids), computed
    in batches."""
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs)


def measure_onnx(
    path: Path,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    threads: int = 1,
    iters: int = 300,
    score: tuple[str, Callable[[torch.Tensor], float]] | None = None,
) -> dict[str, float]:
    """Size, latency, throughput and test score of an ONNX file run by ONNX Runtime.

    The inputs keep their dtype: the file was exported with the task's own (``_export``).
    ``score`` is ``(metric name, outputs -> value)``, the task's primary test metric; without
    it, ``test_accuracy`` of the outputs' argmax.
    """
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    x = np.ascontiguousarray(x_test.detach().cpu().numpy())
    outputs = onnx_predict(session, x)
    if score is None:
        value = float((outputs.argmax(1) == y_test.numpy()).mean())
        score = (keys.TEST_ACCURACY, lambda _: value)
    out = {
        keys.MODEL_SIZE_BYTES: float(path.stat().st_size),
        score[0]: score[1](torch.from_numpy(outputs).float()),
    }
    out.update(_timings(lambda xb: session.run(None, {name: xb}), x, iters))
    return out


def measure_pipeline(
    path: Path,
    x_raw: Any,
    answer: dict[str, Any],
    score: tuple[str, Callable[[torch.Tensor], float]],
    threads: int = 1,
    iters: int = 300,
) -> dict[str, float]:
    """Size, latency, throughput and test score of the whole registered graph, from raw inputs
    (``tracking.pipeline``): what a user's request costs, preprocessing and answer included.
    ``score`` reads the answers as ``tracking.pipeline.scores`` gives them."""
    session = pipeline.session(path, threads)
    name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    x = pipeline.as_array(x_raw)
    answers: dict[str, list[Any]] = {n: [] for n in names}
    for i in range(0, len(x), 1024):
        for n, value in zip(names, session.run(None, {name: x[i : i + 1024]}), strict=True):
            answers[n].extend(list(value))
    out = {
        keys.MODEL_SIZE_BYTES: float(path.stat().st_size),
        score[0]: score[1](torch.from_numpy(pipeline.scores(answers, answer))),
    }
    out.update(_timings(lambda xb: session.run(None, {name: xb}), x, iters))
    return out


def measure_eager(
    model: nn.Module, x_test: torch.Tensor, threads: int = 1, iters: int = 300
) -> dict[str, float]:
    """Batch-1 latency and batch-64 throughput of the eager fp32 torch model on CPU."""
    model = model.cpu().eval()
    with torch_threads(threads), torch.inference_mode():
        return _timings(model, x_test, iters)


def _timings(run: Callable[[Any], Any], x: Any, iters: int) -> dict[str, float]:
    one, many = x[:1], _batch_of(x, THROUGHPUT_BATCH)
    for _ in range(WARMUP):
        run(one)
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        run(one)
        samples.append((time.perf_counter() - start) * 1e3)
    for _ in range(max(WARMUP // 4, 2)):
        run(many)
    rounds = max(iters // 10, 5)
    start = time.perf_counter()
    for _ in range(rounds):
        run(many)
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(samples, n=100, method="inclusive")  # q[49]=p50, q[94]=p95
    return {
        keys.LATENCY_MS_P50: float(q[49]),
        keys.LATENCY_MS_P95: float(q[94]),
        keys.THROUGHPUT_SPS: THROUGHPUT_BATCH * rounds / elapsed,
    }


def _batch_of(x: Any, n: int) -> Any:
    """The first ``n`` rows of ``x``, repeated when the split is smaller than ``n``."""
    if len(x) >= n:
        return x[:n]
    reps = -(-n // len(x))
    tiled = np.concatenate([x] * reps) if isinstance(x, np.ndarray) else torch.cat([x] * reps)
    return tiled[:n]


@contextmanager
def torch_threads(n: int):  # noqa: ANN201
    """Temporarily run torch ops on ``n`` intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def param_counts(model: nn.Module) -> dict[str, float]:
    """``param_count`` (all parameters) and ``nonzero_params`` (those not exactly zero)."""
    params = list(model.parameters())
    return {
        keys.PARAM_COUNT: float(sum(p.numel() for p in params)),
        keys.NONZERO_PARAMS: float(sum(int(torch.count_nonzero(p)) for p in params)),
    }


def cpu_model() -> str:
    """The CPU's model name (recorded with every measurement; latency means little without it)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_count() -> int:
    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
