"""One trial, as a recipe: set up data, model, optimizer; train with a checkpoint and a report every
epoch; at the end evaluate on the test split, measure, compress, report the final metrics.

This is the one module that talks to Ray Tune (``tune.report`` / ``tune.get_checkpoint``). It gets
the trial's *concrete* spec (no search spaces left) from the orchestrator. Workers never write to
MLflow: the driver logs what the trial reports.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tracking import keys
from workers.errors import TrialDivergedError
from workers.models import build_model
from workers.optimizers import OPTIMIZERS, build_optimizer
from workers.optimizers.schedules import build_schedule
from workers.recipes import run_recipe
from workers.tasks import TaskData, load_task
from workers.trial.adversarial import make_adversary, robust_accuracy
from workers.trial.checkpoint import (
    ARTIFACTS_DIR,
    TrialState,
    restore_checkpoint,
    save_checkpoint,
)
from workers.trial.device import move, pick_device, resident_task, task_on
from workers.trial.loop import (
    batch_size_for,
    eval_batches,
    evaluate_split,
    train_batches,
    train_epoch,
)
from workers.trial.measure import nonzero_params, param_count, state_dict_bytes

ROBUST_VAL_SAMPLES = 1000  # val examples attacked each epoch (the test split is attacked whole)


@dataclass
class TrialContext:
    """What a trial knows besides its spec: where it runs and what the driver prepared.

    ``extras`` carries driver-prepared inputs for plug-ins (e.g. a registry teacher's local path).
    """

    threads: int = 1
    extras: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None
    device: torch.device = torch.device("cpu")


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
    state = setup_trial(trial, data, device.torch_device)
    trial_id = tune.get_context().get_trial_id()
    restore_checkpoint(state, tune.get_checkpoint(), trial_id)
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
                save_checkpoint(
                    state, trial, data, Path(folder), trial_id, final=metrics if last else None
                )
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


def _track_best(state: TrialState, keep: tuple[str, str] | None) -> None:
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


def _remember_best(state: TrialState) -> None:
    """Before an epoch trains: copy the model's weights if they are the best epoch's."""
    if state.best_epoch and state.best_epoch == state.epoch and state.best_weights is None:
        state.best_weights = {
            k: v.detach().to("cpu", copy=True) for k, v in state.model.state_dict().items()
        }


def _kept(state: TrialState) -> dict[str, Any]:
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
    ``accumulate`` batches, the last taking what is left (``workers.trial.loop.train_epoch``).

    Example:
        >>> updates_per_epoch(1000, 64), updates_per_epoch(1000, 64, accumulate=4)
        (16, 4)
    """
    batches = -(-n_train // batch_size)
    return -(-batches // max(1, accumulate))


def setup_trial(
    trial: dict[str, Any], data: TaskData, device: torch.device | None = None
) -> TrialState:
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
    return TrialState(model, optimizer, schedule, generator)


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


def _with_replay(state: TrialState, report: dict[str, Any]) -> dict[str, Any]:
    """The report, carrying the restored history once (the first report after a restore)."""
    if state.replay is None:
        return report
    replay, state.replay = state.replay, None
    return {**report, keys.REPLAY: replay}


def _finish(
    trial: dict[str, Any], data: TaskData, state: TrialState, ctx: TrialContext, folder: Path
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
