"""One trial, as a recipe: set up data, model, optimizer; train with a checkpoint and a report every
epoch; at the end evaluate on the test split, measure, compress, report the final metrics.

This is the one module that talks to Ray Tune (``tune.report`` / ``tune.get_checkpoint``). It gets
the trial's *concrete* spec (no search spaces left) from the orchestrator. Workers never write to
MLflow: the driver logs what the trial reports.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tracking import keys
from tracking.pipeline import ANSWER_KEY
from workers import inputs
from workers.adversarial import make_adversary, robust_accuracy
from workers.device import move, pick_device, resident_task, task_bytes, task_on
from workers.errors import TrialDivergedError
from workers.loop import batch_size_for, eval_batches, evaluate_split, train_batches, train_epoch
from workers.measure import nonzero_params, param_count, state_dict_bytes
from workers.models import build_model
from workers.optimizers import OPTIMIZERS, build_optimizer
from workers.optimizers.schedules import build_schedule
from workers.recipes import run_recipe
from workers.tasks import TaskData, load_task

# A checkpoint is one file, state.pt, so that object storage writes one object per checkpoint
# (which appears whole or not at all). It is weights-only (tensors and plain containers, loadable
# with weights_only=True): the model, the optimizer, the schedule, the RNG, a few of the task's
# inputs (``example``), and as JSON (``podium``) the manifest: the size of every other file in
# the checkpoint (a finished trial's artifacts, see checkpoint_problem), the trial's facts
# (``trial``: trial_meta), its per-epoch history and, in its last checkpoint, its final report.
# A folder can hold a copy cut short: state.pt is a zip file whose directory comes last, so a
# short one does not open.
STATE_FILE = "state.pt"
MANIFEST_KEY = "podium"
# Checkpoints of the layouts before this one (the manifest as manifest.json, the facts in files
# of their own) are no longer read: they hold neither the raw example nor the front that a
# champion is now composed from, so they could not be promoted as a whole pipeline anyway.
FRONT_KEY = "front_onnx"  # state.pt's copy of the task's preprocessing as ONNX
ROBUST_VAL_SAMPLES = 1000  # val examples attacked each epoch (the test split is attacked whole)
ARTIFACTS_DIR = "artifacts"  # files a recipe produced (e.g. model.onnx), logged by the driver


@dataclass
class TrialContext:
    """What a trial knows besides its spec: where it runs and what the driver prepared.

    ``extras`` carries driver-prepared inputs for plug-ins (e.g. a registry teacher's local path).
    """

    threads: int = 1
    extras: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None
    device: torch.device = torch.device("cpu")


@dataclass
class _State:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    generator: torch.Generator
    epoch: int = 0
    train_time_s: float = 0.0
    final: dict[str, Any] | None = None  # the finished trial's last report, from its checkpoint
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch metrics so far
    replay: list[dict[str, float]] | None = None  # restored history, sent with the next report
    exploited_from: str | None = None  # "<trial>@<epoch>" of a foreign checkpoint, reported once
    # training.keep: best: the epoch with the best search.metric so far and a CPU copy of its
    # weights (None while the model's own weights are that epoch's).
    best_epoch: int = 0
    best_scores: dict[str, float] = field(default_factory=dict)  # that epoch's report
    best_weights: dict[str, torch.Tensor] | None = None


def run_trial(trial: dict[str, Any], ctx: TrialContext) -> None:
    """Train, evaluate and report one trial under Ray Tune.

    Args:
        trial: the concrete spec sections ``task``, ``model``, ``optimizer``, ``training``,
            ``recipe`` (see ``orchestrator.search.space.resolve``).
        ctx: threads and driver-prepared inputs.

    Raises:
        TrialDivergedError: the loss became NaN/inf; Tune records the trial as errored.
    """
    from ray import tune

    torch.set_num_threads(max(1, ctx.threads))
    training = trial["training"]
    # The device follows what Ray assigned this trial (a GPU, a TPU, or neither).
    device = pick_device(
        amp=bool(training.get("amp", False)),
        cudnn_benchmark=bool(training.get("cudnn_benchmark", False)),
    )
    ctx.device = device.torch_device
    data = _task_data(trial, device)
    state = _setup(trial, data, device.torch_device)
    trial_id = tune.get_context().get_trial_id()
    _restore(state, tune.get_checkpoint(), trial_id)
    where = {keys.NODE: device.node, keys.DEVICE: device.label, keys.DEVICE_REASON: device.reason}
    entry = OPTIMIZERS.get(trial["optimizer"]["name"])
    batch_size = batch_size_for(entry.batch_mode, training["batch_size"], data.split_size("train"))
    adversary = make_adversary(training.get("adversarial"))
    max_epochs = training["max_epochs"]
    metric, patience = ctx.extras.get("search_metric"), training.get("patience")
    ended = state.epoch >= max_epochs or out_of_patience(state.history, metric, patience)
    if state.final is not None and ended:
        # Finished before a driver restart, but Tune's state was saved before the last report:
        # report it again (no new checkpoint, no training) so the trial ends completed.
        tune.report(_with_replay(state, state.final))
        return
    while state.epoch < max_epochs:
        _remember_best(state)
        started = time.perf_counter()
        try:
            with device.mixed_precision(state.model):
                result = train_epoch(
                    state.model,
                    state.optimizer,
                    train_batches(data, batch_size, state.generator, device.torch_device),
                    loss_fn=training_loss(data, training),
                    needs_closure=entry.needs_closure,
                    l1_penalty=training.get("l1_penalty", 0.0),
                    schedule=state.schedule,
                    adversary=adversary,
                    grad_clip=training.get("grad_clip"),
                    accumulate=training.get("accumulate", 1),
                )
        except TrialDivergedError as e:
            # End the trial, marked failed with the reason. Raising would make Tune retry it
            # (max_failures), and a diverging config diverges again.
            failed = {
                keys.EPOCH: state.epoch + 1,
                keys.TRAIN_LOSS: float("nan"),
                **_scores(state.model, data, "val", device.torch_device),
                keys.FAILED: str(e),
                **where,
            }
            tune.report(_with_replay(state, failed))
            return
        val = _scores(state.model, data, "val", device.torch_device)
        state.train_time_s += time.perf_counter() - started
        state.epoch += 1
        scores: dict[str, float] = {
            keys.EPOCH: state.epoch,
            keys.TRAIN_LOSS: result.train_loss,
            **val,
            **hparams_of(trial, ctx.extras.get("tracked_hparams", ())),
        }
        # Per epoch on a fixed slice of val: PGD on a whole 5k split costs minutes per epoch.
        n = ROBUST_VAL_SAMPLES
        adversarial = training.get("adversarial")  # validated: in-memory classification only
        if adversarial is not None:
            x, y = move(device, data.x_val[:n], data.y_val[:n])  # host data that did not fit
            robust = robust_accuracy(state.model, x, y, adversarial)
            if robust is not None:
                scores[keys.ROBUST_ACCURACY] = robust
        state.history.append(scores)
        _track_best(state, keeps_best(training, metric))
        metrics = _with_replay(state, {**scores, **where})
        if state.exploited_from is not None:
            metrics[keys.EXPLOITED_FROM], state.exploited_from = state.exploited_from, None
        last = state.epoch == max_epochs or out_of_patience(state.history, metric, patience)
        with tempfile.TemporaryDirectory(prefix="podium-ckpt-") as folder:
            if last:
                metrics.update(_kept(state))  # the best epoch's weights and val metrics
                metrics.update(_finish(trial, data, state, ctx, Path(folder)))
            if last or state.epoch % training.get("checkpoint_every", 1) == 0:
                _save(state, trial, data, Path(folder), trial_id, final=metrics if last else None)
                _report_checkpoint(metrics, folder)
            else:
                tune.report(metrics)
        if last:
            return  # the last epoch, or training.patience ran out


def keeps_best(training: dict[str, Any], metric: tuple[str, str] | None) -> tuple[str, str] | None:
    """``(metric, mode)`` a trial keeps its best epoch on (``training.keep: best``, the default,
    judged on ``search.metric`` where it is a per-epoch ``val_`` metric); None: the last epoch."""
    if training.get("keep", "best") != "best" or metric is None:
        return None
    return metric if str(metric[0]).startswith("val_") else None


def _track_best(state: _State, keep: tuple[str, str] | None) -> None:
    """After an epoch: a better ``keep`` metric makes it the best epoch (its weights copied once
    a later epoch changes them: each improvement costs one copy of the weights)."""
    if keep is None:
        return
    name, mode = keep
    now = state.history[-1].get(name)
    if now is None or now != now:  # not reported, or NaN
        return
    before = state.best_scores.get(name) if state.best_epoch else None
    if before is None or (now > before if mode == "max" else now < before):
        state.best_epoch, state.best_weights = state.epoch, None
        state.best_scores = dict(state.history[-1])


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _remember_best(state: _State) -> None:
    """Before an epoch trains: copy the model's weights if they are the best epoch's."""
    if state.best_epoch and state.best_epoch == state.epoch and state.best_weights is None:
        state.best_weights = {
            k: v.detach().to("cpu", copy=True) for k, v in state.model.state_dict().items()
        }


def _kept(state: _State) -> dict[str, Any]:
    """At the end: the best epoch's weights back in the model and its val metrics as the trial's
    (what is tested, measured, registered and selected); nothing with ``keep: last``."""
    if not state.best_epoch:
        return {}
    if state.best_epoch != state.epoch:
        assert state.best_weights is not None
        state.model.load_state_dict(state.best_weights)
        state.best_weights = None  # the model's weights are the best epoch's now
    best = state.best_scores
    kept = {k: v for k, v in best.items() if k.startswith("val_") or k == keys.ROBUST_ACCURACY}
    return {**kept, keys.KEPT_EPOCH: state.best_epoch}


def training_loss(data: TaskData, training: dict[str, Any]) -> Any:
    """The task's loss, with ``training.label_smoothing`` for a classifier's cross-entropy
    (validated: classification tasks only; a task's own loss is left as it is)."""
    smoothing = float(training.get("label_smoothing") or 0.0)
    if smoothing and data.loss is None and data.kind == "classification":
        return functools.partial(torch.nn.functional.cross_entropy, label_smoothing=smoothing)
    return data.loss_fn()


def out_of_patience(
    history: list[dict[str, Any]], metric: tuple[str, str] | None, patience: int | None
) -> bool:
    """Whether the last ``patience`` epochs brought no better ``metric`` (name, mode) than the
    best before them: the trial ends there (``training.patience``), tested and checkpointed as
    at its last epoch.

    Example:
        >>> h = [{"val_loss": v} for v in (0.9, 0.5, 0.6, 0.55)]
        >>> out_of_patience(h, ("val_loss", "min"), 2), out_of_patience(h, ("val_loss", "min"), 3)
        (True, False)
    """
    if not patience or metric is None or len(history) <= patience:
        return False
    name, mode = metric
    values = [float(h[name]) for h in history if name in h]
    if len(values) <= patience:
        return False
    best = max if mode == "max" else min
    before, recent = values[:-patience], values[-patience:]
    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    return not better(best(recent), best(before))


def _task_data(trial: dict[str, Any], device: Any) -> TaskData:
    """The trial's task on its device, shared with the trials this process ran before on the
    same task and split seed (a reused actor): loaded and moved once, not per trial."""
    task, seed = trial["task"], trial["training"]["seed"]
    key = (json.dumps(task, sort_keys=True, default=str), seed)
    return resident_task(device, key, lambda: load_task(task, seed))


@dataclass(frozen=True)
class TrialMemory:
    """One trial's memory, as ``resources.gpu: auto`` needs it (:func:`measure_trial_memory`).

    Attributes:
        peak_bytes: the trial's peak: its task's data, model, gradients, optimizer state and one
            training batch's activations.
        card_bytes: total memory of the GPU it was measured on; None where there is none.
        how: ``measured on <card>`` or ``estimated on the CPU`` (see :func:`estimate_peak`).
    """

    peak_bytes: int
    card_bytes: int | None
    how: str


PROBE_STEPS = 2  # the first step creates the optimizer's state; the second runs with it


def measure_trial_memory(trial: dict[str, Any]) -> TrialMemory:
    """A trial's peak memory: measured on this process's GPU when it has one (a few real
    training steps, the allocator's peak), else estimated on the CPU.

    Args:
        trial: a concrete trial spec, as :func:`run_trial` gets it.

    Returns:
        The :class:`TrialMemory`.
    """
    training, entry = trial["training"], OPTIMIZERS.get(trial["optimizer"]["name"])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    data = task_on(device, load_task(trial["task"], training["seed"]))
    state = _setup(trial, data, device)
    batch_size = batch_size_for(entry.batch_mode, training["batch_size"], data.split_size("train"))
    first = next(iter(train_batches(data, batch_size, state.generator, device)))
    activations = _activation_bytes(state.model, first[0])
    # In float32 even where the trial will use bf16 autocast: the larger of the two, to be safe.
    for _ in range(PROBE_STEPS):
        train_epoch(
            state.model,
            state.optimizer,
            [first],
            loss_fn=data.loss_fn(),
            needs_closure=entry.needs_closure,
        )
    if cuda:
        props = torch.cuda.get_device_properties(device)
        peak = torch.cuda.max_memory_allocated(device)
        return TrialMemory(peak, props.total_memory, f"measured on {props.name}")
    params = _tensor_bytes(state.model.parameters())
    optimizer = _tensor_bytes(_optimizer_tensors(state.optimizer))
    peak = estimate_peak(task_bytes(data), params, optimizer, activations)
    return TrialMemory(peak, None, "estimated on the CPU")


def estimate_peak(
    data_bytes: int, param_bytes: int, optimizer_bytes: int, activation_bytes: int
) -> int:
    """A trial's peak GPU memory from what a CPU can count: the data, the weights and as much
    again for their gradients, the optimizer's state, and a batch's activations twice (kept for
    the backward pass, then their gradients). It leaves out the allocator's rounding and cuDNN's
    workspaces, which :func:`workers.device.gpu_share`'s margin is for.

    Example:
        >>> estimate_peak(100, 10, 20, 5)
        150
    """
    return data_bytes + 2 * param_bytes + optimizer_bytes + 2 * activation_bytes


def _activation_bytes(model: nn.Module, xb: inputs.Inputs) -> int:
    """Bytes of every module output in one forward pass of the batch ``xb``."""
    total = 0

    def hook(_module: nn.Module, _inputs: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            inputs.forward(model, xb)
    finally:
        for h in handles:
            h.remove()
    return total


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _report_checkpoint(metrics: dict[str, Any], folder: str) -> None:
    """Report with the checkpoint in ``folder``. Tune copies it into the sweep's storage, file by
    file; a copy that fails (a full disk) leaves a partial checkpoint folder that no result
    names. It is removed, so that only whole checkpoints lie in the trial's folder, and the
    error raised: the trial's last whole checkpoint is still the one ``--resume`` restores."""
    from ray import tune

    try:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    except OSError:
        storage = tune.get_context().get_storage()
        try:
            storage.storage_filesystem.delete_dir(storage.checkpoint_fs_path)
        except OSError:
            pass  # never created, or already gone
        raise


def updates_per_epoch(n_train: int, batch_size: int, accumulate: int = 1) -> int:
    """Optimizer updates in one epoch, the unit a learning-rate schedule steps in: one per
    ``accumulate`` batches, the last taking what is left (``workers.loop.train_epoch``).

    Example:
        >>> updates_per_epoch(1000, 64), updates_per_epoch(1000, 64, accumulate=4)
        (16, 4)
    """
    batches = -(-n_train // batch_size)
    return -(-batches // max(1, accumulate))


def _setup(trial: dict[str, Any], data: TaskData, device: torch.device | None = None) -> _State:
    seed = trial["training"]["seed"]
    torch.manual_seed(seed)  # same init for the same seed: trials differ only by their config
    # On the device before the optimizer exists, so its state is created there too.
    model = build_model(trial["model"], data.input_shape, data.num_classes, data.extra)
    model = model.to(device or "cpu")
    opt_section = trial["optimizer"]
    optimizer = build_optimizer(
        opt_section["name"],
        model.parameters(),
        {k: v for k, v in opt_section.items() if k != "name"},
    )
    entry = OPTIMIZERS.get(opt_section["name"])
    batch_size = batch_size_for(
        entry.batch_mode, trial["training"]["batch_size"], data.split_size("train")
    )
    accumulate = trial["training"].get("accumulate", 1)
    steps_per_epoch = updates_per_epoch(data.split_size("train"), batch_size, accumulate)
    schedule = build_schedule(
        optimizer,
        trial["training"].get("lr_schedule"),
        steps_per_epoch,
        trial["training"]["max_epochs"],
    )
    generator = torch.Generator().manual_seed(seed)
    return _State(model, optimizer, schedule, generator)


def _save(
    state: _State,
    trial: dict[str, Any],
    data: TaskData,
    folder: Path,
    trial_id: str,
    final: dict[str, Any] | None = None,
) -> None:
    blob = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "epoch": state.epoch,
        "train_time_s": state.train_time_s,
        "generator": state.generator.get_state(),
    }
    if state.schedule is not None and hasattr(state.schedule, "state_dict"):
        blob["schedule"] = state.schedule.state_dict()
    blob["best_epoch"] = state.best_epoch  # training.keep: best; its weights where not "model"
    blob["best_scores"] = {k: float(v) for k, v in state.best_scores.items() if _is_real(v)}
    if state.best_epoch and state.best_epoch != state.epoch and state.best_weights is not None:
        blob["best_model"] = state.best_weights
    # A few inputs of the task's own dtype and shape: the driver exports and logs the winner
    # from its checkpoint without loading the task (or importing the user's task module).
    blob["example"] = inputs.detached(data.example_input())
    # The registered graph's front (raw inputs to model inputs) and raw inputs for its signature.
    # In state.pt, as bytes in a uint8 tensor: a checkpoint is one file (one object to upload).
    blob["raw_example"] = data.pipeline.raw_example
    if data.pipeline.front_onnx is not None:
        blob[FRONT_KEY] = torch.frombuffer(bytearray(data.pipeline.front_onnx), dtype=torch.uint8)
    facts: dict[str, Any] = {
        "trial": trial_meta(trial, data),
        # The per-epoch metrics up to here and the trial that reported them (see keys.REPLAY).
        "history": {"trial_id": trial_id, "epochs": state.history},
    }
    if final is not None:  # the last report, kept with the last checkpoint (see run_trial)
        facts["final"] = _without_replay(final)
    blob[MANIFEST_KEY] = json.dumps({"files": _files(folder), **facts})
    torch.save(blob, folder / STATE_FILE)


def _files(folder: Path) -> dict[str, int]:
    """Every file already in the checkpoint's ``folder``, with its size: Tune uploads a
    checkpoint file by file, and a copy cut off (a killed worker, a lost connection) lacks files
    or has short ones; :func:`checkpoint_problem` finds that against this list."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != STATE_FILE
    }


def _manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's manifest as ``{"files": ..., "trial": ..., "history": ..., "final": ...}``
    (``files``: the others than state.pt), read from state.pt; {} if it holds none.

    Raises:
        ValueError: state.pt is not whole (a copy cut short) or is not Podium's.
        FileNotFoundError: there is no state.pt.
    """
    path = Path(folder, STATE_FILE)
    try:
        # Memory-mapped: the JSON's bytes are read, not the model's and optimizer's.
        blob = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch's reader: a short file is not a whole zip file
        raise ValueError(f"{path.name} does not load: {e}") from e
    return _manifest_inside(blob) or {}  # {}: an earlier Podium's, or not Podium's


def _manifest_inside(blob: Any) -> dict[str, Any] | None:
    """The manifest in a loaded state.pt; None if it holds none."""
    text = blob.get(MANIFEST_KEY) if isinstance(blob, dict) else None
    return dict(json.loads(text)) if isinstance(text, str) else None


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why the checkpoint in ``folder`` is not whole (a cut-off upload), or None."""
    if not Path(folder, STATE_FILE).exists():
        return f"lacks {STATE_FILE} (its upload was cut off)"
    try:
        listed = _manifest(folder).get("files")
    except (OSError, ValueError) as e:
        return f"is not whole (its upload was cut off): {str(e).splitlines()[0][:200]}"
    if not isinstance(listed, dict):
        return (
            f"has no manifest in {STATE_FILE} (cut off, or written by a Podium from before the "
            "manifest moved into it: those are no longer read)"
        )
    for name, size in sorted(listed.items()):
        path = Path(folder, name)
        if not path.is_file():
            return f"lacks {name} (its upload was cut off)"
        if path.stat().st_size != size:
            return f"has {name} cut short: {path.stat().st_size} of {size} bytes"
    return None


def trial_meta(trial: dict[str, Any], data: TaskData) -> dict[str, Any]:
    """What rebuilding and serving the trial's model needs of its task, as JSON: its input shape
    and dtype, output width, problem kind, feature names and the task's saved facts (``extra``,
    e.g. a vocabulary)."""
    return {
        "trial": trial,
        "input_shape": inputs.json_shape(data.input_shape),
        "input_dtype": inputs.dtype_name(data.example_input()),
        "num_classes": data.num_classes,
        "kind": data.kind,
        "feature_names": list(data.feature_names) if data.feature_names else None,
        "extra": dict(data.extra),
        ANSWER_KEY: data.pipeline.answer,
    }


def trial_facts(folder: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's :func:`trial_meta`: the trial's spec and what its model needs of its
    task."""
    return dict(_manifest(folder)["trial"])


def load_example(folder: str | os.PathLike) -> inputs.Inputs:
    """The example inputs a trial's checkpoint holds (weights-only load): a tensor, or a tuple
    of them for a model of several inputs."""
    # Memory-mapped: only the example's bytes are read, not the model's and optimizer's.
    blob = torch.load(Path(folder, STATE_FILE), weights_only=True, map_location="cpu", mmap=True)
    return inputs.detached(blob["example"])


def load_pipeline_parts(folder: str | os.PathLike) -> tuple[Any, bytes | None]:
    """Raw example inputs (as a user has them) and the front's ONNX bytes from a checkpoint;
    ``(None, None)`` for one saved before the registered model was the whole pipeline."""
    blob = torch.load(Path(folder, STATE_FILE), weights_only=True, map_location="cpu", mmap=True)
    front = blob.get(FRONT_KEY)
    return blob.get("raw_example"), None if front is None else front.numpy().tobytes()


def _restore(state: _State, checkpoint: Any, trial_id: str) -> None:
    """Continue from the last checkpoint after a worker failure or a driver restart."""
    if checkpoint is None:
        return
    with checkpoint.as_directory() as folder:
        blob = torch.load(os.path.join(folder, STATE_FILE), weights_only=True, map_location="cpu")
        manifest = _manifest_inside(blob) or {}
        state.final = manifest.get("final")
        owned = manifest.get("history", {})
    if owned.get("trial_id") == trial_id:
        # Its own checkpoint. A PBT exploit restores another trial's: that trial's epochs are
        # not this run's history, so this trial's history starts again from here.
        state.history = list(owned["epochs"])
        state.replay = list(owned["epochs"])
        # training.keep: best goes on from the best epoch so far (checkpoints before it: none).
        state.best_epoch = int(blob.get("best_epoch", 0))
        state.best_scores = dict(blob.get("best_scores") or {})
        state.best_weights = blob.get("best_model")
    elif owned.get("trial_id"):
        # Another trial's best epoch is not this trial's: its best is judged from here on.
        state.exploited_from = f"{owned['trial_id']}@{int(blob['epoch'])}"
    state.model.load_state_dict(blob["model"])
    configured = [dict(g) for g in state.optimizer.param_groups]
    state.optimizer.load_state_dict(blob["optimizer"])
    if state.schedule is None:
        # The config wins over the checkpoint's hyperparameters: PBT restores a checkpoint into a
        # mutated config, and a plain resume has the same config anyway.
        for group, conf in zip(state.optimizer.param_groups, configured, strict=True):
            group.update({k: v for k, v in conf.items() if k != "params"})
    if "schedule" in blob and state.schedule is not None:
        state.schedule.load_state_dict(blob["schedule"])
    state.generator.set_state(blob["generator"])
    state.epoch = int(blob["epoch"])
    state.train_time_s = float(blob["train_time_s"])


def _scores(model: nn.Module, data: TaskData, split: str, device: torch.device) -> dict[str, float]:
    """``<split>_loss`` and ``<split>_<metric>`` for each of the task's metrics."""
    batches = eval_batches(data, split, device=device)
    scores = evaluate_split(model, batches, data.loss_fn(), data.metrics_fn())
    return {f"{split}_{name}": value for name, value in scores.items()}


def hparams_of(trial: dict[str, Any], paths: Any) -> dict[str, float]:
    """``hparam.<path>`` → the trial's value at each dotted spec path (``optimizer.lr``): the
    hyperparameters PBT may change, reported with every epoch so the run shows what trained it."""
    out = {}
    for path in paths:
        node: Any = trial
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            out[keys.HPARAM_PREFIX + path] = float(node)
    return out


def checkpoint_history(folder: str | os.PathLike | None) -> list[dict[str, float]]:
    """The per-epoch metrics the checkpoint in ``folder`` covers, in epoch order ([] if it has
    none)."""
    if folder is None:
        return []
    try:
        manifest = _manifest(folder)
    except (OSError, ValueError):
        return []
    return list(manifest.get("history", {}).get("epochs", []))


def _with_replay(state: _State, report: dict[str, Any]) -> dict[str, Any]:
    """The report, carrying the restored history once (the first report after a restore)."""
    if state.replay is None:
        return report
    replay, state.replay = state.replay, None
    return {**report, keys.REPLAY: replay}


def _without_replay(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != keys.REPLAY}


def _finish(
    trial: dict[str, Any], data: TaskData, state: _State, ctx: TrialContext, folder: Path
) -> dict[str, Any]:
    """Final metrics: test accuracy and size of the trained model, then the compression recipe."""
    final: dict[str, Any] = {
        **_scores(state.model, data, "test", ctx.device),
        keys.PARAM_COUNT: param_count(state.model),
        keys.NONZERO_PARAMS: nonzero_params(state.model),
        keys.MODEL_SIZE_BYTES: state_dict_bytes(state.model),
        keys.TRAIN_TIME_S: state.train_time_s,
        keys.DONE: True,
    }
    adversarial = trial["training"].get("adversarial")
    if adversarial is not None:
        x, y = data.x_test.to(ctx.device), data.y_test.to(ctx.device)  # host data that did not fit
        robust = robust_accuracy(state.model, x, y, adversarial)
        if robust is not None:
            final[keys.TEST_ROBUST_ACCURACY] = robust
    if trial.get("recipe"):
        ctx.out_dir = folder / ARTIFACTS_DIR
        ctx.out_dir.mkdir()
        # Recipes move models and batches themselves and measure on the CPU: give them CPU data.
        # A pruned or distilled model is rebuilt from the trial's model section; seeds fine-tuning.
        ctx.extras.update(model_section=trial["model"], seed=trial["training"]["seed"])
        result = run_recipe(trial["recipe"], state.model, task_on(torch.device("cpu"), data), ctx)
        if result is not None:
            final.update(result.metrics)
            final.update(result.tags)  # the CPU latency was measured on (a string, logged as a tag)
    return final


def load_trial_model(folder: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trial's trained model from its checkpoint folder (weights-only load).

    Returns:
        The model in eval mode and the checkpoint's metadata (``trial``, ``input_shape``,
        ``num_classes``).
    """
    folder = Path(folder)
    meta = trial_facts(folder)
    model = build_model(
        meta["trial"]["model"],
        inputs.as_shape(meta["input_shape"]),
        meta["num_classes"],
        meta.get("extra"),
    )
    # map_location: a GPU trial's checkpoint must load in a driver without a GPU.
    blob = torch.load(folder / STATE_FILE, weights_only=True, map_location="cpu")
    model.load_state_dict(blob["model"])
    return model.eval(), meta
