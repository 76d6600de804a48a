"""The radiologist's view of a study that went through `hiprouter serve`: OHIF v3 draws and
lists every finding of its one report.

storescu -> `hiprouter serve` (pipelines hardware and fracture with constant-output models:
this is about the report's structure, not detection) -> Orthanc with DICOMweb -> OHIF v3 in
headless Chromium. The study shows one SR series, one overlay series and one KOS series;
double-clicking the SR draws a marker for every finding at its SCOORD on the radiograph,
and after "Yes, track" the measurement panel lists each finding's sentence. Screenshots and
page text go to $PYTEST_ARTEFACTS/ohif-serve (README's docs/img/ohif_sr.png is one of them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from hiprouter.synth.study import make_study
from tests.conftest import REPO
from tests.e2e.ohif import (
    OHIF_VERSION,
    ViewerUnavailable,
    find_chromium,
    ohif_dist,
    ohif_viewer,
    sr_graphics,
)
from tests.e2e.orthanc import dicomweb_plugin, start_orthanc
from tests.e2e.test_pipeline_e2e import wait_until, write_study
from tests.inference.helpers import constant_model
from tests.router.conftest import storescu

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
SR_SERIES = 9901


def artefacts() -> Path:
    root = Path(os.environ.get("PYTEST_ARTEFACTS", REPO / "tests" / "artefacts"))
    path = root / "ohif-serve"
    path.mkdir(parents=True, exist_ok=True)
    return path


def need_viewer() -> None:
    """Skip, with the reason, when chromium, Orthanc's DICOMweb plugin or OHIF is missing."""
    if find_chromium() is None:
        pytest.skip("chromium not installed (Debian package chromium; scripts/test.sh)")
    if shutil.which("Orthanc") is None or dicomweb_plugin() is None:
        pytest.skip("Orthanc with DICOMweb not installed (orthanc orthanc-dicomweb)")
    try:
        ohif_dist()
    except ViewerUnavailable as exc:
        pytest.skip(f"OHIF Viewer @ohif/app@{OHIF_VERSION} not available: {exc}")


def serve_to(router_process: Any, orthanc: Any, models: dict[str, Path]) -> Any:
    """`hiprouter serve` running `models` (pipeline kind -> model folder) on every CR/DX
    study and sending the results to `orthanc`."""
    return router_process({
        "destinations": {"pacs": {"ae_title": orthanc.ae_title, "host": "127.0.0.1",
                                  "port": orthanc.dicom_port}},
        "queue": {"workers": 1, "poll_interval_s": 0.2},
        "pipelines": {n: {"kind": n, "models": [str(m)], "device": "cpu"}
                      for n, m in models.items()},
        "rules": [{"name": "hips", "match": {"tag": "Modality", "in": ["CR", "DX"]},
                   "pipelines": list(models), "send_to": ["pacs"]}],
    })


def send_and_wait(orthanc: Any, router: Any, files: list[Path], study_uid: str,
                  series: int) -> list[dict]:
    """Store `files` at Orthanc and send them through the router; Orthanc's series of the
    study once it has `series` of them (the images and the router's results)."""
    assert storescu(orthanc.dicom_port, files, called=orthanc.ae_title).returncode == 0
    assert storescu(router.port, files).returncode == 0

    def report_at_pacs() -> list[dict] | None:
        found = orthanc.study_id(study_uid)
        listed = orthanc.get(f"/studies/{found}/series") if found else []
        return listed if len(listed) == series else None

    return wait_until(report_at_pacs, 240, f"{series} series of the study in Orthanc")


def test_ohif_draws_and_lists_every_finding_of_a_served_study(router_process: Any,
                                                              tmp_path: Path) -> None:
    need_viewer()
    out = artefacts()
    orthanc = start_orthanc(tmp_path / "orthanc", dicomweb=True)
    models = {"hardware": constant_model(tmp_path / "hw", "hardware", "tha"),
              "fracture": constant_model(tmp_path / "fx", "fracture", "no_fracture")}
    router = serve_to(router_process, orthanc, models)
    try:
        study = make_study(4343, 0, views=("ap_pelvis",), size=(900, 1000),
                           hardware={"R": "tha", "L": "no_hardware"})
        files = write_study(tmp_path / "study", [i.dataset for i in study.images])
        series = send_and_wait(orthanc, router, files, study.study_uid, 4)  # + SR, SC, KOS
        modalities = sorted(s["MainDicomTags"]["Modality"] for s in series)
        assert modalities[1:] == ["KO", "OT", "SR"]  # one series of each: no duplicates
        sr_path = next(p for p in (router.root / "out").rglob("sr-*.dcm"))
        graphics = sr_graphics(dcmread(sr_path))
        assert len(graphics) == 4  # hardware and fracture, both hips

        with ohif_viewer(orthanc.http_port) as viewer:
            viewer.open_study(study.study_uid)
            listed = viewer.series_listed()
            assert sum("AI HIP REPORT" in s for s in listed) == 1, listed
            assert sum("AI TRIAGE" in s for s in listed) == 1, listed
            viewer.open_series(SR_SERIES)
            viewer.wait_sr_loaded()
            drawing = viewer.look_at(graphics, wait_s=15)
            (out / "ohif_served_sr.png").write_bytes(drawing.png)
            (out / "ohif_served_sr_drawing.txt").write_text(repr(drawing) + "\n")
            assert drawing.drawn(len(graphics)), drawing
            viewer.accept_tracking()
            viewer.open_measurements()
            sentences = ["Right hip: total hip arthroplasty.", "Left hip: total hip arthroplasty.",
                         "Right hip: no fracture detected.", "Left hip: no fracture detected."]
            viewer.b.wait_for(" && ".join(
                f"document.body.innerText.includes({s!r})" for s in sentences), 30)
            panel = viewer.open_measurements()
            (out / "ohif_served_measurements.png").write_bytes(viewer.b.screenshot())
            (out / "ohif_served_measurements.txt").write_text(panel)
            rows = viewer.measurement_rows()
            assert len(rows) == len(graphics), rows
            for sentence in sentences:
                assert any(sentence in r for r in rows), (sentence, rows)
    finally:
        router.stop()
        orthanc.stop()


def test_ohif_draws_and_lists_why_nothing_was_assessed(router_process: Any,
                                                       tmp_path: Path) -> None:
    """A chest film sent as an AP pelvis: the anatomy check stops it before any pipeline,
    and the one report says why. OHIF shows only drawable measurement groups (a report
    without one opens as an empty black viewport), so the reason's group outlines the whole
    film: OHIF shows the film with the outline, and after "Yes, track" the measurement
    panel lists the reason."""
    from hiprouter.synth.ood import claim_ap_pelvis, make_ood_image

    need_viewer()
    out = artefacts()
    orthanc = start_orthanc(tmp_path / "orthanc", dicomweb=True)
    router = serve_to(router_process, orthanc,
                      {"hardware": constant_model(tmp_path / "hw", "hardware", "tha")})
    try:
        chest = claim_ap_pelvis(make_ood_image("chest_pa", 9500))
        study_uid = str(chest.StudyInstanceUID)
        files = write_study(tmp_path / "study", [chest])
        series = send_and_wait(orthanc, router, files, study_uid, 3)  # + SR, KOS
        assert sorted(s["MainDicomTags"]["Modality"] for s in series)[1:] == ["KO", "SR"]
        sr = dcmread(next(p for p in (router.root / "out").rglob("sr-*.dcm")))
        (graphic,) = sr_graphics(sr)
        assert graphic.graphic_type == "POLYLINE" and graphic.tracking_id == "image not assessed"
        assert graphic.sop_instance_uid == str(chest.SOPInstanceUID)
        reason = "Image not assessed: not a hip or pelvis radiograph of an adult"

        with ohif_viewer(orthanc.http_port) as viewer:
            viewer.open_study(study_uid)
            listed = viewer.series_listed()
            assert sum("AI HIP REPORT" in s for s in listed) == 1, listed
            viewer.open_series(SR_SERIES)
            viewer.wait_sr_loaded()
            drawing = viewer.look_at([graphic], wait_s=15)
            (out / "ohif_not_assessed_sr.png").write_bytes(drawing.png)
            (out / "ohif_not_assessed_drawing.txt").write_text(repr(drawing) + "\n")
            # the outline is drawn (OHIF's label of a group shows only its numbers and
            # finding site, and this one has neither: the reason is in the panel below)
            assert list(drawing.labels) == [graphic.tracking_uid], drawing
            assert drawing.colour[0] >= 8, drawing
            assert viewer.displayed_sop_uid() == str(chest.SOPInstanceUID)
            viewer.accept_tracking()
            viewer.open_measurements()
            viewer.b.wait_for(f"document.body.innerText.includes({reason!r})", 30)
            panel = viewer.open_measurements()
            (out / "ohif_not_assessed_measurements.png").write_bytes(viewer.b.screenshot())
            (out / "ohif_not_assessed_measurements.txt").write_text(panel)
            rows = viewer.measurement_rows()
            assert len(rows) == 1 and reason in rows[0], rows
            assert "looks like a chest radiograph" in rows[0], rows
    finally:
        router.stop()
        orthanc.stop()
