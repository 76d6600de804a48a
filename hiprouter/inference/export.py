"""The child process that writes a model folder's ONNX bundle (see bundle.py).

    python -m hiprouter.inference.export MODEL_DIR BUNDLE_DIR

Imports torch (and timm) to rebuild the networks from the weights; the serving process
that runs it does not.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hiprouter.inference.bundle import MANIFEST, bundle_kind
from hiprouter.inference.models import verified_card


def export(model_dir: Path, folder: Path) -> dict[str, Any]:
    """Export every network of `model_dir` into `folder` (written beside, then renamed)."""
    card = verified_card(model_dir)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    kind = bundle_kind(card)
    manifest: dict[str, Any] = {"kind": kind, "weights_sha256": card.weights_sha256,
                                "model": f"{card.name} {card.version}"}
    if kind == "classifier":
        manifest.update(_export_classifier(model_dir, tmp))
    elif kind == "dualview":
        manifest.update(_export_dualview(model_dir, tmp))
    else:
        manifest.update(_export_onfh(model_dir, tmp))
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished the same bundle first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / MANIFEST).is_file():
            raise
    return manifest


def _export_classifier(model_dir: Path, out: Path) -> dict[str, Any]:
    from hiprouter.inference import cam as cammod
    from hiprouter.inference.models import load_model
    from hiprouter.inference.runtime import export_onnx

    model = load_model(model_dir, "cpu")
    export_onnx(model, out / "model.onnx")
    arrays: dict[str, np.ndarray] = {}
    head = cammod.linear_head(model.module)
    if head is not None:
        arrays["head_weight"], arrays["head_bias"] = head
    pool = getattr(model.module, "global_pool", None)
    if pool is not None and hasattr(pool, "p"):
        arrays["gem_p"] = np.array(float(pool.p.detach().clamp(min=1.0).item()))
    np.savez(out / "arrays.npz", **arrays)
    return {"graphs": ["model.onnx"], "linear_head": head is not None}


def _export_dualview(model_dir: Path, out: Path) -> dict[str, Any]:
    from hiprouter.inference import dualview

    model = dualview.load(model_dir, "cpu")
    dualview.export_onnx(model, out / "features.onnx")
    np.savez(out / "arrays.npz", weight=model.weight, bias=model.bias, missing=model.missing)
    return {"graphs": ["features.onnx"]}


def _export_onfh(model_dir: Path, out: Path) -> dict[str, Any]:
    from hiprouter.inference.onfh import OnfhModel, export_networks

    model = OnfhModel.load(model_dir, "cpu", need_normative=False, runtime="torch")
    return {"graphs": export_networks(model, out)}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.exit("usage: python -m hiprouter.inference.export MODEL_DIR BUNDLE_DIR")
    export(Path(args[0]), Path(args[1]))


if __name__ == "__main__":
    main()
