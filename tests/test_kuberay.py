"""docs/DEPLOY.md's KubeRay manifest, checked offline: it parses, every pod template is a valid
Kubernetes pod (kubernetes-validate's schemas of the core API), and the settings Podium relies on
are there — the project image everywhere, token auth, Tune's storage in a bucket that Podium's own
validation accepts, the bucket's keys on every pod, no volume shared between pods."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from orchestrator.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "docs" / "DEPLOY.md"
K8S_VERSION = "1.30.0"  # core fields long stable; the schemas kubernetes-validate ships for it


def kuberay_documents() -> list[dict]:
    """The YAML block of DEPLOY.md's KubeRay section, as documents."""
    text = DEPLOY.read_text()
    section = text[text.index("## 3. KubeRay") :]
    section = section[: section.index("\n## ", 1)]
    [block] = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return [d for d in yaml.safe_load_all(block) if d]


@pytest.fixture(scope="module")
def docs() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for doc in kuberay_documents():
        out.setdefault(doc["kind"], []).append(doc)
    return out


def groups(cluster: dict) -> list[tuple[str, dict]]:
    spec = cluster["spec"]
    return [("head", spec["headGroupSpec"])] + [
        (g["groupName"], g) for g in spec["workerGroupSpecs"]
    ]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def secret_keys(container: dict, secrets: dict[str, dict]) -> set[str]:
    """The variables a container gets from the manifest's Secrets (envFrom)."""
    keys: set[str] = set()
    for source in container.get("envFrom", []):
        name = source["secretRef"]["name"]
        assert name in secrets, f"{container['name']} reads Secret {name!r}, not in the manifest"
        keys |= set(secrets[name]["stringData"])
    return keys


def test_the_manifest_is_a_raycluster_of_ray_s_pinned_version(docs):
    [cluster] = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    pinned = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pinned and cluster["spec"]["rayVersion"] == pinned.group(1)
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head runs the driver, not trials
    for name, group in groups(cluster):  # KubeRay takes rayStartParams as strings only
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), name
    for group in cluster["spec"]["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_every_pod_template_and_secret_is_valid_kubernetes(docs):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")  # a dev dependency
    [cluster] = docs["RayCluster"]
    for name, group in groups(cluster):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}}
        pod["spec"] = group["template"]["spec"]
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    for secret in docs["Secret"]:
        kubernetes_validate.validate(secret, K8S_VERSION, strict=True)


def test_every_pod_keeps_tune_s_storage_in_the_bucket_and_shares_no_volume(docs):
    [cluster] = docs["RayCluster"]
    secrets = {s["metadata"]["name"]: s for s in docs["Secret"]}
    images = set()
    for name, group in groups(cluster):
        pod = group["template"]["spec"]
        for volume in pod.get("volumes", []):  # memory for /dev/shm only: nothing shared
            assert set(volume) == {"name", "emptyDir"}, f"{name} mounts {volume}"
        for container in pod["containers"]:
            env = env_of(container)
            images.add(container["image"])
            assert env["RAY_AUTH_MODE"] == "token"
            assert "RAY_AUTH_TOKEN" in secret_keys(container, secrets)
            storage = env["PODIUM_STORAGE_PATH"]
            assert storage.startswith("s3://")
            spec = parse_spec({"name": "x", "cluster": {"storage_path": storage}})
            assert spec.cluster.storage_path == storage
            assert env["AWS_ENDPOINT_URL"].startswith("http")
            assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= secret_keys(container, secrets)
    assert len(images) == 1 and next(iter(images)).endswith("/podium:<tag>")
    assert (
        len(
            {
                env_of(c)["PODIUM_STORAGE_PATH"]
                for _, g in groups(cluster)
                for c in g["template"]["spec"]["containers"]
            }
        )
        == 1
    )


def test_only_the_head_holds_mlflow_credentials(docs):
    [cluster] = docs["RayCluster"]
    secrets = {s["metadata"]["name"]: s for s in docs["Secret"]}
    for name, group in groups(cluster):
        for container in group["template"]["spec"]["containers"]:
            has = "MLFLOW_TRACKING_PASSWORD" in secret_keys(container, secrets)
            assert has == (name == "head"), name
            assert ("MLFLOW_TRACKING_URI" in env_of(container)) == (name == "head"), name
