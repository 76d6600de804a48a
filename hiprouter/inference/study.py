"""A study's radiographs decoded once for every pipeline: display pixels, view, per-hip crops.

Decoding (modality LUT, VOI, MONOCHROME1), view classification and the split into per-hip
crops happen once per study episode; every pipeline of the job reads the same arrays.
Images that cannot be used are kept with the reason, so each pipeline can report them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from hiprouter.inference.decode import DecodedImage, RefusedImage, decode
from hiprouter.inference.laterality import (
    HipCrop,
    View,
    hip_crops,
    not_hip_reason,
    view_evidence,
    view_read_from_image,
)
from hiprouter.inference.parallel import map_each

if TYPE_CHECKING:
    from hiprouter.inference.anatomy import AnatomyCheck


@dataclass
class StudyImage:
    """One usable radiograph of the study."""

    dataset: Dataset
    decoded: DecodedImage
    view: View
    crops: list[HipCrop]
    view_source: str = "series"
    """Where `view` comes from: "series" (the image's own tags), "study" (only the study's
    descriptions), "none" (nothing: view "unknown") or "image" (the anatomy check)."""

    @property
    def view_from_image(self) -> bool:
        return self.view_source == "image"

    @property
    def sop_instance_uid(self) -> str:
        return self.decoded.sop_instance_uid

    @property
    def modality(self) -> str:
        return self.decoded.modality


@dataclass
class StudyInput:
    """The study's radiographs as the pipelines see them."""

    study_uid: str
    datasets: list[Dataset]
    images: dict[str, StudyImage] = field(default_factory=dict)
    """SOP Instance UID -> usable image, in the order received."""
    refused: dict[str, str] = field(default_factory=dict)
    """SOP Instance UID -> why the image cannot be used by any radiograph model."""

    @classmethod
    def from_datasets(cls, study_uid: str, datasets: Sequence[Dataset],
                      modalities: Iterable[str]) -> StudyInput:
        """Decode every dataset once; refuse (with the reason) what no pipeline can use."""
        study = cls(study_uid, list(datasets))
        allowed = tuple(sorted({m.upper() for m in modalities}))

        def prepare(ds: Dataset) -> StudyImage | str:
            reason = not_hip_reason(ds)
            if reason:
                return reason
            try:
                image = decode(ds, allowed)
            except RefusedImage as exc:
                return exc.reason
            image.pixels.setflags(write=False)  # shared by every pipeline (and letterbox's memo)
            view, source = view_evidence(ds)
            return StudyImage(ds, image, view, hip_crops(ds, image.pixels, view), source)

        for n, (ds, prepared) in enumerate(zip(datasets, map_each(prepare, datasets),
                                               strict=True)):
            uid = str(ds.get("SOPInstanceUID", "")) or f"unidentified-{n}"
            if isinstance(prepared, str):
                study.refused[uid] = prepared
            else:
                study.images[uid] = prepared
        return study

    def check_anatomy(self, check: AnatomyCheck) -> None:
        """Run the whole-image anatomy check on every usable image, once; images that are
        not adult hip or pelvis radiographs move to `refused` with the check's reason.

        Where the image's own tags name no view (nothing, or only the study's words), the
        view the check names decides between an AP pelvis, split into its two hips, and a
        single hip (one crop, its side from the tags' words or unknown): a "RIGHT HIP" study
        often holds an AP pelvis image, a "PELVIS AND HIP" study a lateral hip image
        (`view_source` becomes "image")."""
        uids = list(self.images)
        verdicts = check.assess([self.images[u].decoded.pixels for u in uids])
        for uid, verdict in zip(uids, verdicts, strict=True):
            if verdict.refused:
                del self.images[uid]
                self.refused[uid] = verdict.reason or "not a hip or pelvis radiograph"
                continue
            image = self.images[uid]
            view = view_read_from_image(image.view, image.view_source, verdict.view)
            if view is None:
                continue
            image.view, image.view_source = view, "image"
            image.crops = hip_crops(image.dataset, image.decoded.pixels, view)

    def crops(self, views: Iterable[str] | None = None,
              modalities: Iterable[str] | None = None) -> list[tuple[str, HipCrop]]:
        """(SOP Instance UID, crop) of every hip crop, optionally only of some views/modalities."""
        wanted_views = set(views) if views is not None else None
        wanted_mods = {m.upper() for m in modalities} if modalities is not None else None
        out = []
        for uid, image in self.images.items():
            if wanted_mods is not None and image.modality not in wanted_mods:
                continue
            for crop in image.crops:
                if wanted_views is None or crop.view in wanted_views:
                    out.append((uid, crop))
        return out

    def dataset(self, sop_instance_uid: str) -> Dataset:
        return self.images[sop_instance_uid].dataset
