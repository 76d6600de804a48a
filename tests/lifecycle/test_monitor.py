"""Agreement figures, feedback from reports (received SRs and a RIS export) and drift
alerts per week, stored for `status` and exported to the log."""

from __future__ import annotations

import csv
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from hiprouter import db
from hiprouter.config import Settings
from hiprouter.lifecycle.agreement import agreement, psi, wilson
from hiprouter.lifecycle.monitor import (
    import_reports_csv,
    iso_week,
    latest_alerts,
    run_checks,
    store_labels,
    validate,
)
from hiprouter.lifecycle.reportlabels import load_rules
from hiprouter.schema import FindingRow, ModelVersion, MonitorCheck
from hiprouter.status import collect_status
from tests.lifecycle.phi import phi_study
from tests.router.dicomkit import add_study


def test_agreement_figures() -> None:
    pairs = [("tha", "tha")] * 40 + [("tha", "no_hardware")] * 10 + \
        [("no_hardware", "no_hardware")] * 45 + [("no_hardware", "tha")] * 5
    fig = agreement(pairs, ["no_hardware", "tha"], n_boot=200)
    assert fig["n"] == 100 and fig["accuracy"] == pytest.approx(0.85)
    tha = fig["per_class"]["tha"]
    assert tha["sensitivity"] == pytest.approx(0.8) and tha["specificity"] == pytest.approx(0.9)
    lo, hi = tha["sensitivity_ci95"]
    assert lo < 0.8 < hi and hi - lo < 0.3
    assert fig["kappa"] == pytest.approx(0.7) and fig["kappa_ci95"][0] < 0.7 < fig["kappa_ci95"][1]
    assert wilson(0, 0) is None and wilson(5, 5)[1] == 1.0
    assert psi({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}) == 0.0
    assert psi({"a": 0.9, "b": 0.1}, {"a": 0.1, "b": 0.9}) > 1.0


def _settings(tmp_path: Path) -> Settings:
    return Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
        "pipelines": {"hardware": {"kind": "hardware"}},
        "monitoring": {"min_findings": 10, "min_agreement": 0.8, "max_class_shift": 0.25}})


def _finding(study: str, side: str, predicted: str, p: float, when, status="assessed",
             model_id=None) -> FindingRow:
    return FindingRow(study_uid=study, episode=1, pipeline="hardware", kind="hardware",
                      laterality=side, source_sop_uids=[], model_name="site-hw",
                      model_version="1.0", status=status, predicted_class=predicted,
                      probability=p, probabilities={}, measurements=[], regions=[],
                      details={"scores": {"ood_score": 1.0}}, created_at=when, mode="active",
                      model_id=model_id)


def test_weekly_feedback_and_drift_alerts(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    db.upgrade(settings.database.url)
    factory = db.session_factory(db.make_engine(settings.database.url))
    now = db.utcnow()
    last_week, this_week = now - timedelta(days=7), now
    rules = load_rules()
    with factory() as s, s.begin():
        model = ModelVersion(name="hardware", version="1.0", kind="hardware", path="/x",
                             weights_sha256="0" * 64, device_uid="1.2.3", card={},
                             baseline={"class_distribution": {"tha": 0.5, "no_hardware": 0.5},
                                       "confidence": 0.9, "not_assessed": 0.0},
                             stage="active", registered_at=now)
        s.add(model)
        s.flush()
        for i in range(12):  # last week: like the baseline, agrees with the reports
            cls = "tha" if i % 2 else "no_hardware"
            s.add(_finding(f"1.1.{i}", "R", cls, 0.92, last_week, model_id=model.id))
        for i in range(12):  # this week: all THA, unsure, the reports disagree
            s.add(_finding(f"1.2.{i}", "R", "tha", 0.55, this_week, model_id=model.id))
    for i in range(12):
        cls = "tha" if i % 2 else "no_hardware"
        text = "Right total hip arthroplasty." if cls == "tha" else "Right hip: native hip."
        store_labels(factory, rules, ["hardware"], f"1.1.{i}", "sr", f"9.1.{i}", text, None)
        store_labels(factory, rules, ["hardware"], f"1.2.{i}", "sr", f"9.2.{i}",
                     "Right hip: native hip.", None)
    checks = run_checks(factory, settings, now=now)
    by = {(c.week, c.metric): c for c in checks}
    old, new = iso_week(last_week), iso_week(this_week)
    assert by[(old, "agreement")].value == 1.0 and not by[(old, "agreement")].alert
    assert by[(new, "agreement")].value == 0.0 and by[(new, "agreement")].alert
    assert by[(new, "class_psi")].alert and not by[(old, "class_psi")].alert
    assert by[(new, "confidence")].alert and by[(new, "confidence")].new
    assert not by[(new, "not_assessed")].alert
    again = run_checks(factory, settings, now=now)
    assert not any(c.new for c in again)  # an alert is news once
    with factory() as s:
        assert {a.metric for a in latest_alerts(s)} == {"agreement", "class_psi", "confidence"}
        assert s.scalars(select(MonitorCheck)).all()
    status = collect_status(settings)
    assert {a["metric"] for a in status["monitoring"]["alerts"]} == {
        "agreement", "class_psi", "confidence"}
    result = validate(factory, settings, "hardware", mode="active", n_boot=50)
    assert result["compared"] == 24 and len(result["weeks"]) == 2
    assert result["overall"]["per_class"]["no_hardware"]["sensitivity"] == pytest.approx(6 / 18)


def test_reports_from_a_ris_export_by_accession_number(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    db.upgrade(settings.database.url)
    factory = db.session_factory(db.make_engine(settings.database.url))
    datasets = phi_study(31, 3, {"R": "tha", "L": "no_hardware"})
    folder = tmp_path / "spool"
    folder.mkdir()
    paths = []
    for i, ds in enumerate(datasets):
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
        paths.append(folder / f"{i}.dcm")
    uid = add_study(factory, paths)
    with factory() as s, s.begin():
        s.add(_finding(uid, "R", "tha", 0.9, db.utcnow()))
        s.add(_finding(uid, "L", "no_hardware", 0.9, db.utcnow()))
    export = tmp_path / "ris.csv"
    with export.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["accession_number", "report_text"])
        w.writerow([str(datasets[0].AccessionNumber),
                    "Hüft-TEP rechts. Links keine Prothese, keine Osteosynthese."])
        w.writerow(["UNKNOWN", "Right THA."])
    counts = import_reports_csv(factory, settings, export)
    assert counts == {"rows": 2, "matched": 1, "labelled_hips": 2}
    result = validate(factory, settings, "hardware", mode="active", n_boot=0)
    assert result["compared"] == 2 and result["overall"]["accuracy"] == 1.0
    assert np.isclose(result["overall"]["per_class"]["tha"]["sensitivity"], 1.0)
