"""Triage priority of a study: which findings make it urgent, and every reason why.

Each pipeline's rules come from its configuration (``pipelines.<name>.triage``: class-key
patterns, a level and an optional minimum probability). Without rules, a pipeline's
vocabulary says which classes flag which level (fractures and dislocations HIGH, ...) at
the model card's calibrated threshold, else 0.5. The study gets the highest level any
finding reaches; not-assessed findings never raise it; negative classes never match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from hiprouter.config import TriageRule
from hiprouter.findings import TRIAGE_LEVELS, Finding, PipelineResult, StudyFindings

DEFAULT_THRESHOLD = 0.5
_SIDE = {"R": "right hip", "L": "left hip", "U": "hip of unknown side"}


@dataclass(frozen=True)
class Triage:
    """The priority of a study and the reasons, highest level first."""

    level: str
    reason: str
    reasons: list[tuple[str, str]] = field(default_factory=list)
    """(level, text) of every finding that reached a level above ROUTINE."""


def default_rules(result: PipelineResult) -> list[TriageRule]:
    """Rules from the vocabulary's triage meaning (one per level)."""
    by_level: dict[str, list[str]] = {}
    for fc in result.vocabulary:
        if fc.triage and not fc.negative:
            by_level.setdefault(fc.triage, []).append(fc.key)
    return [TriageRule(classes=keys, level=level) for level, keys in by_level.items()]  # type: ignore[arg-type]


def _matches(rule: TriageRule, finding: Finding, result: PipelineResult
             ) -> list[tuple[str, float]]:
    c = finding.classification
    if c is None or c.status == "not_assessed":
        return []
    out = []
    for key, p in c.probabilities.items():
        if result.vocabulary.is_negative(key):
            continue
        if not any(fnmatchcase(key, pat) for pat in rule.classes):
            continue
        threshold = rule.min_probability
        if threshold is None:
            threshold = result.triage_thresholds.get(key, DEFAULT_THRESHOLD)
        if p >= threshold:
            out.append((key, p))
    return out


def triage(study: StudyFindings, rules: Mapping[str, Sequence[TriageRule]],
           default_priority: str = "ROUTINE") -> Triage:
    """Highest level any finding reaches; the reason names the findings behind each level."""
    best = TRIAGE_LEVELS.index(default_priority)
    reasons: dict[int, list[str]] = {}
    for result in study.results:
        pipeline_rules = list(rules.get(result.pipeline) or default_rules(result))
        for finding in result.findings:
            for rule in pipeline_rules:
                rank = TRIAGE_LEVELS.index(rule.level)
                for key, p in _matches(rule, finding, result):
                    text = (f"{result.vocabulary.display(key)}, {_SIDE[finding.laterality]} "
                            f"(p={p:.2f})")
                    bucket = reasons.setdefault(rank, [])
                    if text not in bucket:
                        bucket.append(text)
                    best = max(best, rank)
    ordered = [(TRIAGE_LEVELS[r], t) for r in sorted(reasons, reverse=True) for t in reasons[r]]
    if ordered:
        top = [t for lvl, t in ordered if lvl == TRIAGE_LEVELS[best]]
        lower = [f"{lvl}: {t}" for lvl, t in ordered if lvl != TRIAGE_LEVELS[best]]
        return Triage(TRIAGE_LEVELS[best], "; ".join(top + lower), ordered)
    if not study.findings():
        return Triage(TRIAGE_LEVELS[best], "no hip could be assessed")
    return Triage(TRIAGE_LEVELS[best], "no finding above the triage thresholds")
