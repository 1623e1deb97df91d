"""Several experiments finishing at once: real processes register and promote into one model.

Small models are trained on digits for real (different budgets, so different test accuracies) and
logged to their own MLflow runs as weights-only state dicts; then one process per run waits at a
barrier with the others and registers and promotes at the same moment. Run against a SQLite file
shared by the processes and against a real ``mlflow server`` subprocess.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import tempfile
from pathlib import Path

import pytest

from tracking import keys
from tracking.registry.lock import RegistryError, promotion_lock
from tracking.registry.promote import PREVIOUS_ALIAS, promote_challenger, rollback, split_label
from tracking.selection import Candidate, Policy

N_PROCS = 4
MODEL = "digits-concurrent"
POLICY = Policy()  # test_accuracy, max; min_improvement 0: the best of them must end up champion


def _train_snapshots(budgets: list[int]) -> list[tuple[float, Path]]:
    """One small MLP trained on digits, saved after each budget of full-batch steps: snapshots
    with different (real) test accuracies, each a weights-only state dict + arch.json."""
    import torch

    from workers.models import build_model
    from workers.tasks import load_task

    data = load_task("digits", 0)
    torch.manual_seed(0)
    arch = {"arch": "mlp", "hidden": [16]}
    model = build_model(arch, data.input_shape, data.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    out = []
    for step in range(1, max(budgets) + 1):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.x_train), data.y_train).backward()
        opt.step()
        if step in budgets:
            with torch.no_grad():
                acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
            folder = Path(tempfile.mkdtemp(prefix="podium-model-"))
            torch.save(model.state_dict(), folder / keys.STATE_DICT_ARTIFACT)
            (folder / keys.ARCH_ARTIFACT).write_text(
                json.dumps(
                    {
                        "model": arch,
                        "input_shape": list(data.input_shape),
                        "num_classes": data.num_classes,
                    }
                )
            )
            out.append((acc, folder))
    return out


def _log_run(uri: str, experiment_id: str, acc: float, folder: Path) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, uri)
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, keys.TEST_ACCURACY, acc)
    client.log_artifacts(run.info.run_id, str(folder), keys.MODEL_ARTIFACT)
    client.set_terminated(run.info.run_id)
    shutil.rmtree(folder)  # the store has its copy
    return run.info.run_id


def _worker(uri: str, run_id: str, acc: float, barrier, out) -> None:
    """One experiment's end: register and promote its winner, at the same moment as the others."""
    try:
        challenger = Candidate(
            run_id[:8], {keys.TEST_ACCURACY: acc}, run_id=run_id, split=split_label("digits", 0)
        )
        barrier.wait(timeout=240)
        res = promote_challenger(
            uri,
            MODEL,
            f"runs:/{run_id}/{keys.MODEL_ARTIFACT}",
            challenger,
            POLICY,
            card={keys.TAG_DATASET: "digits"},
        )
        out.put(("ok", run_id, acc, res.version, res.created))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the test
        out.put(("error", repr(e), 0.0, "", False))


def _promote_all_at_once(uri: str, budgets: list[int]) -> list[tuple]:
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(uri, uri).create_experiment("concurrent")
    # Trained here: the processes' job is the concurrent registry writes.
    runs = [(_log_run(uri, exp, acc, folder), acc) for acc, folder in _train_snapshots(budgets)]
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(len(runs)), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(uri, run_id, acc, barrier, out)) for run_id, acc in runs
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    errors = [r[1] for r in results if r[0] == "error"]
    assert not errors, errors
    return results


def _check_concurrent_promotions(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, uri)
    # Different budgets give different accuracies (3 steps learns little, 80 learns digits).
    results = _promote_all_at_once(uri, [3, 10, 30, 80])
    versions = [r[3] for r in results]
    assert len(set(versions)) == N_PROCS, f"versions collided: {versions}"
    assert sorted(int(v) for v in versions) == list(range(1, N_PROCS + 1))
    best_acc = max(r[2] for r in results)
    champ = client.get_model_version_by_alias(MODEL, "champion")
    assert float(champ.tags[keys.TAG_METRIC_PREFIX + keys.TEST_ACCURACY]) == pytest.approx(best_acc)
    assert champ.run_id in {r[1] for r in results if r[2] == best_acc}
    assert (
        champ.tags[keys.TAG_SPLIT] == "digits:seed=0" and champ.tags[keys.TAG_DATASET] == "digits"
    )
    assert keys.TAG_DECISION in champ.tags and "Promotion decision" in champ.description
    # No lock left behind.
    assert not [m for m in client.search_registered_models() if m.name.startswith("podium-lock.")]

    # Re-running every promotion (again all at once) is idempotent: same versions, same champion.
    again = []
    for run_id, acc, version in [(r[1], r[2], r[3]) for r in results]:
        ch = Candidate("again", {keys.TEST_ACCURACY: acc}, run_id=run_id, split="digits:seed=0")
        res = promote_challenger(uri, MODEL, f"runs:/{run_id}/model", ch, POLICY)
        again.append((res.version, res.created))
        assert res.version == version and not res.created
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == N_PROCS
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == str(champ.version)

    # Whoever held the alias before the best arrived is now @previous (none if the best was first).
    by_version = {r[3]: r[2] for r in results}
    prev = (
        client.get_model_version_by_alias(MODEL, PREVIOUS_ALIAS)
        if any(
            PREVIOUS_ALIAS in v.aliases for v in client.search_model_versions(f"name = '{MODEL}'")
        )
        else None
    )
    if prev is not None:
        assert by_version[str(prev.version)] <= best_acc and prev.version != champ.version


@pytest.mark.slow
def test_concurrent_promotions_sqlite(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from mlflow.tracking import MlflowClient

    MlflowClient(uri, uri).search_experiments()  # create the schema once, before the processes race
    _check_concurrent_promotions(uri)


@pytest.mark.slow
def test_concurrent_promotions_mlflow_server(tmp_path):
    from tests.fixtures_services import MlflowServer

    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts").start()
    try:
        _check_concurrent_promotions(server.url)
    finally:
        server.cleanup()


def _log_small_model(uri: str, experiment_id: str, acc: float) -> str:
    import torch

    folder = Path(tempfile.mkdtemp(prefix="podium-model-"))
    torch.save(torch.nn.Linear(4, 2).state_dict(), folder / keys.STATE_DICT_ARTIFACT)
    return _log_run(uri, experiment_id, acc, folder)


def test_champion_previous_and_rollback(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    exp = client.create_experiment("seq")
    policy = Policy(min_improvement=0.01)

    def promote(acc: float, split: str = "digits:seed=0"):
        run = _log_small_model(uri, exp, acc)
        ch = Candidate("t", {keys.TEST_ACCURACY: acc}, run_id=run, split=split)
        return promote_challenger(uri, "m", f"runs:/{run}/model", ch, policy)

    first = promote(0.90)
    assert first.decision.promote and (first.champion, first.previous) == ("1", None)
    small_gain = promote(0.905)  # below min_improvement: registered, not promoted
    assert not small_gain.decision.promote and small_gain.champion == "1"
    assert "min_improvement" in client.get_model_version("m", "2").tags[keys.TAG_DECISION]
    other_split = promote(0.99, split="digits:seed=1")  # not comparable: refused
    assert not other_split.decision.promote and "not comparable" in other_split.decision.reasons[0]
    better = promote(0.95)
    assert (better.version, better.champion, better.previous) == ("4", "4", "1")
    assert rollback(uri, "m") == ("1", "4")
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("m", PREVIOUS_ALIAS).version) == "4"
    assert rollback(uri, "m") == ("4", "1")
    with pytest.raises(RegistryError, match="@previous"):
        rollback(uri, "never-promoted")


def test_lock_times_out_naming_the_lock_and_a_crashed_holders_lock_is_broken(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with promotion_lock(uri, "m"):
        with pytest.raises(RegistryError, match="podium-lock.m"):
            with promotion_lock(uri, "m", timeout_s=0.5):
                pass
    with promotion_lock(uri, "m", timeout_s=5):  # released: free again
        pass
    MlflowClient(uri, uri).create_registered_model("podium-lock.m")  # a crashed holder's lock
    with pytest.raises(RegistryError):
        with promotion_lock(uri, "m", timeout_s=0.3):  # young: respected
            pass
    with promotion_lock(uri, "m", timeout_s=10, stale_s=0.0):  # old: broken
        pass
