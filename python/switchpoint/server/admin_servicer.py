"""The switchpoint.v1.Admin servicer: budget state, run-time budget changes and config reloads,
behind a bearer token. Without a configured token the service refuses every call."""

from __future__ import annotations

import hmac
import math
from collections.abc import Awaitable, Callable
from typing import get_args

import grpc

from switchpoint.config import ScopeKey
from switchpoint.engine.path import Engine
from switchpoint.limits import shown
from switchpoint.quota.shared import MAX_SHARED_LIMIT_USD, REDIS_ERRORS
from switchpoint.quota.shared.redis_errors import describe, raise_if_cancelled
from switchpoint.reload import ReloadResult
from switchpoint.v1 import admin_pb2 as pb
from switchpoint.v1 import admin_pb2_grpc

ServicerContext = grpc.aio.ServicerContext[object, object]


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        engine: Callable[[], Engine],
        token: str | None,
        reload: Callable[[], Awaitable[ReloadResult]] | None = None,
    ) -> None:
        self._engine = engine
        self._token = token
        self._reload = reload

    async def _authorize(self, context: ServicerContext) -> None:
        if not self._token:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "admin is disabled: set admin.token_env to a variable holding a token",
            )
        metadata = dict(context.invocation_metadata() or ())
        header = str(metadata.get("authorization", ""))
        if not header.startswith("Bearer "):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata"
            )
        # Constant-time comparison: the token must not leak through response timing.
        if not hmac.compare_digest(header.removeprefix("Bearer ").encode(), self._token.encode()):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "wrong admin token")

    async def GetBudgets(
        self, request: pb.GetBudgetsRequest, context: ServicerContext
    ) -> pb.Budgets:
        await self._authorize(context)
        return self._budgets(request.name, request.tenant)

    async def SetBudget(self, request: pb.SetBudgetRequest, context: ServicerContext) -> pb.Budgets:
        await self._authorize(context)
        engine = self._engine()
        if not math.isfinite(request.limit_usd) or request.limit_usd < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "limit_usd: must be a finite number >= 0"
            )
        if request.name not in {b.name for b in engine.config.budgets}:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"name: no budget named '{request.name}' in the config"
            )
        unknown = sorted(set(request.scope) - set(get_args(ScopeKey)))
        if unknown:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"scope: '{shown(unknown[0])}' is not one of {', '.join(get_args(ScopeKey))}",
            )
        if engine.shares_budgets and request.limit_usd > MAX_SHARED_LIMIT_USD:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"limit_usd: must be <= {MAX_SHARED_LIMIT_USD:.2f} for a budget shared through "
                "Redis",
            )
        try:
            await engine.gate.change_budget_limit(
                request.name, request.limit_usd, sorted(request.scope.items())
            )
        except REDIS_ERRORS as exc:
            raise_if_cancelled(exc)
            # Changed on this replica alone, the limit would not hold: nothing is changed.
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"shared_state: Redis is unreachable ({describe(exc)}); the limit was not changed",
            )
        return self._budgets(request.name, "")

    async def ReloadConfig(
        self, request: pb.ReloadConfigRequest, context: ServicerContext
    ) -> pb.ReloadConfigResponse:
        await self._authorize(context)
        if self._reload is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server cannot reload")
        result = await self._reload()
        return pb.ReloadConfigResponse(
            ok=result.ok,
            errors=result.errors,
            version=result.version,
            warnings=result.warnings,
        )

    async def DeleteCacheEntries(
        self, request: pb.DeleteCacheEntriesRequest, context: ServicerContext
    ) -> pb.DeleteCacheEntriesResponse:
        await self._authorize(context)
        front = self._engine().cache
        if front is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the cache is not enabled")
        deleted = await front.cache.delete_tenant(request.tenant)
        return pb.DeleteCacheEntriesResponse(deleted=deleted)

    def _budgets(self, name: str, tenant: str) -> pb.Budgets:
        engine = self._engine()
        gate = engine.gate
        out = pb.Budgets(degraded_reason=engine.shared_state_problem())
        for instance in gate.budget_instances():
            scope: dict[str, str] = dict(instance.scope)
            if name and instance.rule.name != name:
                continue
            if tenant and scope.get("tenant") != tenant:
                continue
            state = gate.gate.budget_state(instance.gate_id, gate.now())
            out.budgets.append(
                pb.BudgetState(
                    name=instance.rule.name,
                    scope=scope,
                    window=instance.rule.window,
                    limit_usd=state.limit_usd,
                    spent_usd=state.spent_usd,
                    reserved_usd=state.reserved_usd,
                    remaining_usd=state.remaining_usd,
                    window_start=state.window_start_s,
                    window_end=state.window_end_s,
                    shared=engine.shares_budgets,
                )
            )
        return out
