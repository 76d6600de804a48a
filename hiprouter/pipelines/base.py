"""The pipeline contract: what a pipeline kind declares and what it returns.

A pipeline kind is a subclass of `PipelineKind` registered through the entry-point group
``hiprouter.pipelines`` (see registry.py). It declares

- ``Options``: a pydantic model of its own settings (the keys of its ``pipelines.<name>``
  block besides the common ones), validated at start-up with errors naming the key;
- ``vocabulary()``: its classes (codes, display names, which are negative, triage meaning),
  from the kind or its model card;
- ``inputs``: which views it reads and whether it works per hip or per image;
- ``default_runs_on``: for a cascade, which findings of which pipeline it runs on (the
  config's ``runs_on`` overrides it).

``run(study, targets)`` returns a `PipelineResult` of findings. It never writes files: the
report stage builds every DICOM object of the study from all pipelines' findings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo

from hiprouter.config import RunsOn
from hiprouter.findings import (
    Box,
    CropMap,
    Finding,
    HeatMap,
    Laterality,
    ModelInfo,
    PipelineResult,
    Vocabulary,
)
from hiprouter.inference.laterality import HipCrop
from hiprouter.inference.study import StudyInput


def _resolve_against_config(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    return path if path.is_absolute() or base is None else Path(base) / path


ConfigPath = Annotated[Path, AfterValidator(_resolve_against_config)]
"""A path in a pipeline's options; relative paths resolve against the config file's folder."""


class PipelineOptions(BaseModel):
    """Base of every kind's options model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


@dataclass(frozen=True)
class Inputs:
    """What a kind reads."""

    views: frozenset[str] | None = None
    """Views it assesses (ap_pelvis, ap_hip, frog_leg, cross_table_lateral); None: all."""
    level: Literal["hip", "image"] = "hip"


VIEW_NAMES = {"ap_pelvis": "AP pelvis", "ap_hip": "AP hip", "frog_leg": "frog-leg lateral",
              "cross_table_lateral": "cross-table lateral", "unknown": "unknown view"}
"""View key -> how reports and reasons name it."""


def views_qualifier(study: StudyInput, crops: Iterable[tuple[str, HipCrop]],
                    separator: str = ", ") -> str:
    """The `views` qualifier of a finding read from `crops` (SOP Instance UID, crop): each
    view named once, in order, marked where it was read from the image (its own headers
    naming none)."""
    names = [VIEW_NAMES[crop.view] + (" (view read from the image; the image's own headers "
                                      "name none)" if study.images[uid].view_from_image else "")
             for uid, crop in crops]
    return separator.join(dict.fromkeys(names))


def crop_heat_maps(study: StudyInput,
                   crop_maps: Iterable[tuple[str, HipCrop, np.ndarray | CropMap | None]],
                   label: str) -> list[HeatMap]:
    """One `HeatMap` per source image from per-crop maps (SOP Instance UID, crop, map or
    None), kept as pieces at the crops' boxes: put together only when a report asks."""
    pieces: dict[str, list[tuple[np.ndarray | CropMap, Box]]] = {}
    for uid, crop, crop_map in crop_maps:
        if crop_map is not None:
            pieces.setdefault(uid, []).append((crop_map, crop.box))
    return [HeatMap(uid, label=label, shape=study.images[uid].decoded.pixels.shape, pieces=p)
            for uid, p in pieces.items()]


@dataclass
class Target:
    """A hip a cascade stage runs on, with the upstream finding that selected it."""

    laterality: Laterality
    source_sop_uids: list[str]
    upstream: Finding | None = None


@dataclass
class KindContext:
    """What a kind gets besides its options: its configured name and settings it may use."""

    name: str
    settings: Any
    """The validated `hiprouter.config.Settings` (read-only)."""
    extra: dict[str, Any] = field(default_factory=dict)


class PipelineKind(ABC):
    """Base class of pipeline kinds. Instances are built once per worker (models load once)."""

    kind: ClassVar[str]
    """The kind's name, as written in ``pipelines.<name>.kind``."""
    Options: ClassVar[type[PipelineOptions]] = PipelineOptions
    inputs: ClassVar[Inputs] = Inputs()
    default_runs_on: ClassVar[RunsOn | None] = None
    description: ClassVar[str] = ""

    def __init__(self, context: KindContext, options: PipelineOptions) -> None:
        self.context = context
        self.name = context.name
        self.options = options

    @abstractmethod
    def vocabulary(self) -> Vocabulary:
        """The classes this pipeline reports."""

    def model_info(self) -> ModelInfo | None:
        """Identity of the model in use (None for pipelines without a model)."""
        return None

    def modalities(self) -> Sequence[str]:
        """Modalities this kind accepts (the study is decoded once for all kinds)."""
        return ("CR", "DX")

    @abstractmethod
    def run(self, study: StudyInput, targets: Sequence[Target] | None) -> PipelineResult:
        """Assess the study. ``targets`` is None for a first-stage pipeline (every hip), or
        the hips a cascade condition selected (possibly empty: then report nothing)."""

    def empty_result(self) -> PipelineResult:
        """A result with no findings (e.g. a cascade with no qualifying hip)."""
        return PipelineResult(self.name, self.kind, self.vocabulary(), self.model_info())
