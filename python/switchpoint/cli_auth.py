"""The CLI's side of authentication: `switchpoint keys`, and how `route` and `stats` present a
tenant API key and dial a sidecar that speaks TLS."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import grpc

from switchpoint.security.keys import key_digest

API_KEY_ENV = "SWITCHPOINT_API_KEY"
# Random bytes in a new key: 256 bits, as many as the hash that stands for it.
_NEW_KEY_BYTES = 32


def add_keys_parser(commands: Any) -> None:
    keys = commands.add_parser("keys", help="tenant API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    keys_commands.add_parser(
        "hash", help="print the SHA-256 (hex) of the key read from stdin, as auth: expects it"
    )
    new = keys_commands.add_parser("new", help="print a new random key, then its key line")
    new.add_argument("--tenant", required=True, help="the tenant the key will speak for")


def keys_command(args: argparse.Namespace) -> int:
    if args.keys_command == "hash":
        key = sys.stdin.read().strip()
        if not key:
            print("switchpoint: no key on stdin", file=sys.stderr)
            return 1
        print(key_digest(key))
        return 0
    key = f"sp-{secrets.token_urlsafe(_NEW_KEY_BYTES)}"
    print(key)
    print(f"{key_digest(key)} {args.tenant}")
    return 0


def add_client_security_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key-env",
        default=API_KEY_ENV,
        metavar="NAME",
        help=f"variable holding the tenant API key to send, when set (default {API_KEY_ENV})",
    )
    parser.add_argument(
        "--tls-ca", type=Path, default=None, metavar="PEM", help="dial with TLS, trusting this CA"
    )
    parser.add_argument(
        "--tls-cert", type=Path, default=None, metavar="PEM", help="client certificate (mTLS)"
    )
    parser.add_argument(
        "--tls-key", type=Path, default=None, metavar="PEM", help="client private key (mTLS)"
    )


def call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    key = os.environ.get(args.api_key_env, "")
    return (("authorization", f"Bearer {key}"),) if key else ()


def client_channel(args: argparse.Namespace) -> grpc.Channel:
    """Plaintext unless --tls-ca is given. Raises OSError for a file that cannot be read."""
    if args.tls_ca is None:
        return grpc.insecure_channel(args.address)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise OSError("--tls-cert and --tls-key go together")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=args.tls_ca.read_bytes(),
        private_key=args.tls_key.read_bytes() if args.tls_key else None,
        certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
    )
    return grpc.secure_channel(args.address, credentials)
