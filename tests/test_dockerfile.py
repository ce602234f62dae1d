"""The Dockerfile, checked without a container engine: its instructions as Docker parses them,
the files it copies, pinned base images, the volumes a read-only root file system needs (the same
ones the Kubernetes pod mounts), and its HEALTHCHECK and ENTRYPOINT run in this venv, the health
check against a real sidecar."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

from tests.sidecar_harness import routing_config, running_sidecar
from tests.support.manifests import BASE, REPO, pod_spec, render, sidecar_container

PINNED = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
HEALTH_ADDRESS = "127.0.0.1:50051"


def _instructions() -> list[dict[str, Any]]:
    parser = DockerfileParser(fileobj=io.BytesIO((REPO / "Dockerfile").read_bytes()))
    structure: list[dict[str, Any]] = parser.structure
    return [i for i in structure if i["instruction"] != "COMMENT"]


def _stages() -> list[list[dict[str, Any]]]:
    stages: list[list[dict[str, Any]]] = []
    for instruction in _instructions():
        if instruction["instruction"] == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


def _values(instruction: str, stage: list[dict[str, Any]] | None = None) -> list[str]:
    return [i["value"] for i in (stage or _instructions()) if i["instruction"] == instruction]


def _exec_form(text: str) -> list[str]:
    """A JSON-array command; the shell form would need a shell in the image and hide signals."""
    command = json.loads(text)
    assert isinstance(command, list), text
    return [str(part) for part in command]


def _healthcheck() -> list[str]:
    (value,) = _values("HEALTHCHECK")
    return _exec_form(value.split(" CMD ", 1)[1].strip())


def test_every_base_image_is_pinned_by_a_full_digest() -> None:
    stage_names: set[str] = set()
    images = []
    for value in _values("FROM"):
        image, *alias = value.split(" AS ")
        images.append(image.strip())
        stage_names.update(a.strip() for a in alias)
    for value in _values("COPY"):
        source = re.match(r"--from=(\S+)", value)
        if source and source.group(1) not in stage_names:
            images.append(source.group(1))
    assert len(images) >= 3
    assert all(PINNED.match(image) for image in images), images


def test_every_copied_file_exists_in_the_repository() -> None:
    copies = [v for v in _values("COPY") if not v.startswith("--from=")]
    assert copies
    for value in copies:
        *sources, _destination = value.split()
        for source in sources:
            assert (REPO / source).exists(), source


def test_the_wheel_is_built_once_and_the_runtime_stage_only_installs_it() -> None:
    *builders, runtime = _stages()
    build_runs = " ".join(v for stage in builders for v in _values("RUN", stage))
    assert "maturin build --release --locked" in build_runs
    runtime_runs = " ".join(_values("RUN", runtime))
    assert "maturin" not in runtime_runs
    assert "cargo" not in runtime_runs
    assert "--no-index" in runtime_runs
    assert "from=build,source=/wheels" in runtime_runs


def test_the_runtime_user_and_volumes_match_the_pod() -> None:
    runtime = _stages()[-1]
    (user,) = _values("USER", runtime)
    assert user.isdigit()
    assert int(user) != 0
    pods = render(BASE)
    assert pod_spec(pods)["securityContext"]["runAsUser"] == int(user)
    volumes = [PurePosixPath(v) for value in _values("VOLUME", runtime) for v in json.loads(value)]
    # With the root file system read-only these are the only writable places: HOME and TMPDIR
    # must lie in one, and the pod must mount each of them.
    env = " ".join(_values("ENV", runtime))
    for name in ("HOME", "TMPDIR"):
        found = re.search(rf"\b{name}=(\S+)", env)
        assert found, name
        path = PurePosixPath(found.group(1))
        assert any(path == v or v in path.parents for v in volumes), name
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    mounted = {PurePosixPath(m["mountPath"]) for m in sidecar_container(pods)["volumeMounts"]}
    assert set(volumes) <= mounted


def test_the_entrypoint_runs_in_the_venv_and_takes_the_default_arguments() -> None:
    (entrypoint,) = _values("ENTRYPOINT")
    (cmd,) = _values("CMD")
    program, *arguments = _exec_form(entrypoint)
    # The image's PATH finds the package's console script; here the venv's.
    script = Path(sys.executable).parent / program
    assert script.exists(), script
    done = subprocess.run(
        [str(script), *arguments, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    options = [part for part in _exec_form(cmd) if part.startswith("--")]
    assert options
    assert all(option in done.stdout for option in options)
    # The gRPC address CMD binds is published by EXPOSE and dialled by the health check.
    command = _exec_form(cmd)
    port = command[command.index("--grpc-address") + 1].rsplit(":", 1)[1]
    assert port in " ".join(_values("EXPOSE")).split()
    assert HEALTH_ADDRESS.endswith(f":{port}")


async def _run_healthcheck(port: int) -> int:
    command = _healthcheck()
    assert command[0] == "python"
    assert any(HEALTH_ADDRESS in part for part in command)
    argv = [sys.executable] + [
        part.replace(HEALTH_ADDRESS, f"127.0.0.1:{port}") for part in command[1:]
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(proc.wait(), 30)


async def test_the_healthcheck_passes_on_a_serving_sidecar_and_fails_once_it_stops() -> None:
    async with running_sidecar(routing_config()) as running:
        port = running.sidecar.port
        assert await _run_healthcheck(port) == 0
        await running.sidecar.stop(0)
        assert await _run_healthcheck(port) != 0


@pytest.mark.parametrize("instruction", ["ENTRYPOINT", "CMD"])
def test_commands_are_in_exec_form(instruction: str) -> None:
    # Exec form: the sidecar is PID 1 and gets SIGTERM itself, so a stop is graceful.
    (value,) = _values(instruction)
    assert _exec_form(value)
