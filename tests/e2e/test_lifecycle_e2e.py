"""From the site's PACS to a validated model, end to end, with Orthanc as the site PACS.

Synthetic hip studies (with recognisable patient identifiers) and their Basic Text SR
reports (English and German, negated findings included) are stored in Orthanc, with a
study outside the date range and a chest study. `hiprouter dataset pull` finds the hip
studies by date and routing rule, C-MOVEs them to the running `serve` (its dataset AE
title; not routed), de-identifies them and labels each hip from the report text;
`train` runs a few steps on the pulled set, `models register` and `promote --to shadow`;
new studies sent to `serve` produce shadow findings and nothing at the PACS; their
reports arrive later and `validate` shows the agreement. No identifier appears in any
log line or command output, nor in the exported headers.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select

from hiprouter.lifecycle.deid import Pseudonyms, load_key
from hiprouter.schema import AuditEvent, DatasetItem, FindingRow, Instance, Job, Output, Study
from tests.conftest import REPO, require_tool
from tests.e2e.orthanc import start_orthanc
from tests.lifecycle.phi import all_text, leaked, phi_study, text_sr
from tests.router.conftest import storescu

pytestmark = pytest.mark.slow

IN_RANGE, OUT_OF_RANGE = "20250310", "20240105"
# index -> (hardware per hip, report text, expected hardware and fracture labels per hip)
PULLED: dict[int, tuple[dict[str, str], str, dict[str, str], dict[str, str]]] = {
    0: ({"R": "tha", "L": "no_hardware"},
        "Right hip: total hip arthroplasty in good position. Left hip: native hip. "
        "No evidence of fracture.",
        {"R": "tha", "L": "no_hardware"}, {"R": "no_fracture", "L": "no_fracture"}),
    1: ({"R": "no_hardware", "L": "dynamic_hip_screw"},
        "Beckenübersicht: Rechts native Hüfte. Links liegende DHS. Kein Hinweis auf Fraktur.",
        {"R": "no_hardware", "L": "dynamic_hip_screw"},
        {"R": "no_fracture", "L": "no_fracture"}),
    2: ({"R": "im_nail", "L": "no_hardware"},
        "Intramedullary nail in the right femur, healed. Left hip: native hip. "
        "Fracture is excluded.",
        {"R": "im_nail", "L": "no_hardware"}, {"R": "no_fracture", "L": "no_fracture"}),
    3: ({"R": "tha", "L": "tha"}, "Hüft-TEP beidseits in regelrechter Lage. Keine Fraktur.",
        {"R": "tha", "L": "tha"}, {"R": "no_fracture", "L": "no_fracture"}),
    4: ({"R": "no_hardware", "L": "no_hardware"},
        "No orthopaedic hardware. No fracture or dislocation.",
        {"R": "no_hardware", "L": "no_hardware"}, {"R": "no_fracture", "L": "no_fracture"}),
}
LATER = {  # studies sent to serve after the shadow promotion, and their final reports
    10: ({"R": "tha", "L": "no_hardware"},
         "Right hip: total hip replacement. Left hip: native hip."),
    11: ({"R": "no_hardware", "L": "no_hardware"}, "Keine Osteosynthese, keine Prothese."),
    12: ({"R": "no_hardware", "L": "tha"}, "Left THA. No hardware on the right."),
}
ALL_PATIENTS = [*PULLED, 5, 6, *LATER]


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dated(datasets: list[Dataset], date: str) -> list[Dataset]:
    for ds in datasets:
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.BodyPartExamined = "PELVIS"  # the synthetic headers sometimes leave it empty
    return datasets


def _cli(router: Any, *args: str, timeout: float = 300) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", "from hiprouter.cli import main; main()",
         "--config", str(router.config_path), *args],
        capture_output=True, text=True, env=env, cwd=router.root, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"hiprouter {' '.join(args)} failed:\n{out}"
    return out


def _phi_free(text: str, where: str) -> None:
    for i in ALL_PATIENTS:
        assert leaked(text, i) == [], f"{where} leaks {leaked(text, i)}"


def test_pacs_to_validated_shadow_model(router_process, tmp_path: Path) -> None:
    require_tool("Orthanc")
    require_tool("storescu")
    router = router_process(overrides={
        "destinations": {"pacs": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 1}},
        "pipelines": {"hardware": {"kind": "hardware", "mode": "shadow", "device": "cpu",
                                   "runtime": "torch"}},
        "rules": [{"name": "hip", "match": {"all": [
            {"tag": "Modality", "in": ["CR", "DX"]},
            {"tag": "BodyPartExamined", "in": ["HIP", "PELVIS"], "ignore_case": True}]},
            "pipelines": ["hardware"], "send_to": ["pacs"]}],
        "queue": {"workers": 1, "poll_interval_s": 0.2},
        "dataset": {"source": "pacs", "max_per_minute": 600, "sample_size": 4,
                    "deid": {"key_file": str(tmp_path / "keys" / "site.key")}},
        "storage": {"models_dir": str(tmp_path / "registry")},
    }, start=False)
    pacs = start_orthanc(tmp_path / "orthanc", modalities={
        "hiprouter": ("HIPROUTER", "127.0.0.1", router.port),
        "hiprouter_ds": ("HIPROUTER_DS", "127.0.0.1", router.port)})
    try:
        router.config["destinations"]["pacs"]["port"] = pacs.dicom_port
        import yaml

        router.config_path.write_text(yaml.safe_dump(router.config), encoding="utf-8")
        router.start()
        _run(router, pacs, tmp_path)
    finally:
        pacs.stop()


def _run(router: Any, pacs: Any, tmp_path: Path) -> None:
    # -- the site PACS: hip studies with reports, one too old, one chest ------------------
    originals: dict[int, str] = {}
    for i, (hardware, report, _, _) in PULLED.items():
        images = _dated(phi_study(40 + i, i, hardware), IN_RANGE)
        originals[i] = str(images[0].StudyInstanceUID)
        for ds in images:
            pacs.upload(_bytes(ds))
        pacs.upload(_bytes(text_sr(images[0], report)))
    old = _dated(phi_study(45, 5, {"R": "tha", "L": "tha"}), OUT_OF_RANGE)
    for ds in old:
        pacs.upload(_bytes(ds))
    chest = _dated(phi_study(46, 6, {"R": "no_hardware", "L": "no_hardware"}), IN_RANGE)
    for ds in chest:
        ds.BodyPartExamined, ds.StudyDescription, ds.SeriesDescription = \
            "CHEST", "XR CHEST", "CHEST PA"
        pacs.upload(_bytes(ds))

    # -- dataset pull ------------------------------------------------------------------
    out = tmp_path / "hipdata"
    pulled = _cli(router, "dataset", "pull", str(out), "--kind", "hardware", "--kind",
                  "fracture", "--from", "20250101", "--to", "20251231", "--match-rule", "hip",
                  "--quiet")
    assert "5 studies" in pulled, pulled
    manifest = list(csv.DictReader((out / "images.csv").open()))
    assert len({r["study_uid"] for r in manifest}) == 5
    for path in (out / "images").rglob("*.dcm"):
        ds = dcmread(path)
        _phi_free(all_text(ds), f"header of {path.name}")
        assert ds.PatientIdentityRemoved == "YES"
    pseudo = Pseudonyms(load_key(tmp_path / "keys" / "site.key"))
    for kind, column in (("hardware", 2), ("fracture", 3)):
        rows = list(csv.DictReader((out / f"labels-{kind}.csv").open()))
        got = {(r["study_uid"], r["laterality"]): r[kind] for r in rows}
        want = {(pseudo.uid(originals[i]), side): label
                for i, spec in PULLED.items() for side, label in spec[column].items()}
        assert got == want, kind
    assert (out / "labels.csv").read_text() == (out / "labels-hardware.csv").read_text()
    assert (out / "private" / "review.html").is_file()
    assert "labelled" in (out / "label-report.md").read_text()
    factory = router.session_factory()
    with factory() as s:
        items = s.scalars(select(DatasetItem)).all()
        assert {i.state for i in items} == {"exported"} and len(items) == 10  # 5 CR + 5 SR
        assert s.scalars(select(Study)).all() == []  # pulled studies are never routed
        assert s.scalars(select(Job)).all() == []
        assert s.scalars(select(Instance)).all() == []  # originals left the spool
        codes = {e.event_id_code for e in s.scalars(select(AuditEvent))}
        assert {"HIP010", "110106"} <= codes
    again = _cli(router, "dataset", "pull", str(out), "--kind", "hardware", "--from",
                 "20250101", "--to", "20251231", "--match-rule", "hip", "--quiet")
    assert "0 images exported" in again  # resumed: nothing left to do

    # -- train a few steps, register, promote to shadow -------------------------------
    model = tmp_path / "site-hw"
    trained = _cli(router, "train", str(out), "--labels", str(out / "labels-hardware.csv"),
                   "--out", str(model), "--arch", "resnet10t", "--input-size", "64",
                   "--epochs-head", "1", "--epochs", "1", "--max-steps", "2",
                   "--batch-size", "4", "--workers", "0", "--device", "cpu",
                   "--name", "site-hw", "--version", "1.0", "--synthetic-demo",
                   # a two-step model has no meaningful abstention or OOD threshold: off, so
                   # every hip gets a definitive finding and all six are compared below
                   "--abstain-accuracy", "0", "--ood-tpr", "0")
    registered = _cli(router, "models", "register", str(model), "--name", "hardware")
    assert "registered hardware 1.0" in registered
    promoted = _cli(router, "models", "promote", "hardware", "1.0", "--to", "shadow")
    assert "pipelines running hardware: hardware" in promoted

    # -- new studies through serve: shadow findings, nothing at the PACS ---------------
    before = len(pacs.get("/instances"))
    later: dict[int, list[Dataset]] = {}
    for i, (hardware, _) in LATER.items():
        later[i] = _dated(phi_study(50 + i, i, hardware), IN_RANGE)
        folder = tmp_path / f"later{i}"
        folder.mkdir()
        paths = []
        for n, ds in enumerate(later[i]):
            ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)
            paths.append(folder / f"{n}.dcm")
        assert storescu(router.port, paths).returncode == 0
    uids = {str(v[0].StudyInstanceUID) for v in later.values()}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with factory() as s:
            done = set(s.scalars(select(FindingRow.study_uid).where(FindingRow.mode == "shadow")))
            if uids <= done:
                break
        time.sleep(0.5)
    else:
        pytest.fail(f"no shadow findings:\n{router.log_text()[-3000:]}")
    with factory() as s:
        rows = s.scalars(select(FindingRow)).all()
        assert {r.mode for r in rows} == {"shadow"}
        assert {(r.model_name, r.model_version) for r in rows} == {("site-hw", "1.0")}
        assert all(r.model_id is not None for r in rows)
        assert s.scalars(select(Output)).all() == []
    time.sleep(1.0)
    assert len(pacs.get("/instances")) == before  # nothing reached the PACS

    # -- the final reports arrive later; validate --------------------------------------
    reports = tmp_path / "reports"
    reports.mkdir()
    paths = []
    for i, (_, text) in LATER.items():
        path = reports / f"{i}.dcm"
        text_sr(later[i][0], text).save_as(path, enforce_file_format=True)
        paths.append(path)
    assert storescu(router.port, paths, calling="ORTHANC").returncode == 0
    plot = tmp_path / "agreement.png"
    shown = _cli(router, "validate", "hardware", "--plot", str(plot))
    result = json.loads(_cli(router, "validate", "hardware", "--json", "--no-scan"))
    assert result["mode"] == "shadow" and result["models"] == ["site-hw 1.0"]
    assert result["compared"] == 6 and result["overall"]["n"] == 6
    assert result["weeks"] and result["weeks"][0]["compared"] == 6
    per_class = result["overall"]["per_class"]
    assert per_class["tha"]["positives"] == 2 and per_class["no_hardware"]["positives"] == 4
    assert "sensitivity" in shown and plot.stat().st_size > 1000
    with factory() as s:  # the reports were stored, not routed as studies
        assert {i.purpose for i in s.scalars(select(Instance))} == {"clinical", "report"}
        assert s.scalars(select(Job)).all() and all(
            j.study_uid in uids for j in s.scalars(select(Job)))
    monitor = _cli(router, "monitor", "--json")
    assert json.loads(monitor)

    # -- no identifier in any log line or output ---------------------------------------
    for text, where in ((router.log_text(), "serve log"), (pulled, "dataset pull"),
                        (again, "second pull"), (trained, "train"), (registered, "register"),
                        (promoted, "promote"), (shown, "validate"), (monitor, "monitor")):
        _phi_free(text, where)
    with factory() as s:
        for ev in s.scalars(select(AuditEvent)):
            _phi_free(json.dumps([ev.outcome_description, ev.objects, ev.participants]),
                      f"audit {ev.event_id_meaning}")


def test_pull_with_c_get_needs_no_running_serve(tmp_path: Path) -> None:
    """C-GET brings the series back on the pull's own association (Orthanc as the PACS)."""
    require_tool("Orthanc")
    import yaml

    pacs = start_orthanc(tmp_path / "orthanc", modalities={
        "hiprouter": ("HIPROUTER", "127.0.0.1", 1)})
    try:
        hardware, report, want_hw, _ = PULLED[0]
        images = _dated(phi_study(40, 0, hardware), IN_RANGE)
        for ds in images:
            pacs.upload(_bytes(ds))
        pacs.upload(_bytes(text_sr(images[0], report)))
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "database": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
            "storage": {"spool_dir": str(tmp_path / "spool")},
            "destinations": {"pacs": {"ae_title": "ORTHANC", "host": "127.0.0.1",
                                      "port": pacs.dicom_port}},
            "dataset": {"source": "pacs", "retrieve": "get", "sample_size": 0,
                        "deid": {"key_file": str(tmp_path / "key")}},
            "logging": {"json_logs": True}}))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            [sys.executable, "-c", "from hiprouter.cli import main; main()", "--config",
             str(config), "dataset", "pull", str(tmp_path / "set"), "--kind", "hardware",
             "--quiet"], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _phi_free(proc.stdout + proc.stderr, "C-GET pull")
        rows = list(csv.DictReader((tmp_path / "set" / "labels.csv").open()))
        assert sorted((r["laterality"], r["hardware"]) for r in rows) == sorted(want_hw.items())
        for path in (tmp_path / "set" / "images").rglob("*.dcm"):
            _phi_free(all_text(dcmread(path)), path.name)
    finally:
        pacs.stop()
