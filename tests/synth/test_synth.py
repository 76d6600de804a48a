"""Synthetic radiograph generator: determinism, labels, DICOM validity, image content."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage

from hiprouter.cli import main
from hiprouter.commands.synth import TASKS as CLI_TASKS
from hiprouter.pipelines.hardware import HARDWARE as HARDWARE_CLASSES
from hiprouter.synth.labels import TASK_CLASSES, TASK_COLUMN, TASKS
from hiprouter.synth.preview import _LAYOUT, example_sheet
from hiprouter.synth.study import (
    LABEL_FIELDS,
    generate_dataset,
    make_study,
    sample_hips,
)
from tests.validation import assert_valid

SMALL = (320, 420)
KEYS = [c.key for c in HARDWARE_CLASSES]


def _stored(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.int64)


def test_same_seed_same_study_other_seed_differs() -> None:
    a = make_study(11, 3, size=SMALL)
    b = make_study(11, 3, size=SMALL)
    c = make_study(12, 3, size=SMALL)
    assert [i.dataset.SOPInstanceUID for i in a.images] == [
        i.dataset.SOPInstanceUID for i in b.images]
    assert all(x.dataset.PixelData == y.dataset.PixelData for x, y in zip(a.images, b.images,
                                                                          strict=True))
    assert a.study_uid != c.study_uid
    assert a.images[0].dataset.PixelData != c.images[0].dataset.PixelData
    # labels and head masks too, for every task
    for task in TASKS[1:]:
        x = make_study(13, 1, task=task, size=(160, 200))
        y = make_study(13, 1, task=task, size=(160, 200))
        assert x.hips == y.hips and x.age == y.age
        for p, q in zip(x.images, y.images, strict=True):
            assert p.labels == q.labels and p.dataset.PixelData == q.dataset.PixelData
            assert p.head_masks.keys() == q.head_masks.keys()
            assert all(np.array_equal(p.head_masks[k], q.head_masks[k]) for k in p.head_masks)


def test_sampling_covers_all_classes_and_bilateral_combinations() -> None:
    counts: Counter[str] = Counter()
    bilateral = 0
    for i in range(600):
        hips, index = sample_hips(np.random.default_rng([5, i]))
        counts.update(h.hardware for h in hips.values())
        bilateral += all(h.hardware != "no_hardware" for h in hips.values())
        assert hips[index].hardware in KEYS
    assert set(counts) == set(KEYS)
    assert min(counts.values()) >= 600 * 2 / 9 * 0.4
    assert bilateral > 50
    only = Counter(h.hardware for i in range(100)
                   for h in sample_hips(np.random.default_rng(i), {"tha": 1, "im_nail": 1})[0]
                   .values())
    assert set(only) == {"tha", "im_nail"}


def test_dataset_labels_match_files(tmp_path: Path) -> None:
    labels = generate_dataset(tmp_path, 4, 21, progress=False, size=SMALL)
    with labels.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == LABEL_FIELDS
        rows = list(reader)
    by_path: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_path.setdefault(r["path"], []).append(r)
    assert len(by_path) >= 4
    for rel, hips in by_path.items():
        ds = pydicom.dcmread(tmp_path / rel)
        for r in hips:
            assert r["sop_instance_uid"] == ds.SOPInstanceUID
            assert r["series_uid"] == ds.SeriesInstanceUID
            assert r["study_uid"] == ds.StudyInstanceUID
            assert r["patient_id"] == ds.PatientID
            assert r["photometric"] == ds.PhotometricInterpretation
            assert int(r["bits_stored"]) == ds.BitsStored
            assert r["modality"] == ds.Modality
            assert (int(r["rows"]), int(r["columns"])) == (ds.Rows, ds.Columns)
        assert str(ds.PatientName).startswith("SYNTH^")
        assert ds.PatientID.startswith("SYN")
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.pixel_array.max() < 2**ds.BitsStored
        if "WindowCenter" in ds:  # the window lies on the modality values
            slope = float(ds.get("RescaleSlope", 1))
            values = ds.pixel_array * slope + float(ds.get("RescaleIntercept", 0))
            assert values.min() <= float(ds.WindowCenter) <= values.max()
        sides = sorted(r["laterality"] for r in hips)
        if hips[0]["view"] == "ap_pelvis":
            assert sides == ["L", "R"]
        else:
            assert len(sides) == 1
    # one patient per study folder, same hardware per hip across its views
    for folder in {p.split("/")[0] for p in by_path}:
        per_hip: dict[str, set[str]] = {}
        for r in rows:
            if r["path"].startswith(folder + "/"):
                per_hip.setdefault(r["laterality"], set()).add(r["hardware"])
        assert all(len(v) == 1 for v in per_hip.values())


def test_dicom_objects_pass_dciodvfy(tmp_path: Path) -> None:
    if shutil.which("dciodvfy") is None or shutil.which("dcmdump") is None:
        pytest.skip("dciodvfy/dcmdump not installed (scripts/test.sh installs them)")
    paths, seen = [], set()
    for i, (modality, photometric) in enumerate(
            [("CR", "MONOCHROME1"), ("DX", "MONOCHROME2"), ("DX", "MONOCHROME1"),
             ("CR", "MONOCHROME2")] * 3):
        study = make_study(31, i, modality=modality, photometric=photometric, size=SMALL,
                           task=TASKS[i % len(TASKS)],
                           views=("ap_pelvis", "ap_hip", "cross_table_lateral")[: 1 + i % 3])
        for n, img in enumerate(study.images):
            p = tmp_path / f"{i}_{n}.dcm"
            img.dataset.save_as(p, enforce_file_format=True)
            paths.append(str(p))
            seen.add(("burned", img.dataset.BurnedInAnnotation))
            seen.add(("lossy", img.dataset.LossyImageCompression))
    # burned-in annotations and a lossy step are flagged in the headers, and valid
    assert {("burned", "YES"), ("burned", "NO"), ("lossy", "01"), ("lossy", "00")} <= seen
    assert_valid([Path(p) for p in paths])  # the project's own validator, no ../shared


def test_monochrome1_is_the_inverse_of_monochrome2() -> None:
    m1 = make_study(8, 2, photometric="MONOCHROME1", size=SMALL)
    m2 = make_study(8, 2, photometric="MONOCHROME2", size=SMALL)
    for a, b in zip(m1.images, m2.images, strict=True):
        assert a.dataset.PhotometricInterpretation == "MONOCHROME1"
        assert b.dataset.PhotometricInterpretation == "MONOCHROME2"
        maxval = 2 ** a.dataset.BitsStored - 1
        assert np.array_equal(_stored(a.dataset), maxval - _stored(b.dataset))
        # dense (implant or bone) is bright in MONOCHROME2 display: stored high in M2, low in M1
        dense = a.display > 0.9
        if dense.any():
            assert _stored(b.dataset)[dense].mean() > _stored(a.dataset)[dense].mean()


def test_ap_marker_and_hips_are_on_the_correct_side() -> None:
    seen = Counter()
    for i in range(8):
        study = make_study(40, i, views=("ap_pelvis",), size=SMALL)
        img = study.images[0]
        assert img.right_on_image_left is True
        right, left = (next(r for r in img.labels if r["laterality"] == s) for s in "RL")
        assert float(right["hip_x"]) < img.dataset.Columns / 2 < float(left["hip_x"])
        assert img.dataset.PatientOrientation == ["L", "F"]
        if not img.marker:
            continue
        x0, y0, x1, y1 = img.marker_box
        centre = (x0 + x1) / 2
        if img.marker == "R":
            assert centre < img.dataset.Columns / 2
        else:
            assert centre > img.dataset.Columns / 2
        # lead marker: its brightest pixels are well above the image's median (metal may keep
        # some grey levels; a low-resolution or lossy step blurs it)
        assert np.percentile(img.display[y0:y1, x0:x1], 99) > np.median(img.display) + 0.1
        seen[img.marker] += 1
    assert seen["R"] + seen["L"] >= 4


@pytest.mark.parametrize("hardware", KEYS)
def test_hardware_is_radiodense_where_drawn(hardware: str) -> None:
    study = make_study(50, KEYS.index(hardware), views=("ap_pelvis",),
                       hardware={"R": hardware, "L": "no_hardware"}, size=SMALL, plain=True)
    img = study.images[0]
    assert [r["hardware"] for r in img.labels] == [hardware, "no_hardware"]
    mask = img.implant_mask()
    if hardware == "no_hardware":
        assert not mask.any()
        return
    assert mask.sum() > 50
    ring = ndimage.binary_dilation(mask, iterations=6) & ~ndimage.binary_dilation(mask,
                                                                                   iterations=2)
    assert img.display[mask].mean() > img.display[ring].mean() + 0.1
    # implants are on the right hip: the image left half
    cols = np.nonzero(mask.any(axis=0))[0]
    assert np.median(cols) < img.display.shape[1] / 2


def test_bad_requests_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown hardware"):
        make_study(1, hardware={"R": "screwdriver"})
    with pytest.raises(ValueError, match="native femoral neck"):
        make_study(1, hardware={"R": "tha"}, fracture={"R": "femoral_neck_fracture"})
    with pytest.raises(ValueError, match="only generated for 'tha'"):
        make_study(1, hardware={"R": "im_nail"}, dislocation={"R": True})
    with pytest.raises(ValueError, match="onfh_grade needs a native hip"):
        make_study(1, hardware={"R": "tha"}, onfh_grade={"R": 3})
    with pytest.raises(ValueError, match="only for THA hips"):
        make_study(1, hardware={"R": "hemiarthroplasty"}, failure={"R": "wear"})
    with pytest.raises(ValueError, match="is a dynamic_hip_screw device, not im_nail"):
        make_study(1, hardware={"R": "im_nail"}, device={"R": "sliding_hip_screw"})
    with pytest.raises(ValueError, match="fracture_displaced without a fracture"):
        make_study(1, hardware={"R": "no_hardware"}, fracture={"R": "none"},
                   displaced={"R": True})
    with pytest.raises(ValueError, match="reduced"):
        make_study(1, hardware={"R": "cannulated_screws"}, fracture={"R": "femoral_neck_fracture"},
                   displaced={"R": True})
    with pytest.raises(ValueError, match="0-4"):
        make_study(1, oa_grade={"L": 5})
    with pytest.raises(ValueError, match="unknown task"):
        make_study(1, task="fracture")
    with pytest.raises(ValueError, match="unknown failure classes"):
        make_study(1, task="failure", class_weights={"loose": 1.0})
    with pytest.raises(ValueError, match="unknown views"):
        make_study(1, views=("pa_chest",))
    with pytest.raises(ValueError, match="class_weights"):
        sample_hips(np.random.default_rng(0), {"tha": 0.0})


def test_cli_writes_studies_and_prints_counts(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["synth", str(tmp_path / "out"), "--studies", "2", "--seed", "3",
                               "--size", "256", "320", "--quiet", "--views", "ap_pelvis"])
    assert res.exit_code == 0, res.output
    assert "dynamic_hip_screw" in res.output
    rows = list(csv.DictReader((tmp_path / "out" / "labels.csv").open()))
    assert len(rows) == 4 and {r["view"] for r in rows} == {"ap_pelvis"}
    bad = runner.invoke(main, ["synth", str(tmp_path / "x"), "--classes", "tha,foo"])
    assert bad.exit_code == 2 and "foo" in bad.output


@pytest.mark.parametrize("task", TASKS)
def test_cli_runs_each_task(tmp_path: Path, task: str) -> None:
    runner = CliRunner()
    out = tmp_path / task
    res = runner.invoke(main, ["synth", str(out), "--studies", "2", "--seed", "5", "--task", task,
                               "--size", "160", "200", "--quiet"])
    assert res.exit_code == 0, res.output
    assert TASK_COLUMN[task] in res.output  # the table counts the task's label column
    assert all(c in res.output for c in TASK_CLASSES[task])
    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert rows and all(r["renderer"] == "primary" for r in rows)
    bad = runner.invoke(main, ["synth", str(tmp_path / "x"), "--task", task, "--classes", "foo"])
    assert bad.exit_code == 2 and "foo" in bad.output


def test_cli_preview_and_class_choice(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, [
        "synth", str(tmp_path / "out"), "--studies", "3", "--task", "onfh", "--classes", "3,4",
        "--views", "ap_hip", "--size", "160", "200", "--quiet", "--preview",
        str(tmp_path / "sheet.png")])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "out" / "labels.csv").open()))
    assert {r["onfh_grade"] for r in rows} <= {"3", "4"}
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.mode == "L" and sheet.width > 1000


@pytest.mark.parametrize("task", TASKS)
def test_preview_sheets_have_one_tile_per_class(task: str) -> None:
    sheet = example_sheet(task, seed=1, tile=90)
    columns, fw, fh = _LAYOUT[task]
    rows = -(-len(TASK_CLASSES[task]) // columns)
    assert sheet.size == (columns * int(90 * fw), rows * (int(90 * fh) + 90 // 12))
    assert np.asarray(sheet).std() > 10


def test_cli_knows_the_tasks() -> None:
    assert CLI_TASKS == TASKS


@pytest.mark.parametrize("fracture", ["femoral_neck_fracture", "intertrochanteric_fracture"])
def test_fracture_is_drawn_at_the_labelled_hip(fracture: str) -> None:
    kwargs = dict(views=("ap_pelvis",), hardware={"R": "no_hardware", "L": "no_hardware"},
                  photometric="MONOCHROME2", size=SMALL)
    intact = make_study(60, 1, fracture={"R": "none", "L": "none"}, **kwargs).images[0]
    broken = make_study(60, 1, fracture={"R": "none", "L": fracture}, displaced={"L": True},
                        **kwargs).images[0]
    assert [r["fracture"] for r in broken.labels] == ["none", fracture]
    diff = np.abs(broken.display - intact.display)
    rows, cols = np.nonzero(diff > 0.15)
    assert rows.size > 20
    left = next(r for r in broken.labels if r["laterality"] == "L")
    # the changed pixels are on the left femur (image right), starting near its head
    assert (cols > broken.display.shape[1] / 2).mean() > 0.9
    dist = np.hypot(cols - float(left["hip_x"]), rows - float(left["hip_y"]))
    assert dist.min() < 0.2 * broken.display.shape[1]  # within ~80 mm of the head centre


def test_tha_dislocation_moves_the_head_out_of_the_cup() -> None:
    kwargs = dict(views=("ap_hip",), side="R", hardware={"R": "tha", "L": "no_hardware"},
                  photometric="MONOCHROME2", size=SMALL)
    seated = make_study(61, 0, dislocation={"R": False}, **kwargs).images[0]
    out = make_study(61, 0, dislocation={"R": True}, **kwargs).images[0]
    assert [r["dislocation"] for r in out.labels] == [1]
    assert [r["dislocation"] for r in seated.labels] == [0]
    moved = float(np.hypot(float(out.labels[0]["hip_x"]) - float(seated.labels[0]["hip_x"]),
                           float(out.labels[0]["hip_y"]) - float(seated.labels[0]["hip_y"])))
    assert moved > 0.04 * seated.display.shape[0]
    assert (out.implant_mask() != seated.implant_mask()).sum() > 100


def test_lateral_views_have_lateral_headers() -> None:
    orientations = set()
    for i in range(6):
        study = make_study(62, i, views=("frog_leg", "cross_table_lateral"), side="L",
                           modality="DX", size=SMALL)
        frog, xtl = (img.dataset for img in study.images)
        assert frog.ViewPosition == "AP" and frog.PatientOrientation == ["L", "F"]
        assert xtl.ViewPosition == "LL"
        # laterality in the header, or (like some sites) only in the description
        assert xtl.ImageLaterality == "L" or (
            xtl.ImageLaterality == "U"
            and any(w in xtl.SeriesDescription for w in ("LEFT", "LINKS", "GAUCHE")))
        assert xtl.ViewCodeSequence[0].CodeMeaning == "left lateral"
        orientations.add(tuple(xtl.PatientOrientation))
        assert all(r["laterality"] == "L" and len(img.labels) == 1
                   for img in study.images for r in img.labels)
    assert orientations == {("F", "P"), ("H", "P")}


def test_parallel_generation_writes_the_same_files(tmp_path: Path) -> None:
    one = generate_dataset(tmp_path / "one", 3, 77, progress=False, size=(200, 260))
    two = generate_dataset(tmp_path / "two", 3, 77, progress=False, size=(200, 260), workers=2)
    assert one.read_text() == two.read_text()
    for f in sorted((tmp_path / "one").glob("S*/*.dcm")):
        assert f.read_bytes() == (tmp_path / "two" / f.relative_to(tmp_path / "one")).read_bytes()
    with pytest.raises(ValueError, match="workers"):
        generate_dataset(tmp_path / "x", 1, 1, workers=0)
