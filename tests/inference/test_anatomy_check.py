"""The whole-image anatomy check (inference/anatomy.py): its plumbing with models of known,
constant output, and the job path that turns a refusal into "not assessed" for every
pipeline. The shipped demo weights are checked in test_anatomy_acceptance.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hiprouter.inference.anatomy import AnatomyCheck
from hiprouter.inference.models import ModelCard, ModelError, create_model, save_model
from hiprouter.training.anatomy import ANATOMY_CLASSES

from .helpers import make_radiograph


def anatomy_model(folder: Path, favoured: str, min_probability: float | None = 0.2,
                  label_set: str = "anatomy",
                  classes: tuple[str, ...] = ANATOMY_CLASSES) -> Path:
    """An anatomy model that always answers `favoured` (p ~ 0.86): zero weights, a biased
    head. Plumbing only. The same `favoured` gives the same weights file (fixed seed), so
    the tests share one ONNX export per answer (the cache is keyed by the weights' sha256)."""
    import torch

    torch.manual_seed(0)
    module = create_model("resnet10t", len(classes), widths=(8, 8, 16, 16))
    head = module.get_classifier()
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([4.0 if k == favoured else 0.0 for k in classes]))
    card = ModelCard(name=f"anatomy-constant-{favoured}", version="0.0.1",
                     architecture="resnet10t", input_size=48, label_set=label_set,
                     classes=list(classes),
                     parameters={"widths": [8, 8, 16, 16], "channels": ["grey"]},
                     training_data="none (constant output for tests)", synthetic_demo=True,
                     abstention={} if min_probability is None
                     else {"min_probability": min_probability})
    save_model(module, card, folder)
    return folder


def pelvis_dataset(seed: int = 0):  # noqa: ANN201
    rng = np.random.default_rng(seed)
    return make_radiograph(rng.normal(1500, 300, (120, 160)).clip(0, 4095),
                           SeriesDescription="AP PELVIS", BodyPartExamined="PELVIS")


def test_stage_widths_come_from_the_card(tmp_path: Path) -> None:
    from hiprouter.inference.models import load_model

    loaded = load_model(anatomy_model(tmp_path / "m", "hip"))
    assert loaded.module.get_classifier().in_features == 16
    with pytest.raises(ModelError, match="stage widths"):
        create_model("regnetx_002", 3, widths=(8, 8, 16, 16))


def test_refuses_an_image_the_model_calls_a_chest(tmp_path: Path) -> None:
    check = AnatomyCheck.from_dir(anatomy_model(tmp_path / "m", "chest"), device="cpu")
    verdict = check.assess([np.full((100, 80), 0.5, np.float32)])[0]
    assert verdict.refused and verdict.hip < 0.2
    assert verdict.probabilities["chest"] > 0.7
    assert "looks like a chest radiograph" in verdict.reason
    assert "below 0.20" in verdict.reason and "anatomy-constant-chest 0.0.1" in verdict.reason


def test_passes_an_image_the_model_calls_a_hip(tmp_path: Path) -> None:
    check = AnatomyCheck.from_dir(anatomy_model(tmp_path / "m", "hip"), device="cpu")
    verdict = check.assess([np.full((100, 80), 0.5, np.float32)])[0]
    assert not verdict.refused and verdict.reason is None and verdict.hip > 0.7


def test_threshold_from_the_config_overrides_the_card(tmp_path: Path) -> None:
    folder = anatomy_model(tmp_path / "m", "hip")  # p(hip) + p(pelvis) ~ 0.87
    image = np.full((64, 64), 0.5, np.float32)
    assert not AnatomyCheck.from_dir(folder, device="cpu").assess([image])[0].refused
    strict = AnatomyCheck.from_dir(folder, min_probability=0.9, device="cpu")
    verdict = strict.assess([image])[0]
    assert verdict.refused and "below 0.90" in verdict.reason


def test_refuses_models_that_are_not_anatomy_models(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="anatomy check needs"):
        AnatomyCheck.from_dir(anatomy_model(tmp_path / "a", "hip", label_set="hardware"),
                              device="cpu")
    with pytest.raises(ModelError, match="min_probability"):
        AnatomyCheck.from_dir(anatomy_model(tmp_path / "b", "hip", min_probability=None),
                              device="cpu")


def _settings(model: Path | None, enabled: bool = True):  # noqa: ANN202
    from hiprouter.config import Settings

    return Settings.model_validate({
        "inference": {"anatomy_check": {"enabled": enabled,
                                        "model": str(model) if model else None}},
        "pipelines": {"hardware": {"kind": "hardware", "device": "cpu", "heatmaps": False},
                      "fracture": {"kind": "fracture", "device": "cpu", "heatmaps": False}}})


def test_refused_image_is_not_assessed_by_every_pipeline(tmp_path: Path) -> None:
    from hiprouter.pipelines.registry import PipelineSet
    from hiprouter.pipelines.runner import analyse_study

    pipes = PipelineSet(_settings(anatomy_model(tmp_path / "m", "knee")))
    ds = pelvis_dataset()
    findings, images = analyse_study(pipes, ["hardware", "fracture"],
                                     str(ds.StudyInstanceUID), [ds])
    uid = str(ds.SOPInstanceUID)
    assert images == {}
    for result in findings.results:
        assert result.findings == []
        assert "looks like a knee radiograph" in result.not_assessed[uid]
    assert "knee radiograph" in findings.not_assessed()[uid]


def test_accepted_image_reaches_the_pipelines(tmp_path: Path) -> None:
    from hiprouter.pipelines.registry import PipelineSet
    from hiprouter.pipelines.runner import analyse_study

    pipes = PipelineSet(_settings(anatomy_model(tmp_path / "m", "hip")))
    ds = pelvis_dataset()
    findings, images = analyse_study(pipes, ["hardware"], str(ds.StudyInstanceUID), [ds])
    assert list(images) == [str(ds.SOPInstanceUID)]
    assert {f.laterality for f in findings.results[0].findings} == {"R", "L"}


def _untagged(seed: int = 1, pixels: np.ndarray | None = None, **tags: str):  # noqa: ANN202
    """A radiograph whose headers name no view (no body part, no descriptions)."""
    if pixels is None:
        pixels = np.random.default_rng(seed).normal(1500, 300, (120, 160)).clip(0, 4095)
    return make_radiograph(pixels, **tags)


def test_untagged_image_the_check_sees_as_a_pelvis_is_read_per_hip(tmp_path: Path) -> None:
    """No view in the headers: without the check it is one crop of unknown side; with a
    check that sees an AP pelvis, two hips (R on the image's left), marked as read from the
    image, and every pipeline reports them per side."""
    from hiprouter.inference.laterality import classify_view
    from hiprouter.inference.study import StudyInput
    from hiprouter.pipelines.registry import PipelineSet
    from hiprouter.pipelines.runner import analyse_study

    ds = _untagged()
    assert classify_view(ds) == "unknown"
    study = StudyInput.from_datasets(str(ds.StudyInstanceUID), [ds], ("CR", "DX"))
    image = study.images[str(ds.SOPInstanceUID)]
    assert [c.laterality for c in image.crops] == ["U"] and not image.view_from_image
    study.check_anatomy(AnatomyCheck.from_dir(anatomy_model(tmp_path / "p", "pelvis"),
                                              device="cpu"))
    assert image.view == "ap_pelvis" and image.view_from_image
    assert [(c.laterality, c.box) for c in image.crops] == [("R", (0, 0, 120, 80)),
                                                             ("L", (0, 80, 120, 160))]
    pipes = PipelineSet(_settings(tmp_path / "p"))
    findings, _ = analyse_study(pipes, ["hardware"], str(ds.StudyInstanceUID), [ds])
    result = findings.results[0]
    assert {f.laterality for f in result.findings} == {"R", "L"}
    assert all("view read from the image" in f.qualifiers["views"] for f in result.findings)


def test_every_kind_marks_a_view_read_from_the_image(tmp_path: Path) -> None:
    """One `views` qualifier for every kind (classifier, ONFH, prosthesis failure): each
    view named once, marked where the check read it from the image."""
    from hiprouter.inference.study import StudyInput
    from hiprouter.pipelines.base import views_qualifier

    untagged, tagged = _untagged(6), _untagged(7, SeriesDescription="AP PELVIS")
    study = StudyInput.from_datasets("1.2.3.6", [untagged, tagged], ("CR", "DX"))
    study.check_anatomy(AnatomyCheck.from_dir(anatomy_model(tmp_path / "p", "pelvis"),
                                              device="cpu"))
    crops = study.crops()
    assert len(crops) == 4
    assert views_qualifier(study, crops, " + ") == (
        "AP pelvis (view read from the image; the image's own headers name none) + AP pelvis")
    assert views_qualifier(study, crops[2:]) == "AP pelvis"


def test_the_headers_view_wins_over_the_image(tmp_path: Path) -> None:
    from hiprouter.inference.study import StudyInput

    check = AnatomyCheck.from_dir(anatomy_model(tmp_path / "p", "pelvis"), device="cpu")
    hip = _untagged(2, SeriesDescription="RIGHT HIP AP")  # a single-hip view by its tags
    single = _untagged(3)
    study = StudyInput.from_datasets("1.2.3", [hip, single], ("CR", "DX"))
    study.check_anatomy(AnatomyCheck.from_dir(anatomy_model(tmp_path / "h", "hip"),
                                              device="cpu"))
    assert study.images[str(single.SOPInstanceUID)].view == "unknown"  # a single hip: unknown
    study.check_anatomy(check)
    tagged = study.images[str(hip.SOPInstanceUID)]
    assert tagged.view == "ap_hip" and [c.laterality for c in tagged.crops] == ["R"]
    assert not tagged.view_from_image


def test_study_words_yield_to_the_image(tmp_path: Path) -> None:
    """Only the study's description names a view: a "RIGHT HIP" study's AP pelvis image is
    read as two hips, a "PELVIS AND RIGHT HIP" study's single-hip image as one hip (the
    right, from the words); with a check that agrees with the words nothing changes."""
    from hiprouter.inference.laterality import view_evidence
    from hiprouter.inference.study import StudyInput

    pelvis_check = AnatomyCheck.from_dir(anatomy_model(tmp_path / "p", "pelvis"),
                                         device="cpu")
    hip_check = AnatomyCheck.from_dir(anatomy_model(tmp_path / "h", "hip"), device="cpu")
    in_hip_study = _untagged(4, StudyDescription="XR RIGHT HIP 2 VIEWS")
    assert view_evidence(in_hip_study) == ("ap_hip", "study")
    study = StudyInput.from_datasets("1.2.3.4", [in_hip_study], ("CR", "DX"))
    image = study.images[str(in_hip_study.SOPInstanceUID)]
    assert [c.laterality for c in image.crops] == ["R"] and image.view_source == "study"
    study.check_anatomy(hip_check)  # agrees: unchanged
    assert image.view == "ap_hip" and not image.view_from_image
    study.check_anatomy(pelvis_check)
    assert image.view == "ap_pelvis" and image.view_from_image
    assert [c.laterality for c in image.crops] == ["R", "L"]

    in_pelvis_study = _untagged(5, StudyDescription="PELVIS AND RIGHT HIP")
    assert view_evidence(in_pelvis_study) == ("ap_pelvis", "study")
    study = StudyInput.from_datasets("1.2.3.5", [in_pelvis_study], ("CR", "DX"))
    image = study.images[str(in_pelvis_study.SOPInstanceUID)]
    assert len(image.crops) == 2
    study.check_anatomy(hip_check)
    assert image.view == "unknown" and image.view_from_image
    assert [(c.laterality, c.box) for c in image.crops] == [("R", (0, 0, 120, 160))]


def test_evaluate_cuts_an_untagged_image_as_a_job_does(tmp_path: Path) -> None:
    """`hiprouter evaluate` (labelled crops and the OOD path) reads an image whose tags name
    no view by the view the check names, as a job does: an untagged AP pelvis labelled R
    and L gives two different half-image crops, not the whole image twice; crops cut with
    and without the check are cached apart; tagged images are cut by their tags."""
    from hiprouter.training.dataset import LabelledHip, load_crops
    from hiprouter.training.evaluate import assess_files

    pelvis_check = AnatomyCheck.from_dir(anatomy_model(tmp_path / "p", "pelvis"),
                                         device="cpu")
    hip_check = AnatomyCheck.from_dir(anatomy_model(tmp_path / "h", "hip"), device="cpu")
    data = tmp_path / "data"
    data.mkdir()
    pixels = np.zeros((120, 160))
    pixels[:, :80] = np.linspace(0, 4000, 120)[:, None]  # the halves differ
    _untagged(pixels=pixels).save_as(data / "untagged.dcm", enforce_file_format=True)
    rows = [LabelledHip("untagged.dcm", "1.2", "P", side, "none") for side in ("R", "L")]
    cache = tmp_path / "cache"

    whole, used, _ = load_crops(rows, data, 32, cache)
    assert used == [0, 1] and np.array_equal(whole[0], whole[1])  # the whole image, twice
    split, used, _ = load_crops(rows, data, 32, cache, anatomy=pelvis_check)
    assert used == [0, 1] and not np.array_equal(split[0], split[1])
    assert split[0].mean() > split[1].mean()  # R is on the image's left, the bright half
    again, _, _ = load_crops(rows, data, 32, cache)  # the check's crops are cached apart
    assert np.array_equal(again, whole)
    same, _, _ = load_crops(rows, data, 32, cache, anatomy=hip_check)  # a single hip: as before
    assert np.array_equal(same, whole)

    _untagged(pixels=pixels, SeriesDescription="RIGHT HIP AP").save_as(
        data / "tagged.dcm", enforce_file_format=True)
    tagged = [LabelledHip("tagged.dcm", "1.3", "P", "R", "none")]
    by_tags, _, _ = load_crops(tagged, data, 32, None)
    with_check, _, _ = load_crops(tagged, data, 32, None, anatomy=pelvis_check)
    assert np.array_equal(by_tags, with_check)  # the tags' single hip wins

    files = [data / "untagged.dcm", data / "tagged.dcm"]
    hips = [(Path(r["path"]).name, r["hip"], r["view"])
            for r in assess_files(hip_check.classifier, files, anatomy=pelvis_check)]
    assert hips == [("untagged.dcm", "R", "ap_pelvis"), ("untagged.dcm", "L", "ap_pelvis"),
                    ("tagged.dcm", "R", "ap_hip")]
    from hiprouter.training.evaluate import anatomy_figures

    figures = anatomy_figures(pelvis_check, files)  # the report counts the image
    assert figures["views_from_image"] == {"ap_pelvis": 1} and figures["not_assessed"] == 0
    assert anatomy_figures(hip_check, files)["views_from_image"] == {}
    from hiprouter.training.evaluate import views_from_image_text

    assert views_from_image_text(figures["views_from_image"]) == (
        "view read from the image (the headers name none): 1 image read as an AP pelvis "
        "(two hips)")


def test_a_card_without_the_pelvis_class_names_no_view(tmp_path: Path) -> None:
    """Cards up to anatomy-demo 0.2.0 have one "hip" class for every view."""
    old = tuple(c for c in ANATOMY_CLASSES if c != "pelvis")
    check = AnatomyCheck.from_dir(anatomy_model(tmp_path / "m", "hip", classes=old),
                                  device="cpu")
    verdict = check.assess([np.full((64, 64), 0.5, np.float32)])[0]
    assert not verdict.refused and verdict.view is None and verdict.hip > 0.8
    pelvis = AnatomyCheck.from_dir(anatomy_model(tmp_path / "p", "pelvis"), device="cpu")
    verdict = pelvis.assess([np.full((64, 64), 0.5, np.float32)])[0]
    assert verdict.view == "ap_pelvis" and verdict.hip > 0.8


def test_disabled_check_loads_no_model(tmp_path: Path) -> None:
    from hiprouter.pipelines.registry import PipelineSet

    pipes = PipelineSet(_settings(tmp_path / "does-not-exist", enabled=False))
    assert pipes.anatomy_check() is None
    with pytest.raises(ModelError):
        PipelineSet(_settings(tmp_path / "does-not-exist")).anatomy_check()


def test_relative_model_path_resolves_against_the_config_file(tmp_path: Path) -> None:
    from hiprouter.config import load_settings

    cfg = tmp_path / "config.yaml"
    cfg.write_text("inference:\n  anatomy_check:\n    model: models/anatomy\n")
    settings = load_settings(cfg)
    assert settings.inference.anatomy_check.model == tmp_path / "models" / "anatomy"


def test_check_anatomy_command_prints_a_row_per_file(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hiprouter.cli import main

    model = anatomy_model(tmp_path / "m", "hand")
    (tmp_path / "films").mkdir()
    pelvis_dataset().save_as(tmp_path / "films" / "a.dcm", enforce_file_format=True)
    (tmp_path / "films" / "broken.dcm").write_bytes(b"not DICOM at all")
    pelvis_dataset().save_as(tmp_path / "films" / "IM2", enforce_file_format=True)  # no suffix
    (tmp_path / "films" / "mask.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # not listed
    res = CliRunner().invoke(main, ["check-anatomy", str(tmp_path / "films"),
                                    "--model", str(model)])
    assert res.exit_code == 0, res.output
    rows = res.output.strip().splitlines()
    assert rows[0] == ",".join(["file", "verdict", *ANATOMY_CLASSES, "reason"])
    by_file = {r.split(",")[0].rsplit("/", 1)[-1]: r for r in rows[1:]}
    assert ",not assessed," in by_file["a.dcm"] and "hand radiograph" in by_file["a.dcm"]
    assert ",not decodable," in by_file["broken.dcm"]
    assert set(by_file) == {"a.dcm", "broken.dcm", "IM2"}
