"""C-ECHO (Verification) as an SCU: is a configured destination or AE@HOST:PORT reachable?"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

from hiprouter.config import Settings

TARGET_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class EchoTarget:
    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    status: int | None
    message: str


def parse_target(target: str, settings: Settings) -> EchoTarget:
    """A configured destination name, or AE@HOST:PORT. Raises ValueError otherwise."""
    if target in settings.destinations:
        dest = settings.destinations[target]
        if dest.type != "dicom":
            raise ValueError(f"{target!r} is a {dest.type} destination; C-ECHO needs a DICOM "
                             "one")
        return EchoTarget(dest.ae_title, dest.host, dest.port)
    match = TARGET_RE.match(target)
    if match is None:
        known = ", ".join(sorted(settings.destinations)) or "none configured"
        raise ValueError(
            f"{target!r} is neither a configured destination ({known}) nor AE@HOST:PORT"
        )
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return EchoTarget(match["ae"], match["host"].strip("[]"), port)


def echo(target: EchoTarget, calling_ae: str, timeout_s: float = 10.0) -> EchoResult:
    """Connect, associate, send one C-ECHO, release; each step waits at most `timeout_s`
    and a failure says which step gave up."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    try:  # the TCP connection first, so "nobody listens" and "no answer" tell apart
        with socket.create_connection((target.host, target.port), timeout=timeout_s):
            pass
    except TimeoutError:
        return EchoResult(False, None, f"no TCP connection within {timeout_s:g} s (a "
                                       "firewall dropping packets, or the host is down)")
    except OSError as exc:
        return EchoResult(False, None, f"cannot connect: {exc.strerror or exc}")
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    started = time.monotonic()
    assoc = ae.associate(target.host, target.port, ae_title=target.ae_title)
    if not assoc.is_established:
        if assoc.is_rejected:
            rsp = assoc.acceptor.primitive
            diagnostic = getattr(rsp, "diagnostic", None)
            return EchoResult(False, None, f"association rejected by the peer (result "
                                           f"{getattr(rsp, 'result', '?')}, diagnostic "
                                           f"{diagnostic}: {_REJECTIONS.get(diagnostic, '')})")
        if time.monotonic() - started >= timeout_s * 0.9:
            return EchoResult(False, None, f"no answer to the association request within "
                                           f"{timeout_s:g} s")
        return EchoResult(False, None, "association aborted by the peer (a TLS-only port, or "
                                       "not a DICOM service?)")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(status.Status) if status and "Status" in status else None
    if code == 0:
        return EchoResult(True, code, "C-ECHO success")
    return EchoResult(False, code, f"no C-ECHO response within {timeout_s:g} s"
                      if code is None else f"C-ECHO status 0x{code:04X}")


_REJECTIONS = {1: "no reason given", 2: "application context not supported / local limit "
               "exceeded", 3: "calling AE title not recognised", 7: "called AE title not "
               "recognised"}
