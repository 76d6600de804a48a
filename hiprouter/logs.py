"""structlog set-up: JSON lines when not on a TTY, and no patient identifiers ever.

Log calls pass UIDs and AE titles only. As a second line of defence a processor drops
any event key that names patient identity (PatientName, PatientID, ...).
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

import structlog

PHI_KEYS = frozenset(
    {
        "patientname", "patient_name", "patientid", "patient_id", "patientbirthdate",
        "patient_birth_date", "otherpatientids", "other_patient_ids", "patientaddress",
        "accessionnumber", "accession_number", "referringphysicianname",
    }
)


def _drop_phi(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if key.lower() in PHI_KEYS:
            event[key] = "[redacted]"
    return event


def configure(level: str = "INFO", json_logs: bool | None = None) -> None:
    """Configure structlog and stdlib logging (pynetdicom logs through stdlib)."""
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_phi,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # pynetdicom's own debug output dumps whole datasets (with PHI): keep it at WARNING.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    _silence_value_warnings()


def _silence_value_warnings() -> None:
    """pydicom's "invalid value" warnings quote the value, which may be a patient's name.

    Received headers are taken as they are (reading validation off); objects we write are
    still validated by pydicom and highdicom.
    """
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
    logging.getLogger("pydicom").setLevel(logging.ERROR)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
