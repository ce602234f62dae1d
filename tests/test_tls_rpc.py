"""TLS and mTLS on the gRPC port with a private CA, certificates replaced by a reload without a
restart, and the warning for plaintext bound beyond loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

from switchpoint.config import parse_config
from switchpoint.errors import ConfigError
from switchpoint.server import create_server
from switchpoint.v1 import router_pb2 as pb
from switchpoint.v1 import router_pb2_grpc
from tests.sidecar_harness import routing_config, running_sidecar, user, write_config
from tests.support.log_records import recorded
from tests.support.waiting import wait_until

HOST = "127.0.0.1"


def _server_files(tmp_path: Path, authority: trustme.CA) -> dict[str, str]:
    cert = authority.issue_cert(HOST, "localhost")
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    return {"cert_file": str(cert_file), "key_file": str(key_file)}


def _config(tls: dict[str, Any]) -> dict[str, Any]:
    return {**routing_config(), "server": {"tls": tls, "reload_poll_s": None}}


def _trusting(
    authority: trustme.CA, client: trustme.LeafCert | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=authority.cert_pem.bytes(),
        private_key=client.private_key_pem.bytes() if client else None,
        certificate_chain=client.cert_chain_pems[0].bytes() if client else None,
    )


async def _route_over(port: int, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """A new connection's first Route: OK, or the code it failed with."""
    target = f"{HOST}:{port}"
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials)
    )
    async with channel:
        stub = router_pb2_grpc.RouterStub(channel)
        try:
            await stub.Route(pb.RouteRequest(messages=user("hi")), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_tls_call_succeeds_with_the_ca_and_fails_without(tmp_path: Path) -> None:
    authority, stranger = trustme.CA(), trustme.CA()
    config = _config(_server_files(tmp_path, authority))
    async with running_sidecar(config, credentials=_trusting(authority)) as running:
        decision = await running.stub.Route(pb.RouteRequest(messages=user("hi")))
        assert decision.model
        port = running.sidecar.port
        assert await _route_over(port, _trusting(stranger)) == grpc.StatusCode.UNAVAILABLE
        assert await _route_over(port, None) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_accepts_only_clients_the_client_ca_signed(tmp_path: Path) -> None:
    authority, client_authority, stranger = trustme.CA(), trustme.CA(), trustme.CA()
    client_ca = tmp_path / "clients.pem"
    client_authority.cert_pem.write_to_path(str(client_ca))
    tls = {**_server_files(tmp_path, authority), "client_ca_file": str(client_ca)}
    client = client_authority.issue_cert("client.example")
    async with running_sidecar(_config(tls), credentials=_trusting(authority, client)) as running:
        assert (await running.stub.Route(pb.RouteRequest(messages=user("hi")))).model
        port = running.sidecar.port
        assert await _route_over(port, _trusting(authority)) == grpc.StatusCode.UNAVAILABLE
        impostor = stranger.issue_cert("client.example")
        assert (
            await _route_over(port, _trusting(authority, impostor)) == grpc.StatusCode.UNAVAILABLE
        )
        assert await _route_over(port, _trusting(authority, client)) == grpc.StatusCode.OK


async def test_a_reload_serves_the_new_certificate_to_new_connections(tmp_path: Path) -> None:
    old_authority, new_authority = trustme.CA(), trustme.CA()
    tls = _server_files(tmp_path, old_authority)
    path = tmp_path / "switchpoint.yaml"
    async with running_sidecar(
        _config(tls), config_path=path, credentials=_trusting(old_authority)
    ) as running:
        # A connection opened before the reload.
        assert (await running.stub.Route(pb.RouteRequest(messages=user("hi")))).model
        port = running.sidecar.port
        # Same file names, new contents (a certificate renewed in place), then SIGHUP/Admin.
        _server_files(tmp_path, new_authority)
        result = await running.sidecar.reload()
        assert result.ok, result.errors
        assert await _route_over(port, _trusting(new_authority)) == grpc.StatusCode.OK
        assert await _route_over(port, _trusting(old_authority)) == grpc.StatusCode.UNAVAILABLE
        # The open connection keeps the certificate it was made with.
        assert (await running.stub.Route(pb.RouteRequest(messages=user("hi")))).model


async def test_a_bad_certificate_or_a_tls_switch_is_refused_on_reload(tmp_path: Path) -> None:
    authority = trustme.CA()
    tls = _server_files(tmp_path, authority)
    path = tmp_path / "switchpoint.yaml"
    config = _config(tls)
    async with running_sidecar(
        config, config_path=path, credentials=_trusting(authority)
    ) as running:
        other_key = tmp_path / "other.key"
        trustme.CA().issue_cert(HOST).private_key_pem.write_to_path(str(other_key))
        write_config(path, _config({**tls, "key_file": str(other_key)}))
        result = await running.sidecar.reload()
        assert not result.ok
        assert result.errors[0].startswith(
            "server.tls.cert_file: not a certificate matching server.tls.key_file"
        )
        write_config(path, {**config, "server": {"reload_poll_s": None}})
        result = await running.sidecar.reload()
        assert result.errors == ("server.tls: turning TLS on or off needs a restart",)
        # Still serving the certificate it had.
        assert await _route_over(running.sidecar.port, _trusting(authority)) == grpc.StatusCode.OK


async def test_a_missing_certificate_file_stops_the_start(tmp_path: Path) -> None:
    config = parse_config(
        _config({"cert_file": str(tmp_path / "none.pem"), "key_file": str(tmp_path / "none.key")})
    )
    with pytest.raises(ConfigError) as caught:
        await create_server(config, "127.0.0.1:0", environ={})
    assert caught.value.errors[0].startswith("server.tls.cert_file: cannot read")


async def test_plaintext_beyond_loopback_is_warned_about_at_start(tmp_path: Path) -> None:
    with recorded("switchpoint.server") as lines:
        sidecar, _ = await create_server(parse_config(routing_config()), "0.0.0.0:0", environ={})
        await sidecar.start()
        await sidecar.stop(0)
        loopback, _ = await create_server(parse_config(routing_config()), "127.0.0.1:0", environ={})
        await loopback.start()
        await loopback.stop(0)
    warnings = [r.getMessage() for r in lines.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].startswith("PLAINTEXT gRPC on non-loopback address 0.0.0.0:0")


async def test_a_certificate_renewed_in_place_is_taken_without_a_signal(tmp_path: Path) -> None:
    old_authority, new_authority = trustme.CA(), trustme.CA()
    config = routing_config()
    config["server"] = {"tls": _server_files(tmp_path, old_authority), "reload_poll_s": 0.05}
    path = tmp_path / "switchpoint.yaml"
    async with running_sidecar(
        config, config_path=path, credentials=_trusting(old_authority)
    ) as running:
        _server_files(tmp_path, new_authority)
        await wait_until(lambda: running.sidecar.config_version >= 2, timeout_s=5)
        port = running.sidecar.port
        assert await _route_over(port, _trusting(new_authority)) == grpc.StatusCode.OK
