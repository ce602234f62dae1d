"""A loopback TCP proxy that can swallow replies: the network fault behind "lost reply" bugs.

With `drop_replies` set, requests still reach the server, which acts on them, but nothing it
answers gets back to the client, which times out. That is the case idempotent reports exist for:
the report was applied, the replica does not know, and it will send it again.
"""

from __future__ import annotations

import asyncio
import contextlib


class ReplyDroppingProxy:
    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.drop_replies = False
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self._target_port
        )
        requests = asyncio.create_task(self._pipe(reader, upstream_writer, replies=False))
        replies = asyncio.create_task(self._pipe(upstream_reader, writer, replies=True))
        self._pipes.update((requests, replies))
        await asyncio.wait({requests, replies}, return_when=asyncio.FIRST_COMPLETED)
        for pipe in (requests, replies):
            pipe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pipe
            self._pipes.discard(pipe)
        for stream in (writer, upstream_writer):
            stream.close()
            with contextlib.suppress(OSError):
                await stream.wait_closed()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if replies and self.drop_replies:
                    continue
                writer.write(data)
                await writer.drain()
