"""Outputs built on real radiographs of the shared corpus (vendors' headers, charsets, sizes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import UID

from hiprouter.config import ReportConfig
from hiprouter.findings import Classification, Finding, HeatMap, PipelineResult, StudyFindings
from hiprouter.inference.decode import decode_file
from hiprouter.pipelines.fracture import FRACTURE
from hiprouter.pipelines.hardware import HARDWARE
from hiprouter.report.build import build_report, write_bundle
from hiprouter.report.sc import MAX_SIDE
from tests.report.inputs import DEMO_MODEL, FRACTURE_MODEL, hot_spot_heatmap
from tests.validation import assert_valid

# One file per distinct header source (vendors, toolkits), several sizes and photometrics.
FILES = [
    "dicom-corpus/pydicom_data_wheel/RG1_UNCI.dcm",
    "dicom-corpus/wg04/RG3_UNC.dcm",
    "dicom-corpus/pylibjpeg_data/JPEG2000Lossless/966_fixed.dcm",
    "dicom-corpus/pylibjpeg_data/JPEG2000Lossless/JPEG2KLossless_1s_1f_u_16_16.dcm",
    "dicom-corpus/pylibjpeg_data/JPEG2000Lossless/NM_Kakadu44_SOTmarkerincons.dcm",
    "dicom-corpus/dwv/gdcm-CR-MONO1-10-chest.dcm",
    "hip-real/wg04/RG2_UNC_hip_CR.dcm",
    "hip-real/ddh_jordan/331_DDH_1.dcm",  # a grey film published as RGB JPEG 2000
]


@pytest.mark.parametrize("name", FILES)
def test_outputs_on_real_radiographs_pass_the_validators(shared_data: Path, tmp_path: Path,
                                                         name: str) -> None:
    ds, image = decode_file(shared_data / name)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert UID(str(ds[keyword].value)).is_valid, "corpus file chosen with valid UIDs"
    uid = str(ds.SOPInstanceUID)
    display = image.display_uint8()
    rows, cols = display.shape
    heat = hot_spot_heatmap(rows, cols, rows // 2, cols // 4, sigma=max(rows, cols) / 20)
    fracture = PipelineResult("fracture", "fracture", FRACTURE, FRACTURE_MODEL, [Finding(
        "fracture", "R", [uid], FRACTURE_MODEL,
        Classification("femoral_neck_fracture", 0.8, {"femoral_neck_fracture": 0.8}),
        heatmaps=[HeatMap(uid, heat)])])
    hardware = PipelineResult("hardware", "hardware", HARDWARE, DEMO_MODEL, [Finding(
        "hardware", "L", [uid], DEMO_MODEL, Classification("tha", 0.9, {"tha": 0.9}))])
    study = StudyFindings(str(ds.StudyInstanceUID), [hardware, fracture])
    bundle = build_report(study, [ds], {uid: display}, ReportConfig())
    assert bundle.priority == "HIGH" and not bundle.left_out
    (sc,) = bundle.scs
    assert max(sc.Rows, sc.Columns) == min(MAX_SIDE, max(rows, cols))
    assert_valid(write_bundle(bundle, tmp_path))
