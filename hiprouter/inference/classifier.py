"""An ensemble of image classifiers (same classes) applied to hip crops.

crops -> letterbox -> each member's forward pass (logits + last feature map) -> calibrated
probabilities (temperature from the model card), averaged over members -> CAM of the
predicted class in crop geometry, and an out-of-distribution score per crop (energy of
the logits, compared with the card's threshold fitted on training data).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from hiprouter.findings import ModelInfo
from hiprouter.inference import cam as cammod
from hiprouter.inference.bundle import BundleUnavailable, load_onnx_model
from hiprouter.inference.models import (
    LoadedModel,
    ModelError,
    load_model,
    select_device,
)
from hiprouter.inference.ood import STATS_FILE, Mahalanobis, energy, no_anatomy, pooled
from hiprouter.inference.parallel import map_each
from hiprouter.inference.preprocess import check_channels, letterbox, model_input
from hiprouter.inference.runtime import Runner, cpu_without_torch, make_runner
from hiprouter.logs import get_logger

log = get_logger(__name__)


@dataclass
class CropPrediction:
    """One crop's ensemble output."""

    probabilities: np.ndarray
    """Calibrated class probabilities, averaged over the members."""
    heat: cammod.CropHeat | None
    """CAM of the predicted class, mapped onto the crop when asked for (`heatmap`, or at
    another size with `heat.at`)."""
    ood_score: float
    """Mean over members of their OOD score (the card's method: energy -logsumexp(logits),
    or Mahalanobis distance of pooled features); higher = less familiar."""
    ood: bool
    """True when every member with an OOD threshold finds the crop above it, or when the crop
    shows no structure of a radiograph at all (`ood.no_anatomy`: blank or noise; when a
    member's card has ``ood.structure_check: true``)."""

    @property
    def heatmap(self) -> np.ndarray | None:
        """CAM of the predicted class in crop geometry, [0, 1]."""
        return self.heat.full() if self.heat is not None else None


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class _Member:
    """One model of the ensemble with its runner and CAM head."""

    def __init__(self, model: LoadedModel, runner: Runner) -> None:
        self.model = model
        self.runner = runner
        self.head = (model.head if model.module is None
                     else cammod.linear_head(model.module))
        card = model.card
        self.temperature = float(card.calibration.get("temperature", 1.0) or 1.0)
        self.ood_threshold = card.ood.get("threshold")
        self.ood_method = card.ood.get("method", "energy")
        self.structure_check = bool(card.ood.get("structure_check", False))
        self.mahalanobis: Mahalanobis | None = None
        if self.ood_method == "mahalanobis":
            stats = model.model_dir / card.ood.get("file", STATS_FILE)
            if not stats.is_file():
                raise ModelError(f"{model.model_dir}: OOD statistics {stats.name} are missing")
            self.mahalanobis = Mahalanobis.load(stats)
        elif self.ood_method != "energy":
            raise ModelError(f"{model.model_dir}: unknown OOD method {self.ood_method!r}")
        self.pool = (card.parameters or {}).get("pool") or "avg"
        self.gem_p: float | None = None
        if self.pool == "gem":
            self.gem_p = (model.gem_p if model.module is None
                          else cammod.gem_exponent(model.module))
        self.channels = check_channels((card.parameters or {}).get("channels"))
        if len(self.channels) != card.in_chans:
            raise ModelError(f"{model.model_dir}: parameters.channels {list(self.channels)} "
                             f"does not match in_chans {card.in_chans}")
        self.tta = tuple((card.parameters or {}).get("tta") or ())
        unknown = set(self.tta) - {"hflip"}
        if unknown:
            raise ModelError(f"{model.model_dir}: unknown test-time augmentation {unknown}")

    def ood_scores(self, logits: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """The card's OOD score per crop (higher = less familiar)."""
        if self.mahalanobis is not None:
            p = self.gem_p if self.gem_p is not None else 3.0
            return self.mahalanobis.score(pooled(feats, self.pool, p))
        return energy(logits)

    def forward(self, boxed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (averaged over the card's test-time augmentations) and the feature map of
        the unaugmented input, for letterboxed display crops (B, S, S)."""
        logits, feats = self.runner.run(model_input(boxed, self.channels))
        if "hflip" in self.tta:
            flipped, _ = self.runner.run(model_input(boxed[:, :, ::-1], self.channels))
            logits = (logits + flipped) / 2.0
        return logits, feats


class CropClassifier:
    """An ensemble of models that share their classes, ready to classify crops."""

    def __init__(self, models: Sequence[LoadedModel], device: Any, runtime: str = "auto",
                 batch_size: int = 8) -> None:
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

    @classmethod
    def from_dirs(cls, model_dirs: Sequence[Path], device: str = "auto", runtime: str = "auto",
                  batch_size: int = 8) -> CropClassifier:
        """Load model directories onto the chosen device.

        On the CPU with ONNX Runtime the models come from their ONNX bundles and torch is
        not imported (export.py); a model whose maps need Grad-CAM with autograd (a head
        other than average or GeM pool + linear) is loaded with torch as before.
        """
        if runtime in ("auto", "onnx") and cpu_without_torch(device):
            try:
                models = [load_onnx_model(d) for d in model_dirs]
            except BundleUnavailable as exc:  # e.g. no writable cache: torch, as before
                if runtime == "onnx":
                    raise
                log.warning("ONNX bundle unavailable, loading with torch", error=str(exc))
            else:
                if all(m.head is not None for m in models):
                    return cls(models, "cpu", "onnx", batch_size)
        dev = select_device(device)
        return cls([load_model(d, dev) for d in model_dirs], dev, runtime, batch_size)

    @property
    def cards(self) -> list[Any]:
        return [m.model.card for m in self.members]

    @property
    def info(self) -> ModelInfo:
        """Identity of the model or ensemble (Device UID changes with any weights)."""
        cards = self.cards
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

    def card_value(self, section: str, key: str, default: Any = None) -> Any:
        """A value of a card section (e.g. abstention/min_confidence): the strictest member's
        for thresholds is not defined, so the first member that has it wins."""
        for card in self.cards:
            value = getattr(card, section, {}).get(key)
            if value is not None:
                return value
        return default

    def predict(self, crops: Sequence[np.ndarray], heatmaps: bool = True) -> list[CropPrediction]:
        """Calibrated, ensemble-averaged probabilities, CAMs and OOD flags for display crops."""
        n = len(crops)
        if n == 0:
            return []
        probs = np.zeros((n, len(self.classes)), dtype=np.float64)
        scores = np.zeros(n, dtype=np.float64)
        votes = np.zeros(n, dtype=np.int64)
        judges = 0
        per_member = []
        for member in self.members:
            size = member.model.card.input_size
            boxes = map_each(lambda c, size=size: letterbox(c, size), crops)
            logits_all, feats_all, scores_all = [], [], []
            for start in range(0, n, self.batch_size):
                chunk = boxes[start : start + self.batch_size]
                logits, feats = member.forward(np.stack([b[0] for b in chunk]))
                logits_all.append(logits)
                scores_all.append(member.ood_scores(logits, feats))
                if heatmaps and member.head is not None:
                    feats_all.extend(list(feats))
            logits = np.concatenate(logits_all).astype(np.float64)
            probs += softmax(logits / member.temperature)
            member_scores = np.concatenate(scores_all)
            scores += member_scores
            if member.ood_threshold is not None:
                judges += 1
                votes += member_scores > float(member.ood_threshold)
            per_member.append((member, boxes, feats_all))
        probs /= len(self.members)
        scores /= len(self.members)
        ood = votes >= judges if judges else np.zeros(n, dtype=bool)
        # whatever the models say: a crop without any structure of a radiograph is not read
        # (when a card asks for it: `ood.structure_check`)
        if any(m.structure_check for m in self.members):
            ood |= np.array(map_each(lambda box: no_anatomy(box[0]), per_member[0][1]),
                            dtype=bool)
        maps: list[cammod.CropHeat | None] = [None] * n
        if heatmaps:
            predicted = probs.argmax(axis=1)

            def heat(i: int) -> cammod.CropHeat:
                parts = []
                for member, boxes, feats in per_member:
                    if member.head is not None and member.gem_p is not None:
                        model_map = cammod.gem_grad_cam(feats[i], member.head[0], member.gem_p,
                                                        int(predicted[i]))
                    elif member.head is not None:
                        model_map = cammod.cam(feats[i], member.head[0], int(predicted[i]))
                    else:
                        model_map = self._grad_cam(member, boxes[i][0], int(predicted[i]))
                    parts.append((model_map, boxes[i][1]))
                return cammod.CropHeat(parts)  # mapped onto the crop only when asked for

            maps = [heat(i) for i in range(n)]
        return [CropPrediction(probs[i].astype(np.float32), maps[i], float(scores[i]),
                               bool(ood[i])) for i in range(n)]

    def _grad_cam(self, member: _Member, model_input_img: np.ndarray,
                  class_index: int) -> np.ndarray:
        import torch

        module = member.model.module
        device = next(module.parameters()).device
        x = torch.from_numpy(model_input(model_input_img[None], member.channels)).to(device)
        return cammod.grad_cam(module, x, class_index)
