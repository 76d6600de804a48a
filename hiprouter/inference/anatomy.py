"""The anatomy check: is a whole image an adult hip or pelvis radiograph at all?

Hip models read per-hip crops cut where the headers say the hips are, so a chest film
whose headers claim a pelvis still gives two "hip" crops, and every hip model answers
something for them. Before any pipeline runs, this check classifies each usable image of
the study once, whole (letterboxed to the model's input size), into the classes of its card
(the shipped one: hip / child's pelvis / chest / knee / hand / shoulder / spine / skull /
other). An image whose calibrated probability of "hip" is below the card's
``abstention.min_probability`` is not assessed by any pipeline, with a reason that names
what it looks like; the job's audit records it like every other refusal. Models with a
"pelvis" class (AP pelvis, both hips) besides "hip" (single-hip views) also say which of the
two an image is; a study uses that only where the headers name no view, so that an AP pelvis
sent without descriptive tags is still read per hip (inference/study.py).

The model is a small classifier like the hip models (card + weights, ONNX Runtime on the
CPU, temperature from the card), trained by `hiprouter train-anatomy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hiprouter.inference.classifier import CropClassifier
from hiprouter.inference.models import ModelError, demo_model_dir

LABEL_SET = "anatomy"
HIP = "hip"
"""A single-hip view of an adult (in cards up to 0.2.0: any adult hip or pelvis film)."""
PELVIS = "pelvis"
"""An adult AP pelvis (cards from 0.3.0). P(hip) + P(pelvis) is what the threshold reads."""
HIP_CLASSES = (HIP, PELVIS)
LOOKS_LIKE = {"child_pelvis": "a child's pelvis", "chest": "a chest radiograph",
              "knee": "a knee radiograph", "hand": "a hand radiograph",
              "shoulder": "a shoulder radiograph", "spine": "a spine radiograph",
              "skull": "a skull or dental radiograph",
              "other": "no radiograph of a body part (blank, noise or a photograph)"}


@dataclass
class AnatomyVerdict:
    """The check's answer for one image."""

    probabilities: dict[str, float]
    refused: bool
    reason: str | None = None

    @property
    def hip(self) -> float:
        """P(an adult hip or pelvis radiograph, any view)."""
        return sum(self.probabilities.get(c, 0.0) for c in HIP_CLASSES)

    @property
    def most_likely_other(self) -> str:
        """The most probable class that is not a hip film (what the reason names)."""
        return max((c for c in self.probabilities if c not in HIP_CLASSES),
                   key=self.probabilities.__getitem__)

    @property
    def view(self) -> str | None:
        """What the image shows when it is a hip film: "ap_pelvis" (both hips) or
        "single_hip"; None for a model without the pelvis class or a refused image."""
        if self.refused or PELVIS not in self.probabilities:
            return None
        pelvis, single = self.probabilities[PELVIS], self.probabilities.get(HIP, 0.0)
        return "ap_pelvis" if pelvis >= single else "single_hip"


class AnatomyCheck:
    """A loaded anatomy model and its threshold."""

    def __init__(self, classifier: CropClassifier, min_probability: float | None = None
                 ) -> None:
        card = classifier.cards[0]
        if card.label_set != LABEL_SET or HIP not in classifier.classes:
            raise ModelError(f"{card.name} is a {card.label_set!r} model; the anatomy check "
                             f"needs an {LABEL_SET!r} model with a {HIP!r} class")
        self.classifier = classifier
        self.classes = list(classifier.classes)
        if min_probability is None:
            min_probability = classifier.card_value("abstention", "min_probability")
        if min_probability is None:
            raise ModelError(f"{card.name}: the card has no abstention.min_probability; "
                             "set inference.anatomy_check.min_probability")
        self.min_probability = float(min_probability)

    @classmethod
    def from_dir(cls, model_dir: Path | None = None, min_probability: float | None = None,
                 device: str = "auto", runtime: str = "auto") -> AnatomyCheck:
        """Load a model folder (None: the bundled demo, models/anatomy-demo)."""
        folder = Path(model_dir) if model_dir is not None else demo_model_dir(LABEL_SET)
        return cls(CropClassifier.from_dirs([folder], device, runtime, batch_size=8),
                   min_probability)

    @property
    def info(self) -> str:
        card = self.classifier.cards[0]
        return f"{card.name} {card.version}"

    def assess(self, images: Sequence[np.ndarray]) -> list[AnatomyVerdict]:
        """Verdicts for whole decoded images (float [0, 1], MONOCHROME2)."""
        preds = self.classifier.predict(list(images), heatmaps=False)
        out = []
        for pred in preds:
            probs = {c: float(p) for c, p in zip(self.classes, pred.probabilities, strict=True)}
            verdict = AnatomyVerdict(probs, False)
            if verdict.hip < self.min_probability:
                other = verdict.most_likely_other
                looks = LOOKS_LIKE.get(other, f"{other!r}")
                verdict = AnatomyVerdict(probs, True, (
                    f"not a hip or pelvis radiograph of an adult: looks like {looks} "
                    f"({probs[other]:.2f}; hip {verdict.hip:.2f}, below "
                    f"{self.min_probability:.2f}; anatomy check {self.info})"))
            out.append(verdict)
        return out
