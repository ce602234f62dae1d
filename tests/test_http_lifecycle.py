"""The HTTP front's life beside gRPC: a refused address fails start-up, a reload applies to the
next HTTP call, a stop drains the calls in flight, and every call leaves the same request line
as a gRPC Chat."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from switchpoint.config import parse_config
from switchpoint.server import create_server
from switchpoint.server.http.serve import bind
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import hang
from tests.sidecar_harness import (
    RunningSidecar,
    one_model_config,
    routing_config,
    running_sidecar,
    write_config,
)
from tests.support.log_records import recorded
from tests.support.serve_process import free_port, serving
from tests.support.serve_process import write_config as write_process_config
from tests.test_tls_rpc import _server_files

ENV = {"T_OAI": OPENAI_TEST_KEY}
HELLO = [{"role": "user", "content": "hello"}]


def _config(server: OpenAIServer) -> dict[str, Any]:
    config = one_model_config(server.base_url, api_key_env="T_OAI", per_mtok=1.0)
    config["models"].append({**config["models"][0], "name": "other"})
    config["routing"] = {"stages": {"chat": {"models": ["gpt"]}}}
    config["telemetry"] = {"request_log_flush_ms": 0}
    return config


def _url(running: RunningSidecar, path: str = "/v1/chat/completions") -> str:
    return f"http://127.0.0.1:{running.sidecar.http_port}{path}"


async def test_an_address_in_use_is_a_start_up_error(openai_server: OpenAIServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        config = parse_config(_config(openai_server))
        with pytest.raises(OSError, match=r"cannot bind HTTP address .* \(server.http_address\)"):
            await create_server(config, "127.0.0.1:0", environ=ENV, http_address=address)


async def test_http_is_off_unless_configured(openai_server: OpenAIServer) -> None:
    async with running_sidecar(_config(openai_server), ENV) as running:
        assert running.sidecar.http_port is None


async def test_a_reload_applies_to_the_next_http_call(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    config = _config(openai_server)
    path = tmp_path / "switchpoint.yaml"
    body = {"model": "switchpoint/stage/chat", "messages": HELLO}
    async with (
        running_sidecar(config, ENV, config_path=path, http=True) as running,
        httpx.AsyncClient() as client,
    ):
        before = await client.post(_url(running), json=body)
        config["routing"] = {"stages": {"chat": {"models": ["other"]}}}
        write_config(path, config)
        assert (await running.sidecar.reload()).ok
        after = await client.post(_url(running), json=body)
    assert before.headers["x-switchpoint-model"] == "gpt"
    assert after.headers["x-switchpoint-model"] == "other"


async def test_a_stop_drains_the_http_call_in_flight(openai_server: OpenAIServer) -> None:
    openai_server.script.push(hang(0.5))
    async with (
        running_sidecar(_config(openai_server), ENV, http=True) as running,
        httpx.AsyncClient() as client,
    ):
        call = asyncio.create_task(
            client.post(_url(running), json={"model": "gpt", "messages": HELLO})
        )
        # Stopped once the call reached the provider.
        for _ in range(500):
            if openai_server.requests:
                break
            await asyncio.sleep(0.01)
        assert openai_server.requests
        await running.sidecar.stop(5.0)
        answer = await call
        with pytest.raises(httpx.ConnectError):
            await client.get(_url(running, "/healthz"))
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"]


async def test_http_calls_leave_the_request_line_of_a_chat(openai_server: OpenAIServer) -> None:
    with recorded("switchpoint.request") as lines:
        async with (
            running_sidecar(_config(openai_server), ENV, http=True) as running,
            httpx.AsyncClient() as client,
        ):
            ok = await client.post(
                _url(running),
                json={"model": "gpt", "messages": HELLO},
                headers={"x-switchpoint-tenant": "acme"},
            )
            refused = await client.post(_url(running), json={"model": "nope", "messages": HELLO})
    assert (ok.status_code, refused.status_code) == (200, 404)
    seen = [(vars(r)["rpc"], vars(r)["tenant"], vars(r)["outcome"]) for r in lines.records]
    assert seen == [("http.chat", "acme", "ok"), ("http.chat", "", "not_found")]
    assert vars(lines.records[0])["request_id"] == ok.json()["id"]


async def test_the_http_front_serves_the_grpc_ports_tls_and_mtls(tmp_path: Path) -> None:
    authority, client_authority = trustme.CA(), trustme.CA()
    client = client_authority.issue_cert("client")
    client_ca = tmp_path / "clients.pem"
    client_authority.cert_pem.write_to_path(str(client_ca))
    tls = {**_server_files(tmp_path, authority), "client_ca_file": str(client_ca)}
    config = {**routing_config(), "server": {"tls": tls, "reload_poll_s": None}}
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    with_certificate = ssl.create_default_context()
    authority.configure_trust(with_certificate)
    client.configure_cert(with_certificate)
    async with running_sidecar(config, http=True) as running:
        url = f"https://127.0.0.1:{running.sidecar.http_port}/healthz"
        async with httpx.AsyncClient(verify=with_certificate) as mutual:
            assert (await mutual.get(url)).status_code == 200
        async with httpx.AsyncClient(verify=trusting) as anonymous:
            with pytest.raises(httpx.HTTPError):
                await anonymous.get(url)
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(url.replace("https:", "http:"))


async def test_serve_takes_http_address_and_announces_it(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    grpc_port, http_port = free_port(), free_port()
    path = tmp_path / "switchpoint.yaml"
    config = _config(openai_server)
    config["server"] = {"grpc_address": f"127.0.0.1:{grpc_port}", "reload_poll_s": None}
    write_process_config(path, config)
    address = f"127.0.0.1:{http_port}"
    async with serving(path, grpc_port, args=["--http-address", address]) as process:
        async with httpx.AsyncClient() as client:
            health = await client.get(f"http://{address}/healthz")
        process.signal(signal.SIGTERM)
        assert await process.exit_code(10.0) == 0
    assert health.json() == {"status": "SERVING"}
    assert any(f"HTTP on {address}" in line for line in process.output)


async def test_connections_to_the_http_socket_send_without_delay() -> None:
    # A response is two writes (head, body); without TCP_NODELAY the body waits for the client's
    # delayed ACK, 40 ms a call on Linux.
    listening = bind("127.0.0.1:0")
    nodelay: list[int] = []

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=listening)
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", listening.getsockname()[1])
        for _ in range(500):
            if nodelay:
                break
            await asyncio.sleep(0.01)
        writer.close()
    assert nodelay == [1]
