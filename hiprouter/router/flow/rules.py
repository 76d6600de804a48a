"""Routing rules as data: a validated condition tree over DICOM keywords, never eval'd.

Grammar (YAML in `config.yaml`, validated by pydantic at start-up)::

    match:                       # a condition node is exactly one of
      all: [node, ...]           #   every child is true
      any: [node, ...]           #   at least one child is true
      not: node                  #   the child is false
      tag: Keyword               #   a leaf on one DICOM keyword (or CallingAETitle) with
      equals: value              #     one operator: equals | in | regex | exists | range
      in: [v1, v2]
      regex: "hip|pelvis"        #     re.search on the text value
      exists: true               #     present and not empty
      range: {min: 0, max: 10}   #     numeric, inclusive bounds, either may be left out
      ignore_case: true          #     for equals / in / regex on text

A multi-valued element matches a leaf when any of its values matches. A missing or empty
element makes every leaf false except `exists: false`, so a rule never fails on a header.

The grammar is part of the configuration model (`hiprouter.config` imports `Rule` from
here), so this module imports nothing else from hiprouter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from pydicom import Dataset

CALLING_AE_TITLE = "CallingAETitle"
"""Pseudo keyword: the AE title that sent the instance (not a DICOM attribute)."""

_OPERATORS = ("equals", "in_", "regex", "exists", "range")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Range(_Strict):
    """Inclusive numeric bounds; a missing bound is open."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"range min {self.min} is greater than max {self.max}")
        return self


Scalar = str | int | float


class Leaf(_Strict):
    """A test on one DICOM keyword with exactly one operator."""

    tag: str
    equals: Scalar | None = None
    in_: list[Scalar] | None = Field(None, alias="in", min_length=1)
    regex: str | None = None
    exists: bool | None = None
    range: Range | None = None
    ignore_case: bool = False

    @field_validator("tag")
    @classmethod
    def _known_keyword(cls, value: str) -> str:
        from pydicom.datadict import keyword_dict

        if value != CALLING_AE_TITLE and value not in keyword_dict:
            raise ValueError(f"{value!r} is not a DICOM keyword (nor {CALLING_AE_TITLE})")
        return value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"regex {value!r} does not compile: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _one_operator(self) -> Leaf:
        given = [op for op in _OPERATORS if getattr(self, op) is not None]
        if len(given) != 1:
            names = ", ".join(op.rstrip("_") for op in given) or "none"
            raise ValueError(
                f"condition on {self.tag} needs exactly one of equals, in, regex, exists, "
                f"range (got {names})"
            )
        return self

    @cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        if self.regex is None:
            return None
        return re.compile(self.regex, re.IGNORECASE if self.ignore_case else 0)

    def describe(self) -> str:
        """The leaf as a short human-readable expression."""
        if self.equals is not None:
            return f"{self.tag} == {self.equals!r}"
        if self.in_ is not None:
            return f"{self.tag} in {list(self.in_)!r}"
        if self.regex is not None:
            return f"{self.tag} ~ /{self.regex}/{'i' if self.ignore_case else ''}"
        if self.exists is not None:
            return f"{self.tag} {'exists' if self.exists else 'is missing'}"
        assert self.range is not None
        return f"{self.tag} in [{self.range.min}, {self.range.max}]"


class All(_Strict):
    all: list[Condition] = Field(min_length=1)


class AnyOf(_Strict):
    any: list[Condition] = Field(min_length=1)


class Not(_Strict):
    not_: Condition = Field(alias="not")


def _node_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return {All: "all", AnyOf: "any", Not: "not", Leaf: "leaf"}.get(type(value))
    if not isinstance(value, dict):
        return None
    for key in ("all", "any", "not"):
        if key in value:
            return key
    return "leaf" if "tag" in value else None


Condition = Annotated[
    Annotated[All, Tag("all")]
    | Annotated[AnyOf, Tag("any")]
    | Annotated[Not, Tag("not")]
    | Annotated[Leaf, Tag("leaf")],
    Discriminator(
        _node_kind,
        custom_error_type="invalid_condition",
        custom_error_message="a condition is a mapping with one of all, any, not or tag",
    ),
]
All.model_rebuild()
AnyOf.model_rebuild()
Not.model_rebuild()


class Rule(BaseModel):
    """A routing rule (`rules[]` in config.yaml): a match expression over DICOM keywords
    and what to do on a match. Settings checks that its pipelines and destinations exist."""

    model_config = ConfigDict(extra="forbid")

    name: str
    level: Literal["series", "study"] = "series"
    match: Condition | None = None
    """None matches every series (useful for a fallback rule)."""
    pipelines: list[str] = []
    send_to: list[str] = []
    forward_to: list[str] = []
    fallback: bool = False


class Header:
    """The values of one instance header that rules look at (no pixel data)."""

    def __init__(self, dataset: Dataset, calling_ae: str | None = None) -> None:
        self.dataset = dataset
        self.calling_ae = calling_ae

    def values(self, keyword: str) -> list[Any]:
        """Non-empty values of `keyword`; [] when missing or empty."""
        if keyword == CALLING_AE_TITLE:
            raw: Any = self.calling_ae
        else:
            try:
                raw = self.dataset.get(keyword)
            except Exception:  # an undecodable value in a malformed header
                return []
        if raw is None or isinstance(raw, bytes | bytearray):
            return []
        items = list(raw) if isinstance(raw, list | tuple) or _is_multivalue(raw) else [raw]
        out: list[Any] = []
        for item in items:
            if isinstance(item, str):
                item = item.strip()
            elif item is not None and not isinstance(item, int | float):
                item = str(item).strip()  # PersonName, UID, DSfloat...
            if item not in (None, ""):
                out.append(item)
        return out


def _is_multivalue(value: Any) -> bool:
    from pydicom.multival import MultiValue

    return isinstance(value, MultiValue)


def _number(value: Any) -> float | None:
    try:
        num = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(num) else num


def _equal(actual: Any, expected: Scalar, ignore_case: bool) -> bool:
    if isinstance(expected, int | float) and not isinstance(expected, bool):
        num = _number(actual)
        return num is not None and num == float(expected)
    a, e = str(actual), str(expected).strip()
    return a.casefold() == e.casefold() if ignore_case else a == e


def _leaf_true(leaf: Leaf, values: Sequence[Any]) -> bool:
    if leaf.exists is not None:
        return bool(values) == leaf.exists
    if leaf.equals is not None:
        return any(_equal(v, leaf.equals, leaf.ignore_case) for v in values)
    if leaf.in_ is not None:
        return any(_equal(v, e, leaf.ignore_case) for v in values for e in leaf.in_)
    if leaf._pattern is not None:
        return any(leaf._pattern.search(str(v)) for v in values)
    assert leaf.range is not None
    lo = -math.inf if leaf.range.min is None else leaf.range.min
    hi = math.inf if leaf.range.max is None else leaf.range.max
    nums = (_number(v) for v in values)
    return any(n is not None and lo <= n <= hi for n in nums)


@dataclass(frozen=True)
class Decision:
    """Whether a condition matched and the leaf (or leaves) that decided it."""

    matched: bool
    reason: str


def evaluate(node: Any, header: Header) -> Decision:
    """Evaluate a condition tree on a header; never raises on missing or odd values."""
    if isinstance(node, Leaf):
        values = header.values(node.tag)
        shown = ", ".join(repr(v) for v in values[:4]) or "missing"
        return Decision(_leaf_true(node, values), f"{node.describe()} (value {shown})")
    if isinstance(node, All):
        reasons = []
        for child in node.all:
            d = evaluate(child, header)
            if not d.matched:
                return Decision(False, d.reason)
            reasons.append(d.reason)
        return Decision(True, " AND ".join(reasons))
    if isinstance(node, AnyOf):
        reasons = []
        for child in node.any:
            d = evaluate(child, header)
            if d.matched:
                return Decision(True, d.reason)
            reasons.append(d.reason)
        return Decision(False, "none of: " + "; ".join(reasons))
    if isinstance(node, Not):
        d = evaluate(node.not_, header)
        return Decision(not d.matched, f"NOT ({d.reason})")
    raise TypeError(f"not a condition node: {node!r}")


def rule_decision(rule: Rule, header: Header) -> Decision:
    """Evaluate one rule; a rule without `match` matches everything."""
    if rule.match is None:
        return Decision(True, "rule has no match condition (matches everything)")
    return evaluate(rule.match, header)


def first_matching(
    rules: Iterable[Rule], header: Header, mode: Literal["first", "all"]
) -> list[tuple[Rule, Decision]]:
    """The rules that match one header: the first one, or all in `all` mode.

    Fallback rules are only tried when no ordinary rule matched.
    """
    rules = list(rules)
    hits: list[tuple[Rule, Decision]] = []
    for group in ([r for r in rules if not r.fallback], [r for r in rules if r.fallback]):
        for rule in group:
            d = rule_decision(rule, header)
            if d.matched:
                hits.append((rule, d))
                if mode == "first":
                    return hits
        if hits:
            return hits
    return hits


@dataclass
class Route:
    """One matched rule for a study: the series it covers (None = whole study)."""

    rule: Rule
    series_uids: list[str] | None
    reasons: dict[str, str] = field(default_factory=dict)
    """series_uid -> deciding condition."""


def plan_routes(
    rules: Sequence[Rule], mode: Literal["first", "all"], series: dict[str, Header]
) -> list[Route]:
    """Decide which rules apply to a study, given one representative header per series.

    A series-level rule covers exactly the series it matched; a study-level rule that
    matches any series covers the whole study. Fallback rules apply only when no ordinary
    rule matched any series of the study.
    """
    ordinary = [r for r in rules if not r.fallback]
    fallback = [r for r in rules if r.fallback]
    routes = _routes_for(ordinary, mode, series)
    if not routes and fallback:
        routes = _routes_for(fallback, mode, series)
    return routes


def _routes_for(
    rules: Sequence[Rule], mode: Literal["first", "all"], series: dict[str, Header]
) -> list[Route]:
    by_rule: dict[str, Route] = {}
    for series_uid, header in series.items():
        for rule, decision in first_matching(rules, header, mode):
            route = by_rule.setdefault(rule.name, Route(rule, []))
            assert route.series_uids is not None
            route.series_uids.append(series_uid)
            route.reasons[series_uid] = decision.reason
    ordered = [by_rule[r.name] for r in rules if r.name in by_rule]
    for route in ordered:
        if route.rule.level == "study":
            route.series_uids = None
    return ordered
