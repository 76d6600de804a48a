"""HL7 v2 result messages to the RIS worklist, sent over MLLP (an `hl7` destination).

One message per report (study episode): the worker queues one send for the report's SR
(its KOS when there is no SR) to each `hl7` destination of the rule, unless
`send_when` says the report has nothing worth a message (`wanted`). The dispatcher then
builds the message from the database (the job's findings, the KOS priority) and the study's
source headers (accession number, patient identity: these go to the RIS in the message and
never into logs or audit events), checks it against the message structure with hl7apy
(`validate`), sends it over MLLP and reads the ACK: MSA-1 AA (or CA)
is success; AE, AR, CE, CR, no ACK or a connection error is a failed attempt that is
retried with the same backoff, dead letter and audit as any other send. The message
control ID (MSH-10) is derived from the SR's SOP Instance UID, the destination and how
often the message was delivered before, so a retry repeats the same control ID (a RIS can
drop a duplicate) and a replay (`hiprouter replay`) sends a new one.

Message (ORU^R01 by default; ORM^O01 or OMI^O23 per destination):
MSH, PID (patient ID, name, birth date, sex from the radiograph), ORC (accession number as
filler order number), [TQ1 with the priority, OMI only], OBR (accession in OBR-3 and
OBR-18, result status P, the triage priority in OBR-27 component 6 per `priority_map`),
[IPC, OMI only], then OBX: the impression (TX), the findings text per hip (TX, OBX-4 R/L;
text longer than one line continues in the next OBX with the same identifier),
one coded finding per hip and pipeline (CWE, probability in OBX-9), the triage level (CWE,
"A" in OBX-8 when above ROUTINE) and reason (TX), and a reference to the SR (RP, plus its
Study/Series/SOP Instance UIDs as HD).
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from hiprouter.config import Hl7Destination, Settings, StorageConfig
from hiprouter.db import utcnow
from hiprouter.schema import FindingRow, Instance, Job, Output, Send, SendAttempt

SR_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33",
                        "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.11"})
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
SCHEME = "99HIPAI"
LEVELS = ("ROUTINE", "MEDIUM", "HIGH")
START, END = b"\x0b", b"\x1c\x0d"
MAX_ACK_BYTES = 1 << 20
HEADER_TAGS = ["AccessionNumber", "PatientID", "IssuerOfPatientID", "PatientName",
               "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
               "StudyDescription", "RequestedProcedureID", "SpecificCharacterSet"]


class Hl7Error(Exception):
    """The message could not be delivered or the receiver did not accept it."""


# -- which reports get a message ---------------------------------------------------------------

def pick_object(objects: Sequence[tuple[Path, str, str]]) -> tuple[Path, str, str] | None:
    """The object an HL7 send is keyed on: the report's SR, else its KOS, else none (a
    forward job's images never produce a message)."""
    for wanted in (SR_CLASSES, {KOS_CLASS}):
        for obj in objects:
            if obj[2] in wanted:
                return obj
    return None


def wanted(session: Session, job: Job, dest: Hl7Destination,
           default_priority: str) -> str | None:
    """None when the job's report should get a message, else why not (for the audit)."""
    if dest.send_when == "always":
        return None
    assessed = session.scalar(
        select(FindingRow.id).where(FindingRow.job_id == job.id,
                                    FindingRow.status == "assessed").limit(1))
    if assessed is None:
        return "no assessed findings"
    if dest.send_when == "flagged":
        level = _priority(session, job.id) or default_priority
        if LEVELS.index(level) <= LEVELS.index(default_priority):
            return f"triage level {level} is not above {default_priority}"
    return None


def _priority(session: Session, job_id: int | None) -> str | None:
    if job_id is None:
        return None
    value = session.scalar(select(Output.priority).where(
        Output.job_id == job_id, Output.kind == "KOS").limit(1))
    return str(value) if value in LEVELS else None


# -- building the message ----------------------------------------------------------------------

def escape(value: Any) -> str:
    """HL7 v2 escaping of one component's text (PS: the field separators and line breaks)."""
    text = "" if value is None else str(value)
    text = (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\"))
    return " ".join(text.replace("\r", "\n").split("\n")).strip()


def _comp(*parts: Any) -> str:
    """Components joined with ^ (each escaped), trailing empty ones dropped."""
    out = [escape(p) for p in parts]
    while out and out[-1] == "":
        out.pop()
    return "^".join(out)


def _seg(name: str, *fields: str) -> str:
    out = list(fields)
    while out and out[-1] == "":
        out.pop()
    return "|".join([name, *out])


def control_id(sop_instance_uid: str, destination: str, delivered_before: int = 0) -> str:
    """MSH-10 (at most 20 characters): the same for every attempt of one delivery."""
    key = f"{sop_instance_uid}|{destination}" + (f"|{delivered_before}"
                                                 if delivered_before else "")
    return "HR" + hashlib.sha256(key.encode()).hexdigest()[:18].upper()


def deliveries(factory: sessionmaker[Session], send: Send) -> int:
    """How often this send was delivered before (a replay sends it again)."""
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(SendAttempt).where(
            SendAttempt.send_id == send.id, SendAttempt.error.is_(None))) or 0)


TEXT_LINE = 190
"""Longest text in one OBX (one line of a report): text fields of HL7 v2 receivers are
often limited to 199 characters, so longer text goes in consecutive OBX segments with the
same identifier and sub-ID, split between words (escaping may lengthen a line a little)."""


def wrap(text: str, width: int = TEXT_LINE) -> list[str]:
    """Text as lines of at most `width` characters, split between words."""
    import textwrap

    text = " ".join((text or "").split())
    return textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False) \
        if text else []


@dataclass
class ReportFacts:
    """What one message says, gathered from the database, the SR and the source header."""

    study_uid: str
    sr_uid: str | None = None
    sr_series_uid: str | None = None
    kos_uid: str | None = None
    priority: str = "ROUTINE"
    reason: str = ""
    impression: str = ""
    hip_text: dict[str, list[str]] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    header: Dataset = field(default_factory=Dataset)
    reported_at: datetime = field(default_factory=utcnow)


def _code(item: Dataset, name: str = "ConceptNameCodeSequence") -> tuple[str, str]:
    seq = item.get(name)
    if not seq:
        return "", ""
    return str(seq[0].CodingSchemeDesignator), str(seq[0].CodeValue)


def sr_text(sr: Dataset) -> tuple[str, dict[str, list[str]]]:
    """The SR's impression and its finding sentences per hip (R, L, U)."""
    impression = ""
    per_hip: dict[str, list[str]] = {}

    def laterality(group: Dataset) -> str:
        for item in group.get("ContentSequence", []):
            if _code(item) == ("SCT", "363698007"):  # Finding Site
                for mod in item.get("ContentSequence", []):
                    value = _code(mod, "ConceptCodeSequence")
                    if value == ("SCT", "24028007"):
                        return "R"
                    if value == ("SCT", "7771000"):
                        return "L"
        return "U"

    def walk(items: Any) -> None:
        nonlocal impression
        for item in items or []:
            code = _code(item)
            if code == ("DCM", "121073") and item.ValueType == "TEXT":
                impression = str(item.TextValue)
            elif code == ("DCM", "125007"):
                side = laterality(item)
                for child in item.get("ContentSequence", []):
                    if _code(child) == ("DCM", "121106") and child.ValueType == "TEXT":
                        sentences = per_hip.setdefault(side, [])
                        if str(child.TextValue) not in sentences:
                            sentences.append(str(child.TextValue))
            walk(item.get("ContentSequence"))

    walk(sr.get("ContentSequence"))
    return impression, per_hip


def gather(factory: sessionmaker[Session], send: Send,
           storage: StorageConfig | None = None) -> ReportFacts:
    """Everything the message for one send needs (`storage` resolves the files the rows
    refer to; without it a row must hold an absolute path)."""
    resolve = storage.resolve if storage is not None else Path
    facts = ReportFacts(study_uid=send.study_uid)
    with factory() as session:
        outputs = list(session.scalars(select(Output).where(Output.job_id == send.job_id)))
        rows = list(session.scalars(
            select(FindingRow).where(FindingRow.job_id == send.job_id)
            .order_by(FindingRow.laterality.desc(), FindingRow.id)))
        source = session.scalar(
            select(Instance.spool_path).where(Instance.study_uid == send.study_uid,
                                              Instance.state == "stored",
                                              Instance.purpose == "clinical")
            .order_by(Instance.id).limit(1))
    for out in outputs:
        if out.kind == "KOS":
            facts.kos_uid = out.sop_instance_uid
            facts.priority = out.priority if out.priority in LEVELS else facts.priority
            try:
                kos = dcmread(resolve(out.path), stop_before_pixels=True)
                facts.reason = _kos_reason(kos)
            except Exception:  # the message goes out without the reason text
                pass
    path = resolve(send.path)
    if send.sop_class_uid in SR_CLASSES:
        sr = dcmread(path)
        facts.sr_uid, facts.sr_series_uid = str(sr.SOPInstanceUID), str(sr.SeriesInstanceUID)
        facts.impression, facts.hip_text = sr_text(sr)
    else:
        sr_row = next((o for o in outputs if o.kind == "SR"), None)
        if sr_row is not None:
            facts.sr_uid = sr_row.sop_instance_uid
    facts.findings = [
        {"pipeline": r.pipeline, "laterality": r.laterality, "status": r.status,
         "class": r.predicted_class, "probability": r.probability}
        for r in rows]
    if source is None:
        raise Hl7Error(f"study {send.study_uid} has no stored source instance for the "
                       "patient and accession number")
    facts.header = dcmread(resolve(source), stop_before_pixels=True, specific_tags=HEADER_TAGS)
    return facts


def _kos_reason(kos: Dataset) -> str:
    for item in kos.get("ContentSequence", []):
        if _code(item) == ("DCM", "113012") and item.ValueType == "TEXT":  # Key Object Descr.
            return str(item.TextValue)
    return ""


def _ts(value: datetime) -> str:
    return value.astimezone().strftime("%Y%m%d%H%M%S%z")


def _xpn(name: Any) -> str:
    """DICOM PN (family^given^middle^prefix^suffix) -> HL7 XPN (family^given^middle^
    suffix^prefix)."""
    parts = (str(name or "").split("=")[0].split("^") + [""] * 5)[:5]
    return _comp(parts[0], parts[1], parts[2], parts[4], parts[3])


def build_message(facts: ReportFacts, dest: Hl7Destination, ctrl_id: str,
                  node_ae: str) -> str:
    """The ER7 text of the message (segments separated by CR)."""
    h = facts.header
    msg_code, event = dest.message_type.split("^")
    structure = {"ORU^R01": "ORU_R01", "ORM^O01": "ORM_O01", "OMI^O23": "OMI_O23"}[
        dest.message_type]
    accession = escape(h.get("AccessionNumber", "") or "")
    priority_code = dest.priority_map.get(facts.priority, "R")  # type: ignore[call-overload]
    now = _ts(facts.reported_at)
    study_dt = escape(f"{h.get('StudyDate', '') or ''}{h.get('StudyTime', '') or ''}"
                      .split(".")[0])
    segments = [
        _seg("MSH", "^~\\&", escape(dest.sending_application), escape(dest.sending_facility),
             escape(dest.receiving_application), escape(dest.receiving_facility), now, "",
             f"{msg_code}^{event}^{structure}", ctrl_id, "P", dest.version, "", "", "", "",
             "", "UNICODE UTF-8"),
        _seg("PID", "1", "", _comp(h.get("PatientID", ""), "", "",
                                    h.get("IssuerOfPatientID", "")),
             "", _xpn(h.get("PatientName")), "", escape(h.get("PatientBirthDate", "") or ""),
             escape(h.get("PatientSex", "") or "")),
    ]
    order_control = "RE" if msg_code == "ORU" else "XO"
    segments.append(_seg("ORC", order_control, "", accession, "", "CM" if msg_code == "ORU"
                         else "IP"))
    if msg_code == "OMI":
        segments.append(_seg("TQ1", "1", "", "", "", "", "", "", "", priority_code))
    service = _comp("HIPAI", "AI hip radiograph analysis", SCHEME)
    obr = ["1", "", accession, service, "", "", study_dt, "", "", "", "", "", "", "", "", "",
           "", accession, "", "", "", now, "", "RAD", "P", "", f"^^^^^{escape(priority_code)}"]
    segments.append(_seg("OBR", *obr))
    if msg_code == "OMI":
        segments.append(_seg("IPC", accession, escape(h.get("RequestedProcedureID", "") or
                                                      accession),
                             escape(facts.study_uid), accession))
    observations: list[list[str]] = []
    for line in wrap(facts.impression):
        observations.append(["TX", _comp("121073", "Impression", "DCM"), "", escape(line)])
    for side in ("R", "L", "U"):
        for line in wrap(" ".join(facts.hip_text.get(side, []))):
            observations.append(["TX", _comp("HIPTEXT", "AI findings text per hip", SCHEME),
                                 side, escape(line)])
    for f in facts.findings:
        value = (_comp(f["class"], str(f["class"]).replace("_", " "), SCHEME)
                 if f["status"] == "assessed" and f["class"] else
                 _comp(f["status"].upper(), f["status"].replace("_", " "), SCHEME))
        prob = f"{f['probability']:.3f}" if f["probability"] is not None else ""
        observations.append(["CWE", _comp(f["pipeline"].upper(), f"AI {f['pipeline']} finding",
                                          SCHEME), f["laterality"], value, "", "", "", prob])
    observations.append(["CWE", _comp("TRIAGE", "AI triage priority", SCHEME), "",
                         _comp(facts.priority, facts.priority.title(), SCHEME), "", "",
                         "A" if facts.priority != "ROUTINE" else ""])
    for line in wrap(facts.reason):
        observations.append(["TX", _comp("TRIAGEREASON", "AI triage reason", SCHEME), "",
                             escape(line)])
    if facts.sr_uid:
        observations.append(["RP", _comp("SR", "AI structured report", SCHEME), "",
                             _comp(facts.sr_uid, node_ae, "AP", "DICOM")])
        observations.append(["HD", _comp("STUDYUID", "Study Instance UID", SCHEME), "",
                             escape(facts.study_uid)])
        if facts.sr_series_uid:
            observations.append(["HD", _comp("SRSERIESUID", "SR Series Instance UID", SCHEME),
                                 "", escape(facts.sr_series_uid)])
        observations.append(["HD", _comp("SRSOPUID", "SR SOP Instance UID", SCHEME), "",
                             escape(facts.sr_uid)])
    for n, (vtype, ident, sub, value, *rest) in enumerate(observations, start=1):
        rest = (rest + ["", "", "", ""])[:4]  # units, range, abnormal flags, probability
        segments.append(_seg("OBX", str(n), vtype, ident, sub, value, rest[0], rest[1],
                             rest[2], rest[3], "", "P", "", "", now))
    return "\r".join(segments) + "\r"


def validate(er7: str, dest: Hl7Destination) -> None:
    """Check the message against the HL7 v2 structure of its type with hl7apy (segments,
    groups, required fields, data types); Hl7Error when it does not conform.

    ORM^O01 is parsed but not checked against its structure: hl7apy models its choice group
    (OBR | RQD | RQ1 | RXO | ODS | ODT) as if each member were required.
    """
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    strict = dest.message_type != "ORM^O01"
    level = VALIDATION_LEVEL.STRICT if strict else VALIDATION_LEVEL.TOLERANT
    try:
        message = parse_message(er7, validation_level=level, find_groups=True)
        if strict:
            message.validate()
    except Exception as exc:
        raise Hl7Error(f"{dest.message_type} {dest.version} message not valid: "
                       f"{type(exc).__name__}: {exc}"[:500]) from exc


# -- MLLP --------------------------------------------------------------------------------------

@dataclass
class Ack:
    code: str
    control_id: str
    text: str


def parse_ack(raw: bytes) -> Ack:
    """MSA-1, MSA-2 and the error text (MSA-3 or ERR) of an ACK."""
    text = raw.decode("utf-8", errors="replace").strip("\x0b\x1c\r\n ")
    msa = err = None
    for line in text.replace("\n", "\r").split("\r"):
        if line.startswith("MSA"):
            msa = line
        elif line.startswith("ERR") and err is None:
            err = line
    if msa is None:
        raise Hl7Error("reply has no MSA segment")
    sep = msa[3] if len(msa) > 3 else "|"
    fields = msa.split(sep)
    code = fields[1] if len(fields) > 1 else ""
    ctrl = fields[2] if len(fields) > 2 else ""
    info = fields[3] if len(fields) > 3 else ""
    if not info and err:
        info = " ".join(p for p in err.split(sep)[1:] if p)[:300]
    return Ack(code.strip(), ctrl.strip(), info.strip())


def mllp_exchange(dest: Hl7Destination, message: str,
                  tls: ssl.SSLContext | None = None) -> bytes:
    """Send one framed message on a new connection and return the framed reply's bytes."""
    sock = socket.create_connection((dest.host, dest.port), timeout=dest.timeout_s)
    try:
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=dest.host
                                   if dest.tls.check_hostname else None)
        sock.settimeout(dest.timeout_s)
        sock.sendall(START + message.encode("utf-8") + END)
        buf = b""
        while END not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_ACK_BYTES:
                raise Hl7Error("reply larger than 1 MiB")
        if START not in buf or END not in buf:
            raise Hl7Error("connection closed without an MLLP-framed ACK"
                           if not buf else "reply is not MLLP-framed")
        return buf[buf.index(START) + 1: buf.index(END)]
    finally:
        try:
            sock.close()
        except OSError:
            pass


def deliver(factory: sessionmaker[Session], settings: Settings, name: str,
            dest: Hl7Destination, send: Send,
            tls: ssl.SSLContext | None = None) -> tuple[str, str]:
    """Build and send the message of one send; returns (control ID, ACK code).

    Raises Hl7Error (or OSError, ssl.SSLError) when the attempt failed.
    """
    facts = gather(factory, send, settings.storage)
    ctrl = control_id(send.sop_instance_uid, name, deliveries(factory, send))
    message = build_message(facts, dest, ctrl, settings.node.ae_title)
    if dest.validate_structure:
        validate(message, dest)
    try:
        ack = parse_ack(mllp_exchange(dest, message, tls))
    except (OSError, ssl.SSLError) as exc:
        raise Hl7Error(f"MLLP {dest.host}:{dest.port}: {type(exc).__name__}: {exc}") from exc
    if ack.control_id and ack.control_id != ctrl:
        raise Hl7Error(f"ACK for another message ({ack.control_id}, sent {ctrl})")
    if ack.code not in ("AA", "CA"):
        raise Hl7Error(f"ACK {ack.code or '?'}" + (f": {ack.text}" if ack.text else ""))
    return ctrl, ack.code
