"""A registry teacher is resolved and downloaded against the sweep's own store: the champion of
one sweep teaches the next, from the default embedded store and from an ``mlflow server``, and
nothing but the sweep's own folder appears in the working folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.test_cli import podium
from tracking import keys

pytestmark = pytest.mark.slow
QUICK = ["--set", "search.num_samples=1", "--set", "training.max_epochs=2"]
TEACHER = "models:/base-digits@champion"
DISTIL = f"recipe=[{{step: distill, teacher: '{TEACHER}', hidden: [16], epochs: 1}}]"


def sweep(folder: Path, *args: str, env: dict | None = None):
    out = podium("run", *QUICK, *args, cwd=folder, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]
    # MLflow's own console lines (an mlflow server's run links, registration waits) stay out of
    # the progress view; --verbose shows them.
    for line in ("View run", "View experiment", "Waiting up to"):
        assert line not in out.stdout + out.stderr, out.stdout[-3000:]
    return out


def teach_then_distil(folder: Path, store: list[str], env: dict | None = None) -> str:
    """The base sweep promotes its champion; the second distils from it. Returns its output."""
    sweep(folder, *store, "--set", "promotion.model_name=base-digits", env=env)
    before = sorted(p.name for p in folder.iterdir())
    out = sweep(
        folder,
        *store,
        "--set",
        "name=distilled",
        "--set",
        "promotion.model_name=small-digits",
        "--set",
        DISTIL,
        env=env,
    )
    # The working folder holds nothing new: no stray MLflow store beside the sweep's own.
    assert sorted(p.name for p in folder.iterdir()) == before
    return out.stdout


def assert_distilled_from(uri: str) -> None:
    """The second sweep's champion is a distilled student of the first sweep's champion."""
    client = MlflowClient(uri, registry_uri=uri)
    teacher = client.get_model_version_by_alias("base-digits", "champion")
    student = client.get_model_version_by_alias("small-digits", "champion")
    run = client.get_run(student.run_id)
    assert run.data.tags[keys.TAG_ROLE] == keys.ROLE_TRIAL
    assert run.data.params.get("recipe.0.teacher") == TEACHER, run.data.params
    assert student.run_id != teacher.run_id


def test_the_default_store_champion_teaches_the_next_sweep(tmp_path):
    folder = tmp_path / "team"
    folder.mkdir()
    out = teach_then_distil(folder, [])
    assert "champion: models:/small-digits@champion" in out
    stores = sorted(p.relative_to(folder) for p in folder.rglob("mlflow.db"))
    assert stores == [Path("podium-runs/mlflow.db")]
    assert_distilled_from(f"sqlite:///{folder / 'podium-runs' / 'mlflow.db'}")


def test_an_mlflow_server_champion_teaches_the_next_sweep(tmp_path, mlflow_server_factory):
    server = mlflow_server_factory()
    folder = tmp_path / "team"
    folder.mkdir()
    out = teach_then_distil(folder, ["--tracking-uri", server.url], env=server.client_env())
    assert "champion: models:/small-digits@champion" in out
    assert list(folder.rglob("mlflow.db")) == []  # the server's store is the only one
    assert_distilled_from(server.url)
