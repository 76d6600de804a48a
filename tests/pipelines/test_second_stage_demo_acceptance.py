"""Acceptance of the shipped second-stage demo weights, on freshly rendered synthetic studies.

The plumbing of the cascades is tested with constant-output models (test_cascades.py); this
checks what the synthetic-trained demo models themselves do. The hardware stage is a
constant model per side here, so the check is about the second-stage model alone. Floors
sit well below the held-out figures in the cards (fixation_device: top-1 0.82 on the
primary renderer; prosthesis_failure: dislocation recall 0.93), so a retrained demo that is
about as good passes and a broken one does not. Synthetic figures only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hiprouter.config import Settings
from hiprouter.inference.models import demo_model_dir, read_card, verify_weights
from hiprouter.pipelines.registry import PipelineSet
from hiprouter.pipelines.runner import analyse_study
from hiprouter.synth.labels import DEVICE_BY_KEY, DEVICE_KEYS
from hiprouter.synth.study import make_study
from tests.inference.helpers import constant_model

SIZE = (500, 700)  # the demos' training size
FD_DEMO = demo_model_dir("fixation_device")
PF_DEMO = demo_model_dir("prosthesis_failure")


def shipped(model_dir: Path) -> Any:
    if not (model_dir / "card.yaml").is_file():
        pytest.skip(f"{model_dir.name} not shipped")
    card = read_card(model_dir)
    assert card.synthetic_demo and verify_weights(model_dir, card)
    return card


def sided(root: Path, right: str, left: str) -> dict[str, Any]:
    return {"kind": "sided_hardware",
            "right": [str(constant_model(root / f"hw-{right}", "hardware", right))],
            "left": [str(constant_model(root / f"hw-{left}", "hardware", left))]}


def findings_of(settings: Settings, study: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    datasets = [i.dataset for i in study.images]
    findings, _ = analyse_study(PipelineSet(settings), names, study.study_uid, datasets)
    out: dict[str, dict[str, Any]] = {}
    for f in findings.findings():
        out.setdefault(f.pipeline, {})[f.laterality] = f
    return out


def test_acceptance_fixation_device_demo_names_the_design(tmp_path: Path) -> None:
    """Each of the six designs on the left hip of two synthetic AP pelvis studies: the demo
    names the right design in at least 7 of 12 and has it in its top 3 in at least 10."""
    card = shipped(FD_DEMO)
    assert card.label_set == "fixation_device" and list(card.classes) == list(DEVICE_KEYS)
    top1 = top3 = 0
    for design in DEVICE_KEYS:
        hardware = DEVICE_BY_KEY[design].hardware
        settings = Settings.model_validate({
            "plugins": ["tests.pipelines.cascade_kinds"],
            "pipelines": {"hardware": sided(tmp_path, "no_hardware", hardware),
                          "fixation_device": {"kind": "fixation_device", "device": "cpu"}}})
        for seed in (801, 802):
            study = make_study(seed, 0, hardware={"R": "no_hardware", "L": hardware},
                               device={"L": design}, views=("ap_pelvis",), size=SIZE)
            got = findings_of(settings, study, ["hardware", "fixation_device"])
            assert list(got["fixation_device"]) == ["L"]
            c = got["fixation_device"]["L"].classification
            top1 += c.predicted == design
            top3 += design in [k for k, _ in c.candidates(3)]
    assert top1 >= 7 and top3 >= 10, (top1, top3)


def test_acceptance_prosthesis_failure_demo_sees_dislocations(tmp_path: Path) -> None:
    """Five THAs dislocated and five without failure (AP + cross-table lateral): the demo
    calls at least 3 of the dislocations dislocated, gives them a higher dislocation
    probability on average than the intact ones, and reports at least 3 of the intact ones
    as no failure or indeterminate (the card's confidence threshold), not as a failure."""
    shipped(PF_DEMO)
    settings = Settings.model_validate({
        "plugins": ["tests.pipelines.cascade_kinds"],
        "pipelines": {"hardware": sided(tmp_path, "tha", "no_hardware"),
                      "prosthesis_failure": {"kind": "prosthesis_failure", "device": "cpu"}}})
    called = unsure = 0
    p: dict[str, list[float]] = {"dislocation": [], "none": []}
    for failure in ("dislocation", "none"):  # the generator's names
        for index in range(5):
            study = make_study(811, index, hardware={"R": "tha", "L": "no_hardware"},
                               failure={"R": failure},
                               views=("ap_pelvis", "cross_table_lateral"), side="R",
                               size=SIZE)
            got = findings_of(settings, study, ["hardware", "prosthesis_failure"])
            assert list(got["prosthesis_failure"]) == ["R"]
            c = got["prosthesis_failure"]["R"].classification
            p[failure].append(c.probabilities["dislocation"])
            called += failure == "dislocation" and c.predicted == "dislocation"
            # an intact THA must not get an assessed cause of failure
            unsure += failure == "none" and (c.status != "assessed"
                                             or c.predicted == "no_failure")
    mean = {k: sum(v) / len(v) for k, v in p.items()}
    assert called >= 3 and mean["dislocation"] > mean["none"], (called, mean)
    assert unsure >= 3, unsure
