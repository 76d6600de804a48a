"""The outputs for a realistic synthetic study (hiprouter synth) with a femoral neck fracture."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np

from hiprouter.config import PipelineConfig
from hiprouter.inference.decode import decode
from hiprouter.inference.results import HipResult, ImageHeatmap, StudyResult
from hiprouter.report.build import build_outputs, write_bundle
from hiprouter.synth.study import make_study
from tests.report.inputs import DEMO_MODEL, hot_spot_heatmap
from tests.report.test_build import validate

FOUND = {"R": ("femoral_neck_fracture", 0.87), "L": ("tha", 0.93)}


def fracture_study() -> tuple[StudyResult, list, dict[str, tuple[float, float, bool]]]:
    """AP pelvis + frog-leg lateral of the left hip; right femoral neck fracture, left THA.

    The study result is what a screening model would say (the ground truth); heat maps are
    centred on each hip's position in each image. Returns the result, the datasets and the
    right hip's (x, y, right_on_image_left) in the AP pelvis.
    """
    study = make_study(7, hardware={"R": "no_hardware", "L": "tha"},
                       fracture={"R": "femoral_neck_fracture"},
                       views=["ap_pelvis", "frog_leg"], size=(384, 512))
    datasets = [image.dataset for image in study.images]
    heatmaps, sources, where = [], {"R": [], "L": []}, {}
    for image in study.images:
        ds = image.dataset
        uid = str(ds.SOPInstanceUID)
        heat = np.zeros((ds.Rows, ds.Columns), np.float32)
        for label in image.labels:
            x, y = float(label["hip_x"]), float(label["hip_y"])
            heat = np.maximum(heat, hot_spot_heatmap(ds.Rows, ds.Columns, int(y), int(x), 18))
            sources[str(label["laterality"])].append(uid)
            if image.view == "ap_pelvis" and label["laterality"] == "R":
                where["R"] = (x, y, bool(image.right_on_image_left))
        heatmaps.append(ImageHeatmap(uid, heat, decode(ds).display_uint8()))
    hips = [HipResult(side, key, p, {key: p}, sources[side]) for side, (key, p) in FOUND.items()]
    result = StudyResult(study.study_uid, "screening", DEMO_MODEL, hips, heatmaps)
    return result, datasets, where


def test_synthetic_fracture_study_is_high_and_valid(tmp_path: Path) -> None:
    result, datasets, where = fracture_study()
    bundle = build_outputs(result, datasets, PipelineConfig())
    assert bundle.priority == "HIGH"
    assert bundle.reason == "Femoral neck fracture, right hip (p=0.87)"
    assert bundle.kos.SeriesDescription == "AI TRIAGE: HIGH"
    assert bundle.text.sentences == ["Right hip: femoral neck fracture.",
                                     "Left hip: total hip arthroplasty."]
    validate(write_bundle(bundle, tmp_path))

    sr = hd.sr.Comprehensive3DSR.from_dataset(bundle.sr)
    found = {g.finding_sites[0].laterality.value: (g.finding_type.meaning,
                                                   g.get_measurements()[0].value)
             for g in sr.content.get_image_measurement_groups()}
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
