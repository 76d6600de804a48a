"""The model registry: versioned model folders, their stages and the history of changes.

`register` copies a model folder (card.yaml, weights, evaluation figures) into
``storage.models_dir/<name>/<version>/`` after checking the weights against the card, and
records it as stage ``registered``. `promote` moves a version to ``shadow`` or ``active``
(the version that held the stage steps back: an active one is ``retired``, a shadow one
``registered``); `rollback` re-activates the version that was active before. Every change
is a `ModelStageEvent` row and an audit event, so the history is complete.

A pipeline runs the versions of the registry name it is bound to (``registered_model``,
default its own name): the active version in place of its configured models, the shadow
version next to it with findings recorded but never sent. `deployments` is what the job
workers read before each job, so a promotion takes effect without a restart.
"""

from __future__ import annotations

import getpass
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import audit
from hiprouter.config import Settings, StorageConfig
from hiprouter.db import utcnow, write_transaction
from hiprouter.inference.models import CARD_FILE, ModelError, read_card, verify_weights
from hiprouter.schema import ModelStageEvent, ModelVersion

REGISTERED, SHADOW, ACTIVE, RETIRED = "registered", "shadow", "active", "retired"
STAGES = (REGISTERED, SHADOW, ACTIVE, RETIRED)
MODEL_REGISTRY = audit.Code("HIP009", "Model Registry Change")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
COPIED = ("evaluation", "split.csv", "history.json")
"""What of a training output folder is kept besides the card and the weights."""


class RegistryError(Exception):
    """A registry operation that cannot be done, with the reason."""


@dataclass(frozen=True)
class Deployed:
    """A registered version a pipeline runs."""

    model_id: int
    name: str
    version: str
    stage: str
    path: str
    kind: str


def actor() -> str:
    """Who runs the command (OS user name), for the history."""
    try:
        return getpass.getuser()[:64]
    except Exception:
        return "unknown"


def _safe(value: str, what: str) -> str:
    if not _SAFE.match(value) or value in (".", ".."):
        raise RegistryError(f"{what} {value!r}: use letters, digits, '.', '_' and '-' "
                            "(at most 64, starting with a letter or digit)")
    return value


def evaluation_baseline(model_dir: Path) -> dict[str, Any]:
    """The predicted-class distribution of a model's test split (evaluation/report.json
    written by `hiprouter train`), the first baseline production is compared with."""
    import json

    path = Path(model_dir) / "evaluation" / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        classes, matrix = report["classes"], report["confusion_matrix"]
    except (OSError, ValueError, KeyError):
        return {}
    totals = [sum(row[j] for row in matrix) for j in range(len(classes))]
    n = sum(totals)
    if not n:
        return {}
    return {"source": "test split (evaluation/report.json)", "n": n,
            "class_distribution": {c: t / n for c, t in zip(classes, totals, strict=True)
                                   if t}}


def set_baseline(factory: sessionmaker[Session], model_id: int, baseline: dict[str, Any]
                 ) -> None:
    with write_transaction(factory) as session:
        row = session.get(ModelVersion, model_id)
        if row is not None:
            row.baseline = {**(row.baseline or {}), **baseline}


def register(factory: sessionmaker[Session], settings: Settings, model_dir: Path, *,
             name: str | None = None, version: str | None = None,
             baseline: dict[str, Any] | None = None, who: str | None = None) -> ModelVersion:
    """Copy a model folder into the registry and record it (stage ``registered``)."""
    model_dir = Path(model_dir)
    try:
        card = read_card(model_dir)
    except ModelError as exc:
        raise RegistryError(str(exc)) from exc
    if not verify_weights(model_dir, card):
        raise RegistryError(f"{model_dir}: the weights do not match the card's sha256; "
                            "a registered model must be exactly what was evaluated")
    name = _safe(name or card.name, "model name")
    version = _safe(version or card.version, "version")
    target = settings.storage.models_dir / name / version
    with factory() as session:
        if session.scalars(select(ModelVersion).where(
                ModelVersion.name == name, ModelVersion.version == version)).first():
            raise RegistryError(f"{name} {version} is already registered (versions are "
                                "immutable: register a new version)")
    if target.exists():
        shutil.rmtree(target)  # a copy left by an interrupted registration
    target.mkdir(parents=True)
    shutil.copy2(model_dir / CARD_FILE, target / CARD_FILE)
    shutil.copy2(model_dir / card.weights_file, target / card.weights_file)
    for extra in COPIED:
        src = model_dir / extra
        if src.is_dir():
            shutil.copytree(src, target / extra)
        elif src.is_file():
            shutil.copy2(src, target / extra)
    if not verify_weights(target, card):
        shutil.rmtree(target, ignore_errors=True)
        raise RegistryError(f"copy of {model_dir} into {target} does not verify")
    now = utcnow()
    card_data = card.model_dump(mode="json")
    card_data["training"] = {k: v for k, v in card_data.get("training", {}).items()
                             if k != "history"}
    with write_transaction(factory) as session:
        row = ModelVersion(name=name, version=version, kind=card.label_set,
                           path=settings.storage.ref(target),
                           weights_sha256=card.weights_sha256, device_uid=card.device_uid,
                           card=card_data,
                           baseline=baseline or evaluation_baseline(model_dir), stage=REGISTERED,
                           registered_at=now, stage_changed_at=now)
        session.add(row)
        session.flush()
        session.add(ModelStageEvent(model_id=row.id, name=name, version=version,
                                    from_stage="", to_stage=REGISTERED, actor=who or actor(),
                                    reason=f"registered from {model_dir.name}", at=now))
        audit.record(session, MODEL_REGISTRY, "C", audit.SUCCESS,
                     description=f"registered {name} {version} ({card.label_set}, "
                                 f"{card.architecture}, sha256 {card.weights_sha256[:12]})",
                     participants=[audit.participant("application", settings.node.ae_title,
                                                     user_id=who or actor(),
                                                     device_uid=card.device_uid)],
                     objects={"model": name, "version": version, "model_id": row.id})
    return row


def _get(session: Session, name: str, version: str) -> ModelVersion:
    row = session.scalars(select(ModelVersion).where(
        ModelVersion.name == name, ModelVersion.version == version)).first()
    if row is None:
        known = ", ".join(session.scalars(select(ModelVersion.version).where(
            ModelVersion.name == name))) or "none"
        raise RegistryError(f"{name} {version} is not registered (versions of {name}: {known})")
    return row


def _move(session: Session, row: ModelVersion, to: str, who: str, reason: str | None,
          settings: Settings) -> None:
    if row.stage == to:
        return
    now = utcnow()
    session.add(ModelStageEvent(model_id=row.id, name=row.name, version=row.version,
                                from_stage=row.stage, to_stage=to, actor=who, reason=reason,
                                at=now))
    audit.record(session, MODEL_REGISTRY, "U", audit.SUCCESS,
                 description=f"{row.name} {row.version}: {row.stage} -> {to}"
                             + (f" ({reason})" if reason else ""),
                 participants=[audit.participant("application", settings.node.ae_title,
                                                 user_id=who, device_uid=row.device_uid)],
                 objects={"model": row.name, "version": row.version, "model_id": row.id})
    row.stage, row.stage_changed_at = to, now


def promote(factory: sessionmaker[Session], settings: Settings, name: str, version: str,
            to: str, *, who: str | None = None, reason: str | None = None) -> ModelVersion:
    """Make `version` of `name` the shadow or the active one (or retire it)."""
    if to not in (SHADOW, ACTIVE, RETIRED, REGISTERED):
        raise RegistryError(f"stage {to!r}: one of shadow, active, registered, retired")
    who = who or actor()
    with write_transaction(factory) as session:
        row = _get(session, name, version)
        if to in (SHADOW, ACTIVE):
            for other in session.scalars(select(ModelVersion).where(
                    ModelVersion.name == name, ModelVersion.stage == to,
                    ModelVersion.id != row.id)):
                _move(session, other, RETIRED if to == ACTIVE else REGISTERED, who,
                      f"replaced by {version}", settings)
        _move(session, row, to, who, reason, settings)
        session.flush()
        return row


def rollback(factory: sessionmaker[Session], settings: Settings, name: str, *,
             who: str | None = None) -> tuple[ModelVersion | None, ModelVersion]:
    """Re-activate the version that was active before the current one.

    Returns (the version stepped back or None, the version now active).
    """
    who = who or actor()
    with write_transaction(factory) as session:
        current = session.scalars(select(ModelVersion).where(
            ModelVersion.name == name, ModelVersion.stage == ACTIVE)).first()
        activations = session.scalars(
            select(ModelStageEvent).where(ModelStageEvent.name == name,
                                          ModelStageEvent.to_stage == ACTIVE)
            .order_by(ModelStageEvent.at.desc(), ModelStageEvent.id.desc())).all()
        previous = next((e for e in activations
                         if current is None or e.model_id != current.id), None)
        if previous is None:
            raise RegistryError(f"{name}: no earlier active version to roll back to")
        target = session.get(ModelVersion, previous.model_id)
        assert target is not None
        if current is not None:
            _move(session, current, RETIRED, who, f"rolled back to {target.version}", settings)
        _move(session, target, ACTIVE, who,
              f"rollback from {current.version if current else 'none'}", settings)
        session.flush()
        return current, target


def versions(session: Session, name: str | None = None) -> list[ModelVersion]:
    query = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.id)
    if name:
        query = query.where(ModelVersion.name == name)
    return list(session.scalars(query))


def history(session: Session, name: str | None = None) -> list[ModelStageEvent]:
    query = select(ModelStageEvent).order_by(ModelStageEvent.at, ModelStageEvent.id)
    if name:
        query = query.where(ModelStageEvent.name == name)
    return list(session.scalars(query))


def deployments(session: Session, storage: StorageConfig | None = None
                ) -> dict[str, dict[str, Deployed]]:
    """Registry name -> stage (shadow, active) -> the version in that stage; `storage`
    turns the rows' folder references into this host's paths."""
    out: dict[str, dict[str, Deployed]] = {}
    for row in session.scalars(select(ModelVersion).where(
            ModelVersion.stage.in_((SHADOW, ACTIVE)))):
        path = str(storage.resolve(row.path)) if storage is not None else row.path
        out.setdefault(row.name, {})[row.stage] = Deployed(
            row.id, row.name, row.version, row.stage, path, row.kind)
    return out


class RegistryResolver:
    """What `PipelineSet` calls before each job: the deployments, read from the database."""

    def __init__(self, factory: sessionmaker[Session],
                 storage: StorageConfig | None = None) -> None:
        self.factory = factory
        self.storage = storage

    def __call__(self) -> dict[str, dict[str, Deployed]]:
        with self.factory() as session:
            return deployments(session, self.storage)
