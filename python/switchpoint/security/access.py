"""What a Router call may do under a tenant API key: the caller is identified from its metadata,
and its request is checked and bound to the key's tenant (and models) before anything is decided.

Status codes, the same rule as the Admin service's token: no credential at all is UNAUTHENTICATED;
a credential that does not grant the call (an unknown key, another tenant, a stage or model the
key does not allow) is PERMISSION_DENIED.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc

from switchpoint.config import StageConfig
from switchpoint.security.keys import TenantKey, TenantKeys
from switchpoint.v1 import router_pb2 as pb

_BEARER = "Bearer "
# Client strings quoted in a refusal are cut to this many characters.
_QUOTED_CHARS = 64


class AccessDenied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _quoted(text: str) -> str:
    return repr(text if len(text) <= _QUOTED_CHARS else f"{text[:_QUOTED_CHARS]}...")


def authenticate(keys: TenantKeys, metadata: Iterable[tuple[str, str | bytes]] | None) -> TenantKey:
    """The key the call presents in `authorization: Bearer <key>`."""
    header = next((value for name, value in metadata or () if name == "authorization"), None)
    if not isinstance(header, str) or not header.startswith(_BEARER):
        raise AccessDenied(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing 'authorization: Bearer <key>' metadata: a tenant API key is required",
        )
    key = keys.find(header[len(_BEARER) :])
    if key is None:
        raise AccessDenied(grpc.StatusCode.PERMISSION_DENIED, "unknown API key")
    return key


def _deny(message: str) -> AccessDenied:
    return AccessDenied(grpc.StatusCode.PERMISSION_DENIED, message)


def _check_tenant(key: TenantKey, field: str, tenant: str) -> None:
    if tenant and tenant != key.tenant:
        raise _deny(
            f"{field}: this API key is for tenant {_quoted(key.tenant)}, not {_quoted(tenant)}"
        )


def _check_stage(key: TenantKey, field: str, stage: str) -> None:
    if key.stages is not None and stage not in key.stages:
        allowed = ", ".join(sorted(key.stages)) or "none"
        named = f"stage {_quoted(stage)}" if stage else "no stage"
        raise _deny(f"{field}: this API key may use stages {allowed}; the request names {named}")


def _check_models(key: TenantKey, field: str, models: Iterable[str]) -> None:
    if key.models is None:
        return
    for i, model in enumerate(models):
        if model not in key.models:
            raise _deny(f"{field}[{i}]: this API key may not use model {_quoted(model)}")


def bind_routing(
    key: TenantKey, routing: pb.RoutingOptions, stages: Mapping[str, StageConfig]
) -> None:
    """Check `routing` against the key and bind it to the key in place: its tenant becomes the
    key's, and a key limited to models makes a request that names none choose among the key's
    models (within its stage, whose strategy it keeps)."""
    _check_tenant(key, "routing.tenant", routing.tenant)
    _check_stage(key, "routing.stage", routing.stage)
    _check_models(key, "routing.models", routing.models)
    routing.tenant = key.tenant
    if key.models is None or routing.models:
        return
    stage = stages.get(routing.stage) if routing.stage else None
    if stage is None:
        routing.models.extend(key.models)
        return
    if all(model in key.models for model in stage.models):
        return
    usable = [model for model in stage.models if model in key.models]
    if not usable:
        raise _deny(
            f"routing.stage: stage {_quoted(routing.stage)} has no model this API key may use"
        )
    routing.models.extend(usable)
    # Naming models moves the request from the stage level to the override level, which would
    # otherwise use the default strategy instead of the stage's.
    if stage.strategy and not routing.strategy and not routing.HasField("weights"):
        routing.strategy = stage.strategy


def bind_feedback(key: TenantKey, request: pb.FeedbackRequest) -> None:
    """A key scores its own tenant's requests only, and only models it may use."""
    _check_tenant(key, "tenant", request.tenant)
    if request.model:
        _check_models(key, "model", [request.model])
    request.tenant = key.tenant


def bind_stats(key: TenantKey, request: pb.StatsRequest) -> None:
    """A key sees its own tenant's counters and budgets only, and the models it may use."""
    _check_tenant(key, "tenant", request.tenant)
    if request.HasField("stage"):
        _check_stage(key, "stage", request.stage)
    _check_models(key, "models", request.models)
    request.tenant = key.tenant
    if key.models is not None and not request.models:
        request.models.extend(key.models)
