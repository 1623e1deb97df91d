"""A tiny real sweep, then the selection loop a team runs on it, all through the ``podium`` CLI:
leaderboard marks, model card, ``promote --policy``, ``rollback``, ``serve``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import api
from orchestrator.spec import parse_spec
from tracking import keys

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
MODEL = "e2e-model"
SPEC = {
    "name": "e2e-promo",
    "task": "digits",
    # 64*8+8 + 8*10+10 = 610 parameters against 64*32+32 + 32*10+10 = 2410.
    "model": {"arch": "mlp", "hidden": {"grid": [[8], [32]]}},
    "optimizer": {"name": "adam", "lr": 0.01},
    "training": {"max_epochs": 2, "batch_size": 64, "seed": 0},
    "search": {"num_samples": 1, "scheduler": "fifo"},
    "promotion": {
        "model_name": MODEL,
        "constraints": ["param_count <= 1000"],
        "objectives": [
            {"metric": "test_accuracy", "mode": "max"},
            {"metric": "param_count", "mode": "min"},
        ],
    },
}


class Out:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def podium(capsys):
    """The ``podium`` CLI in this process (``main`` is what the console script calls); only
    ``serve`` runs as a subprocess, as a server would."""
    from orchestrator.cli import main

    def run(*args: str, cwd: Path) -> Out:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Out(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("promo")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = api.run(parse_spec(SPEC), tracking_uri=uri, verbosity=0, workdir=folder)
    return result, MlflowClient(uri, registry_uri=uri), uri, folder


def test_constraint_decides_and_the_card_says_why(sweep):
    result, client, _, _ = sweep
    small = next(r for r in result.rows if str(r.params["model.hidden"]) == "[8]")
    assert result.decision.winner.trial_id == small.trial_id  # the 2410-parameter one breaks it
    assert (
        result.promotion.promoted and result.promotion.champion_version == result.promotion.version
    )
    mv = client.get_model_version_by_alias(MODEL, "champion")
    tags = mv.tags
    assert tags[keys.TAG_SPLIT] == "digits:seed=0" and tags[keys.TAG_DATASET] == "digits"
    assert tags[keys.TAG_OPTIMIZER] == "adam" and tags[keys.TAG_SPEC_HASH]
    assert (
        float(tags[keys.TAG_METRIC_PREFIX + keys.TEST_ACCURACY])
        == small.metrics[keys.TEST_ACCURACY]
    )
    assert tags[keys.TAG_RUN_LINK] == f"runs:/{small.run_id}"
    assert json.loads(tags[keys.TAG_POLICY])["constraints"] == ["param_count <= 1000"]
    assert "no champion yet" in tags[keys.TAG_DECISION] and "Promotion decision" in mv.description


def test_leaderboard_marks_pareto_and_the_broken_constraint(sweep, podium):
    result, _, uri, folder = sweep
    out = podium("leaderboard", SPEC["name"], "--tracking-uri", uri, cwd=folder)
    assert out.returncode == 0, out.stderr
    big = next(r for r in result.rows if str(r.params["model.hidden"]) == "[32]")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith(big.trial_id))
    assert "breaks param_count <= 1000 (got 2410)" in line
    assert "pareto" in out.stdout.splitlines()[0]


def test_promote_with_another_policy_then_rollback_then_serve(sweep, podium, tmp_path):
    result, client, uri, folder = sweep
    first = client.get_model_version_by_alias(MODEL, "champion").version
    # Re-deciding with the sweep's own policy is idempotent: same version, nothing moves.
    out = podium("promote", SPEC["name"], "--tracking-uri", uri, cwd=folder)
    assert out.returncode == 0, out.stderr
    assert "already champion" in out.stdout
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1
    # A policy that prefers the bigger model picks the other trial, whose model is logged from its
    # checkpoint, registered, and promoted over the champion; the old one keeps @previous.
    policy = tmp_path / "policy.yaml"
    policy.write_text("objectives: [{metric: param_count, mode: max}]\n")
    out = podium(
        "promote", SPEC["name"], "--policy", str(policy), "--tracking-uri", uri, cwd=folder
    )
    assert out.returncode == 0, out.stderr
    champ = client.get_model_version_by_alias(MODEL, "champion")
    assert (
        champ.version != first and champ.tags[keys.TAG_METRIC_PREFIX + keys.PARAM_COUNT] == "2410.0"
    )
    assert client.get_model_version_by_alias(MODEL, "previous").version == first
    parent = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {
        keys.PARETO_PLOT_ARTIFACT,
        keys.PARALLEL_PLOT_ARTIFACT,
        keys.CURVES_PLOT_ARTIFACT,
    } <= parent
    # A bad policy file is refused with the key and value.
    policy.write_text("strategy: paretoo\nconstraints: ['size < big']\n")
    out = podium(
        "promote", SPEC["name"], "--policy", str(policy), "--tracking-uri", uri, cwd=folder
    )
    assert (
        out.returncode == 2
        and "policy.strategy" in out.stderr
        and "policy.constraints[0]" in out.stderr
    )
    # Rollback swaps back.
    out = podium("rollback", MODEL, "--tracking-uri", uri, cwd=folder)
    assert out.returncode == 0, out.stderr
    assert client.get_model_version_by_alias(MODEL, "champion").version == first
    _served_champion_matches_its_model(client, uri, folder)


def champion_version(uri: str) -> str:
    return str(MlflowClient(uri, uri).get_model_version_by_alias(MODEL, "champion").version)


def _served_champion_matches_its_model(client, uri: str, folder: Path) -> None:
    import mlflow.pytorch
    import torch

    from workers.tasks import load_task

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "serve",
            f"models:/{MODEL}@champion",
            "--port",
            "0",
            "--tracking-uri",
            uri,
        ],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        assert "ONNX" in line  # the champion is served from its ONNX copy, not its pickle
        url = line.strip().rsplit(" at ", 1)[1]
        data = load_task("digits", 0)
        raw, x = data.pipeline.raw_test[0][:20], data.x_test[:20]  # pixels 0..16; the model's
        req = urllib.request.Request(
            url + "/invocations",
            json.dumps({"inputs": raw.tolist()}).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            got = [a["label"] for a in json.loads(r.read())["predictions"]]
        # The version's PyTorch copy (no recipe: the same model), our own pickle: trusted here.
        # A client, not set_tracking_uri (it exports env vars).
        run_id = MlflowClient(uri, uri).get_model_version(MODEL, champion_version(uri)).run_id
        model = mlflow.pytorch.load_model(f"runs:/{run_id}/{keys.TORCH_MODEL_ARTIFACT}")
        with torch.no_grad():
            want = [str(i) for i in model(x).argmax(1).tolist()]
        assert got == want
    finally:
        proc.terminate()
        proc.wait(30)
