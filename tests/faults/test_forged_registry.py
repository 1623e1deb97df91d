"""What the registry holds is data, never code: forged model metadata is refused before any
import, by ``podium serve`` and by a sweep that distils from it; the file each attack would
write never appears."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.integration.test_cli import podium

pytestmark = pytest.mark.slow
EVIL_MODULE = (
    "import pathlib\npathlib.Path({file!r}).write_text('imported')\ndef build(*a, **k): ...\n"
)


def attacks(file: Path) -> dict[str, dict]:
    """arch.json contents an attacker with registry write access could register."""
    shell = ["sh", "-c", f"echo code-ran > {file}"]
    return {
        "subprocess:Popen": {
            "model": {"arch": "subprocess:Popen"},
            "input_shape": shell,
            "num_classes": 0,
        },
        "os:system": {"model": {"arch": "os:system"}, "input_shape": [4], "num_classes": 2},
        "builtins:exec": {
            "model": {"arch": "builtins:exec"},
            "input_shape": [f"open({str(file)!r}, 'w').write('code-ran')"],
            "num_classes": 1,
        },
        "evilmod:build": {"model": {"arch": "evilmod:build"}, "input_shape": [4], "num_classes": 2},
    }


@pytest.fixture
def forged(tmp_path):
    """A store whose registry holds one forged version per attack, and the folder a victim runs
    in (an importable evilmod.py in it, as a shared working folder could have)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment("forged", artifact_location=(tmp_path / "art").as_uri())
    marker = tmp_path / "code-ran.txt"
    (tmp_path / "evilmod.py").write_text(EVIL_MODULE.format(file=str(marker)))
    versions = {}
    for ref, arch in attacks(marker).items():
        run = client.create_run(exp)
        files = tmp_path / "upload" / ref.replace(":", "_")
        files.mkdir(parents=True)
        torch.save({}, files / "state_dict.pt")
        (files / "arch.json").write_text(json.dumps(arch))
        for f in files.iterdir():
            client.log_artifact(run.info.run_id, str(f), "model")
        name = "forged-" + ref.replace(":", "-")
        client.create_registered_model(name)
        mv = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
        versions[ref] = (name, mv.version, run.info.run_id)
    return tmp_path, uri, marker, versions


@pytest.mark.parametrize("ref", ["subprocess:Popen", "os:system", "builtins:exec", "evilmod:build"])
def test_podium_serve_refuses_forged_metadata_before_any_import(forged, ref):
    folder, uri, marker, versions = forged
    name, version, run_id = versions[ref]
    for model_uri in (f"models:/{name}/{version}", f"runs:/{run_id}/model"):
        started = time.monotonic()
        out = podium("serve", model_uri, "--port", "0", "--tracking-uri", uri, cwd=folder)
        assert out.returncode == 2, out.stderr[-2000:]
        assert time.monotonic() - started < 60
        assert f"arch '{ref}' is not a built-in architecture" in out.stderr
        assert "Traceback" not in out.stderr
        assert not marker.exists(), f"{ref} ran code: {marker.read_text()}"


def test_a_bad_input_shape_or_class_count_is_refused_for_a_built_in_arch(tmp_path):
    from workers.models import check_model_metadata

    good = {"model": {"arch": "mlp"}, "input_shape": [4], "num_classes": 2}
    assert check_model_metadata(good) is None
    assert "input_shape" in check_model_metadata({**good, "input_shape": ["sh", "-c"]})
    assert "num_classes" in check_model_metadata({**good, "num_classes": 0})
    assert "num_classes" in check_model_metadata({**good, "num_classes": True})
    # A plug-in the operator named is allowed, by module or by the whole reference.
    plug = {**good, "model": {"arch": "mymodels:bag"}}
    assert check_model_metadata(plug, ["mymodels"]) is None
    assert check_model_metadata(plug, ["mymodels:bag"]) is None
    assert check_model_metadata(plug, ["othermodels"]) is not None


def test_a_sweep_distilling_from_forged_metadata_stops_before_ray_starts(forged):
    folder, uri, marker, versions = forged
    name, version, _ = versions["evilmod:build"]
    teacher = f"models:/{name}/{version}"
    out = podium(
        "run",
        "--tracking-uri",
        uri,
        "--set",
        "search.num_samples=1",
        "--set",
        "training.max_epochs=1",
        "--set",
        f"recipe=[{{step: distill, teacher: '{teacher}', hidden: [8], epochs: 1}}]",
        cwd=folder,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "recipe.teacher: refusing its arch.json: arch 'evilmod:build'" in out.stderr
    assert "Traceback" not in out.stderr
    assert not marker.exists()
