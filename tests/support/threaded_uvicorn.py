"""A uvicorn server on 127.0.0.1:<free port>, run in a background thread: the lifecycle every
loopback test server (providers, embeddings) shares."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn
from starlette.types import ASGIApp

START_TIMEOUT_S = 10.0


class ThreadedUvicorn:
    def __init__(self, app: ASGIApp, *, name: str, **config: Any) -> None:
        self._app = app
        self._name = name
        self._config = config
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError(f"{self._name} is not running")
        port: int = self._socket.getsockname()[1]
        return port

    def start(self) -> None:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
        # and without it every answer waits ~40 ms on the client's delayed ACK.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        settings: dict[str, Any] = {
            "loop": "asyncio",
            "ws": "none",
            "lifespan": "off",
            "log_config": None,
            "log_level": "warning",
            "access_log": False,
            **self._config,
        }
        server = uvicorn.Server(uvicorn.Config(self._app, **settings))
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [listener]},
            name=f"{self._name}:{listener.getsockname()[1]}",
            daemon=True,
        )
        self._socket, self._server, self._thread = listener, server, thread
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self._name} did not start")
            time.sleep(0.005)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=START_TIMEOUT_S)
            if self._thread.is_alive():
                raise RuntimeError(f"{self._name} did not stop")
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = None
