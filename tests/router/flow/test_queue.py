"""The job queue on real SQLite files and a real PostgreSQL server: routing into jobs,
claims, leases, backoff, dead letters, idempotent sends, and worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import db
from hiprouter.config import Settings
from hiprouter.pipelines.registry import PipelineSet
from hiprouter.router.flow import ops, queue
from hiprouter.router.flow.routing import route_study
from hiprouter.router.flow.worker import enqueue_sends, run_job
from hiprouter.schema import AuditEvent, Job, Send, SendAttempt, Study
from tests.router.dicomkit import add_study, make_study
from tests.router.pacs import StoreSCP
from tests.toy import NO_ANATOMY_CHECK

REPO = Path(__file__).resolve().parents[3]
HIP_RULE = {"name": "hip", "match": {"tag": "BodyPartExamined", "in": ["HIP", "PELVIS"]},
            "forward_to": ["pacs"]}


def make_settings(tmp_path: Path, url: str, **extra: object) -> Settings:
    data = {
        "database": {"url": url},
        "storage": {"spool_dir": str(tmp_path / "spool"), "output_dir": str(tmp_path / "out")},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 1}},
        "queue": {"lease_s": 30, "retry": {"initial_s": 1, "factor": 2, "max_s": 3,
                                            "max_attempts": 3}},
        "rules": [HIP_RULE],
    }
    data.update(extra)
    return Settings.model_validate(data)


@pytest.fixture(params=["sqlite", "postgres"])
def factory(request: pytest.FixtureRequest) -> sessionmaker[Session]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    db.upgrade(url)
    engine = db.make_engine(url)
    request.addfinalizer(engine.dispose)
    f = db.session_factory(engine)
    f.url = url  # type: ignore[attr-defined]
    return f


def _route(factory: sessionmaker[Session], settings: Settings, study_uid: str) -> list[Job]:
    with db.write_transaction(factory) as s:
        study = s.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        return route_study(s, settings, study)


def test_route_study_creates_jobs_once_and_audits(factory, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, factory.url, rules=[
        {"name": "hip", "match": {"tag": "BodyPartExamined", "equals": "HIP"},
         "pipelines": ["forward"], "send_to": ["pacs"], "forward_to": ["archive"]}],
        destinations={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 1},
                      "archive": {"ae_title": "ARCH", "host": "127.0.0.1", "port": 2}})
    uid = add_study(factory, make_study(tmp_path / "in", 2, 2, BodyPartExamined="HIP"))
    jobs = _route(factory, settings, uid)
    assert [(j.pipeline, j.send_to) for j in jobs] == [("forward", ["pacs", "archive"])]
    assert all(len(j.series_uids) == 2 and j.state == "pending" for j in jobs)
    again = _route(factory, settings, uid)
    assert {j.id for j in again} == {j.id for j in jobs}
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
        assert s.scalars(select(Study.state)).one() == "routed"
        ev = s.scalars(select(AuditEvent).where(AuditEvent.event_id_code == "HIP003")).one()
        assert ev.objects["study_uid"] == uid and "BodyPartExamined" in ev.outcome_description


def test_unmatched_study_is_ignored_and_audited(factory, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, factory.url)
    uid = add_study(factory, make_study(tmp_path / "in", 1, 1, BodyPartExamined="CHEST"))
    assert _route(factory, settings, uid) == []
    with factory() as s:
        assert s.scalars(select(Study.state)).one() == "ignored"
        ev = s.scalars(select(AuditEvent)).one()
        assert "no rule matched" in ev.outcome_description


def test_claim_lease_backoff_dead_and_retry(factory, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, factory.url)
    retry = settings.queue.retry
    with factory() as s, s.begin():
        job_id = queue.enqueue(s, study_uid="1.2.3", pipeline="forward", rule="r",
                               send_to=["pacs"]).id
    job = queue.claim(factory, "a", 30, retry)
    assert job is not None and job.id == job_id and job.attempts == 1
    assert queue.claim(factory, "b", 30, retry) is None  # leased to a
    assert queue.heartbeat(factory, job_id, "a", 30)
    assert not queue.heartbeat(factory, job_id, "b", 30)
    assert _fail(factory, job_id, "b", "not mine", retry) is None
    assert _fail(factory, job_id, "a", "boom", retry) == "failed"
    with factory() as s:
        row = s.get(Job, job_id)
        delay = (db.as_utc(row.next_run_at) - db.as_utc(row.updated_at)).total_seconds()
        assert row.last_error == "boom" and delay == pytest.approx(1.0)
    assert queue.claim(factory, "a", 30, retry) is None  # not due yet
    for attempt, expected in ((2, 2.0), (3, None)):
        _make_due(factory, job_id)
        job = queue.claim(factory, "a", 30, retry)
        assert job is not None and job.attempts == attempt
        state = _fail(factory, job_id, "a", f"boom {attempt}", retry)
        if expected is not None:
            assert state == "failed"
            assert queue.backoff_s(retry, attempt) == expected
        else:
            assert state == "dead"
    _make_due(factory, job_id)
    assert queue.claim(factory, "a", 30, retry) is None  # dead stays dead
    assert queue.backoff_s(retry, 10) == retry.max_s
    assert ops.retry_dead(factory).jobs == 1
    job = queue.claim(factory, "a", 30, retry)
    assert job is not None and job.attempts == 1


def _fail(factory: sessionmaker[Session], job_id: int, owner: str, error: str,
          retry) -> str | None:
    with db.write_transaction(factory) as s:
        return queue.fail(s, job_id, owner, error, retry)


def _make_due(factory: sessionmaker[Session], job_id: int) -> None:
    with factory() as s, s.begin():
        s.execute(update(Job).where(Job.id == job_id)
                  .values(next_run_at=db.utcnow() - timedelta(seconds=1)))


def test_expired_lease_is_claimed_again_and_fences_old_owner(factory, tmp_path) -> None:
    retry = make_settings(tmp_path, factory.url).queue.retry
    with factory() as s, s.begin():
        job_id = queue.enqueue(s, study_uid="1.2.3", pipeline="forward", rule="r",
                               send_to=[]).id
    assert queue.claim(factory, "dead-worker", 30, retry) is not None
    assert queue.claim(factory, "new-worker", 30, retry) is None  # leased
    with factory() as s, s.begin():  # the lease runs out (the owner stopped renewing)
        s.execute(update(Job).where(Job.id == job_id)
                  .values(lease_expires_at=db.utcnow() - timedelta(seconds=1)))
    job = queue.claim(factory, "new-worker", 30, retry)
    assert job is not None and job.id == job_id and job.attempts == 2
    with factory() as s, s.begin(), pytest.raises(queue.LeaseLost):
        queue.complete(s, job_id, "dead-worker")
    with factory() as s, s.begin():
        queue.complete(s, job_id, "new-worker")
    with factory() as s:
        assert s.get(Job, job_id).state == "done"


def test_rerun_reuses_sends_and_replay_sends_again(factory, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, factory.url)
    uid = add_study(factory, make_study(tmp_path / "in", 1, 3, BodyPartExamined="HIP"))
    (job,) = _route(factory, settings, uid)
    pipelines = PipelineSet(settings)
    claimed = queue.claim(factory, "w", 30, settings.queue.retry)
    assert run_job(factory, settings, pipelines, claimed, "w") == "done"
    with factory() as s, s.begin():
        s.execute(update(Send).values(state="sent"))
    # the same job again (e.g. after a lost lease): rows re-used, nothing sent twice
    with factory() as s, s.begin():
        row = s.get(Job, job.id)
        assert enqueue_sends(s, row, [settings.storage.resolve(p)
                                      for p in s.scalars(select(Send.path))]) == 0
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Send)) == 3
    replayed = ops.replay_study(factory, settings, uid)
    assert (replayed.jobs, replayed.rerouted) == (1, False)
    claimed = queue.claim(factory, "w", 30, settings.queue.retry)
    assert claimed.replay and run_job(factory, settings, pipelines, claimed, "w") == "done"
    with factory() as s:
        assert s.scalars(select(Send.state)).all() == ["pending"] * 3
        assert s.get(Job, job.id).replay is False
    with pytest.raises(LookupError):
        ops.replay_study(factory, settings, "9.9.9")


def test_job_without_instances_fails_with_error(factory, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, factory.url)
    with factory() as s, s.begin():
        queue.enqueue(s, study_uid="1.2.404", pipeline="forward", rule="r", send_to=["pacs"])
    job = queue.claim(factory, "w", 30, settings.queue.retry)
    assert run_job(factory, settings, PipelineSet(settings), job, "w") == "failed"
    with factory() as s:
        assert "no stored instances" in s.get(Job, job.id).last_error


def test_unknown_pipeline_kind_fails_jobs_until_dead_and_study_failed(factory, tmp_path):
    settings = make_settings(tmp_path, factory.url,
                             pipelines={"site": {"kind": "nosuch"}},
                             rules=[{"name": "hip", "pipelines": ["site"]}])
    uid = add_study(factory, make_study(tmp_path / "in", 1, 1))
    _route(factory, settings, uid)
    pipelines = PipelineSet(settings)
    states = []
    for _ in range(3):
        job = queue.claim(factory, "w", 30, settings.queue.retry)
        states.append(run_job(factory, settings, pipelines, job, "w"))
        _make_due(factory, job.id)
    assert states == ["failed", "failed", "dead"]
    with factory() as s:
        assert "unknown pipeline kind 'nosuch'" in s.get(Job, job.id).last_error
        assert s.scalars(select(Study.state)).one() == "failed"
    ops.retry_dead(factory, uid)
    with factory() as s:
        assert s.scalars(select(Study.state)).one() == "routed"


# -- worker processes against a real PostgreSQL ---------------------------------------


def _worker_config(tmp_path: Path, url: str, pacs_port: int, lease_s: float) -> Path:
    cfg = {
        "database": {"url": url},
        "storage": {"spool_dir": str(tmp_path / "spool"), "output_dir": str(tmp_path / "out")},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}},
        "pipelines": {"marked": {"kind": "marked"}},
        "plugins": ["tests.router.testpipes"],
        "report": {"secondary_captures": False},
        "inference": NO_ANATOMY_CHECK,
        "queue": {"lease_s": lease_s, "poll_interval_s": 0.1,
                  "retry": {"initial_s": 0.5, "max_s": 1}},
        "logging": {"level": "INFO", "json_logs": True},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start_worker(config: Path, log: Path, delay_s: float,
                  processes: int = 0) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HIPROUTER_TEST_PIPE_S": str(delay_s),
           "HIPROUTER_TEST_PIPE_PROCESSES": str(processes)}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from hiprouter.cli import main; main()", "--config",
             str(config), "worker",
             "--count", "2"], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    deadline = time.monotonic() + 30
    while "worker process ready" not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "worker did not start"
        time.sleep(0.05)
    return proc


def _queue_marked_jobs(factory, tmp_path: Path, n: int) -> list[str]:
    """n studies with one `marked` job each; returns their Study Instance UIDs (the kind
    logs the study it runs on)."""
    uids = []
    for i in range(n):
        uid = add_study(factory, make_study(tmp_path / "in" / str(i), 1, 1), state="routed")
        with factory() as s, s.begin():
            queue.enqueue(s, study_uid=uid, pipeline="marked", rule="t", send_to=["pacs"])
        uids.append(uid)
    return uids


def _runs(tmp_path: Path) -> list[tuple[str, str, int]]:
    path = tmp_path / "runs.log"
    if not path.exists():
        return []
    return [(w[0], w[1], int(w[2])) for w in
            (line.split() for line in path.read_text().splitlines())]


def _worker_problems(tmp_path: Path) -> list[str]:
    """The workers' warning and error log lines (for a failing test's message)."""
    return [line for log in sorted(tmp_path.glob("w*.log"))
            for line in log.read_text(errors="replace").splitlines()
            if '"level": "warning"' in line or '"level": "error"' in line]


@pytest.mark.postgres
def test_two_worker_processes_share_50_jobs_none_twice(pg_url: str, tmp_path: Path) -> None:
    db.upgrade(pg_url)
    engine = db.make_engine(pg_url)
    factory = db.session_factory(engine)
    pacs = StoreSCP(tmp_path / "pacs").start()
    config = _worker_config(tmp_path, pg_url, pacs.port, lease_s=30)
    # each process's first jobs wait until the other process has started one too, so
    # both take part however the scheduler favours one of them
    procs = [_start_worker(config, tmp_path / f"w{i}.log", 0.0, processes=2)
             for i in range(2)]
    try:
        ids = _queue_marked_jobs(factory, tmp_path, 50)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with factory() as s:
                done = s.scalar(select(func.count()).select_from(Job)
                                .where(Job.state == "done"))
                sent = s.scalar(select(func.count()).select_from(Send)
                                .where(Send.state == "sent"))
            if done == 50 and sent == 100:  # each study's report: an SR and a KOS
                break
            time.sleep(0.2)
        received = pacs.wait_for(100, timeout=10)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(30) for p in procs]
        pacs.stop()
        engine.dispose()
    starts = [(job, pid) for what, job, pid in _runs(tmp_path) if what == "start"]
    assert sorted(job for job, _ in starts) == sorted(ids), "a job ran twice or never"
    assert len({pid for _, pid in starts}) == 2, "both worker processes took jobs"
    with factory() as s:
        assert s.scalars(select(Job.attempts)).all() == [1] * 50
        attempts = [(a.sop_instance_uid, a.attempt, a.status, a.error, a.at)
                    for a in s.scalars(select(SendAttempt).order_by(SendAttempt.id))]
    twice = {uid for uid, n in received.items() if n > 1}
    assert len(received) == 100 and not twice, (
        f"sent twice: {twice}; their attempts: "
        f"{[a for a in attempts if a[0] in twice]}; worker warnings: "
        f"{_worker_problems(tmp_path)}")
    assert codes == [0, 0], "workers stop cleanly on SIGTERM"


@pytest.mark.postgres
def test_killed_worker_lease_expires_and_another_completes(pg_url: str, tmp_path) -> None:
    db.upgrade(pg_url)
    engine = db.make_engine(pg_url)
    factory = db.session_factory(engine)
    pacs = StoreSCP(tmp_path / "pacs").start()
    config = _worker_config(tmp_path, pg_url, pacs.port, lease_s=2)
    # the first worker's job would take 10 minutes: it is killed long before, however
    # slowly the second worker starts on a loaded machine
    first = _start_worker(config, tmp_path / "w0.log", 600.0)
    second = None
    try:
        (study_uid,) = _queue_marked_jobs(factory, tmp_path, 1)
        with factory() as s:
            job_id = s.scalars(select(Job.id).where(Job.study_uid == study_uid)).one()
        deadline = time.monotonic() + 120
        while not _runs(tmp_path):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # the second worker is already running when the first dies, so only the lease
        # expiry (2 s) can hand the job over
        second = _start_worker(config, tmp_path / "w1.log", 0.0)
        os.kill(first.pid, signal.SIGKILL)  # mid-job: started, not finished
        first.wait(10)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with factory() as s:
                job = s.get(Job, job_id)
            if job.state == "done":
                break
            time.sleep(0.2)
        received = pacs.wait_for(2, timeout=10)
    finally:
        if second is not None:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
        pacs.stop()
        engine.dispose()
    runs = _runs(tmp_path)
    assert [(w, pid) for w, _, pid in runs] == [("start", first.pid), ("start", second.pid),
                                                ("end", second.pid)]
    assert job.state == "done" and job.attempts == 2
    assert list(received.values()) == [1, 1]  # SR and KOS, each once
    assert "job lease expired" in (tmp_path / "w1.log").read_text()


def test_retry_and_replay_commands(tmp_path: Path, sqlite_url: str) -> None:
    from click.testing import CliRunner

    from hiprouter.cli import main

    db.upgrade(sqlite_url)
    factory = db.session_factory(db.make_engine(sqlite_url))
    settings = make_settings(tmp_path, sqlite_url)
    uid = add_study(factory, make_study(tmp_path / "in", 1, 1, BodyPartExamined="HIP"))
    (job,) = _route(factory, settings, uid)
    ignored = add_study(factory, make_study(tmp_path / "ct", 1, 1, BodyPartExamined="HEAD"))
    _route(factory, settings, ignored)
    with factory() as s, s.begin():
        s.execute(update(Job).values(state="dead", last_error="boom"))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(settings.model_dump(mode="json", by_alias=True,
                                                      exclude_none=True)))
    run = CliRunner().invoke
    result = run(main, ["--config", str(cfg), "retry"])
    assert result.exit_code == 0 and "re-queued 1 dead jobs and 0 dead sends" in result.output
    with factory() as s:
        assert s.get(Job, job.id).state == "pending"
    result = run(main, ["--config", str(cfg), "replay", uid])
    assert result.exit_code == 0 and "1 jobs re-queued" in result.output
    result = run(main, ["--config", str(cfg), "replay", ignored])
    assert result.exit_code == 0 and "0 jobs routed again" in result.output
    result = run(main, ["--config", str(cfg), "replay", "1.2.3.999"])
    assert result.exit_code == 1 and "not known" in result.output


def test_leases_of_dead_local_processes_expire_at_start(factory, tmp_path: Path) -> None:
    import socket as sock

    retry = make_settings(tmp_path, factory.url).queue.retry
    host = sock.gethostname()[:60]
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()
    with factory() as s, s.begin():
        for _ in range(3):
            queue.enqueue(s, study_uid=f"1.2.{_}", pipeline="forward", rule="r", send_to=[])
    owners = [f"{host}:{dead_pid}:w0", f"{host}:{os.getpid()}:w0", f"otherhost:{dead_pid}:w0"]
    for owner in owners:
        assert queue.claim(factory, owner, 300, retry) is not None
    assert queue.expire_orphaned_leases(factory, host) == 1
    again = queue.claim(factory, "new", 300, retry)
    assert again is not None and again.attempts == 2
    assert queue.claim(factory, "new", 300, retry) is None  # the live and remote leases hold


def test_retry_and_replay_give_up_on_a_locked_database_and_say_so(
    tmp_path: Path, sqlite_url: str
) -> None:
    import sqlite3

    from click.testing import CliRunner

    from hiprouter.cli import main

    db.upgrade(sqlite_url)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"database": {"url": sqlite_url}}))
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, and not letting go
    try:
        for args in (["retry"], ["replay", "1.2.3"]):
            result = CliRunner().invoke(main, ["--config", str(cfg), *args, "--timeout", "0.5"])
            assert result.exit_code == 1, result.output
            assert "gave up after 0.5 s (--timeout) waiting for the database" in result.output
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    result = CliRunner().invoke(main, ["--config", str(cfg), "retry", "--timeout", "0.5"])
    assert result.exit_code == 0 and "re-queued 0 dead jobs" in result.output
