"""TLS contexts for DICOM associations (PS3.15 Annex B secure transport, BCP 195 style).

`server_ssl_context` is for the SCP (`AE.start_server(..., ssl_context=...)`);
`client_ssl_context` for outbound associations (`AE.associate(..., tls_args=(ctx, host))`).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from hiprouter.config import ConfigError, TLSConfig
from hiprouter.logs import get_logger

log = get_logger(__name__)


def _require(tls: TLSConfig, *attrs: str, where: str) -> None:
    for attr in attrs:
        path = getattr(tls, attr)
        if path is None:
            raise ConfigError(f"{where}.tls.{attr} is required when TLS is enabled")
        if not path.is_file():
            raise ConfigError(f"{where}.tls.{attr}: file {path} does not exist")


class _HandshakeTimeoutContext(ssl.SSLContext):
    """pynetdicom runs the server-side handshake in its accept loop; bound how long a
    silent client can hold it there."""

    handshake_timeout_s: float = 10.0

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock.settimeout(self.handshake_timeout_s)
        try:
            host, port = sock.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "unknown"
        try:
            wrapped = super().wrap_socket(sock, *args, **kwargs)
        except OSError as exc:  # ssl.SSLError, timeouts: pynetdicom drops the connection
            log.warning("TLS handshake refused", peer=peer, error=str(exc))
            sock.close()
            raise
        wrapped.settimeout(None)
        return wrapped


def server_ssl_context(tls: TLSConfig, where: str = "node",
                       handshake_timeout_s: float = 10.0) -> ssl.SSLContext:
    """Context for accepting associations: our certificate, optionally client certificates.

    With `require_client_cert` a client must present a certificate signed by `ca_file`;
    otherwise a certificate is verified when offered (if `ca_file` is set) but not needed.
    """
    _require(tls, "cert_file", "key_file", where=where)
    ctx = _HandshakeTimeoutContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.handshake_timeout_s = handshake_timeout_s
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.require_client_cert:
        _require(tls, "ca_file", where=where)
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_ssl_context(tls: TLSConfig, where: str = "destination") -> ssl.SSLContext:
    """Context for connecting to a peer: verify it against `ca_file` (or the system store)
    and present our client certificate when one is configured."""
    if tls.ca_file is not None:
        _require(tls, "ca_file", where=where)
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = tls.check_hostname
    if tls.cert_file is not None or tls.key_file is not None:
        _require(tls, "cert_file", "key_file", where=where)
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx
