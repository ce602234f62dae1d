"""The controls a caller sends as headers, the tenant key it presents, and the decision headers
sent back. The tenant key is checked by the gRPC front's own functions (`security.access`), fed
the headers as gRPC metadata, so both fronts decide access the same way."""

from __future__ import annotations

from collections.abc import Sequence

from switchpoint.config import StageConfig
from switchpoint.engine.path import ChatResult
from switchpoint.routing import Decision
from switchpoint.security.access import authenticate, bind_routing
from switchpoint.security.keys import TenantKeys
from switchpoint.server.http.errors import invalid
from switchpoint.v1 import router_pb2 as pb

PREFIX = "x-switchpoint-"
_PRIORITIES = {
    "realtime": pb.PRIORITY_REALTIME,
    "interactive": pb.PRIORITY_INTERACTIVE,
    "batch": pb.PRIORITY_BATCH,
}
_CACHE = ("bypass", "no-semantic")

RawHeaders = Sequence[tuple[bytes, bytes]]


def metadata(raw: RawHeaders) -> list[tuple[str, str]]:
    """The request's headers as gRPC metadata: lower-case names, latin-1 values."""
    return [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw]


def apply_controls(headers: list[tuple[str, str]], request: pb.ChatRequest) -> None:
    """`x-switchpoint-*` request headers onto the request; a bad value is a 400 naming it."""
    for name, value in headers:
        if not name.startswith(PREFIX):
            continue
        control = name[len(PREFIX) :]
        if control == "stage":
            if request.routing.stage and request.routing.stage != value:
                raise invalid(name, "names another stage than the model does")
            request.routing.stage = value
        elif control == "strategy":
            request.routing.strategy = value
        elif control == "tenant":
            request.routing.tenant = value
        elif control == "priority":
            if value not in _PRIORITIES:
                raise invalid(name, "must be one of realtime, interactive, batch")
            request.routing.priority = _PRIORITIES[value]
        elif control == "cache":
            if value not in _CACHE:
                raise invalid(name, "must be bypass or no-semantic")
            request.cache.bypass = value == "bypass"
            request.cache.no_semantic = value == "no-semantic"
        elif control == "request-id":
            request.request_id = value
        else:
            raise invalid(name, "is not a switchpoint control header")


def bind_tenant(
    keys: TenantKeys,
    headers: list[tuple[str, str]],
    request: pb.ChatRequest,
    stages: dict[str, StageConfig],
) -> None:
    """With tenant keys on: the Bearer key authenticates the call and binds its routing, exactly
    as on gRPC (raises AccessDenied)."""
    key = authenticate(keys, headers)
    bind_routing(key, request.routing, stages)


def decision_headers(decision: Decision | None, request_id: str) -> list[tuple[bytes, bytes]]:
    out = [(b"x-switchpoint-request-id", request_id.encode())]
    if decision is not None:
        out.append((b"x-switchpoint-level", decision.level.name.lower().encode()))
        # The ranked candidates, best first: what the gRPC decision's `candidates` lists.
        ranked = ",".join(candidate.name for candidate in decision.candidates)
        out.append((b"x-switchpoint-candidates", ranked.encode()))
    return out


def result_headers(result: ChatResult) -> list[tuple[bytes, bytes]]:
    attempts = ",".join(
        f"{a.model}:{'ok' if a.ok else a.error_class or 'error'}" for a in result.attempts
    )
    return [
        (b"x-switchpoint-model", result.model.encode()),
        (b"x-switchpoint-provider", result.provider.encode()),
        (b"x-switchpoint-cost-usd", f"{result.cost_usd:.8f}".encode()),
        (b"x-switchpoint-cache", (result.cache.kind if result.cache else "miss").encode()),
        (b"x-switchpoint-attempts", f"{len(result.attempts)} {attempts}".strip().encode()),
    ]
