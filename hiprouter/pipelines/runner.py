"""Run a study's pipelines in cascade order: decode once, every pipeline, all findings.

The study is decoded and split into hip crops once (`StudyInput`); each pipeline runs in
the order `registry.resolve_order` gives. A cascade stage runs only on the hips whose
upstream finding its ``runs_on`` condition admits; a hip that matches nothing gets no
finding from it (and the report says nothing about it), and the skip is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from pydicom.dataset import Dataset

from hiprouter.config import RunsOn
from hiprouter.findings import Finding, PipelineResult, StudyFindings
from hiprouter.inference.study import StudyImage, StudyInput
from hiprouter.pipelines.base import PipelineKind, Target
from hiprouter.pipelines.registry import PipelineSet, Variant, runs_on


def admits(condition: RunsOn, finding: Finding) -> bool:
    """Whether the upstream finding of a hip lets a cascade stage run on it."""
    c = finding.classification
    if c is None or c.status == "not_assessed":
        return False
    if c.status == "indeterminate" and not condition.include_indeterminate:
        return False
    if c.probability < condition.min_probability:
        return False
    if condition.classes:
        return c.predicted in condition.classes
    return c.predicted not in condition.exclude


def select_targets(condition: RunsOn, upstream: PipelineResult) -> tuple[list[Target], list[str]]:
    """Hips a cascade stage runs on, and a line per hip it skips (for the audit)."""
    targets, skipped = [], []
    for f in upstream.findings:
        if admits(condition, f):
            targets.append(Target(f.laterality, list(f.source_sop_uids), f))
        else:
            c = f.classification
            found = f"{c.predicted} ({c.status})" if c is not None else "no class"
            skipped.append(f"{f.laterality} hip: {upstream.pipeline} found {found}; "
                           f"runs on: {condition.describe()}")
    return targets, skipped


def run_pipelines(pipelines: Sequence[PipelineKind], conditions: dict[str, RunsOn | None],
                  study: StudyInput) -> StudyFindings:
    """Run `pipelines` (already in cascade order, all reported) on a decoded study."""
    return run_variants([[Variant(p, "active")] for p in pipelines], conditions, study)


def run_variants(stages: Sequence[Sequence[Variant]], conditions: dict[str, RunsOn | None],
                 study: StudyInput) -> StudyFindings:
    """Run each pipeline's variants (cascade order; the first variant of a pipeline feeds
    its cascades, the others are shadow models run on the same hips).

    A stage whose upstream pipeline ran only in shadow runs in shadow too: a hip selected
    by a model that is not reported cannot be reported on.
    """
    out = StudyFindings(study.study_uid)
    done: dict[str, PipelineResult] = {}
    for variants in stages:
        primary = variants[0]
        name = primary.pipeline.name
        condition = conditions.get(name)
        targets: list[Target] | None = None
        skipped: list[str] = []
        upstream_shadow = False
        if condition is not None:
            upstream = done[condition.pipeline]
            targets, skipped = select_targets(condition, upstream)
            upstream_shadow = upstream.mode == "shadow"
        for i, variant in enumerate(variants):
            pipe = variant.pipeline
            started = time.perf_counter()
            if targets is None:
                result = pipe.run(study, None)
            else:
                result = pipe.run(study, targets) if targets else pipe.empty_result()
                result.skipped.extend(skipped)
                result.upstream = condition.pipeline if condition is not None else None
            result.elapsed_ms = (time.perf_counter() - started) * 1000.0
            result.mode = "shadow" if upstream_shadow else variant.mode
            result.model_id = variant.model_id
            for uid, reason in study.refused.items():
                result.not_assessed.setdefault(uid, reason)
            if i == 0:
                done[name] = result
            out.results.append(result)
    return out


def analyse_study(pipeline_set: PipelineSet, names: Sequence[str], study_uid: str,
                  datasets: Sequence[Dataset]) -> tuple[StudyFindings, dict[str, StudyImage]]:
    """Decode the study once, check that each image is a hip or pelvis radiograph
    (`inference.anatomy_check`), and run the named pipelines (and their shadow models) in
    cascade order.

    Returns the findings and the decoded images (for the report's overlays).
    """
    order = pipeline_set.order(names)
    stages = [pipeline_set.variants(n) for n in order]
    modalities = {m for variants in stages for v in variants for m in v.pipeline.modalities()}
    started = time.perf_counter()
    study = StudyInput.from_datasets(study_uid, datasets, modalities)
    check = pipeline_set.anatomy_check()
    if check is not None and study.images:
        study.check_anatomy(check)
    decode_ms = (time.perf_counter() - started) * 1000.0
    conditions = {n: runs_on(n, pipeline_set.settings, order) for n in order}
    findings = run_variants(stages, conditions, study)
    findings.decode_ms = decode_ms
    findings.views_from_image = {u: img.view for u, img in study.images.items()
                                 if img.view_from_image}
    return findings, study.images
