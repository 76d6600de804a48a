"""The Structured Report: Comprehensive 3D SR with a TID 1500 Measurement Report.

One TID 1501 measurement group per hip: tracking identifier and UID, finding (the class
code), finding site (hip joint with laterality), algorithm identification (TID 4019),
probability (NUM, DCM 122157, UCUM "1"), the class as a coded qualitative evaluation, the
source images, and the prepopulated sentence as TEXT. The whole impression paragraph is a
TEXT item in the report's Qualitative Evaluations container.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from hiprouter.inference.classes import PRIVATE_SCHEME, PRIVATE_SCHEME_NAME, class_by_key
from hiprouter.inference.results import HipResult, ModelInfo, StudyResult
from hiprouter.report.text import ReportText

SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "AI HIP REPORT - NOT FOR DIAGNOSTIC USE"

HIP_JOINT = hd.sr.CodedConcept("24136001", "SCT", "Hip joint")
LATERALITY = {
    "R": hd.sr.CodedConcept("24028007", "SCT", "Right"),
    "L": hd.sr.CodedConcept("7771000", "SCT", "Left"),
}
PROCEDURE_REPORTED = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
IMPRESSION = hd.sr.CodedConcept("121073", "DCM", "Impression")
AI_CLASS = hd.sr.CodedConcept("AICLASS", PRIVATE_SCHEME, "AI predicted class")
LANGUAGES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish",
             "it": "Italian", "nl": "Dutch", "pt": "Portuguese"}

_SIDE_ID = {"R": "right hip", "L": "left hip", "U": "hip"}


def finding_code(key: str) -> hd.sr.CodedConcept:
    """The coded concept of a finding class."""
    fc = class_by_key(key)
    return hd.sr.CodedConcept(fc.code, fc.scheme, fc.meaning)


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


def _group(hip: HipResult, result: StudyResult, sentence: str, tracking_uid: str,
           sources: dict[str, Dataset]) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    finding = finding_code(hip.predicted_class)
    site = hd.sr.FindingSite(anatomic_location=HIP_JOINT,
                             laterality=LATERALITY.get(hip.laterality))
    algorithm = hd.sr.AlgorithmIdentification(name=result.model.name,
                                              version=result.model.version)
    probability = hd.sr.Measurement(name=PROBABILITY, value=float(hip.probability),
                                    unit=NO_UNITS)
    images = [hd.sr.SourceImageForMeasurementGroup.from_source_image(sources[uid])
              for uid in hip.source_sop_uids if uid in sources]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid, identifier=f"{result.pipeline} {_SIDE_ID[hip.laterality]}"[:64]),
        finding_type=finding,
        finding_sites=[site],
        algorithm_id=algorithm,
        measurements=[probability],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=AI_CLASS, value=finding)],
        source_images=images or None,
    )
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=QUALITATIVE_EVALUATIONS, value=sentence,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def build_sr(result: StudyResult, evidence: Sequence[Dataset], text: ReportText, *,
             series_uid: str, sop_uid: str, tracking_uids: Sequence[str],
             series_description: str = SR_SERIES_DESCRIPTION) -> hd.sr.Comprehensive3DSR:
    """Build the SR of one study result.

    ``evidence`` are the source radiographs that were used (never refused ones); the SR
    copies the Patient and Study modules from the first. ``tracking_uids`` has one UID per
    hip, in the order of ``result.hips``.
    """
    if not evidence:
        raise ValueError("build_sr: no source image to attach the report to")
    if len(tracking_uids) != len(result.hips):
        raise ValueError("build_sr: need one tracking UID per hip")
    sources = {str(ds.SOPInstanceUID): ds for ds in evidence}
    groups = [_group(hip, result, sentence, uid, sources)
              for hip, sentence, uid in zip(result.hips, text.hip_sentences, tracking_uids,
                                            strict=True)]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result.model.device_uid, name=result.model.name[:64],
            manufacturer_name=result.model.manufacturer[:64],
            model_name=result.model.architecture[:64]),
    )
    language = hd.sr.LanguageOfContentItemAndDescendants(
        hd.sr.CodedConcept(text.language, "RFC5646",
                           LANGUAGES.get(text.language, text.language)))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
        language_of_content_item_and_descendants=language,
        referenced_images=None if groups else list(evidence),
    )
    impression = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    impression.ContentSequence = [hd.sr.TextContentItem(
        name=IMPRESSION, value=text.impression,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)]
    report[0].ContentSequence.append(impression)

    return hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report[0],
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=result.model.manufacturer[:64],
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description[:64],
        coding_schemes=[private_scheme()],
        contributing_equipment=[algorithm_equipment_for(
            result.model, f"AI inference, pipeline {result.pipeline}")],
        specific_character_set="ISO_IR 192",
    )
