"""The GPU path measured: the hardware pipeline against the pure timm model on the same GPU.

For the hardware demo (resnet10t @ 160 px) and EfficientNet-B4 @ 380 px (random weights,
timing only) it prints, in one run on one device:

  pure model   images/s of the bare timm network on random tensors already on the device:
               fp32, AMP (float16) + channels_last, and torch.compile of the latter
               (`--compile`, default "reduce-overhead": Inductor + CUDA graphs);
  pipeline     images/s of the `hardware` pipeline kind over a batch of N single-hip
               2140 x 1760 CR radiographs held in memory, split into its steps: decode +
               hip crops (`StudyInput.from_datasets`, once per study for every pipeline),
               and `pipeline.run` (letterbox, forward pass with AMP + channels_last,
               calibration, OOD score, CAM mapped back to the source image), with heat maps
               on and off, and the forward pass alone as the pipeline calls it (host ->
               device copy, logits and feature maps back); and each as a share of the pure
               model's best figure;
  per study    p50 / p95 seconds of decode + `pipeline.run` for synthetic two-view studies
               (AP pelvis + cross-table lateral, 1300-1700 px), one study at a time.

    python bench/bench_gpu.py [--batch 64] [--studies 20] [--compile reduce-overhead|default|none]
                              [--device cuda] [--json out.json]

On a machine without CUDA it runs on the CPU (`--device cpu`) so the script stays testable;
the figures then say nothing about a GPU. End-to-end latency (storescu -> serve -> SR at the
PACS) on the same machine comes from bench/bench_e2e.py, which uses CUDA when present.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_inference import radiograph, random_b4  # noqa: E402
from hiprouter.config import Settings  # noqa: E402
from hiprouter.inference.models import demo_model_dir, load_model  # noqa: E402
from hiprouter.inference.study import StudyInput  # noqa: E402
from hiprouter.pipelines.registry import PipelineSet  # noqa: E402
from hiprouter.synth.study import make_study  # noqa: E402

MODALITIES = ("CR", "DX")


def sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def rate(step: Callable[[], Any], items: int, device: Any, repeats: int,
         warmup: int = 3) -> float:
    """Items per second of `step` (median of `repeats` timed calls after `warmup`)."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return items / float(np.median(times))


def pure_model(card: Any, device: Any, batch: int, compile_mode: str) -> dict[str, float]:
    """Images/s of the bare timm network of the card's architecture (random weights)."""
    import timm
    import torch

    net = timm.create_model(card.architecture, pretrained=False, num_classes=len(card.classes),
                            in_chans=card.in_chans).to(device).eval()
    size = card.input_size
    x = torch.randn(batch, card.in_chans, size, size, device=device)
    amp = torch.device(device).type == "cuda"
    out: dict[str, float] = {}
    with torch.inference_mode():
        out["fp32"] = rate(lambda: net(x), batch, device, 20)
    net_cl = net.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def amp_step(model: Any) -> Callable[[], Any]:
        def step() -> Any:
            with torch.inference_mode(), torch.autocast(torch.device(device).type,
                                                        enabled=amp, dtype=torch.float16):
                return model(x_cl)
        return step

    out["amp channels_last"] = rate(amp_step(net_cl), batch, device, 20)
    if compile_mode != "none":
        start = time.perf_counter()
        try:
            compiled = torch.compile(net_cl, mode=None if compile_mode == "default"
                                     else compile_mode)
            amp_step(compiled)()
            sync(device)
            out["compile_s"] = time.perf_counter() - start
            out[f"amp channels_last compile {compile_mode}"] = rate(amp_step(compiled), batch,
                                                                    device, 20)
        except Exception as exc:  # report and go on: the other figures still stand
            print(f"    torch.compile failed: {type(exc).__name__}: {exc}"[:400], flush=True)
    return out


def hardware_pipeline(model_dir: Path, device: str, batch: int) -> Any:
    settings = Settings.model_validate({"pipelines": {"hardware": {
        "kind": "hardware", "models": [str(model_dir)], "device": device, "runtime": "torch",
        "batch_size": batch}}})
    return PipelineSet(settings).get("hardware")


def pipeline_figures(model_dir: Path, device: str, batch: int, repeats: int) -> dict[str, float]:
    """Images/s of each step of the hardware pipeline on `batch` radiographs in memory."""
    images = [radiograph(i) for i in range(batch)]
    pipe = hardware_pipeline(model_dir, device, batch)
    member = pipe.classifier.members[0]  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    out["decode + crops"] = rate(lambda: StudyInput.from_datasets("1.2.3", images, MODALITIES),
                                 batch, device, repeats, warmup=1)
    study = StudyInput.from_datasets("1.2.3", images, MODALITIES)
    crops = [c.pixels for _, c in study.crops()]
    assert len(crops) == batch, f"{len(crops)} hip crops from {batch} single-hip radiographs"
    out["pipeline.run, heat maps"] = rate(lambda: pipe.run(study, None), batch, device, repeats)
    pipe.options.heatmaps = False
    out["pipeline.run, no heat maps"] = rate(lambda: pipe.run(study, None), batch, device,
                                             repeats)
    pipe.options.heatmaps = True
    from hiprouter.inference.preprocess import letterbox

    boxed = np.stack([letterbox(c, member.model.card.input_size)[0] for c in crops])
    out["forward as the pipeline calls it"] = rate(lambda: member.forward(boxed), batch,
                                                   device, repeats)
    out["decode + pipeline.run"] = 1.0 / (1.0 / out["decode + crops"]
                                          + 1.0 / out["pipeline.run, heat maps"])
    return out


def per_study(model_dir: Path, device: str, studies: int) -> dict[str, float]:
    """Seconds per two-view study: decode + crops + hardware pipeline, one study at a time."""
    pipe = hardware_pipeline(model_dir, device, 8)
    data = [[img.dataset for img in make_study(4242, i, views=("ap_pelvis", "cross_table_lateral"),
                                                side="R").images] for i in range(studies + 2)]
    seconds = []
    for i, datasets in enumerate(data):
        sync(device)
        start = time.perf_counter()
        study = StudyInput.from_datasets(f"1.2.{i}", datasets, MODALITIES)
        result = pipe.run(study, None)
        sync(device)
        if i >= 2:  # two warm-up studies
            seconds.append(time.perf_counter() - start)
        assert result.findings or result.not_assessed
    return {"p50_s": float(np.percentile(seconds, 50)), "p95_s": float(np.percentile(seconds, 95)),
            "studies": float(len(seconds))}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", default="reduce-overhead",
                    choices=["reduce-overhead", "default", "none"])
    ap.add_argument("--models", nargs="+", default=["demo", "b4"], choices=["demo", "b4"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    name = (torch.cuda.get_device_name() if args.device == "cuda"
            else f"CPU, {torch.get_num_threads()} threads")
    print(f"device {args.device} ({name}); torch {torch.__version__}; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()}; batch {args.batch}", flush=True)
    results: dict[str, Any] = {"device": name, "torch": torch.__version__, "batch": args.batch}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {"demo": demo_model_dir("hardware"), "b4": None}
        for label in args.models:
            model_dir = dirs[label] or random_b4(Path(tmp))
            card = load_model(model_dir, "cpu").card
            title = f"{card.architecture} @ {card.input_size} px ({label})"
            print(f"\n{title}", flush=True)
            pure = pure_model(card, args.device, args.batch, args.compile)
            best = max(v for k, v in pure.items() if k != "compile_s")
            for k, v in pure.items():
                print(f"  pure timm   {k:<40} {v:10.1f}" + (" s" if k == "compile_s" else
                                                            " img/s"), flush=True)
            pipe = pipeline_figures(model_dir, args.device, args.batch, args.repeats)
            for k, v in pipe.items():
                print(f"  pipeline    {k:<40} {v:10.1f} img/s  ({100 * v / best:5.1f} % of the "
                      f"best pure figure)", flush=True)
            lat = per_study(model_dir, args.device, args.studies)
            print(f"  per study   decode + hardware pipeline, 2 views: p50 {lat['p50_s']:.3f} s,"
                  f" p95 {lat['p95_s']:.3f} s over {int(lat['studies'])} studies", flush=True)
            results[label] = {"model": title, "pure": pure, "pipeline": pipe, "per_study": lat}
    print(f"\nload average after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
