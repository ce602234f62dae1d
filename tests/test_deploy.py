"""deploy/kubernetes: the base and the shared-redis overlay render with kustomize, every object
matches the Kubernetes OpenAPI schemas (strict: an unknown field is an error), and the pod keeps
the promises docs/operations.md makes: gRPC probes on health entries the sidecar really serves,
a locked-down security context, sized resources, a PDB over the pods, a config that loads."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import grpc
import kubernetes_validate
import pytest
import trustme
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchpoint.cli import main
from tests.sidecar_harness import routing_config, running_sidecar
from tests.support.manifests import (
    BASE,
    SHARED_REDIS,
    one,
    pod_spec,
    render,
    secret_text,
    sidecar_config,
    sidecar_container,
)

# The oldest Kubernetes the manifests are for: the probes' `mode: TLS` arrived in 1.37.
KUBERNETES_VERSION = "1.37"
GRPC_PORT = 50051


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(BASE)


@pytest.fixture(scope="module")
def shared_redis() -> list[dict[str, Any]]:
    return render(SHARED_REDIS)


@pytest.mark.parametrize("directory", [BASE, SHARED_REDIS], ids=["base", "shared-redis"])
def test_every_rendered_object_matches_the_kubernetes_schemas(directory: Path) -> None:
    objects = render(directory)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "ConfigMap", "Secret", "PodDisruptionBudget"} <= kinds
    for item in objects:
        kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_refuses_a_misspelt_field(base: list[dict[str, Any]]) -> None:
    # The check above is only worth something if a typo in a probe fails it.
    deployment = one(base, "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    probe = broken["spec"]["template"]["spec"]["initContainers"][0]["readinessProbe"]
    probe["grpc"]["sevrice"] = probe["grpc"].pop("service")
    with pytest.raises(kubernetes_validate.ValidationError, match="sevrice"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def _probes(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {kind: container[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}


async def test_the_probes_ask_grpc_health_entries_the_sidecar_serves(
    base: list[dict[str, Any]],
) -> None:
    probes = _probes(sidecar_container(base))
    assert all(probe["grpc"]["port"] == GRPC_PORT for probe in probes.values())
    # TLS because the config turns server.tls on (the kubelet does not verify the certificate).
    assert sidecar_config(base)["server"]["tls"]
    assert all(probe["grpc"]["mode"] == "TLS" for probe in probes.values())
    assert sidecar_config(base)["server"]["grpc_address"].endswith(f":{GRPC_PORT}")
    async with running_sidecar(routing_config()) as running:
        health = health_pb2_grpc.HealthStub(running.channel)
        for kind, probe in probes.items():
            service = probe["grpc"].get("service", "")
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, (kind, service)
        await running.sidecar.stop(0)
        # Stopping turns the probed entries NOT_SERVING or closes the port: the pod leaves the
        # Service's endpoints before its calls end.
        for probe in probes.values():
            request = health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", ""))
            try:
                answer = await health.Check(request, timeout=2)
            except grpc.aio.AioRpcError:
                continue
            assert answer.status != health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("directory", [BASE, SHARED_REDIS], ids=["base", "shared-redis"])
def test_every_container_is_locked_down_and_sized(directory: Path) -> None:
    objects = render(directory)
    for workload in (o for o in objects if o["kind"] in ("Deployment", "StatefulSet")):
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, container["name"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"], container["name"]
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), container["name"]
            assert "memory" in resources["limits"], container["name"]


def test_the_sidecar_runs_as_the_image_user_with_its_volumes_writable(
    base: list[dict[str, Any]],
) -> None:
    spec = pod_spec(base)
    container = sidecar_container(base)
    # A native sidecar: started before the app and stopped after it.
    assert container["restartPolicy"] == "Always"
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["securityContext"]["fsGroup"] == 10001
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    for path in ("/var/lib/switchpoint/cache", "/var/lib/switchpoint/models", "/tmp"):
        assert mounts[path] in empty_dirs, path


def _mounted(container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount a file path of the config lies under."""
    target = PurePosixPath(path)
    for mount in container["volumeMounts"]:
        mount_path = PurePosixPath(mount["mountPath"])
        if target == mount_path or mount_path in target.parents:
            found: dict[str, Any] = mount
            return found
    raise AssertionError(f"{path} is on no volume of the sidecar")


def test_the_config_keys_and_tls_come_from_their_config_map_and_secrets(
    base: list[dict[str, Any]],
) -> None:
    container = sidecar_container(base)
    config = sidecar_config(base)
    volumes = {v["name"]: v for v in pod_spec(base)["volumes"]}
    # --config names the file the ConfigMap is mounted as.
    config_arg = container["args"][container["args"].index("--config") + 1]
    assert volumes[_mounted(container, config_arg)["name"]]["configMap"]
    # Tenant keys and the TLS pair from Secrets; the tenant keys' Secret is generated here.
    keys_volume = volumes[_mounted(container, config["auth"]["keys_file"])["name"]]
    keys_secret = one(base, "Secret", keys_volume["secret"]["secretName"])
    assert PurePosixPath(config["auth"]["keys_file"]).name in keys_secret["data"]
    for field in ("cert_file", "key_file"):
        tls_volume = volumes[_mounted(container, config["server"]["tls"][field])["name"]]
        assert tls_volume["secret"]["secretName"] == "switchpoint-tls"
    # Snapshots on a writable volume.
    assert not _mounted(container, config["cache"]["directory"]).get("readOnly", False)
    # Every provider key variable the config names comes from the generated provider Secret.
    provider_secret_name = container["envFrom"][0]["secretRef"]["name"]
    provider_secret = one(base, "Secret", provider_secret_name)
    wanted = {p["api_key_env"] for p in config["providers"].values() if "api_key_env" in p}
    assert wanted <= provider_secret["data"].keys()


def test_the_mounted_config_passes_config_check(
    base: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The config as the pod reads it, with its mount points moved under tmp_path: the ConfigMap's
    text, the generated tenant-keys Secret, a certificate pair of the kind the TLS Secret holds."""
    container = sidecar_container(base)
    config_text = one(base, "ConfigMap", "switchpoint-config")["data"]["config.yaml"]
    for mount in container["volumeMounts"]:
        (tmp_path / mount["mountPath"].lstrip("/")).mkdir(parents=True, exist_ok=True)
    config_text = config_text.replace("/etc/", f"{tmp_path}/etc/").replace(
        "/var/lib/", f"{tmp_path}/var/lib/"
    )
    config = yaml.safe_load(config_text)
    keys_file = Path(config["auth"]["keys_file"])
    keys_secret = one(base, "Secret", "switchpoint-tenant-keys")
    keys_file.write_text(secret_text(keys_secret, keys_file.name))
    cert = trustme.CA().issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(config["server"]["tls"]["cert_file"])
    cert.private_key_pem.write_to_path(config["server"]["tls"]["key_file"])
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config_text)
    assert main(["config", "check", str(config_file)]) == 0, capsys.readouterr().err
    assert "3 models" in capsys.readouterr().out


def test_the_disruption_budget_covers_the_pods_and_leaves_one_up(
    base: list[dict[str, Any]],
) -> None:
    deployment = one(base, "Deployment")
    budget = one(base, "PodDisruptionBudget")
    selector = budget["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert 1 <= budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    # A rollout never takes a ready pod away before its replacement is ready.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert sidecar_config(base)["server"]["graceful_stop_s"] < grace


def test_the_overlay_points_shared_state_at_its_redis(
    base: list[dict[str, Any]], shared_redis: list[dict[str, Any]]
) -> None:
    config = sidecar_config(shared_redis)
    url = config["shared_state"]["redis_url"]
    service = one(shared_redis, "Service", "switchpoint-redis")
    port = service["spec"]["ports"][0]["port"]
    assert url.startswith(f"redis://{service['metadata']['name']}:{port}/")
    redis = one(shared_redis, "StatefulSet", "switchpoint-redis")
    assert (
        service["spec"]["selector"].items()
        <= redis["spec"]["template"]["metadata"]["labels"].items()
    )
    # The overlay's config is the base's with shared_state added, nothing else.
    without_shared = {k: v for k, v in config.items() if k != "shared_state"}
    assert without_shared == sidecar_config(base)
    assert "shared_state" not in sidecar_config(base)
    # Redis admits the sidecars' pods.
    policy = one(shared_redis, "NetworkPolicy", "switchpoint-redis")
    admitted = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    pod_labels = one(shared_redis, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert admitted.items() <= pod_labels.items()
