"""The Structured Report: Comprehensive 3D SR with one TID 1500 Measurement Report per study.

Per finding (every pipeline, every hip), under one Tracking Identifier/UID:

- with a region (all built-in kinds have one): a TID 1410 Planar ROI group whose Image
  Region is a SCOORD (POINT at the hip, POLYLINE around the finding) with its IMAGE
  reference, the structure OHIF v3 and Weasis draw on the radiograph and list (titled by
  the sentence, a TEXT Comment), plus a TID 1501 group with the numbers;
- without one: a TID 1501 group referencing its source images.

The groups carry Finding (the class code; "Indeterminate" or "Not assessed" when the model
abstained), Finding Site (hip joint or femoral head, with laterality), Algorithm
Identification (TID 4019), the class as a coded qualitative evaluation, the probability as
NUM (DCM 122157, UCUM "1") and the pipeline's other measurements. The impression paragraph
is a TEXT item in a Qualitative Evaluations container.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from hiprouter.findings import (
    NO_UNITS,
    PRIVATE_SCHEME,
    PRIVATE_SCHEME_NAME,
    Code,
    Finding,
    ModelInfo,
    Region,
    StudyFindings,
    Unit,
)
from hiprouter.report.text import ReportText

SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "AI HIP REPORT - NOT FOR DIAGNOSTIC USE"

LATERALITY = {
    "R": hd.sr.CodedConcept("24028007", "SCT", "Right"),
    "L": hd.sr.CodedConcept("7771000", "SCT", "Left"),
}
PROCEDURE_REPORTED = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
IMPRESSION = hd.sr.CodedConcept("121073", "DCM", "Impression")
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
AI_CLASS = hd.sr.CodedConcept("AICLASS", PRIVATE_SCHEME, "AI predicted class")
AI_STATUS = hd.sr.CodedConcept("AISTATUS", PRIVATE_SCHEME, "AI assessment status")
STATUS_CODES = {
    "indeterminate": hd.sr.CodedConcept("INDET", PRIVATE_SCHEME, "Indeterminate"),
    "not_assessed": hd.sr.CodedConcept("NOTASSESSED", PRIVATE_SCHEME, "Not assessed"),
}
LANGUAGES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish",
             "it": "Italian", "nl": "Dutch", "pt": "Portuguese"}

_SIDE_ID = {"R": "right hip", "L": "left hip", "U": "hip"}


def concept(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def unit_concept(unit: Unit) -> hd.sr.CodedConcept:
    if unit == NO_UNITS:
        return hd.sr.CodedConcept("1", "UCUM", "no units")
    return hd.sr.CodedConcept(unit.code, "UCUM", unit.meaning)


def private_scheme() -> hd.coding_schemes.CodingSchemeIdentificationItem:
    """Declaration of the private coding scheme used for classes without a standard code."""
    return hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME, name=PRIVATE_SCHEME_NAME,
        responsible_organization="hiprouter project")


def algorithm_equipment_for(model: ModelInfo, contribution: str) -> hd.ContributingEquipment:
    """Contributing Equipment item naming the model, with its Device UID."""
    item = hd.ContributingEquipment(
        manufacturer=model.manufacturer[:64],
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name[:64],
        software_versions=model.version[:64],
        contribution_description=contribution[:64],
    )
    item.DeviceUID = model.device_uid
    return item


def observer_context(router: ModelInfo) -> hd.sr.ObserverContext:
    """The AI system as the observer device of SR and KOS."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=router.device_uid, name=router.name[:64],
            manufacturer_name=router.manufacturer[:64], model_name=router.architecture[:64]),
    )


def _finding_type(finding: Finding, vocab_code: Code | None) -> hd.sr.CodedConcept:
    c = finding.classification
    if c is not None and c.status in STATUS_CODES:
        return STATUS_CODES[c.status]
    if vocab_code is not None:
        return concept(vocab_code)
    return hd.sr.CodedConcept("FINDING", PRIVATE_SCHEME, finding.pipeline)


def _image_region(region: Region, sources: dict[str, Dataset]) -> hd.sr.ImageRegion | None:
    ds = sources.get(region.sop_instance_uid)
    if ds is None:
        return None
    points = region.points.astype(np.float64)
    if region.graphic_type == "POLYLINE" and len(points) >= 3 and \
            not (points[0] == points[-1]).all():
        points = np.vstack([points, points[:1]])  # closed outline
    return hd.sr.ImageRegion(
        graphic_type=region.graphic_type, graphic_data=points,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(ds.SOPClassUID),
            referenced_sop_instance_uid=str(ds.SOPInstanceUID)))


def _groups(finding: Finding, vocab_code: Code | None, sentence: str, tracking_uid: str,
            sources: dict[str, Dataset]) -> list[hd.sr.Template]:
    """The measurement groups of one finding (one tracking UID).

    With a region: a TID 1410 group (SCOORD, finding, site, class, the sentence as a
    Comment) that viewers draw and list, and a TID 1501 group with the numbers (probability
    and measurements) under the same tracking UID: OHIF v3 cannot load a TID 1410 group
    whose NUMs have no SCOORD of their own, and highdicom cannot give them one. Without a
    region: one TID 1501 group with everything.
    """
    c = finding.classification
    finding_type = _finding_type(finding, vocab_code)

    def site() -> list[hd.sr.FindingSite]:
        return [hd.sr.FindingSite(anatomic_location=concept(finding.finding_site),
                                  laterality=LATERALITY.get(finding.laterality))]

    def algorithm() -> hd.sr.AlgorithmIdentification:
        return hd.sr.AlgorithmIdentification(name=finding.model.name[:64],
                                             version=finding.model.version[:64])

    def tracking() -> hd.sr.TrackingIdentifier:
        return hd.sr.TrackingIdentifier(
            uid=tracking_uid,
            identifier=f"{finding.pipeline} {_SIDE_ID[finding.laterality]}"[:64])

    measurements = []
    if c is not None and c.status != "not_assessed":
        measurements.append(hd.sr.Measurement(name=PROBABILITY, value=float(c.probability),
                                              unit=unit_concept(NO_UNITS)))
    measurements += [hd.sr.Measurement(name=concept(m.name), value=float(m.value),
                                       unit=unit_concept(m.unit))
                     for m in finding.measurements]
    evaluations = []
    if c is not None and c.status == "assessed" and vocab_code is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(name=AI_CLASS, value=concept(vocab_code)))
    elif c is not None and c.status in STATUS_CODES:
        evaluations.append(hd.sr.QualitativeEvaluation(name=AI_STATUS,
                                                       value=STATUS_CODES[c.status]))
    images = [hd.sr.SourceImageForMeasurementGroup.from_source_image(sources[uid])
              for uid in finding.source_sop_uids if uid in sources]
    comment = hd.sr.TextContentItem(name=COMMENT, value=sentence,
                                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    region = next((r for r in (_image_region(r, sources) for r in finding.regions)
                   if r is not None), None)
    if region is None:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking(), finding_type=finding_type, algorithm_id=algorithm(),
            finding_sites=site(), measurements=measurements or None,
            qualitative_evaluations=evaluations or None, source_images=images or None)
        group[0].ContentSequence.append(comment)
        return [group]
    drawn = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(), referenced_region=region, finding_type=finding_type,
        algorithm_id=algorithm(), finding_sites=site(),
        qualitative_evaluations=evaluations or None)
    drawn[0].ContentSequence.append(comment)
    if not measurements:
        return [drawn]
    numbers = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(), finding_type=finding_type, algorithm_id=algorithm(),
        finding_sites=site(), measurements=measurements, source_images=images or None)
    return [drawn, numbers]


NOT_ASSESSED_INSET = 0.02
"""The outline of a not-assessed image lies this fraction of its size inside its edges."""


def _image_outline(sop_uid: str, sources: dict[str, Dataset]) -> hd.sr.ImageRegion | None:
    """A closed POLYLINE just inside the edges of a radiograph (None without its size)."""
    ds = sources[sop_uid]
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows < 2 or cols < 2:
        return None
    d = NOT_ASSESSED_INSET * min(rows, cols)
    outline = np.array([[d, d], [cols - d, d], [cols - d, rows - d], [d, rows - d]])
    return _image_region(Region(sop_uid, "POLYLINE", outline), sources)


def _not_assessed_group(sop_uid: str, reason: str, tracking_uid: str,
                        sources: dict[str, Dataset]) -> hd.sr.Template:
    """A group saying that one image was not assessed, and why (a study in which no hip got
    a finding still needs one measurement group for TID 1500): a TID 1410 group whose region
    outlines the whole image, so that viewers which show only drawable groups (OHIF v3)
    draw and list the reason on the film; TID 1501 when the image's size is unknown."""
    tracking = hd.sr.TrackingIdentifier(uid=tracking_uid, identifier="image not assessed")
    status = [hd.sr.QualitativeEvaluation(name=AI_STATUS, value=STATUS_CODES["not_assessed"])]
    region = _image_outline(sop_uid, sources)
    group: hd.sr.Template
    if region is not None:
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_region=region,
            finding_type=STATUS_CODES["not_assessed"], qualitative_evaluations=status)
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=STATUS_CODES["not_assessed"],
            qualitative_evaluations=status,
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(
                sources[sop_uid])])
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=COMMENT, value=f"Image not assessed: {reason}"[:1024],
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def build_sr(study: StudyFindings, evidence: Sequence[Dataset], text: ReportText,
             router: ModelInfo, *, series_uid: str, sop_uid: str,
             tracking_uids: Sequence[str], image_tracking_uids: dict[str, str] | None = None,
             series_description: str = SR_SERIES_DESCRIPTION) -> hd.sr.Comprehensive3DSR:
    """Build the SR of one study's findings.

    ``evidence`` are the source radiographs used (the SR copies the Patient and Study
    modules from the first); ``tracking_uids`` has one UID per finding in
    `StudyFindings.findings()` order; ``router`` identifies the AI system as observer.
    Without any finding, each not-assessed image gets a group of its own (UID from
    ``image_tracking_uids`` by SOP Instance UID) saying why.
    """
    if not evidence:
        raise ValueError("build_sr: no source image to attach the report to")
    findings = study.findings()
    if len(tracking_uids) != len(findings):
        raise ValueError("build_sr: need one tracking UID per finding")
    sources = {str(ds.SOPInstanceUID): ds for ds in evidence}
    groups = []
    for f, sentence, uid in zip(findings, text.finding_sentences, tracking_uids, strict=True):
        vocab = study.vocabulary(f.pipeline)
        c = f.classification
        code = vocab[c.predicted].code if c is not None and c.predicted in vocab else None
        groups.extend(_groups(f, code, sentence, uid, sources))
    if not groups:
        for u, reason in study.not_assessed().items():
            if u in sources and u in (image_tracking_uids or {}):
                groups.append(_not_assessed_group(u, reason, image_tracking_uids[u], sources))
    language = hd.sr.LanguageOfContentItemAndDescendants(
        hd.sr.CodedConcept(text.language, "RFC5646",
                           LANGUAGES.get(text.language, text.language)))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=observer_context(router)),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
        language_of_content_item_and_descendants=language,
    )
    impression = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    impression.ContentSequence = [hd.sr.TextContentItem(
        name=IMPRESSION, value=text.impression,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)]
    report[0].ContentSequence.append(impression)
    models = {r.model.device_uid: r for r in study.results if r.model is not None}
    return hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report[0],
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=router.manufacturer[:64],
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description[:64],
        coding_schemes=[private_scheme()],
        contributing_equipment=[
            algorithm_equipment_for(r.model, f"AI inference, pipeline {r.pipeline}")
            for r in models.values() if r.model is not None],
        specific_character_set="ISO_IR 192",
    )
