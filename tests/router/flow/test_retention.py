"""Retention removes finished studies' files and rows, and never unfinished work."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import db
from hiprouter.config import Settings
from hiprouter.router.flow import queue
from hiprouter.router.flow.retention import sweep_retention
from hiprouter.router.flow.worker import enqueue_sends
from hiprouter.schema import AuditEvent, Instance, Job, Send, SendAttempt, Study
from tests.router.conftest import RouterProcess, make_cr_files, storescu
from tests.router.dicomkit import add_study, make_study
from tests.router.pacs import StoreSCP


def _settings(tmp_path: Path, days: float = 1.0) -> Settings:
    return Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
        "storage": {"spool_dir": str(tmp_path / "spool"), "output_dir": str(tmp_path / "out"),
                    "retention_days": days},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 1}},
    })


def _study(factory: sessionmaker[Session], settings: Settings, folder: Path, *,
           job_state: str | None, send_state: str | None, study_state: str = "routed",
           age_days: float = 2.0) -> tuple[str, list[Path]]:
    paths = make_study(folder, 1, 2)
    uid = add_study(factory, paths, state=study_state)
    with factory() as s, s.begin():
        s.execute(update(Study).where(Study.study_uid == uid).values(
            last_received_at=db.utcnow() - timedelta(days=age_days)))
        if job_state is not None:
            job = queue.enqueue(s, study_uid=uid, pipeline="forward", rule="r", send_to=["pacs"])
            out = settings.storage.output_dir / f"{job.id}-abc"
            out.mkdir(parents=True)
            (out / "result.dcm").write_bytes(b"x")
            job.state = job_state
            if send_state is not None:
                enqueue_sends(s, job, paths)
                s.flush()
                for row in s.scalars(select(Send).where(Send.study_uid == uid)):
                    row.state = send_state
                    s.add(SendAttempt(send_id=row.id, sop_instance_uid=row.sop_instance_uid,
                                      destination="pacs", attempt=1, status=0, at=db.utcnow()))
    return uid, paths


def test_retention_removes_only_old_finished_studies(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    db.upgrade(settings.database.url)
    factory = db.session_factory(db.make_engine(settings.database.url))
    gone, gone_files = _study(factory, settings, tmp_path / "a", job_state="done",
                              send_state="sent")
    dead, _ = _study(factory, settings, tmp_path / "b", job_state="dead", send_state=None)
    keep = {
        "pending job": _study(factory, settings, tmp_path / "c", job_state="pending",
                              send_state=None),
        "retrying job": _study(factory, settings, tmp_path / "d", job_state="failed",
                               send_state=None),
        "unsent": _study(factory, settings, tmp_path / "e", job_state="done",
                         send_state="failed"),
        "running send": _study(factory, settings, tmp_path / "f", job_state="done",
                               send_state="running"),
        "receiving": _study(factory, settings, tmp_path / "g", job_state=None, send_state=None,
                            study_state="receiving"),
        "not routed yet": _study(factory, settings, tmp_path / "h", job_state=None,
                                 send_state=None, study_state="complete"),
        "recent": _study(factory, settings, tmp_path / "i", job_state="done",
                         send_state="sent", age_days=0.5),
    }
    assert sweep_retention(factory, settings) == 2
    assert not any(p.exists() for p in gone_files)
    with factory() as s:
        studies = set(s.scalars(select(Study.study_uid)))
        assert studies == {uid for uid, _ in keep.values()}
        for table in (Instance, Job, Send):
            left = set(s.scalars(select(table.study_uid)))
            assert gone not in left and dead not in left
        assert s.scalar(select(func.count()).select_from(SendAttempt)) == 6
        deleted = s.scalars(select(AuditEvent).where(AuditEvent.event_id_code == "110105"))
        assert {ev.objects["study_uid"] for ev in deleted} == {gone, dead}
        job_ids = set(s.scalars(select(Job.id)))
    outputs = {int(p.name.split("-")[0]) for p in settings.storage.output_dir.iterdir()}
    assert outputs == job_ids
    for uid, paths in keep.values():
        assert all(p.exists() for p in paths), uid
    assert sweep_retention(factory, _settings(tmp_path, days=0)) == 0


def test_serve_runs_retention_in_its_scheduler(
    router_process: Callable[..., RouterProcess], tmp_path: Path
) -> None:
    pacs = StoreSCP(tmp_path / "pacs").start()
    try:
        router = router_process({
            "storage": {"retention_days": 3 / 86400, "retention_check_s": 0.5},
            "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1",
                                      "port": pacs.port}},
            "rules": [{"name": "all", "forward_to": ["pacs"]}],
            "queue": {"poll_interval_s": 0.1},
        })
        files = make_cr_files(tmp_path / "study", 2, size=32)
        assert storescu(router.port, files).returncode == 0
        assert len(pacs.wait_for(2, timeout=30)) == 2
        spooled = [p for p in router.spool_dir.rglob("*.dcm")]
        assert len(spooled) == 2
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with router.session_factory()() as s:
                if s.scalar(select(func.count()).select_from(Study)) == 0:
                    break
            time.sleep(0.2)
        with router.session_factory()() as s:
            assert s.scalar(select(func.count()).select_from(Study)) == 0
            assert s.scalar(select(func.count()).select_from(Instance)) == 0
        assert not any(p.exists() for p in spooled)
    finally:
        pacs.stop()
