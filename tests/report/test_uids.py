"""Deterministic output UIDs: a retry or replay replaces instead of duplicating."""

from __future__ import annotations

import re

import pytest

from hiprouter.findings import ModelInfo
from hiprouter.report.uids import output_uid, producer_key

UID_RE = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")
A = ModelInfo("hw", "0.1.0", "resnet", "2.25.1")


def test_same_inputs_same_uid_and_valid_form() -> None:
    a = output_uid("1.2.3.4", "hardware=0.1.0", "sr-instance")
    assert a == output_uid("1.2.3.4", "hardware=0.1.0", "sr-instance")
    assert UID_RE.match(a) and len(a) <= 64


@pytest.mark.parametrize("changed", [
    ("1.2.3.5", "hardware=0.1.0", "sr-instance"),
    ("1.2.3.4", "hardware=0.2.0", "sr-instance"),
    ("1.2.3.4", "hardware=0.1.0", "sr-series"),
])
def test_any_other_input_gives_another_uid(changed: tuple[str, str, str]) -> None:
    assert output_uid(*changed) != output_uid("1.2.3.4", "hardware=0.1.0", "sr-instance")


def test_parts_are_not_ambiguous() -> None:
    assert output_uid("1.2", "p", "sc", "1.23") != output_uid("1.2", "p", "sc1", ".23")
    assert output_uid("1.2", "p", "sc", "a", "b") != output_uid("1.2", "p", "sc", "ab")


def test_producer_key_follows_every_model_and_ignores_order() -> None:
    b = ModelInfo("fx", "0.3.0", "resnet", "2.25.2")
    assert producer_key([("hardware", A), ("fracture", b)]) == \
        producer_key([("fracture", b), ("hardware", A)])
    newer = ModelInfo("fx", "0.3.0", "resnet", "2.25.3")  # same version, other weights
    assert producer_key([("hardware", A), ("fracture", newer)]) != \
        producer_key([("hardware", A), ("fracture", b)])


def test_empty_study_uid_is_rejected() -> None:
    with pytest.raises(ValueError, match="study_uid"):
        output_uid("", "hardware=0.1.0", "sr-instance")
