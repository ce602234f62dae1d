"""switchpoint: an LLM routing sidecar. The gRPC API is `switchpoint.v1`; the server factory is
`switchpoint.server.create_server`."""

__version__ = "0.1.0"
