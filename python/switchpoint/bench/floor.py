"""The floor the Route RPC is measured against: an empty unary call on a grpc.aio server.

One definition for both places that serve it: `switchpoint bench` (in its own process) and the
floor server process of `python -m benches.rpc_floor`. It imports nothing of the sidecar.
"""

from __future__ import annotations

import grpc

EMPTY_METHOD = "/switchpoint.bench.Empty/Call"


async def _empty_call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return b""


def empty_rpc_server() -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with one unary method (`EMPTY_METHOD`) that returns b"" through identity
    (de)serializers - no protobuf, no servicer, no work - on a free loopback port. Build it inside
    the event loop that will serve it."""
    server = grpc.aio.server()
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(_empty_call)
    service, method = EMPTY_METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {method: handler}),)
    )
    return server, server.add_insecure_port("127.0.0.1:0")
