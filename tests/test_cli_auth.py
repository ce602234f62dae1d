"""`switchpoint keys`, and `route` / `stats` sending a tenant API key over TLS to a real sidecar."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
import trustme

from switchpoint.cli import main
from switchpoint.security.keys import key_digest
from tests.sidecar_harness import routing_config, running_sidecar

KEY = "sp-cli-Rk8Tw3Vn6Ys1"


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


def test_keys_hash_prints_the_hash_of_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{KEY}\n"))
    assert main(["keys", "hash"]) == 0
    assert capsys.readouterr().out == f"{key_digest(KEY)}\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["keys", "hash"]) == 1


def test_keys_new_prints_a_key_and_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new", "--tenant", "acme"]) == 0
    key, line = capsys.readouterr().out.splitlines()
    assert len(key) > 40
    assert line == f"{key_digest(key)} acme"


async def test_route_and_stats_send_the_key_over_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1")
    files = {name: tmp_path / name for name in ("ca.pem", "server.pem", "server.key")}
    authority.cert_pem.write_to_path(str(files["ca.pem"]))
    cert.cert_chain_pems[0].write_to_path(str(files["server.pem"]))
    cert.private_key_pem.write_to_path(str(files["server.key"]))
    config = {
        **routing_config(),
        "server": {
            "tls": {"cert_file": str(files["server.pem"]), "key_file": str(files["server.key"])}
        },
        "auth": {"keys": [{"sha256": key_digest(KEY), "tenant": "acme", "models": ["tiny"]}]},
    }
    async with running_sidecar(config) as running:
        address = f"127.0.0.1:{running.sidecar.port}"
        tls = ("--address", address, "--tls-ca", str(files["ca.pem"]), "--json")
        monkeypatch.delenv("SWITCHPOINT_API_KEY", raising=False)
        assert await _cli("route", "hi", *tls) == 1
        assert "authorization: Bearer <key>" in capsys.readouterr().err
        monkeypatch.setenv("CLI_TENANT_KEY", KEY)
        assert await _cli("route", "hi", *tls, "--api-key-env", "CLI_TENANT_KEY") == 0
        assert '"model": "tiny"' in capsys.readouterr().out
        monkeypatch.setenv("SWITCHPOINT_API_KEY", KEY)
        assert await _cli("stats", *tls) == 0
        assert '"model": "tiny"' in capsys.readouterr().out
        # Without the CA the TLS handshake fails: the sidecar cannot be reached.
        assert await _cli("stats", "--address", address, "--timeout", "2") == 2
