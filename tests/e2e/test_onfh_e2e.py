"""Kind onfh through `hiprouter serve`: storescu -> router -> storescp (plumbing).

Two synthetic AP pelvis studies go to a router whose rule runs `hardware` (a test kind
reading the hardware from Image Comments, tests/onfh/tagged_hardware.py) and `onfh` with
its default cascade, on a model fitted by the test session (tests/onfh/helpers.py), not
the shipped demo weights:

- healthy right head, grade-3 left head: one SEG with two segments (right and left
  femoral head), an SR whose left ONFH group has the larger Mahalanobis distance and a
  stage of at least 2, every object valid;
- THA on the right, healthy left: no ONFH group for the right hip, the skip audited.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import pytest
from sqlalchemy import select

from hiprouter.schema import AuditEvent
from tests.e2e.test_pipeline_e2e import KOS, SC, SR, pacs_objects, wait_until, write_study
from tests.onfh import register
from tests.onfh.helpers import onfh_study, tiny_onfh_model
from tests.onfh.tagged_hardware import tag
from tests.report.inputs import numbers_by_tracking_uid
from tests.router.conftest import storescu
from tests.router.pacs import StoreSCP
from tests.validation import assert_valid

REPO = Path(__file__).resolve().parents[2]

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
DISTANCE = "ON101"
STAGES = {"ON001": "0-1", "ON000": "0", "ON010": "1", "ON020": "2", "ON030": "3",
          "ON040": "4"}


@pytest.fixture(scope="module")
def onfh_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_onfh_model(tmp_path_factory.mktemp("onfh-model"))


def served(router_process: Any, pacs: StoreSCP, model: Path) -> Any:
    config = {
        "plugins": ["tests.onfh.tagged_hardware", *register.plugins()],
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}},
        "queue": {"workers": 1, "poll_interval_s": 0.2,
                  "retry": {"initial_s": 1, "max_s": 5, "max_attempts": 3}},
        "pipelines": {
            "hardware": {"kind": "tagged_hardware"},
            "onfh": {"kind": "onfh", "models": [str(model)], "device": "cpu"},
        },
        "rules": [{"name": "hips", "match": {"tag": "Modality", "in": ["CR", "DX"]},
                   "pipelines": ["onfh", "hardware"], "send_to": ["pacs"]}],
    }
    # the test kind lives in tests/: the server imports it from the checkout
    return router_process(config, env={"PYTHONPATH": str(REPO)})


def study_with(grades: dict[str, int], hardware: dict[str, str], index: int) -> Any:
    synth = onfh_study(5, index, grades, hardware=hardware)
    ds = synth.images[0].dataset
    ds.ImageComments = tag(hardware)
    return ds


def test_onfh_report_through_serve(router_process: Any, onfh_model: Path,
                                   tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS").start()
    router = served(router_process, pacs, onfh_model)
    try:
        native = study_with({"R": 0, "L": 3}, {"R": "no_hardware", "L": "no_hardware"}, 1)
        sent = storescu(router.port, write_study(tmp_path / "native", [native]))
        assert sent.returncode == 0, sent.stderr
        objects = wait_until(lambda: (o := pacs_objects(pacs)) and KOS in o and SEG in o and o,
                             240, "the study's KOS and SEG at the PACS")
        assert {k: len(v) for k, v in objects.items()} == {SR: 1, SC: 1, KOS: 1, SEG: 1}
        assert_valid([Path(d.filename) for ds in objects.values() for d in ds])

        (seg,) = objects[SEG]
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Right femoral head",
                                                                 "Left femoral head"]
        assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0] \
            .ReferencedSOPInstanceUID == native.SOPInstanceUID
        sr = hd.sr.Comprehensive3DSR.from_dataset(objects[SR][0])
        groups = {g.tracking_identifier: g for g in sr.content.get_planar_roi_measurement_groups()}
        assert {"onfh right hip", "onfh left hip", "hardware right hip",
                "hardware left hip"} == set(groups)
        numbers = numbers_by_tracking_uid(sr)
        distance = {side: float(numbers[str(groups[f"onfh {side} hip"].tracking_uid)][
            DISTANCE].value) for side in ("right", "left")}
        assert distance["left"] > distance["right"]
        left = groups["onfh left hip"]
        assert left.roi.graphic_type.value == "POLYLINE"
        stage = STAGES[left.finding_type.value]
        assert stage not in ("0-1", "0", "1")  # stage >= 2
        assert left.finding_sites[0].value.value == "119189000"  # femoral head, left

        tha = study_with({"L": 0}, {"R": "tha", "L": "no_hardware"}, 2)
        sent = storescu(router.port, write_study(tmp_path / "tha", [tha]))
        assert sent.returncode == 0, sent.stderr

        def tha_sr() -> Any:
            for ds in pacs_objects(pacs).get(SR, []):
                if ds.StudyInstanceUID == tha.StudyInstanceUID:
                    return ds
            return None

        report = hd.sr.Comprehensive3DSR.from_dataset(wait_until(tha_sr, 240, "the THA SR"))
        drawn = {g.tracking_identifier for g in report.content.get_planar_roi_measurement_groups()}
        assert drawn == {"hardware right hip", "hardware left hip", "onfh left hip"}
        with router.session_factory()() as s:
            events = s.scalars(select(AuditEvent)).all()
        assert any("onfh not run on: R hip: hardware found tha" in (e.outcome_description or "")
                   for e in events)
    finally:
        router.stop()
        pacs.stop()
