"""`switchpoint.Router`: the sidecar's engine in the application's own process and event loop, a
third front beside gRPC and HTTP. Each call takes the path the gRPC servicer's takes (split
assignment, `Engine.route_off_loop` / `decide_off_loop`, `Engine.chat` / `stream`, observed by
the same `RequestObserver`); results are plain dataclasses, errors the `switchpoint.errors`
hierarchy that the gRPC front maps to its statuses."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Literal, TypedDict, TypeVar, Unpack

from switchpoint.config import Config, default_config_path, load_config, parse_config
from switchpoint.engine.calls import ChatResult as EngineResult
from switchpoint.engine.path import Engine
from switchpoint.library.calls import Call, InFlight
from switchpoint.library.lifecycle import EmbeddedEngine
from switchpoint.library.requests import CallOptions, MessageLike, PriorityName, chat_input
from switchpoint.library.results import (
    ChatResult,
    Decision,
    StreamChunk,
    chat_result_of,
    decision_of,
    delta_chunk,
    final_chunk,
)
from switchpoint.library.stats import Stats, stats_of
from switchpoint.request import ChatInput, new_request_id
from switchpoint.routing import Decision as EngineDecision
from switchpoint.server.observe import Observation
from switchpoint.server.router_servicer import stats_message
from switchpoint.server.status import failure_for

T = TypeVar("T")
ConfigSource = str | Path | Mapping[str, object] | Config | None
State = Literal["new", "starting", "running", "closing", "closed"]

# The names calls are observed under (metrics' `rpc` label, the request log's `rpc` field).
RPC_ROUTE = "library.route"
RPC_CHAT = "library.chat"
RPC_STREAM = "library.stream"


class CallKeywords(TypedDict, total=False):
    """The options of `route`, `chat` and `stream`: see `CallOptions`."""

    model: str | None
    models: Sequence[str]
    stage: str
    strategy: str
    weights: tuple[float, float, float] | None
    tenant: str
    priority: int | PriorityName | None
    capabilities: Sequence[str]
    max_cost_usd: float | None
    hedge: bool
    user: str
    request_id: str
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    stop: Sequence[str]
    cache_bypass: bool
    cache_no_semantic: bool
    cache_threshold: float | None


class Router:
    """Use it as `async with Router.from_config(path) as router:`; safe to share between tasks of
    the event loop that entered it. Calls outside the block, or from another event loop, raise
    RuntimeError saying so."""

    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] | None = None,
        config_path: Path | None = None,
    ) -> None:
        self._config = config
        self._config_path = config_path
        self._environ = os.environ if environ is None else environ
        self._state: State = "new"
        self._embedded: EmbeddedEngine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight = InFlight()
        self._closed: asyncio.Future[None] | None = None

    @classmethod
    def from_config(
        cls, source: ConfigSource = None, *, environ: Mapping[str, str] | None = None
    ) -> Router:
        """A router for a config file's path, already parsed YAML (a mapping), a `Config`, or None
        for the config embedded in the package. Raises ConfigError listing every problem."""
        if source is None:
            path = default_config_path()
            return cls(load_config(path), environ=environ, config_path=path)
        if isinstance(source, Config):
            return cls(source, environ=environ)
        if isinstance(source, Mapping):
            return cls(parse_config(dict(source)), environ=environ)
        path = Path(source)
        return cls(load_config(path), environ=environ, config_path=path)

    @property
    def config(self) -> Config:
        return self._config

    @property
    def state(self) -> State:
        return self._state

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Build and start the engine (managed local models, shared-state leases, cache, metrics
        listener) on the running event loop."""
        if self._state != "new":
            raise RuntimeError(
                f"switchpoint.Router.start(): the router is {self._state}; a Router starts once, "
                "build a new one with Router.from_config(...)"
            )
        self._state = "starting"
        self._loop = asyncio.get_running_loop()
        try:
            embedded = EmbeddedEngine.build(self._config, self._environ)
            await embedded.start()
        except BaseException:
            self._state = "closed"
            raise
        self._embedded = embedded
        self._state = "running"

    async def close(self, grace_s: float | None = None) -> None:
        """Refuse new calls, let those in flight finish within `grace_s` (default
        server.graceful_stop_s), end the rest with DeadlineExceededError, then stop the engine as
        the sidecar stops: leases returned, cache snapshot written, local models stopped.
        Idempotent."""
        if self._closed is not None:
            # A second close (another task, or `async with` after an explicit close) waits for
            # the first to finish.
            await asyncio.shield(self._closed)
            return
        if self._state == "new":
            self._state = "closed"
            return
        if self._state != "running":
            raise RuntimeError("switchpoint.Router.close() while it starts: await start() first")
        # New calls are refused from here on, before the drain is even scheduled.
        self._state = "closing"
        self._closed = asyncio.ensure_future(self._close(grace_s))
        await asyncio.shield(self._closed)

    async def _close(self, grace_s: float | None) -> None:
        grace = self._config.server.graceful_stop_s if grace_s is None else grace_s
        if not await self._in_flight.drained(grace):
            self._in_flight.cut()
            await self._in_flight.drained(None)
        embedded = self._embedded
        assert embedded is not None
        try:
            await embedded.stop()
        finally:
            self._state = "closed"

    def _enter(self) -> tuple[Engine, Call]:
        """The current engine and the call's place among those in flight; RuntimeError when the
        router cannot take calls here."""
        if self._state != "running":
            raise RuntimeError(_unusable(self._state))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not self._loop:
            raise RuntimeError(
                "switchpoint.Router was started on another event loop: call it from the loop "
                "that entered `async with`, or use switchpoint.SyncRouter from plain threads"
            )
        assert self._embedded is not None
        return self._embedded.live(), self._in_flight.add()

    @property
    def _parts(self) -> EmbeddedEngine:
        assert self._embedded is not None
        return self._embedded

    # -- calls --------------------------------------------------------------------------------

    async def route(
        self,
        messages: Iterable[MessageLike],
        *,
        timeout_s: float | None = None,
        **options: Unpack[CallKeywords],
    ) -> Decision:
        """Which model would serve the request and why, admitted by the gate as gRPC Route is;
        no provider is called. Raises the Route refusals of switchpoint.errors."""
        engine, call = self._enter()
        try:
            async with call.cuttable():
                request = self._request(engine, messages, options, RPC_ROUTE)
                parts = self._parts.parts
                with parts.observer.observe(
                    RPC_ROUTE, None, request, calls_providers=False
                ) as seen:
                    request, seen.split = engine.splits.assign(request)
                    decision = await _observed(
                        seen,
                        request,
                        engine.decide_off_loop(request, parts.offload, timeout_s=timeout_s),
                    )
                    seen.decision = decision
                    return decision_of(decision, seen.split)
        finally:
            self._in_flight.remove(call)

    async def chat(
        self,
        messages: Iterable[MessageLike],
        *,
        timeout_s: float | None = None,
        **options: Unpack[CallKeywords],
    ) -> ChatResult:
        """The whole call: route, cache, gate, the chain of models with retries and fallback.
        `timeout_s` bounds it all (DeadlineExceededError)."""
        engine, call = self._enter()
        live = self._parts.live
        parts = self._parts.parts
        try:
            async with call.cuttable():
                request = self._request(engine, messages, options, RPC_CHAT)
                with (
                    live.hold() as engine,
                    parts.observer.observe(RPC_CHAT, None, request) as seen,
                ):
                    request, seen.split = engine.splits.assign(request)
                    seen.decision = await _observed(
                        seen,
                        request,
                        engine.route_off_loop(request, parts.offload, timeout_s=timeout_s),
                    )
                    result = await _observed(
                        seen,
                        request,
                        engine.chat(request, seen.decision, deadline=_deadline(timeout_s)),
                    )
                    seen.result = result
                    return chat_result_of(result, seen.split)
        finally:
            self._in_flight.remove(call)

    async def stream(
        self,
        messages: Iterable[MessageLike],
        *,
        timeout_s: float | None = None,
        **options: Unpack[CallKeywords],
    ) -> AsyncIterator[StreamChunk]:
        """The answer as it is generated: the first chunk carries the decision, the last has
        `done` set and the whole result. Leaving the loop early (break, cancel) closes the
        provider's stream and releases the call's reservation."""
        engine, call = self._enter()
        live = self._parts.live
        parts = self._parts.parts
        try:
            request = self._request(engine, messages, options, RPC_STREAM)
            with (
                live.hold() as engine,
                parts.observer.observe(RPC_STREAM, None, request) as seen,
            ):
                request, seen.split = engine.splits.assign(request)
                async with call.cuttable():
                    routed = await _observed(
                        seen,
                        request,
                        engine.route_off_loop(request, parts.offload, timeout_s=timeout_s),
                    )
                seen.decision = routed
                first = True
                deltas = engine.stream(request, routed, deadline=_deadline(timeout_s))
                async with aclosing(deltas) as items:
                    while True:
                        async with call.cuttable():
                            item = await _observed(seen, request, anext(items, None))
                        if item is None:
                            return
                        if isinstance(item, EngineDecision):
                            # The decision that serves the call, admitted; on the first chunk.
                            seen.decision = item
                            continue
                        if isinstance(item, EngineResult):
                            seen.result = item
                            chunk = final_chunk(chat_result_of(item, seen.split))
                        else:
                            chunk = delta_chunk(item, request.request_id)
                        if first:
                            decision = decision_of(seen.decision, seen.split)
                            chunk = _with_decision(chunk, decision)
                            first = False
                        yield chunk
        finally:
            self._in_flight.remove(call)

    def stats(
        self, *, models: Sequence[str] = (), tenant: str | None = None, stage: str | None = None
    ) -> Stats:
        """GetStats: per-model counters, latency, breakers and queues, budgets left, cache and
        split figures. Raises InvalidRequestError for a model the config lacks."""
        if self._state not in ("running", "closing"):
            raise RuntimeError(_unusable(self._state))
        parts = self._parts.parts
        return stats_of(stats_message(parts.live, parts.observer, models, tenant, stage))

    def _request(
        self,
        engine: Engine,
        messages: Iterable[MessageLike],
        options: CallKeywords,
        rpc: str,
    ) -> ChatInput:
        """The call as the engine reads it; a refusal is observed like the gRPC front's (a request
        line and the metrics say who was turned away and why) and raised."""
        try:
            return chat_input(messages, CallOptions(**options), engine.router.check_message_count)
        except Exception as exc:
            unread = ChatInput(messages=(), request_id=new_request_id())
            observer = self._parts.parts.observer
            with observer.observe(rpc, None, unread, calls_providers=False) as seen:
                failure = failure_for(exc, unread.request_id)
                seen.failed(failure.code, failure.message)
            raise


async def _observed(seen: Observation, request: ChatInput, step: Awaitable[T]) -> T:
    """Await `step`; a failure is recorded on the observation with the status the gRPC front
    would answer, then raised as it is."""
    try:
        return await step
    except Exception as exc:
        failure = failure_for(exc, request.request_id)
        seen.failed(failure.code, failure.message)
        raise


def _with_decision(chunk: StreamChunk, decision: Decision) -> StreamChunk:
    return StreamChunk(
        request_id=chunk.request_id,
        delta=chunk.delta,
        model=chunk.model,
        provider=chunk.provider,
        continued_from=chunk.continued_from,
        decision=decision,
        done=chunk.done,
        result=chunk.result,
    )


def _deadline(timeout_s: float | None) -> float | None:
    return None if timeout_s is None else time.monotonic() + timeout_s


def _unusable(state: State) -> str:
    if state == "new":
        return (
            "switchpoint.Router is not started: use it inside "
            "`async with Router.from_config(...) as router:` (or await router.start() first)"
        )
    if state == "starting":
        return (
            "switchpoint.Router is starting: await start() (or enter `async with`) before "
            "calling it"
        )
    if state == "closing":
        return "switchpoint.Router is closing: it takes no new calls; build a new Router"
    return (
        "switchpoint.Router is closed: make calls inside its `async with` block, or build a new "
        "Router with Router.from_config(...)"
    )


__all__ = ["CallKeywords", "ConfigSource", "Router"]
