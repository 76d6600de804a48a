"""Dual-view (AP + lateral) classification of one hip: the siamese model of Hip-Net (seed 000).

One timm backbone is applied to the AP crop and to the lateral crop of the same hip; each
view's last feature map is average-pooled, the two vectors are concatenated and a linear
head gives the class logits. A hip without a lateral view uses a learned "missing lateral"
vector in place of the lateral half (the model is trained with the lateral dropped at
random), so an AP alone still gets a result, marked single-view.

Because the head is linear on average-pooled features, the class activation map of each
view is exact and needs only the forward pass: for class k, the AP map is
``W[k, :C] . F_ap(y, x)`` and the lateral map ``W[k, C:] . F_lat(y, x)`` (C feature
channels), i.e. each view's share of the logit, spatially resolved: the seed's
"interpretive subnetwork" that gives every view its own probability map per cause.

Runtime: the backbone is the only network that runs (on a batch of every crop of the hip,
both views together), on PyTorch or on ONNX Runtime (the backbone exported once per
weights file, cached by sha256); pooling, the head, calibration (temperature from the model
card) and the maps are a few lines of numpy shared by both back-ends, so torch and ONNX give
the same numbers. An ensemble of several such models averages the calibrated
probabilities (the seed uses 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from hiprouter.findings import ModelInfo
from hiprouter.inference import cam as cammod
from hiprouter.inference.models import (
    DUAL_VIEW_TASK,
    ModelCard,
    ModelError,
    read_card,
    select_device,
    verified_card,
)
from hiprouter.inference.preprocess import Letterbox, letterbox, normalise

TASK = DUAL_VIEW_TASK
"""`ModelCard.task` of these models."""
AP_VIEWS = ("ap_pelvis", "ap_hip")
LATERAL_VIEWS = ("frog_leg", "cross_table_lateral")
CROPS = ("full", "implant_window")
"""How a hip crop becomes the model input: `full` letterboxes the whole crop (half an AP
pelvis is twice as tall as wide, so half the input is padding); `implant_window` first
cuts the square of the crop's shorter side centred on the implant (the brightest pixels,
metal, away from the borders where markers and text sit), which doubles the resolution
on the prosthesis. The card's ``parameters.crop`` says which; training and run time use
the same function."""


def implant_window(pixels: np.ndarray, margin: float = 0.08,
                   quantile: float = 0.99) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the square window of side min(rows, cols) centred on
    the centroid of the brightest pixels (display space: metal is bright) inside a margin;
    the whole crop when it is nearly square."""
    rows, cols = pixels.shape
    side = min(rows, cols)
    if max(rows, cols) <= 1.15 * side:
        return 0, 0, rows, cols
    mr, mc = int(margin * rows), int(margin * cols)
    inner = pixels[mr : rows - mr, mc : cols - mc]
    if inner.size == 0:
        return 0, 0, rows, cols
    ys, xs = np.nonzero(inner >= np.quantile(inner, quantile))
    cy = float(ys.mean()) + mr if ys.size else rows / 2
    cx = float(xs.mean()) + mc if xs.size else cols / 2
    top = int(np.clip(round(cy - side / 2), 0, rows - side))
    left = int(np.clip(round(cx - side / 2), 0, cols - side))
    return top, left, top + side, left + side


def model_input(pixels: np.ndarray, size: int, crop: str = "full"
                ) -> tuple[np.ndarray, Letterbox, tuple[int, int, int, int]]:
    """The letterboxed model input of a hip crop, its letterbox and the window used (in
    crop pixels)."""
    rows, cols = pixels.shape
    window = implant_window(pixels) if crop == "implant_window" else (0, 0, rows, cols)
    top, left, bottom, right = window
    boxed, lb = letterbox(pixels[top:bottom, left:right], size)
    return boxed, lb, window


def map_to_crop(model_map: np.ndarray, lb: Letterbox, window: tuple[int, int, int, int],
                crop_shape: tuple[int, int]) -> np.ndarray:
    """A model-space map in the crop's geometry (zero outside the window)."""
    top, left, bottom, right = window
    inner = lb.to_source(model_map)
    if (top, left, bottom, right) == (0, 0, *crop_shape):
        return inner
    out = np.zeros(crop_shape, dtype=np.float32)
    out[top:bottom, left:right] = inner
    return out


def build_net(architecture: str, num_classes: int, in_chans: int = 1) -> Any:
    """The siamese network (fresh weights; never downloads anything)."""
    import timm
    import torch
    from torch import nn

    class DualViewNet(nn.Module):
        """backbone (shared by both views) -> GAP per view -> [AP | lateral] -> linear."""

        def __init__(self) -> None:
            super().__init__()
            try:
                self.backbone = timm.create_model(architecture, pretrained=False,
                                                  in_chans=in_chans, num_classes=0)
            except RuntimeError as exc:
                raise ModelError(f"unknown timm architecture {architecture!r}: {exc}") from exc
            channels = int(self.backbone.num_features)
            self.channels = channels
            self.missing = nn.Parameter(torch.zeros(channels))
            """Stands in for the pooled lateral features when a hip has no lateral view."""
            self.head = nn.Linear(2 * channels, num_classes)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return self.backbone.forward_features(x)

        def forward(self, ap: torch.Tensor, lateral: torch.Tensor,
                    has_lateral: torch.Tensor) -> torch.Tensor:
            """Logits; `lateral` holds only the rows where `has_lateral` (bool, (B,)) is true
            (the backbone never runs on a missing view)."""
            pooled_ap = self.features(ap).mean(dim=(2, 3))
            pooled_lat = self.missing.to(pooled_ap.dtype).expand_as(pooled_ap).clone()
            if lateral.shape[0]:
                pooled_lat[has_lateral] = self.features(lateral).mean(dim=(2, 3))
            return self.head(torch.cat([pooled_ap, pooled_lat], dim=1))

    return DualViewNet()


def card_parameters(net: Any, lateral_dropout: float, crop: str = "full") -> dict[str, Any]:
    """What the model card records about the dual-view design (read back by `load`)."""
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, not {crop!r}")
    return {"views": {"ap": list(AP_VIEWS), "lateral": list(LATERAL_VIEWS)}, "crop": crop,
            "fusion": "shared backbone, average-pooled features of each view concatenated "
                      "[AP | lateral], linear head; a learned vector replaces a missing "
                      "lateral view",
            "feature_channels": int(net.channels), "lateral_dropout": float(lateral_dropout)}


def save(net: Any, card: ModelCard, model_dir: Path, half: bool = True) -> ModelCard:
    """Write the weights (float16 unless `half` is False) and the card (sha256, Device UID)."""
    import copy

    from hiprouter.inference.models import save_model

    module = copy.deepcopy(net).cpu()
    if half:
        module = module.half()
    return save_model(module, card.model_copy(update={"task": TASK}), model_dir)


@dataclass
class DualViewModel:
    """A loaded dual-view model: card, network (eval, float32) and its head as numpy."""

    card: ModelCard
    net: Any
    """The torch network, or None when loaded from the ONNX bundle (`load_onnx`)."""
    model_dir: Path
    weight: np.ndarray = field(default=None)  # type: ignore[assignment]
    """Head weight (K, 2C): columns [0, C) act on the AP view, [C, 2C) on the lateral."""
    bias: np.ndarray = field(default=None)  # type: ignore[assignment]
    missing: np.ndarray = field(default=None)  # type: ignore[assignment]
    onnx: Path | None = None
    """The exported backbone (features) when loaded from the bundle."""

    def __post_init__(self) -> None:
        if self.net is not None:
            self.weight = self.net.head.weight.detach().float().cpu().numpy()
            self.bias = self.net.head.bias.detach().float().cpu().numpy()
            self.missing = self.net.missing.detach().float().cpu().numpy()
        elif self.weight is None or self.bias is None or self.missing is None:
            raise ModelError(f"{self.model_dir}: neither a network nor its head arrays")

    @property
    def channels(self) -> int:
        return int(self.missing.shape[0])

    @property
    def crop(self) -> str:
        return str(self.card.parameters.get("crop", "full"))

    @property
    def temperature(self) -> float:
        return float(self.card.calibration.get("temperature", 1.0) or 1.0)

    def logits(self, pooled_ap: np.ndarray, pooled_lat: np.ndarray | None) -> np.ndarray:
        """Logits of AP/lateral pooled feature pairs ((B, C) each; None: no lateral)."""
        lat = pooled_lat if pooled_lat is not None else np.broadcast_to(
            self.missing, pooled_ap.shape)
        return np.concatenate([pooled_ap, lat], axis=1) @ self.weight.T + self.bias

    def view_cam(self, features: np.ndarray, class_index: int, view: str) -> np.ndarray:
        """CAM of one crop's feature map (C, h, w) for a class, by that view's head half."""
        c = self.channels
        w = self.weight[class_index, :c] if view == "ap" else self.weight[class_index, c:]
        return cammod.normalise_map(np.tensordot(w, features, axes=([0], [0])))


def load(model_dir: Path, device: Any = "cpu") -> DualViewModel:
    """Load a dual-view model directory; refuses weights the card does not describe."""
    import torch
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    card = _dual_view_card(model_dir)
    weights = model_dir / card.weights_file
    net = build_net(card.architecture, len(card.classes), card.in_chans)
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in load_file(str(weights)).items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{weights}: weights do not fit {card.architecture}: {exc}") from exc
    net.eval().to(torch.device(device))
    return DualViewModel(card, net, model_dir)


def load_onnx(model_dir: Path) -> DualViewModel:
    """A dual-view model from its ONNX bundle (no torch in this process; export.py)."""
    from hiprouter.inference.bundle import ensure_bundle, load_arrays

    model_dir = Path(model_dir)
    card = _dual_view_card(model_dir)
    folder, _ = ensure_bundle(model_dir, card)
    arrays = load_arrays(folder)
    return DualViewModel(card, None, model_dir, arrays["weight"], arrays["bias"],
                         arrays["missing"], folder / "features.onnx")


def _dual_view_card(model_dir: Path) -> ModelCard:
    """The folder's card, refused unless it is a dual-view model with the weights it
    describes."""
    card = read_card(model_dir)
    if card.task != TASK:
        raise ModelError(f"{model_dir}: a {card.task!r} model; this pipeline needs a {TASK!r} "
                         "model (hiprouter train-dual-view)")
    return verified_card(model_dir, card)


def expand_model_dirs(dirs: Sequence[Path]) -> list[Path]:
    """Model folders; a folder without a card that holds member folders is an ensemble."""
    out: list[Path] = []
    for d in dirs:
        d = Path(d)
        if not (d / "card.yaml").is_file() and d.is_dir():
            members = sorted(p.parent for p in d.glob("*/card.yaml"))
            if members:
                out.extend(members)
                continue
        out.append(d)
    return out


# -- back-ends: the backbone's feature maps for a batch of crops --------------------------


class TorchFeatures:
    """The backbone on PyTorch (AMP on CUDA, channels_last)."""

    def __init__(self, model: DualViewModel, device: Any) -> None:
        import torch

        self.device = torch.device(device)
        self.backbone = model.net.backbone.to(self.device).eval()
        self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.amp = self.device.type == "cuda"
        self.name = f"torch-{self.device.type}"

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.amp,
                                                    dtype=torch.float16):
            features = self.backbone.forward_features(x)
        return features.float().cpu().numpy()


def onnx_path(model: DualViewModel) -> Path:
    from hiprouter.inference import runtime

    card = model.card
    name = f"dualview-{card.architecture}-{card.input_size}-{card.weights_sha256[:16]}.onnx"
    return runtime.CACHE_DIR / "onnx" / name


def export_onnx(model: DualViewModel, path: Path | None = None) -> Path:
    """Export the backbone (crop -> feature map, dynamic batch); atomic write, cached."""
    import torch

    from hiprouter.inference import runtime

    path = path or onnx_path(model)
    if path.is_file():
        return path

    class Features(torch.nn.Module):
        def __init__(self, backbone: Any) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.backbone.forward_features(x)

    net = Features(model.net.backbone).to("cpu").eval()
    size = model.card.input_size
    dummy = torch.zeros(1, model.card.in_chans, size, size)
    return runtime.write_onnx(net, dummy, path, ["features"])


class OnnxFeatures:
    """The backbone on ONNX Runtime (CPU)."""

    def __init__(self, model: DualViewModel, threads: int | None = None) -> None:
        from hiprouter.inference import runtime

        graph = model.onnx if model.onnx is not None else export_onnx(model)
        self.session = runtime.cpu_session(graph, threads)
        self.name = "onnxruntime-cpu"

    def run(self, batch: np.ndarray) -> np.ndarray:
        (features,) = self.session.run(None, {"input": np.ascontiguousarray(batch,
                                                                            dtype=np.float32)})
        return features


def make_features_runner(model: DualViewModel, device: Any, runtime: str = "auto") -> Any:
    """Torch on CUDA; on CPU ONNX Runtime unless runtime='torch' (falls back to torch when
    the export fails and runtime is 'auto'); a model from its bundle gets ONNX Runtime."""
    if model.net is None:
        return OnnxFeatures(model)
    import torch

    device = torch.device(device)
    if runtime == "onnx" and device.type != "cpu":
        raise ValueError("runtime 'onnx' is the CPU path; use device cpu")
    if device.type == "cpu" and runtime in ("auto", "onnx"):
        try:
            return OnnxFeatures(model)
        except Exception:
            if runtime == "onnx":
                raise
    return TorchFeatures(model, device)


# -- the ensemble on one hip --------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def energy(logits: np.ndarray) -> np.ndarray:
    """-logsumexp per row (higher = less familiar), as the single-view classifiers use."""
    m = logits.max(axis=-1)
    return -(m + np.log(np.exp(logits - m[..., None]).sum(axis=-1)))


@dataclass
class HipPrediction:
    """The ensemble's answer for one hip (all AP x lateral pairs of it averaged)."""

    probabilities: np.ndarray
    """Calibrated class probabilities, averaged over pairs and members."""
    ap_maps: list[np.ndarray | None]
    """Per AP crop: CAM of the predicted class in crop geometry ([0, 1]), or None."""
    lateral_maps: list[np.ndarray | None]
    ood_score: float
    ood: bool
    single_view: bool
    """True when the hip had no lateral view (the AP alone was assessed)."""
    per_member: list[np.ndarray] = field(default_factory=list)
    """Each member's calibrated probabilities (for evaluation)."""
    logits: list[np.ndarray] = field(default_factory=list)
    """Each member's uncalibrated logits, one row per AP x lateral pair (for calibration)."""


class DualViewEnsemble:
    """Dual-view models sharing their classes, ready to assess hips."""

    def __init__(self, models: Sequence[DualViewModel], device: Any, runtime: str = "auto",
                 batch_size: int = 8) -> None:
        if not models:
            raise ModelError("no models given")
        classes = models[0].card.classes
        for m in models[1:]:
            if m.card.classes != classes:
                raise ModelError(f"{m.model_dir}: classes differ from {models[0].model_dir}; "
                                 "an ensemble must share its classes")
        self.classes = list(classes)
        self.models = list(models)
        self.runners = [make_features_runner(m, device, runtime) for m in models]
        self.batch_size = batch_size

    @classmethod
    def from_dirs(cls, model_dirs: Sequence[Path], device: str = "auto", runtime: str = "auto",
                  batch_size: int = 8) -> DualViewEnsemble:
        from hiprouter.inference.runtime import cpu_without_torch

        dirs = expand_model_dirs(model_dirs)
        if runtime in ("auto", "onnx") and cpu_without_torch(device):
            from hiprouter.inference.bundle import BundleUnavailable

            try:
                return cls([load_onnx(d) for d in dirs], "cpu", "onnx", batch_size)
            except BundleUnavailable:  # e.g. no writable cache: torch, as before
                if runtime == "onnx":
                    raise
        dev = select_device(device)
        return cls([load(d, dev) for d in dirs], dev, runtime, batch_size)

    @property
    def cards(self) -> list[ModelCard]:
        return [m.card for m in self.models]

    @property
    def runtime_names(self) -> list[str]:
        return [r.name for r in self.runners]

    @property
    def info(self) -> ModelInfo:
        cards = self.cards
        if len(cards) == 1:
            return cards[0].info()
        return ModelInfo(
            name=" + ".join(dict.fromkeys(c.name for c in cards)) + f" (ensemble of {len(cards)})",
            version=" + ".join(dict.fromkeys(c.version for c in cards)),
            architecture="ensemble(" + ", ".join(f"{c.architecture}@{c.input_size}px"
                                                 for c in cards) + ")",
            device_uid=str(generate_uid(entropy_srcs=[c.weights_sha256 for c in cards])),
            synthetic_demo=any(c.synthetic_demo for c in cards))

    def card_value(self, section: str, key: str, default: Any = None) -> Any:
        for card in self.cards:
            value = getattr(card, section, {}).get(key)
            if value is not None:
                return value
        return default

    def _features(self, member: int, crops: Sequence[np.ndarray]
                  ) -> tuple[np.ndarray, list[tuple[Letterbox, tuple[int, int, int, int]]]]:
        model = self.models[member]
        inputs = [model_input(c, model.card.input_size, model.crop) for c in crops]
        out = []
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start : start + self.batch_size]
            batch = normalise(np.stack([b[0] for b in chunk]))[:, None]
            out.append(self.runners[member].run(batch))
        return np.concatenate(out), [(b[1], b[2]) for b in inputs]

    def predict(self, ap_crops: Sequence[np.ndarray], lateral_crops: Sequence[np.ndarray],
                heatmaps: bool = True) -> HipPrediction:
        """Assess one hip from its AP crops (at least one) and lateral crops (any number):
        every AP x lateral pair (or each AP alone) through every member, averaged."""
        if not ap_crops:
            raise ValueError("a dual-view prediction needs at least one AP crop")
        n_ap, n_lat = len(ap_crops), len(lateral_crops)
        member_probs, member_logits, scores, votes, judges = [], [], [], 0, 0
        member_maps = []
        for i, model in enumerate(self.models):
            feats, boxes = self._features(i, [*ap_crops, *lateral_crops])
            pooled = feats.mean(axis=(2, 3))
            ap_pool, lat_pool = pooled[:n_ap], pooled[n_ap:]
            if n_lat:
                pairs_ap = np.repeat(ap_pool, n_lat, axis=0)
                pairs_lat = np.tile(lat_pool, (n_ap, 1))
                logits = model.logits(pairs_ap, pairs_lat)
            else:
                logits = model.logits(ap_pool, None)
            probs = softmax(logits / model.temperature).mean(axis=0)
            member_probs.append(probs)
            member_logits.append(logits)
            e = float(energy(logits).mean())
            scores.append(e)
            threshold = model.card.ood.get("threshold")
            if threshold is not None:
                judges += 1
                votes += int(e > float(threshold))
            member_maps.append((model, feats, boxes))
        probs = np.mean(member_probs, axis=0)
        predicted = int(probs.argmax())
        ap_maps: list[np.ndarray | None] = [None] * n_ap
        lat_maps: list[np.ndarray | None] = [None] * n_lat
        if heatmaps:
            all_crops = [*ap_crops, *lateral_crops]
            for j in range(n_ap + n_lat):
                view = "ap" if j < n_ap else "lateral"
                acc = None
                for model, feats, boxes in member_maps:
                    lb, window = boxes[j]
                    crop_map = map_to_crop(model.view_cam(feats[j], predicted, view), lb,
                                           window, all_crops[j].shape)
                    acc = crop_map if acc is None else acc + crop_map
                normalised = cammod.normalise_map(acc, inplace=True) if acc is not None else None
                if j < n_ap:
                    ap_maps[j] = normalised
                else:
                    lat_maps[j - n_ap] = normalised
        return HipPrediction(probs.astype(np.float32), ap_maps, lat_maps,
                             float(np.mean(scores)), bool(judges and votes >= judges),
                             single_view=n_lat == 0,
                             per_member=[p.astype(np.float32) for p in member_probs],
                             logits=member_logits)
