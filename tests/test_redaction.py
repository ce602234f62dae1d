"""Every secret a config names is redacted from the logs of a running sidecar: provider keys (those
a reload adds too), the cache embedder's key, the admin token, the tenant keys' hashes and any
bearer credential; the set is refreshed on every config load."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from switchpoint.logs import REDACTED, configure_logging, unconfigure_logging
from switchpoint.security.keys import key_digest
from tests.sidecar_harness import routing_config, running_sidecar, write_config
from tests.support.embeddings_server import EmbeddingsServer

PROVIDER_KEY = "sk-provider-Vb7Qm2Lx9Tz4"
EMBEDDER_KEY = "sk-embedder-Wc3Np8Ks1Ry6"
ADMIN_TOKEN = "admin-token-Hd5Fg2Jk7Lm9"
ADDED_KEY = "sk-added-Xe4Ut9Pw2Qo1"
TENANT_KEY = "sp-tenant-Zn6Bv1Cx8Mq3"
ENV = {
    "OAI_KEY": PROVIDER_KEY,
    "EMB_KEY": EMBEDDER_KEY,
    "SWITCHPOINT_ADMIN_TOKEN": ADMIN_TOKEN,
    "ADDED_KEY": ADDED_KEY,
}


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    root = logging.getLogger()
    level = root.level
    # No secrets given here: everything redacted below comes from the sidecar's config.
    configure_logging("INFO", json=False, stream=out)
    yield out
    unconfigure_logging()
    root.setLevel(level)


@pytest.fixture
def embeddings() -> Iterator[EmbeddingsServer]:
    with EmbeddingsServer(dim=8, api_key=EMBEDDER_KEY) as server:
        yield server


def _config(embeddings: EmbeddingsServer) -> dict[str, Any]:
    config = routing_config()
    config["providers"]["openai"]["api_key_env"] = "OAI_KEY"
    config["server"] = {"reload_poll_s": None}
    config["cache"] = {
        "enabled": True,
        "embedder": {
            "kind": "openai",
            "base_url": embeddings.base_url,
            "api_key_env": "EMB_KEY",
            "model": "embed-small",
            "dim": 8,
        },
    }
    config["auth"] = {"keys": [{"sha256": key_digest(TENANT_KEY), "tenant": "acme"}]}
    return config


def _logged(stream: io.StringIO, text: str) -> str:
    """What one line quoting `text` looks like once it is written."""
    start = len(stream.getvalue())
    logging.getLogger("switchpoint.test").warning("quoting %s", text)
    return stream.getvalue()[start:]


async def test_secrets_of_every_config_load_are_redacted(
    stream: io.StringIO, embeddings: EmbeddingsServer, tmp_path: Path
) -> None:
    config = _config(embeddings)
    path = tmp_path / "switchpoint.yaml"
    # Named by no config yet: an ordinary value.
    assert ADDED_KEY in _logged(stream, ADDED_KEY)
    async with running_sidecar(config, ENV, config_path=path) as running:
        for secret in (PROVIDER_KEY, EMBEDDER_KEY, ADMIN_TOKEN, key_digest(TENANT_KEY)):
            line = _logged(stream, f"value={secret}")
            assert secret not in line
            assert f"value={REDACTED}" in line
        # The sidecar holds only the hash of a tenant key: the key is known by its form.
        line = _logged(stream, f"authorization: Bearer {TENANT_KEY}")
        assert TENANT_KEY not in line
        assert f"Bearer {REDACTED}" in line
        assert ADDED_KEY in _logged(stream, ADDED_KEY)
        # A reload adds a provider whose key the running sidecar never had.
        config["providers"]["added"] = {
            "kind": "openai",
            "base_url": "http://127.0.0.1:9/v1",
            "api_key_env": "ADDED_KEY",
        }
        write_config(path, config)
        assert (await running.sidecar.reload()).ok
        assert ADDED_KEY not in _logged(stream, ADDED_KEY)
        assert PROVIDER_KEY not in _logged(stream, PROVIDER_KEY)
    assert PROVIDER_KEY not in stream.getvalue()
    # A stopped sidecar's secrets are withdrawn with it.
    assert PROVIDER_KEY in _logged(stream, PROVIDER_KEY)
