"""The gRPC front: the server factory, the Router servicer and the status mapping."""

from switchpoint.server.app import Sidecar, create_server

__all__ = ["Sidecar", "create_server"]
