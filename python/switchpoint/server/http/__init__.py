"""The OpenAI-compatible HTTP front: the same engine as the gRPC Router, served as a raw ASGI
application in the gRPC server's process and event loop."""

from switchpoint.server.http.app import HttpFront
from switchpoint.server.http.serve import HttpServer

__all__ = ["HttpFront", "HttpServer"]
