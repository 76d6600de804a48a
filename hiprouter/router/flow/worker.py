"""Job workers: claim a job, run it, queue the resulting sends, mark it done.

A job is either an analysis (every inference pipeline of a rule on a study episode, one
report: hiprouter/pipelines/job.py) or a forward (the original images, unchanged).

`JobWorker` threads run inside `hiprouter serve` and in extra processes (`hiprouter worker
--count N`) on the same or other hosts (`hiprouter.service` starts them); the database is
all they share. While a pipeline runs, a heartbeat renews the job's lease; if the worker
dies the lease expires and another worker runs the job again. Because pipelines derive
output UIDs deterministically and sends are unique per (SOP Instance UID, destination), a
re-run never sends a duplicate.
"""

from __future__ import annotations

import shutil
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import audit, fileperms
from hiprouter.config import RetryConfig, Settings
from hiprouter.db import dialect_insert, utcnow, write_transaction
from hiprouter.logs import get_logger
from hiprouter.pipelines.job import JobContext, run_analysis
from hiprouter.pipelines.registry import FORWARD, PipelineSet
from hiprouter.router.flow import dispatch, queue, studies
from hiprouter.router.flow import observe as observe_job
from hiprouter.schema import Instance, Job, Send

log = get_logger(__name__)

PIPELINE_JOB = audit.Code("HIP006", "Pipeline Job")


def object_uids(paths: Sequence[Path]) -> list[tuple[Path, str, str]]:
    """(path, SOP Instance UID, SOP Class UID) of each output file (headers only)."""
    out = []
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True,
                     specific_tags=["SOPInstanceUID", "SOPClassUID"])
        out.append((Path(path), str(ds.SOPInstanceUID), str(ds.SOPClassUID)))
    return out


def enqueue_sends(session: Session, job: Job, paths: Sequence[Path],
                  objects: Sequence[tuple[Path, str, str]] | None = None,
                  settings: Settings | None = None) -> int:
    """Queue each file for each of the job's destinations; returns how many are pending.

    A (SOP Instance UID, destination) pair has one row for ever: a re-run of the job
    re-uses it (already sent stays sent), a replay sends it again, a pending or failed
    row just points at the new file. Pass `objects` (from `object_uids`) to keep file
    reads out of the caller's transaction, and `settings` to apply each destination's
    choice of objects (`dispatch.objects_for`: one HL7 message per report). With
    `settings` the rows refer to the files as `storage.ref` does (host-independent).
    """
    insert = dialect_insert(session.get_bind().dialect.name)
    now = utcnow()
    queued = 0
    objects = list(objects if objects is not None else object_uids(paths))
    per_dest = {dest: {o[1] for o in dispatch.objects_for(session, settings, job, dest,
                                                           objects)}
                if settings is not None else None for dest in job.send_to}
    for path, sop_uid, sop_class in objects:
        ref = settings.storage.ref(path) if settings is not None else str(path)
        for dest in job.send_to:
            wanted = per_dest[dest]
            if wanted is not None and sop_uid not in wanted:
                continue  # e.g. an HL7 destination takes one message per report
            session.execute(
                insert(Send).values(
                    job_id=job.id, study_uid=job.study_uid, sop_instance_uid=sop_uid,
                    sop_class_uid=sop_class, destination=dest, path=ref,
                    state=queue.PENDING, attempts=0, next_run_at=now, created_at=now,
                ).on_conflict_do_nothing(index_elements=["sop_instance_uid", "destination"])
            )
            row = session.scalars(
                select(Send).where(Send.sop_instance_uid == sop_uid, Send.destination == dest)
            ).one()
            if row.state == queue.RUNNING:
                continue  # being sent right now; its dispatcher finishes it
            if row.state in (queue.SENT, queue.DEAD) and not job.replay:
                continue
            if row.state in (queue.SENT, queue.DEAD):
                row.state, row.attempts, row.next_run_at = queue.PENDING, 0, now
            row.path, row.job_id = ref, job.id
            queued += 1
    return queued


def job_instances(session: Session, job: Job) -> list[Instance]:
    """The stored instances a job works on, in a stable order."""
    query = select(Instance).where(Instance.study_uid == job.study_uid,
                                   Instance.state == "stored", Instance.purpose == "clinical")
    if job.series_uids is not None:
        query = query.where(Instance.series_uid.in_(job.series_uids))
    return list(session.scalars(query.order_by(Instance.series_uid, Instance.id)).all())


def make_context(settings: Settings, factory: sessionmaker[Session], job: Job,
                 log: object = None) -> JobContext:
    """Load the job's instances and create its output folder."""
    with factory() as session:
        instances = job_instances(session, job)
    fileperms.make_dirs(settings.storage.output_dir)
    out = settings.storage.output_dir / f"{job.id}-{uuid.uuid4().hex[:12]}"
    out.mkdir(mode=0o700)
    fileperms.secure(out, folder=True)
    return JobContext(settings, factory, job, instances, out,
                      log or get_logger("hiprouter.pipeline").bind(job_id=job.id))


def execute(ctx: JobContext, pipelines: PipelineSet) -> list[Path]:
    """The files a job produces: its report, or the originals for a forward job."""
    if ctx.job.pipeline == FORWARD and not ctx.job.pipelines:
        return [ctx.settings.storage.resolve(i.spool_path) for i in ctx.instances]
    pipelines.refresh()  # a promotion in the model registry takes effect with this job
    return run_analysis(ctx, pipelines)


def run_job(factory: sessionmaker[Session], settings: Settings, pipelines: PipelineSet,
            job: Job, owner: str) -> str:
    """Run one claimed job to done, failed or dead; returns the outcome."""
    bound = log.bind(job_id=job.id, study_uid=job.study_uid, pipeline=job.pipeline,
                     attempt=job.attempts)
    lease_s = settings.queue.lease_s
    stop_beat = threading.Event()
    beat = threading.Thread(target=_heartbeat, name=f"lease-{job.id}",
                            args=(factory, job.id, owner, lease_s, stop_beat), daemon=True)
    beat.start()
    ctx = None
    clock = time.perf_counter()
    outcome: str = "lost"
    try:
        ctx = make_context(settings, factory, job, bound)
        if not ctx.instances:
            raise RuntimeError("the job has no stored instances")
        paths = execute(ctx, pipelines)
        for path in paths:  # report writers use mkstemp (0600): the group mode, if any
            if path.parent == ctx.output_dir:
                fileperms.secure(path)
        objects = object_uids(paths) if job.send_to else []
        with write_transaction(factory) as session:
            queue.complete(session, job.id, owner)
            queued = enqueue_sends(session, job, paths, objects, settings)
            session.flush()
            studies.settle_study(session, job.study_uid)
            audit.record(
                session, PIPELINE_JOB, "E", audit.SUCCESS,
                description=f"{job.pipeline} attempt {job.attempts}: {len(paths)} objects, "
                            f"{queued} sends queued",
                participants=[audit.participant("application", settings.node.ae_title,
                                                worker=owner)],
                objects={"study_uid": job.study_uid, "job_id": job.id,
                         "pipeline": job.pipeline, "send_to": job.send_to},
            )
        bound.info("job done", objects=len(paths), sends=queued)
        outcome = queue.DONE
        return outcome
    except queue.LeaseLost as exc:
        bound.warning("job result discarded, lease lost", error=str(exc))
        return outcome
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        bound.error("job failed", error=error, trace=traceback.format_exc(limit=5))
        state = _fail(factory, job, owner, error, settings.queue.retry)
        _audit_failure(factory, settings, job, owner, error, state)
        outcome = state or "lost"
        return outcome
    finally:
        stop_beat.set()
        beat.join()
        observe_job.job_attempt(factory, job, outcome, time.perf_counter() - clock)
        if ctx is not None and ctx.output_dir.exists() and not any(ctx.output_dir.iterdir()):
            shutil.rmtree(ctx.output_dir, ignore_errors=True)


def _fail(factory: sessionmaker[Session], job: Job, owner: str, error: str,
          retry: RetryConfig) -> str | None:
    """Record the failed attempt; a job that is now dead may settle its study."""
    with write_transaction(factory) as session:
        state = queue.fail(session, job.id, owner, error, retry)
        if state == queue.DEAD:
            session.flush()
            studies.settle_study(session, job.study_uid)
        return state


def _audit_failure(factory: sessionmaker[Session], settings: Settings, job: Job, owner: str,
                   error: str, state: str | None) -> None:
    try:
        audit.record_now(
            factory, PIPELINE_JOB, "E", audit.SERIOUS_FAILURE if state == queue.DEAD
            else audit.MINOR_FAILURE,
            description=f"{job.pipeline} attempt {job.attempts} -> {state}: {error}"[:4000],
            participants=[audit.participant("application", settings.node.ae_title,
                                            worker=owner)],
            objects={"study_uid": job.study_uid, "job_id": job.id, "pipeline": job.pipeline},
        )
    except Exception as exc:
        log.error("cannot audit job failure", job_id=job.id, error=str(exc))


def _heartbeat(factory: sessionmaker[Session], job_id: int, owner: str, lease_s: float,
               stop: threading.Event) -> None:
    while not stop.wait(max(lease_s / 3, 0.2)):
        try:
            if not queue.heartbeat(factory, job_id, owner, lease_s):
                log.warning("job lease lost", job_id=job_id, owner=owner)
                return
        except Exception as exc:  # the database may be briefly unreachable
            log.warning("lease renewal failed", job_id=job_id, error=str(exc))


class JobWorker(threading.Thread):
    """One worker thread: claims and runs jobs until `stop` is set."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings,
                 pipelines: PipelineSet, stop: threading.Event, index: int) -> None:
        super().__init__(name=f"job-worker-{index}", daemon=True)
        self.factory, self.settings, self.pipelines, self.stop = (
            factory, settings, pipelines, stop)
        self.owner = queue.owner_id(f"w{index}")

    def run(self) -> None:
        q = self.settings.queue
        while not self.stop.is_set():
            try:
                job = queue.claim(self.factory, self.owner, q.lease_s, q.retry)
            except Exception as exc:
                log.error("job claim failed", error=str(exc))
                job = None
            if job is None:
                self.stop.wait(q.poll_interval_s)
                continue
            run_job(self.factory, self.settings, self.pipelines, job, self.owner)
