"""Triage priority of a study result: which findings make a study urgent, and why.

Rules come from the pipeline's configuration (``triage``: class-key patterns, a level and a
minimum probability). With no rules configured, fractures and dislocations at probability
>= 0.5 are HIGH and everything else gets the pipeline's ``default_priority`` (ROUTINE).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from hiprouter.config import PipelineConfig, TriageRule
from hiprouter.inference.classes import class_by_key
from hiprouter.inference.results import HipResult, StudyResult

LEVELS = ("ROUTINE", "MEDIUM", "HIGH")
"""Priority levels, lowest first."""

DEFAULT_RULES = (
    TriageRule(classes=["*fracture*", "*dislocation*"], level="HIGH", min_probability=0.5),
)
_SIDE = {"R": "right hip", "L": "left hip", "U": "hip of unknown side"}


@dataclass(frozen=True)
class Triage:
    """The priority of a study and the reason, in one line."""

    level: str
    reason: str


def _display(key: str) -> str:
    try:
        return class_by_key(key).display
    except KeyError:
        return key.replace("_", " ")


def _negative(key: str) -> bool:
    try:
        return class_by_key(key).negative
    except KeyError:
        return False


def _matches(rule: TriageRule, hip: HipResult) -> list[tuple[str, float]]:
    """(class key, probability) of the hip's findings that satisfy the rule.

    Negative classes (no_fracture, no_hardware) never match: "*fracture*" means fractures.
    """
    probs = dict(hip.probabilities)
    probs[hip.predicted_class] = max(probs.get(hip.predicted_class, 0.0), hip.probability)
    return [(key, p) for key, p in probs.items()
            if p >= rule.min_probability and not _negative(key)
            and any(fnmatchcase(key, pat) for pat in rule.classes)]


def triage(result: StudyResult, cfg: PipelineConfig) -> Triage:
    """Highest level whose rule matches any hip; the reason names the findings behind it."""
    rules = cfg.triage or list(DEFAULT_RULES)
    best = LEVELS.index(cfg.default_priority)
    findings: dict[int, list[str]] = {}
    for hip in result.hips:
        for rule in rules:
            rank = LEVELS.index(rule.level)
            for key, p in _matches(rule, hip):
                text = f"{_display(key)}, {_SIDE[hip.laterality]} (p={p:.2f})"
                bucket = findings.setdefault(rank, [])
                if text not in bucket:
                    bucket.append(text)
                best = max(best, rank)
    if best in findings:
        return Triage(LEVELS[best], "; ".join(findings[best]))
    if not result.hips:
        return Triage(LEVELS[best], "no hip could be assessed")
    return Triage(LEVELS[best], "no finding above the triage thresholds")
