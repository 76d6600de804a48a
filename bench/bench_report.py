"""Time of the report stage per study: SR + SC overlays + KOS built and written.

Input: synthetic studies (`hiprouter synth`) at a chosen image size, with a hand-made study
result (ground truth as the findings, a heat map on each hip), so only the report stage is
timed: `build_report` (text, SR, RGB overlay with labels, KOS) and `write_bundle` (fsync).

    .venv/bin/python bench/bench_report.py [--studies 5] [--size 2500] [--json out.json]

Other processes on the machine change the figures; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hiprouter.config import ReportConfig  # noqa: E402
from hiprouter.findings import (  # noqa: E402
    Classification,
    Finding,
    HeatMap,
    ModelInfo,
    PipelineResult,
    Region,
    StudyFindings,
)
from hiprouter.inference.decode import decode  # noqa: E402
from hiprouter.pipelines.hardware import HARDWARE  # noqa: E402
from hiprouter.report.build import build_report, write_bundle  # noqa: E402
from hiprouter.synth.study import make_study  # noqa: E402

MODEL = ModelInfo("bench-model", "0.0.1", "efficientnet_b4", "2.25.1", synthetic_demo=True)


def study_findings(seed: int, size: int) -> tuple[StudyFindings, list, dict]:
    """An AP pelvis + lateral study and findings with one heat-map spot per hip."""
    study = make_study(seed, views=["ap_pelvis", "frog_leg"], size=(size, size))
    heat: dict[str, list[HeatMap]] = {"R": [], "L": []}
    points: dict[str, list[Region]] = {"R": [], "L": []}
    displays = {}
    for image in study.images:
        ds = image.dataset
        uid = str(ds.SOPInstanceUID)
        displays[uid] = decode(ds).display_uint8()
        yy, xx = np.mgrid[:ds.Rows, :ds.Columns].astype(np.float32)
        for label in image.labels:
            x, y = float(label["hip_x"]), float(label["hip_y"])
            sigma = max(ds.Rows, ds.Columns) / 25
            side = str(label["laterality"])
            heat[side].append(HeatMap(uid, np.exp(-((yy - y) ** 2 + (xx - x) ** 2)
                                                  / (2 * sigma**2)).astype(np.float32)))
            points[side].append(Region(uid, "POINT", np.array([[x, y]])))
    findings = [Finding("hardware", side, [h.sop_instance_uid for h in heat[side]], MODEL,
                        Classification(spec.hardware, 0.9, {spec.hardware: 0.9}),
                        heatmaps=heat[side], regions=points[side][:1])
                for side, spec in sorted(study.hips.items(), reverse=True) if heat[side]]
    result = PipelineResult("hardware", "hardware", HARDWARE, MODEL, findings)
    return (StudyFindings(study.study_uid, [result]), [i.dataset for i in study.images],
            displays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=5)
    parser.add_argument("--size", type=int, default=2500, help="long side of the images")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    inputs = [study_findings(seed, args.size) for seed in range(args.studies)]
    build_s, write_s, sizes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (findings, datasets, displays) in enumerate(inputs):
            start = time.perf_counter()
            bundle = build_report(findings, datasets, displays, ReportConfig())
            built = time.perf_counter()
            paths = write_bundle(bundle, Path(tmp) / str(n))
            write_s.append(time.perf_counter() - built)
            build_s.append(built - start)
            sizes.append(sum(p.stat().st_size for p in paths))
    figures = {
        "studies": args.studies, "images_per_study": 2, "image_long_side": args.size,
        "build_s_median": round(statistics.median(build_s), 3),
        "build_s_max": round(max(build_s), 3),
        "write_s_median": round(statistics.median(write_s), 3),
        "mib_per_study_median": round(statistics.median(sizes) / 2**20, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
