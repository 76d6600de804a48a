"""The alt synthetic renderer: determinism, labels, masks, DICOM validity, findings, CLI."""

from __future__ import annotations

import csv
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from PIL import Image

from hiprouter.cli import main
from hiprouter.synth.alt import physics
from hiprouter.synth.alt.compose import build_patient, project
from hiprouter.synth.alt.sample import TASKS, sample_truth, screening_class
from hiprouter.synth.alt.study import LABEL_FIELDS, generate_alt_dataset, make_alt_study
from hiprouter.synth.alt.truth import (
    ARTHROPLASTY,
    DEVICES,
    FIXATION,
    HARDWARE,
    THA,
    VIEWS,
    HipTruth,
    PatientTruth,
)
from hiprouter.synth.alt.views import plan_view
from tests.conftest import require_tool

SMALL = (256, 320)


def _hip(**fields: object) -> HipTruth:
    hw = str(fields.get("hardware", "no_hardware"))
    if hw in THA:
        fields.setdefault("failure", "none")
    if hw in FIXATION and "device" not in fields:
        fields["device"] = next(d for d, h in DEVICES.items() if h == hw)
    fields["dislocation"] = int(fields.get("failure") == "dislocation")
    fields["screening"] = screening_class(hw, str(fields.get("fracture", "none")),
                                          int(fields.get("onfh_grade", 0)),
                                          int(fields.get("ddh", 0)),
                                          int(fields.get("oa_grade", 0)))
    return HipTruth(**fields)


def _patient(right: HipTruth, age: float = 70.0) -> PatientTruth:
    return PatientTruth(age, "F", {"R": right, "L": HipTruth()}, "R")


def test_same_seed_same_study_other_seed_differs() -> None:
    a = make_alt_study(4, 2, size=SMALL)
    b = make_alt_study(4, 2, size=SMALL)
    c = make_alt_study(5, 2, size=SMALL)
    assert [i.dataset.SOPInstanceUID for i in a.images] == [
        i.dataset.SOPInstanceUID for i in b.images]
    assert all(x.dataset.PixelData == y.dataset.PixelData
               for x, y in zip(a.images, b.images, strict=True))
    assert a.study_uid != c.study_uid
    assert a.images[0].dataset.PixelData != c.images[0].dataset.PixelData


def test_sampler_is_consistent_and_covers_the_schema() -> None:
    hips = [h for i in range(400) for h in sample_truth(np.random.default_rng(i)).hips.values()]
    assert set(Counter(h.hardware for h in hips)) == set(HARDWARE)
    assert {h.fracture for h in hips} == {"none", "femoral_neck_fracture",
                                          "intertrochanteric_fracture"}
    assert {h.oa_grade for h in hips} == set(range(5))
    assert {h.onfh_grade for h in hips} == set(range(5))
    assert any(h.ddh for h in hips)
    for task in TASKS:
        t = sample_truth(np.random.default_rng([9, TASKS.index(task)]), task)
        index = t.hips[t.index_side]
        assert task != "failure" or index.hardware in THA
        assert task != "device" or index.device in DEVICES
        assert task != "onfh" or index.hardware == "no_hardware"


def test_labels_csv_columns_files_and_consistency(tmp_path: Path) -> None:
    labels = generate_alt_dataset(tmp_path, 5, 11, size=SMALL, progress=False)
    with labels.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == LABEL_FIELDS
        rows = list(reader)
    assert rows
    for r in rows:
        ds = pydicom.dcmread(tmp_path / r["path"])
        assert r["renderer"] == "alt" and r["view"] in VIEWS
        assert ds.SOPInstanceUID == r["sop_instance_uid"]
        assert ds.PhotometricInterpretation == r["photometric"]
        assert int(ds.BitsStored) == int(r["bits_stored"]) and ds.Modality == r["modality"]
        assert (ds.Rows, ds.Columns) == (int(r["rows"]), int(r["columns"]))
        assert r["screening"] == screening_class(r["hardware"], r["fracture"],
                                                 int(r["onfh_grade"]), int(r["ddh"]),
                                                 int(r["oa_grade"]))
        assert (r["failure"] != "") == (r["hardware"] in THA)
        assert int(r["dislocation"]) == (r["failure"] == "dislocation")
        assert (r["device"] != "") == (r["hardware"] in FIXATION)
        assert not r["device"] or DEVICES[r["device"]] == r["hardware"]
        assert r["marker"] in ("R", "L") and len(r["marker_box"].split()) == 4
        if r["head_mask"]:
            assert r["hardware"] not in ARTHROPLASTY
            mask = np.asarray(Image.open(tmp_path / r["head_mask"]))
            assert mask.shape == (ds.Rows, ds.Columns)
            assert set(np.unique(mask)) <= {0, 255} and mask.max() == 255
        elif r["hardware"] not in ARTHROPLASTY and r["view"] == "ap_pelvis":
            pytest.fail(f"native head without a mask: {r}")
    assert any(r["view"] == "ap_pelvis" for r in rows)


@pytest.mark.parametrize("view", ["ap_hip", "frog_leg", "cross_table_lateral"])
def test_head_mask_sits_on_the_hip_centre(view: str) -> None:
    study = make_alt_study(2, 0, views=(view,), size=(300, 300), truth=_patient(_hip()))
    img = study.images[0]
    row = img.labels[0]
    mask = img.masks["R"]
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - row["hip_x"]) < 6 and abs(ys.mean() - row["hip_y"]) < 6
    pixel = float(img.dataset.ImagerPixelSpacing[0])
    radius = np.sqrt(mask.sum() / np.pi) * pixel
    assert 19 < radius < 36  # a femoral head, magnified


def test_one_study_of_each_view_passes_dciodvfy(tmp_path: Path) -> None:
    tool = require_tool("dciodvfy")
    for k, view in enumerate(VIEWS):
        for img in make_alt_study(21, k, views=(view,), size=SMALL).images:
            path = tmp_path / f"{view}.dcm"
            img.dataset.save_as(path, enforce_file_format=True)
            out = subprocess.run([tool, str(path)], capture_output=True, text=True)
            errors = [ln for ln in (out.stdout + out.stderr).splitlines()
                      if ln.startswith("Error")]
            assert not errors, (view, errors)


def test_header_variations_across_studies() -> None:
    seen: Counter[str] = Counter()
    for i in range(16):
        ds = make_alt_study(31, i, views=("ap_pelvis",), size=(96, 128)).images[0].dataset
        seen[ds.PhotometricInterpretation] += 1
        seen[f"bits{ds.BitsStored}"] += 1
        seen[ds.Modality] += 1
        seen["lut" if "VOILUTSequence" in ds else "window" if "WindowCenter" in ds
             else "no_voi"] += 1
    assert seen["MONOCHROME1"] and seen["MONOCHROME2"] and seen["CR"] and seen["DX"]
    assert len([k for k in seen if k.startswith("bits")]) >= 2
    assert seen["window"] and seen["lut"]


def _primary(truth: PatientTruth) -> tuple[np.ndarray, tuple[float, ...]]:
    """Noise-free log detector signal of an AP pelvis, and the right hip's position."""
    patient = build_patient(truth, np.random.default_rng(77))
    rng = np.random.default_rng(78)
    geom = plan_view(rng, patient.body, "ap_pelvis", None, 240)
    proj = project(patient, geom, geom.camera.shape, rng)
    exp = physics.Exposure(75, 20, 3.0, 0.0, "dr", True, 1e7, 0.1, 0.0)
    signal = physics.primary(physics.displace(proj.layers.maps), exp)
    col, row = geom.camera.project(proj.head_centres["R"])
    return np.log(signal), (col, row, geom.camera.pixel_mm)


FINDINGS = [
    *({"hardware": h} for h in HARDWARE if h != "no_hardware"),
    {"fracture": "femoral_neck_fracture"},
    {"fracture": "femoral_neck_fracture", "fracture_displaced": 1},
    {"fracture": "intertrochanteric_fracture", "fracture_displaced": 1},
    {"oa_grade": 3}, {"oa_grade": 4}, {"onfh_grade": 2}, {"onfh_grade": 4}, {"ddh": 1},
    *({"hardware": h, "device": d} for d, h in DEVICES.items()),
]


@pytest.mark.parametrize("fields", FINDINGS,
                         ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_each_finding_changes_pixels_at_the_hip(fields: dict[str, object]) -> None:
    base, (col, row, pixel) = _primary(_patient(_hip()))
    img, _ = _primary(_patient(_hip(**fields)))
    subtle = "onfh_grade" in fields or "oa_grade" in fields
    _assert_local(np.abs(img - base), col, row, pixel, 0.1 if subtle else 0.3)


def _assert_local(diff: np.ndarray, col: float, row: float, pixel: float, least: float
                  ) -> None:
    """A clear change, all of it on the right hip's half and most of it near that hip."""
    assert diff.max() > least
    yy, xx = np.mgrid[0:diff.shape[0], 0:diff.shape[1]]
    near = np.hypot((xx - col) * pixel, (yy - row) * pixel) < 200
    assert diff[:, :diff.shape[1] // 2].sum() > 0.97 * diff.sum()
    assert diff[near].sum() > 0.85 * diff.sum()


@pytest.mark.parametrize("failure", ["infection", "loosening", "dislocation",
                                     "periprosthetic_fracture", "wear"])
def test_each_tha_failure_changes_pixels(failure: str) -> None:
    base, (col, row, pixel) = _primary(_patient(_hip(hardware="tha")))
    img, _ = _primary(_patient(_hip(hardware="tha", failure=failure)))
    _assert_local(np.abs(img - base), col, row, pixel, 0.2)


def test_onfh_changes_the_head_only() -> None:
    truth = _patient(_hip())
    base, (col, row, pixel) = _primary(truth)
    img, _ = _primary(_patient(_hip(onfh_grade=3)))
    diff = np.abs(img - base)
    yy, xx = np.mgrid[0:diff.shape[0], 0:diff.shape[1]]
    head = np.hypot((xx - col) * pixel, (yy - row) * pixel) < 35
    assert diff[head].sum() > 0.95 * diff.sum() > 0


def test_cli_writes_alt_dataset_and_keeps_the_primary_options(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["synth", str(tmp_path / "alt"), "--renderer", "alt",
                               "--studies", "2", "--size", "128", "160", "--quiet",
                               "--task", "hardware"])
    assert res.exit_code == 0, res.output
    with (tmp_path / "alt" / "labels.csv").open(newline="") as fh:
        assert {r["renderer"] for r in csv.DictReader(fh)} == {"alt"}
    res = runner.invoke(main, ["synth", str(tmp_path / "p"), "--task", "mixed"])
    assert res.exit_code != 0 and "--renderer alt" in res.output
    res = runner.invoke(main, ["synth", str(tmp_path / "a2"), "--renderer", "alt",
                               "--classes", "tha"])
    assert res.exit_code != 0
