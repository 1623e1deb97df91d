"""Carries a selection decision out in the MLflow Model Registry.

The decisions themselves are made by :mod:`tracking.selection` (pure); this adapter logs the
winner's model to its run (the measured ONNX file as an MLflow ``onnx`` model, its weights-only
PyTorch state beside it), registers it once as a version with its model card, and moves the aliases:
the sweep's winner is a challenger that becomes ``champion`` only if it beats the current one on
the same test split (:func:`promote_challenger`); the replaced champion keeps ``previous`` and
:func:`rollback` swaps them back.

Example:
    >>> p = promote_challenger(uri, "digits", model_uri, challenger, Policy())  # doctest: +SKIP
    >>> p.decision.promote, p.champion                                          # doctest: +SKIP
    (True, '3')
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracking import keys, pipeline
from tracking.selection import (
    Candidate,
    Decision,
    Policy,
    check_policy,
    decide_promotion,
    policy_from,
)

log = logging.getLogger(__name__)

# MLflow's PyTorch serialization for the PyTorch copy (see log_trial_model).
TORCH_FORMAT = "pickle"


class _OwnPickleNotice(logging.Filter):
    """Drops MLflow's caution about saving a pickle: it is meant for loading pickles from
    elsewhere, while these are Podium's own, and serving loads the ONNX copy."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Saving pytorch model by Pickle")


logging.getLogger("mlflow.pytorch").addFilter(_OwnPickleNotice())


@dataclass(frozen=True)
class Promotion:
    """The registry after a sweep's promotion: the version registered for the winner, and whether
    it became ``alias`` (``champion_version`` is who holds the alias now)."""

    model_name: str
    version: str
    alias: str
    run_id: str
    model_uri: str  # models:/<name>@<alias>
    promoted: bool = True
    champion_version: str | None = None
    reasons: tuple[str, ...] = field(default_factory=tuple)


def log_trial_model(
    run_id: str,
    model: Any,
    input_example: Any,
    uri: str,
    onnx_file: str | Path | None = None,
    *,
    weights: dict[str, Any] | None = None,
    arch: dict[str, Any] | None = None,
    feature_names: list[str] | None = None,
    code_paths: list[str] | None = None,
    answer: dict[str, Any] | None = None,
    front: bytes | None = None,
    raw_example: Any = None,
) -> str:
    """Log a trial's model to ``run_id`` and return the URI of what gets registered.

    What is registered is **the model that was measured**: ``onnx_file``, the file a recipe
    exported and measured (int8 where it quantized), or, without a recipe, an fp32 ONNX export
    of ``model`` made here. It is logged as MLflow model ``model`` with MLflow's ``onnx`` flavor,
    so ``mlflow.pyfunc.load_model``, ``mlflow models serve`` and every MLflow deployment target
    run it through ONNX Runtime; its signature has the task's named columns where it has them
    (``feature_names``), else a tensor of the input's dtype and shape, and ``input_example`` is
    kept with it. Beside the ONNX file: ``state_dict.pt`` (``weights``, default ``model``'s) and
    ``arch.json`` (``arch``), the PyTorch weights a weights-only load rebuilds.

    Only where the ONNX file *is* ``model`` (no recipe) is a PyTorch copy logged too, as model
    ``model_torch`` (MLflow's ``pickle`` format, which needs no TorchDynamo in the driver),
    with the user's plug-in modules packaged (``code_paths``).

    With ``answer`` (``tracking.pipeline.answer_of``), what is registered is the whole
    pipeline (``tracking.pipeline.compose``): ``front`` (ONNX bytes: raw inputs to model inputs),
    the model, and the answer (``label`` and ``probabilities``, or ``prediction`` in the target's
    units); its signature and input example are the raw inputs (``raw_example``). An
    ``onnx_file`` that already is the pipeline (a recipe's) is logged as it is.

    Args:
        input_example: a few model inputs (batch > 1: the export's batch axis stays dynamic).
    """
    import mlflow
    import mlflow.onnx
    import mlflow.pytorch
    import onnx
    import torch

    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        onnx_path = Path(onnx_file) if onnx_file else _export_onnx(model, input_example, folder)
        if onnx_path is None:
            raise RegistryError("the model cannot be exported to ONNX, so it cannot be served")
        served_example = input_example
        if answer is not None:
            onnx_path = _as_pipeline(onnx_path, answer, front, folder)
            served_example = raw_example if raw_example is not None else input_example
        torch.save(
            weights if weights is not None else model.state_dict(),
            folder / keys.STATE_DICT_ARTIFACT,
        )
        (folder / keys.ARCH_ARTIFACT).write_text(json.dumps(arch or {}))
        example, signature = _signature(onnx_path, served_example, feature_names)
        with _reopened(run_id):
            if pipeline.takes_strings(onnx_path):  # MLflow's onnx flavor cannot run its ops
                return _log_strings_model(onnx_path, example, signature, folder)
            info = mlflow.onnx.log_model(
                onnx.load(str(onnx_path)),
                name=keys.MODEL_ARTIFACT,
                signature=signature,
                input_example=example,
                extra_files=[
                    str(folder / keys.STATE_DICT_ARTIFACT),
                    str(folder / keys.ARCH_ARTIFACT),
                ],
                pip_requirements=_onnx_requirements(),
                # One file, as it was measured (ONNX's default splits weights into side files).
                save_as_external_data=False,
                # Measured on the CPU; MLflow's default asks for CUDA first and warns without it.
                onnx_execution_providers=["CPUExecutionProvider"],
            )
            # MLflow's PyTorch pyfunc feeds a model one tensor: several inputs get ONNX only.
            if onnx_file is None and not isinstance(input_example, tuple):
                mlflow.pytorch.log_model(
                    model,
                    name=keys.TORCH_MODEL_ARTIFACT,
                    input_example=input_example,
                    code_paths=code_paths or None,
                    pip_requirements=_pip_requirements(),
                    serialization_format=TORCH_FORMAT,
                )
    return info.model_uri


def _log_strings_model(onnx_path: Path, example: Any, signature: Any, folder: Path) -> str:
    """A text pipeline, logged as MLflow model-from-code (``tracking/strings_model.py``, which
    imports neither Podium nor torch) with the graph as its ``onnx`` artifact: its tokenizer's
    string ops need onnxruntime-extensions, which MLflow's onnx flavor cannot load."""
    import mlflow.pyfunc
    import onnxruntime_extensions

    served = folder / "served" / keys.ONNX_ARTIFACT  # named as podium serve looks for it
    served.parent.mkdir()
    shutil.copyfile(onnx_path, served)
    info = mlflow.pyfunc.log_model(
        name=keys.MODEL_ARTIFACT,
        python_model=str(Path(__file__).with_name("strings_model.py")),
        artifacts={
            "onnx": str(served),
            "state_dict": str(folder / keys.STATE_DICT_ARTIFACT),
            "arch": str(folder / keys.ARCH_ARTIFACT),
        },
        signature=signature,
        input_example=example,
        pip_requirements=[
            *_onnx_requirements(),
            f"onnxruntime-extensions=={onnxruntime_extensions.__version__}",
            "pandas",
        ],
    )
    return str(info.model_uri)


@contextmanager
def _reopened(run_id: str) -> Iterator[None]:
    """The trial's ended run, active again for logging its model, then ended with the status
    it had: a failed upload (a full artifact store) says nothing about the trial, and MLflow's
    own ``with start_run`` would end the run FAILED."""
    import mlflow

    status = mlflow.MlflowClient().get_run(run_id).info.status
    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        mlflow.end_run(status)


def _as_pipeline(
    onnx_path: Path, answer: dict[str, Any], front: bytes | None, folder: Path
) -> Path:
    """``onnx_path`` as the whole pipeline: composed here unless it already is one."""
    import onnx

    model = onnx.load(str(onnx_path))
    if pipeline.is_pipeline([o.name for o in model.graph.output]):
        return onnx_path
    front_model = onnx.load_from_string(front) if front else None
    path = folder / "pipeline" / keys.ONNX_ARTIFACT
    path.parent.mkdir()
    onnx.save(pipeline.compose(model, answer, front_model), str(path))
    return path


def _signature(onnx_path: Path, example: Any, names: list[str] | None) -> tuple[Any, Any]:
    """The logged model's input example and signature: named columns of the inputs' own dtype
    for a tabular task with feature names (requests are matched by column name, not position;
    pandas' float64 where the task's raw columns are), else a tensor of the input's own dtype
    and shape. The outputs are what the ONNX file computes: for a pipeline, one row per input
    (``label`` and ``probabilities``, or ``prediction``)."""
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    session = pipeline.session(onnx_path)
    outputs = [o.name for o in session.get_outputs()]
    if isinstance(example, tuple):  # several inputs: named tensors, as requests send them
        feed = {i.name: np.asarray(x) for i, x in zip(session.get_inputs(), example, strict=True)}
        return feed, infer_signature(feed, _answers(outputs, session.run(None, feed)))
    x = pipeline.as_array(example)
    name = session.get_inputs()[0].name
    answers = _answers(outputs, session.run(None, {name: x}))
    if x.dtype == object:  # strings: one column of text, named as the graph's input
        frame = pd.DataFrame({name: list(x)})
        return frame, infer_signature(frame, answers)
    if names and x.ndim == 2 and x.shape[1] == len(names):
        frame = pd.DataFrame(x, columns=list(names))
        return frame, infer_signature(frame, answers)
    return x, infer_signature(x, answers)


def _answers(names: list[str], values: list[Any]) -> Any:
    """A pipeline's outputs as one row per input (a DataFrame); a model's logits as they are."""
    import pandas as pd

    if not pipeline.is_pipeline(names):
        return values[0]
    return pd.DataFrame(
        {n: list(v) if isinstance(v, list) else list(v) for n, v in zip(names, values, strict=True)}
    )


def _onnx_requirements() -> list[str]:
    import onnx
    import onnxruntime

    return [f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}", "numpy"]


def _pip_requirements() -> list[str]:
    """What the logged model needs, stated: MLflow's own inference imports the model in a
    subprocess and took 10+ s per promotion here."""
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", "numpy"]


def warm_up_model_logging() -> None:
    """Pay the first-use costs of logging a model ahead of time: importing MLflow's ONNX and
    PyTorch flavors and building MLflow's map of installed packages (read to check the requirements,
    0.6-1.3 s).

    The runner calls this in a background thread while trials train, so the winner's
    ``log_model`` at the end of a sweep does not start cold. It saves a tiny model to a
    temporary folder, in the format :func:`log_trial_model` uses: nothing reaches the tracking
    store, and TorchDynamo is not imported.
    """
    import mlflow.onnx  # noqa: F401  (the registered model's flavor)
    import mlflow.pytorch
    import torch

    model = torch.nn.Linear(2, 2).eval()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.pytorch.save_model(
                model,
                str(Path(tmp) / "model"),
                input_example=torch.zeros(2, 2).numpy(),
                pip_requirements=_pip_requirements(),
                serialization_format=TORCH_FORMAT,
            )
    except Exception:  # noqa: BLE001 - a warm-up only; the real logging reports its own errors
        log.debug("model-logging warm-up failed", exc_info=True)


def _export_onnx(model: Any, example: Any, folder: Path) -> Path | None:
    """An fp32 ONNX export with a dynamic batch axis, or None (logged) if the model cannot be."""
    import torch

    path = folder / keys.ONNX_ARTIFACT
    try:
        xs = tuple(torch.as_tensor(x[:2]) for x in _several(example))
        names = keys.input_names(len(xs))
        # The TorchScript-based exporter: no onnxscript optimisation pass, a second or less.
        torch.onnx.export(
            model.eval(),
            xs,
            str(path),
            input_names=names,
            output_names=[keys.ONNX_OUTPUT],
            dynamic_axes={n: {0: "batch"} for n in names},
            dynamo=False,
        )
    except Exception as e:  # noqa: BLE001 - serving is optional; logging the model is not
        log.warning("no ONNX export for serving: %s", e)
        return None
    return path


def _several(example: Any) -> tuple:
    """The example's input arrays: one, or each of a several-input model's."""
    return example if isinstance(example, tuple) else (example,)


def register_and_alias(
    uri: str,
    model_uri: str,
    model_name: str,
    alias: str,
    run_id: str,
    decision: Decision,
    tags: dict[str, str] | None = None,
    policy: Policy | None = None,
) -> Promotion:
    """Register the sweep winner ``decision.winner`` (logged at ``model_uri``) as a challenger
    and give it ``alias`` only if it beats the current holder (see :func:`promote_challenger`).

    Args:
        tags: extra model-card tags (spec hash, experiment, trial id).
        policy: the promotion policy; None reads it from the sweep's spec snapshot on the
            parent run of ``run_id`` (default policy if there is none).
    """
    client = _client(uri)
    winner = decision.winner
    assert winner is not None
    policy = policy or _policy_of_run(client, run_id) or Policy()
    card = {**_card_of_run(uri, client, run_id, policy), **(tags or {})}
    challenger = Candidate(
        winner.trial_id,
        winner.metrics,
        winner.status,
        run_id,
        winner.config,
        winner.split or card.get(keys.TAG_SPLIT),
    )
    out = promote_challenger(uri, model_name, model_uri, challenger, policy, card, alias)
    return Promotion(
        model_name,
        out.version,
        alias,
        run_id,
        f"models:/{model_name}@{alias}",
        out.decision.promote,
        out.champion,
        out.decision.reasons,
    )


def _policy_of_run(client: Any, run_id: str) -> Policy | None:
    """The promotion policy in the spec snapshot of ``run_id``'s sweep (its parent run)."""
    import yaml

    try:
        run = client.get_run(run_id)
        parent = run.data.tags.get(keys.TAG_PARENT_RUN, run_id)
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(parent, keys.SPEC_ARTIFACT, tmp)
            section = (yaml.safe_load(Path(path).read_text()) or {}).get("promotion") or {}
    except Exception as e:  # noqa: BLE001 - no snapshot: the caller falls back to the default
        log.info("no spec snapshot for run %s: %s", run_id, e)
        return None
    section = {"objectives": [{"metric": keys.TEST_ACCURACY, "mode": "max"}], **section}
    return None if check_policy(section) else policy_from(section)


def _card_of_run(uri: str, client: Any, run_id: str, policy: Policy) -> dict[str, str]:
    """Model-card tags from the trial run: data set and split, optimizer, recipe, run links."""
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001
        return {}
    p = run.data.params
    recipe = {k: v for k, v in sorted(p.items()) if k.startswith("recipe")}
    card = {
        keys.TAG_DATASET: p.get("task", ""),
        keys.TAG_OPTIMIZER: p.get("optimizer.name", ""),
        keys.TAG_RECIPE: json.dumps(recipe) if recipe else "[]",
        keys.TAG_POLICY: json.dumps(_policy_json(policy)),
        keys.TAG_PARENT_RUN: run.data.tags.get(keys.TAG_PARENT_RUN, ""),
    }
    if "task" in p and "training.seed" in p:
        card[keys.TAG_SPLIT] = split_label(p["task"], p["training.seed"])
    if uri.startswith(("http://", "https://")):
        exp = run.info.experiment_id
        card[keys.TAG_RUN_LINK] = f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"
    else:
        card[keys.TAG_RUN_LINK] = f"runs:/{run_id}"
    return {k: v[:4900] for k, v in card.items()}


def _policy_json(policy: Policy) -> dict[str, Any]:
    return {
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in policy.objectives],
        "constraints": list(policy.constraints),
        "strategy": policy.strategy,
        "pick": policy.pick,
        "weights": list(policy.weights) if policy.weights else None,
        "min_improvement": policy.min_improvement,
    }


# --------------------------------------------------------------------------- champion / challenger
#
# Several sweeps may finish at once and promote into the same registered model. MLflow offers no
# compare-and-set on aliases, and ``create_model_version`` computes ``max(version) + 1`` and has
# collided under concurrency (mlflow/mlflow PR #22635). So every promotion runs under a lock whose
# only primitive is one MLflow guarantees atomically on every backend: creating a registered model
# whose name already exists fails with RESOURCE_ALREADY_EXISTS (a unique key in the SQL stores,
# also behind ``mlflow server``). Inside the lock a promotion registers (or finds) its version,
# reads the champion, decides with the pure :func:`tracking.selection.decide_promotion`, moves the
# aliases and re-reads them. Promotions are thus serialised: the final champion is what applying
# them one after another gives, which with ``min_improvement: 0`` is the best of them.

PREVIOUS_ALIAS = "previous"
LOCK_PREFIX = "podium-lock."  # + model name: a registered model that exists while a promotion runs
LOCK_TIMEOUT_S = 300.0  # how long to wait for another promotion
LOCK_STALE_S = 900.0  # a lock older than this was left by a crashed process and is broken


class RegistryError(Exception):
    """A promotion or rollback could not be carried out; the message says what to do."""


@dataclass(frozen=True)
class PromotionOutcome:
    """What :func:`promote_challenger` did: the version it registered (or found), the decision,
    and which versions hold the aliases now."""

    model_name: str
    version: str
    decision: Decision
    champion: str | None
    previous: str | None
    created: bool  # False when the run was already registered (an idempotent re-run)


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _code(e: Exception) -> str:
    return str(getattr(e, "error_code", "") or "")


def _transient(e: Exception) -> bool:
    """Errors worth retrying: a busy SQLite file, a version-number collision, a server hiccup."""
    text = str(e).lower()
    return any(
        s in text
        for s in (
            "database is locked",
            "unique constraint",
            "integrityerror",
            "giving up after",
            "deadlock",
            "503",
            "502",
            "temporarily",
        )
    )


def _retry(fn: Callable[[], Any], what: str, attempts: int = 8) -> Any:
    delay = 0.05
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - MLflow raises several types; translated below
            if i == attempts - 1 or not _transient(e):
                raise RegistryError(f"{what} failed: {e}") from e
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


@contextmanager
def promotion_lock(
    uri: str, model_name: str, timeout_s: float = LOCK_TIMEOUT_S, stale_s: float = LOCK_STALE_S
) -> Iterator[None]:
    """Hold the promotion lock of ``model_name`` (see the comment above) for the ``with`` body.

    Raises:
        RegistryError: the lock stayed taken for ``timeout_s``; the message names the lock to
            delete if a promotion crashed.
    """
    client, lock = _client(uri), f"{LOCK_PREFIX}{model_name}"
    token = uuid.uuid4().hex
    deadline, delay = time.monotonic() + timeout_s, 0.02
    while True:
        try:
            client.create_registered_model(
                lock,
                tags={"podium.lock_owner": token},
                description="Held while Podium promotes; deleted after.",
            )
            break
        except Exception as e:  # noqa: BLE001
            # Under concurrent SQLite writers a create can also answer "not found" (the row it
            # re-reads was gone, or its insert lost a race): both mean try again.
            if _code(e) not in _LOCK_RETRY_CODES and not _transient(e):
                raise RegistryError(f"cannot take the promotion lock {lock!r}: {e}") from e
            if _lock_owner(client, lock) == token:
                break  # the create landed although its answer failed
        _break_if_stale(client, lock, stale_s)
        if time.monotonic() > deadline:
            raise RegistryError(
                f"another promotion of {model_name!r} held the lock for "
                f"{timeout_s:.0f}s; if a promotion crashed, delete the registered "
                f"model {lock!r}"
            )
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 1.5, 0.5)
    try:
        yield
    finally:
        _release(client, lock, token)


_LOCK_RETRY_CODES = ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST")


def _lock_owner(client: Any, lock: str) -> str | None:
    try:
        return client.get_registered_model(lock).tags.get("podium.lock_owner")
    except Exception:  # noqa: BLE001 - no lock (or unreadable): nobody we know holds it
        return None


def _break_if_stale(client: Any, lock: str, stale_s: float) -> None:
    try:
        held = client.get_registered_model(lock)
    except Exception:  # noqa: BLE001 - released meanwhile
        return
    age_s = time.time() - held.creation_timestamp / 1000.0
    if age_s > stale_s:
        log.warning("breaking promotion lock %s left for %.0fs by a crashed process", lock, age_s)
        with suppress(Exception):
            client.delete_registered_model(lock)


def _release(client: Any, lock: str, token: str) -> None:
    with suppress(Exception):
        if client.get_registered_model(lock).tags.get("podium.lock_owner") == token:
            _retry(lambda: client.delete_registered_model(lock), f"releasing {lock}")


def _ensure_model(client: Any, name: str) -> None:
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - does not exist (yet)
        try:
            client.create_registered_model(name, description="Registered by Podium.")
        except Exception as e:  # noqa: BLE001
            if _code(e) != "RESOURCE_ALREADY_EXISTS" and not _transient(e):
                raise RegistryError(f"cannot create registered model {name!r}: {e}") from e


def _alias_version(client: Any, name: str, alias: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as e:  # noqa: BLE001
        if _code(e) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise RegistryError(f"cannot read alias {alias!r} of {name!r}: {e}") from e


def _version_of_run(client: Any, name: str, run_id: str) -> Any | None:
    """The version already registered from ``run_id`` (what makes a re-run idempotent)."""
    found = _retry(
        lambda: client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"),
        f"listing {name}",
    )
    mine = [v for v in found if v.tags.get(keys.TAG_SOURCE_RUN) == run_id]
    return min(mine, key=lambda v: int(v.version)) if mine else None


def version_of_run(uri: str, model_name: str, run_id: str) -> str | None:
    """The version of ``model_name`` registered from ``run_id``, if any."""
    try:
        mv = _version_of_run(_client(uri), model_name, run_id)
    except RegistryError:
        return None
    return str(mv.version) if mv else None


def version_candidate(mv: Any) -> Candidate:
    """A registered version as selection sees it: its card's metrics and test split."""
    n = len(keys.TAG_METRIC_PREFIX)
    metrics = {}
    for k, v in mv.tags.items():
        if k.startswith(keys.TAG_METRIC_PREFIX):
            with suppress(ValueError):
                metrics[k[n:]] = float(v)
    return Candidate(f"v{mv.version}", metrics, run_id=mv.run_id, split=mv.tags.get(keys.TAG_SPLIT))


def split_label(task: Any, seed: Any) -> str:
    """How a test split is named on the card: the data set and the seed that fixes its split."""
    return f"{task}:seed={seed}"


def promote_challenger(
    uri: str,
    model_name: str,
    model_uri: str,
    challenger: Candidate,
    policy: Policy,
    card: dict[str, str] | None = None,
    alias: str = "champion",
) -> PromotionOutcome:
    """Register ``challenger``'s model and make it ``alias`` if it beats the current holder.

    The version is created once per run (a re-run finds it), carries the model card (``card``
    tags, its metrics, its test split, the decision) and gets the alias only when
    :func:`~tracking.selection.decide_promotion` says so; the replaced champion keeps alias
    ``previous``. Safe to call from many processes at once.

    Raises:
        RegistryError: the registry refused a write or the lock could not be taken.
    """
    client = _client(uri)
    _retry(lambda: _ensure_model(client, model_name), f"creating {model_name}")
    with promotion_lock(uri, model_name):
        mv, created = _version_of_run(client, model_name, challenger.run_id or ""), False
        if mv is None:
            mv, created = _create_version(client, model_name, model_uri, challenger, card), True
        holder = _alias_version(client, model_name, alias)
        incumbent = version_candidate(holder) if holder else None
        ch = version_candidate(mv)
        decision = decide_promotion(
            Candidate(
                ch.trial_id,
                challenger.metrics,
                challenger.status,
                challenger.run_id,
                challenger.config,
                challenger.split,
            ),
            incumbent,
            policy,
        )
        if decision.promote:
            if holder is not None:
                _retry(
                    lambda: client.set_registered_model_alias(
                        model_name, PREVIOUS_ALIAS, holder.version
                    ),
                    "setting previous",
                )
            _retry(
                lambda: client.set_registered_model_alias(model_name, alias, mv.version),
                f"setting {alias}",
            )
        _record_decision(client, model_name, mv.version, decision, card)
        champ = _alias_version(client, model_name, alias)
        expected = mv.version if decision.promote else (holder.version if holder else None)
        found = str(champ.version) if champ else None
        if found != (str(expected) if expected else None):  # someone wrote outside the lock
            raise RegistryError(
                f"alias {alias!r} of {model_name!r} moved during the promotion "
                f"(expected v{expected}, found v{found})"
            )
        prev = _alias_version(client, model_name, PREVIOUS_ALIAS)
    return PromotionOutcome(
        model_name,
        str(mv.version),
        decision,
        str(champ.version) if champ else None,
        str(prev.version) if prev else None,
        created,
    )


def _create_version(
    client: Any, name: str, model_uri: str, challenger: Candidate, card: dict[str, str] | None
) -> Any:
    tags = {**(card or {}), keys.TAG_SOURCE_RUN: challenger.run_id or ""}
    if challenger.split:
        tags[keys.TAG_SPLIT] = challenger.split
    for k, v in challenger.metrics.items():
        tags[keys.TAG_METRIC_PREFIX + k] = repr(float(v))
    # A logged model's URI (models:/m-<id>) must travel with its id: an HTTP tracking server
    # rejects the source otherwise ("The model_id request parameter must identify ...").
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    return _retry(
        lambda: client.create_model_version(
            name,
            model_uri,
            run_id=challenger.run_id,
            tags=tags,
            model_id=model_id,
            description=_card_text(challenger, card),
        ),
        f"registering a version of {name}",
    )


def _card_text(c: Candidate, card: dict[str, str] | None) -> str:
    lines = [
        f"Trial `{c.config.get('trial_id', c.trial_id)}` of run `{c.run_id}`, "
        f"test split `{c.split}`.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.6g} |" for k, v in sorted(c.metrics.items())]
    lines += [f"- {k}: {v}" for k, v in sorted((card or {}).items())]
    return "\n".join(lines)


def _record_decision(
    client: Any, name: str, version: str, decision: Decision, card: dict[str, str] | None
) -> None:
    text = "; ".join(decision.reasons)[:4900]  # MLflow caps tag values at 5000 characters
    _retry(
        lambda: client.set_model_version_tag(name, version, keys.TAG_DECISION, text),
        "recording the decision",
    )
    mv = client.get_model_version(name, version)
    verdict = "promoted" if decision.promote else "not promoted"
    note = f"\n\n**Promotion decision** ({verdict}): {text}"
    if note not in (mv.description or ""):
        _retry(
            lambda: client.update_model_version(name, version, (mv.description or "") + note),
            "updating the model card",
        )


def rollback(uri: str, model_name: str, alias: str = "champion") -> tuple[str, str]:
    """Swap ``alias`` and ``previous``: the previous champion serves again (and a second
    rollback undoes the first). Returns (new champion version, new previous version).

    Raises:
        RegistryError: there is no champion or no previous version to go back to.
    """
    client = _client(uri)
    with promotion_lock(uri, model_name):
        champ = _alias_version(client, model_name, alias)
        prev = _alias_version(client, model_name, PREVIOUS_ALIAS)
        if champ is None or prev is None:
            have = [f"v{v.version}" if v else "none" for v in (champ, prev)]
            raise RegistryError(
                f"cannot roll back {model_name!r}: it needs both @{alias} and "
                f"@{PREVIOUS_ALIAS} (found {have[0]} and {have[1]})"
            )
        _retry(
            lambda: client.set_registered_model_alias(model_name, alias, prev.version), "rollback"
        )
        _retry(
            lambda: client.set_registered_model_alias(model_name, PREVIOUS_ALIAS, champ.version),
            "rollback",
        )
        _retry(
            lambda: client.set_model_version_tag(
                model_name,
                prev.version,
                keys.TAG_DECISION,
                f"rolled back: v{prev.version} replaces v{champ.version} as {alias}",
            ),
            "rollback",
        )
    return str(prev.version), str(champ.version)
