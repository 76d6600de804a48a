"""Secure defaults, loudly: what in a configuration leaves the node open.

`serve` and `worker` log each warning at start-up and `hiprouter status` shows them.
See docs/security.md for the hardening checklist these come from.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from sqlalchemy.engine import make_url

from hiprouter.config import Settings


@dataclass(frozen=True)
class SecurityWarning:
    key: str
    """The configuration key concerned."""
    message: str


def is_loopback(host: str) -> bool:
    """True when `host` (an address or a name) only listens on the loopback interface."""
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback
                                   for a in addresses)


def warnings(settings: Settings) -> list[SecurityWarning]:
    """What in `settings` falls short of the hardening checklist."""
    found: list[SecurityWarning] = []
    node = settings.node
    if node.allowed_calling is None:
        found.append(SecurityWarning(
            "node.allowed_calling",
            "the allow-list is open (node.allowed_calling is not set): any device that can "
            "reach the port may store images and use the association places; list your "
            "PACS and modalities (AE title and host)"))
    if not node.tls.enabled and not is_loopback(node.host):
        found.append(SecurityWarning(
            "node.tls",
            f"TLS is off while listening on {node.host}, which is not a loopback address: "
            "images and headers cross the network unencrypted (set node.tls, or a TLS "
            "tunnel and node.host: 127.0.0.1)"))
    if settings.database_url_source == "config" and _has_password(settings.database.url):
        found.append(SecurityWarning(
            "database.url",
            "database.url in the configuration file contains a password: set it in the "
            "HIPROUTER_DATABASE_URL environment variable or database.password_file "
            "(readable only by the service) instead"))
    return found


def _has_password(url: str) -> bool:
    try:
        return bool(make_url(url).password)
    except Exception:
        return False
