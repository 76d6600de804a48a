"""Model cards, weights and devices: timm backbones with single-channel input.

A model directory holds `card.yaml` (the model card) and the weights in safetensors. The
card records the sha256 of the weights file and a DICOM Device UID derived from it, so the
UID written into SR/SC output changes whenever the weights change.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydicom.uid import generate_uid

from hiprouter.findings import Code, FindingClass, ModelInfo, Vocabulary
from hiprouter.resources import models_dir

CARD_FILE = "card.yaml"
WEIGHTS_FILE = "model.safetensors"
MODELS_ROOT = models_dir()
"""Models shipped with hiprouter (models/<name>/card.yaml)."""


def demo_model_dir(kind: str) -> Path:
    """The bundled synthetic demo model of a pipeline kind: models/<kind>-demo."""
    return MODELS_ROOT / f"{kind}-demo"


SYNTHETIC_DISCLAIMER = (
    "Trained and evaluated on synthetic radiographs only. Figures on synthetic data say "
    "nothing about accuracy on real patients. Demo output, not for diagnostic use."
)


DUAL_VIEW_TASK = "dual_view_classification"
"""`ModelCard.task` of dual-view (AP + lateral) models (inference/dualview.py)."""
ONFH_LABEL_SET = "onfh"
"""`ModelCard.label_set` of osteonecrosis models (inference/onfh.py)."""


class ModelError(Exception):
    """A model directory that cannot be used (missing files, bad card, weights changed)."""


class CardClass(BaseModel):
    """One class as a model card may describe it."""

    model_config = ConfigDict(extra="forbid")

    key: str
    display: str
    code: str
    scheme: str = "99HIPAI"
    meaning: str = ""
    negative: bool = False
    triage: str | None = None

    def finding_class(self) -> FindingClass:
        return FindingClass(self.key, self.display,
                            Code(self.code, self.scheme, self.meaning or self.display),
                            self.negative, self.triage)


class ModelCard(BaseModel):
    """What a model is, what it was trained on and how well it did (card.yaml)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str
    version: str
    architecture: str
    """timm model name, e.g. efficientnet_b4."""
    input_size: int = Field(gt=15)
    in_chans: int = 1
    task: str = "classification"
    """What the weights do: classification (one crop -> classes), or a task a pipeline kind
    defines (e.g. dual-view classification, segmentation, a normative model)."""
    parameters: dict[str, Any] = {}
    """Task-specific settings the pipeline kind reads (input channels, views, files)."""
    label_set: str = "hardware"
    """The pipeline kind (and labels column) the model was trained for."""
    classes: list[str]
    """Class keys in output order."""
    vocabulary: list[CardClass] = []
    """Optional: names, codes, negative flags and triage meaning of the classes; a class
    listed here overrides the kind's built-in wording (a site's own device catalogue)."""
    training_data: str
    synthetic_demo: bool = False
    intended_use: str = "Prepopulate the radiology report; a radiologist verifies every result."
    limitations: str = ""
    training: dict[str, Any] = {}
    """Recipe: epochs, learning rates, augmentation, split, seed."""
    evaluation: dict[str, Any] = {}
    """Figures on the held-out test set (accuracy, kappa, per-class AUC with CIs, ...)."""
    calibration: dict[str, Any] = {}
    """``temperature`` applied to the logits at run time (fitted on the validation split),
    with the expected calibration error before and after."""
    abstention: dict[str, Any] = {}
    """``min_confidence``: below this calibrated probability a finding is indeterminate."""
    ood: dict[str, Any] = {}
    """Out-of-distribution detection: ``method`` (energy), ``threshold`` (a crop whose score
    is above it is not assessed), and how it was fitted."""
    triage_thresholds: dict[str, float] = {}
    """Class key -> probability at which the class flags the study (chosen on the
    validation split at a target sensitivity)."""
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""
    device_uid: str = ""
    created: str = ""

    def vocabulary_over(self, default: Vocabulary) -> Vocabulary:
        """The model's classes, described by the card where it does, else by `default`.

        Raises ModelError when a class is described by neither.
        """
        own = {c.key: c.finding_class() for c in self.vocabulary}
        out = []
        for key in self.classes:
            if key in own:
                out.append(own[key])
            elif key in default:
                out.append(default[key])
            else:
                raise ModelError(f"model {self.name}: class {key!r} is neither described in "
                                 "its card's vocabulary nor known to the pipeline kind")
        return Vocabulary(tuple(out))

    def info(self) -> ModelInfo:
        """The identity reporting writes into SR/SC output."""
        return ModelInfo(
            name=self.name,
            version=self.version,
            architecture=f"{self.architecture}@{self.input_size}px",
            device_uid=self.device_uid,
            synthetic_demo=self.synthetic_demo,
        )


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def device_uid_for(weights_sha256: str) -> str:
    """A DICOM UID that is a pure function of the weights (changes when they change)."""
    return str(generate_uid(entropy_srcs=["hiprouter-model-weights", weights_sha256]))


def read_card(model_dir: Path) -> ModelCard:
    """Read and validate `card.yaml` of a model directory."""
    path = Path(model_dir) / CARD_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"{model_dir}: no readable {CARD_FILE} ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: not valid YAML ({exc})") from exc
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        raise ModelError(f"{path}: invalid model card: {exc}") from exc


def write_card(model_dir: Path, card: ModelCard) -> Path:
    """Write `card.yaml` (key order as in the model)."""
    path = Path(model_dir) / CARD_FILE
    text = yaml.safe_dump(card.model_dump(mode="json"), sort_keys=False, allow_unicode=True,
                          width=100)
    path.write_text(text, encoding="utf-8")
    return path


def verify_weights(model_dir: Path, card: ModelCard | None = None) -> bool:
    """True when the weights file exists and matches the card's sha256."""
    card = card or read_card(model_dir)
    weights = Path(model_dir) / card.weights_file
    return weights.is_file() and sha256_file(weights) == card.weights_sha256


def verified_card(model_dir: Path, card: ModelCard | None = None) -> ModelCard:
    """The folder's card (or `card`, already read), after checking that its weights file
    exists and has the card's sha256; raises ModelError with the reason otherwise."""
    model_dir = Path(model_dir)
    card = card or read_card(model_dir)
    weights = model_dir / card.weights_file
    if not weights.is_file():
        raise ModelError(f"{model_dir}: weights file {card.weights_file} is missing")
    sha = sha256_file(weights)
    if sha != card.weights_sha256:
        raise ModelError(f"{weights}: sha256 {sha[:12]}... does not match the model card "
                         f"({card.weights_sha256[:12]}...); the card must describe these weights")
    return card


def create_model(architecture: str, num_classes: int, in_chans: int = 1,
                 attention: str | None = None, pool: str | None = None,
                 widths: Sequence[int] | None = None) -> Any:
    """A timm backbone with a fresh head (never downloads weights).

    `attention` ("cbam", "se", "eca") goes into every residual block of a ResNet-family
    model; `pool` "gem" replaces the global average pool by generalized-mean pooling;
    `widths` sets a ResNet-family model's stage widths (a narrower, smaller network).
    """
    import timm

    kwargs: dict[str, Any] = {}
    if attention and attention != "none":
        kwargs["block_args"] = {"attn_layer": attention}
    if widths:
        kwargs["channels"] = tuple(int(w) for w in widths)
    try:
        module = timm.create_model(architecture, pretrained=False, in_chans=in_chans,
                                   num_classes=num_classes, **kwargs)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise ModelError(f"unknown timm architecture {architecture!r}: {exc}") from exc
    except TypeError as exc:  # block_args/channels on an architecture without them
        raise ModelError(f"{architecture} does not take attention {attention!r} or stage "
                         f"widths {widths!r} (ResNet-family architectures do): {exc}") from exc
    if pool and pool != "avg":
        from hiprouter.inference.layers import set_global_pool

        try:
            set_global_pool(module, pool)
        except ValueError as exc:
            raise ModelError(str(exc)) from exc
    return module


def card_model(card: ModelCard) -> Any:
    """A fresh module of the card's architecture, channels, attention and pooling."""
    params = card.parameters or {}
    return create_model(card.architecture, len(card.classes), card.in_chans,
                        attention=params.get("attention"), pool=params.get("pool"),
                        widths=params.get("widths"))


WEIGHT_DTYPES = ("float32", "float16")


def save_model(module: Any, card: ModelCard, model_dir: Path,
               dtype: str = "float32") -> ModelCard:
    """Write weights (safetensors) and the card with sha256 and Device UID filled in.

    `dtype` float16 stores the floating-point tensors at half size; `load_model` casts them
    back to the module's float32 (load_state_dict copies into the existing parameters).
    """
    from safetensors.torch import save_file

    if dtype not in WEIGHT_DTYPES:
        raise ModelError(f"unknown weight storage dtype {dtype!r}; choose from "
                         f"{', '.join(WEIGHT_DTYPES)}")
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = model_dir / card.weights_file
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    if dtype == "float16":
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    # one metadata entry: safetensors writes a metadata map in a per-process random order,
    # so several entries would make the same weights a different file (and sha256) each time
    about = json.dumps({"architecture": card.architecture, "name": card.name,
                        "version": card.version}, sort_keys=True)
    save_file(state, str(weights), metadata={"hiprouter": about})
    sha = sha256_file(weights)
    card = card.model_copy(update={
        "weights_sha256": sha,
        "device_uid": device_uid_for(sha),
        "created": card.created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    })
    write_card(model_dir, card)
    return card


@dataclass
class LoadedModel:
    """A model ready for inference: card, torch module (eval mode), its directory.

    Loaded from its ONNX bundle (`load_onnx_model`, no torch in the process) the module is
    None and `onnx`, `head` and `gem_p` carry what inference needs.
    """

    card: ModelCard
    module: Any
    model_dir: Path
    onnx: Path | None = None
    """The exported graph (logits, features) when loaded from a bundle."""
    head: tuple[np.ndarray, np.ndarray] | None = None
    """(weight, bias) of a global-average-pool + linear head (CAM), from the bundle."""
    gem_p: float | None = None
    """The GeM pooling exponent, when the model pools with GeM (from the bundle)."""


def load_model(model_dir: Path, device: Any = "cpu") -> LoadedModel:
    """Load a model directory; refuses weights whose sha256 differs from the card's."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    card = verified_card(model_dir)
    weights = model_dir / card.weights_file
    module = card_model(card)
    try:
        module.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        raise ModelError(f"{weights}: weights do not fit {card.architecture}: {exc}") from exc
    module.eval().to(device)
    return LoadedModel(card, module, model_dir)


_cpu_threads: int | None = None
"""Intra-op threads of CPU inference in this process (`set_cpu_threads`); None: cores."""


def set_cpu_threads(threads: int | None) -> None:
    """Size CPU inference in this process (`inference.threads`): every ONNX Runtime
    session created from now on, and PyTorch's intra-op pool. None: one per core."""
    global _cpu_threads
    _cpu_threads = threads
    apply_torch_threads()


def apply_torch_threads() -> None:
    """Give PyTorch's intra-op pool `inference.threads`, if set and torch is imported (a
    process serving from ONNX bundles never imports it; `select_device` calls this)."""
    if _cpu_threads is not None and "torch" in sys.modules:
        import torch

        torch.set_num_threads(_cpu_threads)


def cpu_threads() -> int:
    """Intra-op threads a new CPU session gets in this process."""
    return _cpu_threads or (os.cpu_count() or 1)


def select_device(preference: str = "auto") -> Any:
    """CUDA when present (or asked for), else CPU."""
    import torch

    apply_torch_threads()

    if preference == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda requested but no CUDA device is available")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def installed_models(root: Path = MODELS_ROOT) -> list[Path]:
    """Model directories (those with a card.yaml) under `root`."""
    if not Path(root).is_dir():
        return []
    return sorted(p.parent for p in Path(root).glob(f"*/{CARD_FILE}"))
