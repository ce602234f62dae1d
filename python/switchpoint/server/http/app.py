"""The ASGI application: paths and methods, the body read under its limit, and the chat call
served by the live engine exactly as the gRPC Chat and ChatStream calls are."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from functools import partial
from typing import Any

from switchpoint.config import BUILTIN_STRATEGIES
from switchpoint.engine.path import Engine
from switchpoint.errors import RequestTooLargeError
from switchpoint.offload import Offload
from switchpoint.reload import LiveEngine
from switchpoint.request import ChatInput, new_request_id
from switchpoint.security.access import authenticate
from switchpoint.server import convert
from switchpoint.server.http import sse
from switchpoint.server.http.errors import ErrorAnswer, HttpError, error_answer
from switchpoint.server.http.headers import (
    apply_controls,
    bind_tenant,
    decision_headers,
    metadata,
    result_headers,
)
from switchpoint.server.http.wire import (
    AUTO_MODEL,
    STAGE_PREFIX,
    STRATEGY_PREFIX,
    ChatCall,
    ModelNames,
    completion,
    parse_chat,
)
from switchpoint.server.observe import Observation, RequestObserver

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

RPC = "http.chat"
_JSON = (b"content-type", b"application/json")
# Bodies larger than this are parsed on a worker thread: json.loads of a megabyte holds the event
# loop (and every other call on it) for milliseconds.
PARSE_OFF_LOOP_BYTES = 64 * 1024
_ROUTES = {
    "/v1/chat/completions": "POST",
    "/v1/models": "GET",
    "/healthz": "GET",
}


class HttpFront:
    """Reads the live engine per request, so a config reload applies to the next call."""

    def __init__(
        self, engine: LiveEngine, observer: RequestObserver, offload: Offload | None = None
    ) -> None:
        self._engine = engine
        self._observer = observer
        self._offload = offload or Offload()
        # The health entries by service name, as the gRPC health service answers them (the
        # sidecar sets it): "" is SERVING between start and the beginning of a stop.
        self.health: Callable[[], Mapping[str, str]] = dict
        self._in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        wanted = _ROUTES.get(path)
        if wanted is None:
            await _send_error(send, error_answer(_unknown_path(path)))
            return
        if method != wanted:
            failure = HttpError(405, f"{path} takes {wanted}, not {method[:16]}", code="method")
            await _send_error(send, error_answer(failure))
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            if path == "/healthz":
                await self._health(tracked)
            elif path == "/v1/models":
                await _send_json(tracked, 200, self._models(metadata(scope["headers"])))
            else:
                await self._chat(scope, receive, tracked)
        except Exception as exc:
            # Refusals, and anything unexpected (logged by `failure_for`, answered with the
            # request id only): OpenAI's error body, never the server's own error page.
            if started:
                raise
            await _send_error(send, error_answer(exc))

    async def _health(self, send: Send) -> None:
        view = self.health()
        status = view.get("", "NOT_SERVING")
        if status == "SERVING":
            await _send_json(send, 200, {"status": status})
            return
        await _send_json(send, 503, {"status": status, "services": dict(view)})

    def _models(self, headers: list[tuple[str, str]]) -> dict[str, object]:
        build = self._engine.build
        config = build.engine.config
        allowed_models: frozenset[str] | None = None
        allowed_stages: frozenset[str] | None = None
        if build.tenant_keys.enabled:
            key = authenticate(build.tenant_keys, headers)
            allowed_models = None if key.models is None else frozenset(key.models)
            allowed_stages = None if key.stages is None else frozenset(key.stages)
        created = int(time.time())
        entries = [
            _model_entry(m.name, m.provider, created)
            for m in build.engine.registry.models
            if allowed_models is None or m.name in allowed_models
        ]
        entries.append(_model_entry(AUTO_MODEL, "switchpoint", created))
        for strategy in _strategies(config.routing.strategies):
            entries.append(_model_entry(STRATEGY_PREFIX + strategy, "switchpoint", created))
        for stage in config.routing.stages:
            if allowed_stages is None or stage in allowed_stages:
                entries.append(_model_entry(STAGE_PREFIX + stage, "switchpoint", created))
        return {"object": "list", "data": entries}

    def _names(self) -> ModelNames:
        engine = self._engine()
        config = engine.config
        return ModelNames(
            models=frozenset(m.name for m in engine.registry.models),
            strategies=frozenset(_strategies(config.routing.strategies)),
            stages=frozenset(config.routing.stages),
        )

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = metadata(scope["headers"])
        limit = self._engine().config.server.limits.max_concurrent_rpcs
        if self._in_flight >= limit:
            # The gRPC server's own bound, counted for HTTP calls apart: refused before the body
            # is read, so waiting calls never hold more than `limit` bodies.
            busy = HttpError(
                429,
                f"{self._in_flight} calls in flight: server.limits.max_concurrent_rpcs ({limit})",
                code="resource_exhausted",
            )
            await self._refuse_unread(send, headers, busy)
            return
        self._in_flight += 1
        try:
            await self._chat_counted(scope, receive, send, headers)
        finally:
            self._in_flight -= 1

    async def _chat_counted(
        self, scope: Scope, receive: Receive, send: Send, headers: list[tuple[str, str]]
    ) -> None:
        try:
            call = await self._read_call(scope, receive, headers)
            chat_input = self._chat_input(call)
        except Exception as exc:
            await self._refuse_unread(send, headers, exc)
            return
        # The caller hanging up stops the call at once: its engine stream is closed (releasing
        # its reservation and the upstream response), or its provider call cancelled.
        serving = asyncio.ensure_future(self._serve(send, headers, call, chat_input))
        hang_up = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((serving, hang_up), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (serving, hang_up):
                task.cancel()
            await asyncio.gather(serving, hang_up, return_exceptions=True)
        if serving.done() and not serving.cancelled() and serving.exception() is not None:
            raise serving.exception()  # type: ignore[misc]

    async def _read_call(
        self, scope: Scope, receive: Receive, headers: list[tuple[str, str]]
    ) -> ChatCall:
        limit = self._engine().config.server.limits.max_message_bytes
        body = await read_body(scope, receive, limit)
        try:
            if len(body) > PARSE_OFF_LOOP_BYTES:
                parsed = await asyncio.to_thread(json.loads, body)
            else:
                parsed = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise HttpError(400, f"the request body is not valid JSON: {exc}"[:200]) from exc
        call = parse_chat(parsed, self._names())
        apply_controls(headers, call.request)
        build = self._engine.build
        if build.tenant_keys.enabled:
            bind_tenant(
                build.tenant_keys, headers, call.request, build.engine.config.routing.stages
            )
        return call

    def _chat_input(self, call: ChatCall) -> ChatInput:
        # Counted before converting, as on gRPC: many tiny messages are refused unread.
        self._engine().router.check_message_count(len(call.request.messages))
        return convert.chat_input(call.request)

    async def _refuse_unread(
        self, send: Send, headers: list[tuple[str, str]], failure: Exception
    ) -> None:
        unread = ChatInput(messages=(), request_id=new_request_id())
        with self._observer.observe(RPC, headers, unread, calls_providers=False) as seen:
            answer = error_answer(failure, unread.request_id)
            seen.failed(answer.grpc_code, answer.message)
        await _send_error(send, answer)

    async def _serve(
        self, send: Send, headers: list[tuple[str, str]], call: ChatCall, chat_input: ChatInput
    ) -> None:
        with (
            self._engine.hold() as engine,
            self._observer.observe(RPC, headers, chat_input) as seen,
        ):
            # A caller that hangs up is logged "cancelled" by the observer (Observation.ended_by).
            await self._answer(send, engine, call, chat_input, seen)

    async def _answer(
        self, send: Send, engine: Engine, call: ChatCall, chat_input: ChatInput, seen: Observation
    ) -> None:
        chat_input, seen.split = engine.splits.assign(chat_input)
        request_id = chat_input.request_id
        try:
            seen.decision = await engine.route_off_loop(chat_input, self._offload, timeout_s=None)
            if not call.stream:
                seen.result = await engine.chat(chat_input, seen.decision, deadline=None)
        except Exception as exc:
            answer = error_answer(exc, request_id)
            seen.failed(answer.grpc_code, answer.message)
            answer.headers.extend(decision_headers(seen.decision, request_id))
            await _send_error(send, answer)
            return
        if seen.result is not None:
            out = decision_headers(seen.decision, request_id) + result_headers(seen.result)
            await _send_json(send, 200, completion(seen.result), out)
            return
        await sse.send_stream(
            send,
            engine,
            call,
            chat_input,
            seen,
            headers=decision_headers(seen.decision, request_id),
            refuse=partial(_send_error, send),
        )


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refused (413) as soon as its declared length or the bytes read pass
    `limit`: never more than `limit` bytes are held."""
    for name, value in scope["headers"]:
        if name.lower() == b"content-length" and value.isdigit() and int(value) > limit:
            raise RequestTooLargeError(
                "request body",
                f"{int(value)} bytes exceeds server.limits.max_message_bytes ({limit})",
            )
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "the client closed the request before sending its body")
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise RequestTooLargeError(
                "request body", f"more than {limit} bytes exceeds server.limits.max_message_bytes"
            )
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts)


def _unknown_path(path: str) -> HttpError:
    return HttpError(404, f"no such path: {path[:64]}", code="unknown_url")


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _strategies(configured: Mapping[str, object]) -> list[str]:
    return sorted(set(BUILTIN_STRATEGIES) | set(configured))


def _model_entry(name: str, owner: str, created: int) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": owner}


async def _send_json(
    send: Send,
    status: int,
    body: object,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    encoded = json.dumps(body).encode()
    out = [_JSON, (b"content-length", str(len(encoded)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": encoded})


async def _send_error(send: Send, answer: ErrorAnswer) -> None:
    await _send_json(send, answer.status, answer.body, answer.headers)
