"""The servers `benches/asgi_stacks.py` compares, one per process: the same two endpoints on each.

- `POST /json`: a ~2 KB JSON body in, parsed; a ~1 KB JSON body out (a chat completion's size).
- `POST /sse`: the body parsed likewise; 20 small `data:` events, then `data: [DONE]`, each sent as
  its own body chunk (as a streamed chat answer is).

Stacks: `baseline` (a bare asyncio-streams HTTP/1.1 responder, no ASGI at all), a raw ASGI app on
uvicorn with httptools or h11, Starlette on uvicorn/httptools, the raw app on hypercorn, and the
raw app on granian's embedded server (its Rust I/O thread feeding the app on this process's
asyncio loop). Every one runs on the default asyncio loop, never uvloop: the sidecar's grpc.aio
server shares that loop. `python -m benches.asgi_servers STACK` serves one and prints `port N`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SSE_EVENTS = 20
STACKS = (
    "baseline",
    "uvicorn-httptools",
    "uvicorn-h11",
    "starlette-httptools",
    "hypercorn",
    "granian-embedded",
)
# The import each stack needs beyond the standard library; a stack whose import fails is skipped.
STACK_MODULES = {
    "baseline": (),
    "uvicorn-httptools": ("uvicorn", "httptools"),
    "uvicorn-h11": ("uvicorn", "h11"),
    "starlette-httptools": ("uvicorn", "httptools", "starlette"),
    "hypercorn": ("hypercorn",),
    "granian-embedded": ("granian",),
}


def request_body() -> bytes:
    """~2 KB of OpenAI chat JSON."""
    turns = [
        {"role": "user", "content": f"question {i}: " + "lorem ipsum " * 12} for i in range(12)
    ]
    return json.dumps({"model": "m", "messages": turns, "max_tokens": 64}).encode()


def _json_reply() -> bytes:
    text = "a reasonably long answer " * 30
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 300, "completion_tokens": 150, "total_tokens": 450},
        }
    ).encode()


JSON_REPLY = _json_reply()
SSE_CHUNKS = [
    b'data: {"choices":[{"index":0,"delta":{"content":"word %d "}}]}\n\n' % i
    for i in range(SSE_EVENTS)
] + [b"data: [DONE]\n\n"]
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


# -- the raw ASGI app ----------------------------------------------------------------------------


async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return  # lifespan: nothing to start; the servers run with it off where they can
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    json.loads(body)
    if scope["path"] == "/json":
        await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": JSON_REPLY})
        return
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    for chunk in SSE_CHUNKS[:-1]:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": SSE_CHUNKS[-1]})


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    async def chat_json(request: Request) -> Response:
        await request.json()
        return Response(JSON_REPLY, media_type="application/json")

    async def chat_sse(request: Request) -> StreamingResponse:
        await request.json()

        async def events() -> Any:
            for chunk in SSE_CHUNKS:
                yield chunk

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/json", chat_json, methods=["POST"]),
            Route("/sse", chat_sse, methods=["POST"]),
        ]
    )


# -- the baseline: HTTP/1.1 by hand on asyncio streams -------------------------------------------


async def _baseline_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, _, header_block = head.partition(b"\r\n")
            length = 0
            for line in header_block.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            json.loads(await reader.readexactly(length))
            if request_line.split(b" ")[1] == b"/json":
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(JSON_REPLY), JSON_REPLY)
                )
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                for chunk in SSE_CHUNKS:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


# -- serving -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _serve(stack: str, port: int) -> Any:
    """Starts `stack` on `port`; returns the awaitable that runs it (untyped in hypercorn and
    granian)."""
    if stack == "baseline":
        server = await asyncio.start_server(_baseline_connection, "127.0.0.1", port)
        return server.serve_forever()
    if stack.startswith(("uvicorn", "starlette")):
        import uvicorn

        app = starlette_app() if stack.startswith("starlette") else raw_app
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            loop="none",  # the running default asyncio loop
            http="h11" if stack.endswith("h11") else "httptools",
            lifespan="off",
            access_log=False,
            log_level="warning",
        )
        return uvicorn.Server(config).serve()
    if stack == "hypercorn":
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        hyper = Config()
        hyper.bind = [f"127.0.0.1:{port}"]
        hyper.accesslog = None
        hyper.loglevel = "WARNING"
        return serve(raw_app, hyper, mode="asgi")
    from granian.constants import Interfaces
    from granian.server.embed import Server

    embedded = Server(
        raw_app,
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGINL,
        runtime_threads=1,
        log_enabled=False,
    )
    return embedded.serve()


async def _wait_listening(port: int) -> None:
    for _ in range(500):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        writer.close()
        return
    raise RuntimeError(f"nothing listens on {port}")


async def serve(stack: str) -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    port = free_port()
    running = asyncio.ensure_future(await _serve(stack, port))
    await _wait_listening(port)
    print(f"port {port}", flush=True)
    await asyncio.wait(
        [running, asyncio.ensure_future(stopped.wait())], return_when="FIRST_COMPLETED"
    )
    running.cancel()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
