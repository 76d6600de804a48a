"""Per-hip labels from the text of final radiology reports, by editable rules.

The rules (YAML, `report_rules.yaml` beside this module; a site edits a copy named by
``dataset.label_rules``) give per language the side phrases, negation cues and clause
breakers, and per pipeline kind the patterns of each class, generic mentions of the kind
(whose negation gives the negative class), and how several classes of one hip resolve.
The file's comments explain the method. Everything runs on the site's premises; the text
is never logged, and what is stored is the label, the ids of the rules that fired and a
hash of the text.

`text_of_sr` reads the text of a DICOM SR (Basic Text, Enhanced or Comprehensive).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_RULES = Path(__file__).with_name("report_rules.yaml")
SIDES = ("R", "L")
LABELLED, UNLABELLED, CONTRADICTORY = "labelled", "unlabelled", "contradictory"


class RulesError(Exception):
    """A rules file that cannot be used, naming the key."""


def _compile(patterns: Sequence[str], where: str) -> list[re.Pattern[str]]:
    out = []
    for i, p in enumerate(patterns):
        try:
            out.append(re.compile(p, re.IGNORECASE))
        except re.error as exc:
            raise ValueError(f"{where}[{i}] {p!r} does not compile: {exc}") from exc
    return out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LanguageRules(_Strict):
    detect: list[str] = []
    right: list[str] = Field(min_length=1)
    left: list[str] = Field(min_length=1)
    both: list[str] = []
    negation_before: list[str] = []
    negation_after: list[str] = []
    breakers: list[str] = []

    @field_validator("detect", "right", "left", "both", "negation_before", "negation_after",
                     "breakers")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        _compile(value, "pattern")
        return value


class KindRules(_Strict):
    negative: str | None = None
    when_silent: str | None = None
    generic: dict[str, list[str]] = {}
    classes: dict[str, dict[str, list[str]]]
    subsumes: dict[str, list[str]] = {}
    precedence: list[str] = []

    @field_validator("generic")
    @classmethod
    def _generic_compiles(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for lang, pats in value.items():
            _compile(pats, f"generic.{lang}")
        return value

    @field_validator("classes")
    @classmethod
    def _classes_compile(cls, value: dict[str, dict[str, list[str]]]
                         ) -> dict[str, dict[str, list[str]]]:
        for key, langs in value.items():
            for lang, pats in langs.items():
                _compile(pats, f"classes.{key}.{lang}")
        return value


class Rules(_Strict):
    """A validated rules file."""

    version: int = 1
    negation_window: int = Field(6, ge=1, le=30)
    languages: dict[str, LanguageRules]
    kinds: dict[str, KindRules]

    def check_kind(self, kind: str, classes: Sequence[str]) -> None:
        """Every class key the rules name for `kind` must be one of its `classes`."""
        rules = self.kinds.get(kind)
        if rules is None:
            raise RulesError(f"the label rules have no section for kind {kind!r} "
                             f"(kinds: {', '.join(self.kinds)})")
        named = set(rules.classes) | set(rules.precedence) | set(rules.subsumes)
        named |= {c for v in rules.subsumes.values() for c in v}
        named |= {c for c in (rules.negative, rules.when_silent) if c}
        unknown = named - set(classes)
        if unknown:
            raise RulesError(f"kinds.{kind}: {sorted(unknown)} are not classes of kind "
                             f"{kind!r} ({', '.join(classes)})")

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    @cached_property
    def _compiled(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lang": {}, "kinds": {}}
        for lang, r in self.languages.items():
            out["lang"][lang] = {k: _compile(getattr(r, k), k) for k in (
                "detect", "right", "left", "both", "negation_before", "negation_after",
                "breakers")}
        for kind, k in self.kinds.items():
            out["kinds"][kind] = {
                "generic": {lang: _compile(p, "generic") for lang, p in k.generic.items()},
                "classes": {key: {lang: _compile(p, key) for lang, p in langs.items()}
                            for key, langs in k.classes.items()},
            }
        return out


def load_rules(path: Path | None = None) -> Rules:
    """Read and validate a rules file (default: the rules shipped with hiprouter)."""
    path = Path(path) if path else DEFAULT_RULES
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RulesError(f"cannot read label rules {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise RulesError(f"label rules {path} are not valid YAML: {exc}") from exc
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        lines = [f"invalid label rules in {path}:"]
        for err in exc.errors():
            lines.append(f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
        raise RulesError("\n".join(lines)) from exc


# ---- the method --------------------------------------------------------------------------


@dataclass
class Mention:
    """One match of a class (or generic) pattern in the report."""

    kind: str
    cls: str | None
    """Class key, or None for a generic mention of the kind."""
    rule: str
    """Id of the pattern: kind.class.language#index."""
    start: int
    end: int
    sentence: int
    negated: bool
    sides: tuple[str, ...]
    """R, L, both, or () when no side could be given."""


@dataclass
class HipLabel:
    kind: str
    laterality: str
    status: str
    label: str | None
    evidence: list[str] = field(default_factory=list)


@dataclass
class ReportResult:
    """The labels one report gives, and what the review sheet shows."""

    language: str
    labels: list[HipLabel]
    mentions: list[Mention]
    sentences: list[str]
    sha256: str

    def label(self, kind: str, side: str) -> HipLabel | None:
        return next((h for h in self.labels if h.kind == kind and h.laterality == side), None)

    def unsided(self) -> list[str]:
        """Rules that fired without a side (positive mentions only)."""
        return [m.rule for m in self.mentions if not m.sides and not m.negated]


def normalise(text: str) -> str:
    """NFC, no control characters except line breaks, spaces collapsed within lines."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(ch if ch == "\n" or ch.isprintable() else " " for ch in text)
    return "\n".join(re.sub(r"[ \t]+", " ", line).strip() for line in text.split("\n"))


def detect_language(text: str, rules: Rules) -> str:
    """The language whose `detect` words occur most often (the first language on a tie)."""
    compiled = rules._compiled["lang"]
    scores = {lang: sum(len(p.findall(text)) for p in c["detect"])
              for lang, c in compiled.items()}
    return max(scores, key=lambda k: scores[k]) if scores else "en"


_SENTENCE = re.compile(r"(?<=[.;!?])\s+|\n+")
_ABBREV_END = re.compile(r"\b(re|li|bds|ca|z\.b|v\.a|dr|nr|st)\.$", re.IGNORECASE)


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence: split at . ; ! ? followed by space, and line breaks;
    a few abbreviations (re. li. bds. ...) do not end a sentence."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _SENTENCE.finditer(text):
        piece = text[start:m.start()]
        nxt = text[m.end():m.end() + 1]
        if "\n" not in m.group() and _ABBREV_END.search(piece) and not nxt.isupper():
            continue  # "re. und li." does not end a sentence; "re. Eine ..." does
        if piece.strip():
            spans.append((start, m.start()))
        start = m.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def _heading_side(line: str, lang: dict[str, Any]) -> tuple[str, ...] | None:
    """The side of a heading line: a line that is only "Right hip:" / "RECHTS:" (a few
    words naming a side, then a colon and nothing else)."""
    m = re.match(r"^\s*([^:]{1,40}):\s*$", line)
    if m is None or len(m.group(1).split()) > 4:
        return None
    return _sides_in(m.group(1), lang) or None


def _sides_in(text: str, lang: dict[str, Any]) -> tuple[str, ...]:
    if any(p.search(text) for p in lang["both"]):
        return SIDES
    r = any(p.search(text) for p in lang["right"])
    left = any(p.search(text) for p in lang["left"])
    return ("R",) * r + ("L",) * left


def _nearest_side(sentence: str, offset: int, lang: dict[str, Any]) -> tuple[str, ...]:
    """The side phrase nearest to `offset` in the sentence (clause first)."""
    found: list[tuple[int, tuple[str, ...]]] = []
    for key, sides in (("both", SIDES), ("right", ("R",)), ("left", ("L",))):
        for p in lang[key]:
            for m in p.finditer(sentence):
                found.append((m.start(), sides))
    if not found:
        return ()
    clause_start = max([sentence.rfind(c, 0, offset) for c in ",:"] + [-1]) + 1
    ends = [i for i in (sentence.find(c, offset) for c in ",:") if i >= 0]
    clause_end = min(ends) if ends else len(sentence)
    in_clause = [f for f in found if clause_start <= f[0] < clause_end]
    pool = in_clause or found
    return min(pool, key=lambda f: abs(f[0] - offset))[1]


def _negated(sentence: str, start: int, end: int, lang: dict[str, Any], window: int) -> bool:
    """Whether a cue negates the mention at [start, end) of the sentence."""
    clause_start = max(sentence.rfind(",", 0, start), sentence.rfind(":", 0, start)) + 1
    before = sentence[clause_start:start]
    for b in lang["breakers"]:
        last = None
        for last in b.finditer(before):  # noqa: B007
            pass
        if last is not None:
            before = before[last.end():]
    for cue in lang["negation_before"]:
        for m in cue.finditer(before):
            if len(before[m.end():].split()) <= window:
                return True
    ends = [i for i in (sentence.find(c, end) for c in ",:") if i >= 0]
    after = sentence[end:min(ends) if ends else len(sentence)]
    for b in lang["breakers"]:
        m = b.search(after)
        if m:
            after = after[:m.start()]
    return any(cue.match(after.lstrip()) or cue.search(after[:80])
               for cue in lang["negation_after"])


def extract(text: str, rules: Rules, kinds: Iterable[str], *, language: str = "auto",
            imaged: Sequence[str] = SIDES, side_hint: str | None = None) -> ReportResult:
    """Per-hip labels of `kinds` from one report.

    `imaged`: the hips the study shows (labels are given for these only); `side_hint`: the
    one side of a single-hip study, which unsided mentions then refer to.
    """
    text = normalise(text)
    sha = hashlib.sha256(text.encode()).hexdigest()
    lang_key = detect_language(text, rules) if language == "auto" else language
    if lang_key not in rules.languages:
        raise RulesError(f"the label rules have no language {lang_key!r}")
    lang = rules._compiled["lang"][lang_key]
    spans = sentences(text)
    sents = [text[a:b] for a, b in spans]
    # Side headings: a line that is only "Right hip:" gives its side to the lines below it
    # until the next heading or a blank line.
    line_side: dict[int, tuple[str, ...] | None] = {}
    current: tuple[str, ...] | None = None
    pos = 0
    for line in text.split("\n"):
        head = _heading_side(line, lang)
        if head is not None:
            current = head
        elif not line.strip():
            current = None
        line_side[pos] = current if head is None else None
        pos += len(line) + 1
    starts = sorted(line_side)
    heading = []
    for a, _b in spans:
        line_start = max(s for s in starts if s <= a)
        heading.append(line_side[line_start])
    mentions: list[Mention] = []
    kinds = list(kinds)
    for kind in kinds:
        if kind not in rules.kinds:
            raise RulesError(f"the label rules have no section for kind {kind!r}")
        compiled = rules._compiled["kinds"][kind]
        patterns: list[tuple[str | None, str, re.Pattern[str]]] = []
        for key, langs in compiled["classes"].items():
            for i, p in enumerate(langs.get(lang_key, [])):
                patterns.append((key, f"{kind}.{key}.{lang_key}#{i}", p))
        for i, p in enumerate(compiled["generic"].get(lang_key, [])):
            patterns.append((None, f"{kind}.*.{lang_key}#{i}", p))
        for n, s in enumerate(sents):
            taken: list[tuple[int, int]] = []
            for key, rule, p in patterns:  # class patterns first, then generic ones
                for m in p.finditer(s):
                    if key is None and any(a < m.end() and m.start() < b for a, b in taken):
                        continue  # the class mention covers it
                    if key is not None:
                        taken.append((m.start(), m.end()))
                    negated = _negated(s, m.start(), m.end(), lang, rules.negation_window)
                    sides = _sides_in(s[m.start():m.end()], lang) or \
                        _nearest_side(s, m.start(), lang)
                    if not sides and heading[n]:
                        sides = heading[n] or ()
                    if not sides and side_hint in SIDES:
                        sides = (side_hint,)
                    if not sides and negated:
                        sides = tuple(imaged)
                    mentions.append(Mention(kind, key, rule + ("-neg" if negated else ""),
                                            m.start(), m.end(), n, negated, tuple(sides)))
    labels = [_resolve(kind, side, mentions, rules.kinds[kind])
              for kind in kinds for side in SIDES if side in imaged]
    return ReportResult(lang_key, labels, mentions, sents, sha)


def _resolve(kind: str, side: str, mentions: list[Mention], rules: KindRules) -> HipLabel:
    mine = [m for m in mentions if m.kind == kind and side in m.sides]
    evidence = sorted({m.rule for m in mine})
    positive = {m.cls for m in mine if m.cls is not None and not m.negated}
    negated = {m.cls for m in mine if m.cls is not None and m.negated}
    generic_negated = any(m.cls is None and m.negated for m in mine)
    for big, small in rules.subsumes.items():
        if big in positive:
            positive -= set(small)
    if len(positive) > 1 and rules.precedence:
        ranked = [c for c in rules.precedence if c in positive]
        positive = {ranked[0]} if ranked else positive
    if len(positive) > 1:
        return HipLabel(kind, side, CONTRADICTORY, None, evidence)
    if positive:
        (cls,) = positive
        if cls in negated or (generic_negated and cls != rules.negative):
            return HipLabel(kind, side, CONTRADICTORY, None, evidence)
        return HipLabel(kind, side, LABELLED, cls, evidence)
    if generic_negated and rules.negative:
        return HipLabel(kind, side, LABELLED, rules.negative, evidence)
    if rules.when_silent and not mine:
        return HipLabel(kind, side, LABELLED, rules.when_silent, ["silent"])
    return HipLabel(kind, side, UNLABELLED, None, evidence)


# ---- report text from DICOM and identifiers out of excerpts ------------------------------

REPORT_SR_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22",
                               "1.2.840.10008.5.1.4.1.1.88.33"})


def text_of_sr(ds: Any) -> str:
    """The report text of an SR: every TEXT value of its content tree, in document order,
    each after its concept name ("Findings: ...")."""
    lines: list[str] = []

    def walk(items: Any) -> None:
        for item in items or []:
            if str(item.get("ValueType", "")) == "TEXT" and item.get("TextValue"):
                name = ""
                seq = item.get("ConceptNameCodeSequence")
                if seq:
                    name = str(seq[0].get("CodeMeaning", "") or "")
                value = str(item.TextValue)
                lines.append(f"{name}: {value}" if name and name.lower() not in
                             ("report text", "text", "finding", "findings") else value)
            walk(item.get("ContentSequence"))

    walk(ds.get("ContentSequence"))
    return "\n".join(lines)


def is_final(ds: Any) -> bool:
    """A completed report (CompletionFlag COMPLETE; VerificationFlag VERIFIED when given)."""
    completion = str(ds.get("CompletionFlag", "COMPLETE") or "COMPLETE").upper()
    verification = str(ds.get("VerificationFlag", "VERIFIED") or "VERIFIED").upper()
    return completion == "COMPLETE" and verification == "VERIFIED"


def scrub(text: str, identifiers: Iterable[str]) -> str:
    """`text` with the given identifiers (name parts, IDs, accession, dates) and long digit
    runs replaced by "***", for excerpts shown on the review sheet."""
    out = text
    words = sorted({w for ident in identifiers if ident
                    for w in re.split(r"[\^\s,]+", str(ident)) if len(w) >= 2},
                   key=len, reverse=True)
    for w in words:
        out = re.sub(re.escape(w), "***", out, flags=re.IGNORECASE)
    out = re.sub(r"\d{5,}", "***", out)
    return re.sub(r"\b\d{1,2}[./-]\d{1,2}[./-]\d{2,4}\b", "***", out)


def label_counts(results: Mapping[str, ReportResult]) -> dict[str, dict[str, int]]:
    """kind -> status (and label) -> hips, for the summary."""
    out: dict[str, dict[str, int]] = {}
    for r in results.values():
        for h in r.labels:
            counts = out.setdefault(h.kind, {})
            counts[h.status] = counts.get(h.status, 0) + 1
            if h.label:
                counts[f"= {h.label}"] = counts.get(f"= {h.label}", 0) + 1
    return out
