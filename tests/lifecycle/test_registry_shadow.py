"""The model registry (register, promote, rollback, history) and shadow mode: a shadow
model runs and its findings are recorded, but nothing of it is sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import db
from hiprouter.config import Settings
from hiprouter.lifecycle import registry
from hiprouter.lifecycle.registry import RegistryError, RegistryResolver
from hiprouter.pipelines.registry import PipelineSet
from hiprouter.router.flow import ops, queue
from hiprouter.router.flow.routing import route_study
from hiprouter.router.flow.worker import run_job
from hiprouter.schema import AuditEvent, FindingRow, ModelStageEvent, Output, Send, Study
from hiprouter.synth.study import make_study
from tests.inference.helpers import constant_model
from tests.router.dicomkit import add_study


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {c: constant_model(root / c, "hardware", c) for c in ("tha", "no_hardware", "im_nail")}


def _settings(tmp_path: Path, models: dict[str, Path], **pipe: object) -> Settings:
    return Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
        "storage": {"spool_dir": str(tmp_path / "spool"), "output_dir": str(tmp_path / "out"),
                    "models_dir": str(tmp_path / "registry")},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 1}},
        "pipelines": {"hardware": {"kind": "hardware", "models": [str(models["tha"])],
                                   "device": "cpu", "runtime": "torch", **pipe}},
        "rules": [{"name": "hip", "pipelines": ["hardware"], "send_to": ["pacs"]}],
        "report": {"secondary_captures": False},
    })


def _factory(settings: Settings) -> sessionmaker[Session]:
    db.upgrade(settings.database.url)
    return db.session_factory(db.make_engine(settings.database.url))


def _study(tmp_path: Path, factory: sessionmaker[Session], settings: Settings) -> str:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    paths = []
    for i, img in enumerate(make_study(11, 0, hardware={"R": "tha", "L": "no_hardware"},
                                       views=("ap_pelvis",), size=(256, 320)).images):
        path = folder / f"{i}.dcm"
        img.dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    uid = add_study(factory, paths)
    with db.write_transaction(factory) as s:
        route_study(s, settings, s.scalars(select(Study).where(Study.study_uid == uid)).one())
    return uid


def _run(factory: sessionmaker[Session], settings: Settings, pipelines: PipelineSet) -> None:
    job = queue.claim(factory, "w", 30, settings.queue.retry)
    assert job is not None
    assert run_job(factory, settings, pipelines, job, "w") == "done"


def _sr_models(factory: sessionmaker[Session], settings: Settings) -> set[str]:
    """The constant test models named anywhere in the SRs (algorithm identification)."""
    with factory() as s:
        paths = s.scalars(select(Output.path).where(Output.kind == "SR")).all()
    data = b"".join(settings.storage.resolve(p).read_bytes() for p in paths)
    return {m for m in ("constant-tha", "constant-no_hardware") if m.encode() in data}


def test_register_promote_rollback_and_history(tmp_path: Path, models: dict[str, Path]) -> None:
    settings = _settings(tmp_path, models)
    factory = _factory(settings)
    first = registry.register(factory, settings, models["tha"], name="hw", version="1")
    assert first.stage == "registered" and first.path == "models:hw/1"  # any mount path
    folder = settings.storage.resolve(first.path)
    assert folder.is_relative_to(tmp_path / "registry") and (folder / "card.yaml").is_file()
    with pytest.raises(RegistryError, match="already registered"):
        registry.register(factory, settings, models["tha"], name="hw", version="1")
    with pytest.raises(RegistryError, match="letters"):
        registry.register(factory, settings, models["tha"], name="../evil", version="1")
    registry.register(factory, settings, models["no_hardware"], name="hw", version="2")
    registry.promote(factory, settings, "hw", "1", "active")
    with pytest.raises(RegistryError, match="no earlier active"):
        registry.rollback(factory, settings, "hw")
    registry.promote(factory, settings, "hw", "2", "shadow")
    registry.promote(factory, settings, "hw", "2", "active")  # 1 retired
    with factory() as s:
        stages = {v.version: v.stage for v in registry.versions(s, "hw")}
        assert stages == {"1": "retired", "2": "active"}
        assert registry.deployments(s)["hw"]["active"].version == "2"
    old, new = registry.rollback(factory, settings, "hw")
    assert (old.version, new.version) == ("2", "1")
    with factory() as s:
        moves = [(e.version, e.from_stage, e.to_stage) for e in registry.history(s, "hw")]
        assert moves[-2:] == [("2", "active", "retired"), ("1", "retired", "active")]
        assert s.scalars(select(ModelStageEvent)).all()
        assert any(e.event_id_code == "HIP009" for e in s.scalars(select(AuditEvent)))


def test_shadow_model_is_recorded_never_sent_and_promotion_takes_effect(
        tmp_path: Path, models: dict[str, Path]) -> None:
    settings = _settings(tmp_path, models)
    factory = _factory(settings)
    uid = _study(tmp_path, factory, settings)
    row = registry.register(factory, settings, models["no_hardware"], name="hardware",
                            version="2.0")
    registry.promote(factory, settings, "hardware", "2.0", "shadow")
    pipelines = PipelineSet(settings, resolver=RegistryResolver(factory, settings.storage))
    _run(factory, settings, pipelines)
    with factory() as s:
        rows = s.scalars(select(FindingRow).order_by(FindingRow.id)).all()
        active = [(r.laterality, r.predicted_class) for r in rows if r.mode == "active"]
        shadow = [(r.laterality, r.predicted_class, r.model_id) for r in rows
                  if r.mode == "shadow"]
        assert active == [("R", "tha"), ("L", "tha")]
        assert shadow == [("R", "no_hardware", row.id), ("L", "no_hardware", row.id)]
        assert {r.model_name for r in rows if r.mode == "shadow"} == {"constant-no_hardware"}
        events = [e.outcome_description for e in s.scalars(select(AuditEvent))
                  if e.event_id_code == "HIP001"]
        assert any("shadow: recorded, not sent" in (d or "") for d in events)
    # the shadow model is not in the report
    assert _sr_models(factory, settings) == {"constant-tha"}

    # promotion is a command: the next job runs 2.0 as the reported model
    registry.promote(factory, settings, "hardware", "2.0", "active")
    ops.replay_study(factory, settings, uid)
    _run(factory, settings, pipelines)
    with factory() as s:
        latest = s.scalars(select(FindingRow).order_by(FindingRow.id.desc()).limit(2)).all()
        assert {(r.mode, r.predicted_class, r.model_id) for r in latest} == {
            ("active", "no_hardware", row.id)}
    assert "constant-no_hardware" in _sr_models(factory, settings)


def test_a_pipeline_in_shadow_mode_sends_nothing(tmp_path: Path,
                                                 models: dict[str, Path]) -> None:
    settings = _settings(tmp_path, models, mode="shadow")
    factory = _factory(settings)
    _study(tmp_path, factory, settings)
    resolver = RegistryResolver(factory, settings.storage)
    _run(factory, settings, PipelineSet(settings, resolver=resolver))
    with factory() as s:
        assert {r.mode for r in s.scalars(select(FindingRow))} == {"shadow"}
        assert s.scalars(select(Output)).all() == []
        assert s.scalars(select(Send)).all() == []
        assert s.scalars(select(Study.state)).one() == "done"


def test_cascade_below_a_shadow_only_pipeline_is_shadow_too(tmp_path: Path,
                                                            models: dict[str, Path]) -> None:
    from hiprouter.pipelines.runner import analyse_study

    settings = Settings.model_validate({
        "pipelines": {
            "hardware": {"kind": "hardware", "models": [str(models["im_nail"])],
                         "device": "cpu", "runtime": "torch", "mode": "shadow"},
            "nail": {"kind": "hardware", "models": [str(models["tha"])], "device": "cpu",
                     "runtime": "torch",
                     "runs_on": {"pipeline": "hardware", "classes": ["im_nail"]}}}})
    datasets = [img.dataset for img in make_study(12, 0, views=("ap_pelvis",),
                                                  size=(256, 320)).images]
    study, _ = analyse_study(PipelineSet(settings), ["hardware", "nail"],
                             str(datasets[0].StudyInstanceUID), datasets)
    assert [(r.pipeline, r.mode, len(r.findings)) for r in study.results] == [
        ("hardware", "shadow", 2), ("nail", "shadow", 2)]
    assert study.reported().results == []
