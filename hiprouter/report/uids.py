"""Deterministic UIDs for everything hiprouter creates, so a retry or replay replaces.

A UID is the ``2.25`` form of a name-based (SHA-1, version 5) UUID (ISO/IEC 9834-8, PS3.5
Annex B.2) over the source study, what produced the object (the models' identities) and
the kind of object. The same inputs always give the same UID; other model weights give
other UIDs. This is the one UID helper of the project.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable

from hiprouter.findings import ModelInfo

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/hiprouter/hiprouter/output-uid/v1")
_SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur in a UID, code or version string


def output_uid(study_uid: str, producer: str, kind: str, *parts: str) -> str:
    """UID of one created thing, stable for the same study, producer and kind.

    Parameters
    ----------
    study_uid:
        Study Instance UID of the source study.
    producer:
        What identifies the producing models (see `producer_key`).
    kind:
        What is identified, e.g. ``"sr-series"``, ``"sc-instance"``, ``"tracking"``.
    parts:
        Further distinguishing values, e.g. a source SOP Instance UID or a laterality.
    """
    for name, value in (("study_uid", study_uid), ("producer", producer), ("kind", kind)):
        if not value:
            raise ValueError(f"output_uid: {name} must not be empty")
    name = _SEPARATOR.join((study_uid, producer, kind, *parts))
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


def producer_key(models: Iterable[tuple[str, ModelInfo | None]]) -> str:
    """Identity of a report's producers: each pipeline with its model version and Device UID.

    Order-independent; a change of any model's weights changes it.
    """
    items = sorted(f"{name}={m.version}|{m.device_uid}" if m is not None else f"{name}=-"
                   for name, m in models)
    return ";".join(items) or "-"


def input_digest(sop_uids: Iterable[str]) -> str:
    """A short digest of the set of source SOP Instance UIDs a report used."""
    joined = "\n".join(sorted(set(sop_uids))).encode("ascii", "replace")
    return hashlib.sha256(joined).hexdigest()[:32]
