"""The hardware pipeline's entry point: a study's radiographs in, a `StudyResult` out.

decode -> per-hip crops -> letterbox -> ensemble forward (logits + feature map) -> CAM
-> fuse all views of the same hip (mean probability) -> heat maps in source geometry.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from hiprouter.inference import cam as cammod
from hiprouter.inference.decode import RADIOGRAPH_MODALITIES, RefusedImage, decode
from hiprouter.inference.laterality import HipCrop, hip_crops, not_hip_reason
from hiprouter.inference.models import (
    DEMO_MODEL_DIR,
    LoadedModel,
    ModelError,
    demo_model_dir,
    load_model,
    select_device,
)
from hiprouter.inference.preprocess import letterbox, normalise
from hiprouter.inference.results import HipResult, ImageHeatmap, ModelInfo, StudyResult
from hiprouter.inference.runtime import Runner, make_runner


@dataclass
class CropPrediction:
    """One crop's ensemble output: class probabilities and a CAM in crop geometry."""

    probabilities: np.ndarray
    heatmap: np.ndarray | None


class _Member:
    """One model of the ensemble with its runner and CAM head."""

    def __init__(self, model: LoadedModel, runner: Runner) -> None:
        self.model = model
        self.runner = runner
        self.head = cammod.linear_head(model.module)


class HardwareClassifier:
    """An ensemble of hardware models (same classes), ready to classify studies."""

    def __init__(self, models: Sequence[LoadedModel], device: Any, runtime: str = "auto",
                 batch_size: int = 8, heatmaps: bool = True,
                 modalities: Sequence[str] = RADIOGRAPH_MODALITIES) -> None:
        if not models:
            raise ModelError("no models given")
        classes = models[0].card.classes
        for m in models[1:]:
            if m.card.classes != classes:
                raise ModelError(f"{m.model_dir}: classes differ from {models[0].model_dir}; "
                                 "an ensemble must share its classes")
        self.classes = list(classes)
        self.device = device
        self.members = [_Member(m, make_runner(m, device, runtime)) for m in models]
        self.batch_size = batch_size
        self.heatmaps = heatmaps
        self.modalities = tuple(modalities)

    @classmethod
    def from_dirs(cls, model_dirs: Sequence[Path] | None = None, device: str = "auto",
                  runtime: str = "auto", **kwargs: Any) -> HardwareClassifier:
        """Load model directories (none: the bundled synthetic demo model)."""
        dev = select_device(device)
        dirs = list(model_dirs) if model_dirs else [DEMO_MODEL_DIR]
        return cls([load_model(d, dev) for d in dirs], dev, runtime, **kwargs)

    @classmethod
    def from_config(cls, pipeline_cfg: Any) -> HardwareClassifier:
        """From a `PipelineConfig` (models, device, runtime, batch_size, heatmaps).

        No models configured: the bundled demo model of the pipeline's kind (models/<kind>-demo).
        """
        dirs = list(pipeline_cfg.models) or [demo_model_dir(pipeline_cfg.kind)]
        return cls.from_dirs(dirs, pipeline_cfg.device, pipeline_cfg.runtime,
                             batch_size=pipeline_cfg.batch_size,
                             heatmaps=pipeline_cfg.heatmaps,
                             modalities=getattr(pipeline_cfg, "modalities", RADIOGRAPH_MODALITIES))

    @property
    def info(self) -> ModelInfo:
        """Identity of the model or ensemble (Device UID changes with any weights)."""
        cards = [m.model.card for m in self.members]
        if len(cards) == 1:
            return cards[0].info()
        return ModelInfo(
            name=" + ".join(c.name for c in cards),
            version=" + ".join(c.version for c in cards),
            architecture="ensemble(" + ", ".join(f"{c.architecture}@{c.input_size}px"
                                                 for c in cards) + ")",
            device_uid=str(generate_uid(entropy_srcs=[c.weights_sha256 for c in cards])),
            synthetic_demo=any(c.synthetic_demo for c in cards),
        )

    @property
    def runtime_names(self) -> list[str]:
        return [m.runner.name for m in self.members]

    def predict_crops(self, crops: Sequence[np.ndarray],
                      heatmaps: bool | None = None) -> list[CropPrediction]:
        """Ensemble-averaged probabilities (and CAMs in crop geometry) for display crops."""
        want_maps = self.heatmaps if heatmaps is None else heatmaps
        n = len(crops)
        probs = np.zeros((n, len(self.classes)), dtype=np.float64)
        maps: list[np.ndarray | None] = [None] * n
        per_member: list[tuple[_Member, list, np.ndarray, list]] = []
        for member in self.members:
            size = member.model.card.input_size
            boxes = [letterbox(c, size) for c in crops]
            logits_all, feats_all = [], []
            for start in range(0, n, self.batch_size):
                chunk = boxes[start : start + self.batch_size]
                batch = normalise(np.stack([b[0] for b in chunk]))[:, None]
                logits, feats = member.runner.run(batch)
                logits_all.append(logits)
                feats_all.extend(list(feats) if want_maps and member.head is not None else [])
            logits = np.concatenate(logits_all).astype(np.float64)
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs += p / p.sum(axis=1, keepdims=True)
            per_member.append((member, boxes, logits, feats_all))
        probs /= len(self.members)
        if want_maps:
            predicted = probs.argmax(axis=1)
            for i in range(n):
                acc = None
                for member, boxes, _logits, feats in per_member:
                    if member.head is not None:
                        model_map = cammod.cam(feats[i], member.head[0], int(predicted[i]))
                    else:
                        model_map = self._grad_cam(member, boxes[i][0], int(predicted[i]))
                    crop_map = boxes[i][1].to_source(model_map)
                    acc = crop_map if acc is None else acc + crop_map
                maps[i] = cammod.normalise_map(acc) if acc is not None else None
        return [CropPrediction(probs[i].astype(np.float32), maps[i]) for i in range(n)]

    def _grad_cam(self, member: _Member, model_input: np.ndarray, class_index: int) -> np.ndarray:
        import torch

        module = member.model.module
        device = next(module.parameters()).device
        x = torch.from_numpy(normalise(model_input[None, None])).to(device)
        return cammod.grad_cam(module, x, class_index)

    def predict_study(self, datasets: Sequence[Dataset], study_uid: str,
                      pipeline: str = "hardware") -> StudyResult:
        """Classify every hip of a study; fuse views of the same hip; heat maps per image."""
        started = time.perf_counter()
        refused: dict[str, str] = {}
        crops: list[tuple[str, HipCrop]] = []
        decoded = {}
        for ds in datasets:
            uid = str(ds.get("SOPInstanceUID", "")) or f"unidentified-{len(refused)}"
            reason = not_hip_reason(ds)
            if reason:
                refused[uid] = reason
                continue
            try:
                image = decode(ds, self.modalities)
            except RefusedImage as exc:
                refused[uid] = exc.reason
                continue
            decoded[uid] = image
            crops.extend((uid, c) for c in hip_crops(ds, image.pixels))
        preds = self.predict_crops([c.pixels for _, c in crops]) if crops else []

        groups: dict[str, list[int]] = {}
        for i, (uid, crop) in enumerate(crops):
            key = crop.laterality if crop.laterality in ("R", "L") else f"U:{uid}:{i}"
            groups.setdefault(key, []).append(i)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        hips = []
        for key, idx in sorted(groups.items(), key=lambda kv: ("RLU".index(kv[0][0]), kv[0])):
            mean = np.mean([preds[i].probabilities for i in idx], axis=0)
            best = int(mean.argmax())
            hips.append(HipResult(
                laterality=key if key in ("R", "L") else "U",  # type: ignore[arg-type]
                predicted_class=self.classes[best],
                probability=float(mean[best]),
                probabilities={k: float(v) for k, v in zip(self.classes, mean, strict=True)},
                source_sop_uids=list(dict.fromkeys(crops[i][0] for i in idx)),
                latency_ms=elapsed_ms / max(1, len(groups)),
            ))
        heatmaps = []
        if self.heatmaps:
            for uid, image in decoded.items():
                full = np.zeros(image.pixels.shape, dtype=np.float32)
                for (c_uid, crop), pred in zip(crops, preds, strict=True):
                    if c_uid == uid and pred.heatmap is not None:
                        cammod.place(pred.heatmap, crop.box, image.pixels.shape, into=full)
                heatmaps.append(ImageHeatmap(uid, full, image.display_uint8()))
        return StudyResult(study_uid=study_uid, pipeline=pipeline, model=self.info, hips=hips,
                           heatmaps=heatmaps, refused=refused)
