"""`train_anatomy` and `hiprouter train-anatomy` end to end on a tiny data set (a few steps:
the recipe's plumbing, the card and the threshold, not the model's quality)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hiprouter.training.anatomy import (
    ANATOMY_CLASSES,
    MAX_MIN_PROBABILITY,
    choose_min_probability,
    image_class,
    read_images,
    refusal_rates,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from hiprouter.synth.ood import generate_ood_dataset
    from tests.inference.helpers import toy_dataset

    root = tmp_path_factory.mktemp("anatomy-data")
    toy_dataset(root / "hips", 6, ["no_hardware", "tha"])
    generate_ood_dataset(root / "ood", 1, seed=77)
    return root / "hips", root / "ood"


def test_classes_of_labels_rows() -> None:
    assert image_class({"ood_kind": "chest_pa"}) == "chest"
    assert image_class({"ood_kind": "photo_mono"}) == "other"
    assert image_class({"ood_kind": "", "hardware": "tha"}) == "hip"
    assert image_class({"ood_kind": "", "view": "frog_leg"}) == "hip"
    assert image_class({"ood_kind": "", "view": "ap_pelvis"}) == "pelvis"
    with pytest.raises(ValueError, match="unknown ood_kind"):
        image_class({"ood_kind": "elbow"})


def test_threshold_keeps_the_chosen_fraction_of_hips() -> None:
    p = np.linspace(0.0, 1.0, 1001)
    assert choose_min_probability(p, keep=0.99) == pytest.approx(0.01, abs=1e-9)
    assert choose_min_probability(np.full(10, 0.99), keep=0.99) == MAX_MIN_PROBABILITY  # capped
    assert choose_min_probability(np.full(10, 0.99), keep=0.99, cap=0.3) == 0.3
    k = {c: i for i, c in enumerate(ANATOMY_CLASSES)}

    def row(**p: float) -> list[float]:
        return [p.get(c, 0.0) for c in ANATOMY_CLASSES]

    probs = np.array([row(hip=0.9, chest=0.1), row(hip=0.03, pelvis=0.07, chest=0.9),
                      row(hip=0.05, chest=0.95), row(hip=0.05, pelvis=0.6, chest=0.35)])
    rates = refusal_rates(probs, np.array([k["hip"], k["chest"], k["chest"], k["pelvis"]]),
                          0.08)
    assert rates["hip"] == {"images": 1, "not_assessed": 0.0, "accuracy": 1.0}
    # P(hip) + P(pelvis) is what the threshold reads: 0.10 passes, 0.05 is refused
    assert rates["chest"] == {"images": 2, "not_assessed": 0.5, "accuracy": 1.0}
    assert rates["pelvis"] == {"images": 1, "not_assessed": 0.0, "accuracy": 1.0}


def test_read_images_one_row_per_image(folders: tuple[Path, Path]) -> None:
    hips, ood = folders
    items = read_images([hips, ood])
    classes = [c for _, c in items]
    assert classes.count("pelvis") == 6  # AP pelvis: two rows (hips) per image, one item
    assert {"chest", "knee", "hand", "child_pelvis", "other"} <= set(classes)


def test_train_writes_a_card_the_check_loads(folders: tuple[Path, Path], tmp_path: Path
                                             ) -> None:
    from click.testing import CliRunner

    from hiprouter.cli import main
    from hiprouter.inference.anatomy import AnatomyCheck
    from hiprouter.inference.models import read_card, verify_weights

    hips, ood = folders
    out = tmp_path / "anatomy"
    res = CliRunner().invoke(main, [
        "train-anatomy", str(hips), str(ood), "--val", str(hips), "--val", str(ood),
        "--out", str(out), "--input-size", "32", "--widths", "8,8,16,16", "--epochs", "1",
        "--batch-size", "4", "--max-steps", "2", "--workers", "0", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "not decodable as radiographs (skipped)" in res.output  # the RGB photo
    card = read_card(out)
    assert verify_weights(out, card)
    assert card.label_set == "anatomy" and card.classes == list(ANATOMY_CLASSES)
    assert card.parameters["widths"] == [8, 8, 16, 16] and card.synthetic_demo
    assert 0 <= card.abstention["min_probability"] <= 0.2
    assert card.calibration["temperature"] >= 1.0
    assert card.evaluation["validation"]["pelvis"]["images"] == 6  # toy AP pelvis studies
    check = AnatomyCheck.from_dir(out, device="cpu")
    verdict = check.assess([np.full((50, 70), 0.4, np.float32)])[0]
    assert set(verdict.probabilities) == set(ANATOMY_CLASSES)
    assert sum(verdict.probabilities.values()) == pytest.approx(1.0, abs=1e-4)


def test_train_refuses_bad_widths(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    from click.testing import CliRunner

    from hiprouter.cli import main

    res = CliRunner().invoke(main, ["train-anatomy", str(folders[0]), "--val",
                                    str(folders[0]), "--out", str(tmp_path / "x"),
                                    "--widths", "8,a"])
    assert res.exit_code != 0 and "--widths" in res.output


def test_anatomy_augmentation_keeps_range_and_padding() -> None:
    """The anatomy preset's scatter and equalisation change the tone inside the image and
    leave the letterbox padding at 0, values in [0, 1]."""
    import torch

    from hiprouter.training.augment import Augment, preset

    torch.manual_seed(0)
    x = torch.zeros(1, 64, 64)
    x[:, 8:56, :] = torch.linspace(0.1, 0.9, 64)  # a ramp, padding above and below
    aug = Augment({**preset("anatomy"), "rotation_deg": 0.0, "zoom": 0.0, "translate": 0.0,
                   "perspective": 0.0, "flip_p": 0.0, "scatter_p": 1.0, "equalize_p": 0.0,
                   "noise_p": 0.0, "jpeg_p": 0.0, "blur_p": 0.0, "lowres_p": 0.0})
    outs = [aug(x) for _ in range(8)]
    for y in outs:
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert float(y[:, :8].abs().max()) == 0.0 and float(y[:, 56:].abs().max()) == 0.0
    # scatter flattens the ramp: its spread shrinks in some draws
    spreads = [float(y[0, 32, 10:54].max() - y[0, 32, 10:54].min()) for y in outs]
    assert min(spreads) < 0.9 * float(x[0, 32, 10:54].max() - x[0, 32, 10:54].min())
    eq = Augment({**preset("none"), "equalize_p": 1.0, "flip_p": 0.0})
    assert float(eq(x)[:, :8].abs().max()) == 0.0
