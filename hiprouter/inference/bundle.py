"""ONNX bundles: a model folder's networks exported once, so serving on the CPU needs no torch.

PyTorch and timm take about 700 MB of resident memory in a process that imports them
(docs/performance.md, bench/bench_memory.py), while ONNX Runtime takes about 35 MB. A
`hiprouter serve` or `worker` on the CPU therefore never imports them: the networks of each
model folder are exported by a child process (``python -m hiprouter.inference.export
MODEL_DIR BUNDLE_DIR``, export.py) into a bundle folder in the runtime cache, keyed by the weights'
sha256, and the serving process loads only the bundle:

- classifier: ``model.onnx`` (logits, last feature map) and ``arrays.npz`` with the
  linear head (CAM) and the GeM exponent, when the model has them;
- dual-view: ``features.onnx`` (backbone feature map) and ``arrays.npz`` (head, missing
  lateral vector);
- onfh: ``locator.onnx``, ``refiner.onnx`` and, for a normative model, ``vae-mean.onnx``.

``bundle.json`` is written last; a bundle without it is incomplete and exported again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hiprouter.inference.models import (
    DUAL_VIEW_TASK,
    ONFH_LABEL_SET,
    LoadedModel,
    ModelCard,
    ModelError,
    verified_card,
)

MANIFEST = "bundle.json"
EXPORT_TIMEOUT_S = 900


def cache_root() -> Path:
    from hiprouter.inference.runtime import CACHE_DIR

    return CACHE_DIR / "onnx"


def bundle_kind(card: ModelCard) -> str:
    """classifier, dualview or onfh: which networks the folder holds."""
    if card.task == DUAL_VIEW_TASK:
        return "dualview"
    if card.label_set == ONFH_LABEL_SET:
        return "onfh"
    return "classifier"


def bundle_dir(card: ModelCard) -> Path:
    return cache_root() / f"{bundle_kind(card)}-{card.weights_sha256[:24]}"


class BundleUnavailable(ModelError):
    """No ONNX bundle could be exported or read (e.g. the cache cannot be written): the
    caller may load the model with torch instead; other ModelErrors (missing or changed
    weights, a model of another kind) may not be worked around that way."""


def ensure_bundle(model_dir: Path, card: ModelCard | None = None) -> tuple[Path, dict[str, Any]]:
    """The bundle folder of a model folder and its manifest; exported by a child process
    when missing (the caller's process does not import torch)."""
    model_dir = Path(model_dir)
    card = card or verified_card(model_dir)
    folder = bundle_dir(card)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[2]),
                        os.environ.get("PYTHONPATH")) if p)}
        try:
            res = subprocess.run([sys.executable, "-m", "hiprouter.inference.export",
                                  str(model_dir), str(folder)], capture_output=True, text=True,
                                 timeout=EXPORT_TIMEOUT_S, env=env, check=False)
        except (subprocess.TimeoutExpired, OSError) as exc:
            raise BundleUnavailable(f"{model_dir}: ONNX export did not finish: {exc}") from exc
        if res.returncode != 0 or not manifest.is_file():
            raise BundleUnavailable(
                f"{model_dir}: ONNX export failed: {res.stderr.strip()[-1500:]}")
    try:
        return folder, json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise BundleUnavailable(f"{folder}: unreadable bundle manifest: {exc}") from exc


def load_arrays(folder: Path) -> dict[str, np.ndarray]:
    path = folder / "arrays.npz"
    if not path.is_file():
        return {}
    with np.load(path) as data:
        return {k: np.asarray(data[k]) for k in data.files}


def load_onnx_model(model_dir: Path) -> LoadedModel:
    """A classifier from its ONNX bundle (exported by a child process when missing)."""
    model_dir = Path(model_dir)
    card = verified_card(model_dir)
    folder, manifest = ensure_bundle(model_dir, card)
    if manifest.get("kind") != "classifier":
        raise ModelError(f"{model_dir}: not a classifier ({manifest.get('kind')})")
    arrays = load_arrays(folder)
    head = ((arrays["head_weight"], arrays["head_bias"]) if "head_weight" in arrays
            else None)
    gem_p = float(arrays["gem_p"]) if "gem_p" in arrays else None
    return LoadedModel(card, None, model_dir, folder / "model.onnx", head, gem_p)
