"""A loopback OpenAI-compatible `/v1/embeddings` server for the embedder tests.

Runs uvicorn in a background thread with its own event loop, like the provider servers in
tests/providers, so `OpenAIEmbeddings` is tested over real sockets and real HTTP framing. Vectors
are derived from the text (deterministic, deliberately not unit length, and returned in reverse
order with their `index`), so a test can check ordering and normalisation. `fail_with` makes the
next requests answer with an error status and body instead.
"""

from __future__ import annotations

import hashlib
from types import TracebackType
from typing import Self

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.threaded_uvicorn import ThreadedUvicorn

_START_TIMEOUT_S = 10.0


def fake_vector(text: str, dim: int) -> list[float]:
    """A deterministic, non-normalised vector for `text` (values in 0..510)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [float(digest[i % len(digest)] + i % 256) for i in range(dim)]


class EmbeddingsServer:
    """127.0.0.1:<free port>/v1/embeddings; use as a context manager."""

    def __init__(self, *, dim: int = 8, api_key: str | None = None) -> None:
        self.dim = dim
        self.api_key = api_key
        self.requests: list[dict[str, object]] = []  # JSON bodies, in arrival order
        self.error: tuple[int, object] | None = None  # (status, JSON body) to answer with
        self._runner: ThreadedUvicorn | None = None

    @property
    def base_url(self) -> str:
        if self._runner is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self._runner.port}/v1"

    def fail_with(self, status: int, body: object) -> None:
        self.error = (status, body)

    async def handle(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse(
                {
                    "error": {
                        "message": "Incorrect API key provided",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
                status_code=401,
            )
        if self.error is not None:
            status, error_body = self.error
            return JSONResponse(error_body, status_code=status)
        texts = body["input"]
        data = [
            {"object": "embedding", "index": index, "embedding": fake_vector(text, self.dim)}
            for index, text in enumerate(texts)
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": list(reversed(data)),
                "model": body["model"],
                "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)},
            }
        )

    def start(self) -> Self:
        app = Starlette(routes=[Route("/v1/embeddings", self.handle, methods=["POST"])])
        self._runner = ThreadedUvicorn(app, name="embeddings")
        self._runner.start()
        return self

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.stop()
            self._runner = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
