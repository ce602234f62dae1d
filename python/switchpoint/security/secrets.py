"""The one place that says which values of a config no log line may show."""

from __future__ import annotations

from collections.abc import Mapping

from switchpoint.config import Config
from switchpoint.security.keys import TRUSTED_CALLERS, TenantKeys


def config_secrets(
    config: Config, environ: Mapping[str, str], tenant_keys: TenantKeys = TRUSTED_CALLERS
) -> list[str]:
    """Every provider API key, the cache embedder's key and the admin token that are set, and the
    hashes of the tenant API keys (a hash of a short key is worth guessing against)."""
    names = [p.api_key_env for p in config.providers.values() if p.api_key_env]
    names.append(config.admin.token_env)
    if config.cache.embedder.api_key_env:
        names.append(config.cache.embedder.api_key_env)
    values = [environ[name] for name in names if environ.get(name)]
    values.extend(tenant_keys.digests())
    return values
