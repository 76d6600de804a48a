"""Prepopulated report text, rendered from the site-editable Jinja2 templates in sr_templates/.

Each language is a folder (``sr_templates/en``, ``sr_templates/de``): ``phrase.j2`` (what
one pipeline says about one hip), ``hip.j2`` (one sentence per hip, all pipelines),
``bilateral.j2`` (both hips say the same with confidence), ``disclaimer.j2``,
``impression.j2`` (the whole paragraph); ``terms.j2`` holds the wording per class and
``kinds/<kind>.j2`` optional additions per pipeline kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from hiprouter.config import Settings
from hiprouter.findings import (
    Classification,
    Finding,
    FindingClass,
    ModelInfo,
    PipelineResult,
    StudyFindings,
    Vocabulary,
)
from hiprouter.resources import sr_templates_dir

TEMPLATE_NAMES = ("phrase.j2", "hip.j2", "bilateral.j2", "disclaimer.j2", "impression.j2",
                  "terms.j2")


class TemplateError(Exception):
    """The templates of a language are missing or cannot be rendered."""


@dataclass(frozen=True)
class ReportText:
    """Rendered text of one study's findings."""

    language: str
    finding_sentences: list[str]
    """One sentence per finding, in `StudyFindings.findings()` order (the SR groups' TEXT)."""
    sentences: list[str]
    """One sentence per hip, with bilateral phrasing applied (the impression's lines)."""
    disclaimer: str
    impression: str
    """The whole paragraph: sentences, images not assessed, disclaimer."""


@lru_cache(maxsize=16)
def _environment(folder: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # plain text into DICOM, not HTML
        keep_trailing_newline=False,
    )


def template_folder(language: str, templates_dir: Path | None = None) -> Path:
    """The folder of one language's templates; raises TemplateError naming what is missing."""
    root = templates_dir if templates_dir is not None else sr_templates_dir()
    if not language or "/" in language or "\\" in language or language.startswith("."):
        raise TemplateError(f"invalid report language {language!r}")
    folder = (root / language).resolve()
    missing = [n for n in TEMPLATE_NAMES if not (folder / n).is_file()]
    if missing:
        raise TemplateError(
            f"report templates for language {language!r} in {root} lack {', '.join(missing)}")
    return folder


def _render(env: jinja2.Environment, name: str, **values: object) -> str:
    try:
        text = env.get_template(name).render(**values)
    except jinja2.TemplateError as exc:
        raise TemplateError(f"{name}: {exc}") from exc
    return " ".join(text.split()) if name != "impression.j2" else text.strip()


def phrase_values(finding: Finding, kind: str, vocabulary: Vocabulary,
                  low_confidence: float) -> dict[str, Any]:
    """The variables of phrase.j2 for one finding."""
    c = finding.classification or Classification("", 1.0, {})
    cls: FindingClass | None = vocabulary[c.predicted] if c.predicted in vocabulary else None
    return {
        "pipeline": finding.pipeline,
        "kind": kind,
        "finding": c.predicted,
        "display": cls.display if cls else c.predicted.replace("_", " "),
        "probability": float(c.probability),
        "status": c.status,
        "reason": c.reason,
        "negative": bool(cls and cls.negative),
        "low_confidence": c.status == "assessed" and float(c.probability) < low_confidence,
        "candidates": [{"key": k, "display": vocabulary.display(k), "probability": float(p)}
                       for k, p in c.candidates(3)],
        "measurements": {m.key: {"value": m.value, "unit": m.unit.code}
                         for m in finding.measurements},
        "qualifiers": dict(finding.qualifiers),
    }


def _confident(finding: Finding, low_confidence: float) -> bool:
    c = finding.classification
    return c is None or (c.status == "assessed" and c.probability >= low_confidence)


def _models(study: StudyFindings) -> list[ModelInfo]:
    seen: dict[str, ModelInfo] = {}
    for r in study.results:
        if r.model is not None:
            seen.setdefault(f"{r.model.name} {r.model.version}", r.model)
    return list(seen.values())


def _views_read_from_image(study: StudyFindings) -> dict[str, int]:
    """View ("ap_pelvis", "unknown") -> how many reported images were read by the view the
    anatomy check named, their headers naming none (images that reached a finding)."""
    used = {u for f in study.findings() for u in f.source_sop_uids}
    out: dict[str, int] = {}
    for uid, view in study.views_from_image.items():
        if uid in used:
            out[view] = out.get(view, 0) + 1
    return dict(sorted(out.items()))


def render_report_text(study: StudyFindings, language: str = "en",
                       low_confidence: float = 0.6,
                       templates_dir: Path | None = None) -> ReportText:
    """Render every finding's sentence, one sentence per hip, the disclaimer and impression."""
    env = _environment(template_folder(language, templates_dir))
    kinds = {r.pipeline: r for r in study.results}

    def phrase(f: Finding) -> str:
        result: PipelineResult = kinds[f.pipeline]
        return _render(env, "phrase.j2",
                       **phrase_values(f, result.kind, result.vocabulary, low_confidence))

    findings = study.findings()
    phrases = [phrase(f) for f in findings]
    finding_sentences = [_render(env, "hip.j2", laterality=f.laterality, phrases=[p])
                         for f, p in zip(findings, phrases, strict=True)]

    hips: dict[str, list[int]] = {}
    for i, f in enumerate(findings):
        key = f.laterality if f.laterality in ("R", "L") else f"U:{','.join(f.source_sop_uids)}"
        hips.setdefault(key, []).append(i)
    order = sorted(hips, key=lambda k: ("RLU".index(k[0]), k))
    sentences = []
    right, left = hips.get("R", []), hips.get("L", [])
    same = (right and [phrases[i] for i in right] == [phrases[i] for i in left]
            and all(_confident(findings[i], low_confidence) for i in right + left))
    for key in order:
        idx = hips[key]
        if same and key == "L":
            continue
        if same and key == "R":
            sentences.append(_render(
                env, "bilateral.j2", phrases=[phrases[i] for i in idx],
                findings=[findings[i].classification.predicted if findings[i].classification
                          else "" for i in idx]))
            continue
        sentences.append(_render(env, "hip.j2", laterality=key[0],
                                 phrases=[phrases[i] for i in idx]))

    models = _models(study)
    disclaimer = _render(env, "disclaimer.j2",
                         models=[{"name": m.name, "version": m.version} for m in models],
                         synthetic_demo=any(m.synthetic_demo for m in models))
    impression = _render(env, "impression.j2", sentences=sentences,
                         not_assessed=list(study.not_assessed().values()),
                         views_from_image=_views_read_from_image(study),
                         disclaimer=disclaimer)
    return ReportText(language=language, finding_sentences=finding_sentences,
                      sentences=sentences, disclaimer=disclaimer, impression=impression)


def sample_findings() -> StudyFindings:
    """A study exercising every template path (assessed, low confidence, indeterminate,
    not assessed, bilateral, unknown side), for start-up checks and tests."""
    model = ModelInfo("check", "0", "check", "2.25.0")
    vocab = Vocabulary((FindingClass.private("a", "Finding A", "T1"),
                        FindingClass.private("none", "No finding", "T0", negative=True)))
    findings = [
        Finding("check", "R", ["1.2.3.1"], model, Classification("a", 0.95, {"a": 0.95})),
        Finding("check", "L", ["1.2.3.1"], model, Classification("a", 0.9, {"a": 0.9})),
        Finding("check", "U", ["1.2.3.2"], model, Classification("none", 0.3, {"none": 0.3})),
        Finding("check", "U", ["1.2.3.3"], model,
                Classification("a", 0.4, {"a": 0.4, "none": 0.35}, "indeterminate", "low")),
        Finding("check", "U", ["1.2.3.4"], model,
                Classification("a", 0.5, {"a": 0.5}, "not_assessed", "unlike training data")),
    ]
    result = PipelineResult("check", "check", vocab, model, findings,
                            not_assessed={"1.2.3.5": "sample"})
    return StudyFindings("1.2.3", [result],
                         views_from_image={"1.2.3.1": "ap_pelvis", "1.2.3.2": "unknown"})


def check_templates(settings: Settings) -> None:
    """Render a sample report in the configured language at start-up.

    Raises TemplateError naming the key when the language has no templates or a template
    fails (syntax error, undefined variable), instead of failing the first job.
    """
    try:
        render_report_text(sample_findings(), settings.report.language,
                           settings.report.low_confidence, settings.sr_templates_dir)
    except TemplateError as exc:
        raise TemplateError(f"report.language: {exc}") from exc
