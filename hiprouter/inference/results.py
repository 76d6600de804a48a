"""What inference hands to reporting: per-hip results with heat maps per source image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Laterality = Literal["R", "L", "U"]  # right, left, unknown (never guessed)


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the model (or ensemble) that produced a result; from its model card."""

    name: str
    version: str
    architecture: str
    device_uid: str
    """Changes whenever the weights change (derived from the weights' sha256)."""
    manufacturer: str = "hiprouter project"
    synthetic_demo: bool = True
    """True for weights trained on synthetic radiographs: outputs must say so."""


@dataclass
class ImageHeatmap:
    """A CAM heat map mapped back onto one source radiograph's full geometry.

    For an AP pelvis split into two hips, each hip's map sits in its half of the image.
    """

    sop_instance_uid: str
    heatmap: np.ndarray
    """float32 in [0, 1], shape (Rows, Columns) of the source image."""
    display_image: np.ndarray
    """uint8 greyscale rendering of the source (VOI/window applied, MONOCHROME2), same shape."""


@dataclass
class HipResult:
    """The fused result for one hip of one study (all views of that hip)."""

    laterality: Laterality
    predicted_class: str
    """Key of a FindingClass in classes.py."""
    probability: float
    probabilities: dict[str, float]
    source_sop_uids: list[str]
    latency_ms: float = 0.0


@dataclass
class StudyResult:
    """Everything one pipeline concluded about one study."""

    study_uid: str
    pipeline: str
    model: ModelInfo
    hips: list[HipResult]
    heatmaps: list[ImageHeatmap] = field(default_factory=list)
    """One per source radiograph used."""
    refused: dict[str, str] = field(default_factory=dict)
    """SOP Instance UID -> reason, for images that could not be used."""
