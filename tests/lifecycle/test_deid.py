"""De-identification: no identifier survives in the headers of the exported set; UIDs and
patient keys are keyed pseudonyms, consistent across files and runs; burned-in
annotation is blanked or the image left out, per configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from hiprouter.config import DeidConfig, Settings
from hiprouter.lifecycle.deid import DeidError, Pseudonyms, deidentify, load_key
from tests.lifecycle.phi import PHI, all_text, leaked, phi_study, with_phi


def _key() -> Pseudonyms:
    return Pseudonyms(bytes(range(32)))


def test_no_identifier_survives_and_uids_are_consistent(tmp_path: Path) -> None:
    datasets = phi_study(5, 0, {"R": "tha", "L": "no_hardware"},
                         views=("ap_pelvis", "ap_hip", "frog_leg"))
    originals = [(str(d.StudyInstanceUID), str(d.SeriesInstanceUID), str(d.SOPInstanceUID))
                 for d in datasets]
    date = str(datasets[0].StudyDate)
    out = []
    for ds in datasets:
        result = deidentify(ds, _key(), DeidConfig())
        assert result.excluded is None, result.excluded
        path = tmp_path / f"{len(out)}.dcm"
        result.dataset.save_as(path, enforce_file_format=True)
        out.append(dcmread(path))
    for ds in out:
        text = all_text(ds)
        assert leaked(text) == [], leaked(text)
        assert ds.PatientIdentityRemoved == "YES"
        assert str(ds.get("PatientBirthDate", "")) == ""
        assert str(ds.get("AccessionNumber", "")) == ""
        assert "113100" in {c.CodeValue for c in ds.DeidentificationMethodCodeSequence}
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    # one patient key, one study UID, new UIDs everywhere, the standard's UIDs kept
    assert len({str(d.PatientID) for d in out}) == 1 and str(out[0].PatientID).startswith("HIP")
    assert len({str(d.StudyInstanceUID) for d in out}) == 1
    for (study, series, sop), ds in zip(originals, out, strict=True):
        assert str(ds.StudyInstanceUID) not in (study, series, sop)
        assert str(ds.SOPInstanceUID) != sop and str(ds.SeriesInstanceUID) != series
        assert str(ds.SOPInstanceUID).startswith("2.25.")
    assert str(out[0].SOPClassUID).startswith("1.2.840.10008.")
    # retain longitudinal temporal information, modified: every date moved by the same days
    shifted = {str(d.StudyDate) for d in out}
    assert len(shifted) == 1 and shifted != {date}
    # clean descriptors: view words survive, the name in the description does not
    assert "PELVIS" in str(out[0].StudyDescription).upper()
    # the same input and key give the same pseudonyms (resumable pulls)
    again = deidentify(phi_study(5, 0, {"R": "tha", "L": "no_hardware"},
                                 views=("ap_pelvis",))[0], _key(), DeidConfig()).dataset
    assert str(again.StudyInstanceUID) == str(out[0].StudyInstanceUID)
    assert str(again.PatientID) == str(out[0].PatientID)
    other = deidentify(phi_study(5, 0, {"R": "tha", "L": "no_hardware"})[0],
                       Pseudonyms(bytes(32)), DeidConfig()).dataset
    assert str(other.PatientID) != str(out[0].PatientID)


def test_private_tags_and_nested_identifiers_go(tmp_path: Path) -> None:
    ds = phi_study(6, 0, {"R": "no_hardware", "L": "no_hardware"})[0]
    block = ds.private_block(0x0029, "SITE PACS", create=True)
    block.add_new(0x10, "LO", PHI["PatientName"])
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    req = Dataset()
    req.AccessionNumber = PHI["AccessionNumber"]
    req.RequestedProcedureID = "RQ-" + PHI["PatientID"]
    ds.RequestAttributesSequence = Sequence([req])
    ds.ImageComments = "patient " + PHI["PatientName"].replace("^", " ")
    result = deidentify(ds, _key(), DeidConfig())
    assert result.dataset is not None, result.excluded
    assert leaked(all_text(result.dataset)) == []


def test_burned_in_annotation_blanked_or_excluded() -> None:
    ds = phi_study(7, 0, {"R": "no_hardware", "L": "no_hardware"})[0]
    ds.BurnedInAnnotation = "YES"
    before = ds.pixel_array.copy()
    cfg = DeidConfig(corner_fraction=0.2)
    result = deidentify(ds, _key(), cfg)
    assert result.dataset is not None and "pixels" in result.actions
    after = result.dataset.pixel_array
    rows, cols = after.shape
    h, w = int(rows * 0.2), int(cols * 0.2)
    black = after.max() if result.dataset.PhotometricInterpretation == "MONOCHROME1" \
        else after.min()
    for corner in (after[:h, :w], after[:h, -w:], after[-h:, :w], after[-h:, -w:]):
        assert np.all(corner == black)
    centre = (slice(rows // 3, 2 * rows // 3), slice(cols // 3, 2 * cols // 3))
    assert np.array_equal(after[centre], before[centre])
    assert "113101" in {c.CodeValue for c in result.dataset.DeidentificationMethodCodeSequence}

    flagged = with_phi(phi_study(7, 1, {"R": "tha", "L": "tha"})[0])
    flagged.BurnedInAnnotation = "YES"
    out = deidentify(flagged, _key(), DeidConfig(burned_in="exclude"))
    assert out.dataset is None and "burned-in" in (out.excluded or "")
    clean = phi_study(7, 2, {"R": "tha", "L": "tha"})[0]
    clean.BurnedInAnnotation = "NO"
    kept = deidentify(clean, _key(), DeidConfig(burned_in="exclude"))
    assert kept.dataset is not None and "pixels" not in kept.actions


def test_key_file_is_created_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "k"
    key = load_key(path)
    assert len(key) == 32 and (path.stat().st_mode & 0o777) == 0o600
    assert load_key(path) == key
    path.write_text("not a key")
    with pytest.raises(DeidError):
        load_key(path)


def test_key_inside_the_data_set_is_refused(tmp_path: Path) -> None:
    from hiprouter.pull import PullError, PullSpec, pull

    settings = Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
        "dataset": {"deid": {"key_file": str(tmp_path / "out" / "key")}}})
    with pytest.raises(PullError, match="outside"):
        pull(settings, PullSpec(out_dir=tmp_path / "out", kinds=["hardware"],
                                folder=tmp_path), progress=False)
