"""A small ONFH model fitted inside the tests, and synthetic studies with chosen grades.

`tiny_onfh_model` runs the real training code (segmentation, then the normative model)
with small networks on a few dozen small synthetic AP pelvis studies rendered with neutral
processing, seeded, on one CPU thread: deterministic, about a minute, no shipped weights
involved. It is a plumbing model: good enough to find the heads and to put a grade-3 head
farther from the healthy ones than a healthy head, not a claim about accuracy.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from hiprouter.synth.study import make_study

SIZE = (288, 320)
FIELDS = ["path", "study_uid", "patient_id", "view", "laterality", "hardware", "onfh_grade",
          "head_mask"]
_MODELS: dict[str, Path] = {}


def onfh_study(seed: int, index: int, grades: dict[str, int],
               hardware: dict[str, str] | None = None, views: tuple[str, ...] = ("ap_pelvis",),
               size: tuple[int, int] = SIZE, plain: bool = True):  # type: ignore[no-untyped-def]
    """A synthetic study with the given ONFH grades per hip (``{"R": 0, "L": 3}``)."""
    hardware = hardware or {"R": "no_hardware", "L": "no_hardware"}
    native = {s: g for s, g in grades.items() if hardware.get(s, "no_hardware") in (
        "no_hardware",)}
    return make_study(seed, index, task="onfh", hardware=hardware, onfh_grade=native or None,
                      oa_grade={s: 0 for s in native} or None, views=views, size=size,
                      plain=plain)


def write_heads_dataset(folder: Path, studies: int, seed: int = 77) -> Path:
    """AP pelvis studies with grades drawn per hip (healthy more often); labels.csv."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(studies):
        grades = {s: int(rng.choice([0, 0, 0, 1, 2, 3, 4])) for s in ("R", "L")}
        study = onfh_study(seed, index, grades)
        sub = folder / f"S{index:04d}"
        sub.mkdir(exist_ok=True)
        for n, img in enumerate(study.images, start=1):
            img.dataset.save_as(sub / f"IM{n}.dcm", enforce_file_format=True)
            for label in img.labels:
                side = str(label["laterality"])
                mask = img.head_masks.get(side)
                name = ""
                if mask is not None:
                    name = f"{sub.name}/IM{n}_head_{side}.png"
                    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / name)
                rows.append({"path": f"{sub.name}/IM{n}.dcm", "study_uid": label["study_uid"],
                             "patient_id": label["patient_id"], "view": label["view"],
                             "laterality": side, "hardware": label["hardware"],
                             "onfh_grade": label["onfh_grade"], "head_mask": name})
    labels = folder / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return labels


def tiny_configs():  # type: ignore[no-untyped-def]
    from hiprouter.training.normative import NormativeConfig
    from hiprouter.training.segmentation import SegmentationConfig

    seg = SegmentationConfig(locator_size=48, locator_widths=[8, 16, 32], refiner_size=48,
                             refiner_widths=[8, 16, 32], windows_per_head=3, epochs=30,
                             batch_size=8, lr=5e-3, threads=1, name="onfh-seg-test",
                             version="0.0.1", synthetic_demo=True)
    norm = NormativeConfig(patch_size=32, latent_dim=4, widths=[8, 16, 32], epochs=120,
                           batch_size=16, lr=3e-3, threads=1, name="onfh-test",
                           version="0.0.1", synthetic_demo=True)
    return seg, norm


def tiny_onfh_model(root: Path, studies: int = 40) -> Path:
    """The fitted plumbing model (built once per test session)."""
    key = str(studies)
    if key in _MODELS and (_MODELS[key] / "card.yaml").is_file():
        return _MODELS[key]
    import warnings

    import torch

    from hiprouter.training.normative import train_normative
    from hiprouter.training.segmentation import train_segmentation

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = root / "heads"
        labels = write_heads_dataset(data, studies)
        seg_cfg, norm_cfg = tiny_configs()
        quiet = lambda *_: None  # noqa: E731
        with warnings.catch_warnings():  # few patients per grade for 10 stratified folds
            warnings.simplefilter("ignore", UserWarning)
            train_segmentation(data, labels, root / "seg", seg_cfg, log=quiet)
            train_normative(data, labels, root / "onfh", root / "seg", norm_cfg, log=quiet,
                            n_boot=50)
    finally:
        torch.set_num_threads(threads)
    _MODELS[key] = root / "onfh"
    return root / "onfh"
