"""`hiprouter dataset pull --from-folder`: a folder of DICOM files (images and report SRs)
becomes a de-identified, labelled data set; resumable; re-labelled after a rules edit."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml
from click.testing import CliRunner
from pydicom import dcmread

from hiprouter.cli import main
from tests.lifecycle.phi import all_text, leaked, phi_study, text_sr


def test_folder_pull_labels_and_relabel(tmp_path: Path) -> None:
    src = tmp_path / "export"
    src.mkdir()
    reports = {0: "Rechts Hüft-TEP. Links native Hüfte. Kein Hinweis auf Fraktur.",
               1: "Left femoral neck fracture. No orthopaedic hardware."}
    for i, text in reports.items():
        images = phi_study(60 + i, i, {"R": "tha", "L": "no_hardware"} if i == 0 else
                           {"R": "no_hardware", "L": "no_hardware"})
        for n, ds in enumerate(images):
            ds.BodyPartExamined = "PELVIS"
            ds.save_as(src / f"p{i}_{n}.dcm", enforce_file_format=True)
        text_sr(images[0], text).save_as(src / f"p{i}_report.dcm", enforce_file_format=True)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "database": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
        "dataset": {"deid": {"key_file": str(tmp_path / "key")}, "sample_size": 2},
        "rules": [{"name": "hips", "match": {"tag": "BodyPartExamined", "equals": "PELVIS"}}],
        "logging": {"json_logs": True}}))
    out = tmp_path / "set"
    runner = CliRunner()
    args = ["--config", str(config), "dataset", "pull", str(out), "--from-folder", str(src),
            "--kind", "hardware", "--kind", "fracture", "--match-rule", "hips", "--quiet"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2 studies" in result.output
    for i in reports:
        assert leaked(result.output, i) == []
    for path in (out / "images").rglob("*.dcm"):
        for i in reports:
            assert leaked(all_text(dcmread(path)), i) == []
    fracture = sorted((r["laterality"], r["fracture"])
                      for r in csv.DictReader((out / "labels-fracture.csv").open()))
    # study 0: no fracture either side; study 1: left fracture, right not stated
    assert fracture == [("L", "femoral_neck_fracture"), ("L", "no_fracture"),
                        ("R", "no_fracture")]
    hardware = sorted(r["hardware"] for r in csv.DictReader((out / "labels.csv").open()))
    assert hardware == ["no_hardware", "no_hardware", "no_hardware", "tha"]
    assert (out / "private" / "review.html").is_file()
    # resumed: nothing exported twice
    again = runner.invoke(main, args)
    assert again.exit_code == 0 and "0 images exported" in again.output
    # the site edits its rules (no German THA words), re-labels without pulling
    rules = (Path(__file__).parents[2] / "hiprouter/lifecycle/report_rules.yaml").read_text()
    edited = tmp_path / "rules.yaml"
    edited.write_text(rules.replace("de: ['\\b(h(ü|ue)ft-?)?tep\\b'", "de: ['\\bnever\\b'"))
    data = yaml.safe_load(config.read_text())
    data["dataset"]["label_rules"] = str(edited)
    config.write_text(yaml.safe_dump(data))
    relabel = runner.invoke(main, ["--config", str(config), "dataset", "labels", str(out),
                                   "--kind", "hardware"])
    assert relabel.exit_code == 0, relabel.output
    hardware = sorted(r["hardware"] for r in csv.DictReader((out / "labels.csv").open()))
    assert "tha" not in hardware
