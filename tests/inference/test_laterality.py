"""Views and per-hip crops: midline split, Patient Orientation, words in several languages."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from hiprouter.inference.decode import decode
from hiprouter.inference.laterality import classify_view, hip_crops, not_hip_reason
from hiprouter.inference.preprocess import letterbox
from tests.inference.helpers import make_radiograph

IMG = np.zeros((40, 100), dtype=np.uint16)
IMG[:, :50] = 1000  # image left half brighter


def _crops(**tags: object):
    ds = make_radiograph(IMG, **tags)
    return hip_crops(ds, decode(ds).pixels)


def test_ap_pelvis_standard_orientation_puts_patient_right_on_image_left() -> None:
    crops = _crops(SeriesDescription="AP PELVIS")
    assert [(c.laterality, c.box) for c in crops] == [("R", (0, 0, 40, 50)),
                                                       ("L", (0, 50, 40, 100))]
    assert crops[0].pixels.mean() > crops[1].pixels.mean()


def test_ap_pelvis_flipped_by_patient_orientation() -> None:
    crops = _crops(StudyDescription="Becken a.p.", PatientOrientation=["R", "F"])
    assert [(c.laterality, c.box[1]) for c in crops] == [("L", 0), ("R", 50)]
    standard = _crops(BodyPartExamined="PELVIS", PatientOrientation=["L", "F"])
    assert [c.laterality for c in standard] == ["R", "L"]
    from_study = _crops(StudyDescription="XR PELVIS AND RIGHT HIP", SeriesDescription="AP")
    assert [(c.view, c.laterality) for c in from_study] == [("ap_pelvis", "R"),
                                                            ("ap_pelvis", "L")]


@pytest.mark.parametrize(
    ("tags", "view", "side"),
    [
        ({"SeriesDescription": "HIP AP", "ImageLaterality": "L"}, "ap_hip", "L"),
        ({"SeriesDescription": "HIP AP", "Laterality": "R"}, "ap_hip", "R"),
        ({"SeriesDescription": "Hüfte rechts a.p."}, "ap_hip", "R"),
        ({"ProtocolName": "HUEFTE LINKS LAUENSTEIN"}, "frog_leg", "L"),
        ({"StudyDescription": "HANCHE GAUCHE", "SeriesDescription": "profil"},
         "cross_table_lateral", "L"),
        ({"SeriesDescription": "Cadera derecha axial"}, "cross_table_lateral", "R"),
        ({"SeriesDescription": "FROG LEG LT HIP"}, "frog_leg", "L"),
        ({"SeriesDescription": "HIP", "ViewPosition": "LL"}, "cross_table_lateral", "U"),
        ({"SeriesDescription": "FROG LEG", "ViewPosition": "LL", "Laterality": "L"},
         "frog_leg", "L"),
        ({"StudyDescription": "XR PELVIS AND RIGHT HIP", "SeriesDescription": "AP RIGHT HIP"},
         "ap_hip", "R"),
        ({"SeriesDescription": "HIP AP"}, "ap_hip", "U"),
        ({"SeriesDescription": "HIP RIGHT AND LEFT"}, "ap_hip", "U"),
        ({"SeriesDescription": "HIP", "ImageLaterality": "B"}, "ap_hip", "U"),
        ({}, "unknown", "U"),
    ],
)
def test_single_hip_views_and_laterality(tags: dict, view: str, side: str) -> None:
    crops = _crops(**tags)
    assert len(crops) == 1
    assert (crops[0].view, crops[0].laterality) == (view, side)
    assert crops[0].box == (0, 0, 40, 100)


def test_image_laterality_wins_over_descriptions() -> None:
    ds = make_radiograph(IMG, SeriesDescription="HIP LEFT", ImageLaterality="R")
    assert classify_view(ds) == "ap_hip"
    assert hip_crops(ds, decode(ds).pixels)[0].laterality == "R"


def test_non_hip_body_part_has_a_reason() -> None:
    assert "CHEST" in not_hip_reason(make_radiograph(IMG, BodyPartExamined="CHEST"))
    assert not_hip_reason(make_radiograph(IMG, BodyPartExamined="HIP")) is None


def test_real_cr_hip_through_preprocessing_and_split(shared_data) -> None:
    ds = pydicom.dcmread(shared_data / "hip-real" / "wg04" / "RG2_UNC_hip_CR.dcm")
    crops = hip_crops(ds, decode(ds).pixels)
    assert len(crops) == 1  # "HIP JOINT", no laterality tags: one hip, unknown side
    assert crops[0].view == "ap_hip" and crops[0].laterality == "U"
    boxed, lb = letterbox(crops[0].pixels, 380)
    assert boxed.shape == (380, 380) and lb.height == 380 and lb.width == round(1760 * 380 / 2140)
    # Treated as an AP pelvis, the same image splits at the midline.
    ds.SeriesDescription = "AP PELVIS"
    halves = hip_crops(ds, decode(ds).pixels)
    assert [c.box for c in halves] == [(0, 0, 2140, 880), (0, 880, 2140, 1760)]
