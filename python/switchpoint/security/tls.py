"""TLS for the gRPC port, with certificates that a config reload replaces without a restart.

grpc's dynamic server credentials ask a fetcher for the certificate configuration at every new
handshake; the fetcher hands over a configuration only when a reload has read a new one, so open
connections keep theirs and new ones get the new certificate.
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

import grpc

from switchpoint.addresses import split_address
from switchpoint.errors import ConfigError
from switchpoint.security.config import TlsConfig


def _read(path: str, field: str, errors: list[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        errors.append(f"server.tls.{field}: cannot read {path}: {exc.strerror}")
        return b""


def read_certificates(config: TlsConfig) -> grpc.ServerCertificateConfiguration:
    """The files' contents, checked now (a key that does not match its certificate, a file that is
    not PEM) so a bad file refuses the config instead of failing every handshake later."""
    errors: list[str] = []
    cert = _read(config.cert_file, "cert_file", errors)
    key = _read(config.key_file, "key_file", errors)
    client_ca = (
        _read(config.client_ca_file, "client_ca_file", errors) if config.client_ca_file else None
    )
    if errors:
        raise ConfigError(errors, "server.tls")
    check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        check.load_cert_chain(config.cert_file, config.key_file)
    except (ssl.SSLError, ValueError) as exc:
        errors.append(
            f"server.tls.cert_file: not a certificate matching server.tls.key_file ({exc})"
        )
    if client_ca is not None:
        try:
            check.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            errors.append(f"server.tls.client_ca_file: not a PEM CA bundle ({exc})")
    if errors:
        raise ConfigError(errors, "server.tls")
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)


class ServerTls:
    """The port's credentials: built once with the process, fed new certificates by `update`."""

    def __init__(self, config: TlsConfig) -> None:
        self.requires_client_certificates = config.client_ca_file is not None
        self._initial = read_certificates(config)
        self._pending: grpc.ServerCertificateConfiguration | None = None
        # The fetcher runs on a gRPC core thread.
        self._lock = threading.Lock()

    def credentials(self) -> grpc.ServerCredentials:
        # grpc's stub types the fetcher as never returning None; None is its "no change".
        fetch = cast("Callable[[], grpc.ServerCertificateConfiguration]", self._fetch)
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            fetch,
            require_client_authentication=self.requires_client_certificates,
        )

    def update(self, certificates: grpc.ServerCertificateConfiguration) -> None:
        """New handshakes from now on use `certificates` (read by `read_certificates`)."""
        with self._lock:
            self._pending = certificates

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            pending, self._pending = self._pending, None
        return pending


def is_loopback(address: str) -> bool:
    """Whether `host:port` binds only this machine (127.0.0.0/8, ::1, localhost)."""
    try:
        host, _ = split_address(address)
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
