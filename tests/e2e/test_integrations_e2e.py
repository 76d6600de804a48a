"""The hospital's systems around one served study, each a real peer (issue 14):

storescu -> `hiprouter serve` (constant-output test models: hardware THA, fracture femoral
neck fracture, so the study is triaged HIGH) -> three destinations at once:
- `pacs`: Orthanc over C-STORE with storage commitment (N-ACTION, then Orthanc's
  N-EVENT-REPORT on a new association to the router's SCP; sends count only then),
- `archive`: a second Orthanc with its DICOMweb plugin, by STOW-RS (QIDO-RS then finds the
  SR, SC and KOS in the source study),
- `ris`: hl7apy's own MLLP server, which parses the ORU^R01, NACKs (AE) the first one and
  ACKs (AA) the retry;
while a thread scrapes /metrics, and headless Chromium loads the status page (screenshot
with the study just sent), its audit trail, and follows its viewer link into OHIF v3 served
beside the DICOMweb Orthanc. Screenshots go to $PYTEST_ARTEFACTS/web (README's
docs/img/web_status.png is one of them).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hiprouter.schema import AuditEvent, Send, SendAttempt
from hiprouter.synth.study import make_study
from tests.conftest import REPO, free_port
from tests.e2e.hl7_listener import start_ris, stop_ris
from tests.e2e.ohif import (
    OHIF_VERSION,
    Browser,
    OhifServer,
    OhifViewer,
    ViewerUnavailable,
    find_chromium,
    ohif_dist,
)
from tests.e2e.orthanc import dicomweb_plugin, start_orthanc
from tests.e2e.test_pipeline_e2e import wait_until, write_study
from tests.inference.helpers import constant_model
from tests.router.conftest import storescu

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SR, SC, KOS = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7", \
    "1.2.840.10008.5.1.4.1.1.88.59"


def artefacts() -> Path:
    root = Path(os.environ.get("PYTEST_ARTEFACTS", REPO / "tests" / "artefacts"))
    path = root / "web"
    path.mkdir(parents=True, exist_ok=True)
    return path


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return str(r.read().decode())


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, number = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(number)
    return total


class Scraper(threading.Thread):
    """Scrapes /metrics every 0.2 s until stopped; keeps every response."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.stop, self.samples = port, threading.Event(), []  # type: ignore[var-annotated]

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.samples.append((time.monotonic(), scrape(self.port)))
            except OSError:
                pass


def test_metrics_web_page_dicomweb_hl7_and_storage_commitment_with_real_peers(
        router_process: Any, tmp_path: Path) -> None:
    if shutil.which("Orthanc") is None or dicomweb_plugin() is None:
        pytest.skip("Orthanc with DICOMweb not installed (orthanc orthanc-dicomweb)")
    if find_chromium() is None:
        pytest.skip("chromium not installed (Debian package chromium; scripts/test.sh)")
    try:
        dist = ohif_dist()
    except ViewerUnavailable as exc:
        pytest.skip(f"OHIF Viewer @ohif/app@{OHIF_VERSION} not available: {exc}")
    out = artefacts()
    models = {"hardware": constant_model(tmp_path / "hw", "hardware", "tha"),
              "fracture": constant_model(tmp_path / "fx", "fracture", "femoral_neck_fracture")}
    web_port = free_port()
    router = router_process(start=False, overrides={
        "queue": {"workers": 1, "poll_interval_s": 0.2,
                  "retry": {"initial_s": 0.5, "factor": 1, "max_s": 1, "max_attempts": 5}},
        "pipelines": {n: {"kind": n, "models": [str(m)], "device": "cpu"}
                      for n, m in models.items()},
    })
    pacs = start_orthanc(tmp_path / "pacs", "PACS",  # it sends commitment reports to us
                         modalities={"hiprouter": ("HIPROUTER", "127.0.0.1", router.port)})
    archive = start_orthanc(tmp_path / "archive", "ARCHIVE", dicomweb=True)
    ris = start_ris(nack_first=1)
    viewer_server = OhifServer(dist, archive.http_port)
    try:
        router.config.update({
            "destinations": {
                "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.dicom_port,
                         "storage_commitment": True, "commitment_timeout_s": 60},
                "archive": {"type": "dicomweb", "url": archive.dicomweb_root},
                "ris": {"type": "hl7", "host": "127.0.0.1", "port": ris.port,
                        "receiving_application": "RIS", "receiving_facility": "HOSPITAL"},
            },
            "rules": [{"name": "hips", "match": {"tag": "Modality", "in": ["CR", "DX"]},
                       "pipelines": list(models), "send_to": ["pacs", "archive", "ris"]}],
            "web": {"enabled": True, "port": web_port,
                    "viewer_url": viewer_server.origin + "/viewer?StudyInstanceUIDs={study_uid}"},
        })
        import yaml

        router.config_path.write_text(yaml.safe_dump(router.config), encoding="utf-8")
        router.start()
        assert "web server listening" in router.log_text()

        study = make_study(5151, 0, views=("ap_pelvis",), size=(900, 1000),
                           hardware={"R": "tha", "L": "no_hardware"})
        files = write_study(tmp_path / "study", [i.dataset for i in study.images])
        accession = str(study.images[0].dataset.AccessionNumber)
        patient_name = str(study.images[0].dataset.PatientName)
        assert accession and patient_name
        # the archive holds the source study, as a PACS would
        assert storescu(archive.dicom_port, files, called="ARCHIVE").returncode == 0

        scraper = Scraper(web_port)
        scraper.start()
        sent = storescu(router.port, files)
        assert sent.returncode == 0, sent.stderr
        factory = router.session_factory()

        def all_sent() -> list[Send] | None:
            with factory() as s:
                rows = list(s.scalars(select(Send)))
            done = [r for r in rows if r.state == "sent"]
            return rows if rows and len(done) == len(rows) else None

        sends = wait_until(all_sent, 300, "every send sent (and committed)")
        scraper.stop.set()
        scraper.join()

        # -- storage commitment: every C-STORE send was committed by Orthanc -------------
        by_dest: dict[str, list[Send]] = {}
        for s in sends:
            by_dest.setdefault(s.destination, []).append(s)
        assert {s.sop_class_uid for s in by_dest["pacs"]} == {SR, SC, KOS}
        assert all(s.commit_uid and s.committed_at for s in by_dest["pacs"]), by_dest["pacs"]

        # -- DICOMweb: QIDO-RS finds the SR, SC and KOS in the source study ---------------
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(archive.dicomweb_root)
        found = client.search_for_instances(study_instance_uid=study.study_uid)
        classes = {item["00080016"]["Value"][0] for item in found}
        assert {SR, SC, KOS} <= classes, classes
        for s in by_dest["archive"]:
            assert any(item["00080018"]["Value"][0] == s.sop_instance_uid for item in found)

        # -- HL7: NACKed once, retried, then accepted; one message per report -------------
        assert len(by_dest["ris"]) == 1 and by_dest["ris"][0].sop_class_uid == SR
        assert [r.answered for r in ris.received] == ["AE", "AA"], ris.errors
        first, second = ris.received
        assert first.er7 == second.er7 or first.message.msh.msh_10.value == \
            second.message.msh.msh_10.value
        msg = second.message
        assert msg.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
        er7 = second.er7
        obr = next(seg for seg in er7.split("\r") if seg.startswith("OBR|"))
        fields = obr.split("|")
        assert fields[3] == accession and fields[18] == accession
        assert fields[27].split("^")[5] == "S"  # HIGH -> stat
        sr_uid = by_dest["ris"][0].sop_instance_uid
        assert "OBX|" in er7 and sr_uid in er7
        assert "Right hip: total hip arthroplasty." in er7
        assert "TRIAGE^AI triage priority^99HIPAI||HIGH" in er7
        with factory() as s:
            attempts = list(s.scalars(select(SendAttempt).where(
                SendAttempt.destination == "ris").order_by(SendAttempt.attempt)))
            hl7_audit = list(s.scalars(select(AuditEvent).where(
                AuditEvent.event_type_code == "HIP009")))
        assert [a.error is None for a in attempts] == [False, True]
        assert "ACK AE" in (attempts[0].error or "")
        assert {e.outcome for e in hl7_audit} == {0, 4}
        assert patient_name not in router.log_text()

        # -- metrics: scraped while the study was being received and sent -----------------
        during = [t for _, t in scraper.samples
                  if value(t, "hiprouter_instances_received_total") > 0
                  and value(t, "hiprouter_sends_total", result="sent") < len(sends)]
        assert during, "no scrape saw the study between its receipt and its last send"
        final = scrape(web_port)
        assert value(final, "hiprouter_instances_received_total", outcome="stored") == len(files)
        assert value(final, "hiprouter_received_bytes_total") > 0
        assert value(final, "hiprouter_associations_total", direction="in") >= 1
        assert value(final, "hiprouter_outputs_total", kind="SR") == 1
        assert value(final, "hiprouter_triage_total", level="HIGH") == 1
        assert value(final, "hiprouter_inference_seconds_count", pipeline="fracture") == 2
        assert value(final, "hiprouter_sends_total", destination="ris", result="failed") == 1
        assert value(final, "hiprouter_storage_commitments_total", destination="pacs",
                     result="committed") == len(by_dest["pacs"])
        assert value(final, "hiprouter_studies", state="done") == 1
        assert value(final, "hiprouter_dead_letters") == 0
        assert value(final, "hiprouter_spool_free_bytes") > 0
        (out / "metrics.txt").write_text(final)

        # -- the status page in a real browser, then the viewer link -----------------------
        b = Browser(1500, 1000)
        try:
            b.navigate(f"http://127.0.0.1:{web_port}/")
            row = f'document.querySelector(\'tr[data-study-uid="{study.study_uid}"]\')'
            b.wait_for(row, 30)
            text = b.text()
            assert accession in text and "HIGH" in text and "done" in text
            assert "hardware: tha" in text
            html = b.html()
            for secret in (patient_name, patient_name.replace("^", " ")):
                assert secret not in html
            (out / "web_status.png").write_bytes(b.screenshot())
            b.navigate(f"http://127.0.0.1:{web_port}/studies/{study.study_uid}")
            b.wait_for("document.querySelector('table.events')", 30)
            trail = b.text()
            assert "HL7 Result Message" in trail and "Storage Commitment" in trail
            assert "DICOM Instances Transferred" in trail
            (out / "web_study.png").write_bytes(b.screenshot())
            b.navigate(f"http://127.0.0.1:{web_port}/audit?text=ACK+AE")
            b.wait_for("document.querySelector('table.events')", 30)
            assert "not sent: ACK AE" in b.text()
            b.navigate(f"http://127.0.0.1:{web_port}/")
            b.wait_for(row, 30)
            href = b.evaluate(f"{row}.querySelector('a.viewer').href")
            assert href == viewer_server.study_url(study.study_uid)
            viewer = OhifViewer(b, viewer_server)
            b.navigate(href)
            b.wait_for("document.querySelector('[data-cy^=\"study-browser-thumbnail\"]')", 90)
            viewer.wait_image(60)
            listed = viewer.series_listed()
            assert sum("AI HIP REPORT" in s for s in listed) == 1, listed
            assert sum("AI TRIAGE" in s for s in listed) == 1, listed
            (out / "web_viewer_link.png").write_bytes(b.screenshot())
        finally:
            b.close()
    finally:
        router.stop()
        viewer_server.close()
        stop_ris(ris)
        pacs.stop()
        archive.stop()
