"""Tenant API keys loaded from every source `auth:` names, and the lookup of a presented key.

A presented key is hashed (SHA-256) and looked up by its digest: the lookup's timing depends on the
digest, which a caller cannot steer towards a stored one without a preimage, and the match is then
confirmed with `hmac.compare_digest`. No key itself is ever held by the sidecar.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from switchpoint.config import Config
from switchpoint.errors import ConfigError
from switchpoint.security.config import TenantKeyConfig

_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")


def key_digest(key: str) -> str:
    """The hex SHA-256 of a key, as `auth:` expects it (`switchpoint keys hash` prints it)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TenantKey:
    digest: bytes
    tenant: str
    # None: no restriction.
    stages: frozenset[str] | None
    models: tuple[str, ...] | None


class TenantKeys:
    """The keys of one config load. `enabled` is False in trusted-caller mode (no key source
    configured); True with no key at all refuses every call (a key file that is empty)."""

    def __init__(self, keys: Iterable[TenantKey] = (), *, enabled: bool = False) -> None:
        self.enabled = enabled
        self._by_digest = {key.digest: key for key in keys}

    def __len__(self) -> int:
        return len(self._by_digest)

    def find(self, presented: str) -> TenantKey | None:
        digest = hashlib.sha256(presented.encode()).digest()
        key = self._by_digest.get(digest)
        if key is None or not hmac.compare_digest(key.digest, digest):
            return None
        return key

    def tenants(self) -> frozenset[str]:
        """Every tenant a loaded key speaks for: the tenants requests can be made as."""
        return frozenset(key.tenant for key in self._by_digest.values())

    def digests(self) -> list[str]:
        """The hex digests, for redaction: a digest of a short key is worth guessing against."""
        return [key.digest.hex() for key in self._by_digest.values()]


TRUSTED_CALLERS = TenantKeys()


def _parse_line(line: str, where: str) -> tuple[TenantKeyConfig | None, list[str]]:
    """`<sha256> <tenant> [stages=a,b] [models=x,y]`; None for a blank or comment line."""
    words = line.split("#", 1)[0].split()
    if not words:
        return None, []
    if len(words) < 2:
        return None, [f"{where}: expected '<sha256> <tenant> [stages=a,b] [models=x,y]'"]
    digest, tenant, *options = words
    if not _HEX_DIGEST.match(digest):
        return None, [f"{where}: the first word must be a SHA-256 in hex (64 characters)"]
    lists: dict[str, list[str]] = {}
    errors: list[str] = []
    for option in options:
        name, sep, value = option.partition("=")
        if not sep or name not in ("stages", "models") or name in lists:
            errors.append(f"{where}: unexpected '{option[:40]}' (stages=a,b or models=x,y)")
            continue
        lists[name] = [v for v in value.split(",") if v]
    if errors:
        return None, errors
    if lists.get("models") == []:
        return None, [f"{where}: models= must name at least one model"]
    key = TenantKeyConfig(
        sha256=digest, tenant=tenant, stages=lists.get("stages"), models=lists.get("models")
    )
    return key, []


def _parse_lines(
    text: str, source: str, separators: str
) -> tuple[list[tuple[str, TenantKeyConfig]], list[str]]:
    keys: list[tuple[str, TenantKeyConfig]] = []
    errors: list[str] = []
    for number, line in enumerate(re.split(separators, text), start=1):
        where = f"{source} line {number}"
        key, line_errors = _parse_line(line, where)
        errors.extend(line_errors)
        if key is not None:
            keys.append((where, key))
    return keys, errors


def _sources(
    config: Config, environ: Mapping[str, str]
) -> tuple[list[tuple[str, TenantKeyConfig]], list[str]]:
    """Every key with where it was given, for messages that let the operator find it."""
    auth = config.auth
    found = [(f"auth.keys[{i}]", key) for i, key in enumerate(auth.keys)]
    errors: list[str] = []
    if auth.keys_file is not None:
        try:
            text = Path(auth.keys_file).read_text(encoding="utf-8")
        except OSError as exc:
            errors.append(f"auth.keys_file: cannot read {auth.keys_file}: {exc.strerror}")
        else:
            keys, file_errors = _parse_lines(text, "auth.keys_file", r"\n")
            errors.extend(file_errors)
            found.extend(keys)
    if auth.keys_env is not None:
        lines = environ.get(auth.keys_env)
        if lines is None:
            # Never fall back to trusting callers because a variable went missing.
            errors.append(f"auth.keys_env: variable {auth.keys_env} is not set")
        else:
            keys, env_errors = _parse_lines(lines, "auth.keys_env", r"[\n;]")
            errors.extend(env_errors)
            found.extend(keys)
    return found, errors


def _check_key(config: Config, where: str, key: TenantKeyConfig) -> list[str]:
    # A key written in the config is named by its path, one from a file or variable by its line.
    stages, models = (
        (f"{where}.stages", f"{where}.models")
        if where.startswith("auth.keys[")
        else (f"{where} stages=", f"{where} models=")
    )
    errors = [
        f"{stages}: unknown stage '{stage}'"
        for stage in key.stages or ()
        if stage not in config.routing.stages
    ]
    errors.extend(
        f"{models}: unknown model '{model}'"
        for model in key.models or ()
        if config.model_named(model) is None
    )
    return errors


def load_tenant_keys(config: Config, environ: Mapping[str, str]) -> TenantKeys:
    """The keys `config.auth` names, read now (a reload reads the file and variable again).
    Raises ConfigError listing every problem: a bad line, an unknown stage or model, a hash given
    twice, a missing file or variable."""
    if not config.auth.enabled:
        return TRUSTED_CALLERS
    found, errors = _sources(config, environ)
    seen: dict[str, str] = {}
    keys: list[TenantKey] = []
    for where, key in found:
        errors.extend(_check_key(config, where, key))
        if key.sha256 in seen:
            errors.append(f"{where}: the same key hash as {seen[key.sha256]}")
            continue
        seen[key.sha256] = where
        keys.append(
            TenantKey(
                digest=bytes.fromhex(key.sha256),
                tenant=key.tenant,
                stages=frozenset(key.stages) if key.stages is not None else None,
                models=tuple(key.models) if key.models is not None else None,
            )
        )
    if errors:
        raise ConfigError(errors, "auth")
    return TenantKeys(keys, enabled=True)
