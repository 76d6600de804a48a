"""Audit trail shaped after DICOM PS3.15 A.5 (audit messages), stored in SQL.

Each event carries an EventID code (DCM scheme), an action code (C/R/U/D/E), an outcome
(0 success, 4 minor failure, 8 serious failure, 12 major failure), the participants (AE
titles, hosts) and the objects concerned (UIDs only, never patient names or IDs).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from hiprouter.db import utcnow
from hiprouter.schema import AuditEvent

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12
SOURCE_ID = socket.gethostname()[:64]


@dataclass(frozen=True)
class Code:
    """A coded concept from the DCM scheme (PS3.16)."""

    value: str
    meaning: str


# EventID (PS3.15 A.5.3)
APPLICATION_ACTIVITY = Code("110100", "Application Activity")
BEGIN_TRANSFERRING = Code("110102", "Begin Transferring DICOM Instances")
INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
SECURITY_ALERT = Code("110113", "Security Alert")
USER_AUTHENTICATION = Code("110114", "User Authentication")
DATA_EXPORT = Code("110106", "Export")
INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")
STUDY_DELETED = Code("110105", "DICOM Study Deleted")
# EventTypeCode
APPLICATION_START = Code("110120", "Application Start")
APPLICATION_STOP = Code("110121", "Application Stop")
NODE_AUTHENTICATION = Code("110126", "Node Authentication")
NETWORK_CONFIGURATION = Code("110128", "Network Configuration")
# hiprouter-specific event types (private codes, 99HIPAI scheme)
INFERENCE = Code("HIP001", "AI Inference")
QUARANTINE = Code("HIP002", "Instance Quarantined")
ROUTING = Code("HIP003", "Routing Decision")
DUPLICATE = Code("HIP004", "Duplicate Instance")
RESOURCE = Code("HIP005", "Out Of Resources")
REPORT = Code("HIP007", "AI Report Created")
NOT_ASSESSED = Code("HIP008", "Image Not Assessed")


def participant(
    role: str, ae_title: str | None = None, host: str | None = None, **extra: Any
) -> dict[str, Any]:
    """One ActiveParticipant: role (source/destination/application), AE title, host."""
    item: dict[str, Any] = {"role": role}
    if ae_title is not None:
        item["ae_title"] = ae_title
    if host is not None:
        item["host"] = host
    item.update(extra)
    return item


def record(
    session: Session,
    event_id: Code,
    action: str,
    outcome: int,
    *,
    event_type: Code | None = None,
    description: str | None = None,
    participants: list[dict[str, Any]] | None = None,
    objects: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit event to `session` (committed with the caller's transaction)."""
    if action not in {"C", "R", "U", "D", "E"}:
        raise ValueError(f"audit action must be one of C R U D E, not {action!r}")
    if outcome not in {SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE}:
        raise ValueError(f"audit outcome must be 0, 4, 8 or 12, not {outcome!r}")
    ev = AuditEvent(
        event_time=utcnow(),
        event_id_code=event_id.value,
        event_id_scheme="DCM" if event_id.value.isdigit() else "99HIPAI",
        event_id_meaning=event_id.meaning,
        event_type_code=event_type.value if event_type else None,
        event_type_meaning=event_type.meaning if event_type else None,
        action=action,
        outcome=outcome,
        outcome_description=description,
        participants=participants or [],
        objects=objects or {},
        source_id=SOURCE_ID,
    )
    session.add(ev)
    return ev


def record_now(factory: sessionmaker[Session], event_id: Code, action: str, outcome: int,
               **kwargs: Any) -> None:
    """Record an audit event in its own transaction."""
    with factory() as session, session.begin():
        record(session, event_id, action, outcome, **kwargs)
