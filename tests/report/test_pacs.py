"""Created objects at a real PACS (Orthanc): they join the study, and a replay adds nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hiprouter.config import ReportConfig
from hiprouter.report.build import build_report, write_bundle
from tests.e2e.orthanc import start_orthanc
from tests.report.inputs import make_study
from tests.router.conftest import storescu


def test_outputs_join_the_study_at_orthanc_and_a_replay_replaces(tmp_path: Path) -> None:
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc not installed (Debian package orthanc)")
    study, sources, displays = make_study(right=("femoral_neck_fracture", 0.9),
                                          left=("tha", 0.95))
    source_paths = []
    for i, ds in enumerate(sources):
        source_paths.append(tmp_path / f"source{i}.dcm")
        ds.save_as(source_paths[-1], enforce_file_format=True)
    first = write_bundle(build_report(study, sources, displays, ReportConfig()),
                         tmp_path / "run1")

    pacs = start_orthanc(tmp_path / "orthanc")
    try:
        sent = storescu(pacs.dicom_port, [*source_paths, *first], called=pacs.ae_title,
                       extra=["--required", "--propose-jls-lossless"])
        assert sent.returncode == 0, sent.stderr
        study_id = pacs.study_id(study.study_uid)
        assert study_id is not None
        series = [pacs.get(f"/series/{s}")["MainDicomTags"]
                  for s in pacs.get(f"/studies/{study_id}")["Series"]]
        by_modality = {s["Modality"]: s.get("SeriesDescription", "") for s in series}
        assert sorted(by_modality) == ["CR", "KO", "OT", "SR"]
        assert by_modality["KO"] == "AI TRIAGE: HIGH"
        assert by_modality["SR"].endswith("NOT FOR DIAGNOSTIC USE")
        assert by_modality["OT"].endswith("NOT FOR DIAGNOSTIC USE")
        assert len(pacs.get("/patients")) == 1  # same Patient ID: one patient, one study
        instances = len(pacs.get(f"/studies/{study_id}/instances"))
        assert instances == 1 + len(first)

        # A replay (the same result built again, e.g. in German) reuses every UID.
        again = write_bundle(build_report(study, sources, displays,
                                          ReportConfig(language="de")), tmp_path / "run2")
        sent = storescu(pacs.dicom_port, again, called=pacs.ae_title,
                       extra=["--required", "--propose-jls-lossless"])
        assert sent.returncode == 0, sent.stderr
        assert len(pacs.get(f"/studies/{study_id}/instances")) == instances
    finally:
        pacs.stop()
