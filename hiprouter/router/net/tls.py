"""TLS contexts for DICOM associations (PS3.15 Annex B secure transport, BCP 195 style).

`server_ssl_context` is for the SCP (`AE.start_server(..., ssl_context=...)`);
`client_ssl_context` for outbound associations (`AE.associate(..., tls_args=(ctx, host))`).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from hiprouter import audit
from hiprouter.config import ConfigError, TLSConfig
from hiprouter.logs import get_logger
from hiprouter.router.net.throttle import Throttle

log = get_logger(__name__)


def _require(tls: TLSConfig, *attrs: str, where: str) -> None:
    for attr in attrs:
        path = getattr(tls, attr)
        if path is None:
            raise ConfigError(f"{where}.tls.{attr} is required when TLS is enabled")
        if not path.is_file():
            raise ConfigError(f"{where}.tls.{attr}: file {path} does not exist")


class _ServerSocket(ssl.SSLSocket):
    """Logs the reason when a client's handshake is refused (bad or missing certificate)."""

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        try:
            return super().read(len, buffer)  # recv and recv_into read through here
        except ssl.SSLError as exc:
            try:
                host, port = self.getpeername()[:2]
                peer = f"{host}:{port}"
            except OSError:
                peer = "unknown"
            reason = exc.reason or str(exc)
            on_refused = getattr(self.context, "on_refused", None)
            if on_refused is not None:
                on_refused(peer, reason)  # logs, rate-limited
            else:
                log.warning("TLS connection refused", peer=peer, reason=reason)
            raise


RefusalHook = Callable[[str, str], None]
"""Called with (peer "host:port", reason) when a TLS client is refused; must not raise."""


def refusal_auditor(factory: sessionmaker[Session], ae_title: str,
                    throttle: Throttle | None = None) -> RefusalHook:
    """A hook that records each refused TLS client as a Security Alert (Node
    Authentication failure) in the audit trail; with `throttle`, once per peer address
    and reason per window (a summary counts the rest)."""

    def record(peer: str, reason: str) -> None:
        if throttle is not None:
            held = throttle.admit(("tls", peer.rsplit(":", 1)[0], reason))
            if held is None:
                return
            if held:
                reason += f" ({held} more such refusals held back before this one)"
        log.warning("TLS connection refused", peer=peer, reason=reason)
        try:
            audit.record_now(
                factory, audit.SECURITY_ALERT, "E", audit.MINOR_FAILURE,
                event_type=audit.NODE_AUTHENTICATION,
                description=f"TLS connection refused: {reason}",
                participants=[audit.participant("source", host=peer.rsplit(":", 1)[0]),
                              audit.participant("destination", ae_title)],
            )
        except Exception as exc:
            log.error("cannot record TLS refusal", error=str(exc))

    return record


class _DeferredHandshakeContext(ssl.SSLContext):
    """pynetdicom wraps accepted sockets in its accept loop, so a handshake there lets one
    silent client stall every new association. Here the handshake is deferred: OpenSSL
    runs it on the first read, in the association's own thread, bounded by pynetdicom's
    network timeout; a refused handshake ends only that association."""

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def server_ssl_context(tls: TLSConfig, where: str = "node",
                       on_refused: RefusalHook | None = None) -> ssl.SSLContext:
    """Context for accepting associations: our certificate, optionally client certificates.

    With `require_client_cert` a client must present a certificate signed by `ca_file`;
    otherwise a certificate is verified when offered (if `ca_file` is set) but not needed.
    """
    _require(tls, "cert_file", "key_file", where=where)
    ctx = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.sslsocket_class = _ServerSocket
    ctx.on_refused = on_refused  # type: ignore[attr-defined]
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
