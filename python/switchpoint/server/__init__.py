"""The gRPC front: the server factory, the Router servicer and the status mapping."""

from switchpoint.server.app import Sidecar
from switchpoint.server.factory import create_server

__all__ = ["Sidecar", "create_server"]
