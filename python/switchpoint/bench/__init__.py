"""`switchpoint bench`: `figures` (what is measured and how it is shown), `floor` (the empty-RPC
floor), `provider` (the loopback provider and sidecar process of the Chat figures)."""
