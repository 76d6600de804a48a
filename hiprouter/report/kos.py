"""The triage flag: a Key Object Selection document titled "Of Interest".

It references the radiographs and the SR, SC overlays and SEG of the study's one report;
its Key Object Description is "AI TRIAGE PRIORITY=<level>: <reasons>" (the highest level,
then every lower-level reason), in a series described "AI TRIAGE: <level>", so a worklist
or viewer can sort urgent studies first.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from hiprouter.findings import ModelInfo
from hiprouter.report.sr import algorithm_equipment_for, observer_context

KOS_SERIES_NUMBER = 9903
OF_INTEREST = hd.sr.CodedConcept("113000", "DCM", "Of Interest")
DESCRIPTION_PREFIX = "AI TRIAGE PRIORITY="


def triage_description(level: str, reason: str) -> str:
    """The Key Object Description text."""
    return f"{DESCRIPTION_PREFIX}{level}: {reason}"[:1024]


def triage_series_description(level: str) -> str:
    """Series Description of the KOS series."""
    return f"AI TRIAGE: {level}"


def build_kos(radiographs: Sequence[Dataset], created: Sequence[Dataset], router: ModelInfo,
              models: Sequence[ModelInfo], level: str, reason: str, *, series_uid: str,
              sop_uid: str) -> hd.ko.KeyObjectSelectionDocument:
    """The KOS flagging one study; ``created`` are the SR, SC and SEG objects of its report."""
    if not radiographs:
        raise ValueError("build_kos: no radiograph to reference")
    referenced = [*radiographs, *created]
    content = hd.ko.KeyObjectSelection(
        document_title=OF_INTEREST,
        referenced_objects=referenced,
        observer_device_context=observer_context(router),
        description=triage_description(level, reason),
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=referenced,
        content=content,
        series_instance_uid=series_uid,
        series_number=KOS_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=router.manufacturer[:64],
        series_description=triage_series_description(level),
        contributing_equipment=[algorithm_equipment_for(m, "AI triage") for m in models],
        specific_character_set="ISO_IR 192",
    )
    kos.copy_patient_and_study_information(radiographs[0])  # all of Patient and General Study
    for item in kos.ContentSequence:
        # TID 2010 forbids a Purpose of Reference (concept name) on the references;
        # highdicom names them (SCT 260753009 "Source").
        if item.ValueType in ("IMAGE", "COMPOSITE") and "ConceptNameCodeSequence" in item:
            del item.ConceptNameCodeSequence
    return kos
