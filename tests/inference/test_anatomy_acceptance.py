"""Acceptance of the shipped anatomy-check demo weights on images generated afresh (seeds
never used in training): hip studies of both renderers pass; chest, knee, hand, shoulder,
lumbar spine and skull films and a child's pelvis whose headers claim an adult AP pelvis are
not assessed, by every pipeline.

The floors sit well below the figures measured on the held-out sets (docs/validation.md,
"Anatomy check"), so they catch broken, swapped or untrained weights, not sampling noise."""

from __future__ import annotations

from pathlib import Path

import pytest

from hiprouter.inference.models import demo_model_dir

DEMO = demo_model_dir("anatomy")


@pytest.fixture(scope="module")
def check():  # noqa: ANN201
    from hiprouter.inference.anatomy import AnatomyCheck

    return AnatomyCheck.from_dir(DEMO, device="cpu")


def _pixels(path: Path):  # noqa: ANN202
    from hiprouter.inference.decode import RADIOGRAPH_MODALITIES, decode_file

    return decode_file(path, RADIOGRAPH_MODALITIES)[1].pixels


def test_shipped_card(check) -> None:  # noqa: ANN001
    from hiprouter.inference.models import read_card, verify_weights

    card = read_card(DEMO)
    assert verify_weights(DEMO, card) and card.synthetic_demo
    assert (DEMO / card.weights_file).stat().st_size <= 4 * 1024 * 1024
    assert card.label_set == "anatomy" and card.classes[0] == "hip"
    assert 0 < card.abstention["min_probability"] <= 0.2
    assert card.calibration["ece_after"] <= card.calibration["ece_before"]
    assert check.min_probability == card.abstention["min_probability"]


@pytest.mark.parametrize("renderer", ["primary", "alt"])
def test_fresh_hip_studies_pass(check, renderer: str, tmp_path: Path) -> None:  # noqa: ANN001
    if renderer == "primary":
        from hiprouter.synth.study import generate_dataset

        generate_dataset(tmp_path, 8, seed=6161, progress=False, size=(500, 640))
    else:
        from hiprouter.synth.alt.study import generate_alt_dataset

        generate_alt_dataset(tmp_path, 8, seed=6161, task="hardware", size=(500, 640),
                             progress=False)
    images = sorted(tmp_path.rglob("*.dcm"))
    assert len(images) >= 8
    verdicts = check.assess([_pixels(p) for p in images])
    refused = [str(p.relative_to(tmp_path)) for p, v in zip(images, verdicts, strict=True)
               if v.refused]
    assert len(refused) <= 1, refused
    # the view it names (used when the headers name none): AP pelvis or a single hip
    import csv

    with (tmp_path / "labels.csv").open(newline="") as fh:
        views = {r["path"]: r["view"] for r in csv.DictReader(fh)}
    named = [(views[str(p.relative_to(tmp_path))] == "ap_pelvis", v.view == "ap_pelvis")
             for p, v in zip(images, verdicts, strict=True) if not v.refused]
    assert sum(truth for truth, _ in named) >= 2 and sum(not t for t, _ in named) >= 2
    wrong = sum(truth != said for truth, said in named)
    assert wrong <= max(1, len(named) // 10), named


@pytest.mark.parametrize("kind", ["chest_pa", "knee_ap", "hand_pa", "child_pelvis",
                                  "shoulder_ap", "spine_lat", "skull_lat"])
def test_other_body_parts_claimed_as_a_pelvis_are_not_assessed(check, kind: str  # noqa: ANN001
                                                               ) -> None:
    from hiprouter.inference.decode import decode
    from hiprouter.synth.ood import claim_ap_pelvis, make_ood_image

    images = [decode(claim_ap_pelvis(make_ood_image(kind, 9200 + n)), ("CR", "DX")).pixels
              for n in range(4)]
    verdicts = check.assess(images)
    assert sum(v.refused for v in verdicts) >= 3, [round(v.hip, 3) for v in verdicts]
    looks = {"chest_pa": "chest", "knee_ap": "knee", "hand_pa": "hand",
             "child_pelvis": "child", "shoulder_ap": "shoulder", "spine_lat": "spine",
             "skull_lat": "skull"}[kind]
    assert any(looks in (v.reason or "") for v in verdicts)


def test_a_chest_claimed_as_a_pelvis_is_not_assessed_by_any_pipeline() -> None:
    """The job path with the bundled model: every pipeline's result says not assessed,
    with the anatomy check's reason; no hip gets a finding."""
    from hiprouter.config import Settings
    from hiprouter.pipelines.registry import PipelineSet
    from hiprouter.pipelines.runner import analyse_study
    from hiprouter.synth.ood import claim_ap_pelvis, make_ood_image

    settings = Settings.model_validate({
        "inference": {"anatomy_check": {"enabled": True}},
        "pipelines": {"hardware": {"kind": "hardware", "device": "cpu", "heatmaps": False},
                      "screening": {"kind": "screening", "device": "cpu",
                                    "heatmaps": False}}})
    ds = claim_ap_pelvis(make_ood_image("chest_pa", 9300))
    findings, images = analyse_study(PipelineSet(settings), ["hardware", "screening"],
                                     str(ds.StudyInstanceUID), [ds])
    assert images == {}
    assert all(r.findings == [] for r in findings.results)
    reason = findings.not_assessed()[str(ds.SOPInstanceUID)]
    assert "not a hip or pelvis radiograph" in reason and "chest" in reason
    # the PACS still gets an SR saying so (and no triage flag)
    from hiprouter.report.build import build_report

    bundle = build_report(findings.reported(), [ds], {}, settings.report,
                          {n: settings.pipelines[n].triage for n in ("hardware", "screening")})
    assert bundle.sr is not None and bundle.left_out == [] and bundle.priority == "ROUTINE"
    assert reason in bundle.text.impression
