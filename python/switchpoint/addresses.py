"""Listening addresses in the config: "host:port" or "[v6]:port", checked in one place."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def split_address(address: str) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port" into its parts, refusing anything else."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected host:port, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def _checked(address: str) -> str:
    split_address(address)
    return address


# A config field holding a listening address; a malformed one fails the config with its path.
Address = Annotated[str, AfterValidator(_checked)]
