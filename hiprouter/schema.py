"""The SQL schema (SQLAlchemy 2 ORM). Tables are created only by alembic migrations.

The database is the only state shared between stages (receive, route, infer, report,
dispatch), so every state transition is a row update in one transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UID = String(64)


class Base(DeclarativeBase):
    pass


class Association(Base):
    """One DICOM association (inbound or outbound)."""

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    direction: Mapped[str] = mapped_column(String(8), default="in")  # in | out
    calling_ae: Mapped[str] = mapped_column(String(16))
    called_ae: Mapped[str] = mapped_column(String(16))
    peer_host: Mapped[str] = mapped_column(String(255))
    peer_port: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # accepted | rejected | released | aborted | error
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    instances_received: Mapped[int] = mapped_column(Integer, default=0)


class Study(Base):
    """A study as seen by the router; completion state survives restarts."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    # receiving | complete | routed | done | failed | ignored
    state: Mapped[str] = mapped_column(String(16), default="receiving", index=True)
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    routed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    calling_ae: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # A study that receives instances after completion starts a new "episode".
    episode: Mapped[int] = mapped_column(Integer, default=1)


class Instance(Base):
    """A received SOP instance, stored once in the spool."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    series_uid: Mapped[str] = mapped_column(UID, index=True)
    transfer_syntax: Mapped[str] = mapped_column(UID)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    spool_path: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    association_id: Mapped[int | None] = mapped_column(
        ForeignKey("associations.id", ondelete="SET NULL"), nullable=True
    )
    calling_ae: Mapped[str | None] = mapped_column(String(16), nullable=True)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    # stored | quarantined
    state: Mapped[str] = mapped_column(String(16), default="stored")
    quarantine_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # clinical: routed to inference; dataset: retrieved for a training data set (called AE
    # dataset.ae_title, or C-GET by `dataset pull`); report: a final report (text SR) for
    # feedback. Only clinical instances count for a study and are routed (migration 0006).
    purpose: Mapped[str] = mapped_column(String(16), default="clinical",
                                         server_default="clinical")


class Job(Base):
    """One unit of work in the durable queue: run a pipeline on a study."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_claim", "state", "next_run_at"),
        # Routing a study episode twice must not create a second job (migration 0003).
        UniqueConstraint("study_uid", "episode", "rule", "pipeline", name="uq_jobs_route"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    series_uids: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    pipeline: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str | None] = mapped_column(String(128), nullable=True)
    send_to: Mapped[list[str]] = mapped_column(JSON, default=list)
    # pending | running | failed (waiting to retry) | done | dead
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    episode: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # replay: when the job runs, sends it produces are sent again even if sent before
    replay: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # the inference pipelines this job runs in cascade order (None: `pipeline` alone)
    pipelines: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class Send(Base):
    """One outbound object to one destination; retried until sent or dead."""

    __tablename__ = "sends"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "destination", name="uq_sends_sop_dest"),
        Index("ix_sends_claim", "state", "next_run_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True
    )
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    destination: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    # pending | running | failed (waiting to retry) | committing | sent | dead
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # storage commitment (migration 0007): state `committing` waits for the peer's
    # N-EVENT-REPORT on the Transaction UID of its N-ACTION
    commit_uid: Mapped[str | None] = mapped_column(UID, nullable=True, index=True)
    commit_requested_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True)
    committed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True)


class SendAttempt(Base):
    """Every C-STORE attempt to a destination, successful or not."""

    __tablename__ = "send_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    send_id: Mapped[int] = mapped_column(ForeignKey("sends.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    destination: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FindingRow(Base):
    """What one pipeline said about one hip (or image) of a study episode (findings.Finding).

    A job that runs again replaces its rows; masks and heat maps stay in the DICOM outputs
    (SEG, SC), the row keeps their summary.
    """

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True, index=True
    )
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    episode: Mapped[int] = mapped_column(Integer, default=1)
    pipeline: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    laterality: Mapped[str] = mapped_column(String(8))  # R | L | U
    source_sop_uids: Mapped[list[str]] = mapped_column(JSON)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    device_uid: Mapped[str | None] = mapped_column(UID, nullable=True)
    # assessed | indeterminate | not_assessed
    status: Mapped[str] = mapped_column(String(16), default="assessed")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    predicted_class: Mapped[str | None] = mapped_column(String(64), nullable=True)
    probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    # [{"key", "value", "unit"}]
    measurements: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # [{"sop_instance_uid", "graphic_type", "points": [[col, row], ...], "label"}]
    regions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # {"masks": [{"sop_instance_uid", "label", "pixels"}], "views": ..., ...}
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # active: reported; shadow: recorded only, nothing of it is sent (migration 0006)
    mode: Mapped[str] = mapped_column(String(8), default="active", server_default="active")
    # the model registry entry the finding came from (None: a model folder from config)
    model_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Output(Base):
    """A DICOM object the router created (SR, SC, KOS)."""

    __tablename__ = "outputs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True
    )
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    kind: Mapped[str] = mapped_column(String(8))  # SR | SC | SEG | KOS
    path: Mapped[str] = mapped_column(Text)
    priority: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEvent(Base):
    """An audit record shaped after DICOM PS3.15 A.5 (RFC 3881 / DICOM audit message)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # EventID, e.g. DCM 110104 "DICOM Instances Transferred"
    event_id_code: Mapped[str] = mapped_column(String(16))
    event_id_scheme: Mapped[str] = mapped_column(String(16), default="DCM")
    event_id_meaning: Mapped[str] = mapped_column(String(128))
    # EventTypeCode, optional, e.g. DCM 110120 "Application Start"
    event_type_code: Mapped[str | None] = mapped_column(String(16), nullable=True)
    event_type_meaning: Mapped[str | None] = mapped_column(String(128), nullable=True)
    action: Mapped[str] = mapped_column(String(1))  # C R U D E
    outcome: Mapped[int] = mapped_column(Integer)  # 0 4 8 12
    outcome_description: Mapped[str | None] = mapped_column(Text, nullable=True)
    # [{"role": "source"|"destination"|..., "ae_title":..., "host":..., "user_id":...}]
    participants: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # {"study_uid": ..., "sop_instance_uids": [...], "sop_class_uid": ...}
    objects: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    source_id: Mapped[str] = mapped_column(String(64))


class ModelVersion(Base):
    """A registered model version (`hiprouter models register`), its files under
    storage.models_dir and its stage: registered | shadow | active | retired."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    device_uid: Mapped[str] = mapped_column(UID)
    card: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The card as registered (site evaluation figures included)."""
    baseline: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """What production is compared with: class distribution, confidence, OOD rate."""
    stage: Mapped[str] = mapped_column(String(16), default="registered")
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stage_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)


class ModelStageEvent(Base):
    """Every stage change of a registered model (the history `models rollback` reads)."""

    __tablename__ = "model_stage_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"),
                                          index=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(64))
    from_stage: Mapped[str] = mapped_column(String(16))
    to_stage: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DatasetItem(Base):
    """One study or series a `dataset pull` found, and how far it got (resumable)."""

    __tablename__ = "dataset_items"
    __table_args__ = (UniqueConstraint("dataset", "study_uid", "series_uid",
                                       name="uq_dataset_items"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset: Mapped[str] = mapped_column(String(128), index=True)
    """The data set's name (its output folder's name)."""
    study_uid: Mapped[str] = mapped_column(UID)
    series_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str] = mapped_column(String(16), default="")
    # found | retrieved | exported | excluded | failed
    state: Mapped[str] = mapped_column(String(16), default="found")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReportLabel(Base):
    """A per-hip label one final report gives for one pipeline kind's classes.

    Only the label, the rules that fired and a hash of the text are kept, never the text.
    """

    __tablename__ = "report_labels"
    __table_args__ = (UniqueConstraint("study_uid", "source_ref", "kind", "laterality",
                                       name="uq_report_labels"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    source: Mapped[str] = mapped_column(String(8))  # sr | csv
    source_ref: Mapped[str] = mapped_column(String(64))
    """SOP Instance UID of the SR, or a keyed hash of the RIS row."""
    report_sha256: Mapped[str] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(64))
    laterality: Mapped[str] = mapped_column(String(1))  # R | L
    # labelled | unlabelled | contradictory
    status: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(64), nullable=True)
    evidence: Mapped[list[str]] = mapped_column(JSON, default=list)
    """Ids of the rules that fired (class/language/pattern number, negated or not)."""
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                         nullable=True)
    extracted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MonitorCheck(Base):
    """One drift or agreement figure of a pipeline for one week, and whether it alerts."""

    __tablename__ = "monitor_checks"
    __table_args__ = (UniqueConstraint("pipeline", "mode", "model_version", "week", "metric",
                                       name="uq_monitor_checks"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(64), index=True)
    mode: Mapped[str] = mapped_column(String(8))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    week: Mapped[str] = mapped_column(String(8))  # ISO week, 2026-W07
    metric: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    n: Mapped[int] = mapped_column(Integer, default=0)
    alert: Mapped[bool] = mapped_column(Boolean, default=False)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
