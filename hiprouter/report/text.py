"""Prepopulated report text, rendered from the site-editable Jinja2 templates in sr_templates/.

Each language is a folder (``sr_templates/en``, ``sr_templates/de``) with ``hip.j2`` (one
sentence per hip), ``bilateral.j2`` (both hips share a confident finding), ``disclaimer.j2``
and ``impression.j2`` (the whole paragraph); ``terms.j2`` holds the wording per class.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

import hiprouter
from hiprouter.config import Settings
from hiprouter.inference.classes import class_by_key
from hiprouter.inference.results import HipResult, ModelInfo, StudyResult

BUNDLED_TEMPLATES = Path(hiprouter.__file__).resolve().parent.parent / "sr_templates"
TEMPLATE_NAMES = ("hip.j2", "bilateral.j2", "disclaimer.j2", "impression.j2")


class TemplateError(Exception):
    """The templates of a language are missing or cannot be rendered."""


@dataclass(frozen=True)
class ReportText:
    """Rendered text of one study result."""

    language: str
    hip_sentences: list[str]
    """One sentence per hip, in the order of ``StudyResult.hips``."""
    sentences: list[str]
    """The impression's finding sentences, with bilateral phrasing applied."""
    disclaimer: str
    impression: str
    """The whole paragraph: sentences, unassessable images, disclaimer."""


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
    root = templates_dir if templates_dir is not None else BUNDLED_TEMPLATES
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


def _hip_values(hip: HipResult, low_confidence: float) -> dict[str, object]:
    return {
        "laterality": hip.laterality,
        "finding": hip.predicted_class,
        "display": class_by_key(hip.predicted_class).display,
        "probability": float(hip.probability),
        "low_confidence": float(hip.probability) < low_confidence,
        "low_confidence_threshold": low_confidence,
    }


def render_report_text(result: StudyResult, language: str = "en", low_confidence: float = 0.6,
                       templates_dir: Path | None = None) -> ReportText:
    """Render the per-hip sentences, the bilateral phrasing, the disclaimer and the impression."""
    env = _environment(template_folder(language, templates_dir))
    hip_sentences = [_render(env, "hip.j2", **_hip_values(h, low_confidence)) for h in result.hips]

    sentences = list(hip_sentences)
    rights = [i for i, h in enumerate(result.hips) if h.laterality == "R"]
    lefts = [i for i, h in enumerate(result.hips) if h.laterality == "L"]
    if len(rights) == 1 and len(lefts) == 1:
        right, left = result.hips[rights[0]], result.hips[lefts[0]]
        if (right.predicted_class == left.predicted_class
                and min(right.probability, left.probability) >= low_confidence):
            bilateral = _render(
                env, "bilateral.j2", finding=right.predicted_class,
                display=class_by_key(right.predicted_class).display,
                probability_right=float(right.probability),
                probability_left=float(left.probability))
            first, second = sorted((rights[0], lefts[0]))
            sentences = [bilateral if i == first else s for i, s in enumerate(hip_sentences)
                         if i != second]

    disclaimer = _render(env, "disclaimer.j2", model_name=result.model.name,
                         model_version=result.model.version, pipeline=result.pipeline,
                         synthetic_demo=result.model.synthetic_demo)
    impression = _render(env, "impression.j2", sentences=sentences,
                         refused_count=len(result.refused), disclaimer=disclaimer)
    return ReportText(language=language, hip_sentences=hip_sentences, sentences=sentences,
                      disclaimer=disclaimer, impression=impression)


def check_templates(settings: Settings) -> None:
    """Render a sample report in every configured pipeline's language, at start-up.

    Raises TemplateError naming the pipeline when its language has no templates or a
    template fails (syntax error, undefined variable), instead of failing the first job.
    """
    sample = StudyResult(
        study_uid="1.2.3", pipeline="check", model=ModelInfo("check", "0", "check", "2.25.0"),
        hips=[HipResult("R", "tha", 0.95, {}, []), HipResult("L", "tha", 0.9, {}, []),
              HipResult("U", "im_nail", 0.3, {}, [])],
        refused={"1.2.3.4": "sample"})
    for name, pipe in settings.pipelines.items():
        if pipe.kind == "forward":
            continue
        try:
            render_report_text(sample, pipe.language, pipe.low_confidence,
                               settings.sr_templates_dir)
        except TemplateError as exc:
            raise TemplateError(f"pipelines.{name}.language: {exc}") from exc
