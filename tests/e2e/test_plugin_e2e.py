"""A pipeline plugin installed as its own package joins the one report of a study.

The example plugin (tests/plugins/metal_extent) is installed with pip into a folder of its
own, outside hiprouter; `hiprouter serve` finds its kind through the `hiprouter.pipelines`
entry point on PYTHONPATH. No hiprouter module knows it. A study goes storescu -> serve ->
storescp with the pipelines hardware, fracture (constant-output models: plumbing, not
detection) and the plugin, a cascade on hardware: one SR holds every pipeline's groups,
each with a SCOORD on its radiograph; the plugin's masks become one SEG; every object
validates.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from sqlalchemy import select

from hiprouter.schema import AuditEvent, FindingRow
from tests.conftest import REPO
from tests.e2e.test_pipeline_e2e import KOS, SC, SR, pacs_objects, wait_until, write_study
from tests.inference.helpers import blob_image, constant_model, make_radiograph
from tests.report.inputs import numbers_by_tracking_uid
from tests.router.conftest import storescu
from tests.router.pacs import StoreSCP
from tests.toy import NO_ANATOMY_CHECK
from tests.validation import assert_valid

PLUGIN = REPO / "tests" / "plugins" / "metal_extent"


def pelvis_with_metal_on_the_right() -> Any:
    """An AP pelvis CR (12 bits) whose patient's right half (image left) holds a metal disc."""
    pixels = blob_image((300, 400), centre=(150, 100), radius=40, background=800, peak=3700)
    pixels[40:260, 40:360] += np.random.default_rng(3).integers(0, 300, (220, 320),
                                                                dtype=np.uint16)
    return make_radiograph(pixels, SeriesDescription="AP PELVIS", BodyPartExamined="PELVIS",
                           WindowCenter=2000, WindowWidth=4000)
SEG = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin package installed (pip, no dependencies) into a folder of its own."""
    target = tmp_path_factory.mktemp("plugin-site")
    source = tmp_path_factory.mktemp("plugin-build") / "metal_extent"
    shutil.copytree(PLUGIN, source)  # setuptools builds in the source folder: not in tests/
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300, cwd=source.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(target.glob("hiprouter_metal_extent-1.0.0.dist-info/entry_points.txt"))
    return target


def test_plugin_kind_joins_the_one_report_of_the_study(router_process: Any, plugin_site: Path,
                                                       tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS").start()
    hardware = constant_model(tmp_path / "hw-tha", "hardware", "tha")
    fracture = constant_model(tmp_path / "fx-none", "fracture", "no_fracture")
    config = {
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}},
        "queue": {"workers": 1, "poll_interval_s": 0.2,
                  "retry": {"initial_s": 1, "max_s": 5, "max_attempts": 3}},
        "pipelines": {
            "hardware": {"kind": "hardware", "models": [str(hardware)], "device": "cpu"},
            "fracture": {"kind": "fracture", "models": [str(fracture)], "device": "cpu"},
            "metal": {"kind": "metal_extent", "threshold": 0.9, "min_percent": 1.0},
        },
        "inference": NO_ANATOMY_CHECK,
        "rules": [{"name": "hips", "match": {"tag": "Modality", "in": ["CR", "DX"]},
                   "pipelines": ["metal", "fracture", "hardware"], "send_to": ["pacs"]}],
    }
    router = router_process(config, env={"PYTHONPATH": str(plugin_site)})
    try:
        radiograph = pelvis_with_metal_on_the_right()
        sent = storescu(router.port, write_study(tmp_path / "study", [radiograph]))
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: pacs_objects(pacs).get(KOS), 240, "the study's KOS at the PACS")
        objects = wait_until(lambda: (o := pacs_objects(pacs)) and SEG in o and o,
                             60, "the plugin's SEG at the PACS")
        assert {k: len(v) for k, v in objects.items() if k in (SR, SC, KOS, SEG)} == {
            SR: 1, SC: 1, KOS: 1, SEG: 1}
        assert_valid([Path(d.filename) for ds in objects.values() for d in ds
                      if str(d.SOPClassUID) in (SR, SC, KOS, SEG)])

        sr = hd.sr.Comprehensive3DSR.from_dataset(objects[SR][0])
        groups = sr.content.get_planar_roi_measurement_groups()
        ids = sorted(g.tracking_identifier for g in groups)
        assert ids == ["fracture left hip", "fracture right hip", "hardware left hip",
                       "hardware right hip", "metal left hip", "metal right hip"]
        for group in groups:
            (image,) = group.roi.ContentSequence
            assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
                radiograph.SOPInstanceUID
        metal = {g.tracking_identifier: g for g in groups if g.tracking_identifier.startswith(
            "metal")}
        right = metal["metal right hip"]
        assert right.finding_type.value == "MX001" and right.roi.graphic_type.value == \
            "POLYLINE"
        percent = numbers_by_tracking_uid(sr)[str(right.tracking_uid)]["MX100"]
        assert 5.0 < float(percent.value) < 15.0 and percent.unit.value == "%"  # disc / half
        assert metal["metal left hip"].finding_type.value == "MX000"

        (seg,) = objects[SEG]
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Right hip metal"]
        assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == \
            "425620007"

        factory = router.session_factory()
        with factory() as s:
            rows = s.scalars(select(FindingRow).where(
                FindingRow.study_uid == radiograph.StudyInstanceUID)).all()
            events = s.scalars(select(AuditEvent).where(
                AuditEvent.event_id_code == "HIP001")).all()
        by = {(r.pipeline, r.laterality): r for r in rows}
        assert by[("metal", "R")].kind == "metal_extent"
        assert by[("metal", "R")].details["masks"][0]["pixels"] > 0
        assert any("metal (metal_extent)" in (e.outcome_description or "") for e in events)
    finally:
        router.stop()
        pacs.stop()
