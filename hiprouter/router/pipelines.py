"""The pipeline registry: what a job runs, looked up by `settings.pipelines[name].kind`.

A pipeline is a callable `run(ctx: JobContext) -> list[Path]` that returns DICOM files
to send to the job's `send_to` destinations. A factory `(settings, name) -> run` builds it
once per worker (load models there). Kinds register with `register_pipeline(kind,
factory)`: `forward` is built in; `hardware` and `fracture` are registered by
`hiprouter.pipelines.hardware` when first needed; sites add kinds in modules listed
under `plugins:` in the config.

Re-running a job must produce the same SOP Instance UIDs, so the PACS never receives a
duplicate: derive output UIDs with `JobContext.derive_uid(...)`.
"""

from __future__ import annotations

import importlib
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hiprouter.config import ConfigError, Settings
from hiprouter.logs import get_logger
from hiprouter.schema import Instance, Job

FORWARD = "forward"
BUILTIN_MODULES = {"hardware": "hiprouter.pipelines.hardware",
                   "fracture": "hiprouter.pipelines.hardware"}
"""Kinds whose module registers them on import (imported on first use)."""


class PipelineError(RuntimeError):
    """A pipeline kind is unknown or could not be loaded."""


@dataclass
class JobContext:
    """Everything a pipeline run gets: the job, its instances and a folder for outputs."""

    settings: Settings
    factory: sessionmaker[Session]
    job: Job
    instances: list[Instance]
    """Stored (not quarantined) instances of the study, limited to job.series_uids."""
    output_dir: Path
    """An empty folder for this run's output files (storage.output_dir/<job id>-<id>)."""
    log: Any = field(default=None)

    def derive_uid(self, *parts: str) -> str:
        """A UID that is the same whenever this job runs again with the same `parts`."""
        key = [self.job.study_uid, self.job.pipeline, self.job.rule or "",
               str(self.job.episode), *(self.job.series_uids or []), *parts]
        return str(generate_uid(entropy_srcs=key))


Pipeline = Callable[[JobContext], list[Path]]
PipelineFactory = Callable[[Settings, str], Pipeline]

_registry: dict[str, PipelineFactory] = {}
_lock = threading.Lock()


def register_pipeline(kind: str, factory: PipelineFactory) -> None:
    """Make pipeline `kind` available; `factory(settings, name)` returns its run callable."""
    with _lock:
        _registry[kind] = factory


def pipeline_kind(settings: Settings, name: str) -> str:
    """The kind of the pipeline called `name` (`forward` is always available)."""
    if name in settings.pipelines:
        return settings.pipelines[name].kind
    if name == FORWARD:
        return FORWARD
    raise PipelineError(f"pipeline {name!r} is not configured")


def load_plugins(settings: Settings) -> None:
    """Import the modules listed in `plugins:` so they can register their kinds."""
    for module in settings.plugins:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ConfigError(f"plugins: cannot import {module!r}: {exc}") from exc


def factory_for(kind: str) -> PipelineFactory:
    """The registered factory of `kind`, importing its built-in module on first use."""
    with _lock:
        found = _registry.get(kind)
    if found is not None:
        return found
    module = BUILTIN_MODULES.get(kind)
    if module is not None:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise PipelineError(f"pipeline kind {kind!r} is not available: {exc}") from exc
        with _lock:
            found = _registry.get(kind)
    if found is None:
        raise PipelineError(f"unknown pipeline kind {kind!r} (register it in a plugin module)")
    return found


def check_pipelines(settings: Settings) -> None:
    """Fail early (ConfigError naming the pipeline) when a configured kind is unknown.

    A built-in kind whose module cannot be imported (e.g. missing optional dependencies)
    is logged instead: its jobs fail with that error, everything else keeps working.
    """
    load_plugins(settings)
    for name, cfg in settings.pipelines.items():
        try:
            factory_for(cfg.kind)
        except PipelineError as exc:
            if cfg.kind not in BUILTIN_MODULES:
                raise ConfigError(f"pipelines.{name}.kind: {exc}") from exc
            get_logger(__name__).error("pipeline not available", pipeline=name,
                                       kind=cfg.kind, error=str(exc))


class PipelineCache:
    """Pipelines built once per worker process (models load once) and shared by threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._built: dict[str, Pipeline] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Pipeline:
        with self._lock:
            if name not in self._built:
                kind = pipeline_kind(self.settings, name)
                self._built[name] = factory_for(kind)(self.settings, name)
            return self._built[name]


def job_instances(session: Session, job: Job) -> list[Instance]:
    """The stored instances a job works on, in a stable order."""
    query = select(Instance).where(Instance.study_uid == job.study_uid,
                                   Instance.state == "stored")
    if job.series_uids is not None:
        query = query.where(Instance.series_uid.in_(job.series_uids))
    return list(session.scalars(query.order_by(Instance.series_uid, Instance.id)).all())


def make_context(settings: Settings, factory: sessionmaker[Session], job: Job,
                 log: Any = None) -> JobContext:
    """Load the job's instances and create its output folder."""
    with factory() as session:
        instances = job_instances(session, job)
    out = settings.storage.output_dir / f"{job.id}-{uuid.uuid4().hex[:12]}"
    out.mkdir(parents=True, exist_ok=False)
    return JobContext(settings, factory, job, instances, out,
                      log or get_logger("hiprouter.pipeline").bind(job_id=job.id))


def forward(settings: Settings, name: str) -> Pipeline:
    """The `forward` pipeline: send the original images on, unchanged."""

    def run(ctx: JobContext) -> list[Path]:
        return [Path(i.spool_path) for i in ctx.instances]

    return run


register_pipeline(FORWARD, forward)
