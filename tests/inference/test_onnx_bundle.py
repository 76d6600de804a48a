"""Serving on the CPU without torch: ONNX bundles exported by a child process, and the
fallback to torch when no bundle can be written.

Each check runs in a fresh Python process, because whether torch is imported is a
property of the whole process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KINDS = ["hardware", "fracture", "screening", "prosthesis_failure", "fixation_device", "onfh"]

SCRIPT = r"""
import json, sys
from hiprouter.config import Settings
from hiprouter.pipelines.registry import PipelineSet
from hiprouter.pipelines.runner import analyse_study
from hiprouter.report.build import build_report
from hiprouter.synth.study import make_study

names = sys.argv[1].split(",")
s = make_study(4242, 3, views=("ap_pelvis", "cross_table_lateral"), side="R",
               hardware={"R": "cannulated_screws", "L": "tha"}, size=(900, 1100))
import_torch_by_synth = "torch" in sys.modules
settings = Settings.model_validate({"pipelines": {n: {"kind": n, "device": "cpu"}
                                                  for n in names}})
pset = PipelineSet(settings)
runtimes = {}
for n in names:
    pipe = pset.get(n)
    runtimes[n] = getattr(getattr(pipe, "classifier", None), "runtime_names", None) or []
datasets = [im.dataset for im in s.images]
found, decoded = analyse_study(pset, names, s.study_uid, datasets)
bundle = build_report(found.reported(), datasets,
                      {u: i.decoded.display_uint8() for u, i in decoded.items()},
                      settings.report, {}, settings.sr_templates_dir)
print(json.dumps({"torch": "torch" in sys.modules, "synth_torch": import_torch_by_synth,
                  "findings": len(found.findings()), "left_out": bundle.left_out,
                  "runtimes": {k: list(v) for k, v in runtimes.items()}}))
"""


def run(cache: Path, names: list[str]) -> dict:
    env = {**os.environ, "HIPROUTER_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(names)], capture_output=True,
                         text=True, env=env, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_every_demo_pipeline_serves_without_importing_torch(tmp_path: Path) -> None:
    first = run(tmp_path / "cache", KINDS)
    assert not first["synth_torch"], "the generator imported torch: the check says nothing"
    assert not first["torch"], "torch was imported while serving on the CPU"
    assert first["findings"] >= 4 and first["left_out"] == []
    bundles = sorted(p.name for p in (tmp_path / "cache" / "onnx").iterdir())
    # four classifier kinds and the anatomy check, the dual-view and the ONFH models
    assert [b.split("-")[0] for b in bundles] == ["classifier"] * 5 + ["dualview", "onfh"]
    for b in bundles:
        manifest = json.loads((tmp_path / "cache" / "onnx" / b / "bundle.json").read_text())
        assert manifest["graphs"] and all(
            (tmp_path / "cache" / "onnx" / b / g).is_file() for g in manifest["graphs"])
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("bundle.json")}
    again = run(tmp_path / "cache", ["hardware"])  # the bundles are reused, not exported again
    assert not again["torch"] and again["runtimes"]["hardware"] == ["onnxruntime-cpu"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_without_a_writable_cache_the_models_load_with_torch(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("the cache path is a file: nothing can be exported under it")
    got = run(blocker, ["hardware", "onfh"])
    assert got["torch"] and got["findings"] >= 2 and got["left_out"] == []


def test_a_bundle_is_keyed_by_the_weights() -> None:
    """Changed weights (a new sha256 in the card) get a new bundle, never an old graph."""
    from hiprouter.inference.bundle import bundle_dir
    from hiprouter.inference.models import read_card

    card = read_card(REPO / "models" / "hardware-demo")
    other = card.model_copy(update={"weights_sha256": "0" * 64})
    assert bundle_dir(card) != bundle_dir(other)
    assert bundle_dir(card).name.endswith(card.weights_sha256[:24])


def test_changed_weights_are_refused_not_worked_around(tmp_path: Path) -> None:
    """Only a missing bundle falls back to torch: weights that differ from the card are an
    error on every path (classifier, dual-view, onfh)."""
    import shutil

    import pytest

    from hiprouter.inference.classifier import CropClassifier
    from hiprouter.inference.dualview import DualViewEnsemble
    from hiprouter.inference.models import ModelError
    from hiprouter.inference.onfh import OnfhModel

    loaders = {"hardware-demo": lambda d: CropClassifier.from_dirs([d], "cpu"),
               "prosthesis_failure-demo": lambda d: DualViewEnsemble.from_dirs([d], "cpu"),
               "onfh-demo": lambda d: OnfhModel.load(d, "cpu", runtime="auto")}
    for name, load in loaders.items():
        folder = tmp_path / name
        shutil.copytree(REPO / "models" / name, folder)
        weights = next(folder.glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes() + b"\0")
        with pytest.raises(ModelError, match="does not match the model card"):
            load(folder)


def test_onnx_runtime_threads_do_not_spin(tmp_path: Path) -> None:
    """Sessions give the CPU back after a run (several run one after another in a job)."""
    import torch

    from hiprouter.inference.runtime import cpu_session, write_onnx

    path = write_onnx(torch.nn.Conv2d(1, 2, 3), torch.zeros(1, 1, 8, 8), tmp_path / "c.onnx",
                      ["output"])
    options = cpu_session(path).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
