"""Generated protobuf and gRPC code for switchpoint.v1 (regenerate with `make protos`)."""
