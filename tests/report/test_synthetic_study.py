"""The outputs for a realistic synthetic study (hiprouter synth) with a femoral neck fracture."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np

from hiprouter.config import ReportConfig
from hiprouter.findings import (
    Classification,
    Finding,
    HeatMap,
    PipelineResult,
    Region,
    StudyFindings,
)
from hiprouter.inference.decode import decode
from hiprouter.report.build import build_report, write_bundle
from hiprouter.synth.study import make_study
from tests.report.inputs import (
    DEMO_MODEL,
    VOCABULARIES,
    hot_spot_heatmap,
    numbers_by_tracking_uid,
    pipeline_of,
)
from tests.validation import assert_valid

FOUND = {"R": ("femoral_neck_fracture", 0.87), "L": ("tha", 0.93)}


def fracture_study() -> tuple[StudyFindings, list, dict, dict[str, tuple[float, float, bool]]]:
    """AP pelvis + frog-leg lateral of the left hip; right femoral neck fracture, left THA.

    The findings are what the models would say (the ground truth); heat maps are centred on
    each hip's position in each image. Returns the findings, the datasets, the display
    images and the right hip's (x, y, right_on_image_left) in the AP pelvis.
    """
    study = make_study(7, hardware={"R": "no_hardware", "L": "tha"},
                       fracture={"R": "femoral_neck_fracture"},
                       views=["ap_pelvis", "frog_leg"], size=(384, 512))
    datasets = [image.dataset for image in study.images]
    heat: dict[str, list[HeatMap]] = {"R": [], "L": []}
    points: dict[str, list[Region]] = {"R": [], "L": []}
    sources: dict[str, list[str]] = {"R": [], "L": []}
    displays, where = {}, {}
    for image in study.images:
        ds = image.dataset
        uid = str(ds.SOPInstanceUID)
        displays[uid] = decode(ds).display_uint8()
        for label in image.labels:
            side = str(label["laterality"])
            x, y = float(label["hip_x"]), float(label["hip_y"])
            heat[side].append(HeatMap(uid, hot_spot_heatmap(ds.Rows, ds.Columns, int(y),
                                                            int(x), 18)))
            points[side].append(Region(uid, "POINT", np.array([[x, y]])))
            sources[side].append(uid)
            if image.view == "ap_pelvis" and side == "R":
                where["R"] = (x, y, bool(image.right_on_image_left))
    results = []
    for side, (key, p) in FOUND.items():
        name = pipeline_of(key)
        kind, vocab = VOCABULARIES[name]
        result = PipelineResult(name, kind, vocab, DEMO_MODEL)
        result.findings.append(Finding(name, side, sources[side], DEMO_MODEL,  # type: ignore[arg-type]
                                       Classification(key, p, {key: p}), heatmaps=heat[side],
                                       regions=points[side][:1]))
        results.append(result)
    return StudyFindings(study.study_uid, results), datasets, displays, where


def test_synthetic_fracture_study_is_high_and_valid(tmp_path: Path) -> None:
    findings, datasets, displays, where = fracture_study()
    bundle = build_report(findings, datasets, displays, ReportConfig())
    assert bundle.priority == "HIGH"
    assert bundle.reason == "Femoral neck fracture, right hip (p=0.87)"
    assert bundle.kos.SeriesDescription == "AI TRIAGE: HIGH"
    assert bundle.text.sentences == ["Right hip: femoral neck fracture.",
                                     "Left hip: total hip arthroplasty."]
    assert not bundle.left_out
    assert_valid(write_bundle(bundle, tmp_path))

    sr = hd.sr.Comprehensive3DSR.from_dataset(bundle.sr)
    numbers = numbers_by_tracking_uid(sr)
    found = {g.finding_sites[0].laterality.value: (
        g.finding_type.meaning, numbers[str(g.tracking_uid)]["122157"].value)
             for g in sr.content.get_planar_roi_measurement_groups()}
    assert found == {"24028007": ("Fracture of neck of femur", 0.87),
                     "7771000": ("Total hip arthroplasty", 0.93)}

    ap, frog = bundle.scs
    x, y, right_on_left = where["R"]
    r, g, b = ap.pixel_array[int(y), int(x)].astype(int)
    assert r > g + 40 and r > b + 40, "hot spot on the right hip is red"
    label_rows = ap.pixel_array[:30].astype(int)
    left_half, right_half = np.array_split(label_rows, 2, axis=1)
    right_label = left_half if right_on_left else right_half
    assert (right_label >= 240).all(axis=2).any(), "R label on the right hip's side"
    assert frog.BodyPartExamined == "HIP" and frog.Laterality in (None, "")
    assert "Laterality" not in ap  # PELVIS is unpaired
