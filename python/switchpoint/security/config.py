"""The `auth:` section (tenant API keys), `admin:` and `server.tls`: the config schema only.

Keys are never written in the config: only the SHA-256 of each (hex), so a leaked config or a
config repository grants nothing. Loading the keys (from the config, a file or a variable) and
checking requests against them is `switchpoint.security.keys`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AdminConfig(_Strict):
    # The variable holding the bearer token for the Admin service; unset -> Admin refuses calls.
    token_env: str = "SWITCHPOINT_ADMIN_TOKEN"


class TenantKeyConfig(_Strict):
    """One API key: its hash, the tenant it speaks for, and optionally what it may use."""

    sha256: Sha256Hex
    tenant: str
    # None: every stage (and a request without one). A list: requests must name one of them.
    stages: list[str] | None = None
    # None: every model. A list: the only models the key's requests may name or be routed to.
    models: Annotated[list[str], Field(min_length=1)] | None = None

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class AuthConfig(_Strict):
    """Tenant API keys for the Router service. With none of the three sources set the sidecar
    trusts its callers (any caller may name any tenant); with any set, every Router call needs
    `authorization: Bearer <key>` and the tenant comes from the key."""

    keys: list[TenantKeyConfig] = Field(default_factory=list)
    # A file of key lines (`<sha256> <tenant> [stages=a,b] [models=x,y]`), re-read on reload.
    keys_file: str | None = None
    # An environment variable holding key lines (newline- or ';'-separated).
    keys_env: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.keys) or self.keys_file is not None or self.keys_env is not None

    def tenants(self) -> frozenset[str]:
        """The tenants the keys written in the config speak for (keys from a file or a variable
        are only known once loaded: `TenantKeys.tenants`)."""
        return frozenset(key.tenant for key in self.keys)


class TlsConfig(_Strict):
    """TLS for the gRPC port. The files are re-read on every reload (SIGHUP, Admin, a config
    change): new connections get the new certificate, open ones keep theirs."""

    # PEM: the server certificate (chain) and its private key.
    cert_file: str
    key_file: str
    # PEM CA bundle: when set, clients must present a certificate it signed (mTLS).
    client_ca_file: str | None = None
