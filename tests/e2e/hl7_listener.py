"""A real MLLP listener for tests: hl7apy's own MLLPServer, whose handler parses each
message with hl7apy (structure validated against HL7 v2.5) and answers an ACK; the first
`nack_first` messages get AE (application error), the rest AA."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from hl7apy.mllp import AbstractErrorHandler, AbstractHandler, MLLPServer
from hl7apy.parser import parse_message

from tests.conftest import free_port


@dataclass
class Received:
    er7: str
    message: Any
    answered: str


@dataclass
class Ris:
    """What the listener got and how it answered."""

    nack_first: int = 0
    received: list[Received] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    server: Any = None
    port: int = 0

    def answer(self, er7: str) -> str:
        message = parse_message(er7, find_groups=True)
        ctrl = message.msh.msh_10.value
        code = "AE" if len(self.received) < self.nack_first else "AA"
        self.received.append(Received(er7, message, code))
        text = "try again later" if code == "AE" else ""
        ack = (f"MSH|^~\\&|RIS|HOSPITAL|{message.msh.msh_3.value}||20250101000000||ACK^R01^ACK|"
               f"ACK{len(self.received)}|P|2.5\rMSA|{code}|{ctrl}|{text}\r")
        return "\x0b" + ack + "\x1c\x0d"


def start_ris(nack_first: int = 0, message_types: tuple[str, ...] = (
        "ORU^R01^ORU_R01", "ORM^O01^ORM_O01", "OMI^O23^OMI_O23")) -> Ris:
    ris = Ris(nack_first=nack_first)

    class Handler(AbstractHandler):
        def reply(self) -> str:
            return ris.answer(self.incoming_message)

    class ErrorHandler(AbstractErrorHandler):
        def reply(self) -> str:
            ris.errors.append(f"{type(self.exc).__name__}: {self.exc}")
            return ""

    handlers: dict[str, Any] = {t: (Handler,) for t in message_types}
    handlers["ERR"] = (ErrorHandler,)
    ris.port = free_port()
    ris.server = MLLPServer("127.0.0.1", ris.port, handlers, timeout=10)
    ris.server.daemon_threads = True
    threading.Thread(target=ris.server.serve_forever, daemon=True).start()
    return ris


def stop_ris(ris: Ris) -> None:
    ris.server.shutdown()
    ris.server.server_close()
