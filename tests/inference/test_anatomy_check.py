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
                  label_set: str = "anatomy") -> Path:
    """An anatomy model that always answers `favoured` (p ~ 0.8): zero weights, a biased
    head. Plumbing only."""
    import torch

    module = create_model("resnet10t", len(ANATOMY_CLASSES), widths=(8, 8, 16, 16))
    head = module.get_classifier()
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([3.0 if k == favoured else 0.0 for k in ANATOMY_CLASSES]))
    card = ModelCard(name=f"anatomy-constant-{favoured}", version="0.0.1",
                     architecture="resnet10t", input_size=48, label_set=label_set,
                     classes=list(ANATOMY_CLASSES),
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
    folder = anatomy_model(tmp_path / "m", "hip")  # p(hip) ~ 0.80
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
