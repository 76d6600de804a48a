"""Out-of-distribution images: every kind is valid DICOM, deterministic, labelled."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hiprouter.cli import main
from hiprouter.synth.ood import OOD_FIELDS, OOD_KINDS, generate_ood_dataset, make_ood_image
from tests.conftest import require_tool


@pytest.mark.parametrize("kind", OOD_KINDS)
def test_kind_is_deterministic_and_passes_dciodvfy(kind: str, tmp_path: Path) -> None:
    a, b, c = make_ood_image(kind, 1), make_ood_image(kind, 1), make_ood_image(kind, 2)
    assert a.PixelData == b.PixelData and a.SOPInstanceUID == b.SOPInstanceUID
    assert a.SOPInstanceUID != c.SOPInstanceUID
    path = tmp_path / f"{kind}.dcm"
    a.save_as(path, enforce_file_format=True)
    out = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    errors = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]
    assert not errors, errors


def test_kinds_look_like_what_they_claim() -> None:
    rgb = make_ood_image("photo_rgb", 3)
    assert rgb.PhotometricInterpretation == "RGB" and rgb.SOPClassUID.endswith(".1.7")
    assert rgb.pixel_array.shape[-1] == 3 and rgb.pixel_array.std(axis=-1).mean() > 3
    mono = make_ood_image("photo_mono", 3)
    assert mono.PhotometricInterpretation == "MONOCHROME2" and mono.BitsStored == 8
    assert mono.Modality == "CR"
    blank = make_ood_image("blank", 3).pixel_array
    assert blank.min() == blank.max()
    noise = make_ood_image("noise", 3).pixel_array.astype(float)
    assert np.abs(np.diff(noise, axis=1)).mean() > 0.3 * noise.std()
    for kind in ("chest_pa", "child_pelvis", "knee_ap", "hand_pa", "shoulder_ap", "spine_lat",
                 "skull_lat"):
        ds = make_ood_image(kind, 3)
        img = ds.pixel_array.astype(float)
        assert ds.Modality in ("CR", "DX") and img.std() > 0.05 * (2 ** ds.BitsStored)
    for kind in ("spine_lat", "skull_lat"):  # laterals say so in their headers
        ds = make_ood_image(kind, 3)
        assert ds.ViewPosition == "LL" and list(ds.PatientOrientation) == ["A", "F"]


def test_dataset_and_labels(tmp_path: Path) -> None:
    labels = generate_ood_dataset(tmp_path, 1, 5)
    with labels.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == OOD_FIELDS
        rows = list(reader)
    assert [r["ood_kind"] for r in rows] == list(OOD_KINDS)
    for r in rows:
        assert (tmp_path / r["path"]).is_file()
        assert r["renderer"] == "ood" and r["hardware"] == "" and r["laterality"] == ""


def test_cli_synth_ood(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["synth-ood", str(tmp_path), "--per-kind", "1",
                                    "--seed", "4"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "labels.csv").is_file()
    assert len(list(tmp_path.glob("*/IM1.dcm"))) == len(OOD_KINDS)


def test_cli_synth_ood_some_kinds(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["synth-ood", str(tmp_path), "--per-kind", "2",
                                    "--kind", "skull_lat", "--kind", "shoulder_ap"])
    assert res.exit_code == 0, res.output
    with (tmp_path / "labels.csv").open(newline="") as fh:
        kinds = [r["ood_kind"] for r in csv.DictReader(fh)]
    assert kinds == ["skull_lat"] * 2 + ["shoulder_ap"] * 2
    # an image depends on kind, seed and number only, not on which other kinds were asked for
    import pydicom

    written = pydicom.dcmread(tmp_path / "skull_lat/IM2.dcm")
    assert written.PixelData == make_ood_image("skull_lat", 1).PixelData  # seed 0, image 2
    res = CliRunner().invoke(main, ["synth-ood", str(tmp_path / "x"), "--kind", "elbow"])
    assert res.exit_code != 0 and "unknown OOD kind(s) elbow" in res.output
