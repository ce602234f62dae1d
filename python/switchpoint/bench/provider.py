"""The two ends of `switchpoint bench`'s Chat figures: a loopback OpenAI-compatible provider that
answers every chat completion after a fixed delay, and the sidecar as a process of its own.

It speaks HTTP/1.1 with keep-alive through h11 (already a dependency of the provider transport),
answers `POST .../chat/completions` with a `chat.completion` body echoing the requested model, and
anything else with the 404 error body OpenAI sends. It imports nothing of the sidecar, so the
figures measure the sidecar and not this.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import h11

ANSWER = "ok"
_READ_BYTES = 64 * 1024
# What `switchpoint serve` prints once it listens.
_ANNOUNCE = re.compile(rb"^switchpoint: gRPC on [^ ]*:(\d+) ")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def _completion(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
        }
    ).encode()


def _not_found(target: str) -> bytes:
    error = {"message": f"Unknown request URL: POST {target}", "type": "invalid_request_error"}
    return json.dumps({"error": {**error, "param": None, "code": "unknown_url"}}).encode()


def _reply(request: h11.Request, body: bytes) -> tuple[int, bytes]:
    target = request.target.decode("latin-1")
    if request.method != b"POST" or not target.endswith("/chat/completions"):
        return 404, _not_found(target)
    try:
        model = str(json.loads(body)["model"])
    except (ValueError, KeyError, TypeError):
        return 400, json.dumps({"error": {"message": "body must name a model"}}).encode()
    return 200, _completion(model)


class FixedLatencyProvider:
    """Serves on a free loopback port from `start()` until `close()`, which also ends the
    connections still open and waits for their handlers. Use it inside one event loop."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        # Connections accepted so far: a client that keeps its connection alive opens one.
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._open: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}

    async def start(self) -> int:
        """Start serving; returns the port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        handlers = list(self._open.values())
        for writer in list(self._open):
            writer.close()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections += 1
        self._open[writer] = task
        try:
            await self._converse(reader, writer)
        except (h11.ProtocolError, ConnectionError):
            pass
        finally:
            del self._open[writer]
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await reader.read(_READ_BYTES))
            elif isinstance(event, h11.Request):
                request, body = event, bytearray()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                await asyncio.sleep(self.delay_s)
                status, payload = _reply(request, bytes(body))
                headers = [
                    ("content-type", "application/json"),
                    ("content-length", str(len(payload))),
                ]
                writer.write(connection.send(h11.Response(status_code=status, headers=headers)))
                writer.write(connection.send(h11.Data(data=payload)))
                writer.write(connection.send(h11.EndOfMessage()))
                await writer.drain()
                connection.start_next_cycle()
            else:  # the client closed, or left a cycle that cannot continue
                return


@asynccontextmanager
async def sidecar_process(config: Mapping[str, object]) -> AsyncIterator[int]:
    """`switchpoint serve` on `config` (a dict, written as JSON, which is YAML) on a free loopback
    port, at the default INFO level (a request line per call, to a file), until the block ends;
    yields its gRPC port."""
    with tempfile.TemporaryDirectory(prefix="switchpoint-bench-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(json.dumps(dict(config)), encoding="utf-8")
        errors = Path(tmp) / "stderr.log"
        with errors.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "switchpoint.cli", "serve", "--config", str(path),
                "--grpc-address", "127.0.0.1:0", "--log-level", "INFO",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )  # fmt: skip
            try:
                try:
                    port = await asyncio.wait_for(_announced_port(process), START_TIMEOUT_S)
                except (TimeoutError, RuntimeError) as exc:
                    output = errors.read_text(errors="replace").strip()
                    raise RuntimeError(
                        f"the sidecar did not start ({exc or 'timed out'}): {output[-2000:]}"
                    ) from exc
                yield port
            finally:
                await _stop(process)


async def _announced_port(process: asyncio.subprocess.Process) -> int:
    assert process.stdout is not None
    while True:
        line = await process.stdout.readline()
        if not line:
            raise RuntimeError(f"it exited with code {await process.wait()}")
        found = _ANNOUNCE.match(line)
        if found:
            return int(found.group(1))


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
