"""The label schema (hiprouter.synth.labels): screening rule, consistency, per-task sampling,
overrides, and the labels.csv written for every task."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hiprouter.synth.labels import (
    ARTHROPLASTY,
    DEVICE_BY_KEY,
    DEVICE_KEYS,
    FAILURES,
    SCREENING_CLASSES,
    TASK_CLASSES,
    TASK_COLUMN,
    TASKS,
    THA,
    HipSpec,
    check_hip,
    sample_age,
    sample_hips,
    sample_views,
    screening_class,
)
from hiprouter.synth.study import LABEL_FIELDS, generate_dataset, make_study

DOC = Path(__file__).resolve().parents[2] / "docs" / "synthetic-data.md"


def test_label_fields_are_the_documented_columns() -> None:
    text = DOC.read_text()
    table = text[text.index("## labels.csv columns"):text.index("### screening class")]
    documented = [c.strip("` ") for row in table.splitlines()[4:] if row.startswith("|")
                  for c in row.split("|")[1].split(",")]
    assert list(LABEL_FIELDS) == documented


@pytest.mark.parametrize(("hip", "expected"), [
    (HipSpec("tha", failure="wear"), "tha"),
    (HipSpec("post_infectious"), "tha"),
    (HipSpec("hemiarthroplasty"), "tha"),
    (HipSpec("cannulated_screws", fracture="femoral_neck_fracture",
             device="cannulated_screws_3"), "internal_fixation"),
    (HipSpec(fracture="intertrochanteric_fracture", onfh_grade=4, oa_grade=3),
     "intertrochanteric_fracture"),
    (HipSpec(onfh_grade=2, ddh=True, oa_grade=4), "osteonecrosis"),
    (HipSpec(onfh_grade=1, ddh=True, oa_grade=4), "dysplasia"),
    (HipSpec(onfh_grade=1, oa_grade=2), "osteoarthritis"),
    (HipSpec(onfh_grade=1, oa_grade=1), "normal"),
])
def test_screening_class_follows_the_documented_rule(hip: HipSpec, expected: str) -> None:
    assert screening_class(hip) == expected == hip.screening


@pytest.mark.parametrize("task", TASKS)
def test_each_task_samples_consistent_and_balanced_labels(task: str) -> None:
    counts: Counter[str] = Counter()
    n = 420
    for i in range(n):
        hips, index = sample_hips(np.random.default_rng([3, i]), task=task)
        for side, hip in hips.items():
            check_hip(side, hip)
            assert bool(hip.failure) == (hip.hardware in THA)
            assert hip.dislocated == (hip.failure == "dislocation")
            if hip.device:
                assert DEVICE_BY_KEY[hip.device].hardware == hip.hardware
            if hip.hardware in ARTHROPLASTY:
                assert (hip.oa_grade, hip.onfh_grade, hip.ddh) == (0, 0, False)
        counts[str(hips[index].label_values()[TASK_COLUMN[task]])] += 1
    classes = TASK_CLASSES[task]
    assert set(counts) == set(classes)
    assert min(counts.values()) > 0.5 * n / len(classes), counts


def test_screening_task_has_contralateral_pathology_and_combinations() -> None:
    pairs = [sample_hips(np.random.default_rng([4, i]), task="screening")[0] for i in range(300)]
    combos = Counter(tuple(sorted(h.screening for h in hips.values())) for hips in pairs)
    assert sum(n for c, n in combos.items() if "normal" not in c) > 100
    assert combos[("osteoarthritis", "tha")] + combos[("internal_fixation", "osteonecrosis")] \
        + combos[("femoral_neck_fracture", "tha")] > 0
    assert len(combos) > 25


def test_task_views_and_ages() -> None:
    rng = np.random.default_rng(5)
    failure = [sample_views(rng, "failure")[1] for _ in range(200)]
    assert np.mean([len(v) > 1 and v[-1] in ("frog_leg", "cross_table_lateral")
                    for v in failure]) > 0.75
    onfh = {v for _ in range(200) for v in sample_views(rng, "onfh")[1]}
    assert onfh == {"ap_pelvis", "ap_hip"}
    ages = [sample_age(rng, {"R": HipSpec(), "L": HipSpec()}) for _ in range(400)]
    assert min(ages) < 18 and max(ages) > 80
    assert min(sample_age(rng, {"R": HipSpec("tha", failure="none"), "L": HipSpec()})
               for _ in range(200)) >= 20


def test_per_hip_overrides_imply_hardware_and_pick_the_index_side() -> None:
    study = make_study(2, 0, onfh_grade={"L": 3}, views=("ap_hip",), size=(200, 240))
    assert study.hips["L"].onfh_grade == 3 and study.hips["L"].native_head
    assert study.images[0].labels[0]["laterality"] == "L"
    study = make_study(2, 1, failure={"R": "dislocation"}, size=(200, 240))
    assert study.hips["R"].hardware in THA and study.hips["R"].dislocated
    study = make_study(2, 2, device={"R": "sliding_hip_screw"}, size=(200, 240))
    assert study.hips["R"].hardware == "dynamic_hip_screw"
    study = make_study(2, 3, hardware={"R": "no_hardware", "L": "tha"}, ddh={"R": True},
                       oa_grade={"R": 2}, fracture={"R": "femoral_neck_fracture"},
                       displaced={"R": True}, failure={"L": "loosening"}, size=(200, 240))
    r, left = study.hips["R"], study.hips["L"]
    assert (r.ddh, r.oa_grade, r.fracture, r.fracture_displaced) == (
        True, 2, "femoral_neck_fracture", True)
    assert left.failure == "loosening"


@pytest.mark.parametrize("task", TASKS)
def test_labels_csv_has_every_column_and_consistent_rows(tmp_path: Path, task: str) -> None:
    labels = generate_dataset(tmp_path, 3, 17, progress=False, size=(200, 260), task=task)
    with labels.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == LABEL_FIELDS
        rows = list(reader)
    assert rows
    for r in rows:
        assert r["renderer"] == "primary"
        hip = HipSpec(r["hardware"], r["fracture"], r["fracture_displaced"] == "1",
                      int(r["oa_grade"]), int(r["onfh_grade"]), r["ddh"] == "1", r["failure"],
                      r["device"])
        check_hip(r["laterality"], hip)
        assert r["screening"] == screening_class(hip) and r["screening"] in SCREENING_CLASSES
        assert r["failure"] in ("", *FAILURES) and r["device"] in ("", *DEVICE_KEYS)
        assert int(r["dislocation"]) == (r["failure"] == "dislocation")
        assert 12 <= int(r["age"]) <= 100
        if r["head_mask"]:
            assert hip.native_head
            mask = np.asarray(Image.open(tmp_path / r["head_mask"]))
            assert mask.dtype == np.uint8 and mask.shape == (int(r["rows"]), int(r["columns"]))
            assert set(np.unique(mask)) == {0, 255}
        elif hip.native_head:  # no mask only when the head is outside the image
            assert r["hip_x"] == "nan" or not (0 <= float(r["hip_x"]) < int(r["columns"]))
        else:
            assert not r["head_mask"]
