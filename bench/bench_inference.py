"""Per-image latency and throughput of the hardware pipeline on this machine.

Measures the `hardware` pipeline kind end to end (decode, per-hip crop, letterbox, forward
pass, calibration, CAM heat map mapped back to the source geometry) for:
  - the bundled demo model (models/hardware-demo), and
  - efficientnet_b4 at 380 px with random weights (timing only),
each on CPU eager PyTorch, CPU PyTorch channels_last and ONNX Runtime (and CUDA with AMP
when present). Input: a 2140 x 1760 16-bit CR single-hip radiograph (one crop per image).

    .venv/bin/python bench/bench_inference.py [--repeats 5] [--batch 8] [--json out.json]

Other processes on the machine change the figures; report the load with them (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hiprouter.config import Settings  # noqa: E402
from hiprouter.inference import runtime  # noqa: E402
from hiprouter.inference.models import (  # noqa: E402
    ModelCard,
    create_model,
    demo_model_dir,
    load_model,
    save_model,
)
from hiprouter.inference.runtime import OnnxRunner, TorchRunner  # noqa: E402
from hiprouter.inference.study import StudyInput  # noqa: E402
from hiprouter.pipelines.hardware import HARDWARE  # noqa: E402
from hiprouter.pipelines.registry import PipelineSet  # noqa: E402

DEMO_MODEL_DIR = demo_model_dir("hardware")


def radiograph(seed: int) -> object:
    """A 2140 x 1760, 12-bit CR 'AP hip' with smooth structure and a bright implant."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:2140, :1760].astype(np.float32)
    img = 1500 + 600 * np.sin(xx / 300 + seed) * np.cos(yy / 400) + rng.normal(0, 40, yy.shape)
    img[(yy - 700) ** 2 + (xx - 900) ** 2 < 120**2] = 3900
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.SeriesDescription = "HIP RIGHT AP"
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = np.clip(img, 0, 4095).astype(np.uint16).tobytes()
    return ds


def random_b4(tmp: Path) -> Path:
    card = ModelCard(name="b4-random", version="bench", architecture="efficientnet_b4",
                     input_size=380, classes=HARDWARE.keys,
                     training_data="none (random weights, timing only)")
    save_model(create_model("efficientnet_b4", len(HARDWARE)), card, tmp / "b4")
    return tmp / "b4"


def runners(model_dir: Path) -> dict[str, object]:
    import torch

    model = load_model(model_dir, "cpu")
    out: dict[str, object] = {
        "cpu eager": TorchRunner(model, "cpu", channels_last=False),
        "cpu channels_last": TorchRunner(model, "cpu", channels_last=True),
    }
    start = time.perf_counter()
    out["onnxruntime"] = OnnxRunner(model)
    print(f"  (ONNX export/load {time.perf_counter() - start:.1f} s)", flush=True)
    if torch.cuda.is_available():
        out["cuda amp"] = TorchRunner(load_model(model_dir, "cuda"), "cuda")
    return out


def study(images: list) -> StudyInput:
    return StudyInput.from_datasets("1.2.3", images, ("CR", "DX"))


def bench(model_dir: Path, repeats: int, batch: int) -> list[dict]:
    settings = Settings.model_validate({"pipelines": {"hardware": {
        "kind": "hardware", "models": [str(model_dir)], "device": "cpu", "runtime": "torch",
        "batch_size": batch}}})
    pipe = PipelineSet(settings).get("hardware")
    clf = pipe.classifier  # type: ignore[attr-defined]
    card = clf.members[0].model.card
    images = [radiograph(i) for i in range(batch)]
    rows = []
    for name, runner in runners(model_dir).items():
        clf.members[0].runner = runner
        pipe.run(study(images[:1]), None)
        lat = []
        for i in range(repeats):
            start = time.perf_counter()
            pipe.run(study([images[i % batch]]), None)
            lat.append(time.perf_counter() - start)
        start = time.perf_counter()
        result = pipe.run(study(images), None)
        thr = batch / (time.perf_counter() - start)
        assert len(result.findings) == batch
        row = {"model": f"{card.architecture}@{card.input_size}", "runtime": name,
               "latency_s_median": float(np.median(lat)), "latency_s_min": float(min(lat)),
               "throughput_img_s": thr, "batch": batch, "repeats": repeats}
        rows.append(row)
        print(f"  {row['model']:<22} {name:<18} latency median {row['latency_s_median']:.3f} s "
              f"(min {row['latency_s_min']:.3f})  throughput {thr:.2f} img/s (batch {batch})",
              flush=True)
    return rows


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--skip-b4", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runtime.CACHE_DIR = Path(tempfile.mkdtemp(prefix="hiprouter-bench-"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
    results = []
    if (DEMO_MODEL_DIR / "card.yaml").is_file():
        print(f"demo model {DEMO_MODEL_DIR}", flush=True)
        results += bench(DEMO_MODEL_DIR, args.repeats, args.batch)
    if not args.skip_b4:
        with tempfile.TemporaryDirectory() as tmp:
            print("efficientnet_b4 @ 380 px, random weights", flush=True)
            results += bench(random_b4(Path(tmp)), args.repeats, args.batch)
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
