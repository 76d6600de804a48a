"""A radiologist's view: OHIF Viewer v3 (headless Chromium) shows an SR's findings on the image.

Orthanc with its DICOMweb plugin holds a synthetic AP pelvis (right hip: total hip
arthroplasty, left hip: none) and two SRs built here with highdicom:

- series 9901, the drawable SR: TID 1500 with one TID 1410 planar-ROI group per hip, each with
  Tracking Identifier + Tracking Unique Identifier, Finding, Finding Site (hip joint with
  laterality), an Image Region SCOORD POINT at the hip centre (IMAGE child = the radiograph)
  and the sentence as a TEXT "Comment" (DCM 121106);
- series 9902, the control: the same findings as TID 1501 groups with no SCOORD.

OHIF is opened on /viewer?StudyInstanceUIDs=..., and each SR is double-clicked in the study
browser, as a user would. Drawn = OHIF's SVG annotation layer has a text box for each tracking
UID and a line ending at the hip centre, and the screenshot has coloured (annotation) pixels
there that the plain radiograph has not. The control must come out "not drawn", so the check
cannot pass without graphics. Listed = after answering "Yes" to OHIF's tracking prompt (which
hydrates the SR), the measurement panel lists each hip's sentence and finding.

Screenshots and the DOM text go to $PYTEST_ARTEFACTS/ohif (default tests/artefacts/ohif,
ignored by git). Skips, with the reason, only when chromium, Orthanc's DICOMweb plugin or the
OHIF package cannot be had; scripts/test.sh installs all three.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from hiprouter.synth.study import SynthImage, make_study
from tests.conftest import REPO
from tests.e2e.ohif import (
    OHIF_VERSION,
    OhifViewer,
    ViewerUnavailable,
    find_chromium,
    ohif_dist,
    ohif_viewer,
    sr_graphics,
)
from tests.e2e.orthanc import dicomweb_plugin, start_orthanc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DRAWN_SR = 9901
PLAIN_SR = 9902
SIDE = {"R": "Right", "L": "Left"}
LATERALITY = {"R": hd.sr.CodedConcept("24028007", "SCT", "Right"),
              "L": hd.sr.CodedConcept("7771000", "SCT", "Left")}
FINDING = {"tha": hd.sr.CodedConcept("76752008", "SCT", "Total hip replacement"),
           "no_hardware": hd.sr.CodedConcept("NOHW", "99HIPAI", "No hardware")}
HIP_JOINT = hd.sr.CodedConcept("24136001", "SCT", "Hip joint")
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")


def artefact_dir() -> Path:
    root = Path(os.environ.get("PYTEST_ARTEFACTS", REPO / "tests" / "artefacts"))
    path = root / "ohif"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Hip:
    side: str
    finding: hd.sr.CodedConcept
    column: float
    row: float
    tracking_uid: str = field(default_factory=lambda: str(generate_uid()))

    @property
    def sentence(self) -> str:
        return f"{SIDE[self.side]} hip: {self.finding.meaning}"


def hip_sr(image: SynthImage, hips: list[Hip], *, graphics: bool, series_number: int,
           ) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 report with one group per hip: TID 1410 with a SCOORD POINT (graphics) or
    TID 1501 without any spatial coordinates (the control)."""
    src = image.dataset
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations |
                 hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations] = []
    for hip in hips:
        tracking = hd.sr.TrackingIdentifier(uid=hip.tracking_uid,
                                            identifier=f"hardware {SIDE[hip.side].lower()} hip")
        site = hd.sr.FindingSite(anatomic_location=HIP_JOINT, laterality=LATERALITY[hip.side])
        group: (hd.sr.MeasurementsAndQualitativeEvaluations |
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations)
        if graphics:
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POINT,
                graphic_data=np.array([[hip.column, hip.row]]),
                source_image=hd.sr.SourceImageForRegion.from_source_image(src))
            group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, referenced_region=region,
                finding_type=hip.finding, finding_sites=[site])
        else:
            group = hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, finding_type=hip.finding, finding_sites=[site],
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src)])
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=COMMENT, value=hip.sentence,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        groups.append(group)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="hiprouter viewer test"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure"),
        imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(
        evidence=[src], content=report[0], series_instance_uid=generate_uid(),
        series_number=series_number, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="hiprouter", is_complete=True, is_final=False, is_verified=False,
        series_description=f"AI HIP TEST SR {'POINTS' if graphics else 'NO GRAPHICS'}",
        coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
            designator="99HIPAI", name="hiprouter test codes")])


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@dataclass
class Stack:
    viewer: OhifViewer
    study_uid: str
    image: SynthImage
    hips: list[Hip]
    """The hips of the drawable SR."""
    drawn_sr: Dataset
    plain_sr: Dataset
    """The same findings without SCOORD (other tracking UIDs)."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if find_chromium() is None:
        pytest.skip("chromium not installed (Debian package chromium; scripts/test.sh)")
    if shutil.which("Orthanc") is None or dicomweb_plugin() is None:
        pytest.skip("Orthanc with its DICOMweb plugin not installed (Debian packages orthanc "
                    "orthanc-dicomweb; scripts/test.sh)")
    try:
        ohif_dist()
    except ViewerUnavailable as exc:
        pytest.skip(f"OHIF Viewer @ohif/app@{OHIF_VERSION} not available: {exc}")

    study = make_study(4242, 0, views=["ap_pelvis"],
                       hardware={"R": "tha", "L": "no_hardware"}, size=(1000, 1100))
    image = study.images[0]
    hips = [Hip(str(row["laterality"]), FINDING[str(row["hardware"])],
                float(str(row["hip_x"])), float(str(row["hip_y"])))
            for row in image.labels]
    drawn = hip_sr(image, hips, graphics=True, series_number=DRAWN_SR)
    plain = hip_sr(image, [Hip(h.side, h.finding, h.column, h.row) for h in hips],
                   graphics=False, series_number=PLAIN_SR)
    orthanc = start_orthanc(tmp_path_factory.mktemp("orthanc-dicomweb"), dicomweb=True)
    try:
        for ds in (image.dataset, drawn, plain):
            orthanc.upload(part10(ds))
        with ohif_viewer(orthanc.http_port) as viewer:
            try:
                yield Stack(viewer, study.study_uid, image, hips, drawn, plain)
            finally:
                (artefact_dir() / "console.log").write_text("\n".join(viewer.b.console))
    finally:
        orthanc.stop()


def test_ohif_draws_and_lists_sr_findings(stack: Stack) -> None:
    out = artefact_dir()
    viewer, hips = stack.viewer, stack.hips
    graphics = sr_graphics(stack.drawn_sr)
    assert [g.tracking_uid for g in graphics] == [h.tracking_uid for h in hips]
    assert sr_graphics(stack.plain_sr) == []

    # DICOMweb through the same-origin proxy: what OHIF itself queries.
    qido = f"{viewer.server.origin}/dicom-web/studies/{stack.study_uid}/series"
    with urllib.request.urlopen(qido, timeout=10) as r:
        series = {s["00200011"]["Value"][0] for s in json.loads(r.read())}
    assert {1, DRAWN_SR, PLAIN_SR} <= series

    # 1. The study opens on the radiograph; both SRs are in the study browser. The drawing
    # check finds nothing on the plain radiograph.
    viewer.open_study(stack.study_uid)
    listed = viewer.series_listed()
    assert any("POINTS" in s for s in listed) and any("NO GRAPHICS" in s for s in listed), listed
    plain_image = viewer.look_at(graphics, wait_s=0)
    (out / "ohif_radiograph.png").write_bytes(plain_image.png)
    assert plain_image.colour == [0] * len(hips), plain_image
    assert not plain_image.drawn(len(hips)), plain_image

    # 2. The SR with SCOORDs: OHIF's SR viewport draws one marker per hip at the point.
    viewer.open_series(DRAWN_SR)
    viewer.wait_sr_loaded()
    drawing = viewer.look_at(graphics, wait_s=10)
    (out / "ohif_sr.png").write_bytes(drawing.png)
    (out / "ohif_sr_drawing.txt").write_text(repr(drawing) + "\n")
    (out / "ohif_sr_dom.txt").write_text(viewer.b.text())
    assert drawing.drawn(len(hips)), drawing
    assert viewer.displayed_sop_uid() == str(stack.image.dataset.SOPInstanceUID)
    for hip in hips:
        assert "Hip joint" in drawing.labels[hip.tracking_uid]

    # 3. "Yes, track": OHIF hydrates the SR; the measurement panel lists every hip's finding.
    viewer.accept_tracking()
    viewer.open_measurements()
    viewer.b.wait_for(" && ".join(
        f"document.body.innerText.includes({json.dumps(h.sentence)})" for h in hips), 20)
    panel = viewer.open_measurements()
    (out / "ohif_sr_measurements.png").write_bytes(viewer.b.screenshot())
    (out / "ohif_sr_measurements.txt").write_text(panel)
    rows = viewer.measurement_rows()
    assert len(rows) == len(hips), rows
    for hip in hips:
        row = next((r for r in rows if hip.sentence in r), None)
        assert row is not None, (hip.sentence, rows)
        assert hip.finding.meaning in row and "Hip joint" in row, row

    # 4. Control, in a fresh page: the same findings without SCOORD are not drawn, so the
    # check above cannot pass without graphics.
    viewer.open_study(stack.study_uid)
    viewer.open_series(PLAIN_SR)
    control_uids = [str(uid) for uid in _tracking_uids(stack.plain_sr)]
    control = viewer.look_at([replace(g, tracking_uid=u)
                              for g, u in zip(graphics, control_uids, strict=True)], wait_s=8)
    (out / "ohif_sr_no_graphics.png").write_bytes(control.png)
    assert not control.drawn(len(hips)), control
    assert control.labels == {} and not any(control.line_ends), control


def _tracking_uids(sr: Dataset) -> list[str]:
    """Tracking Unique Identifiers (DCM 112040) of an SR, in document order."""
    found: list[str] = []

    def walk(items: object) -> None:
        for item in items or []:  # type: ignore[attr-defined]
            name = item.get("ConceptNameCodeSequence")
            if item.ValueType == "UIDREF" and name and name[0].CodeValue == "112040":
                found.append(str(item.UID))
            walk(item.get("ContentSequence"))

    walk(sr.get("ContentSequence"))
    return found
