"""Deterministic UIDs for created objects, so a retry or replay replaces instead of duplicating.

A UID is the ``2.25`` form of a name-based (SHA-1, version 5) UUID (ISO/IEC 9834-8, PS3.5
Annex B.2) over the source study, the pipeline, the model version and the kind of object.
The same inputs always give the same UID; any other model version gives other UIDs.
"""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/hiprouter/hiprouter/output-uid/v1")
_SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur in a UID, code or version string


def output_uid(study_uid: str, pipeline: str, model_version: str, kind: str, *parts: str) -> str:
    """UID of one created thing, stable for the same study, pipeline, model version and kind.

    Parameters
    ----------
    study_uid:
        Study Instance UID of the source study.
    pipeline:
        Name of the pipeline that produced the result.
    model_version:
        Everything that identifies the model's output (callers pass version and Device UID).
    kind:
        What is identified, e.g. ``"sr-series"``, ``"sc-instance"``, ``"tracking"``.
    parts:
        Further distinguishing values, e.g. the source SOP Instance UID or the laterality.
    """
    for name, value in (("study_uid", study_uid), ("pipeline", pipeline),
                        ("model_version", model_version), ("kind", kind)):
        if not value:
            raise ValueError(f"output_uid: {name} must not be empty")
    name = _SEPARATOR.join((study_uid, pipeline, model_version, kind, *parts))
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"
