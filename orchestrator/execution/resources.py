"""What each trial asks Ray for, and the share of a GPU that ``resources.gpu: auto`` measures.

``auto`` trains a few configs of the space for two steps on a GPU node (the largest widths and
batch sizes, each choice) and gives each trial the share its peak memory needs; the decision
(:func:`auto_gpu_share`) is a pure function of the probes' measurements.
"""

from __future__ import annotations

from typing import Any

from orchestrator.errors import RunError
from orchestrator.search.space import grid_variants, iter_leaves, resolve, template_of
from orchestrator.spec import AUTO_GPU, ExperimentSpec, space_kind


def trial_resources(
    spec: ExperimentSpec, template: dict[str, Any] | None = None, verbosity: int = 0
) -> dict[str, float]:
    """What each trial asks Ray for; ``gpu: auto`` becomes a share measured now (Ray running)."""
    r = spec.resources
    gpu = _auto_gpu(spec, template or template_of(spec), verbosity) if r.gpu == AUTO_GPU else r.gpu
    out: dict[str, float] = {"cpu": r.cpu, "gpu": float(gpu)}
    if r.tpu:
        out["TPU"] = r.tpu
    if r.memory_mb:
        out["memory"] = r.memory_mb * 1024 * 1024
    return out


AUTO_PROBES = 8  # configs resources.gpu: auto measures (the space's first choice/grid combinations)
PROBE_GPU = 0.01  # what a probe asks of a GPU: any GPU node's card will do
PROBE_TIMEOUT_S = 300.0


def _auto_gpu(spec: ExperimentSpec, template: dict[str, Any], verbosity: int) -> float:
    """The share of a GPU per trial for ``resources.gpu: auto``: a few configs of the space are
    trained for two steps on a GPU node, where the card is (:func:`measure_trial_memory`), and
    :func:`auto_gpu_share` decides from their peaks.

    Raises:
        RunError: the cluster has no GPU, or the probes did not finish in time.
    """
    import ray

    from workers.trial.memory import measure_trial_memory

    if not ray.cluster_resources().get("GPU"):
        raise RunError(
            "resources.gpu: auto needs a GPU node, and this Ray cluster has none; "
            "set resources.gpu to a number (0: CPU only)"
        )
    probe = ray.remote(measure_trial_memory).options(
        num_gpus=PROBE_GPU, num_cpus=spec.resources.cpu
    )
    refs = [probe.remote(trial) for trial in probe_trials(template)]
    done, pending = ray.wait(refs, num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    for ref in pending:
        ray.cancel(ref, force=True)
    if pending:
        raise RunError(
            f"resources.gpu: auto: {len(pending)} of {len(refs)} memory probes did not finish "
            f"in {PROBE_TIMEOUT_S:g} s (is a GPU free?); set resources.gpu to a number"
        )
    share, reason = auto_gpu_share(ray.get(done))
    if verbosity:
        print(f"resources.gpu: auto -> {share:g} GPU per trial: {reason}", flush=True)
    return share


def probe_trials(template: dict[str, Any], limit: int = AUTO_PROBES) -> list[dict[str, Any]]:
    """Concrete trials that bound a space's memory: each choice/grid combination (the first
    ``limit``), every continuous or integer range at its upper bound (widths, batch sizes).

    Example:
        >>> t = {"model": {"hidden": {"choice": [[8], [64]]}}, "training": {"batch_size":
        ...      {"randint": [16, 256]}}}
        >>> [(p["model"]["hidden"], p["training"]["batch_size"]) for p in probe_trials(t)]
        [([8], 256), ([64], 256)]
    """

    upper = {
        key: space[space_kind(space)][1]
        for key, space in iter_leaves(template, "")
        if space_kind(space) in ("uniform", "loguniform", "randint")
    }
    variants = grid_variants(template, "", grid_choices=True)[:limit]
    return [resolve(template, {**upper, **variant}) for variant in variants]


def auto_gpu_share(memories: list[Any], margin: float | None = None) -> tuple[float, str]:
    """The share of a GPU for the largest of the probed trials (``TrialMemory`` each).

    Where no probe ran on a real GPU (a node whose torch has no CUDA), the card's size is not
    known: one trial per GPU, as a spec's ``gpu: 1`` would ask, and the reason says so.
    """
    from workers.trial.device import DEFAULT_MARGIN, gpu_share

    largest = max(memories, key=lambda m: m.peak_bytes)
    cards = [m.card_bytes for m in memories if m.card_bytes]
    if not cards:
        return 1.0, (
            f"peak {largest.peak_bytes / 1024**3:.2f} GiB per trial {largest.how}, but no GPU "
            "could be measured (no CUDA where the probe ran), so one trial per GPU"
        )
    share, reason = gpu_share(largest.peak_bytes, min(cards), margin or DEFAULT_MARGIN)
    return share, f"{reason} ({largest.how})"
