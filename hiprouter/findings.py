"""The findings model: what any pipeline says about a study, and what every report builder reads.

A pipeline returns a `PipelineResult`: one `Finding` per hip (or per image) it assessed, each
made of parts of five kinds, any of which may be absent:

- `Classification`: the predicted class of the pipeline's vocabulary, its probability, all
  class probabilities, and a status (assessed, indeterminate, not assessed) with the reason;
- `Measurement`: a value with a UCUM unit (a normative distance, a percentile, an angle);
- `Region`: a point, polyline or box in the source image's pixel coordinates;
- `Mask`: a binary mask in the source image's geometry (a segmented femoral head);
- `HeatMap`: a [0, 1] map in the source image's geometry (CAM of a class).

Each finding is tied to its source images, the hip's laterality and the model identity
(name, version, Device UID). Pipelines never build files: the report stage turns all
findings of a study episode into one SR, one SC per radiograph, one KOS and a SEG.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

Laterality = Literal["R", "L", "U"]
"""Right, left, unknown (never guessed)."""

Status = Literal["assessed", "indeterminate", "not_assessed"]
"""assessed: a definitive class; indeterminate: below the calibrated confidence, the
candidates are named but no definitive sentence is written; not_assessed: the input is
unlike the training data (or unusable), nothing is claimed."""

GraphicType = Literal["POINT", "MULTIPOINT", "POLYLINE", "CIRCLE", "ELLIPSE"]
TRIAGE_LEVELS = ("ROUTINE", "MEDIUM", "HIGH")
"""Priority levels, lowest first."""

PRIVATE_SCHEME = "99HIPAI"
PRIVATE_SCHEME_NAME = "hiprouter AI findings"


@dataclass(frozen=True)
class Code:
    """A coded concept (code value, coding scheme designator, code meaning).

    The scheme (SH) holds 16 characters and the meaning (LO) 64: a longer meaning would
    cost the report its SR, so it is refused where the concept is defined (a vocabulary, a
    model card). A value longer than 16 characters goes to Long Code Value (highdicom).
    """

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        if not self.value or not self.scheme or len(self.scheme) > 16:
            raise ValueError(f"a code needs a value and a 1-16 character scheme: {self!r}")
        if not self.meaning or len(self.meaning) > 64:
            raise ValueError(f"code meaning must be 1-64 characters "
                             f"({len(self.meaning)}): {self.meaning!r}")


@dataclass(frozen=True)
class Unit:
    """A UCUM unit, e.g. ``Unit("1", "no units")`` or ``Unit("mm", "millimeter")``."""

    code: str
    meaning: str


NO_UNITS = Unit("1", "no units")
HIP_JOINT = Code("24136001", "SCT", "Hip joint")
FEMORAL_HEAD = Code("119189000", "SCT", "Femoral head")
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical structure")
PHYSICAL_OBJECT = Code("260787004", "SCT", "Physical object")


@dataclass(frozen=True)
class FindingClass:
    """One class of a pipeline's vocabulary."""

    key: str
    """Stable machine name, used in labels CSVs, configs, templates and the database."""
    display: str
    """Human-readable name."""
    code: Code
    negative: bool = False
    """The absence of a finding (no_hardware, no_fracture): never matched by triage rules."""
    triage: str | None = None
    """Default triage level when this class is found (HIGH, MEDIUM), None for none."""

    @classmethod
    def private(cls, key: str, display: str, code: str, meaning: str | None = None,
                **kwargs: object) -> FindingClass:
        """A class coded in the private scheme 99HIPAI."""
        return cls(key, display, Code(code, PRIVATE_SCHEME, meaning or display),
                   **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Vocabulary:
    """The classes a pipeline can report, in model output order."""

    classes: tuple[FindingClass, ...]

    def __post_init__(self) -> None:
        keys = [c.key for c in self.classes]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"vocabulary repeats class keys {duplicates}")

    def __getitem__(self, key: str) -> FindingClass:
        for fc in self.classes:
            if fc.key == key:
                return fc
        raise KeyError(f"unknown class {key!r}; known: {', '.join(self.keys)}")

    def __contains__(self, key: object) -> bool:
        return any(fc.key == key for fc in self.classes)

    def __iter__(self) -> Iterator[FindingClass]:
        return iter(self.classes)

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def keys(self) -> list[str]:
        return [fc.key for fc in self.classes]

    def display(self, key: str) -> str:
        """Display name of a class, or the key made readable for an unknown one."""
        return self[key].display if key in self else key.replace("_", " ")

    def is_negative(self, key: str) -> bool:
        return key in self and self[key].negative


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the model (or ensemble) that produced a finding; from its model card."""

    name: str
    version: str
    architecture: str
    device_uid: str
    """Changes whenever the weights change (derived from the weights' sha256)."""
    manufacturer: str = "hiprouter project"
    synthetic_demo: bool = True
    """True for weights trained on synthetic radiographs: outputs must say so."""


@dataclass
class Classification:
    """The class a pipeline assigned, with every class probability."""

    predicted: str
    probability: float
    probabilities: dict[str, float]
    status: Status = "assessed"
    reason: str = ""
    """Why a finding is indeterminate or not assessed, in words an administrator can act on."""

    def candidates(self, k: int = 3) -> list[tuple[str, float]]:
        """The k most probable classes, most probable first."""
        ranked = sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)
        return ranked[:k]


@dataclass
class Measurement:
    """A numeric result with its unit."""

    key: str
    """Machine name, e.g. ``mahalanobis_distance``."""
    name: Code
    value: float
    unit: Unit = NO_UNITS


@dataclass
class Region:
    """A spatial coordinate on one source image (pixel coordinates: column, row)."""

    sop_instance_uid: str
    graphic_type: GraphicType
    points: np.ndarray
    """(N, 2) float array of (column, row) in the source image's pixels."""
    label: str = ""

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)


@dataclass
class Mask:
    """A binary mask on one source image."""

    sop_instance_uid: str
    mask: np.ndarray
    """bool (Rows, Columns) of the source image."""
    label: str
    """Segment label, e.g. "Right femoral head"."""
    property_type: Code = FEMORAL_HEAD
    category: Code = ANATOMICAL_STRUCTURE
    """Segmented property category (anatomical structure, physical object, ...)."""


Box = tuple[int, int, int, int]
"""(top, left, bottom, right) in source pixels."""


class CropMap(Protocol):
    """A heat map over one crop that is computed at the size asked for (e.g.
    `inference.cam.CropHeat`), so it need not exist at full size."""

    shape: tuple[int, int]

    def at(self, rows: int, cols: int) -> np.ndarray:
        """The map over the crop at (rows, cols), float32 in [0, 1]."""
        ...

    def full(self) -> np.ndarray:
        """The map at the crop's own size."""
        ...


class HeatMap:
    """A heat map on one source image: float32 in [0, 1] over its (Rows, Columns).

    Given whole (`heat`), or as pieces: a map over a crop (an array in the crop's geometry,
    or a `CropMap` computed at the size asked for) and the crop's box, as pipelines that
    read hip crops make them. Pieces are put together only when asked for, at full size
    (`heat`) or straight at a display size (`resized`, what an SC needs), so a pipeline's
    maps that no SC shows cost no full-size image.
    """

    def __init__(self, sop_instance_uid: str, heat: np.ndarray | None = None,
                 label: str = "", *, shape: tuple[int, int] | None = None,
                 pieces: Sequence[tuple[np.ndarray | CropMap, Box]] = ()) -> None:
        if heat is None and shape is None:
            raise ValueError("a heat map needs its pixels or the shape of its source image")
        self.sop_instance_uid = sop_instance_uid
        self.label = label
        """What the map shows, e.g. the class key it explains."""
        for crop_map, (top, left, bottom, right) in pieces:
            if crop_map.shape != (bottom - top, right - left):
                raise ValueError(f"crop map {crop_map.shape} does not fit box "
                                 f"{(top, left, bottom, right)}")
        self.pieces = list(pieces)
        self._heat = heat
        self.shape: tuple[int, int] = (tuple(heat.shape) if heat is not None  # type: ignore[assignment]
                                       else (int(shape[0]), int(shape[1])))  # type: ignore[index]

    @property
    def heat(self) -> np.ndarray:
        """The full-size map (pieces placed at their boxes, the maximum where they meet)."""
        if self._heat is None:
            out = np.zeros(self.shape, dtype=np.float32)
            for crop_map, (top, left, bottom, right) in self.pieces:
                region = out[top:bottom, left:right]
                full = crop_map if isinstance(crop_map, np.ndarray) else crop_map.full()
                np.maximum(region, np.clip(full, 0.0, 1.0), out=region)
            self._heat = out
        return self._heat

    @heat.setter
    def heat(self, value: np.ndarray) -> None:
        self._heat = value
        self.shape = tuple(value.shape)  # type: ignore[assignment]
        self.pieces = []

    def resized(self, rows: int, cols: int) -> np.ndarray:
        """The map at (rows, cols), bilinear: each piece is resized into its scaled box
        (the full-size map is never made), or the whole map when given whole."""
        from PIL import Image

        if (rows, cols) == self.shape:
            return self.heat.astype(np.float32, copy=False)
        if self._heat is not None or not self.pieces:
            whole = Image.fromarray(self.heat.astype(np.float32, copy=False))
            return np.asarray(whole.resize((cols, rows), Image.Resampling.BILINEAR))
        out = np.zeros((rows, cols), dtype=np.float32)
        sy, sx = rows / self.shape[0], cols / self.shape[1]
        for crop_map, (top, left, bottom, right) in self.pieces:
            r0, r1 = round(top * sy), round(bottom * sy)
            c0, c1 = round(left * sx), round(right * sx)
            if r1 <= r0 or c1 <= c0:
                continue
            if isinstance(crop_map, np.ndarray):
                piece = Image.fromarray(crop_map.astype(np.float32, copy=False))
                small = np.asarray(piece.resize((c1 - c0, r1 - r0),
                                                Image.Resampling.BILINEAR))
            else:
                small = crop_map.at(r1 - r0, c1 - c0)
            region = out[r0:r1, c0:c1]
            np.maximum(region, np.clip(small, 0.0, 1.0), out=region)
        return out


@dataclass
class Finding:
    """What one pipeline says about one hip (or one image): one SR measurement group."""

    pipeline: str
    laterality: Laterality
    source_sop_uids: list[str]
    model: ModelInfo
    classification: Classification | None = None
    measurements: list[Measurement] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    masks: list[Mask] = field(default_factory=list)
    heatmaps: list[HeatMap] = field(default_factory=list)
    finding_site: Code = HIP_JOINT
    qualifiers: dict[str, str] = field(default_factory=dict)
    """Short facts the report states, e.g. ``{"views": "AP only"}``."""
    latency_ms: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)
    """Numbers recorded for monitoring, never reported, e.g. ``{"ood_score": 1.3}``."""

    @property
    def status(self) -> Status:
        return self.classification.status if self.classification else "assessed"

    def measurement(self, key: str) -> Measurement | None:
        return next((m for m in self.measurements if m.key == key), None)


@dataclass
class PipelineResult:
    """Everything one pipeline concluded about one study episode."""

    pipeline: str
    kind: str
    vocabulary: Vocabulary
    model: ModelInfo | None
    findings: list[Finding] = field(default_factory=list)
    not_assessed: dict[str, str] = field(default_factory=dict)
    """SOP Instance UID -> reason, for images this pipeline could not or would not assess."""
    skipped: list[str] = field(default_factory=list)
    """Hips the pipeline did not run on and why (cascade conditions), for the audit."""
    triage_thresholds: dict[str, float] = field(default_factory=dict)
    """Class key -> calibrated probability at which the class triggers its triage level
    (from the model card); classes without one use 0.5 unless a rule says otherwise."""
    mode: str = "active"
    """active: reported; shadow: recorded in the database only, nothing of it is sent."""
    model_id: int | None = None
    """The model registry entry that produced it (None: configured or bundled models)."""
    upstream: str | None = None
    """For a cascade stage, the pipeline whose findings selected its hips (set by the
    runner); None for a first-stage pipeline."""
    elapsed_ms: float = 0.0
    """Wall time of the pipeline's run on the study (set by the runner)."""


@dataclass
class StudyFindings:
    """All pipelines' results for one study episode, in the order they ran."""

    study_uid: str
    results: list[PipelineResult] = field(default_factory=list)
    decode_ms: float = 0.0
    """Wall time of decoding the study and cutting its hip crops (set by the runner)."""
    views_from_image: dict[str, str] = field(default_factory=dict)
    """SOP Instance UID -> the view the anatomy check read where the image's own headers
    name none: "ap_pelvis" (read per hip) or "unknown" (a single hip) (set by the runner;
    the report says so)."""

    def findings(self) -> list[Finding]:
        return [f for r in self.results for f in r.findings]

    def reported(self) -> StudyFindings:
        """Only the results that go into the report (shadow results are left out)."""
        return StudyFindings(self.study_uid, [r for r in self.results if r.mode == "active"],
                             self.decode_ms, dict(self.views_from_image))

    def result(self, pipeline: str) -> PipelineResult:
        for r in self.results:
            if r.pipeline == pipeline:
                return r
        raise KeyError(f"no result of pipeline {pipeline!r}")

    def vocabulary(self, pipeline: str) -> Vocabulary:
        return self.result(pipeline).vocabulary

    def not_assessed(self) -> dict[str, str]:
        """Images no pipeline could assess (reasons of the first pipeline that refused)."""
        assessed = {u for f in self.findings() for u in f.source_sop_uids}
        out: dict[str, str] = {}
        for r in self.results:
            for uid, reason in r.not_assessed.items():
                if uid not in assessed:
                    out.setdefault(uid, reason)
        return out


def side_order(findings: Sequence[Finding]) -> list[Finding]:
    """Findings ordered right hip, left hip, unknown side, keeping pipeline order within."""
    return sorted(findings, key=lambda f: "RLU".index(f.laterality))
